"""Best-of-N branch records: the best M-SDE branch of a trajectory, saved by the ComfyUI Best-of-N node and read
by ``python -m trajir.train`` (``rl.records``) as RL targets: Eq. (15), one ODE step from ``x_t`` should land on
``x_next``.

A record holds, per image: the states ``x_t`` / ``x_next`` in model space, the times, the reward and the eta of
the winning candidate (0: the ODE itself won). For a FLUX-IR ControlNet it also holds what the step was
conditioned on: the ControlNet hint (the LQ image), the T5 tokens, the pooled CLIP-L vector and the guidance.
"""
import torch

from .safefiles import read_tagged, require_keys, write_tagged

KIND = "best_of_n_branch"
KEYS = ("x_t", "x_next", "t", "t_next", "reward")
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
    return write_tagged(path, tensors, KIND, {"param": param, **({"extra": extra} if extra else {})}, overwrite)


def load_branch(path):
    """``dict`` with the tensors of ``save_branch`` (``hint`` back in float32) and ``param``."""
    tensors, meta = read_tagged(path, KIND)
    require_keys(path, tensors, KEYS)
    if "hint" in tensors:
        tensors["hint"] = tensors["hint"].float()
    return {**tensors, "param": meta.get("param", "rf")}
