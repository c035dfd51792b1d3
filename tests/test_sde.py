"""The M-SDE steps, Eq. (10)–(14): limits, exactness, fallback, dtypes and bad input."""
import math

import pytest
import torch

from closed_form import MU, STD, rf_velocity, vp_alpha_sigma, vp_eps
from trajir.sde import rf_coefficients, rf_msde_step, vp_msde_step


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_rf_eta0_is_exactly_euler():
    g = _gen()
    x, v, z = (torch.randn(3, 4, 8, 8, generator=g) for _ in range(3))
    for t, t_next in [(1.0, 0.9), (0.7345, 0.1234), (0.3, 0.0)]:
        assert torch.equal(rf_msde_step(x, v, t, t_next, 0.0, z), x + (t_next - t) * v)
        assert torch.equal(rf_msde_step(x, v, t, t_next, 0, None), x + (t_next - t) * v)
    t, t_next = torch.tensor(0.8), torch.tensor(0.55)
    assert torch.equal(rf_msde_step(x, v, t, t_next, torch.zeros(3), z), x + (t_next - t) * v)


def test_rf_step_is_exact_for_point_mass_data():
    # x_t = (1-t) x0 + t eps0 with the exact velocity lands on (1-t') x0 + t' eps' (docs/equations.md §4)
    g = _gen(1)
    n = 400_000
    x0, eps0, z = 0.5, torch.randn(1, n, generator=g), torch.randn(1, n, generator=g)
    t, t_next, eta = 0.8, 0.5, 0.9
    x = (1 - t) * x0 + t * eps0
    v = eps0 - x0
    out = rf_msde_step(x.double(), v.double(), t, t_next, eta, z.double())
    assert out.mean().item() == pytest.approx((1 - t_next) * x0, abs=3e-3)
    assert out.std().item() == pytest.approx(t_next, rel=5e-3)
    # and the noise it injects is beta z with beta from Eq. (14)
    s = t - (1 + eta**2) * (t - t_next)
    beta = math.sqrt(t_next**2 * (1 - s) ** 2 / (1 - t_next) ** 2 - s**2)
    expect = (1 - t_next) / (1 - s) * (x.double() - (1 + eta**2) * (t - t_next) * v.double() - beta * z.double())
    assert torch.allclose(out, expect, atol=1e-12)


def test_rf_step_matches_the_continuous_msde_to_first_order():
    # Eq. (12) drift (1 + eta^2) v + eta^2 x / (1 - t), diffusion eta^2 * 2t/(1-t); Flow-GRPO writes the same SDE
    # with sigma_t = a sqrt(t/(1-t)), a = sqrt(2) eta: drift v + sigma_t^2/(2t) (x + (1-t) v).
    t, dt, eta = 0.6, 1e-7, 0.7
    x, v = 0.37, -1.3
    drift, beta, scale = rf_coefficients(t, t - dt, eta)
    mean_increment = (scale * (x + drift * v) - x) / -dt
    a = math.sqrt(2) * eta
    sigma_t2 = a * a * t / (1 - t)
    flow_grpo_drift = v + sigma_t2 / (2 * t) * (x + (1 - t) * v)
    assert mean_increment == pytest.approx((1 + eta**2) * v + eta**2 * x / (1 - t), rel=1e-5)
    assert mean_increment == pytest.approx(flow_grpo_drift, rel=1e-5)
    assert (scale * beta) ** 2 / dt == pytest.approx(sigma_t2, rel=1e-5)


def test_rf_fallback_into_zero_is_euler_and_never_nan():
    g = _gen(2)
    x, v, z = (torch.randn(2, 3, 4, 4, generator=g) for _ in range(3))
    for eta in (0.1, 1.0, 5.0):
        out = rf_msde_step(x, v, 0.2, 0.0, eta, z)
        assert torch.equal(out, x + (0.0 - 0.2) * v)


