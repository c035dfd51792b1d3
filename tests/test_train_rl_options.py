"""The rl stage's options on a tiny model: advantage weighting, eta updates, anchors and their control,
Best-of-N throughout one M-SDE trajectory, and block-constant antithetic exploration."""
import dataclasses

import pytest
import torch

from test_train_framework import tiny_config
from test_train_stages import _batch, _stage
from trajir.best_of_n import block_noise
from trajir.train import randomness
from trajir.train.config import Config
from trajir.train.loop import train
from trajir.train.randomness import sample_keys
from trajir.train.loop import build_optimizer
from trajir.train.rl import RLAlign, advantage_target, gradient_estimate, group_advantage

KEYS = sample_keys(0, 1, 0, 0, 1, 2)


def test_group_advantage_and_its_target_against_hand_computed_values():
    scores = torch.tensor([[1.0, 5.0], [2.0, 5.0], [3.0, 5.0]])       # [N = 3, B = 2]; sample 1: all tie
    adv = group_advantage(scores)
    sd = (2 / 3) ** 0.5
    assert adv[:, 0].tolist() == pytest.approx([-1 / sd, 0.0, 1 / sd])
    assert adv[:, 1].tolist() == [0.0, 0.0, 0.0]
    x_next = torch.randn(4, 2, 3, 2, 2, generator=torch.Generator().manual_seed(0))   # ODE + 3 branches
    target = advantage_target(x_next, adv)
    by_hand = x_next[0, 0] + sum(adv[n, 0] * (x_next[n + 1, 0] - x_next[0, 0]) for n in range(3)) / 3
    assert torch.allclose(target[0], by_hand, atol=1e-6)
    assert torch.equal(target[1], x_next[0, 1])                         # ties: the ODE step itself


def test_advantage_selection_regresses_onto_the_weighted_target_for_every_sample(tmp_path, tiny_pretrained):
    cfg = tiny_config(tmp_path, f"run.init={tiny_pretrained}", "run.stage=rl", "rl.branches=4", "rl.eta_fixed=0.8",
                      "rl.explore_std=0", "rl.select=advantage")
    stage = _stage(RLAlign, cfg)
    batch = _batch(cfg)
    e, s = stage.explore(batch, KEYS)
    stage.explore = lambda batch, keys: (e, s)
    target = advantage_target(e.x_next, group_advantage(e.scores[1:]))
    a, c = e.position, e.position + 1
    with torch.no_grad():
        step = stage.ode_step(stage.model, e.x_k, a, c, s)
    loss, logs = stage.loss(batch, KEYS)
    # every sample has distinct branch rewards, so every sample contributes (the argmax would drop ODE wins)
    assert float(logs["rl_loss"]) == pytest.approx(float(((step - target) ** 2).flatten(1).mean(1).mean()), rel=1e-5)
    assert loss.item() > 0
    best_cfg = Config({**cfg, "rl.select": "best"})
    assert stage.alignment_target(e)[1].tolist() == [1.0, 1.0]
    best = _stage(RLAlign, best_cfg)
    assert torch.equal(best.alignment_target(e)[1], (e.best > 0).float())


def _fixed_exploration(stage, batch, scores, eta_offsets):
    """A real exploration with chosen branch rewards and etas around the network's eta."""
    e, s = RLAlign.explore(stage, batch, KEYS)
    n, b = scores.shape
    etas = torch.cat([torch.zeros(1, b), e.eta_net.detach()[None] + eta_offsets])
    full = torch.cat([torch.full((1, b), -1e9), scores])               # the ODE never wins here
    return dataclasses.replace(e, scores=full, etas=etas, best=full.argmax(0)), s


