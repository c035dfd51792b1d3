"""Time grids: FLUX's shifted rectified-flow grid and linear-beta VP schedules (docs/equations.md §1, §11)."""
import math

import torch


def flux_mu(image_seq_len, base_shift=0.5, max_shift=1.15, base_len=256, max_len=4096):
    """FLUX's resolution-dependent shift: linear in the token count, ``base_shift`` at 256 and ``max_shift`` at 4096."""
    slope = (max_shift - base_shift) / (max_len - base_len)
    return base_shift + slope * (image_seq_len - base_len)


def flux_time_shift(t, mu):
    """``e^mu / (e^mu + 1/t - 1)``: moves a uniform time grid towards noise; fixes t = 0 and t = 1."""
    t = torch.as_tensor(t, dtype=torch.float64)
    safe = torch.where(t > 0, t, torch.ones_like(t))
    shifted = math.exp(mu) / (math.exp(mu) + 1 / safe - 1)
    return torch.where(t > 0, shifted, torch.zeros_like(t))


def flux_schedule(num_steps, mu=None, image_seq_len=None):
    """``num_steps + 1`` decreasing times from 1 to 0 on FLUX's shifted grid (float32).

    Give ``mu`` or ``image_seq_len`` (the number of 2x2 latent patches); neither gives the unshifted grid.
    The FLUX-IR pipeline uses 21 steps with image_seq_len 64 (mu = 0.4675), docs/equations.md §11.
    """
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    if mu is not None and image_seq_len is not None:
        raise ValueError("give mu or image_seq_len, not both")
    grid = torch.linspace(1, 0, num_steps + 1, dtype=torch.float64)
    if image_seq_len is not None:
        mu = flux_mu(image_seq_len)
    if mu is not None:
        grid = flux_time_shift(grid, mu)
    return grid.float()


def linear_beta_alphas_bar(num_steps, beta_start, beta_end):
    """Cumulative products ``alpha_bar_i = prod_{j<=i} (1 - beta_j)`` of a linear beta schedule, float64 ``[T]``."""
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
    if not 0 < beta_start <= beta_end < 1:
        raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
    betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
    return torch.cumprod(1 - betas, dim=0)


def vp_grid(alphas_bar):
    """Sampling grid of a discrete VP schedule, noisy to clean: ``(alphas, sigmas)`` of length T + 1 with the
    clean end ``alpha_bar_{-1} = 1`` appended (docs/equations.md §1, the DDPM index form)."""
    a = torch.cat([alphas_bar.double().flip(0), alphas_bar.new_ones(1, dtype=torch.float64)])
    return a.sqrt(), (1 - a).clamp_min(0).sqrt()
