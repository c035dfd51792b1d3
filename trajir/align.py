"""Best-of-N selection for M-SDE reward alignment (MATH.md §6.2, Eq. (15); §6.4 step 5).

``best_of_n`` scores N candidate restorations of each of B images and returns, per image, the index of the best
candidate: ``n* = argmax_n r_n``. All N x B images go through the reward in one batched call (per metric), or in
chunks of ``chunk_size`` images to bound memory. Ties go to the unperturbed ODE candidate (``ode_index``, MATH.md
§6.2 [PROPOSAL]: a batch where no exploration beats the ODE then gives no update), else to the lowest index; a NaN
score never wins unless every candidate of that image is NaN.
"""
import torch

from .checks import require_image_batch, require_tensor


def best_of_n(candidates, reward, reference=None, ode_index=0, chunk_size=None):
    """``(best_idx [B] int64, scores [N, B] float32)`` for ``candidates [N, B, C, H, W]`` (images in 0..1).

    ``reward``: a :class:`trajir.rewards.Reward` or any callable ``(images [M, C, H, W], reference or None)
    -> [M]``, higher is better. ``reference`` ``[B, C, H, W]`` is shared by the N candidates of each image.
    ``ode_index``: the candidate that wins ties (None: the lowest index). ``chunk_size``: images per reward call
    (None: all N x B at once).
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
