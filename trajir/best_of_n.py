"""Best-of-N trajectory alignment, Eq. (15) and Algorithm 1 steps 2-5 (docs/equations.md §5): the branches, their
etas, the rollout, the selection of the best candidate and the record of the winning branch.

Candidate 0 is the ODE (eta = 0); candidates 1..N are M-SDE branches. A branch leaves the ODE state ``x_k`` at the
branch step with one M-SDE step of its own eta and noise (``branch``), then continues with ODE steps; the
candidates are decoded, scored and the best one wins (``select_best``, ties to the ODE). Candidates are stacked
candidate-major, ``[n0 b0, n0 b1, n1 b0, ...]``, so that ``[N * B, ...]`` reshapes to ``[N, B, ...]``.

Two callers: the RL stage (``trajir.train.rl``: per-sample branch steps, etas from the modulation network) and the
ComfyUI Best-of-N node through ``rollout``, which takes a k-diffusion denoiser and a sigma schedule and offers two
modes: ``single_step`` (the FLUX-IR variant: one M-SDE step at the branch step, then ODE; one model call at the
branch step serves every candidate) and ``throughout`` (M-SDE at every step but the last).
"""
import math

import torch

from .checks import require_image_batch, require_tensor
from .conversions import rf_v_from_x0
from .grids import grid_from_sigmas
from .safefiles import read_tagged, require_keys, write_tagged
from .samplers import check_model_output, noise_seed, random_etas
from .trajectory import run

BRANCH_MODES = ("single_step", "throughout")
ETA_MODES = ("fixed", "random")
_ETA_STREAM = 0x2545F491  # offsets the seed of the random-eta draws from the branch noise