def test_rf_fallback_uses_the_largest_valid_eta():
    t, t_next = 0.4, 0.2
    eta2_max = 2 * t_next * (1 - t_next) / ((1 - 2 * t_next) * (t - t_next))
    g = _gen(3)
    x, v, z = (torch.randn(1, 1, 64, generator=g, dtype=torch.float64) for _ in range(3))
    big = rf_msde_step(x, v, t, t_next, 10.0, z)
    at_max = rf_msde_step(x, v, t, t_next, math.sqrt(eta2_max), z)
    assert torch.isfinite(big).all()
    assert torch.allclose(big, at_max, atol=1e-12)
    _, beta, _ = rf_coefficients(t, t_next, math.sqrt(eta2_max))
    assert beta == pytest.approx(0.0, abs=1e-6)
    # just inside the valid range the step is still stochastic
    _, beta, _ = rf_coefficients(t, t_next, 0.9 * math.sqrt(eta2_max))
    assert beta > 0.01
    # a per-sample eta tensor gets the same rule per sample
    x2, v2, z2 = (torch.cat([a, a]) for a in (x, v, z))
    out = rf_msde_step(x2, v2, t, t_next, torch.tensor([10.0, 0.0], dtype=torch.float64), z2)
    assert torch.allclose(out[0], at_max[0], atol=1e-12)
    assert torch.equal(out[1], (x + (t_next - t) * v)[0])


def test_rf_tensor_and_float_coefficients_agree():
    for t, t_next, eta in [(0.9, 0.6, 0.5), (0.3, 0.1, 2.0), (0.5, 0.45, 1.0), (1.0, 0.97, 1.0)]:
        floats = rf_coefficients(t, t_next, eta)
        tensors = rf_coefficients(torch.tensor(t, dtype=torch.float64), torch.tensor(t_next, dtype=torch.float64),
                                  torch.tensor(eta, dtype=torch.float64))
        for a, b in zip(floats, tensors):
            assert float(b) == pytest.approx(a, rel=1e-12, abs=1e-15)


def test_rf_msde_preserves_gaussian_marginals():
    # 400 steps t: 1 -> 0 on N(1.5, 0.5^2) data with the exact velocity, one M-SDE step per grid interval
    n, steps = 100_000, 400
    for eta in (0.5, 1.0):
        g = _gen(4)
        x = torch.randn(1, n, generator=g, dtype=torch.float64)
        ts = torch.linspace(1, 0, steps + 1, dtype=torch.float64).tolist()
        for t, t_next in zip(ts, ts[1:]):
            e = eta if t_next > 0 else 0.0
            x = rf_msde_step(x, rf_velocity(x, t), t, t_next, e, torch.randn(1, n, generator=g, dtype=torch.float64))
        assert x.mean().item() == pytest.approx(MU, rel=0.01)
        assert x.std().item() == pytest.approx(STD, rel=0.01)


def test_vp_eta0_is_exactly_ddim():
    g = _gen(5)
    x, eps, z = (torch.randn(2, 3, 8, 8, generator=g) for _ in range(3))
    a_s, s_s, a_t, s_t = 0.6, 0.8, 0.9, math.sqrt(1 - 0.81)
    ddim = (a_t / a_s) * x - ((a_t / a_s) * s_s - s_t) * eps
    assert torch.equal(vp_msde_step(x, eps, a_s, s_s, a_t, s_t, 0.0, z), ddim)
    assert torch.equal(vp_msde_step(x, eps, a_s, s_s, a_t, s_t, 0.0, None), ddim)


def test_vp_with_unit_alpha_is_the_ve_step():
    g = _gen(6)
    x, eps, z = (torch.randn(2, 5, generator=g, dtype=torch.float64) for _ in range(3))
    s, t, eta = 3.0, 1.2, 0.7
    ve = x - (1 + eta**2) * (s - t) * eps + eta * math.sqrt(s * s - t * t) * z  # Eq. (11)
    assert torch.allclose(vp_msde_step(x, eps, 1.0, s, 1.0, t, eta, z), ve, atol=1e-14)


