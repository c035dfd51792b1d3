"""Discrete sampling grids with index-based steps, one class per parameterisation.

Trainers, the restore command and the trajectory runner move states along a grid ``0 .. K`` (noise to data) with
the same few operations: one ODE step or jump ``a -> b``, one M-SDE step, the clean estimate, negative LQ guidance
and the LQ-interpolated start. ``pred`` is the network's output: the velocity for ``RFGrid``, the noise for
``VPGrid``. Indices may be per-sample ``[B]`` tensors.

The grids hold no formula of their own: each operation looks up the grid's values at the indices and calls the
function of its equation (``sde``, ``guidance``, ``interpolation``; docs/equations.md §9 lists them).
"""
import torch

from .conversions import rf_x0_from_v, vp_x0_from_eps
from .guidance import ngs_eps, ngs_velocity
from .interpolation import lq_initial_state, lq_initial_state_rf
from .schedules import flux_schedule, linear_beta_alphas_bar, vp_grid
from .sde import rf_msde_step, vp_msde_step


def _at(values, index, x):
    """Grid values at ``index`` (int or [B] tensor), shaped to broadcast against ``x``."""
    v = values.to(device=x.device, dtype=torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype)
    if torch.is_tensor(index):
        return v[index.to(x.device)].reshape(-1, *([1] * (x.ndim - 1)))
    return v[index]


def _per_sample_eta(eta, x):
    return eta.reshape(-1, *([1] * (x.ndim - 1))).to(x) if torch.is_tensor(eta) else eta


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

    def x0(self, x, pred, index):
        return rf_x0_from_v(x, pred, _at(self.t, index, x))

    def jump(self, x, pred, a, b):
        """One Euler step from grid index ``a`` to ``b > a`` (the ODE step when ``b = a + 1``): Eq. (13)-(14)
        with eta = 0."""
        return rf_msde_step(x, pred, _at(self.t, a, x), _at(self.t, b, x), 0.0, None)

    def msde(self, x, pred, a, b, eta, noise):
        """One M-SDE step from grid index ``a`` to ``b > a``, Eq. (13)-(14) (per-sample indices and etas)."""
        return rf_msde_step(x, pred, _at(self.t, a, x), _at(self.t, b, x), _per_sample_eta(eta, x), noise)

    def guide(self, pred, x, lq, index, w):
        """Negative LQ guidance towards the grid's clean end, Eq. (19)-(20)."""
        if not torch.is_tensor(w) and w == 0:
            return pred
        return ngs_velocity(pred, x, lq, _at(self.t, index, x), self.t[-1].item(), w)

    def lq_start(self, lq, noise, index, lq_weight=None):
        """Eq. (17) at grid ``index``: ``(1 - t) lq + t noise``, or ``lq_weight lq + t noise``."""
        t = _at(self.t, index, lq)
        if lq_weight is None:
            return lq_initial_state_rf(lq, noise, t)
        return lq_initial_state(lq, noise, lq_weight, t)

    def describe(self):
        return {"param": "rf", "times": self.t.tolist()}


class VPGrid:
    """Variance preserving, ``x = alpha x0 + sigma noise``; ``pred`` is the noise. Grid index 0 is the noisiest
    level of the discrete schedule and index K the clean end (alpha 1, sigma 0). With every alpha 1 it is the VE
    grid of a k-diffusion schedule (``grid_from_sigmas``)."""

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

    def x0(self, x, pred, index):
        return vp_x0_from_eps(x, pred, _at(self.alpha, index, x), _at(self.sigma, index, x))

    def _levels(self, x, a, b):
        return _at(self.alpha, a, x), _at(self.sigma, a, x), _at(self.alpha, b, x), _at(self.sigma, b, x)

    def jump(self, x, pred, a, b):
        """One DDIM step from grid index ``a`` to ``b > a``: Eq. (10) with eta = 0."""
        return vp_msde_step(x, pred, *self._levels(x, a, b), 0.0, None)

    def msde(self, x, pred, a, b, eta, noise):
        """One M-SDE step from grid index ``a`` to ``b > a``, Eq. (10) with the exact variance."""
        return vp_msde_step(x, pred, *self._levels(x, a, b), _per_sample_eta(eta, x), noise)

    def guide(self, pred, x, lq, index, w):
        """Negative LQ guidance, Eq. (19)-(20), with the grid's clean end as (alpha_e, sigma_e)."""
        if not torch.is_tensor(w) and w == 0:
            return pred
        return ngs_eps(pred, x, lq, _at(self.alpha, index, x), _at(self.sigma, index, x), self.alpha[-1].item(),
                       self.sigma[-1].item(), w)

    def lq_start(self, lq, noise, index, lq_weight=None):
        """Eq. (17): ``alpha lq + sigma noise`` at grid ``index``, or with ``alpha = lq_weight`` and
        ``sigma = sqrt(1 - lq_weight^2)`` when given."""
        if lq_weight is None:
            return lq_initial_state(lq, noise, _at(self.alpha, index, lq), _at(self.sigma, index, lq))
        return lq_initial_state(lq, noise, lq_weight, (1 - lq_weight ** 2) ** 0.5)

    def describe(self):
        return {"param": "vp", "alphas": self.alpha.tolist(), "sigmas": self.sigma.tolist()}


def grid_from_description(desc):
    """Rebuild a grid from ``describe()`` output (stored in model files and checkpoints)."""
    if desc.get("param") == "rf":
        return RFGrid(desc["times"])
    if desc.get("param") == "vp":
        return VPGrid(desc["alphas"], desc["sigmas"])
    raise ValueError(f"unknown grid description {desc!r}")


def grid_from_sigmas(sigmas, param):
    """The grid of a k-diffusion / ComfyUI schedule: ``param="rf"`` reads the sigmas as flow times, ``"ve"`` as
    the noise levels of ``x = x0 + sigma eps`` (a VP grid with every alpha 1, so its steps are Eq. (11))."""
    values = torch.as_tensor(sigmas).detach().double().cpu()
    if param == "rf":
        return RFGrid(values)
    if param == "ve":
        return VPGrid(torch.ones_like(values), values)
    raise ValueError(f"param must be 'rf' or 've', got {param!r}")
