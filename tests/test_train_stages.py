"""Stages rl, distill and rl+distill on tiny compact models: targets, zero loss, objectives, resume across stages."""
import itertools

import pytest
import torch

from trajir.data import collate
from trajir.distillation import select_steps
from trajir.rewards import Reward
from trajir.train import build
from trajir.train.distill import Distill, cost_analysis
from trajir.train.distributed import DistEnv
from trajir.train.loop import train
from trajir.train.metrics_log import read_metrics
from trajir.train.randomness import sample_keys
from trajir.train.restorers import CompactRestorer
from trajir.train.rl import RLAlign, RLDistill
from test_train_framework import tiny_config
from trajir.train.config import Config


@pytest.fixture(scope="module")
def pretrained(tiny_pretrained):
    return tiny_pretrained


def _stage(cls, cfg):
    restorer = CompactRestorer(build.build_compact(cfg, cfg["run.init"]), build.build_grid(cfg), torch.device("cpu"))
    return cls(cfg, restorer, DistEnv())


def _batch(cfg, n=2, draw=0):
    train_set, _ = build.build_datasets(cfg)
    return collate([train_set.sample(i, draw) for i in range(n)])


def test_rl_target_is_the_best_scoring_branch(tmp_path, pretrained):
    cfg = tiny_config(tmp_path, f"run.init={pretrained}", "run.stage=rl", "rl.branches=3", "rl.explore_std=0.3")
    stage = _stage(RLAlign, cfg)
    batch = _batch(cfg)
    e, s = stage.explore(batch, sample_keys(0, 1, 0, 0, 1, 2))
    grid, reward = stage.restorer.grid, Reward.preset("psnr")
    # brute force: continue each candidate state alone with ODE steps, decode, score, pick (ties to the ODE)
    for i in range(2):
        k = int(e.position[i])
        scores = []
        for n in range(4):
            x = e.x_next[n, i:i + 1].clone()
            for a in range(k + 1, grid.steps):
                v = stage.restorer.predict(stage.sampler, x, grid.model_time(a, 1), {"lq": s["lq"][i:i + 1]})
                x = grid.jump(x, v, a, a + 1)
            image = stage.restorer.decode(x)
            assert torch.allclose(image, e.images[n, i:i + 1], atol=1e-5)
            scores.append(float(reward(image, batch["gt"][i:i + 1])))
        best = max(range(4), key=lambda n: (scores[n], -n))
        assert int(e.best[i]) == best
        assert scores == pytest.approx(e.scores[:, i].tolist(), abs=1e-5)
    assert torch.equal(e.etas[0], torch.zeros(2)) and bool((e.etas[1:] >= 0).all())


def test_rl_loss_is_zero_when_no_branch_beats_the_ode(tmp_path, pretrained):
    cfg = tiny_config(tmp_path, f"run.init={pretrained}", "run.stage=rl", "rl.branches=2")
    stage = _stage(RLAlign, cfg)

    class Constant:  # every candidate scores the same: the ODE keeps the tie
        needs_reference = False

        def __call__(self, images, reference=None):
            return torch.zeros(images.shape[0])

    stage.reward = Constant()
    loss, logs = stage.loss(_batch(cfg), sample_keys(0, 1, 0, 0, 1, 2))
    assert loss.detach().item() == 0.0 and float(logs["win_rate"]) == 0.0
    loss.backward()
    grads = [p.grad for group in stage.parameters() for p in group["params"] if p.grad is not None]
    assert all(float(g.abs().max()) == 0.0 for g in grads)


def test_rl_step_moves_the_ode_step_onto_the_winning_branch(tmp_path, pretrained):
    cfg = tiny_config(tmp_path, f"run.init={pretrained}", "run.stage=rl", "rl.branches=4", "rl.eta_fixed=0.8")
    stage = _stage(RLAlign, cfg)
    batch, keys = _batch(cfg), sample_keys(0, 1, 0, 0, 1, 2)
    e, s = stage.explore(batch, keys)
    assert e.eta_net is None and torch.allclose(e.etas[1:], torch.full((4, 2), 0.8))
    assert int((e.best > 0).sum()) > 0  # on this fixed draw some branch beats the ODE
    stage.explore = lambda batch, keys: (e, s)  # keep this exploration: only the regression of Eq. (15) moves
    opt = torch.optim.Adam(stage.parameters()[0]["params"], lr=3e-3)
    before = None
    for _ in range(30):  # repeated Eq. (15) steps on the same exploration: the regression error falls
        loss, _ = stage.loss(batch, keys)
        before = loss.detach().item() if before is None else before
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert stage.loss(batch, keys)[0].detach().item() < 0.7 * before


