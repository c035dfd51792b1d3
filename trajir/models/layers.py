"""Blocks shared by the FLUX DiT and the XLabs ControlNet.

Parameter names follow BFL flux ``modules/layers.py`` exactly (``img_mod.lin``, ``img_attn.norm.query_norm.scale``,
``linear1`` ...) because the state dicts must load into ComfyUI's and BFL's modules unchanged. Every block is
written out-of-place so that autograd and gradient checkpointing work through it.
"""
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from einops import rearrange
from torch import Tensor, nn

from ..checks import require_finite


def finite(name: str, x):
    """``checks.require_finite``, except that meta tensors (shape-only runs of the full-size models) pass."""
    if torch.is_tensor(x) and x.is_meta:
        return x
    return require_finite(name, x)


def batch_vector(name: str, value, batch: int, device) -> Tensor:
    """A float, a 0-d tensor or a ``[B]`` tensor as a float32 ``[B]`` tensor."""
    t = torch.as_tensor(value, dtype=torch.float32, device=device)
    if t.ndim == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"{name} must be a number or a [B] tensor with B={batch}, got shape {tuple(t.shape)}")
    return finite(name, t)


def timestep_embedding(t: Tensor, dim: int = 256, max_period: float = 10000.0,
                       time_factor: float = 1000.0) -> Tensor:
    """Sinusoidal embedding ``[cos(f_k s), sin(f_k s)]`` of ``s = time_factor * t`` with ``f_k = max_period^(-k/half)``.

    BFL flux / ComfyUI order (cosines first). The rectified-flow time t in [0, 1] is multiplied by 1000 so it
    spans the same frequencies as DDPM's integer timesteps. Returns float32 ``[B, dim]``.
    """
    s = time_factor * t.float()
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = s[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def rope(pos: Tensor, dim: int, theta: float) -> Tensor:
    """Rotary frequencies for one position axis: ``[B, N, dim/2, 2, 2]`` rotation matrices (float32).

    Angle ``pos * theta^(-2k/dim)``; computed in float64 because positions reach the hundreds at 2048 px and
    float32 angles would lose ~1e-5 rad there (BFL and ComfyUI also use float64 here).
    """
    omega = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64, device=pos.device) / dim)
    angles = pos.to(torch.float64)[..., None] * omega
    cos, sin = torch.cos(angles), torch.sin(angles)
    rot = torch.stack([cos, -sin, sin, cos], dim=-1)
    return rot.reshape(*angles.shape, 2, 2).to(torch.float32)


class EmbedND(nn.Module):
    """RoPE over the (t, h, w) position ids: each axis gets ``axes_dim[i]`` of the head dimension."""

    def __init__(self, theta: float, axes_dim):
        super().__init__()
        self.theta = theta
        self.axes_dim = list(axes_dim)

    def forward(self, ids: Tensor) -> Tensor:
        """``ids [B, N, 3]`` -> ``pe [B, 1, N, head_dim/2, 2, 2]`` (broadcast over heads)."""
        pe = torch.cat([rope(ids[..., i], d, self.theta) for i, d in enumerate(self.axes_dim)], dim=-3)
        return pe.unsqueeze(1)


def apply_rope(x: Tensor, pe: Tensor) -> Tensor:
    """Rotate consecutive pairs ``(x_2k, x_2k+1)`` of ``x [B, H, L, D]`` by ``pe``; done in float32."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 1, 2)
    out = pe[..., 0] * pairs[..., 0] + pe[..., 1] * pairs[..., 1]
    return out.reshape(x.shape).type_as(x)


def attention(q: Tensor, k: Tensor, v: Tensor, pe: Tensor) -> Tensor:
    """Joint attention with RoPE: ``[B, H, L, D]`` each -> ``[B, L, H*D]``."""
    q, k = apply_rope(q, pe), apply_rope(k, pe)
    out = F.scaled_dot_product_attention(q, k, v)
    return rearrange(out, "b h l d -> b l (h d)")


class MLPEmbedder(nn.Module):
    """Two-layer SiLU MLP used for the time, guidance and pooled-text (``y``) embeddings."""

    def __init__(self, in_dim: int, hidden_dim: int):
        super().__init__()
        self.in_layer = nn.Linear(in_dim, hidden_dim, bias=True)
        self.silu = nn.SiLU()
        self.out_layer = nn.Linear(hidden_dim, hidden_dim, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_layer(self.silu(self.in_layer(x)))


class RMSNorm(nn.Module):
    """RMS normalisation over the last axis with a learned ``scale`` (eps 1e-6), statistics in float32."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        normed = F.rms_norm(x.float(), (x.shape[-1],), eps=1e-6).to(x.dtype)
        return normed * self.scale.to(x.dtype)


