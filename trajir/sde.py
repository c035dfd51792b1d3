"""Modulated-SDE (M-SDE) integration steps, Eq. (10)-(11) and (13)-(14) (docs/equations.md §3-4).

One function per equation. Both take the model prediction at the current state and return the next state; the
coefficient functions hold the equations' arithmetic (the grids call the steps, the sampler precomputes the
coefficients once per schedule):

- ``rf_msde_step``: rectified flow (FLUX, SD3), Eq. (13)–(14); ``x_t = (1 - t) x0 + t eps``, ``v = eps - x0``.
- ``vp_msde_step``: noise prediction, Eq. (10) with the exact, marginal-preserving variance; with
  ``alpha = 1`` it is the VE step Eq. (11).

``eta = 0`` gives the deterministic ODE step (Euler / DDIM) exactly. Times, eta and the schedule values may be
Python floats or tensors; a 1-D tensor whose length is the batch size is read as one value per sample, any other
tensor must broadcast against ``x``. Half-precision inputs are computed in float32 and returned in their dtype.
"""
import math

import torch

from .checks import (as_result, compute_dtype, per_sample, require_finite, require_float, require_same_shape,
                     require_scalar_or_tensor)

# eta^2 (t - t') is capped where the step has reached its eta -> infinity limit to the precision of the arithmetic:
# the terms it drops are of relative size (1 - t') / (eta^2 (t - t')). A finite result for any finite eta, and no
# overflow of beta^2 (~ the cap squared) in float32.
OVERSHOOT_CAP = {torch.float64: 1e16, torch.float32: 1e8}


def _check_state(x, pred, pred_name, noise):
    require_float("x", x)
    require_float(pred_name, pred)
    require_same_shape(pred_name, pred, "x", x)
    require_finite("x", x)
    require_finite(pred_name, pred)
    if noise is not None:
        require_float("noise", noise)
        require_same_shape("noise", noise, "x", x)
        require_finite("noise", noise)


def rf_coefficients(t, t_next, eta):
    """Eq. (13)-(14): coefficients of the rectified-flow M-SDE step, with the eta fallback applied.

    Returns ``(drift, beta, scale)`` such that ``x_next = scale * (x + drift * v - beta * noise)``:
    ``drift = (1 + eta^2)(t_next - t)`` moves to the overshoot time ``s = t_next - eta^2 (t - t_next)``,
    ``beta`` is the std of the fresh noise, and ``scale = (1 - t_next) / (1 - s)`` restores the signal coefficient.

    Fallback rule: beta^2 = (t' - s)(t' + s - 2 s t') / (1 - t')^2 is negative when t' < 1/2 and
    eta^2 > eta_max^2 = 2 t' (1 - t') / ((1 - 2 t') (t - t')). Such steps use eta_max, the largest eta whose
    beta^2 >= 0; into t' = 0 that is eta = 0, the Euler step. For t' >= 1/2 every eta is valid. Very large eta
    (eta^2 (t - t') above ``OVERSHOOT_CAP``: 1e16 in float64, 1e8 in float32) is computed at the cap, where the
    step equals its eta -> infinity limit to the precision of the arithmetic, so the result stays finite.

    Works on Python floats or tensors (broadcast); ``t_next - t`` is formed first so that eta = 0 yields
    exactly the Euler step ``x + (t_next - t) v``.
    """
    diff = t_next - t  # negative
    if not torch.is_tensor(eta) and eta == 0:
        return diff, 0.0, 1.0
    dt = -diff
    eta2 = eta * eta
    if torch.is_tensor(t_next) or torch.is_tensor(eta) or torch.is_tensor(diff):
        ref = next(v for v in (t_next, eta, diff) if torch.is_tensor(v))
        t_next = torch.as_tensor(t_next, dtype=ref.dtype, device=ref.device)
        dt = torch.as_tensor(dt, dtype=ref.dtype, device=ref.device)
        below_half = t_next < 0.5
        # eta_max^2 where t' < 1/2 (inf elsewhere); where() keeps 0/0 at t' = 1/2 out of the result
        safe_den = torch.where(below_half, (1 - 2 * t_next) * dt, torch.ones_like(dt))
        eta2_max = torch.where(below_half, 2 * t_next * (1 - t_next) / safe_den, torch.full_like(dt, math.inf))
        eta2 = torch.minimum(torch.as_tensor(eta2, dtype=ref.dtype, device=ref.device), eta2_max)
        eta2 = torch.minimum(eta2, OVERSHOOT_CAP.get(ref.dtype, 1e8) / dt)
        s = t_next - eta2 * dt
        beta2 = ((t_next - s) * (t_next + s - 2 * s * t_next) / (1 - t_next) ** 2).clamp_min(0)
        return (1 + eta2) * diff, beta2.sqrt(), (1 - t_next) / (1 - s)
    if t_next < 0.5:
        eta2 = min(eta2, 2 * t_next * (1 - t_next) / ((1 - 2 * t_next) * dt))
    eta2 = min(eta2, OVERSHOOT_CAP[torch.float64] / dt)
    s = t_next - eta2 * dt
    beta2 = max((t_next - s) * (t_next + s - 2 * s * t_next) / (1 - t_next) ** 2, 0.0)
    return (1 + eta2) * diff, math.sqrt(beta2), (1 - t_next) / (1 - s)


