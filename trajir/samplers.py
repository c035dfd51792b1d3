"""The M-SDE sampler in the k-diffusion / ComfyUI sampler convention (docs/comfyui.md §3), and its eta schedules.

``model(x, sigma * x.new_ones([B]), **extra_args)`` returns the clean estimate x0. Two parameterisations:

- ``param="rf"`` (rectified flow, ComfyUI's CONST sampling: FLUX, SD3): sigma is the flow time t,
  ``v = (x - x0) / sigma`` and each step is Eq. (13)–(14);
- ``param="ve"`` (noise prediction seen through k-diffusion's VE form, ``x = x0 + sigma eps``: SD1.x, SDXL,
  eps and v-prediction alike): ``eps = (x - x0) / sigma`` and each step is Eq. (11), the VP step with alpha = 1.
"""
import math

import torch
from tqdm.auto import trange

from .checks import compute_dtype, require_finite, require_float, require_tensor
from .conversions import rf_v_from_x0
from .sde import require_representable_coefficients, rf_coefficients, vp_coefficients

PARAMETERISATIONS = ("rf", "ve")

# The SDE noise stream is seeded from a mix of the seed, not the seed itself: ComfyUI's RandomNoise draws the
# initial latent noise from torch.manual_seed(seed) on the CPU, and reusing that stream would make the first
# SDE noise equal to the initial noise.
_SEED_MIX = 0x9E3779B97F4A7C15


def noise_seed(seed):
    """The seed of the SDE noise stream for a sampling seed (a 63-bit mix of it)."""
    return (int(seed) * _SEED_MIX + 0x632BE59BD9B4E019) % (2**63 - 1)


def random_etas(count, eta, seed, stream):
    """``count`` etas ``eta * sqrt(u)``, ``u ~ U[0, 1)``: eta^2 uniform, as the FLUX-IR code draws its
    ``alpha = 1 + eta^2`` (docs/equations.md §4). Drawn on the CPU from ``seed`` offset by ``stream``, so each
    caller's draws are apart from the SDE noise of the same seed."""
    generator = torch.Generator(device="cpu").manual_seed(noise_seed(int(seed) ^ stream))
    u = torch.rand(count, generator=generator, dtype=torch.float64)
    return [eta * math.sqrt(v) for v in u.tolist()]


ETA_SCHEDULES = ("constant", "proportional", "random")
_SCHEDULE_STREAM = 0x5BD1E995  # offsets the seed of the random eta schedule from the SDE noise stream


def schedule_etas(schedule, eta, sigmas, seed=0):
    """One eta per step of ``sigmas`` (a list of floats, noise to data) before the SDE window is applied.

    - ``constant``: ``eta`` at every step;
    - ``proportional``: ``eta * sigma_i / sigma_0``, strongest at the noisy end and fading towards the data;
    - ``random``: ``eta * sqrt(u_i)``, ``u_i ~ U[0, 1)`` drawn on the CPU from ``seed`` (``random_etas``).
    """
    if schedule not in ETA_SCHEDULES:
        raise ValueError(f"eta_schedule must be one of {ETA_SCHEDULES}, got {schedule!r}")
    eta = float(eta)
    if not math.isfinite(eta) or eta < 0:
        raise ValueError(f"eta must be finite and >= 0, got {eta}")
    n = len(sigmas) - 1
    if schedule == "constant":
        return [eta] * n
    if schedule == "proportional":
        return [eta * s / sigmas[0] for s in sigmas[:-1]]
    return random_etas(n, eta, seed, _SCHEDULE_STREAM)


class NoiseStream:
    """Standard normal noise shaped like ``x``, drawn on the CPU from a seeded generator (identical on every
    device), then moved to ``x``'s device without a host-device synchronisation (pinned, non-blocking copy)."""

    def __init__(self, x, seed):
        self.shape, self.device, self.dtype = tuple(x.shape), x.device, x.dtype
        self.generator = torch.Generator(device="cpu").manual_seed(noise_seed(seed))
        self.pin = self.device.type == "cuda"

    def __call__(self):
        z = torch.randn(self.shape, generator=self.generator, dtype=torch.float32)
        if self.pin:
            z = z.pin_memory()
        return z.to(device=self.device, dtype=self.dtype, non_blocking=self.pin)


