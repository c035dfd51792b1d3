"""Exact predictors for Gaussian data x0 ~ N(mu, s^2) (per element), used as 'models' in sampler tests."""
import math

import torch

MU, STD = 1.5, 0.5


def rf_x0(x, t, mu=MU, s=STD, **_extra_args):
    """E[x0 | x_t] for x_t = (1 - t) x0 + t eps."""
    t = t.reshape(-1, *([1] * (x.ndim - 1))) if torch.is_tensor(t) and t.ndim == 1 else t
    a = 1 - t
    return mu + a * s * s / (a * a * s * s + t * t) * (x - a * mu)


def rf_velocity(x, t, mu=MU, s=STD):
    return (x - rf_x0(x, t, mu, s)) / t


def ve_x0(x, sigma, mu=MU, s=STD, **_extra_args):
    """E[x0 | x] for x = x0 + sigma eps."""
    sigma = sigma.reshape(-1, *([1] * (x.ndim - 1))) if torch.is_tensor(sigma) and sigma.ndim == 1 else sigma
    return mu + s * s / (s * s + sigma * sigma) * (x - mu)


def vp_eps(x, alpha, sigma, mu=MU, s=STD):
    """E[eps | x_t] for x_t = alpha x0 + sigma eps."""
    return sigma / (alpha * alpha * s * s + sigma * sigma) * (x - alpha * mu)


def rf_score(x, t, mu=MU, s=STD):
    """grad log p_t(x) of the Gaussian marginal N((1-t) mu, (1-t)^2 s^2 + t^2)."""
    a = 1 - t
    return -(x - a * mu) / (a * a * s * s + t * t)


def vp_alpha_sigma(t, beta_min=0.1, beta_max=20.0):
    """Continuous linear-beta VP schedule: log alpha = -0.5 (beta_min t + 0.5 (beta_max - beta_min) t^2)."""
    log_alpha = -0.5 * (beta_min * t + 0.5 * (beta_max - beta_min) * t * t)
    alpha = math.exp(log_alpha)
    return alpha, math.sqrt(1 - alpha * alpha)
