"""trajir.baselines: non-local means against a brute-force reference, the noise estimate, gamma, grey world."""
import math

import pytest
import torch

from trajir.baselines import gamma_curve, gamma_nlm, gray_world, noise_sigma, non_local_means
from trajir.data import degrade, read_image, sample_split
from trajir.rewards import score


def _nlm_by_hand(image, h, patch, window):
    """One pixel at a time, straight from the definition (reflect padding at the borders)."""
    c, height, width = image.shape
    r, p = window // 2, patch // 2
    padded = torch.nn.functional.pad(image[None], (r + p,) * 4, mode="reflect")[0]
    out = torch.zeros_like(image)
    for y in range(height):
        for x in range(width):
            cy, cx = y + r + p, x + r + p
            ref = padded[:, cy - p:cy + p + 1, cx - p:cx + p + 1]
            total, weights = torch.zeros(c, dtype=image.dtype), 0.0
            for dy in range(-r, r + 1):
                for dx in range(-r, r + 1):
                    other = padded[:, cy + dy - p:cy + dy + p + 1, cx + dx - p:cx + dx + p + 1]
                    w = math.exp(-float(((ref - other) ** 2).mean()) / h ** 2)
                    total += w * padded[:, cy + dy, cx + dx]
                    weights += w
            out[:, y, x] = total / weights
    return out


def test_non_local_means_equals_its_definition():
    image = torch.rand(3, 9, 11, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    fast = non_local_means(image[None], 0.3, patch=3, window=5)[0]
    assert torch.allclose(fast, _nlm_by_hand(image, 0.3, 3, 5), atol=1e-12)
    assert torch.allclose(non_local_means(image[None], 1e-4, 3, 5)[0], image)   # tiny h: only the pixel itself
    flat = torch.full((1, 3, 12, 12), 0.3)
    assert torch.allclose(non_local_means(flat, 0.1), flat)
    with pytest.raises(ValueError, match="patch and window must be odd"):
        non_local_means(flat, 0.1, patch=4)


def test_noise_estimate_and_denoising():
    g = torch.Generator().manual_seed(1)
    clean = torch.zeros(1, 3, 96, 96)
    clean[..., 30:70, 20:60] = 0.6
    noisy = clean + 0.05 * torch.randn(clean.shape, generator=g)
    assert float(noise_sigma(noisy)) == pytest.approx(0.05, rel=0.08)
    out = non_local_means(noisy, 0.05 * math.sqrt(2))
    assert float(((out - clean) ** 2).mean()) < 0.2 * float(((noisy - clean) ** 2).mean())


def test_gamma_lifts_the_mean_and_the_low_light_baseline_restores_a_photo():
    assert torch.allclose(gamma_curve(torch.full((1, 3, 4, 4), 0.1), 0.35), torch.full((1, 3, 4, 4), 0.35))
    gt = read_image(sample_split()[1][0])[None][..., :128, :128]
    lq = degrade("lowlight", gt, 5)
    out = gamma_nlm(lq)
    assert out.shape == lq.shape and float(score("psnr", out, gt)) > float(score("psnr", lq, gt)) + 5


def test_grey_world_removes_a_colour_cast():
    grey = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(2)).expand(1, 3, 32, 32)
    cast = grey * torch.tensor([0.4, 0.8, 1.0]).reshape(1, 3, 1, 1)
    out = gray_world(cast)
    means = out.mean(dim=(2, 3))[0]
    assert float(means.max() - means.min()) < 0.02
    assert float((out - grey).abs().mean()) < 0.05