def resolve_etas(eta, sigmas, sde_start=None, sde_end=None):
    """Per-step eta values (Python floats) from a constant, a per-step sequence or a function of sigma.

    Steps whose starting sigma lies outside the window ``[sde_end, sde_start]`` (either bound optional) get
    eta = 0, as does the last step into sigma = 0, which must be an ODE step (docs/equations.md §3-4).
    """
    n = len(sigmas) - 1
    if callable(eta):
        values = [eta(s) for s in sigmas[:-1]]
    elif isinstance(eta, (list, tuple)) or (torch.is_tensor(eta) and eta.ndim == 1):
        values = [float(e) for e in eta]
        if len(values) != n:
            raise ValueError(f"eta has {len(values)} values but the schedule has {n} steps "
                             f"({len(sigmas)} sigmas); give one eta per step")
    elif isinstance(eta, (int, float)) and not isinstance(eta, bool) or torch.is_tensor(eta) and eta.ndim == 0:
        values = [float(eta)] * n
    else:
        raise ValueError(f"eta must be a number, one number per step, or a function of sigma; got {eta!r}")
    out = []
    for i, e in enumerate(values):
        e = float(e)
        if not math.isfinite(e) or e < 0:
            raise ValueError(f"eta must be finite and >= 0, got {e} at step {i} (sigma {sigmas[i]:.6g})")
        inside = (sde_start is None or sigmas[i] <= sde_start) and (sde_end is None or sigmas[i] >= sde_end)
        out.append(e if inside and sigmas[i + 1] > 0 else 0.0)
    return out


def check_sigmas(sigmas, param):
    """A 1-D, finite, strictly decreasing, non-negative schedule (rf: inside [0, 1]); returns it as floats."""
    require_tensor("sigmas", sigmas)
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError(f"sigmas must be a 1-D tensor of at least 2 values, got shape {tuple(sigmas.shape)}")
    values = sigmas.detach().double().cpu().tolist()
    if not all(math.isfinite(s) for s in values):
        raise ValueError(f"sigmas contains NaN or inf: {values}")
    if any(b >= a for a, b in zip(values, values[1:])):
        raise ValueError(f"sigmas must be strictly decreasing (noise to data), got {values}")
    if values[-1] < 0:
        raise ValueError(f"sigmas must be >= 0, got {values}")
    if param == "rf" and values[0] > 1:
        raise ValueError(f"sigmas are rectified-flow times for param='rf' and must lie in [0, 1], got {values}")
    return values


