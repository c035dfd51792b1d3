"""Discrete sampling grids with index-based steps, one class per parameterisation.

Trainers, the restore command and the compact-model node move states along a grid ``0 .. K`` (noise to data) with
the same few operations: forward-diffuse, one ODE step or jump ``a -> b``, one M-SDE step, the clean estimate,
the implied prediction of a jump, negative LQ guidance and the LQ-interpolated start. ``pred`` is the network's
output: the velocity for ``RFGrid``, the noise for ``VPGrid``. Indices may be per-sample ``[B]`` tensors.
"""
import torch

from .conversions import rf_x0_from_v, vp_x0_from_eps
from .schedules import flux_schedule, linear_beta_alphas_bar, vp_grid
from .sde import rf_coefficients, vp_coefficients


def _at(values, index, x):
    """Grid values at ``index`` (int or [B] tensor), shaped to broadcast against ``x``."""
    v = values.to(device=x.device, dtype=torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype)
    if torch.is_tensor(index):
        return v[index.to(x.device)].reshape(-1, *([1] * (x.ndim - 1)))
    return v[index]


class RFGrid:
    """Rectified flow, ``x_t = (1 - t) x0 + t noise``; ``pred`` is ``v = noise - x0``."""

    param = "rf"

    def __init__(self, times):
        times = torch.as_tensor(times, dtype=torch.float64)
        if times.ndim != 1 or len(times) < 2 or not bool((times[1:] < times[:-1]).all()):
            raise ValueError(f"times must be a strictly decreasing 1-D grid of >= 2 values, got {times.tolist()}")
        if times[0] > 1 or times[-1] < 0:
            raise ValueError(f"rectified-flow times must lie in [0, 1], got {times.tolist()}")
        self.t = times

    @classmethod
    def uniform(cls, steps, shift=0.0):
        return cls(flux_schedule(steps, mu=shift if shift else None).double())

    @property
    def steps(self):
        return len(self.t) - 1

    def model_time(self, index, batch):
        """The network's time input ``[B]``: the flow time."""
        return self.t[index].float() if torch.is_tensor(index) else self.t[index].float().expand(batch)

    def noisy(self, x0, noise, index):
        t = _at(self.t, index, x0)
        return (1 - t) * x0 + t * noise

    def target(self, x0, noise):
        return noise - x0

    def x0(self, x, pred, index):
        return rf_x0_from_v(x, pred, _at(self.t, index, x))

    def jump(self, x, pred, a, b):
        """One Euler step from grid index ``a`` to ``b > a`` (the ODE step when ``b = a + 1``)."""
        return x + (_at(self.t, b, x) - _at(self.t, a, x)) * pred

    def msde(self, x, pred, a, b, eta, noise):
        """One M-SDE step from grid index ``a`` to ``b > a``, Eq. (13)-(14), with the fallback rule of
        ``rf_coefficients`` (vectorised over per-sample indices and etas)."""
        eta = eta.reshape(-1, *([1] * (x.ndim - 1))).to(x) if torch.is_tensor(eta) else eta
        drift, beta, scale = rf_coefficients(torch.as_tensor(_at(self.t, a, x)), torch.as_tensor(_at(self.t, b, x)),
                                             eta)
        return scale * (x + drift * pred - beta * noise)

    def implied(self, x_a, x_b, a, b):
        return (x_a - x_b) / (_at(self.t, a, x_a) - _at(self.t, b, x_a))

    def guide(self, pred, x, lq, index, w):
        """Negative LQ guidance towards the clean end, Eq. (19)-(20): ``(1 + w) v - w (x - lq) / t``."""
        if not torch.is_tensor(w) and w == 0:
            return pred
        return (1 + w) * pred - w * (x - lq) / (_at(self.t, index, x) - self.t[-1].item())

    def lq_start(self, lq, noise, index, lq_weight=None):
        """Eq. (17) at grid ``index``: ``(1 - t) lq + t noise``, or ``lq_weight lq + t noise``."""
        t = _at(self.t, index, lq)
        weight = 1 - t if lq_weight is None else lq_weight
        return weight * lq + t * noise

    def describe(self):
        return {"param": "rf", "times": self.t.tolist()}


