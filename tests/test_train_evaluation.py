"""trajir.train.evaluation: held-out units, paired scoring, the two-level bootstrap against its closed form."""
import math

import pytest
import torch

from test_train_framework import tiny_config
from trajir.data import sample_split
from trajir.compact import load_compact
from trajir.train import evaluation
from trajir.train.evaluation import bootstrap_mean, make_units, paired_difference


def test_two_level_bootstrap_variance_matches_its_closed_form():
    g = torch.Generator().manual_seed(0)
    p, u = 7, 12
    values = (torch.randn(p, 1, generator=g) * 0.8 + torch.randn(p, u, generator=g) * 0.5).double()
    # resampling P photos, then U units in each: Var = (B + W / U) / P with the photos' population variance B of
    # their means and the mean population variance W inside a photo
    means = values.mean(1)
    between = float(((means - means.mean()) ** 2).mean())
    within = float(((values - means[:, None]) ** 2).mean())
    expected = math.sqrt((between + within / u) / p)
    result = bootstrap_mean(values, resamples=40000, seed=1)
    assert result["std"] == pytest.approx(expected, rel=0.03)
    assert result["mean"] == pytest.approx(float(values.mean()), abs=1e-12)
    assert result["lo"] < result["mean"] < result["hi"]
    # a wide normal interval: mean +- 1.96 sd, the percentile interval agrees to within a few per cent of its width
    assert result["hi"] - result["lo"] == pytest.approx(2 * 1.96 * expected, rel=0.06)


def test_one_photo_interval_is_the_units_standard_error():
    values = torch.randn(1, 400, generator=torch.Generator().manual_seed(3)) * 2.0 + 5.0
    result = bootstrap_mean(values, resamples=20000)
    se = float(values.std(unbiased=False)) / math.sqrt(400)
    assert result["std"] == pytest.approx(se, rel=0.03)
    assert result["p_le_0"] == 0.0


def test_paired_difference_of_a_constant_shift_is_exact_and_pairing_removes_shared_variation():
    g = torch.Generator().manual_seed(2)
    a = torch.randn(5, 20, generator=g) * 3.0   # large variation shared by both models (content, draw)
    b = a - 0.3                                  # model a is exactly 0.3 better on every unit
    diff = paired_difference(a, b, resamples=2000)
    assert diff["mean"] == pytest.approx(0.3) and diff["lo"] == pytest.approx(0.3) and diff["hi"] == pytest.approx(0.3)
    assert diff["p_le_0"] == 0.0
    unpaired = bootstrap_mean(a, resamples=2000)["std"]
    assert unpaired > 0.3   # unpaired, the standard error of one mean alone exceeds the 0.3 shift
    with pytest.raises(ValueError, match="paired scores must cover the same units"):
        paired_difference(a, b[:, :3])
    with pytest.raises(ValueError, match="level must lie in"):
        bootstrap_mean(a, level=1.5)


def test_units_are_pure_functions_of_their_keys_and_never_use_training_photos(tmp_path):
    cfg = tiny_config(tmp_path)
    units = make_units(cfg, crops=2, draws=3)
    again = make_units(cfg, crops=2, draws=3)
    assert torch.equal(units.lq, again.lq) and units.noise_seeds == again.noise_seeds
    train_files, held_out = sample_split()
    assert not {f.stem for f in train_files} & set(units.names)
    extra = sorted(p.stem for p in evaluation.EXTRA_FOLDER.glob("*.png"))
    assert units.names == [f.stem for f in held_out] + extra and len(extra) >= 5
    assert units.lq.shape == (len(units.names), 6, 3, 32, 32)
    # draws of one crop share the GT and differ in the degradation; every unit has its own noise seed
    assert torch.equal(units.gt[0, 0], units.gt[0, 2]) and not torch.equal(units.lq[0, 0], units.lq[0, 1])
    assert len({s for seeds in units.noise_seeds for s in seeds}) == units.lq.shape[0] * 6
    # a photo's units do not depend on which other photos are evaluated
    alone = make_units(cfg, crops=2, draws=3, extra=False)
    assert alone.names == [f.stem for f in held_out] and torch.equal(alone.lq, units.lq[:len(held_out)])
    with pytest.raises(ValueError, match="crops and draws must be >= 1"):
        make_units(cfg, crops=0)


