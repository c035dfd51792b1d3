"""The metric registry: declarations, the calling convention, input refusal, dtypes and devices."""
import math

import pytest
import torch
from conftest import sample_photo

from trajir import rewards
from trajir.rewards import METRICS, available, get_metric, score

IN_HOUSE = ("psnr", "psnr_y", "ssim", "ssim_y", "niqe", "uciqe", "uiqm")
LEARNED = ("lpips", "musiq", "clipiqa", "maniqa")
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                               reason="no CUDA device on this machine"))]


def call(name, images, reference=None):
    """Score with the reference only where the metric takes one."""
    return score(name, images, reference if get_metric(name).full_reference else None)


def test_registry_declares_every_metric():
    assert set(METRICS) == set(IN_HOUSE) | set(LEARNED)
    assert {n for n, m in METRICS.items() if m.full_reference} == {"psnr", "psnr_y", "ssim", "ssim_y", "lpips"}
    assert {n for n, m in METRICS.items() if not m.higher_is_better} == {"niqe", "lpips"}
    assert {n for n, m in METRICS.items() if m.needs_pyiqa} == set(LEARNED)
    assert get_metric("lpips").weight_files == (("LPIPS_v0.1_alex-df73285e.pth",), ("alexnet-owt-7be5be79.pth",))
    assert get_metric("niqe").options == ("color_space", "params_path", "flat")
    assert dict(get_metric("niqe").mix_options) == {"flat": "nan"}
    assert get_metric("maniqa").options == ("iqa_dir", "crops")
    assert get_metric("psnr").options == ()


def test_normalisers_map_to_higher_is_better_units():
    s = torch.tensor([0.0, 5.0, 10.0, 20.0, math.nan])
    torch.testing.assert_close(get_metric("niqe").normalise(s), torch.tensor([1.0, 0.5, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(get_metric("lpips").normalise(torch.tensor([0.0, 0.25])), torch.tensor([1.0, 0.75]))
    torch.testing.assert_close(get_metric("psnr").normalise(torch.tensor([25.0, 40.0])), torch.tensor([0.5, 0.8]))
    torch.testing.assert_close(get_metric("musiq").normalise(torch.tensor([70.0])), torch.tensor([0.7]))
    assert str(get_metric("niqe").normalise) == "clip(-0.1 * score + 1, 0, 1)"


def test_normalised_scores_prefer_the_clean_image():
    clean = sample_photo("astronaut", (192, 192))
    noisy = (clean + 0.1 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    slightly = (clean + 0.02 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    for name in ("psnr", "psnr_y", "ssim", "ssim_y"):
        n = get_metric(name).normalise
        assert n(score(name, slightly, clean)).item() > n(score(name, noisy, clean)).item(), name
    n = get_metric("niqe").normalise
    assert n(score("niqe", clean)).item() > n(score("niqe", noisy)).item()


def test_available_lists_in_house_metrics_and_no_learned_one_without_weights(tmp_path):
    names = available(iqa_dir=tmp_path)
    assert names == list(IN_HOUSE)
    assert set(available()) >= set(IN_HOUSE)


def test_calling_convention_errors():
    x = torch.rand(1, 3, 96, 96)
    with pytest.raises(ValueError, match=r"unknown metric 'fid'; expected one of \['clipiqa', 'lpips'"):
        score("fid", x)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['colour'\] for metric 'niqe'; it accepts "
                                         r"\['color_space', 'params_path', 'flat'\]"):
        score("niqe", x, colour="yiq")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['window'\] for metric 'ssim'; it accepts no options"):
        score("ssim", x, x, window=7)
    with pytest.raises(ValueError, match=r"niqe is a no-reference metric: pass reference=None"):
        score("niqe", x, x)


@pytest.mark.parametrize("name", IN_HOUSE)
def test_bad_images_are_refused_by_every_metric(name):
    good = torch.rand(1, 3, 96, 96)
    cases = [
        (good[0], r"images must have 4 dimensions \[B, C, H, W\], got shape \(3, 96, 96\)"),
        (good[:, :1], r"images must have 3 channels in dim 1 \(\[B, C, H, W\]\), got 1"),
        (good[:0], r"images has an empty batch \(shape \(0, 3, 96, 96\)\)"),
        ((good * 255).to(torch.uint8), r"images must be a floating-point tensor, got torch.uint8"),
        (good.numpy(), r"images must be a torch.Tensor, got ndarray"),
        (good * 255, r"images has values in \[\d.*, \d.*\]; expected 0\.\.1 \(values outside are refused, not clipped"),
        (torch.where(good > 0.5, math.nan, good), r"images contains NaN or inf values; expected finite numbers"),
    ]
    for images, message in cases:
        with pytest.raises(ValueError, match=message):
            call(name, images, good)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", IN_HOUSE)
def test_half_precision_inputs_on_every_device(name, device):
    clean = sample_photo("chelsea", (96, 128))
    images = (clean + 0.05 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    expected = call(name, images.bfloat16().float(), clean.bfloat16().float())  # CPU, float32, same values
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        i, r = images.to(device, dtype), clean.to(device, dtype)
        out = call(name, i, r)
        assert out.dtype == torch.float32 and out.shape == (1,) and out.device.type == device
        if dtype == torch.bfloat16:
            torch.testing.assert_close(out.cpu(), expected, rtol=1e-4, atol=1e-3)


def test_package_exports_the_documented_api():
    for attr in ("available", "score", "get_metric", "METRICS", "Reward", "set_default_iqa_dirs",
                 "MissingWeightsError", "CorruptWeightsError"):
        assert hasattr(rewards, attr), attr