@pytest.mark.parametrize("update", ["winner", "advantage", "none"])
def test_eta_updates(tmp_path, tiny_pretrained, update):
    cfg = tiny_config(tmp_path, f"run.init={tiny_pretrained}", "run.stage=rl", "rl.branches=4", "rl.eta_max=0.8",
                      "rl.explore_std=0.1", f"rl.eta_update={update}")
    stage = _stage(RLAlign, cfg)
    batch = _batch(cfg)
    offsets = torch.tensor([[-0.1, -0.1], [-0.05, -0.05], [0.05, 0.05], [0.1, 0.1]])
    equal = torch.ones(4, 2)                                             # eta does not change the reward ...
    lucky = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [1.0, 1.0]])  # ... except that the largest won

    def eta_grad(scores):
        e, s = _fixed_exploration(stage, batch, scores, offsets)
        stage.explore = lambda batch, keys: (e, s)
        for p in stage.modulation.parameters():
            p.grad = None
        stage.loss(batch, KEYS)[0].backward()
        last = list(stage.modulation.parameters())[-1]                  # the output bias
        return None if last.grad is None else float(last.grad.sum())

    if update == "none":
        assert eta_grad(lucky) is None                                   # the network is never trained
    elif update == "winner":
        assert eta_grad(lucky) < 0                                       # gradient descent raises eta
    else:
        assert eta_grad(equal) == 0.0                                    # no drift without a reward signal
        assert eta_grad(lucky) < 0                                       # and it follows a real one


def test_anchors_alone_are_the_control_and_the_final_anchor_backpropagates_through_the_ode(tmp_path,
                                                                                              tiny_pretrained):
    cfg = tiny_config(tmp_path, f"run.init={tiny_pretrained}", "run.stage=rl", "rl.branches=2", "rl.eta_fixed=0.8",
                      "rl.align_weight=0", "rl.final_weight=2.0")
    stage = _stage(RLAlign, cfg)
    batch = _batch(cfg)
    e, s = stage.explore(batch, KEYS)
    stage.explore = lambda batch, keys: (e, s)
    loss, logs = stage.loss(batch, KEYS)
    final = stage.ode_output(stage.model, e.x_start, s)
    expected = float(((final - s["x0"]) ** 2).mean())
    assert float(logs["final_loss"]) == pytest.approx(expected, rel=1e-5)
    assert loss.item() == pytest.approx(2.0 * expected, rel=1e-5)       # nothing of Eq. (15) is left in it
    loss.backward()
    # the gradient reaches the first layers through all K steps: BPTT, not a one-step loss
    first = next(stage.model.parameters())
    assert first.grad is not None and float(first.grad.abs().sum()) > 0
    # with the alignment term back, the loss is the sum of both
    stage.cfg = Config({**cfg, "rl.align_weight": 1.0})
    both, logs = stage.loss(batch, KEYS)
    assert both.item() == pytest.approx(float(logs["rl_loss"]) + 2.0 * expected, rel=1e-5)


def test_best_of_n_throughout_follows_the_winners_of_one_trajectory(tmp_path, tiny_pretrained):
    cfg = tiny_config(tmp_path, f"run.init={tiny_pretrained}", "run.stage=rl", "rl.branches=3", "rl.eta_fixed=0.8",
                      "rl.explore_std=0", "rl.mode=throughout", "rl.target=branch")
    stage = _stage(RLAlign, cfg)
    batch = _batch(cfg)
    e, s = stage.explore_throughout(batch, KEYS)
    steps = len(stage.eligible)                                          # 0 .. K-2 = 3 records per sample
    assert e.x_k.shape[0] == steps * 2 and s["x0"].shape[0] == steps * 2
    assert e.position.tolist() == [p for p in stage.eligible for _ in range(2)]
    rows = torch.arange(2)
    for p in range(steps - 1):
        now, nxt = slice(2 * p, 2 * p + 2), slice(2 * p + 2, 2 * p + 4)
        winner = e.x_next[:, now][e.best[now], rows]
        assert torch.equal(e.x_k[nxt], winner)                           # the trajectory moves to the winner
    # the winner of each step scores best among its candidates, each continued by ODE steps to the end
    assert torch.equal(e.scores.argmax(0)[e.best > 0], e.best[e.best > 0])
    assert (e.scores[e.best, torch.arange(len(e.best))] >= e.scores[0]).all()
    loss, logs = stage.loss(batch, KEYS)
    assert torch.isfinite(loss) and 0 <= float(logs["win_rate"]) <= 1


