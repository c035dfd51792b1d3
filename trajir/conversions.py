"""Conversions between the predictions a model can make: clean image x0, velocity v, noise eps, score.

Rectified flow: ``x_t = (1 - t) x0 + t eps`` and ``v = eps - x0``; noise prediction: ``x_t = alpha x0 + sigma eps``
(docs/equations.md §1). Arguments broadcast; no validation (hot paths).
"""


def rf_v_from_x0(x, x0, t):
    return (x - x0) / t


def rf_x0_from_v(x, v, t):
    return x - t * v


def rf_score_from_v(x, v, t):
    """``grad log p_t(x) = -eps_hat / t = -(x + (1 - t) v) / t``."""
    return -(x + (1 - t) * v) / t


def vp_x0_from_eps(x, eps, alpha, sigma):
    return (x - sigma * eps) / alpha

