"""The sampling logic of the nodes, without ComfyUI: eta schedules and windows (M-SDE Sampler), the cut schedule and
LQ weight of Eq. (17) (LQ Initial State) and the NGS helpers (Negative LQ Guidance), checked against independent
loops and closed forms. The Best-of-N rollout the Best-of-N node runs is tested in test_best_of_n.py."""
import importlib

import pytest
import torch
from conftest import load_pack

load_pack()
sampler = importlib.import_module("trajir_pack.nodes.sampler")
bridge = importlib.import_module("trajir_pack.nodes.comfy_bridge")
initial_state = importlib.import_module("trajir_pack.nodes.initial_state")
guider = importlib.import_module("trajir_pack.nodes.guider")
interpolation = importlib.import_module("trajir_pack.trajir.interpolation")

SIGMAS = [1.0, 0.8, 0.6, 0.4, 0.2, 0.0]
FLUX_SHIFT, FLUX_SCALE = 0.1159, 0.3611  # FLUX's latent format (docs/comfyui.md §2)


def linear_percent(p):
    return 1.0 - p


# --- M-SDE Sampler: eta per step ---------------------------------------------------------------------------------

def test_constant_and_proportional_eta_schedules():
    assert sampler.schedule_etas("constant", 0.7, SIGMAS) == [0.7] * 5
    assert sampler.schedule_etas("proportional", 0.5, [2.0, 1.0, 0.5, 0.0]) == [0.5, 0.25, 0.125]


def test_random_eta_squared_is_uniform_and_seeded():
    etas = sampler.schedule_etas("random", 0.8, [1.0 - i / 20000 for i in range(20001)], seed=3)
    squares = torch.tensor(etas) ** 2
    assert 0 <= float(squares.min()) and float(squares.max()) < 0.64
    assert float(squares.mean()) == pytest.approx(0.32, abs=0.01)  # E[eta^2 U] = eta^2 / 2
    assert float(squares.var()) == pytest.approx(0.64 ** 2 / 12, rel=0.05)  # Var of U[0, 0.64)
    assert etas == sampler.schedule_etas("random", 0.8, [1.0 - i / 20000 for i in range(20001)], seed=3)
    assert etas != sampler.schedule_etas("random", 0.8, [1.0 - i / 20000 for i in range(20001)], seed=4)


def test_window_in_percent_and_sigma_selects_the_stochastic_steps():
    # percent 0..0.5 through percent_to_sigma(p) = 1 - p: steps starting at sigma in [0.5, 1]
    assert sampler.step_etas("constant", 1.0, SIGMAS, "percent", 0.0, 0.5, linear_percent) == [1, 1, 1, 0, 0]
    assert sampler.step_etas("constant", 1.0, SIGMAS, "sigma", 0.7, 0.3, linear_percent) == [0, 0, 1, 1, 0]
    # the last step (into sigma 0) is always the ODE step
    assert sampler.step_etas("constant", 1.0, SIGMAS, "percent", 0.0, 1.0, linear_percent) == [1, 1, 1, 1, 0]


@pytest.mark.parametrize("unit, start, end, message", [
    ("percent", 0.6, 0.2, "a window in percent needs 0 <= start <= end <= 1"),
    ("percent", 0.0, 1.5, "a window in percent needs 0 <= start <= end <= 1"),
    ("sigma", 0.2, 0.6, "a window in sigma needs start >= end >= 0"),
    ("steps", 0.0, 1.0, "window unit must be one of"),
    ("sigma", float("nan"), 0.0, "must be finite"),
])
def test_bad_windows_are_refused(unit, start, end, message):
    with pytest.raises(ValueError, match=message):
        bridge.window_sigmas(unit, start, end, linear_percent)


def test_bad_eta_settings_are_refused():
    with pytest.raises(ValueError, match="eta_schedule must be one of"):
        sampler.schedule_etas("cosine", 1.0, SIGMAS)
    with pytest.raises(ValueError, match="eta must be finite and >= 0, got -1.0"):
        sampler.schedule_etas("constant", -1.0, SIGMAS)
    with pytest.raises(ValueError, match="s_noise must be finite and >= 0"):
        sampler.TrajIRMSDESampler().get_sampler(1.0, "constant", "percent", 0.0, 1.0, float("inf"))


