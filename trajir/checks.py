"""Input checks shared by the library: each raises ``ValueError`` naming the argument and what was expected."""
import torch


def require_finite(name, x):
    """Refuse NaN or inf in a tensor (a silent NaN would poison a whole trajectory)."""
    if torch.is_tensor(x):
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            bad = int((~torch.isfinite(x)).sum())
            raise ValueError(f"{name} contains {bad} NaN or inf value(s); expected finite numbers")
    elif isinstance(x, float) and not (x == x and abs(x) != float("inf")):
        raise ValueError(f"{name} is {x}; expected a finite number")
    return x


def require_tensor(name, x):
    if not torch.is_tensor(x):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def require_same_shape(name_a, a, name_b, b):
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(f"{name_a} has shape {tuple(a.shape)} but {name_b} has shape {tuple(b.shape)}; "
                         "expected equal shapes")


def require_broadcastable(name, value, name_ref, ref):
    """``value`` (tensor or number) must broadcast against tensor ``ref`` without changing its shape."""
    if not torch.is_tensor(value):
        return
    try:
        shape = torch.broadcast_shapes(tuple(value.shape), tuple(ref.shape))
    except RuntimeError:
        shape = None
    if shape != tuple(ref.shape):
        raise ValueError(f"{name} has shape {tuple(value.shape)}, which does not broadcast to the shape "
                         f"{tuple(ref.shape)} of {name_ref}")


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


def compute_dtype(*tensors):
    """float32 for half-precision inputs, otherwise the widest input dtype (float64 stays float64)."""
    dtypes = [t.dtype for t in tensors if torch.is_tensor(t) and t.is_floating_point()]
    if any(d == torch.float64 for d in dtypes):
        return torch.float64
    return torch.float32
