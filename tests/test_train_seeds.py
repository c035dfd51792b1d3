"""trajir.train.seeds: Student's t against closed forms and tables, the seed interval, compare-seeds."""
import math

import pytest
import torch

from trajir.train.seeds import seed_interval, seed_report, student_t_cdf, student_t_quantile


@pytest.mark.parametrize("x", [-7.0, -1.3, 0.0, 0.4, 2.5, 30.0])
def test_t_cdf_matches_the_closed_forms_for_one_and_two_degrees_of_freedom(x):
    assert student_t_cdf(x, 1) == pytest.approx(0.5 + math.atan(x) / math.pi, abs=1e-9)       # Cauchy
    assert student_t_cdf(x, 2) == pytest.approx(0.5 + x / (2 * math.sqrt(2 + x * x)), abs=1e-9)


@pytest.mark.parametrize("df, expected", [(1, 12.7062), (2, 4.3027), (5, 2.5706), (10, 2.2281), (30, 2.0423),
                                          (1000, 1.9623)])
def test_t_quantile_matches_the_published_two_sided_95_percent_table(df, expected):
    assert student_t_quantile(0.975, df) == pytest.approx(expected, abs=1e-4)
    assert student_t_quantile(0.025, df) == pytest.approx(-expected, abs=1e-4)


def test_t_quantile_inverts_the_cdf_and_refuses_bad_input():
    for p in (0.6, 0.9, 0.995):
        assert student_t_cdf(student_t_quantile(p, 3), 3) == pytest.approx(p, abs=1e-9)
    assert student_t_quantile(0.5, 4) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="p must lie in"):
        student_t_quantile(1.0, 3)
    with pytest.raises(ValueError, match="df must be > 0"):
        student_t_cdf(1.0, 0)


def test_seed_interval_is_the_mean_plus_minus_t_times_the_standard_error():
    d = [0.031, 0.109, -0.406]
    mean = sum(d) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / 2)
    half = 4.302653 * sd / math.sqrt(3)
    s = seed_interval(d)
    assert s["mean"] == pytest.approx(mean) and s["sd"] == pytest.approx(sd) and s["seeds"] == 3
    assert s["lo"] == pytest.approx(mean - half, abs=1e-5) and s["hi"] == pytest.approx(mean + half, abs=1e-5)
    assert seed_interval([0.2, 0.2, 0.2]) == {"mean": pytest.approx(0.2), "lo": pytest.approx(0.2),
                                              "hi": pytest.approx(0.2), "sd": pytest.approx(0.0, abs=1e-12), "seeds": 3}


def test_seed_interval_covers_the_true_mean_at_its_level():
    g = torch.Generator().manual_seed(5)
    draws = torch.randn(4000, 3, generator=g) * 0.3 + 0.1
    covered = sum(s["lo"] <= 0.1 <= s["hi"] for s in map(seed_interval, draws))
    assert covered / 4000 == pytest.approx(0.95, abs=0.012)
    # a normal interval (1.96) with three seeds would cover far less: t is what keeps the level
    normal = sum(abs(float(x.mean()) - 0.1) <= 1.96 * float(x.std()) / math.sqrt(3) for x in draws)
    assert normal / 4000 < 0.85


def test_seed_interval_errors_name_the_input():
    with pytest.raises(ValueError, match="differences: a seed interval needs at least 2 seeds, got 1"):
        seed_interval([0.3])
    with pytest.raises(ValueError, match="differences must be finite"):
        seed_interval([0.3, float("nan")])
    with pytest.raises(ValueError, match="level must lie in"):
        seed_interval([0.3, 0.1], level=0)


def test_seed_report_lists_each_seed_then_the_mean_over_seeds():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(3, 8, generator=g).double() * 2 + 20
    scores = {"b1": base, "a1": base + 0.3, "b2": base + 1.0, "a2": base + 1.5}
    result = {"scores": {k: {"psnr": v, "ssim": v / 100} for k, v in scores.items()}, "resamples": 200}
    table = seed_report(result, [("a1", "b1"), ("a2", "b2")])
    rows = table.splitlines()
    assert rows[2] == "| 1 | a1 − b1 | +0.30 [+0.30, +0.30] | +0.0030 [+0.0030, +0.0030] |"
    assert rows[3] == "| 2 | a2 − b2 | +0.50 [+0.50, +0.50] | +0.0050 [+0.0050, +0.0050] |"
    # mean 0.4, sd 0.1414, t(0.975, 1) = 12.706: 0.4 +- 1.2706
    assert rows[4] == "| mean over 2 seeds | Student t over the seeds | +0.40 [-0.87, +1.67] | +0.0040 [-0.0087, +0.0167] |"
    with pytest.raises(ValueError, match="pairs: compare at least 2 seeds"):
        seed_report(result, [("a1", "b1")])


def test_compare_seeds_command(tmp_path, tiny_pretrained, capsys):
    from trajir.train.__main__ import main as train_main

    args = ["--set", f"run.out_dir={tmp_path}", "--set", "model.preset=tiny", "--set", "data.val_crop=32",
            "--set", "sampling.steps=4", "--set", "eval.crops=1", "--set", "eval.draws=1", "--set",
            "eval.resamples=100", "--set", "eval.extra_photos=false"]
    m = str(tiny_pretrained)
    assert train_main(["compare-seeds", "compact_lowlight_cpu", "--pair", m, m, "--pair", m, m, *args]) == 0
    out = capsys.readouterr().out
    assert "2 held-out photos" in out
    assert "| mean over 2 seeds | Student t over the seeds | +0.00 [+0.00, +0.00] | +0.0000 [+0.0000, +0.0000] |" in out
    with pytest.raises(SystemExit, match="give --pair A B once per training seed, at least twice"):
        train_main(["compare-seeds", "compact_lowlight_cpu", "--pair", m, m, *args])
    with pytest.raises(SystemExit, match="missing.safetensors"):
        train_main(["compare-seeds", "compact_lowlight_cpu", "--pair", m, str(tmp_path / "missing.safetensors"),
                    "--pair", m, m, *args])