def candidate_etas(n, eta, eta_mode, seed=0):
    """``n + 1`` etas: 0 for the ODE candidate, then ``eta`` (``fixed``) or ``eta * sqrt(U[0, 1))`` (``random``,
    eta^2 uniform as in the FLUX-IR code, docs/equations.md §4) for the branches."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"candidates must be an integer >= 1, got {n!r}")
    eta = float(eta)
    if not math.isfinite(eta) or eta < 0:
        raise ValueError(f"eta must be finite and >= 0, got {eta}")
    if eta_mode == "fixed":
        return [0.0] + [eta] * n
    if eta_mode == "random":
        return [0.0] + random_etas(n, eta, seed, _ETA_STREAM)
    raise ValueError(f"eta_mode must be one of {ETA_MODES}, got {eta_mode!r}")


def repeat_candidates(tree, n):
    """Every tensor of ``tree`` (a tensor, a dict of them; anything else is kept) repeated ``n`` times along the
    batch, candidate-major: ``[B, ...] -> [n * B, ...]``."""
    if torch.is_tensor(tree):
        return tree.repeat(n, *([1] * (tree.ndim - 1)))
    if isinstance(tree, dict):
        return {k: repeat_candidates(v, n) for k, v in tree.items()}
    return tree


def branch(grid, x, pred, a, b, etas, noise):
    """Algorithm 1 step 4: one M-SDE step from grid index ``a`` to ``b`` (Eq. (10)-(11) or (13)-(14)) for each of
    N candidates leaving the shared state ``x`` with the shared prediction ``pred`` (both ``[B, ...]``).

    ``a``, ``b``: ints or per-sample ``[B]`` tensors; ``etas``: ``[N, B]`` (or N numbers, one per candidate);
    ``noise``: ``[N, B, ...]``. Returns the candidates' states ``[N, B, ...]``.
    """
    n, batch = noise.shape[0], x.shape[0]
    if noise.shape[1:] != x.shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)}; expected [N, *x.shape] = [N, {tuple(x.shape)}]")
    etas = torch.as_tensor(etas, dtype=torch.float32, device=x.device)
    etas = etas[:, None].expand(n, batch) if etas.ndim == 1 else etas
    if etas.shape != (n, batch):
        raise ValueError(f"etas has shape {tuple(etas.shape)}; expected [N, B] = [{n}, {batch}] or N numbers")
    stepped = grid.msde(repeat_candidates(x, n), repeat_candidates(pred, n), repeat_candidates(a, n),
                        repeat_candidates(b, n), etas.reshape(-1), noise.reshape(n * batch, *x.shape[1:]))
    return stepped.reshape(n, *x.shape)


def block_noise(coarse, size):
    """Branch noise constant on blocks: ``coarse`` ``[..., h, w]`` (standard normal on a grid ``s`` times coarser
    than the state) repeated ``s`` times along each side and cropped to ``size = (H, W)``. Every pixel keeps unit
    variance, as in the M-SDE's white noise, but the noise spans only ``h * w`` directions per channel: Best-of-N
    over N such branches finds the reward's ascent inside that subspace with a cosine of about sqrt(N / (C h w))
    instead of sqrt(N / (C H W)) (docs/rl_diagnosis.md)."""
    height, width = size
    h, w = coarse.shape[-2:]
    if h > height or w > width:
        raise ValueError(f"a coarse noise of {h} x {w} cells cannot be spread over {height} x {width} pixels")
    sy, sx = -(-height // h), -(-width // w)
    return coarse.repeat_interleave(sy, -2).repeat_interleave(sx, -1)[..., :height, :width]


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


@torch.no_grad()
def rollout(denoise, x, sigmas, etas, param="rf", mode="single_step", branch_step=0, seed=0, chunk=None,
            before_call=None):
    """Run the ODE candidate and ``len(etas) - 1`` M-SDE branches from the start state ``x`` ``[B, C, h, w]``.

    ``denoise(x, sigma)`` returns the clean estimate x0 for a batch at the scalar tensor ``sigma`` (the k-diffusion
    convention); ``sigmas`` is the schedule (noise to data), read as flow times (``param="rf"``) or VE noise levels
    (``"ve"``); ``etas`` comes from ``candidate_etas``. Branch noise is drawn on the CPU from ``seed``.
    ``before_call()`` runs before every model call (interrupt checks, progress); ``chunk`` bounds the latents per
    call. Returns ``(final, x_t, x_next)``, each ``[N + 1, B, C, h, w]``: the final states and the states at
    ``sigmas[branch_step]`` and ``sigmas[branch_step + 1]`` of every candidate.
    """
    if param not in ("rf", "ve"):
        raise ValueError(f"param must be 'rf' or 've', got {param!r}")
    if mode not in BRANCH_MODES:
        raise ValueError(f"mode must be one of {BRANCH_MODES}, got {mode!r}")
    steps = len(sigmas) - 1
    check_branch_step(branch_step, steps)
    grid = grid_from_sigmas(sigmas, param)
    images, count = x.shape[0], len(etas)
    eta_vec = torch.tensor(etas, dtype=torch.float32).repeat_interleave(images).to(x.device)
    generator = torch.Generator(device="cpu").manual_seed(noise_seed(seed))

    def noise():
        z = torch.randn((count * images, *x.shape[1:]), generator=generator, dtype=torch.float32)
        return z.to(device=x.device, dtype=x.dtype)

    def predict(xb, index, _):
        if before_call is not None:
            before_call()
        sigma = sigmas[index]
        x0 = denoise(xb, sigma)
        check_model_output(x0, xb, f"sigma {float(sigma):.6g}")
        return rf_v_from_x0(xb, x0, sigma)  # v for rf; the same expression is eps for ve

    kept = {}

    def step(position, xs, pred, a, b):
        if position == branch_step and mode == "single_step":  # every candidate leaves the same ODE state
            out = branch(grid, xs, pred, a, b, etas, noise().reshape(count, *xs.shape)).flatten(0, 1)
            xs = xs.repeat(count, 1, 1, 1)
        elif mode == "throughout" and position < steps - 1:
            out = grid.msde(xs, pred, a, b, eta_vec, noise())
        else:
            out = grid.jump(xs, pred, a, b)
        if position == branch_step:
            kept["x_t"], kept["x_next"] = xs, out
        return out

    start = x.repeat(count, 1, 1, 1) if mode == "throughout" else x
    final = run(grid, list(range(steps + 1)), start, predict, step=step, chunk=chunk).final
    shape = (count, images, *x.shape[1:])
    return final.reshape(shape), kept["x_t"].reshape(shape), kept["x_next"].reshape(shape)


def select_best(candidates, reward, reference=None, ode_index=0, chunk_size=None):
    """Algorithm 1 step 5, ``n* = argmax_n r_n``: ``(best_idx [B] int64, scores [N, B] float32)`` for
    ``candidates [N, B, C, H, W]`` (images in 0..1).

    ``reward``: a :class:`trajir.rewards.Reward` or any callable ``(images [M, C, H, W], reference or None)
    -> [M]``, higher is better. ``reference`` ``[B, C, H, W]`` is shared by the N candidates of each image. All
    N x B images go through the reward in one call, or in chunks of ``chunk_size`` images. Ties go to the ODE
    candidate ``ode_index`` (so a batch where no branch beats the ODE gives no update), else to the lowest index
    (``ode_index=None``); a NaN score never wins unless every candidate of that image is NaN.
    """
    require_tensor("candidates", candidates)
    if candidates.ndim != 5 or 0 in candidates.shape[:2]:
        raise ValueError(f"candidates must have shape [N, B, C, H, W] with N, B >= 1, got {tuple(candidates.shape)}")
    n, b = candidates.shape[:2]
    if ode_index is not None and (isinstance(ode_index, bool) or not isinstance(ode_index, int)
                                  or not 0 <= ode_index < n):
        raise ValueError(f"ode_index is {ode_index!r}; expected None or an integer in [0, {n - 1}] (N = {n})")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size is {chunk_size!r}; expected None or a positive integer")
    flat = candidates.reshape(n * b, *candidates.shape[2:])
    ref = None
    if reference is not None and getattr(reward, "needs_reference", True):
        require_image_batch("reference", reference, channels=None)
        if tuple(reference.shape) != tuple(candidates.shape[1:]):
            raise ValueError(f"reference has shape {tuple(reference.shape)}; expected {tuple(candidates.shape[1:])}, "
                             "the shape of one candidate batch [B, C, H, W]")
        ref = reference.unsqueeze(0).expand(n, *reference.shape).reshape(flat.shape)
    step = chunk_size or n * b
    parts = [reward(flat[i : i + step], None if ref is None else ref[i : i + step]) for i in range(0, n * b, step)]
    scores = torch.cat([p.reshape(-1).float() for p in parts]).view(n, b)
    ranked = torch.nan_to_num(scores, nan=-torch.inf)
    best = ranked.argmax(dim=0)  # the first maximum: the lowest index on ties
    if ode_index is not None:
        ties = ranked[ode_index] == ranked.max(dim=0).values
        best = torch.where(ties, torch.full_like(best, ode_index), best)
    return best, scores


# --- the record of the winning branch --------------------------------------------------------------------------
# Saved by the ComfyUI node, read by ``python -m trajir.train`` (``rl.records``) as RL targets: Eq. (15), one ODE
# step from ``x_t`` should land on ``x_next``. A record holds, per image, the states ``x_t`` / ``x_next`` in model
# space, the times, the reward and the eta of the winning candidate (0: the ODE itself won). For a FLUX-IR
# ControlNet it also holds what the step was conditioned on: the ControlNet hint (the LQ image), the T5 tokens, the
# pooled CLIP-L vector and the guidance.

RECORD_KIND = "best_of_n_branch"
RECORD_KEYS = ("x_t", "x_next", "t", "t_next", "reward")
CONDITIONING = ("hint", "context", "pooled", "guidance")


def save_branch(path, x_t, x_next, t, t_next, reward, param="rf", eta=None, conditioning=None, extra=None,
                overwrite=False):
    """Write one record: ``x_t`` / ``x_next`` ``[B, C, h, w]``, ``t`` / ``t_next`` / ``reward`` / ``eta`` ``[B]``
    (times are sigma for ``param="ve"``); ``conditioning`` optionally maps ``hint`` ``[B, 3, H, W]`` (0..1),
    ``context`` ``[B, T, D]``, ``pooled`` ``[B, P]`` and ``guidance`` ``[B]``. ``extra`` is JSON metadata."""
    if param not in ("rf", "ve"):
        raise ValueError(f"param must be 'rf' or 've', got {param!r}")
    if x_t.shape != x_next.shape:
        raise ValueError(f"x_next has shape {tuple(x_next.shape)} but x_t has shape {tuple(x_t.shape)}")
    batch = x_t.shape[0]
    eta = torch.full((batch,), float("nan")) if eta is None else eta
    for name, value in (("t", t), ("t_next", t_next), ("reward", reward), ("eta", eta)):
        if value.shape != (batch,):
            raise ValueError(f"{name} must have shape ({batch},), got {tuple(value.shape)}")
    tensors = {"x_t": x_t, "x_next": x_next, "t": t.float(), "t_next": t_next.float(), "reward": reward.float(),
               "eta": eta.float()}
    for name, value in (conditioning or {}).items():
        if name not in CONDITIONING:
            raise ValueError(f"conditioning entry {name!r} is not one of {CONDITIONING}")
        if value.shape[0] != batch:
            raise ValueError(f"conditioning {name} has {value.shape[0]} rows; expected one per image ({batch})")
        tensors[name] = value.float() if name != "hint" else value.half()  # the hint is an image: 16 bits suffice
    return write_tagged(path, tensors, RECORD_KIND, {"param": param, **({"extra": extra} if extra else {})},
                        overwrite)


def load_branch(path):
    """``dict`` with the tensors of ``save_branch`` (``hint`` back in float32) and ``param``."""
    tensors, meta = read_tagged(path, RECORD_KIND)
    require_keys(path, tensors, RECORD_KEYS)
    if "hint" in tensors:
        tensors["hint"] = tensors["hint"].float()
    return {**tensors, "param": meta.get("param", "rf")}