class QKNorm(nn.Module):
    """Separate RMSNorms for queries and keys (keeps attention logits bounded at 12 B scale)."""

    def __init__(self, dim: int):
        super().__init__()
        self.query_norm = RMSNorm(dim)
        self.key_norm = RMSNorm(dim)

    def forward(self, q: Tensor, k: Tensor, v: Tensor):
        return self.query_norm(q).to(v.dtype), self.key_norm(k).to(v.dtype)


class SelfAttention(nn.Module):
    """Holds one stream's ``qkv``, ``norm`` and ``proj``; the joint attention itself runs in the block."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.norm = QKNorm(dim // num_heads)
        self.proj = nn.Linear(dim, dim)

    def heads(self, x: Tensor):
        """``x [B, L, dim]`` -> normalised ``q, k`` and ``v``, each ``[B, H, L, D]``."""
        q, k, v = rearrange(self.qkv(x), "b l (k h d) -> k b h l d", k=3, h=self.num_heads)
        q, k = self.norm(q, k, v)
        return q, k, v


class ModulationOut(NamedTuple):
    shift: Tensor
    scale: Tensor
    gate: Tensor


class Modulation(nn.Module):
    """adaLN modulation from the conditioning vector: ``(shift, scale, gate)`` once or twice (double blocks)."""

    def __init__(self, dim: int, double: bool):
        super().__init__()
        self.multiplier = 6 if double else 3
        self.lin = nn.Linear(dim, self.multiplier * dim, bias=True)

    def forward(self, vec: Tensor):
        out = self.lin(F.silu(vec))[:, None, :].chunk(self.multiplier, dim=-1)
        return [ModulationOut(*out[i:i + 3]) for i in range(0, self.multiplier, 3)]


def modulate(x: Tensor, mod: ModulationOut) -> Tensor:
    """``(1 + scale) * x + shift`` (adaLN)."""
    return torch.addcmul(mod.shift, x, 1 + mod.scale)


def _layer_norm(x: Tensor) -> Tensor:
    # affine-free LayerNorm, eps 1e-6, as every FLUX norm before modulation
    return F.layer_norm(x, (x.shape[-1],), eps=1e-6)


def _mlp(hidden: int, mlp_hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(hidden, mlp_hidden, bias=True), nn.GELU(approximate="tanh"),
                         nn.Linear(mlp_hidden, hidden, bias=True))


class DoubleStreamBlock(nn.Module):
    """MM-DiT block: separate weights for image and text tokens, one joint attention over ``[txt, img]``."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, qkv_bias: bool):
        super().__init__()
        mlp_hidden = int(hidden_size * mlp_ratio)
        self.img_mod = Modulation(hidden_size, double=True)
        self.img_attn = SelfAttention(hidden_size, num_heads, qkv_bias)
        self.img_mlp = _mlp(hidden_size, mlp_hidden)
        self.txt_mod = Modulation(hidden_size, double=True)
        self.txt_attn = SelfAttention(hidden_size, num_heads, qkv_bias)
        self.txt_mlp = _mlp(hidden_size, mlp_hidden)

    def forward(self, img: Tensor, txt: Tensor, vec: Tensor, pe: Tensor):
        img_mod1, img_mod2 = self.img_mod(vec)
        txt_mod1, txt_mod2 = self.txt_mod(vec)
        img_q, img_k, img_v = self.img_attn.heads(modulate(_layer_norm(img), img_mod1))
        txt_q, txt_k, txt_v = self.txt_attn.heads(modulate(_layer_norm(txt), txt_mod1))
        attn = attention(torch.cat((txt_q, img_q), dim=2), torch.cat((txt_k, img_k), dim=2),
                         torch.cat((txt_v, img_v), dim=2), pe)
        txt_attn, img_attn = attn[:, :txt.shape[1]], attn[:, txt.shape[1]:]

        img = img + img_mod1.gate * self.img_attn.proj(img_attn)
        img = img + img_mod2.gate * self.img_mlp(modulate(_layer_norm(img), img_mod2))
        txt = txt + txt_mod1.gate * self.txt_attn.proj(txt_attn)
        txt = txt + txt_mod2.gate * self.txt_mlp(modulate(_layer_norm(txt), txt_mod2))
        return img, txt