class VPGrid:
    """Variance preserving, ``x = alpha x0 + sigma noise``; ``pred`` is the noise. Grid index 0 is the noisiest
    level of the discrete schedule and index K the clean end (alpha 1, sigma 0)."""

    param = "vp"

    def __init__(self, alphas, sigmas):
        self.alpha = torch.as_tensor(alphas, dtype=torch.float64)
        self.sigma = torch.as_tensor(sigmas, dtype=torch.float64)
        if self.alpha.shape != self.sigma.shape or self.alpha.ndim != 1 or len(self.alpha) < 2:
            raise ValueError("alphas and sigmas must be 1-D grids of equal length >= 2")
        nsr = self.sigma / self.alpha
        if not bool((nsr[1:] < nsr[:-1]).all()):
            raise ValueError(f"sigma/alpha must strictly decrease along the grid, got {nsr.tolist()}")

    @classmethod
    def linear(cls, steps, beta_start, beta_end):
        return cls(*vp_grid(linear_beta_alphas_bar(steps, beta_start, beta_end)))

    @property
    def steps(self):
        return len(self.alpha) - 1

    def model_time(self, index, batch):
        """The network's time input ``[B]``: the continuous noise level ``sqrt(alpha_bar) = alpha`` (SR3)."""
        return self.alpha[index].float() if torch.is_tensor(index) else self.alpha[index].float().expand(batch)

    def noisy(self, x0, noise, index):
        return _at(self.alpha, index, x0) * x0 + _at(self.sigma, index, x0) * noise

    def target(self, x0, noise):
        return noise

    def x0(self, x, pred, index):
        return vp_x0_from_eps(x, pred, _at(self.alpha, index, x), _at(self.sigma, index, x))

    def jump(self, x, pred, a, b):
        """One DDIM step from grid index ``a`` to ``b > a``."""
        ratio = _at(self.alpha, b, x) / _at(self.alpha, a, x)
        return ratio * x - (ratio * _at(self.sigma, a, x) - _at(self.sigma, b, x)) * pred

    def msde(self, x, pred, a, b, eta, noise):
        """One M-SDE step from grid index ``a`` to ``b > a``, Eq. (10) with the exact variance."""
        eta = eta.reshape(-1, *([1] * (x.ndim - 1))).to(x) if torch.is_tensor(eta) else eta
        ratio, eps_scale, std = vp_coefficients(_at(self.alpha, a, x), _at(self.sigma, a, x), _at(self.alpha, b, x),
                                                _at(self.sigma, b, x), eta)
        return ratio * x - eps_scale * pred + std * noise

    def implied(self, x_a, x_b, a, b):
        ratio = _at(self.alpha, b, x_a) / _at(self.alpha, a, x_a)
        return (ratio * x_a - x_b) / (ratio * _at(self.sigma, a, x_a) - _at(self.sigma, b, x_a))

    def guide(self, pred, x, lq, index, w):
        """Negative LQ guidance, Eq. (19)-(20), with the grid's clean end as (alpha_e, sigma_e)."""
        if not torch.is_tensor(w) and w == 0:
            return pred
        ratio = self.alpha[-1].item() / _at(self.alpha, index, x)
        eps_lq = (ratio * x - lq) / (ratio * _at(self.sigma, index, x) - self.sigma[-1].item())
        return (1 + w) * pred - w * eps_lq

    def lq_start(self, lq, noise, index, lq_weight=None):
        """Eq. (17): ``sqrt(ab) lq + sqrt(1 - ab) noise`` with ``sqrt(ab) = lq_weight`` when given."""
        alpha = _at(self.alpha, index, lq) if lq_weight is None else lq_weight
        sigma = _at(self.sigma, index, lq) if lq_weight is None else (1 - lq_weight ** 2) ** 0.5
        return alpha * lq + sigma * noise

    def describe(self):
        return {"param": "vp", "alphas": self.alpha.tolist(), "sigmas": self.sigma.tolist()}


def grid_from_description(desc):
    """Rebuild a grid from ``describe()`` output (stored in model files and checkpoints)."""
    if desc.get("param") == "rf":
        return RFGrid(desc["times"])
    if desc.get("param") == "vp":
        return VPGrid(desc["alphas"], desc["sigmas"])
    raise ValueError(f"unknown grid description {desc!r}")
