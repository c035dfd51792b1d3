"""NGS Eq. (19)–(20), LQ initial state Eq. (17), distillation cost Eq. (16), step selection, conversions."""
import itertools
import math

import pytest
import torch

from closed_form import rf_score, rf_velocity
from trajir.conversions import rf_score_from_v, rf_x0_from_v, vp_x0_from_eps
from trajir.distillation import (cost_matrix_rf, cost_matrix_vp, distillation_cost, implied_eps, implied_velocity,
                                 select_steps)
from trajir.guidance import ngs_eps, ngs_velocity, ngs_x0
from trajir.interpolation import lq_initial_state_rf, lq_initial_state_vp, rf_latent_scale_for_lq_weight
from trajir.sde import rf_msde_step, vp_msde_step


def _t(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# --- negative LQ guidance -------------------------------------------------------------------------------------

def test_ngs_with_w0_returns_the_prediction_unchanged():
    v, x, lq = _t(2, 3, 4, 4, seed=1), _t(2, 3, 4, 4, seed=2), _t(2, 3, 4, 4, seed=3)
    assert ngs_velocity(v, x, lq, 0.7, 0.0, 0.0) is v
    assert ngs_eps(v, x, lq, 0.6, 0.8, 1.0, 0.0, 0.0) is v
    assert ngs_x0(v, lq, 0.0) is v
    assert torch.equal(ngs_velocity(v, x, lq, 0.7, 0.0, torch.zeros(2)), v)


@pytest.mark.parametrize("w", [0.001, 0.5, 1.0])
def test_guided_clean_estimate_is_pushed_away_from_lq(w):
    v, x, lq = _t(2, 3, 4, 4, seed=1), _t(2, 3, 4, 4, seed=2), _t(2, 3, 4, 4, seed=3)
    t = 0.6
    guided_v = ngs_velocity(v, x, lq, t, 0.0, w)
    assert torch.allclose(rf_x0_from_v(x, guided_v, t), ngs_x0(rf_x0_from_v(x, v, t), lq, w), atol=1e-12)
    a_s, s_s = 0.6, 0.8
    guided_eps = ngs_eps(v, x, lq, a_s, s_s, 1.0, 0.0, w)
    assert torch.allclose(vp_x0_from_eps(x, guided_eps, a_s, s_s),
                          ngs_x0(vp_x0_from_eps(x, v, a_s, s_s), lq, w), atol=1e-12)


def test_ngs_w1_one_step_jump_reflects_the_target_about_lq():
    x, lq, target = _t(1, 3, 8, 8, seed=4), _t(1, 3, 8, 8, seed=5), _t(1, 3, 8, 8, seed=6)
    t = 0.8
    v = implied_velocity(x, target, t, 0.0)  # the one-step jump to t_end = 0 lands on target
    landed = rf_msde_step(x, ngs_velocity(v, x, lq, t, 0.0, 1.0), t, 0.0, 0.0, None)
    assert torch.allclose(landed, 2 * target - lq, atol=1e-12)
    a_s, s_s = 0.6, 0.8
    eps = implied_eps(x, target, a_s, s_s, 1.0, 0.0)
    landed = vp_msde_step(x, ngs_eps(eps, x, lq, a_s, s_s, 1.0, 0.0, 1.0), a_s, s_s, 1.0, 0.0, 0.0, None)
    assert torch.allclose(landed, 2 * target - lq, atol=1e-12)


def test_ngs_eps_lq_implied_noise_matches_eq19_limit():
    # alpha_e = 1, sigma_e = 0: eps_lq = (x - alpha_s y) / sigma_s
    x, lq, eps = _t(4, seed=1), _t(4, seed=2), _t(4, seed=3)
    a_s, s_s, w = 0.6, 0.8, 0.3
    eps_lq = (x - a_s * lq) / s_s
    assert torch.allclose(ngs_eps(eps, x, lq, a_s, s_s, 1.0, 0.0, w), (1 + w) * eps - w * eps_lq, atol=1e-12)


def test_ngs_bad_input():
    v = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"lq has shape \(2, 4\)"):
        ngs_x0(v, torch.zeros(2, 4), 0.5)
    with pytest.raises(ValueError, match="t_end must be smaller than t"):
        ngs_velocity(v, v, v, 0.2, 0.3, 0.5)
    with pytest.raises(ValueError, match="lq contains"):
        ngs_x0(v, torch.full((2, 3), float("nan")), 0.5)
    with pytest.raises(ValueError, match="w is inf"):
        ngs_x0(v, v, float("inf"))
    with pytest.raises(ValueError, match="must be cleaner"):
        ngs_eps(v, v, v, 1.0, 0.0, 1.0, 0.0, 0.5)


