"""sample_msde: the ComfyUI/k-diffusion sampler contract, Gaussian marginals, exact ODE limit, seeds."""
import math

import pytest
import torch

from closed_form import MU, STD, rf_x0, ve_x0
from trajir.samplers import NoiseStream, noise_seed, resolve_etas, sample_msde
from trajir.schedules import flux_schedule


class CountingModel:
    """A k-diffusion-convention model: model(x, sigma_vec, **extra) -> x0; counts calls and checks arguments."""

    def __init__(self, x0_fn):
        self.x0_fn, self.calls = x0_fn, []

    def __call__(self, x, sigma, **extra):
        assert sigma.shape == (x.shape[0],)
        self.calls.append((float(sigma[0]), sorted(extra)))
        return self.x0_fn(x, sigma)


def _euler_loop(model, x, sigmas):
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        x0 = model(x, sigmas[i] * s_in)
        x = x + (x - x0) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
    return x


def _rf_start(n, seed=0, b=2):
    return torch.randn(b, n // b, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_rf_reaches_the_data_distribution(eta):
    sigmas = torch.linspace(1, 0, 501, dtype=torch.float64)
    x = sample_msde(rf_x0, _rf_start(100_000), sigmas, extra_args={"seed": 3}, eta=eta, disable=True)
    assert x.mean().item() == pytest.approx(MU, rel=0.01)
    assert x.std().item() == pytest.approx(STD, rel=0.01)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ve_reaches_the_data_distribution(eta):
    # docs/equations.md §3: sigma 20 -> 0.01 geometric, then 0; start from the exact marginal N(mu, s^2 + 400)
    n = 100_000
    g = torch.Generator().manual_seed(1)
    sigmas = torch.cat([torch.exp(torch.linspace(math.log(20), math.log(0.01), 500, dtype=torch.float64)),
                        torch.zeros(1, dtype=torch.float64)])
    x = MU + math.sqrt(STD**2 + 400) * torch.randn(2, n // 2, generator=g, dtype=torch.float64)
    x = sample_msde(ve_x0, x, sigmas, extra_args={"seed": 4}, eta=eta, param="ve", disable=True)
    assert x.mean().item() == pytest.approx(MU, rel=0.01)
    assert x.std().item() == pytest.approx(STD, rel=0.01)


def test_eta0_equals_the_euler_loop_bit_for_bit():
    sigmas = flux_schedule(12, mu=1.15)
    x = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(0))

    def model(x, sigma):  # a nonlinear stand-in for a network
        return torch.tanh(x * 0.7 + sigma.reshape(-1, 1, 1, 1)) * 0.9

    for param in ("rf", "ve"):
        assert torch.equal(sample_msde(model, x, sigmas, eta=0.0, param=param, disable=True),
                           _euler_loop(model, x, sigmas))


def test_ve_eta0_equals_ddim_with_unit_alpha():
    sigmas = torch.tensor([14.6, 6.0, 2.5, 0.9, 0.2, 0.0])
    x = 14.6 * torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    out = sample_msde(ve_x0, x, sigmas, eta=0.0, param="ve", disable=True)
    ref = x.clone()
    for s, t in zip(sigmas[:-1], sigmas[1:]):
        eps = (ref - ve_x0(ref, s)) / s
        ref = 1.0 * ref - (1.0 * s - t) * eps  # DDIM / DPM-Solver-1 with alpha = 1
    assert torch.allclose(out, ref, rtol=0, atol=1e-5)


def test_callback_contract_and_one_model_call_per_step():
    sigmas = flux_schedule(5)
    model = CountingModel(rf_x0)
    seen = []
    x = torch.randn(3, 4, 2, 2)
    sample_msde(model, x, sigmas, extra_args={"seed": 1, "model_options": {}}, callback=seen.append, eta=0.8,
                disable=True)
    assert [c[0] for c in model.calls] == pytest.approx(sigmas[:-1].tolist())
    assert all(c[1] == ["model_options", "seed"] for c in model.calls)
    assert [d["i"] for d in seen] == list(range(5))
    assert all(set(d) == {"x", "i", "sigma", "sigma_hat", "denoised"} for d in seen)
    assert all(d["denoised"].shape == x.shape for d in seen)


def test_seeds_reproduce_and_differ():
    sigmas = flux_schedule(8)
    x = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    a = sample_msde(rf_x0, x, sigmas, extra_args={"seed": 7}, eta=1.0, disable=True)
    b = sample_msde(rf_x0, x, sigmas, extra_args={"seed": 7}, eta=1.0, disable=True)
    c = sample_msde(rf_x0, x, sigmas, extra_args={"seed": 8}, eta=1.0, disable=True)
    d = sample_msde(rf_x0, x, sigmas, seed=7, eta=1.0, disable=True)
    assert torch.equal(a, b) and torch.equal(a, d)
    assert not torch.allclose(a, c)


def test_sde_noise_is_not_the_initial_noise_stream():
    # ComfyUI's RandomNoise draws the start noise from manual_seed(seed) on the CPU; ours must differ from it
    x = torch.zeros(1, 4, 8, 8)
    first = NoiseStream(x, 42)()
    assert noise_seed(42) != 42
    assert not torch.allclose(first, torch.randn(x.shape, generator=torch.Generator().manual_seed(42)))


def test_window_and_schedules():
    sigmas = flux_schedule(6)
    values = sigmas.tolist()
    x = torch.randn(1, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    ode = sample_msde(rf_x0, x, sigmas, eta=0.0, disable=True)
    # a window that holds no step start is the ODE
    assert torch.equal(sample_msde(rf_x0, x, sigmas, eta=1.0, sde_start=0.05, sde_end=0.01, disable=True), ode)
    # a window [0.4, 0.9] equals the explicit per-step list
    window = sample_msde(rf_x0, x, sigmas, eta=0.7, sde_start=0.9, sde_end=0.4, seed=5, disable=True)
    per_step = [0.7 if 0.4 <= s <= 0.9 else 0.0 for s in values[:-1]]
    assert 0 < sum(e > 0 for e in per_step) < 6
    assert torch.equal(window, sample_msde(rf_x0, x, sigmas, eta=per_step, seed=5, disable=True))
    # a function of sigma is evaluated at each step's sigma
    fn = sample_msde(rf_x0, x, sigmas, eta=lambda s: 0.7 if 0.4 <= s <= 0.9 else 0.0, seed=5, disable=True)
    assert torch.equal(fn, window)
    # the last step into 0 is always an ODE step, whatever the schedule says
    assert resolve_etas([1.0] * 6, values)[-1] == 0.0


def test_s_noise_zero_gives_the_deterministic_overshoot():
    sigmas = torch.tensor([1.0, 0.7, 0.4, 0.0], dtype=torch.float64)
    x = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    out = sample_msde(rf_x0, x, sigmas, eta=1.0, s_noise=0.0, disable=True)
    ref = x.clone()
    for t, t_next in [(1.0, 0.7), (0.7, 0.4)]:
        v = (ref - rf_x0(ref, t)) / t
        s = t - 2 * (t - t_next)
        ref = (1 - t_next) / (1 - s) * (ref + (s - t) * v)
    ref = ref + (0.0 - 0.4) * (ref - rf_x0(ref, 0.4)) / 0.4
    assert torch.allclose(out, ref, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_latents(dtype):
    sigmas = flux_schedule(6)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    ref = sample_msde(rf_x0, x, sigmas, eta=0.5, seed=1, disable=True)
    out = sample_msde(rf_x0, x.to(dtype), sigmas, eta=0.5, seed=1, disable=True)
    assert out.dtype == dtype
    assert torch.allclose(out.float(), ref, atol=0.08)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_same_result_on_cpu_and_cuda():
    sigmas = flux_schedule(6)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    cpu = sample_msde(rf_x0, x, sigmas, eta=1.0, seed=3, disable=True)
    gpu = sample_msde(rf_x0, x.cuda(), sigmas.cuda(), eta=1.0, seed=3, disable=True)
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-5)


def test_bad_input():
    x = torch.zeros(1, 4)
    with pytest.raises(ValueError, match="sigmas must be strictly decreasing"):
        sample_msde(rf_x0, x, torch.tensor([1.0, 0.5, 0.5, 0.0]), disable=True)
    with pytest.raises(ValueError, match="sigmas must be strictly decreasing"):
        sample_msde(rf_x0, x, torch.tensor([0.5, 1.0, 0.0]), disable=True)
    with pytest.raises(ValueError, match=r"sigmas must lie in \[0, 1\]|must lie in \[0, 1\]"):
        sample_msde(rf_x0, x, torch.tensor([2.0, 1.0, 0.0]), disable=True)
    with pytest.raises(ValueError, match="sigmas contains NaN"):
        sample_msde(rf_x0, x, torch.tensor([1.0, float("nan"), 0.0]), disable=True)
    with pytest.raises(ValueError, match="sigmas must be a 1-D tensor"):
        sample_msde(rf_x0, x, torch.tensor([1.0]), disable=True)
    with pytest.raises(ValueError, match="eta must be finite and >= 0"):
        sample_msde(rf_x0, x, torch.tensor([1.0, 0.5, 0.0]), eta=-1.0, disable=True)
    with pytest.raises(ValueError, match="eta has 3 values but the schedule has 2 steps"):
        sample_msde(rf_x0, x, torch.tensor([1.0, 0.5, 0.0]), eta=[0.1, 0.2, 0.3], disable=True)
    with pytest.raises(ValueError, match="x contains 1 NaN"):
        sample_msde(rf_x0, torch.tensor([[0.0, float("nan")]]), torch.tensor([1.0, 0.0]), disable=True)
    with pytest.raises(ValueError, match="param must be one of"):
        sample_msde(rf_x0, x, torch.tensor([1.0, 0.0]), param="vp", disable=True)
    with pytest.raises(ValueError, match="s_noise must be finite"):
        sample_msde(rf_x0, x, torch.tensor([1.0, 0.0]), s_noise=float("inf"), disable=True)