def rf_msde_step(x, v, t, t_next, eta, noise):
    """Eq. (13)-(14): one rectified-flow M-SDE step from time ``t`` to ``t_next < t`` (docs/equations.md §4).

    ``s = t - (1 + eta^2)(t - t_next)``; ``x_next = (1 - t_next)/(1 - s) * (x + (s - t) v - beta * noise)``
    with ``beta^2 = (t_next - s)(t_next + s - 2 s t_next) / (1 - t_next)^2``. Exact for point-mass data at any
    step size; ``eta = 0`` is exactly the Euler step ``x + (t_next - t) v``. Where beta^2 < 0 (any eta > 0 into
    ``t_next = 0``, or large eta below t = 1/2) the step uses the largest valid eta (see ``rf_coefficients``).
    ``noise`` may be None only for deterministic steps.
    """
    _check_state(x, v, "v", noise)
    for name, value in (("t", t), ("t_next", t_next)):
        require_scalar_or_tensor(name, value, x, 0.0, 1.0)
    require_scalar_or_tensor("eta", eta, x, 0.0)
    if torch.is_tensor(t) or torch.is_tensor(t_next):
        gap = torch.as_tensor(t, dtype=torch.float64) - torch.as_tensor(t_next, dtype=torch.float64)
        ok = bool((gap > 0).all())
    else:
        ok = t_next < t
    if not ok:
        raise ValueError(f"t_next must be smaller than t (sampling runs from noise t=1 to data t=0), got "
                         f"t={_show(t)} and t_next={_show(t_next)}")
    if noise is None and (torch.is_tensor(eta) or eta != 0):
        raise ValueError("noise is None but eta > 0; pass a noise tensor shaped like x for stochastic steps")
    dtype = compute_dtype(x)
    x32, v32 = x.to(dtype), v.to(dtype)
    t, t_next, eta = (per_sample(a, x, dtype) for a in (t, t_next, eta))
    drift, beta, scale = rf_coefficients(t, t_next, eta)
    out = x32 + drift * v32
    if noise is not None:
        out = out - beta * noise.to(dtype)
    return as_result(scale * out, x.dtype)


def vp_coefficients(alpha_s, sigma_s, alpha_t, sigma_t, eta):
    """Eq. (10)-(11): coefficients of ``x_t = ratio * x - eps_scale * eps + noise_std * noise``.

    ``ratio = alpha_t / alpha_s``, ``c = ratio * sigma_s - sigma_t``, ``eps_scale = (1 + eta^2) c`` and
    ``noise_std = eta * sqrt(ratio^2 sigma_s^2 - sigma_t^2)`` (the exact integral of the M-SDE's diffusion).
    """
    ratio = alpha_t / alpha_s
    c = ratio * sigma_s - sigma_t
    if not torch.is_tensor(eta) and eta == 0:
        return ratio, c, 0.0
    var = ratio * ratio * sigma_s * sigma_s - sigma_t * sigma_t
    std = var.clamp_min(0).sqrt() if torch.is_tensor(var) else math.sqrt(max(var, 0.0))
    return ratio, (1 + eta * eta) * c, eta * std


