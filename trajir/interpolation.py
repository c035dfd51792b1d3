"""LQ-interpolated initial state, Eq. (17) (docs/equations.md §7): start sampling from the LQ image
forward-diffused to the start time instead of from pure noise."""
from .checks import (as_result, compute_dtype, per_sample, require_finite, require_float, require_same_shape,
                     require_scalar_or_tensor)


def _check(lq, noise, *scalars):
    require_float("lq", lq)
    require_float("noise", noise)
    require_same_shape("noise", noise, "lq", lq)
    require_finite("lq", lq)
    require_finite("noise", noise)
    for name, value, high in scalars:
        require_scalar_or_tensor(name, value, lq, 0.0, high)


def lq_initial_state(lq, noise, lq_scale, noise_scale):
    """Eq. (17): ``lq_scale * lq + noise_scale * noise``, the LQ image forward-diffused to the start level.

    The schedule gives ``(1 - t_s, t_s)`` for rectified flow and ``(sqrt(alpha_bar), sqrt(1 - alpha_bar))`` for VP
    (``lq_initial_state_rf`` / ``_vp``); a tuned LQ weight replaces the first factor (docs/equations.md §7).
    """
    _check(lq, noise, ("lq_scale", lq_scale, None), ("noise_scale", noise_scale, None))
    dtype = compute_dtype(lq)
    a, s = per_sample(lq_scale, lq, dtype), per_sample(noise_scale, lq, dtype)
    return as_result(a * lq.to(dtype) + s * noise.to(dtype), lq.dtype)


def lq_initial_state_rf(lq, noise, t_start):
    """Rectified flow: ``(1 - t_start) lq + t_start noise``. ``t_start = 1`` is pure noise, 0 is the LQ latent."""
    _check(lq, noise, ("t_start", t_start, 1.0))
    t = per_sample(t_start, lq, compute_dtype(lq))
    return lq_initial_state(lq, noise, 1 - t, t)


def lq_initial_state_vp(lq, noise, alpha_bar):
    """Variance preserving: ``sqrt(alpha_bar) lq + sqrt(1 - alpha_bar) noise``. ``alpha_bar = 0`` is pure noise."""
    _check(lq, noise, ("alpha_bar", alpha_bar, 1.0))
    a = per_sample(alpha_bar, lq, compute_dtype(lq))
    return lq_initial_state(lq, noise, a ** 0.5, (1 - a) ** 0.5)


def rf_latent_scale_for_lq_weight(lq_weight, sigma_start):
    """The factor on the LQ latent that makes a sampler starting at ``sigma_start`` (which forms
    ``sigma_start * noise + (1 - sigma_start) * latent``) begin at ``lq_weight * lq + sigma_start * noise``.

    Lets the LQ weight differ from the schedule's value ``1 - sigma_start`` (Eq. (17) with a tuned weight,
    docs/equations.md §7). Impossible at ``sigma_start = 1``, where the sampler ignores the latent.
    """
    if not 0.0 <= lq_weight <= 1.0:  # NaN fails this too
        raise ValueError(f"lq_weight must lie in [0, 1], got {lq_weight}")
    if not 0.0 <= sigma_start < 1.0:
        raise ValueError(f"sigma_start must lie in [0, 1) for an LQ weight to take effect, got {sigma_start} "
                         "(at sigma 1 the sampler starts from pure noise and ignores the latent)")
    return lq_weight / (1.0 - sigma_start)