def test_vp_eta1_is_sde_dpm_solver_1():
    # eta = 1: x_t = r x - 2 sigma_t (e^h - 1) eps + sigma_t sqrt(e^{2h} - 1) z (docs/equations.md §3)
    g = _gen(7)
    x, eps, z = (torch.randn(4, generator=g, dtype=torch.float64) for _ in range(3))
    a_s, s_s = vp_alpha_sigma(0.7)
    a_t, s_t = vp_alpha_sigma(0.5)
    h = math.log(a_t / s_t) - math.log(a_s / s_s)
    expect = a_t / a_s * x - 2 * s_t * (math.exp(h) - 1) * eps + s_t * math.sqrt(math.exp(2 * h) - 1) * z
    assert torch.allclose(vp_msde_step(x, eps, a_s, s_s, a_t, s_t, 1.0, z), expect, atol=1e-12)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_vp_msde_preserves_gaussian_marginals(eta):
    # docs/equations.md §3: linear beta 0.1 -> 20, t: 1 -> 1e-3, 1000 steps, exact eps for N(1.5, 0.5^2) data
    n, steps = 100_000, 1000
    g = _gen(8)
    ts = torch.linspace(1, 1e-3, steps + 1, dtype=torch.float64).tolist()
    a0, s0 = vp_alpha_sigma(ts[0])
    x = a0 * (MU + STD * torch.randn(1, n, generator=g, dtype=torch.float64)) + s0 * torch.randn(
        1, n, generator=g, dtype=torch.float64)
    for t, t_next in zip(ts, ts[1:]):
        a_s, s_s = vp_alpha_sigma(t)
        a_t, s_t = vp_alpha_sigma(t_next)
        x = vp_msde_step(x, vp_eps(x, a_s, s_s), a_s, s_s, a_t, s_t, eta,
                         torch.randn(1, n, generator=g, dtype=torch.float64))
    a, s = vp_alpha_sigma(ts[-1])
    assert x.mean().item() == pytest.approx(a * MU, rel=0.01)
    assert x.std().item() == pytest.approx(math.sqrt(a * a * STD * STD + s * s), rel=0.01)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_in_and_out(dtype):
    g = _gen(9)
    x, v, z = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    ref = rf_msde_step(x, v, 0.8, 0.6, 0.7, z)
    out = rf_msde_step(x.to(dtype), v.to(dtype), 0.8, 0.6, 0.7, z.to(dtype))
    assert out.dtype == dtype
    assert torch.allclose(out.float(), ref, atol=0.05, rtol=0.02)
    ref = vp_msde_step(x, v, 0.6, 0.8, 0.8, 0.6, 0.3, z)
    out = vp_msde_step(x.to(dtype), v.to(dtype), 0.6, 0.8, 0.8, 0.6, 0.3, z.to(dtype))
    assert out.dtype == dtype
    assert torch.allclose(out.float(), ref, atol=0.05, rtol=0.02)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    g = _gen(10)
    x, v, z = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    cpu = rf_msde_step(x, v, 0.8, 0.6, 0.7, z)
    gpu = rf_msde_step(x.cuda(), v.cuda(), 0.8, 0.6, 0.7, z.cuda())
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-6)


def test_bad_input_names_the_argument():
    x = torch.zeros(2, 3)
    v, z = torch.zeros(2, 3), torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"v has shape \(2, 4\)"):
        rf_msde_step(x, torch.zeros(2, 4), 0.5, 0.4, 0.1, z)
    with pytest.raises(ValueError, match="noise has shape"):
        rf_msde_step(x, v, 0.5, 0.4, 0.1, torch.zeros(3))
    with pytest.raises(ValueError, match="eta must be >= 0"):
        rf_msde_step(x, v, 0.5, 0.4, -0.1, z)
    with pytest.raises(ValueError, match="eta must be >= 0"):
        rf_msde_step(x, v, 0.5, 0.4, torch.tensor([0.1, -0.1]), z)
    with pytest.raises(ValueError, match="t must be <= 1"):
        rf_msde_step(x, v, 1.5, 0.4, 0.1, z)
    with pytest.raises(ValueError, match="t_next must be >= 0"):
        rf_msde_step(x, v, 0.5, -0.1, 0.1, z)
    with pytest.raises(ValueError, match="t_next must be smaller than t"):
        rf_msde_step(x, v, 0.4, 0.5, 0.1, z)
    with pytest.raises(ValueError, match="x contains 1 NaN"):
        rf_msde_step(torch.tensor([[0.0, float("nan"), 0.0], [0, 0, 0]]), v, 0.5, 0.4, 0.1, z)
    with pytest.raises(ValueError, match="v contains 1 NaN or inf"):
        rf_msde_step(x, torch.tensor([[0.0, float("inf"), 0.0], [0, 0, 0]]), 0.5, 0.4, 0.1, z)
    with pytest.raises(ValueError, match="eta is nan"):
        rf_msde_step(x, v, 0.5, 0.4, float("nan"), z)
    with pytest.raises(ValueError, match="noise is None but eta > 0"):
        rf_msde_step(x, v, 0.5, 0.4, 0.1, None)
    with pytest.raises(ValueError, match="eta has shape"):
        rf_msde_step(x, v, 0.5, 0.4, torch.zeros(5), z)
    with pytest.raises(ValueError, match="alpha_s must be > 0"):
        vp_msde_step(x, v, 0.0, 1.0, 0.5, 0.5, 0.0, z)
    with pytest.raises(ValueError, match="sigma_t must be >= 0"):
        vp_msde_step(x, v, 0.5, 0.5, 0.5, -0.5, 0.0, z)
    with pytest.raises(ValueError, match="must go towards data"):
        vp_msde_step(x, v, 0.9, 0.1, 0.5, 0.8, 0.0, z)
    with pytest.raises(ValueError, match="eps contains"):
        vp_msde_step(x, torch.full((2, 3), float("nan")), 0.5, 0.8, 0.8, 0.6, 0.0, z)


