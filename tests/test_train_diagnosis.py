"""trajir.train.diagnosis and trajir.train.gradient_check on a tiny model: the reward gradient, the measured
quantities, the sweep, the block projection, the exact gradient and its held-apart check, the CLI."""
import json

import pytest
import torch

from test_train_framework import tiny_config
from test_train_stages import _batch, _stage
from trajir.train.__main__ import main as train_main
from trajir.train import gradient_check
from trajir.train.diagnosis import block_projection, diagnose, measure, reward_gradient
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


def test_block_projection_is_an_orthogonal_projection_and_white_noise_sees_the_whole_ascent():
    x = torch.randn(2, 3, 8, 12, generator=torch.Generator().manual_seed(0))
    y = torch.randn(2, 3, 8, 12, generator=torch.Generator().manual_seed(1))
    p = block_projection(x, 4)
    assert torch.allclose(block_projection(p, 4), p, atol=1e-6)                       # idempotent
    assert float((p * y).sum()) == pytest.approx(float((x * block_projection(y, 4)).sum()), rel=1e-5)  # symmetric
    assert torch.allclose(p[..., :4, :4], x[..., :4, :4].mean((-1, -2), keepdim=True).expand(2, 3, 4, 4))
    assert torch.equal(block_projection(x, 1), x)
    with pytest.raises(ValueError, match="explore_scale 5 does not divide the crop 8 x 12"):
        block_projection(x, 5)


def test_ascent_share_is_one_for_white_noise_and_below_for_blocks(tmp_path, tiny_pretrained):
    base = (f"run.init={tiny_pretrained}", "run.stage=rl", "rl.eta_fixed=0.3", "rl.explore_std=0", "rl.branches=2")
    cfg = tiny_config(tmp_path, *base)
    white = measure(_stage(RLAlign, cfg), _batch(cfg), KEYS)
    assert torch.allclose(white["ascent_share"], torch.ones(2, dtype=torch.float64))
    blocks = measure(_stage(RLAlign, tiny_config(tmp_path, *base, "rl.explore_scale=8")), _batch(cfg), KEYS)
    assert bool(((blocks["ascent_share"] > 0) & (blocks["ascent_share"] < 1)).all())


# --- trajir.train.gradient_check ----------------------------------------------------------------------------------

def test_exact_gradient_matches_a_finite_difference_and_is_the_sum_of_the_per_step_terms(tmp_path, tiny_pretrained):
    cfg = tiny_config(tmp_path, f"run.init={tiny_pretrained}", "run.stage=rl")
    stage = _stage(RLAlign, cfg)
    batch = _batch(cfg)
    net = stage.restorer.trainable()
    g = gradient_check.exact_gradient(stage, [(batch, KEYS)])
    direction = torch.randn(g.shape, generator=torch.Generator().manual_seed(2))
    eps = 1e-3

    def loss(n):
        return -float(gradient_check.final_psnr(stage, n, batch, KEYS).double().mean())

    numeric = (loss(gradient_check.stepped(net, -direction, eps * direction.norm()))
               - loss(gradient_check.stepped(net, direction, eps * direction.norm()))) / (2 * eps)
    assert float(torch.dot(g, direction)) == pytest.approx(numeric, rel=0.03)
    # chain rule: the sum over steps k of J_k^T g_{k+1}, the terms the RL loss samples one of per sample
    s = stage.restorer.encode(batch)
    noise = gradient_check.randomness.normal(KEYS, 1, s["x0"].shape[1:], "cpu")
    with torch.no_grad():
        states = gradient_check.run(stage.restorer.grid, stage.path, noise, gradient_check.predictor(
            stage.restorer, net), s["cond"], lq=s["lq"], keep=True).states
    path, params = torch.tensor(stage.path), [p for p in net.parameters() if p.requires_grad]
    total = 0
    mse = 10 ** (-gradient_check.final_psnr(stage, net, batch, KEYS) / 10)          # [2]
    for k in range(len(stage.path) - 1):           # the last term's continuation is empty: the final state itself
        for i in range(2):                         # -PSNR = 10 log10(MSE): each sample's MSE gradient / its MSE
            position = torch.full((2,), k)
            ascent = reward_gradient(stage, states[k + 1], position, s)     # of -MSE over every pixel of both
            step = stage.ode_step(net, states[k][i:i + 1], path[position][:1], path[position + 1][:1],
                                  {"x0": s["x0"][i:i + 1], "lq": s["lq"][i:i + 1], "cond": {"lq": s["lq"][i:i + 1]}})
            weight = 10 / torch.log(torch.tensor(10.0)) / mse[i]            # d(-PSNR_i)/d(MSE_i) / (batch mean)
            (-(step * ascent[i:i + 1]).sum() * weight).backward()
        total = total + gradient_check._flat_grad(params)
    assert gradient_check._cos(total, g) == pytest.approx(1.0, abs=1e-5)


def test_a_small_step_against_the_exact_gradient_raises_the_psnr_of_its_own_batch(tmp_path, tiny_pretrained):
    cfg = tiny_config(tmp_path, f"run.init={tiny_pretrained}", "run.stage=rl")
    stage = _stage(RLAlign, cfg)
    batches = [(_batch(cfg), KEYS)]
    g = gradient_check.exact_gradient(stage, batches)
    assert gradient_check.held_apart_change(stage, g, batches, 0.0) == 0.0
    assert gradient_check.held_apart_change(stage, g, batches, 1e-3) > 0      # PSNR rises against the gradient
    assert gradient_check.held_apart_change(stage, -g, batches, 1e-3) < 0


def test_gradient_check_cli(tmp_path, tiny_pretrained, capsys):
    out = tmp_path / "g.json"
    args = ["--set", f"run.out_dir={tmp_path}", "--set", "model.preset=tiny", "--set", "data.crop=32",
            "--set", "sampling.steps=4", "--set", "run.batch_size=2", "--set", "rl.branches=2",
            "--set", "rl.eta_fixed=0.3"]
    assert train_main(["diagnose-rl", "compact_lowlight_cpu", str(tiny_pretrained), *args, "--gradients",
                       "--out", str(out)]) == 0
    saved = json.loads(out.read_text())[str(tiny_pretrained)]
    assert len(saved["rl_cosines"]) == 4 and all(-1 <= c <= 1 for c in saved["rl_cosines"])
    assert set(saved["held_apart"]) == {"8", "32", "96"}
    assert "| 96 samples |" in capsys.readouterr().out