class SingleStreamBlock(nn.Module):
    """Parallel attention + MLP block over the joint sequence (Dehghani et al. 2023, ViT-22B), one modulation."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.mlp_hidden = int(hidden_size * mlp_ratio)
        self.linear1 = nn.Linear(hidden_size, hidden_size * 3 + self.mlp_hidden)
        self.linear2 = nn.Linear(hidden_size + self.mlp_hidden, hidden_size)
        self.norm = QKNorm(hidden_size // num_heads)
        self.mlp_act = nn.GELU(approximate="tanh")
        self.modulation = Modulation(hidden_size, double=False)

    def forward(self, x: Tensor, vec: Tensor, pe: Tensor) -> Tensor:
        (mod,) = self.modulation(vec)
        qkv, mlp = torch.split(self.linear1(modulate(_layer_norm(x), mod)),
                               [3 * self.hidden_size, self.mlp_hidden], dim=-1)
        q, k, v = rearrange(qkv, "b l (k h d) -> k b h l d", k=3, h=self.num_heads)
        q, k = self.norm(q, k, v)
        out = self.linear2(torch.cat((attention(q, k, v, pe), self.mlp_act(mlp)), dim=2))
        return x + mod.gate * out


class LastLayer(nn.Module):
    """Final adaLN (shift, scale only) and the linear projection to packed patch channels."""

    def __init__(self, hidden_size: int, out_channels: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True))

    def forward(self, x: Tensor, vec: Tensor) -> Tensor:
        shift, scale = self.adaLN_modulation(vec)[:, None, :].chunk(2, dim=-1)
        return self.linear(torch.addcmul(shift, _layer_norm(x), 1 + scale))


@torch.no_grad()
def init_weights_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Deterministic initialisation of every Linear / Conv2d / norm in ``module`` from ``seed``.

    Weights and biases ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PyTorch's default bounds), norm scales 1 and
    norm biases 0. Values are drawn on the CPU in float32 and then copied, so the result is identical on every
    device and dtype. Modules on the meta device are left alone (nothing to fill).
    """
    gen = torch.Generator().manual_seed(int(seed))

    def fill_uniform(p: Tensor, bound: float):
        p.copy_(torch.rand(p.shape, generator=gen).mul_(2 * bound).sub_(bound))

    for m in module.modules():
        params = list(m.parameters(recurse=False))
        if not params or any(p.is_meta for p in params):
            continue
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            bound = 1.0 / math.sqrt(max(1, m.weight[0].numel()))
            fill_uniform(m.weight, bound)
            if m.bias is not None:
                fill_uniform(m.bias, bound)
        elif isinstance(m, RMSNorm):
            m.scale.fill_(1.0)
        elif isinstance(m, (nn.GroupNorm, nn.LayerNorm)):
            if m.weight is not None:
                m.weight.fill_(1.0)
            if m.bias is not None:
                m.bias.zero_()
    return module


def zero_(module: nn.Module) -> nn.Module:
    """Set all parameters of ``module`` to zero (ControlNet's zero-initialised outputs)."""
    with torch.no_grad():
        for p in module.parameters():
            if not p.is_meta:
                p.zero_()
    return module


def freeze(model: nn.Module) -> nn.Module:
    """Frozen inference mode: ``eval()``, ``requires_grad=False`` everywhere, existing ``.grad`` dropped.

    A frozen model keeps no grads, so an optimizer built afterwards over trainable parameters only holds no
    state for it.
    """
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
        p.grad = None
    return model


def enable_gradient_checkpointing(model: nn.Module, enabled: bool = True) -> nn.Module:
    """Recompute each transformer / residual block in the backward pass instead of storing its activations."""
    holders = [m for m in model.modules() if hasattr(m, "gradient_checkpointing")]
    if not holders:
        raise ValueError(f"model must be a trajir model with block-level checkpointing, got {type(model).__name__}")
    for m in holders:
        m.gradient_checkpointing = bool(enabled)
    return model


def run_block(model: nn.Module, block: nn.Module, *args):
    """Call ``block(*args)``, through non-reentrant checkpointing when the model asks for it and grads are on."""
    if model.gradient_checkpointing and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)
    return block(*args)
