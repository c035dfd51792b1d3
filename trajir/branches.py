"""Best-of-N branch records: the best M-SDE branch of a trajectory, saved by the ComfyUI Best-of-N node and read
by ``python -m trajir.train`` as RL targets (Eq. (15): one ODE step from ``x_t`` should land on ``x_next``)."""
from .safefiles import read_tagged, require_keys, write_tagged

KIND = "best_of_n_branch"
KEYS = ("x_t", "x_next", "t", "t_next", "reward")


def save_branch(path, x_t, x_next, t, t_next, reward, param="rf", extra=None, overwrite=False):
    """Write one record: states ``x_t`` / ``x_next`` ``[B, C, h, w]`` in model space, times ``t`` / ``t_next``
    ``[B]`` (sigma for ``param="ve"``), ``reward`` ``[B]`` of the best branch. ``extra`` is JSON metadata."""
    if param not in ("rf", "ve"):
        raise ValueError(f"param must be 'rf' or 've', got {param!r}")
    if x_t.shape != x_next.shape:
        raise ValueError(f"x_next has shape {tuple(x_next.shape)} but x_t has shape {tuple(x_t.shape)}")
    batch = x_t.shape[0]
    for name, value in (("t", t), ("t_next", t_next), ("reward", reward)):
        if value.shape != (batch,):
            raise ValueError(f"{name} must have shape ({batch},), got {tuple(value.shape)}")
    tensors = {"x_t": x_t, "x_next": x_next, "t": t.float(), "t_next": t_next.float(), "reward": reward.float()}
    return write_tagged(path, tensors, KIND, {"param": param, **({"extra": extra} if extra else {})}, overwrite)


def load_branch(path):
    """``dict`` with the tensors of ``save_branch`` and ``param``."""
    tensors, meta = read_tagged(path, KIND)
    require_keys(path, tensors, KEYS)
    return {**tensors, "param": meta.get("param", "rf")}
