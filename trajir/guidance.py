"""Negative LQ guidance (NGS), Eq. (19)-(20) (docs/equations.md §8).

The LQ image's implied prediction (the one that would jump from the current state straight onto the LQ image)
is extrapolated away from, CFG-style. In every parameterisation the guided clean estimate is
``(1 + w) x0 - w y``: the sample is pushed away from the LQ explanation ``y``.
"""
import torch

from .checks import (as_result, compute_dtype, per_sample, require_finite, require_float, require_same_shape,
                     require_scalar_or_tensor, require_tensor)


def _check(pred_name, pred, lq, w, x=None):
    require_float(pred_name, pred)
    require_tensor("lq", lq)  # an integer LQ image is fine: it is converted, not truncated
    require_same_shape("lq", lq, pred_name, pred)
    require_finite(pred_name, pred)
    require_finite("lq", lq)
    if x is not None:
        require_float("x", x)
        require_same_shape("x", x, pred_name, pred)
        require_finite("x", x)
    require_scalar_or_tensor("w", w, pred)


def _is_zero(w):
    return not torch.is_tensor(w) and w == 0


def ngs_x0(x0, lq, w):
    """Eq. (20) in x0 space: the guided clean estimate ``(1 + w) x0 - w lq`` (the parameterisation-free form).

    ``w = 0`` returns ``x0`` unchanged.
    """
    _check("x0", x0, lq, w)
    if _is_zero(w):
        return x0
    dtype = compute_dtype(x0)
    w = per_sample(w, x0, dtype)
    return as_result((1 + w) * x0.to(dtype) - w * lq.to(dtype), x0.dtype)


def ngs_velocity(v, x, lq, t, t_end, w):
    """Eq. (19)-(20), rectified flow: ``v_lq = (x - lq) / (t - t_end)`` (19), ``(1 + w) v - w v_lq`` (20).

    ``t_end < t`` is the clean end of the grid (usually 0). ``w = 0`` returns ``v`` unchanged.
    """
    _check("v", v, lq, w, x)
    require_scalar_or_tensor("t", t, x, 0.0, 1.0)
    require_scalar_or_tensor("t_end", t_end, x, 0.0, 1.0)
    if not bool((torch.as_tensor(t, dtype=torch.float64) > torch.as_tensor(t_end, dtype=torch.float64)).all()):
        raise ValueError(f"t_end must be smaller than t, got t={t} and t_end={t_end}")
    if _is_zero(w):
        return v
    dtype = compute_dtype(v)
    t, t_end, w = (per_sample(a, x, dtype) for a in (t, t_end, w))
    v_lq = (x.to(dtype) - lq.to(dtype)) / (t - t_end)
    return as_result((1 + w) * v.to(dtype) - w * v_lq, v.dtype)


def ngs_eps(eps, x, lq, alpha_s, sigma_s, alpha_e, sigma_e, w):
    """Eq. (19)-(20), noise prediction: ``eps_lq = ((a_e/a_s) x - lq) / ((a_e/a_s) s_s - s_e)`` (19) and
    ``(1 + w) eps - w eps_lq`` (20); (alpha_e, sigma_e) is the clean end of the grid.

    ``w = 0`` returns ``eps`` unchanged.
    """
    _check("eps", eps, lq, w, x)
    for name, value in (("alpha_s", alpha_s), ("alpha_e", alpha_e), ("sigma_s", sigma_s), ("sigma_e", sigma_e)):
        require_scalar_or_tensor(name, value, x, 0.0)
    dtype = compute_dtype(eps)
    a_s, s_s, a_e, s_e, w_ = (per_sample(a, x, dtype) for a in (alpha_s, sigma_s, alpha_e, sigma_e, w))
    ratio = a_e / a_s
    denominator = ratio * s_s - s_e
    if not bool((torch.as_tensor(denominator) > 0).all()):
        raise ValueError("the end of the grid must be cleaner than the current state: need "
                         f"(alpha_e/alpha_s) sigma_s > sigma_e, got alpha_s={alpha_s}, sigma_s={sigma_s}, "
                         f"alpha_e={alpha_e}, sigma_e={sigma_e}")
    if _is_zero(w):
        return eps
    eps_lq = (ratio * x.to(dtype) - lq.to(dtype)) / denominator
    return as_result((1 + w_) * eps.to(dtype) - w_ * eps_lq, eps.dtype)
