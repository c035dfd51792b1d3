"""Reward: weighted means of normalised metrics, presets, raw details and the per-image table."""
import pytest
import torch
from conftest import sample_photo

from trajir.rewards import PRESETS, Reward, get_metric, score


@pytest.fixture(scope="module")
def batch():
    clean = torch.cat([sample_photo("astronaut", (96, 128)), sample_photo("coffee", (96, 128))])
    z = torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    return (clean + 0.05 * z).clamp(0, 1), clean


def test_psnr_preset_is_psnr_over_fifty(batch):
    images, clean = batch
    reward = Reward.preset("psnr")
    assert reward.needs_reference and reward.weights == {"psnr": 1.0}
    torch.testing.assert_close(reward(images, clean), score("psnr", images, clean) / 50)
    # the ranking is PSNR's: a less noisy candidate has the larger reward
    assert bool((reward(images, clean) < reward(((images + clean) / 2), clean)).all())


def test_weighted_mix_is_the_weighted_mean_of_normalised_scores(batch):
    images, clean = batch
    reward = Reward({"psnr": 2.0, "niqe": 1.0, "uiqm": 0.0, "ssim_y": 1.0})
    assert list(reward.weights) == ["psnr", "niqe", "ssim_y"]  # a zero weight is left out
    p, n, s = score("psnr", images, clean), score("niqe", images), score("ssim_y", images, clean)
    expected = (2 * p / 50 + (1 - n / 10).clamp(0, 1) + s) / 4
    torch.testing.assert_close(reward(images, clean), expected)
    details = reward.details(images, clean)
    assert set(details) == {"psnr", "niqe", "ssim_y"}
    torch.testing.assert_close(details["niqe"], n)
    torch.testing.assert_close(reward.combine(details), expected)


def test_no_reference_reward_ignores_a_reference_and_needs_none(batch):
    images, clean = batch
    reward = Reward({"niqe": 1.0, "uciqe": 1.0})
    assert not reward.needs_reference
    torch.testing.assert_close(reward(images), reward(images, clean))


def test_full_reference_reward_without_reference_is_refused(batch):
    with pytest.raises(ValueError, match=r"this reward uses full-reference metric\(s\) \['psnr'\]: pass reference"):
        Reward({"psnr": 1.0, "niqe": 1.0})(batch[0])


def test_unified_preset_is_the_fluxir_mix():
    reward = Reward.preset("fluxir-unified", iqa_dir="/weights")
    assert reward.weights == {"lpips": 1.0, "niqe": 1.0, "musiq": 1.0, "clipiqa": 1.0}
    assert reward.needs_reference
    assert reward.options["lpips"] == {"iqa_dir": "/weights"} and reward.options["niqe"] == {}
    assert set(PRESETS) == {"psnr", "fluxir-unified"}


def test_options_reach_the_metric(batch):
    images, _ = batch
    reward = Reward({"niqe": 1.0}, options={"niqe": {"color_space": "ycbcr"}})
    torch.testing.assert_close(reward.details(images)["niqe"], score("niqe", images, color_space="ycbcr"))


def test_table_lists_raw_scores_per_image(batch):
    images, clean = batch
    reward = Reward({"psnr": 1.0, "niqe": 1.0})
    details = reward.details(images, clean)
    lines = reward.table(images, clean).splitlines()
    assert lines[0].split() == ["image", "psnr", "(dB)", "niqe", "reward"]
    assert len(lines) == 3
    for i, line in enumerate(lines[1:]):
        cells = line.split()
        assert cells[0] == str(i)
        assert float(cells[1]) == pytest.approx(details["psnr"][i].item(), abs=1e-4)
        assert float(cells[2]) == pytest.approx(details["niqe"][i].item(), abs=1e-4)
        assert float(cells[3]) == pytest.approx(reward.combine(details)[i].item(), abs=1e-4)


@pytest.mark.parametrize("weights, message", [
    ({}, r"weights must be a non-empty dict of metric name -> weight, got \{\}"),
    ({"psnr": -1.0}, r"weight of 'psnr' is -1.0; expected a finite number >= 0"),
    ({"psnr": float("nan")}, r"weight of 'psnr' is nan; expected a finite number >= 0"),
    ({"psnr": "1"}, r"weight of 'psnr' is '1'; expected a finite number >= 0"),
    ({"psnr": 0.0}, r"weights are all zero \(\{'psnr': 0.0\}\); expected at least one positive weight"),
    ({"fid": 1.0}, r"unknown metric 'fid'"),
])
def test_bad_weights_are_refused(weights, message):
    with pytest.raises(ValueError, match=message):
        Reward(weights)


def test_bad_options_and_presets_are_refused():
    with pytest.raises(ValueError, match=r"options given for 'ssim', which has no positive weight in \['niqe'\]"):
        Reward({"niqe": 1.0}, options={"ssim": {}})
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['sigma'\] for metric 'niqe'"):
        Reward({"niqe": 1.0}, options={"niqe": {"sigma": 1}})
    with pytest.raises(ValueError, match=r"unknown reward preset 'lpips'; expected one of "
                                         r"\['fluxir-unified', 'psnr'\]"):
        Reward.preset("lpips")


def test_every_metric_normaliser_is_used():
    reward = Reward({"psnr": 1.0, "lpips": 3.0})
    details = {"psnr": torch.tensor([30.0]), "lpips": torch.tensor([0.2])}
    expected = (30 / 50 + 3 * (1 - 0.2)) / 4
    assert reward.combine(details).item() == pytest.approx(expected)
    assert get_metric("lpips").normalise(torch.tensor([0.2])).item() == pytest.approx(0.8)
