"""The grids hold no formula of their own: every grid operation equals the equation's function called with the
grid's values at the index, for a shared index and for per-sample index tensors (each row against its own
scalar call)."""
import math

import pytest
import torch

from trajir.grids import RFGrid, VPGrid, grid_from_description, grid_from_sigmas
from trajir.guidance import ngs_eps, ngs_velocity
from trajir.interpolation import lq_initial_state, lq_initial_state_rf, lq_initial_state_vp
from trajir.sde import rf_msde_step, vp_msde_step

B = 3


def _t(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _grids():
    return [RFGrid.uniform(6, shift=0.5), VPGrid.linear(6, 1e-4, 0.9)]


def _values(grid, index):
    """The schedule values at ``index`` as Python floats: (t,) for rf, (alpha, sigma) for vp."""
    if grid.param == "rf":
        return (float(grid.t[index]),)
    return float(grid.alpha[index]), float(grid.sigma[index])


def _step(grid, x, pred, a, b, eta, noise):
    """The equation's step between grid indices ``a`` and ``b`` (Python ints), called directly."""
    if grid.param == "rf":
        return rf_msde_step(x, pred, *_values(grid, a), *_values(grid, b), eta, noise)
    return vp_msde_step(x, pred, *_values(grid, a), *_values(grid, b), eta, noise)


def _guide(grid, pred, x, lq, index, w):
    if grid.param == "rf":
        return ngs_velocity(pred, x, lq, *_values(grid, index), float(grid.t[-1]), w)
    return ngs_eps(pred, x, lq, *_values(grid, index), float(grid.alpha[-1]), float(grid.sigma[-1]), w)


def _start(grid, lq, noise, index, lq_weight):
    if grid.param == "rf":
        t = float(grid.t[index])
        return lq_initial_state_rf(lq, noise, t) if lq_weight is None else lq_initial_state(lq, noise, lq_weight, t)
    if lq_weight is None:
        return lq_initial_state_vp(lq, noise, float(grid.alpha[index]) ** 2)
    return lq_initial_state_vp(lq, noise, lq_weight ** 2)


@pytest.mark.parametrize("grid", _grids(), ids=lambda g: g.param)
def test_steps_equal_the_equations_at_a_shared_index(grid):
    x, pred, noise = _t(B, 2, 4, 4, seed=1), _t(B, 2, 4, 4, seed=2), _t(B, 2, 4, 4, seed=3)
    for a, b in [(0, 1), (1, 2), (2, 5), (4, 6)]:
        torch.testing.assert_close(grid.jump(x, pred, a, b), _step(grid, x, pred, a, b, 0.0, None), rtol=0, atol=0)
        for eta in (0.3, 1.0, 2.5):  # 2.5 exceeds eta_max near the clean end: the fallback applies on both sides
            torch.testing.assert_close(grid.msde(x, pred, a, b, eta, noise), _step(grid, x, pred, a, b, eta, noise),
                                       rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("grid", _grids(), ids=lambda g: g.param)
def test_per_sample_indices_and_etas_equal_one_call_per_row(grid):
    x, pred, noise = _t(B, 2, 4, 4, seed=4), _t(B, 2, 4, 4, seed=5), _t(B, 2, 4, 4, seed=6)
    lq = _t(B, 2, 4, 4, seed=7)
    a, b = torch.tensor([0, 3, 4]), torch.tensor([1, 5, 6])
    eta = torch.tensor([0.0, 0.7, 1.5], dtype=torch.float64)
    jumped, stepped = grid.jump(x, pred, a, b), grid.msde(x, pred, a, b, eta, noise)
    guided, started = grid.guide(pred, x, lq, a, 0.2), grid.lq_start(lq, noise, a)
    for i in range(B):
        row = slice(i, i + 1)
        ai, bi = int(a[i]), int(b[i])
        torch.testing.assert_close(jumped[row], _step(grid, x[row], pred[row], ai, bi, 0.0, None), rtol=0, atol=0)
        torch.testing.assert_close(stepped[row], _step(grid, x[row], pred[row], ai, bi, float(eta[i]), noise[row]),
                                   rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(guided[row], _guide(grid, pred[row], x[row], lq[row], ai, 0.2),
                                   rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(started[row], _start(grid, lq[row], noise[row], ai, None), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("grid", _grids(), ids=lambda g: g.param)
def test_guidance_and_the_start_equal_the_equations(grid):
    x, pred, lq, noise = (_t(B, 2, 4, 4, seed=s) for s in (8, 9, 10, 11))
    for index in (0, 2, 5):
        assert grid.guide(pred, x, lq, index, 0.0) is pred
        torch.testing.assert_close(grid.guide(pred, x, lq, index, 0.05), _guide(grid, pred, x, lq, index, 0.05),
                                   rtol=1e-12, atol=1e-12)
        for weight in (None, 0.0, 0.3):
            torch.testing.assert_close(grid.lq_start(lq, noise, index, weight),
                                       _start(grid, lq, noise, index, weight), rtol=1e-12, atol=1e-12)


def test_ve_grid_of_a_sigma_schedule_steps_with_eq11():
    sigmas = torch.tensor([14.6, 6.0, 2.0, 0.5, 0.0])
    grid = grid_from_sigmas(sigmas, "ve")
    x, eps, z = _t(2, 3, seed=12), _t(2, 3, seed=13), _t(2, 3, seed=14)
    s, s_next, eta = float(sigmas[1]), float(sigmas[2]), 0.6
    # Eq. (11): x - (1 + eta^2)(s - s') eps + eta sqrt(s^2 - s'^2) z
    expected = x - (1 + eta ** 2) * (s - s_next) * eps + eta * math.sqrt(s * s - s_next * s_next) * z
    torch.testing.assert_close(grid.msde(x, eps, 1, 2, eta, z), expected, rtol=1e-12, atol=1e-12)
    assert grid_from_sigmas(sigmas[:3] / 20, "rf").t.tolist() == pytest.approx((sigmas[:3] / 20).tolist())
    with pytest.raises(ValueError, match="param must be 'rf' or 've'"):
        grid_from_sigmas(sigmas, "eps")


def test_descriptions_round_trip():
    for grid in _grids():
        again = grid_from_description(grid.describe())
        assert again.describe() == grid.describe() and again.param == grid.param
