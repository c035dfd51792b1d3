"""PSNR / SSIM (RGB and YCbCr Y) against scikit-image and pyiqa where they define the same quantity."""
import numpy as np
import pytest
import torch
from conftest import sample_photo

from trajir.rewards import fidelity, score

metrics = pytest.importorskip("skimage.metrics", reason="scikit-image is the independent PSNR/SSIM reference")
from skimage.color import rgb2ycbcr


def pair(size=(96, 128), sigma=0.03, seed=0, photo="astronaut"):
    x = sample_photo(photo, size)
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    return (x + sigma * z).clamp(0, 1), x


def quantised(x):
    return (x * 255).round() / 255


def hwc(t):
    return t.permute(1, 2, 0).double().numpy()


def y_plane(t):
    """Y of YCbCr by scikit-image (16..235), scaled to 0..1 -- an independent conversion."""
    return rgb2ycbcr(hwc(t))[..., 0] / 255


def test_psnr_equals_scikit_image_per_image():
    a, b = pair(), pair(seed=1, sigma=0.1, photo="coffee")
    images, reference = torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])
    ours = score("psnr", images, reference)
    expected = [metrics.peak_signal_noise_ratio(hwc(r), hwc(i), data_range=1) for i, r in zip(images, reference)]
    assert ours.dtype == torch.float32 and ours.shape == (2,)
    np.testing.assert_allclose(ours.numpy(), expected, rtol=0, atol=1e-4)


def test_psnr_y_equals_scikit_image_on_ycbcr_luma():
    images, reference = pair(photo="chelsea")
    expected = metrics.peak_signal_noise_ratio(y_plane(reference[0]), y_plane(images[0]), data_range=1)
    assert abs(score("psnr_y", images, reference).item() - expected) < 1e-4


def test_psnr_is_capped_for_identical_images():
    x = sample_photo("rocket", (32, 32))
    assert score("psnr", x, x).item() == fidelity.PSNR_CAP


def test_ssim_equals_scikit_image():
    images, reference = pair(sigma=0.05)
    expected = metrics.structural_similarity(images[0].double().numpy(), reference[0].double().numpy(),
                                             channel_axis=0, gaussian_weights=True, sigma=1.5,
                                             use_sample_covariance=False, data_range=1)
    assert abs(score("ssim", images, reference).item() - expected) < 1e-4


def test_ssim_y_equals_scikit_image_on_ycbcr_luma():
    images, reference = pair(photo="coffee")
    expected = metrics.structural_similarity(y_plane(images[0]), y_plane(reference[0]), gaussian_weights=True,
                                             sigma=1.5, use_sample_covariance=False, data_range=1)
    assert abs(score("ssim_y", images, reference).item() - expected) < 1e-4


def test_identical_images_have_ssim_one():
    x = sample_photo("chelsea", (32, 48))
    torch.testing.assert_close(score("ssim", x, x), torch.ones(1))


def test_psnr_and_ssim_equal_pyiqa():
    pytest.importorskip("pyiqa", reason="pyiqa is the second reference for PSNR/SSIM")
    from pyiqa.archs.psnr_arch import PSNR
    from pyiqa.archs.ssim_arch import SSIM

    images, reference = pair(size=(64, 80))
    with torch.no_grad():
        # pyiqa adds eps = 1e-8 to the MSE unless told not to; its PSNR-Y uses YIQ unless given "ycbcr"
        torch.testing.assert_close(score("psnr", images, reference), PSNR(eps=0.0)(images, reference).float(),
                                   rtol=0, atol=1e-4)
        py_y = PSNR(test_y_channel=True, color_space="ycbcr", eps=0.0)(images, reference).float()
        torch.testing.assert_close(score("psnr_y", images, reference), py_y, rtol=0, atol=1e-4)
        # pyiqa's SSIM rounds to 8-bit levels: on 8-bit images it is the same quantity
        iq, rq = quantised(images), quantised(reference)
        torch.testing.assert_close(score("ssim", iq, rq), SSIM(test_y_channel=False)(iq, rq).float(),
                                   rtol=0, atol=1e-4)


def test_float16_and_bfloat16_inputs_give_float32_scores():
    images, reference = pair(size=(32, 32))
    for dtype in (torch.float16, torch.bfloat16):
        i, r = images.to(dtype), reference.to(dtype)
        for name in ("psnr", "psnr_y", "ssim", "ssim_y"):
            out = score(name, i, r)
            assert out.dtype == torch.float32
            torch.testing.assert_close(out, score(name, i.float(), r.float()), rtol=0, atol=1e-5)


def test_bad_references_are_refused():
    x = torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match=r"PSNR is a full-reference metric: pass reference"):
        score("psnr", x)
    with pytest.raises(ValueError, match=r"reference has shape \(2, 3, 16, 8\) but images has shape "
                                         r"\(2, 3, 16, 16\); expected equal shapes"):
        score("psnr", x, x[..., :8])
    bad = x.clone()
    bad[1, 0, 0, 0] = -0.5
    with pytest.raises(ValueError, match=r"reference has values in \[-0\.5, 0\.\d+\]; expected 0\.\.1 \(values "
                                         r"outside are refused, not clipped"):
        score("ssim", x, bad)
    with pytest.raises(ValueError, match=r"images is 10x16 pixels; SSIM needs images of at least 11x11"):
        score("ssim", x[..., :10, :], x[..., :10, :])
