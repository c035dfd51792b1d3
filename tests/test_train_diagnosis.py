"""trajir.train.diagnosis on a tiny model: the reward gradient, the measured quantities, the sweep, the CLI."""
import json

import pytest
import torch

from test_train_framework import tiny_config
from test_train_stages import _batch, _stage
from trajir.train.__main__ import main as train_main
from trajir.train.diagnosis import diagnose, measure, reward_gradient
from trajir.train.randomness import sample_keys
from trajir.train.rl import RLAlign

KEYS = sample_keys(0, 1, 0, 0, 1, 2)


def test_reward_gradient_matches_a_finite_difference(tmp_path, tiny_pretrained):
    cfg = tiny_config(tmp_path, f"run.init={tiny_pretrained}", "run.stage=rl", "rl.eta_fixed=0.5")
    stage = _stage(RLAlign, cfg)
    stage.sampler.double()
    batch = _batch(cfg)
    s = {k: (v.double() if torch.is_tensor(v) else {kk: vv.double() for kk, vv in v.items()})
         for k, v in stage.restorer.encode(batch).items()}
    position = torch.tensor([0, 1])
    x = torch.randn(s["x0"].shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.5
    grad = reward_gradient(stage, x, position, s)

    def reward(state):
        grid, y = stage.restorer.grid, state.clone()
        for i in range(2):
            for p in range(int(position[i]) + 1, grid.steps):
                v = stage.sampler(y[i:i + 1], s["lq"][i:i + 1], grid.model_time(p, 1).double())
                y[i:i + 1] = grid.jump(y[i:i + 1], v, p, p + 1)
        return -float(((stage.restorer.decode(y) - stage.restorer.decode(s["x0"])) ** 2).mean())

    direction = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    eps = 1e-5
    numeric = (reward(x + eps * direction) - reward(x - eps * direction)) / (2 * eps)
    # the clamp of decode() has zero gradient where it is active, as the finite difference sees it
    assert float((grad * direction).sum()) == pytest.approx(numeric, rel=1e-4, abs=1e-9)


def test_measured_quantities_obey_their_definitions(tmp_path, tiny_pretrained):
    cfg = tiny_config(tmp_path, f"run.init={tiny_pretrained}", "run.stage=rl", "rl.eta_fixed=0.6",
                      "rl.explore_std=0", "rl.branches=4", "rl.target=branch")
    stage = _stage(RLAlign, cfg)
    out = measure(stage, _batch(cfg), KEYS)
    e, _ = stage.explore(_batch(cfg), KEYS)
    assert torch.equal(out["win"], (e.best > 0).double())
    rows = torch.arange(2)
    rms = (e.x_next[e.best, rows] - e.x_next[0]).flatten(1).double().pow(2).mean(1).sqrt()
    assert torch.allclose(out["best_rms"], rms)
    for name in ("best", "advantage"):
        assert bool((out[f"{name}_proj_gt"].abs() <= out[f"{name}_rms"] + 1e-12).all())   # Cauchy-Schwarz
        for key in ("cos_gt", "cos_ascent"):
            assert bool((out[f"{name}_{key}"].abs() <= 1 + 1e-9).all())
    assert bool((out["gain"] >= 0).all())
    # where the ODE wins, the argmax target is the ODE step itself: zero deviation
    assert torch.equal(out["best_rms"][e.best == 0], torch.zeros(int((e.best == 0).sum()), dtype=torch.float64))


def test_sweep_and_cli(tmp_path, tiny_pretrained, capsys):
    cfg = tiny_config(tmp_path, "rl.target=noise")
    sweep = [("N=2", {"rl.branches": 2, "rl.eta_fixed": 0.3}), ("k=1", {"rl.branches": 2, "rl.eta_fixed": 0.3,
                                                                      "rl.branch_steps": "1"}),
             ("k=8", {"rl.branches": 2, "rl.eta_fixed": 0.3, "rl.branch_steps": "8"})]
    results = diagnose(cfg, tiny_pretrained, sweep, batches=1)
    assert list(results) == ["N=2", "k=1"]          # a 4-step grid has no branch step 8
    assert 0 <= results["N=2"]["win"] <= 1
    out = tmp_path / "d.json"
    args = ["--set", f"run.out_dir={tmp_path}", "--set", "model.preset=tiny", "--set", "data.crop=32",
            "--set", "sampling.steps=4", "--set", "run.batch_size=2"]
    assert train_main(["diagnose-rl", "compact_lowlight_cpu", str(tiny_pretrained), *args, "--out", str(out)]) == 0
    saved = json.loads(out.read_text())[str(tiny_pretrained)]
    assert {"N=4", "N=8", "N=16", "k=0", "k=2", "eta=0.5"} <= set(saved) and "k=4" not in saved
    assert "| N=16 |" in capsys.readouterr().out
