"""NIQE: closed-form pieces, agreement with pyiqa given the same LIVE parameters, monotone response to damage."""
import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import sample_photo

from trajir.rewards import niqe as N
from trajir.rewards import Reward, score

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
SIZE = (288, 384)  # 3 x 4 blocks of 96 px: small enough for CI, enough blocks for a stable fit


def gaussian_blur(x, sigma):
    radius = math.ceil(3 * sigma)
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-t * t / (2 * sigma * sigma))
    k = (k / k.sum()).view(1, 1, 1, -1).repeat(3, 1, 1, 1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), k, groups=3)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), k.transpose(-1, -2), groups=3)


def jpeg(x, quality):
    from PIL import Image

    arr = (x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    out = np.array(Image.open(buf).convert("RGB"))
    return torch.from_numpy(out).float().div(255).permute(2, 0, 1)[None]


def noisy(x, sigma, seed=0):
    z = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    return (x + sigma * z).clamp(0, 1)


@pytest.fixture(scope="module")
def pyiqa_niqe(tmp_path_factory):
    """pyiqa's NIQE fed our shipped parameters (pyiqa reads a .mat, written here from the .npz)."""
    pytest.importorskip("pyiqa", reason="pyiqa (the 'iqa' extra) is the reference NIQE implementation")
    scipy_io = pytest.importorskip("scipy.io", reason="scipy writes the .mat file pyiqa reads")
    from pyiqa.archs.niqe_arch import NIQE

    with np.load(N.PARAMS_PATH, allow_pickle=False) as data:
        mat = tmp_path_factory.mktemp("niqe") / "niqe_params.mat"
        scipy_io.savemat(mat, {"mu_prisparam": data["mu_pris_param"], "cov_prisparam": data["cov_pris_param"]})
    return {cs: NIQE(pretrained_model_path=str(mat), color_space=cs) for cs in ("yiq", "ycbcr")}


# per photo: clean, noise 0.05 / 0.1 / 0.2, Gaussian blur 1 / 2 / 3, JPEG quality 95 / 50 / 20 / 5
SERIES = {"noise": [0, 1, 2, 3], "blur": [0, 4, 5, 6], "jpeg": [7, 8, 9, 10]}


@pytest.fixture(scope="module")
def degraded():
    """All photos and degradations in one ``[4 * 11, 3, H, W]`` batch (one NIQE call scores them all)."""
    out = []
    for photo in PHOTOS:
        x = sample_photo(photo, SIZE)
        out += [x] + [noisy(x, s) for s in (0.05, 0.1, 0.2)] + [gaussian_blur(x, s) for s in (1.0, 2.0, 3.0)]
        out += [jpeg(x, q) for q in (95, 50, 20, 5)]
    return torch.cat(out)


@pytest.fixture(scope="module")
def ours(degraded):
    scores = N.niqe(degraded)
    assert scores.dtype == torch.float32 and scores.shape == (len(degraded),)
    return scores.view(len(PHOTOS), -1)


def test_niqe_matches_pyiqa_on_photos_and_degradations(pyiqa_niqe, degraded, ours):
    picked = [0, 1, 2, 5, 9]  # clean, noise 0.05 and 0.1, blur 2, JPEG 20 of every photo
    batch = degraded.view(len(PHOTOS), -1, *degraded.shape[1:])[:, picked].flatten(0, 1)
    with torch.no_grad():
        ref = pyiqa_niqe["yiq"](batch).float().view(len(PHOTOS), -1)
    assert_same_up_to_grid_flips(ours[:, picked], ref)


def assert_same_up_to_grid_flips(ours, ref):
    """Equal to ~1e-6, except that a shape fit sitting on a midpoint of the 9,801-entry grid may resolve to the
    neighbouring entry under another float rounding order (torch / pyiqa releases differ): such a flip moves the
    score by up to ~1e-2, and it may happen to at most one image in five."""
    diff = (ours.double() - ref.double()).abs().flatten()
    assert diff.max() <= 2e-2, diff
    assert (diff <= 1e-4).double().mean() >= 0.8, diff


def test_niqe_ycbcr_matches_pyiqa(pyiqa_niqe, degraded):
    batch = degraded[:11:2]  # astronaut: clean, noise 0.1, blur 1 and 3, JPEG 50 and 5
    with torch.no_grad():
        ref = pyiqa_niqe["ycbcr"](batch).float().reshape(-1)
    assert_same_up_to_grid_flips(N.niqe(batch, color_space="ycbcr"), ref)


@pytest.mark.parametrize("series", sorted(SERIES))
@pytest.mark.parametrize("photo", PHOTOS)
def test_niqe_rises_with_degradation_strength(ours, photo, series):
    scores = ours[PHOTOS.index(photo), SERIES[series]]
    assert bool((scores[1:] > scores[:-1]).all()), scores


def test_batch_scores_equal_single_image_scores():
    a, b = sample_photo("astronaut", (192, 256)), noisy(sample_photo("chelsea", (192, 256)), 0.1)
    torch.testing.assert_close(N.niqe(torch.cat([a, b])), torch.cat([N.niqe(a), N.niqe(b)]), rtol=0, atol=1e-6)


def test_half_bicubic_reproduces_linear_ramps_inside():
    # the cubic kernel reproduces linear functions: output i samples the input at 2i + 0.5
    h, w = 24, 32
    i, j = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    y = (3.0 * i - 2.0 * j + 7.0)[None, None]
    out = N.half_bicubic(y)
    oi, oj = torch.meshgrid(torch.arange(h // 2, dtype=torch.float64), torch.arange(w // 2, dtype=torch.float64),
                            indexing="ij")
    expected = 3.0 * (2 * oi + 0.5) - 2.0 * (2 * oj + 0.5) + 7.0
    assert out.shape == (1, 1, h // 2, w // 2)
    torch.testing.assert_close(out[0, 0, 2:-2, 2:-2], expected[2:-2, 2:-2], rtol=0, atol=1e-4)  # float32 inside
    # symmetric borders: a constant stays constant everywhere
    torch.testing.assert_close(N.half_bicubic(torch.full((1, 1, 8, 8), 5.0, dtype=torch.float64)),
                               torch.full((1, 1, 4, 4), 5.0, dtype=torch.float64))


@pytest.mark.parametrize("kind", ["gauss", "laplace"])
def test_aggd_fit_recovers_known_distributions(kind):
    g = torch.Generator().manual_seed(1)
    n = 200_000
    if kind == "gauss":
        x = torch.randn(2, n, generator=g, dtype=torch.float64) * torch.tensor([[1.0], [0.5]], dtype=torch.float64)
        shape_true, beta_true = 2.0, math.sqrt(2.0) * torch.tensor([1.0, 0.5], dtype=torch.float64)
    else:
        u = torch.rand(2, n, generator=g, dtype=torch.float64) - 0.5
        b = torch.tensor([[1.0], [0.25]], dtype=torch.float64)
        x = -b * torch.sign(u) * torch.log1p(-2 * u.abs())  # Laplace(0, b): AGGD shape 1, scales b
        shape_true, beta_true = 1.0, b[:, 0]
    shape, beta_l, beta_r = N.aggd_fit(x)
    torch.testing.assert_close(shape, torch.full_like(shape, shape_true), rtol=0, atol=0.03)
    torch.testing.assert_close(beta_l, beta_true, rtol=0.02, atol=0)
    torch.testing.assert_close(beta_r, beta_true, rtol=0.02, atol=0)


def test_a_flat_image_has_no_niqe_an_error_alone_the_worst_reward_in_a_mix():
    flat = torch.full((1, 3, 96, 96), 0.5)
    textured = noisy(sample_photo("coffee", (96, 96)), 0.05)
    with pytest.raises(ValueError, match=r"NIQE is undefined for images \[1\]: no 96-px block has structure"):
        N.niqe(torch.cat([textured, flat]))
    with pytest.raises(ValueError, match=r"NIQE is undefined for images \[0\]"):
        score("niqe", flat)
    both = N.niqe(torch.cat([textured, flat]), flat="nan")
    assert torch.isfinite(both[0]) and torch.isnan(both[1])
    assert float(both[0]) == float(N.niqe(textured)[0])
    reward = Reward({"niqe": 1.0})(torch.cat([textured, flat]))  # a mix ranks it last instead of failing
    assert float(reward[1]) == 0.0 and float(reward[0]) == pytest.approx(min(1.0, max(0.0, 1 - float(both[0]) / 10)))
    with pytest.raises(ValueError, match="flat must be one of"):
        N.niqe(flat, flat="zero")


def test_half_precision_inputs_are_scored_in_float32():
    x = noisy(sample_photo("coffee", (192, 192)), 0.05)
    for dtype in (torch.float16, torch.bfloat16):
        low = x.to(dtype)
        out = N.niqe(low)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, N.niqe(low.float()), rtol=0, atol=0)


def test_too_small_images_are_refused():
    with pytest.raises(ValueError, match=r"images is 95x200 pixels; NIQE needs images of at least 96x96"):
        N.niqe(torch.rand(1, 3, 95, 200))


def test_parameter_file_errors_name_the_file(tmp_path):
    x = torch.rand(1, 3, 96, 96)
    with pytest.raises(FileNotFoundError, match=r"missing\.npz not found in " + str(tmp_path).replace("\\", "\\\\")):
        N.niqe(x, params_path=tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match=r"bad\.npz is unreadable or corrupt"):
        N.niqe(x, params_path=bad)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, mu_pris_param=np.zeros((1, 18)), cov_pris_param=np.eye(36), gaussian_window=np.ones((7, 7)))
    with pytest.raises(ValueError, match=r"wrong\.npz has shapes mu \(18,\).*expected \[36\]"):
        N.niqe(x, params_path=wrong)


def test_unknown_color_space_is_refused():
    with pytest.raises(ValueError, match=r"color_space is 'lab'; expected one of \('ycbcr', 'yiq'\)"):
        N.niqe(torch.rand(1, 3, 96, 96), color_space="lab")
