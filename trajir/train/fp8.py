"""float8 weight storage for the frozen FLUX base (``flux.base_dtype = "fp8"``).

Each ``nn.Linear`` of the base is replaced by a :class:`Float8Linear` that stores its weight as float8 e4m3fn with
one float32 scale per output row and upcasts it to the compute dtype (bf16) inside ``forward``, one layer at a
time. FLUX-dev's 11.9 B parameters then take 12 GB instead of 24 GB; the arithmetic stays bf16.

Per-row scaling maps the largest magnitude of every row onto e4m3fn's largest finite value (448), so the 3-bit
mantissa is spent on the row's own range (ComfyUI's "scaled fp8" files use one scale per tensor). The rounding
error of one weight is then at most 2^-4 of its magnitude (half a unit in the last place of a 3-bit mantissa);
sums of many weights average these errors out, see ``tests/test_train_flux.py`` for the measured tolerance.
"""
import torch
import torch.nn.functional as F
from torch import Tensor, nn

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max  # 448
COMPUTE_DTYPE = torch.bfloat16


def dequantize(weight: Tensor, scale: Tensor, dtype: torch.dtype) -> Tensor:
    """``weight * scale`` in ``dtype`` (fp8 -> bf16 is exact; the scale adds one rounding)."""
    return weight.to(dtype) * scale.to(dtype)


class _Float8LinearFn(torch.autograd.Function):
    """``x W^T + b`` with ``W`` dequantised in the forward pass and again in the backward pass.

    A plain ``F.linear`` on the dequantised weight would make autograd keep that bf16 copy until the backward
    pass, for every layer, which brings the whole bf16 model back into memory; here autograd keeps the fp8
    weight. Only ``x`` gets a gradient (the base is frozen).
    """

    @staticmethod
    def forward(ctx, x, weight, scale, bias):
        ctx.save_for_backward(weight, scale)
        return F.linear(x, dequantize(weight, scale, x.dtype), bias)

    @staticmethod
    def backward(ctx, grad):
        weight, scale = ctx.saved_tensors
        return grad @ dequantize(weight, scale, grad.dtype), None, None, None


class Float8Linear(nn.Module):
    """A frozen linear layer: float8 e4m3fn weight ``[out, in]``, float32 row scales ``[out, 1]``, bias in the
    compute dtype. ``forward(x)`` computes ``x W^T + b`` in ``x``'s dtype with ``W = weight * scale``."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight.detach().float()
        # an all-zero row (e.g. a zero-initialised head) keeps scale 1 and stores zeros
        amax = w.abs().amax(dim=1, keepdim=True)
        scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
        self.register_buffer("weight", (w / scale).to(FP8))
        self.register_buffer("weight_scale", scale)
        bias = None if linear.bias is None else linear.bias.detach().to(COMPUTE_DTYPE)
        self.register_buffer("bias", bias)

    def dequantized(self, dtype: torch.dtype) -> Tensor:
        """The weight ``[out, in]`` in ``dtype``."""
        return dequantize(self.weight, self.weight_scale, dtype)

    def forward(self, x: Tensor) -> Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return _Float8LinearFn.apply(x, self.weight, self.weight_scale, bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, storage=float8_e4m3fn"


def quantize_fp8_(model: nn.Module, keep=("img_in",)) -> nn.Module:
    """Cast ``model`` to bf16 and swap every ``nn.Linear`` except the top-level children named in ``keep`` for
    a :class:`Float8Linear`, in place; returns ``model`` frozen (no parameter requires grad).

    ``img_in`` stays bf16 because ``Flux.forward`` takes its compute dtype from ``img_in.weight`` (0.2 M
    parameters). Layers are converted one at a time, so the extra memory is one layer's weight.
    """
    model.to(COMPUTE_DTYPE)
    names = [name for name, m in model.named_modules()
             if isinstance(m, nn.Linear) and name.split(".")[0] not in keep]
    for name in names:  # by name, so each replaced bf16 layer is freed before the next is converted
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Float8Linear(getattr(parent, child)))
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def storage_bytes(model: nn.Module) -> int:
    """Bytes held by ``model``'s parameters and buffers (the weight memory a storage dtype is chosen for)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)