def vp_msde_step(x, eps, alpha_s, sigma_s, alpha_t, sigma_t, eta, noise):
    """Eq. (10)-(11): one noise-prediction M-SDE step from (alpha_s, sigma_s) to (alpha_t, sigma_t)
    (docs/equations.md §3).

    ``x_t = (a_t/a_s) x - (1 + eta^2) c eps + eta sqrt((a_t/a_s)^2 s_s^2 - s_t^2) noise``,
    ``c = (a_t/a_s) s_s - s_t``. Preserves the marginals for every eta >= 0. ``eta = 0`` is exactly DDIM /
    DPM-Solver-1; ``alpha_s = alpha_t = 1`` is the VE step Eq. (11). The step must not raise the
    noise-to-signal ratio: ``sigma_t / alpha_t <= sigma_s / alpha_s``.
    """
    _check_state(x, eps, "eps", noise)
    for name, value in (("alpha_s", alpha_s), ("alpha_t", alpha_t)):
        require_scalar_or_tensor(name, value, x, 0.0)
        if (value <= 0).any() if torch.is_tensor(value) else value <= 0:
            raise ValueError(f"{name} must be > 0, got {_show(value)}")
    for name, value in (("sigma_s", sigma_s), ("sigma_t", sigma_t)):
        require_scalar_or_tensor(name, value, x, 0.0)
    require_scalar_or_tensor("eta", eta, x, 0.0)
    nsr = [torch.as_tensor(s, dtype=torch.float64) / torch.as_tensor(a, dtype=torch.float64)
           for s, a in ((sigma_s, alpha_s), (sigma_t, alpha_t))]
    if not bool((nsr[1] <= nsr[0] * (1 + 1e-12)).all()):
        raise ValueError(f"the step must go towards data: sigma_t/alpha_t ({_show(nsr[1])}) must not exceed "
                         f"sigma_s/alpha_s ({_show(nsr[0])})")
    if noise is None and (torch.is_tensor(eta) or eta != 0):
        raise ValueError("noise is None but eta > 0; pass a noise tensor shaped like x for stochastic steps")
    dtype = compute_dtype(x)
    a_s, s_s, a_t, s_t, eta_ = (per_sample(a, x, dtype) for a in (alpha_s, sigma_s, alpha_t, sigma_t, eta))
    ratio, eps_scale, noise_std = vp_coefficients(a_s, s_s, a_t, s_t, eta_)
    require_representable_coefficients((ratio, eps_scale, noise_std), eta, dtype)
    out = ratio * x.to(dtype) - eps_scale * eps.to(dtype)
    if noise is not None:
        out = out + noise_std * noise.to(dtype)
    return as_result(out, x.dtype)


def require_representable_coefficients(coefficients, eta, dtype=torch.float64):
    """Refuse a VP step whose coefficients overflow ``dtype``: unlike the rectified-flow step, the VP step has no
    finite eta -> infinity limit (its noise term grows like eta^2), so a huge eta has no finite result."""
    limit = torch.finfo(dtype).max
    for c in coefficients:
        value = torch.as_tensor(c, dtype=torch.float64)
        if not bool((value.isfinite() & (value.abs() <= limit)).all()):
            raise ValueError(f"eta = {_show(eta)} is too large for this step: the coefficients of Eq. (10) overflow "
                             f"{str(dtype).removeprefix('torch.')} (they grow like eta^2)")


def _show(value):
    if torch.is_tensor(value):
        return value.tolist() if value.numel() <= 8 else f"tensor of shape {tuple(value.shape)}"
    return value
