"""Synthetic degradations: determinism, real degradation, closed forms of each formula, input checks."""
import math

import kornia
import pytest
import torch
import torch.nn.functional as F

from conftest import sample_photo
from trajir.data import STRENGTH_OPTIONS, TASKS, degrade, degrade_at_strength, strength_options, task_options
from trajir.data.scattering import depth_proxy


@pytest.fixture(scope="module")
def photos():
    return torch.cat([sample_photo("astronaut", (64, 64)), sample_photo("coffee", (64, 64))])


def psnr(a, b):
    return -10 * torch.log10(((a - b) ** 2).mean(dim=(1, 2, 3)))


# Per-task PSNR band of the default ranges on the two photos: clearly degraded, not destroyed.
PSNR_BANDS = {"sr": (14, 30), "deblur": (13, 30), "denoise": (14, 34), "jpeg": (18, 34), "lowlight": (3, 15),
              "derain": (15, 35),
              "raindrop": (12, 35), "desnow": (10, 32), "underwater": (8, 28), "dehaze": (5, 25)}


def test_every_task_has_a_band():
    assert set(PSNR_BANDS) == set(TASKS)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_seeded_and_degrading(task, photos):
    lq = degrade(task, photos, 7)
    assert lq.shape == photos.shape and lq.dtype == photos.dtype
    assert float(lq.min()) >= 0 and float(lq.max()) <= 1
    assert torch.equal(lq, degrade(task, photos, 7))
    assert torch.equal(lq, degrade(task, photos, torch.Generator().manual_seed(7)))
    assert not torch.equal(lq, degrade(task, photos, 8))
    lo, hi = PSNR_BANDS[task]
    p = psnr(lq, photos)
    assert bool(((p > lo) & (p < hi)).all()), f"{task}: PSNR {p.tolist()} outside ({lo}, {hi})"


@pytest.mark.parametrize("task", sorted(TASKS))
def test_parameters_drawn_per_image(task, photos):
    twins = photos[:1].expand(2, -1, -1, -1)
    lq = degrade(task, twins, 3)
    assert not torch.equal(lq[0], lq[1])


@pytest.mark.parametrize("task", ["sr", "denoise", "raindrop", "underwater"])
def test_half_precision_in_float32_out_in_dtype(task, photos):
    lq16 = degrade(task, photos.half(), 5)
    assert lq16.dtype == torch.float16
    ref = degrade(task, photos.half().float(), 5)
    assert float((lq16.float() - ref).abs().max()) < 2e-3


def test_denoise_noise_level_is_sigma():
    grey = torch.full((1, 3, 64, 64), 0.5)
    noise = degrade("denoise", grey, 0, sigma=0.05) - grey
    assert abs(float(noise.std()) - 0.05) < 0.002
    assert abs(float(noise.mean())) < 0.002


def test_lowlight_closed_form_without_noise(photos):
    lq = degrade("lowlight", photos, 0, gamma=1.8, gain=0.2, shot=0.0, read=0.0)
    torch.testing.assert_close(lq, 0.2 * photos.pow(1.8))


def test_lowlight_noise_grows_with_brightness():
    levels = torch.tensor([0.1, 0.9])[:, None, None, None].expand(2, 3, 64, 64)
    lq = degrade("lowlight", levels, 0, gamma=1.0, gain=0.5, shot=0.01, read=0.0)
    std = (lq - 0.5 * levels).std(dim=(1, 2, 3))
    # shot noise: std = sqrt(shot * d) for d = 0.05 and 0.45
    torch.testing.assert_close(std, torch.tensor([math.sqrt(0.0005), math.sqrt(0.0045)]), rtol=0.06, atol=0)


def test_dehaze_closed_form_at_uniform_depth(photos):
    lq = degrade("dehaze", photos, 0, beta=1.2, airlight=0.9, near=1.0)
    t = math.exp(-1.2)
    torch.testing.assert_close(lq, photos * t + 0.9 * (1 - t))


def test_underwater_identity_at_zero_distance(photos):
    torch.testing.assert_close(degrade("underwater", photos, 0, distance=0.0, forward_scatter=0.0), photos)


