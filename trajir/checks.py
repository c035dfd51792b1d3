"""Input checks shared by the library: each raises ``ValueError`` naming the argument and what was expected."""
import math

import torch


HALF_DTYPES = (torch.float16, torch.bfloat16)
SEED_MAX = 2**64 - 1  # torch generators take seeds up to 2^64 - 1


def require_finite(name, x):
    """Refuse NaN or inf in a tensor (a silent NaN would poison a whole trajectory)."""
    if torch.is_tensor(x):
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            nan = int(torch.isnan(x).sum())
            inf = int(torch.isinf(x).sum())
            hint = ""
            if inf and x.dtype in HALF_DTYPES:  # an overflow on the way into half precision, most likely
                hint = f"; {_dtype_name(x.dtype)} holds values up to {torch.finfo(x.dtype).max:.6g}: compute in float32"
            raise ValueError(f"{name} contains {nan + inf} NaN or inf value(s) ({nan} NaN, {inf} inf); expected "
                             f"finite numbers{hint}")
    elif isinstance(x, float) and not (x == x and abs(x) != float("inf")):
        raise ValueError(f"{name} is {x}; expected a finite number")
    return x


def require_float(name, x):
    """A floating-point tensor: integer inputs would come back truncated from the arithmetic of a step."""
    require_tensor(name, x)
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    return x


def as_result(out, dtype, what="the result"):
    """``out`` (computed in float32 or float64) cast back to ``dtype``; refuses a result that overflows ``dtype``
    (a half-precision input whose result does not fit) or that is not finite although the inputs were."""
    result = out.to(dtype)
    if not bool(torch.isfinite(result).all()):
        if bool(torch.isfinite(out).all()):
            raise ValueError(f"{what} overflows {_dtype_name(dtype)}: its values reach {float(out.abs().max()):.4g} "
                             f"but {_dtype_name(dtype)} holds values up to {torch.finfo(dtype).max:.6g}; pass float32 "
                             "tensors")
        raise ValueError(f"{what} is not finite although every input is; a coefficient overflowed (the inputs are "
                         "too large for this step)")
    return result


def require_seed(name, seed):
    """An integer seed in [0, 2^64 - 1], what a torch generator accepts."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= SEED_MAX:
        raise ValueError(f"{name} must be an integer in [0, 2^64 - 1], got {seed!r}")
    return seed


def require_unit_interval(name, x):
    """A finite float tensor with values in 0..1 (images)."""
    require_finite(name, x)
    lo, hi = (float(v) for v in torch.aminmax(x)) if x.numel() else (0.0, 0.0)
    if lo < 0 or hi > 1:
        raise ValueError(f"{name} must hold values in 0..1, got {lo:.3g}..{hi:.3g}")
    return x


def _dtype_name(dtype):
    return str(dtype).removeprefix("torch.")


def require_tensor(name, x):
    if not torch.is_tensor(x):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def require_same_shape(name_a, a, name_b, b):
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"{name_a} has shape {tuple(a.shape)} but {name_b} has shape {tuple(b.shape)}; "
                         "expected equal shapes")


def require_image_batch(name, x, channels=3):
    """An image batch ``[B, C, H, W]`` of floats with ``channels`` channels (None: any)."""
    require_tensor(name, x)
    if x.ndim != 4:
        raise ValueError(f"{name} must have 4 dimensions [B, C, H, W], got shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name} must have {channels} channels in dim 1 ([B, C, H, W]), got {x.shape[1]} "
                         f"(shape {tuple(x.shape)})")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    return x


def parse_weights(text, what="weights"):
    """``"a=1, b=0.5"`` (pairs split by commas, semicolons or new lines) -> ``{"a": 1.0, "b": 0.5}``: the one
    syntax for weighted mixes (reward metrics, training tasks). Weights must be finite and >= 0."""
    pairs = [p.strip() for p in str(text).replace(";", ",").replace("\n", ",").split(",") if p.strip()]
    if not pairs:
        raise ValueError(f"{what} is empty; give name=weight pairs, e.g. 'a=1, b=0.5'")
    weights = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        name = name.strip().lower()
        if not sep or not name:
            raise ValueError(f"{what} entry {pair!r} is not name=weight (e.g. 'niqe=0.5')")
        try:
            weight = float(value)
        except ValueError:
            raise ValueError(f"{what} entry {pair!r}: {value.strip()!r} is not a number") from None
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"{what} entry {pair!r}: the weight must be finite and >= 0")
        if name in weights:
            raise ValueError(f"{what} names {name!r} twice")
        weights[name] = weight
    return weights


def compute_dtype(*tensors):
    """float32 for half-precision inputs, otherwise the widest input dtype (float64 stays float64)."""
    dtypes = [t.dtype for t in tensors if torch.is_tensor(t) and t.is_floating_point()]
    if any(d == torch.float64 for d in dtypes):
        return torch.float64
    return torch.float32


def per_sample(value, x, dtype):
    """A float or tensor as a tensor broadcastable against ``x``: 1-D of length B becomes [B, 1, ..., 1]."""
    if not torch.is_tensor(value):
        return value
    value = value.to(device=x.device, dtype=dtype)
    if value.ndim == 1 and x.ndim > 1 and value.shape[0] == x.shape[0]:
        value = value.reshape(-1, *([1] * (x.ndim - 1)))
    return value


def require_scalar_or_tensor(name, value, x, low=None, high=None):
    """Finite, inside [low, high], and broadcastable against ``x``; returns nothing."""
    if torch.is_tensor(value):
        require_finite(name, value.float() if not value.is_floating_point() else value)
        v = per_sample(value, x, torch.float64)
        try:
            shape = torch.broadcast_shapes(tuple(v.shape), tuple(x.shape))
        except RuntimeError:
            shape = None
        if shape != tuple(x.shape):
            raise ValueError(f"{name} has shape {tuple(value.shape)}; expected a number, a tensor of length "
                             f"{x.shape[0]} (one per sample) or a tensor broadcastable to {tuple(x.shape)}")
        lo, hi = float(v.min()), float(v.max())
    else:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise ValueError(f"{name} must be a number or a tensor, got {type(value).__name__}")
        require_finite(name, float(value))
        lo = hi = float(value)
    if low is not None and lo < low:
        raise ValueError(f"{name} must be >= {low}, got {lo}")
    if high is not None and hi > high:
        raise ValueError(f"{name} must be <= {high}, got {hi}")