def test_rl_training_runs_resumes_and_exports_the_modulation_network(tmp_path, pretrained):
    cfg = tiny_config(tmp_path, f"run.init={pretrained}", "run.stage=rl", "rl.branches=2", "run.max_steps=4",
                      "run.save_every=2", "rl.refresh_every=2", "run.export=rl.safetensors")
    assert train(cfg) == "done"
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert {"rl_loss", "win_rate", "reward_ode", "reward_best", "eta"} <= set(rows[-1])
    assert all(r["reward_best"] >= r["reward_ode"] for r in rows)
    assert (tmp_path / "rl_modulation.safetensors").is_file()
    # resume across the stage boundary: a later rl run continues from step 2's checkpoint exactly
    again = tiny_config(tmp_path / "again", f"run.init={pretrained}", "run.stage=rl", "rl.branches=2",
                        "run.max_steps=4", "run.save_every=2", "rl.refresh_every=2")
    (tmp_path / "again").mkdir()
    import shutil
    shutil.copytree(tmp_path / "checkpoints" / "step_00000002", tmp_path / "again" / "checkpoints" / "step_00000002")
    assert train(again, resume="latest") == "done"
    losses = [r["rl_loss"] for r in read_metrics(tmp_path / "again" / "metrics.jsonl")]
    assert losses == [r["rl_loss"] for r in rows][2:]


def test_distill_selects_steps_from_the_teachers_real_cost_matrix(tmp_path, pretrained):
    cfg = tiny_config(tmp_path, f"run.init={pretrained}", "run.stage=distill", "distill.student_steps=2",
                      "distill.cost_batches=2")
    stage = _stage(Distill, cfg)
    train_set, _ = build.build_datasets(cfg)
    cost = cost_analysis(stage.restorer, stage.teacher, train_set, 2, 2, 0)
    k = cost.shape[0] - 1
    # the teacher's own Euler steps are free, longer jumps are not
    assert all(float(cost[a, a + 1]) < 1e-4 for a in range(k))
    assert float(cost[0, k]) > 1e-3
    for m in range(1, k + 1):
        best = min((sum(float(cost[a, b]) for a, b in zip(p, p[1:])), p)
                   for p in ([0, *mid, k] for mid in itertools.combinations(range(1, k), m - 1)))
        path = select_steps(cost, m)
        assert sum(float(cost[a, b]) for a, b in zip(path, path[1:])) == pytest.approx(best[0])
    assert stage.prepare(train_set) == select_steps(cost, 2)


def test_distill_path_fixes_the_students_jumps_and_refuses_impossible_paths(tmp_path, pretrained):
    cfg = tiny_config(tmp_path, f"run.init={pretrained}", "run.stage=distill", "distill.student_steps=2",
                      "distill.cost_batches=1")
    k = cfg["sampling.steps"]
    train_set, _ = build.build_datasets(cfg)
    chosen = _stage(Distill, cfg).prepare(train_set)
    other = [0, 1, k] if chosen != [0, 1, k] else [0, k - 1, k]
    stage = _stage(Distill, Config({**cfg, "distill.path": ",".join(map(str, other))}))
    assert stage.prepare(train_set) == other and stage.recipe().path == other
    for bad in ("0,1", f"1,2,{k}", f"0,2,1,{k}", f"0,{k},{k}", "0,x,4", f"0,1,{k + 1}"):
        with pytest.raises(ValueError, match=f"distill.path must be 3 increasing grid indices from "
                                             f"distill.start_index 0 to {k} .*got '{bad}'"):
            _stage(Distill, Config({**cfg, "distill.path": bad})).prepare(train_set)


def test_distill_lowers_its_loss_on_a_fixed_batch(tmp_path, pretrained):
    cfg = tiny_config(tmp_path, f"run.init={pretrained}", "run.stage=distill", "distill.student_steps=1",
                      "distill.start_index=1", "distill.lq_weight=0.2", "distill.cost_batches=1")
    stage = _stage(Distill, cfg)
    train_set, _ = build.build_datasets(cfg)
    assert stage.prepare(train_set) == [1, 4]
    batch, keys = _batch(cfg), sample_keys(0, 1, 0, 0, 1, 2)
    opt = torch.optim.Adam(stage.parameters(), lr=2e-3)
    first = None
    for _ in range(20):
        loss, _ = stage.loss(batch, keys)
        first = loss.detach().item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert stage.loss(batch, keys)[0].detach().item() < 0.7 * first
    recipe = stage.recipe()
    assert recipe.path == [1, 4] and recipe.lq_weight == 0.2 and recipe.ngs_w == 0.001 and recipe.nfe == 1