# --- LQ initial state ----------------------------------------------------------------------------------------

def test_lq_initial_state_limits_and_formula():
    lq, noise = _t(2, 16, 8, 8, seed=1), _t(2, 16, 8, 8, seed=2)
    assert torch.equal(lq_initial_state_rf(lq, noise, 1.0), noise)
    assert torch.equal(lq_initial_state_rf(lq, noise, 0.0), lq)
    assert torch.equal(lq_initial_state_vp(lq, noise, 0.0), noise)
    assert torch.equal(lq_initial_state_vp(lq, noise, 1.0), lq)
    assert torch.allclose(lq_initial_state_rf(lq, noise, 0.96962), 0.03038 * lq + 0.96962 * noise, atol=1e-12)
    assert torch.allclose(lq_initial_state_vp(lq, noise, 0.0036), 0.06 * lq + math.sqrt(0.9964) * noise,
                          atol=1e-12)
    per_sample = lq_initial_state_rf(lq, noise, torch.tensor([0.2, 0.9], dtype=torch.float64))
    assert torch.allclose(per_sample[1], 0.1 * lq[1] + 0.9 * noise[1], atol=1e-12)


def test_latent_scale_for_lq_weight_reproduces_the_weight():
    sigma0, weight = 0.8, 0.35
    c = rf_latent_scale_for_lq_weight(weight, sigma0)
    lq, noise = _t(3, seed=1), _t(3, seed=2)
    assert torch.allclose(sigma0 * noise + (1 - sigma0) * (c * lq), weight * lq + sigma0 * noise, atol=1e-12)
    with pytest.raises(ValueError, match="sigma_start must lie in"):
        rf_latent_scale_for_lq_weight(0.1, 1.0)
    with pytest.raises(ValueError, match="lq_weight must lie in"):
        rf_latent_scale_for_lq_weight(1.5, 0.5)