@torch.no_grad()
def sample_msde(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0, param="rf",
                s_noise=1.0, sde_start=None, sde_end=None, seed=None):
    """Sample with the modulated SDE (M-SDE): Eq. (13)–(14) for ``param="rf"``, Eq. (11) for ``param="ve"``.

    ``eta``: a constant, one value per step, or a function of sigma (the modulation schedule; 0 is the ODE).
    ``s_noise`` scales the fresh noise (1 keeps the marginals). ``sde_start`` / ``sde_end`` bound, in sigma, the
    steps that are stochastic; outside them and into sigma = 0 the step is the deterministic ODE step.
    Noise is drawn from ``extra_args["seed"]`` (else ``seed``, else 0) on the CPU, so a seed gives the same result
    on every device. ``callback`` gets ``{"x", "i", "sigma", "sigma_hat", "denoised"}`` once per step.
    A half-precision ``x`` is integrated in float32 (the model still sees ``x``'s dtype) and returned in its dtype.
    A model output not shaped like ``x`` stops sampling at once; a model output that is not finite makes the result
    an error naming the first such step (checked after the loop: no host-device synchronisation per step).
    """
    if param not in PARAMETERISATIONS:
        raise ValueError(f"param must be one of {PARAMETERISATIONS}, got {param!r}")
    require_float("x", x)
    if x.ndim == 0 or x.shape[0] == 0:
        raise ValueError(f"x is an empty batch (shape {tuple(x.shape)}); expected at least one latent")
    require_finite("x", x)
    if not math.isfinite(s_noise) or s_noise < 0:
        raise ValueError(f"s_noise must be finite and >= 0, got {s_noise}")
    extra_args = {} if extra_args is None else extra_args
    values = check_sigmas(sigmas, param)
    etas = resolve_etas(eta, values, sde_start, sde_end)
    coefficients = _step_coefficients(values, etas, param, s_noise)
    sigmas = sigmas.to(x.device)
    s_in = x.new_ones([x.shape[0]])
    model_dtype, x = x.dtype, x.to(compute_dtype(x))  # float32 state for half-precision latents
    noise = NoiseStream(x, extra_args.get("seed", 0 if seed is None else seed)) if any(etas) else None
    peaks = []  # max |x0| per step, on the device (NaN and inf propagate); read once at the end, so no step waits
    for i in trange(len(values) - 1, disable=disable):
        denoised = model(x if x.dtype == model_dtype else x.to(model_dtype), sigmas[i] * s_in, **extra_args)
        check_model_output_shape(denoised, x, f"step {i} (sigma {values[i]:.6g})")
        peaks.append(denoised.detach().abs().amax().double())
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i], "denoised": denoised})
        d = rf_v_from_x0(x, denoised.to(x.dtype), sigmas[i])  # v for rf; the same expression is eps for ve
        if etas[i] == 0:
            x = x + d * (sigmas[i + 1] - sigmas[i])  # the Euler step, exactly as k-diffusion's sample_euler
        else:
            x = _sde_update(x, d, coefficients[i], noise(), param)
    for i, peak in enumerate(torch.stack(peaks).cpu().tolist()):
        if not math.isfinite(peak):
            raise ValueError(f"the model output (x0) at step {i} (sigma {values[i]:.6g}) contains "
                             f"{'NaN' if math.isnan(peak) else 'inf'} values; expected finite numbers (the result "
                             "is refused)")
    return x.to(model_dtype)


def check_model_output_shape(denoised, x, where):
    """A model's clean estimate must be a tensor shaped like ``x``: broadcasting would hide a wrong channel count."""
    if not torch.is_tensor(denoised) or tuple(denoised.shape) != tuple(x.shape):
        shape = tuple(denoised.shape) if torch.is_tensor(denoised) else type(denoised).__name__
        raise ValueError(f"the model output (x0) has shape {shape} but x has shape {tuple(x.shape)} at {where}; "
                         "the model must return a clean estimate shaped like its input")


def check_model_output(denoised, x, where):
    """The clean estimate a model returned: shaped like ``x`` and finite (a NaN would silently fill the rest of the
    trajectory). One host sync; ``sample_msde`` defers the finiteness part to the end of the loop instead."""
    check_model_output_shape(denoised, x, where)
    require_finite(f"the model output (x0) at {where}", denoised)


def _step_coefficients(values, etas, param, s_noise):
    """Per-step Python-float coefficients of the stochastic steps (computed once, so no per-step sync)."""
    out = []
    for i, e in enumerate(etas):
        if e == 0:
            out.append(None)
        elif param == "rf":
            drift, beta, scale = rf_coefficients(values[i], values[i + 1], e)
            out.append((drift, beta * s_noise, scale))
        else:
            coefficients = vp_coefficients(1.0, values[i], 1.0, values[i + 1], e)
            require_representable_coefficients(coefficients, e, torch.float32)
            _, eps_scale, noise_std = coefficients
            out.append((-eps_scale, noise_std * s_noise, 1.0))
    return out


def _sde_update(x, d, coefficients, z, param):
    drift, noise_coef, scale = coefficients
    out = x.add(d, alpha=drift)  # one new tensor, then in place: the step costs little next to the model
    if param == "rf":
        return out.sub_(z, alpha=noise_coef).mul_(scale)
    return out.add_(z, alpha=noise_coef)
