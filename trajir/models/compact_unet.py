"""A compact conditional U-Net for task-specific restorers (docs/equations.md §11; the SR3-style network of the paper).

The LQ image is concatenated to the noisy state ``[y, x_t]`` (6 channels in, 3 out). The noise level enters
through a sinusoidal embedding and an MLP, added inside every residual block. Two parameterisations:

* ``param="rf"``: rectified flow, ``t`` is the flow time in [0, 1] and the output is the velocity ``v = eps - x0``;
* ``param="vp"``: variance preserving, ``t`` is the continuous noise level ``sqrt(alpha_bar)`` in (0, 1]
  (SR3's conditioning) and the output is ``eps``.

Either way the scalar is embedded as ``timestep_embedding(1000 * t)``, the FLUX convention, so both share one
embedding resolution.
"""
import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import require_image_batch, require_same_shape
from .layers import batch_vector, finite, init_weights_, run_block, timestep_embedding

PARAMETERISATIONS = ("rf", "vp")


@dataclass(frozen=True)
class CompactUNetConfig:
    """U-Net width / depth / attention. Level i works at 1/2^i of the input size; ``attn_levels`` lists the
    levels with self-attention (SR3's "attention resolution 16" at 128 px crops is level 3)."""
    image_channels: int = 3
    base_channels: int = 64
    channel_mult: tuple = field(default=(1, 1, 2, 2, 4))
    num_res_blocks: int = 2
    attn_levels: tuple = field(default=(3,))
    norm_groups: int = 32
    param: str = "rf"

    def __post_init__(self):
        object.__setattr__(self, "channel_mult", tuple(int(m) for m in self.channel_mult))
        object.__setattr__(self, "attn_levels", tuple(sorted(int(a) for a in self.attn_levels)))
        for name in ("image_channels", "base_channels", "num_res_blocks", "norm_groups"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"CompactUNetConfig.{name} must be a positive integer, got {value!r}")
        if not self.channel_mult or any(m < 1 for m in self.channel_mult):
            raise ValueError(f"CompactUNetConfig.channel_mult must be a non-empty list of positive integers, got "
                             f"{list(self.channel_mult)}")
        bad = [self.base_channels * m for m in self.channel_mult if (self.base_channels * m) % self.norm_groups]
        if bad:
            raise ValueError(f"CompactUNetConfig: channel counts {bad} are not divisible by norm_groups "
                             f"{self.norm_groups}")
        if any(not 0 <= a < len(self.channel_mult) for a in self.attn_levels):
            raise ValueError(f"CompactUNetConfig.attn_levels {list(self.attn_levels)} must be level indices in "
                             f"[0, {len(self.channel_mult) - 1}]")
        if self.param not in PARAMETERISATIONS:
            raise ValueError(f"CompactUNetConfig.param must be one of {PARAMETERISATIONS}, got {self.param!r}")

    @property
    def multiple(self) -> int:
        """Inputs are padded to a multiple of this (the total downsampling)."""
        return 2 ** (len(self.channel_mult) - 1)

    @classmethod
    def tiny(cls, param: str = "rf") -> "CompactUNetConfig":
        """Tests: two levels, width 16 (about 0.18 M parameters)."""
        return cls(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attn_levels=(1,), norm_groups=8,
                   param=param)

    @classmethod
    def small(cls, param: str = "rf") -> "CompactUNetConfig":
        """About 2.2 M parameters: fast on a CPU at 64-128 px."""
        return cls(base_channels=32, channel_mult=(1, 2, 2, 2), num_res_blocks=2, attn_levels=(3,), param=param)

    @classmethod
    def medium(cls, param: str = "rf") -> "CompactUNetConfig":
        """About 17.9 M parameters: the paper's LOL-v1 U-Net (docs/equations.md §11: width 64, multipliers
        [1, 1, 2, 2, 4], 2 res blocks, attention at 16 px for 128 px crops)."""
        return cls(base_channels=64, channel_mult=(1, 1, 2, 2, 4), num_res_blocks=2, attn_levels=(3,),
                   param=param)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "channel_mult": list(self.channel_mult),
                "attn_levels": list(self.attn_levels)}

    @classmethod
    def from_dict(cls, d: dict) -> "CompactUNetConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown CompactUNetConfig field(s) {unknown}; expected a subset of {sorted(names)}")
        return cls(**d)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the noise-level embedding added in between (DDPM / SR3 residual block)."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x))) + self.emb(emb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class SelfAttention2d(nn.Module):
    """Single-head self-attention over positions (SR3 uses one head)."""

    def __init__(self, ch: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, 3, 1, c, h * w).transpose(-1, -2).contiguous()
        # contiguous [b, 1, hw, c]: strided inputs send SDPA to its slow math kernel (4x slower on a CPU)
        out = F.scaled_dot_product_attention(*qkv.unbind(1)).transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj(out)


