"""Best-of-N trajectory branches (MATH.md §6.2 and Algorithm 1, steps 2-4), pure torch.

Candidate 0 is the ODE trajectory (eta = 0, MATH.md §11.3); candidates 1..N are M-SDE branches:

- ``single_step`` (Eq. (15), the FLUX-IR variant (a)): the ODE runs to the branch step ``k``; each candidate takes
  one M-SDE step ``x_{t_k} -> x_{t_{k+1}}`` from the same ODE state (one model call serves all of them) and
  continues with ODE steps to the end;
- ``throughout`` (variant (b)): each candidate takes M-SDE steps everywhere except the last step.

Candidates are stacked candidate-major (``[n0 b0, n0 b1, n1 b0, ...]``) and go through the model together, in
chunks of whole image batches.
"""
import math

import torch

from ..trajir.conversions import rf_v_from_x0
from ..trajir.samplers import noise_seed
from ..trajir.sde import rf_msde_step, vp_msde_step

BRANCH_MODES = ("single_step", "throughout")
ETA_MODES = ("fixed", "random")
_ETA_STREAM = 0x2545F491  # offsets the seed of the random-eta draws from the branch noise


def candidate_etas(n, eta, eta_mode, seed=0):
    """``n + 1`` etas: 0 for the ODE candidate, then ``eta`` (``fixed``) or ``eta * sqrt(U[0, 1))`` (``random``,
    eta^2 uniform as in the FLUX-IR code, MATH.md §5.2) for the branches."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"candidates must be an integer >= 1, got {n!r}")
    eta = float(eta)
    if not math.isfinite(eta) or eta < 0:
        raise ValueError(f"eta must be finite and >= 0, got {eta}")
    if eta_mode == "fixed":
        return [0.0] + [eta] * n
    if eta_mode == "random":
        generator = torch.Generator(device="cpu").manual_seed(noise_seed(int(seed) ^ _ETA_STREAM))
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        return [0.0] + [eta * math.sqrt(v) for v in u.tolist()]
    raise ValueError(f"eta_mode must be one of {ETA_MODES}, got {eta_mode!r}")


def chunk_size(batch_size, images):
    """Latents per model call: ``batch_size`` rounded down to whole image batches (at least one), so each chunk
    lines up with ComfyUI's tiling of conditioning and control hints."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    return max(1, batch_size // images) * images


def count_model_calls(steps, branch_step, mode, candidates, images, chunk):
    """How many model calls ``rollout`` makes (the progress total)."""
    per_step = math.ceil((candidates + 1) * images / chunk)
    if mode == "throughout":
        return steps * per_step
    return (branch_step + 1) * math.ceil(images / chunk) + (steps - branch_step - 1) * per_step


def check_branch_step(branch_step, steps):
    if steps < 2:
        raise ValueError(f"Best-of-N needs a schedule of at least 2 steps (the last step is always an ODE step), "
                         f"got {steps}")
    if not 0 <= branch_step <= steps - 2:
        raise ValueError(f"branch_step must lie in [0, {steps - 2}] for a schedule of {steps} steps (the branch "
                         f"step is never the last one), got {branch_step}")


def _denoise(denoise, x, sigma, chunk, before_call):
    outs = []
    for part in x.split(chunk):
        if before_call is not None:
            before_call()
        outs.append(denoise(part, sigma))
    return torch.cat(outs)


def _step(x, x0, sigma, sigma_next, eta, z, param):
    """One M-SDE step (Eq. (13)-(14) for rf, Eq. (11) for ve); eta = 0 is the Euler step."""
    d = rf_v_from_x0(x, x0, sigma)  # v for rf; the same expression is eps for ve
    if param == "rf":
        return rf_msde_step(x, d, sigma, sigma_next, eta, z)
    return vp_msde_step(x, d, 1.0, sigma, 1.0, sigma_next, eta, z)


@torch.no_grad()
def rollout(denoise, x, sigmas, etas, param="rf", mode="single_step", branch_step=0, seed=0, chunk=None,
            before_call=None):
    """Run the ODE candidate and ``len(etas) - 1`` M-SDE branches from the start state ``x`` ``[B, C, h, w]``.

    ``denoise(x, sigma)`` returns the clean estimate x0 for a batch at the scalar tensor ``sigma``; ``sigmas`` is
    the schedule (noise to data); ``etas`` comes from ``candidate_etas``. Branch noise is drawn on the CPU from
    ``seed``. ``before_call()`` runs before every model call (interrupt checks, progress).
    Returns ``(final, x_t, x_next)``, each ``[N + 1, B, C, h, w]``: the final states and the states at
    ``sigmas[branch_step]`` and ``sigmas[branch_step + 1]`` of every candidate.
    """
    if param not in ("rf", "ve"):
        raise ValueError(f"param must be 'rf' or 've', got {param!r}")
    if mode not in BRANCH_MODES:
        raise ValueError(f"mode must be one of {BRANCH_MODES}, got {mode!r}")
    steps = len(sigmas) - 1
    check_branch_step(branch_step, steps)
    images, count = x.shape[0], len(etas)
    chunk = chunk or count * images
    eta_vec = torch.tensor(etas, dtype=torch.float32).repeat_interleave(images).to(x.device)
    generator = torch.Generator(device="cpu").manual_seed(noise_seed(seed))

    def noise():
        z = torch.randn((count * images, *x.shape[1:]), generator=generator, dtype=torch.float32)
        return z.to(device=x.device, dtype=x.dtype)

    if mode == "throughout":
        x = x.repeat(count, 1, 1, 1)
        first = 0
    else:
        for i in range(branch_step):
            x0 = _denoise(denoise, x, sigmas[i], chunk, before_call)
            x = _step(x, x0, sigmas[i], sigmas[i + 1], 0.0, None, param)
        x0 = _denoise(denoise, x, sigmas[branch_step], chunk, before_call)
        x, x0 = x.repeat(count, 1, 1, 1), x0.repeat(count, 1, 1, 1)
        x_t = x
        x = _step(x, x0, sigmas[branch_step], sigmas[branch_step + 1], eta_vec, noise(), param)
        x_next = x
        first = branch_step + 1
    for i in range(first, steps):
        x0 = _denoise(denoise, x, sigmas[i], chunk, before_call)
        stochastic = mode == "throughout" and i < steps - 1
        if mode == "throughout" and i == branch_step:
            x_t = x
        x = _step(x, x0, sigmas[i], sigmas[i + 1], eta_vec if stochastic else 0.0, noise() if stochastic else None,
                  param)
        if mode == "throughout" and i == branch_step:
            x_next = x
    shape = (count, images, *x.shape[1:])
    return x.reshape(shape), x_t.reshape(shape), x_next.reshape(shape)