@pytest.mark.parametrize("t, t_next", [(0.9, 0.6), (0.99, 0.98), (0.6, 0.5), (0.7, 0.3), (0.2, 0.1)])
def test_a_huge_eta_gives_the_finite_eta_to_infinity_limit(t, t_next):
    """eta^2 overflows float64 from eta ~ 1.3e154: the step is computed at eta^2 (t - t') = 1e16 (float64) or 1e8
    (float32), where it has reached its limit: for t' >= 1/2, x' = -(1 - t') v - sqrt(2 t' - 1) z; below 1/2, the
    eta_max fallback (pure overshoot)."""
    g = torch.Generator().manual_seed(0)
    x, v, z = (torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64) for _ in range(3))
    if t_next >= 0.5:
        limit, atol = -(1 - t_next) * v - math.sqrt(2 * t_next - 1) * z, 1e-12
    else:  # beta^2 = 0 up to rounding, whose square root (1e-8 in float64, 3e-4 in float32) multiplies the noise
        dt = t - t_next
        s = t_next - 2 * t_next * (1 - t_next) / ((1 - 2 * t_next) * dt) * dt
        limit, atol = (1 - t_next) / (1 - s) * (x + (s - t) * v), 1e-7
    for eta in (1e9, 1e100, 1e200, 1.7e308):
        got = rf_msde_step(x, v, t, t_next, eta, z)
        torch.testing.assert_close(got, limit, rtol=1e-12, atol=atol)
        got32 = rf_msde_step(x.float(), v.float(), t, t_next, torch.tensor([eta, eta, 0.0], dtype=torch.float64),
                             z.float())
        torch.testing.assert_close(got32[:2].double(), limit[:2], rtol=1e-6, atol=1e-6 if t_next >= 0.5 else 1e-3)
        assert torch.equal(got32[2], rf_msde_step(x.float(), v.float(), t, t_next, 0.0, None)[2])
    with pytest.raises(ValueError, match=r"eta = 1e\+200 is too large for this step"):
        vp_msde_step(x, v, 0.5, 0.8, 0.7, 0.6, 1e200, z)


def test_integer_and_overflowing_half_inputs_are_refused_not_truncated():
    ints = torch.ones(1, 2, 2, 2, dtype=torch.int64)
    with pytest.raises(ValueError, match="x must be a floating-point tensor, got torch.int64"):
        rf_msde_step(ints, ints.float(), 0.9, 0.5, 0.0, None)
    with pytest.raises(ValueError, match="eps must be a floating-point tensor, got torch.int32"):
        vp_msde_step(ints.float(), ints.int(), 0.5, 0.8, 0.7, 0.6, 0.0, None)
    big = torch.full((1, 2), 6e4, dtype=torch.float16)
    with pytest.raises(ValueError, match=r"the result overflows float16: its values reach 1\.14e\+05"):
        rf_msde_step(big, -big, 0.9, 0.0, 0.0, None)