def test_underwater_absorbs_red_first():
    white = torch.ones(8, 3, 32, 32)
    lq = degrade("underwater", white, 0, distance=5.0, forward_scatter=0.0)
    # red has the larger attenuation and the weaker veil of the two ranges, so on white it ends below green
    # everywhere; blue's ranges overlap red's attenuation, so only on average
    assert bool((lq[:, 0] < lq[:, 1]).all())
    assert float(lq[:, 0].mean()) < float(lq[:, 2].mean()) - 0.1


def test_sr_matches_blur_downscale_upscale_reference(photos):
    lq = degrade("sr", photos, 0, blur_sigma=1.5, noise_sigma=0.0, jpeg_quality=100)
    # independent reference: separable Gaussian by explicit convolution, then the same resizes
    r = 5
    k = torch.exp(-torch.arange(-r, r + 1.0) ** 2 / (2 * 1.5 ** 2))
    k = (k / k.sum()).to(photos)
    x = F.pad(photos, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
    x = F.conv2d(x, k.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)
    small = F.interpolate(x, size=(16, 16), mode="bicubic", antialias=True, align_corners=False)
    # the codec is kornia's (even quality 100 subsamples chroma), applied at the low resolution
    small = kornia.enhance.jpeg_codec_differentiable(small.clamp(0, 1), torch.tensor([100.0, 100.0]))
    ref = F.interpolate(small, size=(64, 64), mode="bicubic", align_corners=False).clamp(0, 1)
    torch.testing.assert_close(lq, ref, atol=1e-5, rtol=0)


def test_sr_scale_sets_the_low_resolution():
    # a checkerboard of 3-pixel squares (period 6) is below the Nyquist limit at x2 (period 3 at low
    # resolution) and above it at x4 (period 1.5), where the antialiased downscale removes it
    board = ((torch.arange(64)[:, None] // 3 + torch.arange(64)[None] // 3) % 2).float().expand(1, 3, 64, 64)
    opts = dict(blur_sigma=0.1, noise_sigma=0.0, jpeg_quality=100)
    x2, x4 = degrade("sr", board, 0, scale=2, **opts), degrade("sr", board, 0, scale=4, **opts)
    assert float(x2.std()) > 0.2 and float(x4.std()) < 0.03


def test_deblur_spreads_a_point_along_the_angle():
    point = torch.zeros(1, 3, 33, 33)
    point[..., 16, 16] = 1.0
    lq = degrade("deblur", point, 0, length=9, angle=0.0, direction=0.0)[0, 0]
    assert float(lq.sum()) == pytest.approx(1.0, abs=1e-5)
    rows = (lq > 1e-4).nonzero()[:, 0]
    cols = (lq > 1e-4).nonzero()[:, 1]
    assert set(rows.tolist()) == {16} and int(cols.max() - cols.min()) == 8


@pytest.mark.parametrize("task, nothing", [("derain", dict(density=0.0)), ("raindrop", dict(count=0)),
                                           ("desnow", dict(density=0.0, veil=0.0))])
def test_weather_vanishes_at_zero_strength(task, nothing, photos):
    torch.testing.assert_close(degrade(task, photos, 0, **nothing), photos)


def test_rain_only_brightens_and_falls_vertically(photos):
    lq = degrade("derain", photos, 0, tilt=0.0, width=0.3)
    streaks = lq - photos
    assert float(streaks.min()) > -1e-6
    s = streaks.mean(dim=1)
    vertical = float((s[:, 1:, :] * s[:, :-1, :]).mean())
    horizontal = float((s[:, :, 1:] * s[:, :, :-1]).mean())
    assert vertical > 3 * horizontal


def test_a_raindrop_changes_only_its_ellipse(photos):
    lq = degrade("raindrop", photos, 0, count=1, radius=0.1, aspect=1.0)
    changed = (lq - photos).abs().amax(dim=1) > 1e-6
    area = changed.sum(dim=(1, 2)).float()
    r = 0.1 * 64
    assert bool((area > 0).all()) and bool((area <= math.pi * r * r + 2 * math.pi * r).all()), area


def test_depth_proxy_is_normalised_and_recedes_upwards():
    g = torch.Generator().manual_seed(0)
    d = depth_proxy((16, 3, 48, 40), g, torch.zeros(1))
    assert d.shape == (16, 1, 48, 40)
    assert float(d.min()) == 0.0 and float(d.max()) == pytest.approx(1.0)
    assert float(d[:, :, :8].mean()) > float(d[:, :, -8:].mean()) + 0.3


def test_task_options_lists_defaults():
    assert task_options("denoise") == {"sigma": (5 / 255, 50 / 255)}
    assert set(task_options("sr")) == {"scale", "blur_sigma", "noise_sigma", "jpeg_quality"}


def test_bad_inputs_are_named(photos):
    with pytest.raises(ValueError, match=r"task must be one of \['deblur', 'dehaze'.*got 'blur'"):
        degrade("blur", photos, 0)
    with pytest.raises(ValueError,
                       match=r"unknown option\(s\) \['sigmaa'\] for task 'denoise'; valid options: \['sigma'\]"):
        degrade("denoise", photos, 0, sigmaa=0.1)
    with pytest.raises(ValueError, match=r"sigma must satisfy 0.0 <= low <= high <= 1.0, got \(0.3, 0.1\)"):
        degrade("denoise", photos, 0, sigma=(0.3, 0.1))
    with pytest.raises(ValueError, match=r"length must be odd integers, got \(8, 12\)"):
        degrade("deblur", photos, 0, length=(8, 12))
    with pytest.raises(ValueError, match=r"images must have 3 channels"):
        degrade("denoise", photos[:, :1], 0)
    with pytest.raises(ValueError, match=r"images must be at least 16x16 pixels, got 8x64"):
        degrade("denoise", photos[:, :, :8], 0)
    bad = photos.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"images contains 1 NaN"):
        degrade("denoise", bad, 0)
    with pytest.raises(ValueError, match=r"seed must be an int seed or a CPU torch.Generator, got float"):
        degrade("denoise", photos, 0.5)
    with pytest.raises(ValueError, match=r"scale must be an integer in 2..8, got 3.0"):
        degrade("sr", photos, 0, scale=3.0)


def test_jpeg_is_kornias_codec_at_the_drawn_quality(photos):
    lq = degrade("jpeg", photos, 4, quality=25)
    ref = kornia.enhance.jpeg_codec_differentiable(photos, torch.full((2,), 25.0))
    assert torch.equal(lq, ref.clamp(0, 1))
    with pytest.raises(ValueError, match=r"quality must be whole numbers, got \(10.5, 20\)"):
        degrade("jpeg", photos, 0, quality=(10.5, 20))


def test_strength_fixes_each_strength_option_inside_its_range():
    for task in TASKS:
        ranges = task_options(task)
        mild, strong = strength_options(task, 0.0), strength_options(task, 1.0)
        assert set(mild) == set(STRENGTH_OPTIONS[task]) and set(mild) <= set(ranges)
        for name, direction in STRENGTH_OPTIONS[task].items():
            lo, hi = ranges[name]
            assert (mild[name], strong[name]) == ((lo, hi) if direction > 0 else (hi, lo)), (task, name)
    assert strength_options("deblur", 0.5) == {"length": 15}  # 14, rounded to the next odd kernel size
    assert strength_options("denoise", 0.25)["sigma"] == pytest.approx(5 / 255 + 0.25 * 45 / 255)
    assert strength_options("lowlight", 0.5)["gain"] == pytest.approx(0.2)
    assert strength_options("jpeg", 0.5) == {"quality": 30}
    with pytest.raises(ValueError, match=r"strength must be a number in 0..1 \(0 = the mildest degradation of the "
                                         r"range, 1 = the strongest\), got 1.5"):
        strength_options("denoise", 1.5)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_a_stronger_degradation_is_further_from_the_clean_image(task, photos):
    psnrs = [psnr(degrade_at_strength(task, photos, 3, s), photos).mean() for s in (0.0, 0.5, 1.0)]
    assert psnrs[0] > psnrs[1] > psnrs[2], f"{task}: {psnrs}"
    assert torch.equal(degrade_at_strength(task, photos, 3, 0.5), degrade_at_strength(task, photos, 3, 0.5))