def test_throughout_mode_trains_end_to_end_with_anchors(tmp_path, tiny_pretrained):
    cfg = tiny_config(tmp_path, f"run.init={tiny_pretrained}", "run.stage=rl", "rl.branches=2", "run.max_steps=2",
                      "rl.mode=throughout", "rl.select=advantage", "rl.eta_update=advantage", "rl.gt_weight=0.5",
                      "rl.final_weight=0.5")
    assert train(cfg) == "done"
    with pytest.raises(ValueError, match="rl.select must be one of best, advantage"):
        tiny_config(tmp_path, "rl.select=mean")
    with pytest.raises(ValueError, match="rl.eta_update must be one of winner, advantage, none"):
        tiny_config(tmp_path, "rl.eta_update=fixed")


# --- structured exploration: block-constant branch noise, antithetic pairs --------------------------------------

def test_block_noise_repeats_each_coarse_cell_over_its_block_and_crops():
    coarse = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)     # [C = 2, h = 3, w = 2]
    noise = block_noise(coarse, (8, 5))                                         # blocks of 3 x 3, cropped
    assert noise.shape == (2, 8, 5)
    for y in range(8):
        for x in range(5):
            assert noise[:, y, x].tolist() == coarse[:, y // 3, x // 3].tolist()
    assert torch.equal(block_noise(coarse, (3, 2)), coarse)                     # one pixel per cell: unchanged
    with pytest.raises(ValueError, match="4 x 2 cells cannot be spread over 3 x 5 pixels"):
        block_noise(torch.zeros(4, 2), (3, 5))


def test_branch_noise_white_blocks_and_antithetic_pairs(tmp_path, tiny_pretrained):
    base = (f"run.init={tiny_pretrained}", "run.stage=rl", "rl.branches=4")
    white = _stage(RLAlign, tiny_config(tmp_path, *base))
    shape = (3, 16, 16)
    z = white.branch_noise(KEYS, 5, shape, "cpu")
    # scale 1 without pairs is the M-SDE's white noise, drawn exactly as before the option existed
    assert torch.equal(z, randomness.normal(KEYS, 5, (4, *shape), "cpu").transpose(0, 1))
    blocks = _stage(RLAlign, tiny_config(tmp_path, *base, "rl.explore_scale=8", "rl.antithetic=true"))
    zb = blocks.branch_noise(KEYS, 5, shape, "cpu")
    assert zb.shape == (4, 2, *shape)
    assert torch.equal(zb[2:], -zb[:2])                                        # (z, -z) pairs
    cells = zb.reshape(4, 2, 3, 2, 8, 2, 8)
    assert torch.equal(cells, cells[..., :1, :, :1].expand_as(cells))          # constant on 8 x 8 blocks
    assert not torch.equal(zb[:, :, :, :8], zb[:, :, :, 8:])                   # but the blocks differ
    with pytest.raises(ValueError, match="rl.branches must be even, got 3"):
        _stage(RLAlign, tiny_config(tmp_path, f"run.init={tiny_pretrained}", "run.stage=rl", "rl.branches=3",
                                    "rl.antithetic=true"))
    with pytest.raises(ValueError, match="rl.explore_scale must be >= 1, got 0"):
        tiny_config(tmp_path, "rl.explore_scale=0")


def test_antithetic_block_exploration_explores_and_trains(tmp_path, tiny_pretrained):
    cfg = tiny_config(tmp_path, f"run.init={tiny_pretrained}", "run.stage=rl", "rl.branches=4", "rl.eta_fixed=0.5",
                      "rl.explore_std=0", "rl.select=advantage", "rl.explore_scale=4", "rl.antithetic=true",
                      "rl.target=noise")
    stage = _stage(RLAlign, cfg)
    e, s = stage.explore(_batch(cfg), KEYS)
    deviation = e.x_next[1:] - e.x_next[:1]                                     # the branches' noise, [N, B, ...]
    assert torch.allclose(deviation[2:], -deviation[:2], atol=1e-6)            # opposite pairs
    h, w = deviation.shape[-2:]
    cells = deviation.reshape(*deviation.shape[:-2], h // 4, 4, w // 4, 4)
    assert torch.allclose(cells, cells[..., :1, :, :1].expand_as(cells), atol=1e-6)
    assert deviation.abs().max() > 0
    assert train(Config({**cfg, "run.max_steps": 2})) == "done"


def test_gradient_estimate_by_hand_and_unbiased_for_a_linear_reward():
    x_next = torch.tensor([[[0.0, 0.0]], [[1.0, 0.0]], [[0.0, 2.0]]])      # ODE + 2 branches, B = 1, D = 2
    scores = torch.tensor([[3.0], [1.0]])
    power = (1 + 4) / 2 / 2                                                  # mean square per element and branch
    by_hand = (1.0 * torch.tensor([1.0, 0.0]) - 1.0 * torch.tensor([0.0, 2.0])) / 2 / power
    assert torch.allclose(gradient_estimate(x_next, scores)[0], by_hand)
    # a linear reward g . d over many white deviations: the estimate converges to g itself
    gen = torch.Generator().manual_seed(1)
    g = torch.tensor([0.5, -2.0, 1.0, 0.0, 3.0, -1.0])
    d = 0.1 * torch.randn(40000, 1, 6, generator=gen)
    estimate = gradient_estimate(torch.cat([torch.zeros(1, 1, 6), d]), (d @ g)[..., None].squeeze(-1))
    assert torch.allclose(estimate[0], g, atol=0.06)
    # the reward's scale is kept (the advantage target would normalise it away)
    assert torch.allclose(gradient_estimate(torch.cat([torch.zeros(1, 1, 6), d]), 10 * (d @ g)), 10 * estimate,
                          rtol=1e-4)


def test_gradient_selection_moves_the_ode_step_along_the_estimate_for_every_sample(tmp_path, tiny_pretrained):
    cfg = tiny_config(tmp_path, f"run.init={tiny_pretrained}", "run.stage=rl", "rl.branches=4", "rl.eta_fixed=0.5",
                      "rl.explore_std=0", "rl.select=gradient", "rl.step_size=0.05", "rl.antithetic=true")
    stage = _stage(RLAlign, cfg)
    e, _ = stage.explore(_batch(cfg), KEYS)
    target, weight = stage.alignment_target(e)
    expected = e.x_next[0] + 0.05 * gradient_estimate(e.x_next, e.scores[1:])
    assert torch.allclose(target, expected) and not torch.allclose(target, e.x_next[0])
    assert weight.tolist() == [1.0, 1.0]
    assert train(Config({**cfg, "run.max_steps": 2})) == "done"
    with pytest.raises(ValueError, match="rl.step_size must be > 0"):
        tiny_config(tmp_path, "rl.step_size=0")


def test_sgd_takes_a_step_proportional_to_the_gradient(tmp_path):
    cfg = tiny_config(tmp_path, "optim.name=sgd", "optim.lr=0.1", "optim.momentum=0.5")
    weight = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    optimizer = build_optimizer(cfg, [{"params": [weight]}])
    assert isinstance(optimizer, torch.optim.SGD)
    gradient = torch.tensor([1.0, -2.0])                             # of the loss weight . gradient
    for expected in ([0.9, -1.8], [0.75, -1.5]):                      # momentum 0.5: the 2nd step is 0.1 x 1.5 g
        optimizer.zero_grad()
        (weight * gradient).sum().backward()
        optimizer.step()
        assert weight.tolist() == pytest.approx(expected)
    assert isinstance(build_optimizer(tiny_config(tmp_path), [{"params": [weight]}]), torch.optim.AdamW)
    with pytest.raises(ValueError, match="optim.name"):
        tiny_config(tmp_path, "optim.name=lion")
