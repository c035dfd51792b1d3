"""Analyses and restoration with exported compact models: evaluate, the cost figure, trajectory plots, restore."""
import json

import pytest
import torch

from test_train_framework import tiny_config
from trajir.compact import Recipe, load_compact, restore
from trajir.train.__main__ import main as train_main
from trajir.train.config import load_config
from trajir.train.analysis import analyze_cost, evaluate_file, trajectories


def test_evaluate_reports_held_out_metrics(tmp_path, tiny_pretrained):
    cfg = tiny_config(tmp_path, "val.draws=1")
    result = evaluate_file(tiny_pretrained, cfg)
    assert set(result) == {"psnr", "ssim", "nfe"} and result["nfe"] == 4
    assert 0 < result["psnr"] < 60 and -1 <= result["ssim"] <= 1


def test_cost_figure_and_best_paths(tmp_path, tiny_pretrained):
    pytest.importorskip("matplotlib", reason="the figures need the plot extra (matplotlib)")
    cfg = tiny_config(tmp_path, f"run.init={tiny_pretrained}", "distill.cost_batches=1")
    out = tmp_path / "cost.png"
    result = analyze_cost(cfg, str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "cost.json").read_text())
    assert saved["best_paths"]["4"]["path"] == [0, 1, 2, 3, 4]          # K jumps: the teacher's own grid
    assert saved["best_paths"]["4"]["cost"] == pytest.approx(0.0, abs=1e-4)
    assert result["best_paths"][1]["path"] == [0, 4]
    assert result["best_paths"][1]["cost"] >= result["best_paths"][2]["cost"] - 1e-9
    with pytest.raises(ValueError, match="needs the teacher"):
        analyze_cost(tiny_config(tmp_path), str(out))