def test_lq_initial_state_bad_input():
    with pytest.raises(ValueError, match="t_start must be <= 1"):
        lq_initial_state_rf(torch.zeros(2), torch.zeros(2), 1.2)
    with pytest.raises(ValueError, match="alpha_bar must be >= 0"):
        lq_initial_state_vp(torch.zeros(2), torch.zeros(2), -0.1)
    with pytest.raises(ValueError, match="noise has shape"):
        lq_initial_state_rf(torch.zeros(2, 3), torch.zeros(3, 2), 0.5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_dtype_is_kept(dtype):
    lq, noise = _t(2, 4, seed=1, dtype=torch.float32), _t(2, 4, seed=2, dtype=torch.float32)
    assert lq_initial_state_rf(lq.to(dtype), noise.to(dtype), 0.5).dtype == dtype
    assert ngs_x0(lq.to(dtype), noise.to(dtype), 0.5).dtype == dtype
    assert implied_velocity(lq.to(dtype), noise.to(dtype), 0.5, 0.2).dtype == dtype


# --- implied predictions, cost, step selection ---------------------------------------------------------------

def test_implied_predictions_round_trip():
    x_a, x_b = _t(2, 3, 4, 4, seed=1), _t(2, 3, 4, 4, seed=2)
    v = implied_velocity(x_a, x_b, 0.9, 0.3)
    assert torch.allclose(rf_msde_step(x_a, v, 0.9, 0.3, 0.0, None), x_b, atol=1e-12)
    a_a, s_a, a_b, s_b = 0.5, math.sqrt(0.75), 0.9, math.sqrt(0.19)
    eps = implied_eps(x_a, x_b, a_a, s_a, a_b, s_b)
    assert torch.allclose(vp_msde_step(x_a, eps, a_a, s_a, a_b, s_b, 0.0, None), x_b, atol=1e-12)


def test_distillation_cost_is_a_per_sample_l2_norm():
    pred, implied = _t(3, 2, 4, seed=1), _t(3, 2, 4, seed=2)
    cost = distillation_cost(pred, implied)
    assert cost.shape == (3,) and cost.dtype == torch.float32
    for i in range(3):
        assert cost[i].item() == pytest.approx(math.sqrt(((pred[i] - implied[i]) ** 2).sum().item()), rel=1e-6)
    assert torch.equal(distillation_cost(pred, pred), torch.zeros(3))


def test_cost_vanishes_on_a_one_step_consistent_trajectory():
    # straight rectified-flow path with constant velocity: every jump is free
    times = torch.linspace(1, 0, 6, dtype=torch.float64).tolist()
    x_start, v = _t(2, 3, 4, 4, seed=1), _t(2, 3, 4, 4, seed=2)
    states = [x_start + (t - times[0]) * v for t in times]
    cost = cost_matrix_rf(states, times, [v] * len(times))
    upper = torch.triu(torch.ones(6, 6, dtype=torch.bool), diagonal=1)
    assert torch.all(cost[upper] < 1e-6) and torch.all(torch.isinf(cost[~upper]))
    # a VP DDIM trajectory with a fixed eps is one-step consistent too
    alphas = [0.1, 0.4, 0.7, 0.95]
    sigmas = [math.sqrt(1 - a * a) for a in alphas]
    x0, eps = _t(2, 8, seed=3), _t(2, 8, seed=4)
    states = [a * x0 + s * eps for a, s in zip(alphas, sigmas)]
    cost = cost_matrix_vp(states, alphas, sigmas, [eps] * 4)
    assert torch.all(cost[torch.triu(torch.ones(4, 4, dtype=torch.bool), diagonal=1)] < 1e-6)


def _brute_force(cost, m):
    k = cost.shape[0] - 1
    best = None
    for mids in itertools.combinations(range(1, k), m - 1):
        path = [0, *mids, k]
        total = sum(cost[a, b].item() for a, b in zip(path, path[1:]))
        if best is None or total < best[0] - 1e-12:
            best = (total, path)
    return best


@pytest.mark.parametrize("seed", range(20))
def test_select_steps_equals_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    k = int(torch.randint(2, 11, (1,), generator=g))
    cost = torch.rand(k + 1, k + 1, generator=g, dtype=torch.float64) * 10
    for m in range(1, k + 1):
        path = select_steps(cost, m)
        assert path[0] == 0 and path[-1] == k and len(path) == m + 1
        assert all(a < b for a, b in zip(path, path[1:]))
        total = sum(cost[a, b].item() for a, b in zip(path, path[1:]))
        assert total == pytest.approx(_brute_force(cost, m)[0], abs=1e-9)


def test_select_steps_bad_input_and_forbidden_jumps():
    cost = torch.ones(4, 4)
    cost[0, 3] = math.inf
    assert select_steps(cost, 2) in ([0, 1, 3], [0, 2, 3])
    with pytest.raises(ValueError, match="no 1-jump path"):
        select_steps(cost, 1)
    with pytest.raises(ValueError, match=r"num_steps must be an integer in \[1, 3\]"):
        select_steps(cost, 4)
    with pytest.raises(ValueError, match="square"):
        select_steps(torch.ones(3, 4), 1)
    bad = torch.ones(4, 4)
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="cost contains NaN"):
        select_steps(bad, 2)


def test_implied_bad_input():
    with pytest.raises(ValueError, match="t_b must be smaller than t_a"):
        implied_velocity(torch.zeros(2), torch.zeros(2), 0.3, 0.5)
    with pytest.raises(ValueError, match="x_b has shape"):
        implied_velocity(torch.zeros(2), torch.zeros(3), 0.5, 0.3)
    with pytest.raises(ValueError, match="must go towards data"):
        implied_eps(torch.zeros(2), torch.zeros(2), 0.9, 0.1, 0.5, 0.8)


# --- conversions -----------------------------------------------------------------------------------------------

def test_rf_score_velocity_identity_on_gaussian_data():
    x = _t(1000, seed=1)
    for t in (0.2, 0.5, 0.9):
        assert torch.allclose(rf_score_from_v(x, rf_velocity(x, t), t), rf_score(x, t), atol=1e-10)