class UNetBlock(nn.Module):
    """One residual block, optionally followed by attention."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, groups: int, attn: bool):
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, emb_dim, groups)
        self.attn = SelfAttention2d(out_ch, groups) if attn else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        return self.attn(self.res(x, emb))


class CompactUNet(nn.Module):
    """``forward(x_t, lq, t)`` -> v (``param="rf"``) or eps (``param="vp"``), same shape as ``x_t``."""

    kind = "compact_unet"

    def __init__(self, cfg: CompactUNetConfig, seed: int = 0):
        super().__init__()
        if not isinstance(cfg, CompactUNetConfig):
            raise ValueError(f"cfg must be a CompactUNetConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.gradient_checkpointing = False
        c, g = cfg.base_channels, cfg.norm_groups
        emb_dim = 4 * c
        self.time_embed = nn.Sequential(nn.Linear(c, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.conv_in = nn.Conv2d(2 * cfg.image_channels, c, 3, padding=1)

        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skips, ch = [c], c
        for i, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                self.down.append(UNetBlock(ch, c * mult, emb_dim, g, i in cfg.attn_levels))
                ch = c * mult
                skips.append(ch)
            if i != len(cfg.channel_mult) - 1:
                self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
        self.mid = nn.ModuleList([UNetBlock(ch, ch, emb_dim, g, True), UNetBlock(ch, ch, emb_dim, g, False)])

        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i in reversed(range(len(cfg.channel_mult))):
            for _ in range(cfg.num_res_blocks + 1):
                self.up.append(UNetBlock(ch + skips.pop(), c * cfg.channel_mult[i], emb_dim, g, i in cfg.attn_levels))
                ch = c * cfg.channel_mult[i]
            if i != 0:
                self.upsample.append(nn.Conv2d(ch, ch, 3, padding=1))
        self.norm_out = nn.GroupNorm(g, ch)
        self.conv_out = nn.Conv2d(ch, cfg.image_channels, 3, padding=1)
        init_weights_(self, seed)

    @property
    def config(self) -> CompactUNetConfig:
        return self.cfg

    def forward(self, x_t: Tensor, lq: Tensor, t) -> Tensor:
        """``x_t``, ``lq``: ``[B, C, H, W]`` (any H, W: padded by replication to a multiple of
        ``cfg.multiple`` and cropped back); ``t``: ``[B]`` or a number (RF time, or sqrt(alpha_bar) for VP)."""
        cfg = self.cfg
        require_image_batch("x_t", x_t, channels=cfg.image_channels)
        require_image_batch("lq", lq, channels=cfg.image_channels)
        require_same_shape("x_t", x_t, "lq", lq)
        finite("lq", lq)
        b, _, h, w = x_t.shape
        t = batch_vector("t", t, b, x_t.device)
        if not t.is_meta and bool(((t < 0) | (t > 1)).any()):
            raise ValueError(f"t must lie in [0, 1] ({'flow time' if cfg.param == 'rf' else 'sqrt(alpha_bar)'}), "
                             f"got values from {float(t.min())} to {float(t.max())}")
        dtype = self.conv_in.weight.dtype
        pad_h, pad_w = (-h) % cfg.multiple, (-w) % cfg.multiple
        x = torch.cat([lq, x_t], dim=1).to(dtype)
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        emb = self.time_embed(timestep_embedding(t, cfg.base_channels).to(dtype))

        h_ = self.conv_in(x)
        skips = [h_]
        stages = iter(self.down)
        for i in range(len(cfg.channel_mult)):
            for _ in range(cfg.num_res_blocks):
                h_ = run_block(self, next(stages), h_, emb)
                skips.append(h_)
            if i != len(cfg.channel_mult) - 1:
                h_ = self.downsample[i](h_)
                skips.append(h_)
        for stage in self.mid:
            h_ = run_block(self, stage, h_, emb)
        stages, ups = iter(self.up), iter(self.upsample)
        for i in reversed(range(len(cfg.channel_mult))):
            for _ in range(cfg.num_res_blocks + 1):
                h_ = run_block(self, next(stages), torch.cat([h_, skips.pop()], dim=1), emb)
            if i != 0:
                h_ = next(ups)(F.interpolate(h_, scale_factor=2.0, mode="nearest"))
        out = self.conv_out(F.silu(self.norm_out(h_)))
        return out[:, :, :h, :w].to(x_t.dtype)