def test_trajectory_figure_through_the_cli(tmp_path, tiny_pretrained, capsys):
    pytest.importorskip("matplotlib", reason="the figures need the plot extra (matplotlib)")
    out = tmp_path / "traj.png"
    args = ["--set", f"run.out_dir={tmp_path}", "--set", "model.preset=tiny", "--set", "data.val_crop=32",
            "--set", "sampling.steps=4"]
    assert train_main(["plot-trajectories", "compact_lowlight_cpu", str(tiny_pretrained), str(tiny_pretrained),
                       *args, "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG" and "wrote" in capsys.readouterr().out
    assert trajectories(tiny_config(tmp_path), [str(tiny_pretrained)], str(tmp_path / "b.png")).endswith("b.png")


def test_tiled_restore_matches_untiled_inside_one_tile_and_keeps_the_size(tiny_pretrained):
    net, recipe = load_compact(tiny_pretrained)
    lq = torch.rand(1, 3, 72, 100, generator=torch.Generator().manual_seed(0))
    whole = restore(net, recipe, lq, seed=3)
    assert whole.shape == lq.shape and 0 <= float(whole.min()) and float(whole.max()) <= 1
    assert torch.equal(restore(net, recipe, lq, seed=3, tile=128), whole)  # one tile covers it
    calls = []
    tiled = restore(net, recipe, lq, seed=3, tile=48, overlap=16, progress=lambda d, t: calls.append((d, t)))
    assert tiled.shape == lq.shape and calls[-1] == (6, 6)
    # a tiny convolutional net with attention sees each tile alone: close to, not equal to, the whole image
    assert float((tiled - whole).abs().mean()) < 0.1
    with pytest.raises(ValueError, match="lq must hold values in 0..1"):
        restore(net, recipe, lq * 2, seed=0)


def test_recipe_validation():
    grid = {"param": "rf", "times": [1.0, 0.5, 0.0]}
    assert Recipe(grid=grid).path == [0, 1, 2]
    with pytest.raises(ValueError, match="recipe path must increase"):
        Recipe(grid=grid, path=[0, 2, 1])
    with pytest.raises(ValueError, match="lq_weight must lie in"):
        Recipe(grid=grid, lq_weight=2.0)
    assert Recipe.from_json(Recipe(grid=grid, path=[1, 2], ngs_w=0.1).to_json()).path == [1, 2]


def test_reproduce_runs_every_phase_then_skips_finished_ones(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="the reproduction draws the cost figure (plot extra)")
    from trajir.train.reproduce import reproduce

    cfg = tiny_config(tmp_path, "run.max_steps=6", "reproduce.rl_steps=2", "reproduce.distill_steps=2",
                      "reproduce.control_time_steps=3", "reproduce.ship_steps=2", "reproduce.phase_ema=0.5",
                      "reproduce.ship_colour=lq_power_law",
                      "eval.crops=1", "eval.draws=1", "eval.resamples=200", "rl.branches=2", "distill.cost_batches=1")
    rows = reproduce(cfg, log=lambda *_: None)
    assert [(r["model"], r["nfe"]) for r in rows] == [
        ("degraded input", 0), ("gamma + non-local means", 0), ("pretrained", 4), ("control", 4),
        ("control_time", 4), ("rl", 4), ("distill_2", 2), ("distill_1", 1), ("rl_distill_2", 2), ("rl_distill_1", 1),
        ("shipped", 2)]
    assert all(r["psnr_lo"] <= r["psnr"] <= r["psnr_hi"] for r in rows)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["rows"] == rows and saved["seed"] == cfg["run.seed"]
    assert set(saved["timings_s"]) == {r["model"] for r in rows[2:]} and min(saved["timings_s"].values()) > 0

    def phase(name):
        return json.loads(json.dumps(dict(load_config(tmp_path / name / "config.toml"))))

    # the controls are flow matching from the pretrained model at the RL learning rate: as many steps, and the
    # wall-clock control's own count; every phase after pretraining keeps the phase EMA
    control, timed, shipped = phase("control"), phase("control_time"), phase("shipped")
    assert control["run.stage"] == timed["run.stage"] == "pretrain"
    assert (control["run.max_steps"], timed["run.max_steps"]) == (2, 3)
    assert control["optim.lr"] == timed["optim.lr"] == cfg["reproduce.rl_lr"]
    assert control["run.init"].endswith("pretrained/model.safetensors")
    assert phase("rl")["model.ema_decay"] == phase("distill_1")["model.ema_decay"] == shipped["model.ema_decay"] == 0.5
    assert phase("pretrained")["model.ema_decay"] == cfg["model.ema_decay"]
    # the shipped student: distill_2 fine-tuned onto the GT alone
    assert shipped["distill.rho"] == 1.0 and shipped["distill.student_steps"] == 2
    assert shipped["run.init"].endswith("distill_2/model.safetensors") and shipped["run.max_steps"] == 2
    # only the shipped student carries the colour step, in its exported recipe
    assert shipped["sampling.colour"] == "lq_power_law" and phase("distill_2")["sampling.colour"] == ""
    exported = {name: load_compact(tmp_path / name / "model.safetensors")[1].colour for name in ("shipped", "rl")}
    assert exported == {"shipped": "lq_power_law", "rl": ""}
    pairs = {(c["model"], c["reference"]): c for c in saved["comparisons"]}
    assert {("rl", "pretrained"), ("rl", "control"), ("rl", "control_time"), ("rl_distill_1", "distill_1"),
            ("shipped", "gamma + non-local means")} <= set(pairs)
    c = pairs[("rl", "control")]
    assert c["d_psnr_lo"] <= c["d_psnr"] <= c["d_psnr_hi"]
    text = (tmp_path / "results.md").read_text()
    assert "| RL + Distillation | rl_distill_1 | 1 |" in text and "| rl | control |" in text
    assert "fine-tuned onto the GT (colour step: lq_power_law) | shipped | 2 |" in text
    assert "| rl | control_time |" in text and "Wall-clock per phase: pretrained " in text
    assert (tmp_path / "cost_rl.png").is_file()
    messages = []
    reproduce(cfg, log=messages.append)  # everything is there: no phase trains again
    assert sum("done already" in m for m in messages) == 9