# --- LQ Initial State: Eq. (17) through ComfyUI's noise scaling ----------------------------------------------------

def test_cut_schedule_by_step_and_by_sigma():
    sigmas = torch.tensor(SIGMAS)
    assert initial_state.cut_schedule(sigmas, "step", 2, 0.0).tolist() == pytest.approx(SIGMAS[2:])
    cut = initial_state.cut_schedule(sigmas, "sigma", 0, 0.7)
    assert cut.tolist() == pytest.approx([0.7, 0.6, 0.4, 0.2, 0.0])
    assert cut.dtype == sigmas.dtype


@pytest.mark.parametrize("mode, step, sigma, message", [
    ("step", 5, 0.0, r"start_step must lie in \[0, 4\] for a schedule of 5 steps"),
    ("step", -1, 0.0, r"start_step must lie in \[0, 4\]"),
    ("sigma", 0, 1.5, r"start_sigma must lie in \(0, 1\]"),
    ("sigma", 0, 0.0, r"start_sigma must lie in \(0, 1\]"),
    ("index", 0, 0.5, "start_mode must be one of"),
])
def test_bad_starts_are_refused(mode, step, sigma, message):
    with pytest.raises(ValueError, match=message):
        initial_state.cut_schedule(torch.tensor(SIGMAS), mode, step, sigma)


def _process_in(z):
    return (z - FLUX_SHIFT) * FLUX_SCALE


def _process_out(z):
    return z / FLUX_SCALE + FLUX_SHIFT


def _comfy_start(latent, noise, sigma):
    """What ComfyUI's CONST sampler forms from a VAE-space latent (docs/comfyui.md §3): process_in, then noise
    scaling."""
    return sigma * noise + (1 - sigma) * _process_in(latent)


def test_the_schedule_start_is_eq17_and_an_lq_weight_rescales_in_model_space():
    g = torch.Generator().manual_seed(0)
    lq, noise = torch.randn(2, 16, 4, 4, generator=g), torch.randn(2, 16, 4, 4, generator=g)
    t = 0.85
    eq17 = interpolation.lq_initial_state_rf(_process_in(lq), noise, t)
    torch.testing.assert_close(_comfy_start(lq, noise, t), eq17)
    weighted = initial_state.weighted_latent(lq, interpolation.rf_latent_scale_for_lq_weight(0.06, t), _process_in,
                                             _process_out)
    torch.testing.assert_close(_comfy_start(weighted, noise, t), 0.06 * _process_in(lq) + t * noise)


# --- Negative LQ Guidance helpers ----------------------------------------------------------------------------------

def test_lq_is_tiled_to_the_sampled_batch_like_comfy_conditioning():
    lq = torch.arange(2.0).reshape(2, 1, 1, 1).expand(2, 3, 2, 2)
    tiled = guider.lq_for_batch(lq, torch.zeros(6, 3, 2, 2))
    assert tiled[:, 0, 0, 0].tolist() == [0, 1, 0, 1, 0, 1]
    with pytest.raises(ValueError, match=r"lq_latent has shape \(2, 3, 2, 2\) but the latent being sampled has "
                                         r"shape \(2, 3, 4, 4\)"):
        guider.lq_for_batch(lq, torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match="lq_latent holds 2 latents, which does not divide the sampled batch of 3"):
        guider.lq_for_batch(lq, torch.zeros(3, 3, 2, 2))


def test_guidance_window_weights():
    sigma = torch.tensor([0.9, 0.5, 0.1])
    assert guider.window_weights(0.2, sigma, 1.0, 0.0) == 0.2
    assert guider.window_weights(0.2, sigma, 0.05, 0.0) == 0.0
    assert guider.window_weights(0.2, sigma, 0.6, 0.3).tolist() == pytest.approx([0.0, 0.2, 0.0])