def test_distill_target_mixes_teacher_and_gt_and_skips_the_teacher_at_rho_1(tmp_path, pretrained, monkeypatch):
    import trajir.train.distill as distill_module
    from trajir.train import randomness
    from trajir.train.restorers import predictor
    from trajir.trajectory import run_from_lq

    cfg = tiny_config(tmp_path, f"run.init={pretrained}", "run.stage=distill", "distill.student_steps=1",
                      "distill.cost_batches=1")
    stage = _stage(Distill, cfg)
    stage.prepare(build.build_datasets(cfg)[0])
    batch, keys = _batch(cfg), sample_keys(0, 1, 0, 0, 1, 2)
    s = stage.restorer.encode(batch)
    noise = randomness.normal(keys, 1, s["x0"].shape[1:], s["x0"].device).to(s["x0"])
    with torch.no_grad():
        student = run_from_lq(stage.restorer.grid, stage.path, predictor(stage.restorer, stage.model), s["lq"],
                              noise, stage.lq_weight, stage.ngs_w, s["cond"]).final
        teacher = distill_module.teacher_trajectory(stage.restorer, stage.teacher, stage.restorer.grid, s, noise)[0][-1]
    for rho in (0.0, 0.5):
        stage.rho = rho
        expected = ((student - ((1 - rho) * teacher + rho * s["x0"])) ** 2).mean()
        assert stage.loss(batch, keys)[0].item() == pytest.approx(expected.item(), rel=1e-5)

    def no_teacher(*args, **kwargs):
        raise AssertionError("rho = 1 needs no teacher rollout")

    monkeypatch.setattr(distill_module, "teacher_trajectory", no_teacher)
    stage.rho = 1.0
    assert stage.loss(batch, keys)[0].item() == pytest.approx(((student - s["x0"]) ** 2).mean().item(), rel=1e-5)


def test_distill_and_rl_distill_train_end_to_end(tmp_path, pretrained):
    cfg = tiny_config(tmp_path / "d", f"run.init={pretrained}", "run.stage=distill", "run.max_steps=3",
                      "distill.cost_batches=1", "run.export=student.safetensors")
    assert train(cfg) == "done"
    cfg = tiny_config(tmp_path / "rd", f"run.init={tmp_path / 'd' / 'student.safetensors'}", "run.stage=rl+distill",
                      "run.max_steps=2", "rl.branches=2", "distill.start_index=1", "distill.ngs_w=0.01")
    assert train(cfg) == "done"
    stage = _stage(RLDistill, cfg)
    assert stage.path == [1, 2, 3, 4] and stage.ngs_w == 0.01 and stage.lq_weight is None


def test_plain_sde_alignment_switch(tmp_path, pretrained):
    cfg = tiny_config(tmp_path, f"run.init={pretrained}", "run.stage=rl", "rl.eta_fixed=1.0", "rl.explore_std=0")
    stage = _stage(RLAlign, cfg)
    assert stage.modulation is None and len(stage.parameters()) == 1
    e, _ = stage.explore(_batch(cfg), sample_keys(0, 1, 0, 0, 1, 2))
    assert torch.equal(e.etas[1:], torch.ones(cfg["rl.branches"], 2))
    with pytest.raises(ValueError, match="rl.branch_steps must be positions 0..2"):
        _stage(RLAlign, tiny_config(tmp_path, f"run.init={pretrained}", "rl.branch_steps=3"))


def test_noise_target_is_the_ode_step_plus_the_winners_noise(tmp_path, pretrained):
    from trajir.sde import rf_coefficients

    cfg = tiny_config(tmp_path, f"run.init={pretrained}", "run.stage=rl", "rl.branches=3", "rl.eta_fixed=0.6",
                      "rl.explore_std=0", "rl.target=noise")
    stage = _stage(RLAlign, cfg)
    e, _ = stage.explore(_batch(cfg), sample_keys(0, 1, 0, 0, 1, 2))
    t = stage.restorer.grid.t
    for i in range(2):
        k = int(e.position[i])
        _, beta, scale = rf_coefficients(float(t[k]), float(t[k + 1]), 0.6)
        for n in range(1, 4):
            deviation = e.x_next[n, i] - e.x_next[0, i]       # -scale * beta * z: zero mean, no drift
            assert abs(float(deviation.mean())) < 0.1 * scale * beta
            assert float(deviation.std()) == pytest.approx(scale * beta, rel=0.1)