def test_two_models_are_scored_on_identical_draws(tmp_path, tiny_pretrained):
    cfg = tiny_config(tmp_path, "eval.crops=2", "eval.draws=2", "eval.resamples=500")
    result = evaluation.evaluate_models({"a": str(tiny_pretrained), "b": str(tiny_pretrained)}, cfg)
    a, b = result["scores"]["a"]["psnr"], result["scores"]["b"]["psnr"]
    assert torch.equal(a, b)  # same model, same units, same noise: identical, so the paired difference is 0
    row = evaluation.summary(result, "psnr", "a", reference="b")
    assert row["diff"]["mean"] == 0.0 and row["diff"]["lo"] == 0.0 and row["diff"]["hi"] == 0.0
    # and the scores are those of restoring each unit with its own noise seed
    net, recipe = load_compact(tiny_pretrained)
    units = result["units"]
    one = evaluation.model_restorer(net, recipe)(units.lq[1, 3:4], units.noise_seeds[1][3:4])
    from trajir.rewards import score
    assert float(score("psnr", one, units.gt[1, 3:4])) == pytest.approx(float(a[1, 3]), abs=1e-4)
    assert result["nfe"] == {"degraded input": 0, "a": 4, "b": 4}


def test_evaluate_command_prints_intervals_and_the_paired_difference(tmp_path, tiny_pretrained, capsys):
    from trajir.train.__main__ import main as train_main

    args = ["--set", f"run.out_dir={tmp_path}", "--set", "model.preset=tiny", "--set", "data.val_crop=32",
            "--set", "sampling.steps=4", "--set", "eval.crops=1", "--set", "eval.draws=1", "--set",
            "eval.resamples=100", "--set", "eval.extra_photos=false"]
    assert train_main(["evaluate", "compact_lowlight_cpu", str(tiny_pretrained), str(tiny_pretrained), *args]) == 0
    out = capsys.readouterr().out
    assert "| model | NFE | PSNR | SSIM | compared with |" in out
    lines = [line for line in out.splitlines() if line.startswith(f"| {tiny_pretrained}")]
    assert len(lines) == 2 and "+0.00 [+0.00, +0.00]" in lines[1]    # the same model: no difference at all
    assert "2 held-out photos" in out


def test_intervals_print_at_each_metrics_precision_in_every_table():
    assert evaluation.format_interval(19.2345, 18.1, 20.55, "psnr") == "19.23 [18.10, 20.55]"
    assert evaluation.format_interval(0.0131, -0.001, 0.026, "ssim", signed=True) == "+0.0131 [-0.0010, +0.0260]"
    from trajir.train.reproduce import comparison_table, markdown_table

    rows = [{"method": "x", "model": "m", "nfe": 2, "psnr": 19.2345, "psnr_lo": 18.1, "psnr_hi": 20.55,
             "ssim": 0.69123, "ssim_lo": 0.6, "ssim_hi": 0.71}]
    assert markdown_table(rows, ["psnr", "ssim"]).splitlines()[2] == \
        "| x | m | 2 | 19.23 [18.10, 20.55] | 0.6912 [0.6000, 0.7100] |"
    diffs = [{"model": "rl", "reference": "pre", "d_psnr": -0.234, "d_psnr_lo": -0.85, "d_psnr_hi": 0.33,
              "d_ssim": 0.0131, "d_ssim_lo": -0.001, "d_ssim_hi": 0.026, "p_psnr_le_0": 0.77}]
    assert comparison_table(diffs, ["psnr", "ssim"]).splitlines()[2] == \
        "| rl | pre | -0.23 [-0.85, +0.33] | +0.0131 [-0.0010, +0.0260] | 0.770 |"
