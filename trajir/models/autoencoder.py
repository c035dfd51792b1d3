"""The FLUX autoencoder (BFL ``ae.safetensors`` layout: ``encoder.*`` / ``decoder.*``, 16 latent channels).

A KL autoencoder with 8x downsampling (BFL flux ``modules/autoencoder.py``; the LDM encoder/decoder of
Rombach et al. 2022). Two latent spaces are in use, and the names here say which one a function takes:

* **VAE space** ``z``: the encoder's posterior mean. ComfyUI's ``LATENT["samples"]`` holds these.
* **model space** ``x = (z - 0.1159) * 0.3611``: what the DiT sees (ComfyUI ``latent_format.Flux.process_in``;
  BFL ``AutoEncoder.encode`` returns this directly). ``model_to_vae`` is ComfyUI's ``process_out``.

Images are ``[B, 3, H, W]`` in 0..1 and are mapped to [-1, 1] for the network (ComfyUI ``VAE.process_input``).
"""
import dataclasses
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import require_image_batch, require_tensor
from ..tiling import blend_tiles, check_tiling
from .layers import finite, init_weights_, run_block

NORM_GROUPS = 32  # every GroupNorm in the LDM autoencoder has 32 groups


@dataclass(frozen=True)
class AutoEncoderParams:
    """Autoencoder hyper-parameters; ``.flux()`` is the 84 M-parameter FLUX.1 autoencoder."""
    in_channels: int = 3
    out_channels: int = 3
    ch: int = 128
    ch_mult: tuple = field(default=(1, 2, 4, 4))
    num_res_blocks: int = 2
    z_channels: int = 16
    scale_factor: float = 0.3611
    shift_factor: float = 0.1159

    def __post_init__(self):
        object.__setattr__(self, "ch_mult", tuple(int(m) for m in self.ch_mult))
        for name in ("in_channels", "out_channels", "ch", "num_res_blocks", "z_channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"AutoEncoderParams.{name} must be a positive integer, got {value!r}")
        if not self.ch_mult or any(m < 1 or (self.ch * m) % NORM_GROUPS for m in self.ch_mult):
            raise ValueError(f"AutoEncoderParams.ch_mult {list(self.ch_mult)} with ch {self.ch} must give channel "
                             f"counts that are positive multiples of {NORM_GROUPS} (GroupNorm groups)")
        if not (math.isfinite(self.scale_factor) and self.scale_factor > 0 and math.isfinite(self.shift_factor)):
            raise ValueError(f"AutoEncoderParams.scale_factor must be finite and > 0 and shift_factor finite, got "
                             f"{self.scale_factor}, {self.shift_factor}")

    @property
    def downscale(self) -> int:
        """Pixel size of one latent cell (8 for FLUX)."""
        return 2 ** (len(self.ch_mult) - 1)

    @classmethod
    def flux(cls) -> "AutoEncoderParams":
        return cls()

    @classmethod
    def tiny(cls) -> "AutoEncoderParams":
        """Same 8x geometry and latent scaling, width 32 and one res block per level (about 1.0 M parameters)."""
        return cls(ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "ch_mult": list(self.ch_mult)}

    @classmethod
    def from_dict(cls, d: dict) -> "AutoEncoderParams":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown AutoEncoderParams field(s) {unknown}; expected a subset of {sorted(names)}")
        return cls(**d)


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(NORM_GROUPS, ch, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.norm1 = _norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = _norm(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        if in_ch != out_ch:
            self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        skip = self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x
        return skip + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions, channels as features (1x1-conv q, k, v)."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm = _norm(ch)
        self.q = nn.Conv2d(ch, ch, 1)
        self.k = nn.Conv2d(ch, ch, 1)
        self.v = nn.Conv2d(ch, ch, 1)
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)
        # contiguous [b, 1, hw, c]: a strided last dim sends SDPA to its math kernel, which materialises the
        # hw x hw attention matrix (1 GiB at 1024 px) and is several times slower
        q, k, v = (m(n).reshape(b, 1, c, h * w).transpose(2, 3).contiguous() for m in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v).transpose(2, 3).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric pad: exact halving for even sizes


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _mid(ch: int) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(ch, ch)
    mid.attn_1 = AttnBlock(ch)
    mid.block_2 = ResnetBlock(ch, ch)
    return mid


class Encoder(nn.Module):
    """Pixels in [-1, 1] -> ``2 * z_channels`` posterior moments (mean, log-variance) at 1/8 resolution."""

    def __init__(self, p: AutoEncoderParams):
        super().__init__()
        self.gradient_checkpointing = False
        self.conv_in = nn.Conv2d(p.in_channels, p.ch, 3, padding=1)
        self.down = nn.ModuleList()
        block_in = p.ch
        for i, mult in enumerate(p.ch_mult):
            level = nn.Module()
            level.block = nn.ModuleList()
            for _ in range(p.num_res_blocks):
                level.block.append(ResnetBlock(block_in, p.ch * mult))
                block_in = p.ch * mult
            if i != len(p.ch_mult) - 1:
                level.downsample = Downsample(block_in)
            self.down.append(level)
        self.mid = _mid(block_in)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, 2 * p.z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                h = run_block(self, block, h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = run_block(self, self.mid.block_1, h)
        h = run_block(self, self.mid.attn_1, h)
        h = run_block(self, self.mid.block_2, h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """VAE-space latent -> pixels in [-1, 1]. ``up[i]`` is resolution level i, run from the lowest up."""

    def __init__(self, p: AutoEncoderParams):
        super().__init__()
        self.gradient_checkpointing = False
        block_in = p.ch * p.ch_mult[-1]
        self.conv_in = nn.Conv2d(p.z_channels, block_in, 3, padding=1)
        self.mid = _mid(block_in)
        levels = []
        for i in reversed(range(len(p.ch_mult))):
            level = nn.Module()
            level.block = nn.ModuleList()
            for _ in range(p.num_res_blocks + 1):
                level.block.append(ResnetBlock(block_in, p.ch * p.ch_mult[i]))
                block_in = p.ch * p.ch_mult[i]
            if i != 0:
                level.upsample = Upsample(block_in)
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, p.out_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.conv_in(z)
        h = run_block(self, self.mid.block_1, h)
        h = run_block(self, self.mid.attn_1, h)
        h = run_block(self, self.mid.block_2, h)
        for level in reversed(self.up):
            for block in level.block:
                h = run_block(self, block, h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


def posterior(moments: Tensor, generator=None) -> Tensor:
    """Mean of the diagonal Gaussian (ComfyUI's ``DiagonalGaussianRegularizer`` mode), or a draw from it.

    With a ``generator`` the noise is drawn on the CPU and moved, so a seed gives the same latent everywhere.
    """
    mean, logvar = moments.chunk(2, dim=1)
    if generator is None:
        return mean
    std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
    noise = torch.randn(mean.shape, generator=generator, dtype=torch.float32).to(mean.device, mean.dtype)
    return mean + std * noise


def check_pixels(name: str, images: Tensor, channels: int, multiple: int) -> Tensor:
    require_image_batch(name, images, channels=channels)
    finite(name, images)
    if images.shape[2] % multiple or images.shape[3] % multiple:
        raise ValueError(f"{name} height and width must be multiples of {multiple} (the autoencoder's "
                         f"downscale), got {images.shape[2]}x{images.shape[3]}")
    return images


class AutoEncoder(nn.Module):
    """FLUX autoencoder: ``encode``/``decode`` in model space, ``encode_vae``/``decode_vae`` in VAE space."""

    kind = "autoencoder"

    def __init__(self, params: AutoEncoderParams, seed: int = 0):
        super().__init__()
        if not isinstance(params, AutoEncoderParams):
            raise ValueError(f"params must be an AutoEncoderParams, got {type(params).__name__}")
        self.params = params
        self.encoder = Encoder(params)
        self.decoder = Decoder(params)
        init_weights_(self, seed)

    @property
    def config(self) -> AutoEncoderParams:
        return self.params

    def vae_to_model(self, z: Tensor) -> Tensor:
        """``(z - shift) * scale``: VAE-space latent -> DiT input (ComfyUI ``process_in``)."""
        return (z - self.params.shift_factor) * self.params.scale_factor

    def model_to_vae(self, x: Tensor) -> Tensor:
        """``x / scale + shift``: DiT latent -> VAE space (ComfyUI ``process_out``)."""
        return x / self.params.scale_factor + self.params.shift_factor

    def encode_vae(self, images: Tensor, generator=None) -> Tensor:
        """Images ``[B, 3, H, W]`` in 0..1 -> VAE-space latent ``[B, 16, H/8, W/8]`` (posterior mean)."""
        check_pixels("images", images, self.params.in_channels, self.params.downscale)
        dtype = self.encoder.conv_in.weight.dtype
        return posterior(self.encoder(images.to(dtype) * 2.0 - 1.0), generator).to(images.dtype)

    def decode_vae(self, z: Tensor, clamp: bool = True) -> Tensor:
        """VAE-space latent -> images in 0..1 (clamped as ComfyUI's ``process_output`` unless ``clamp=False``,
        which keeps gradients for pixel-space losses)."""
        require_image_batch("z", z, channels=self.params.z_channels)
        dtype = self.decoder.conv_in.weight.dtype
        images = (self.decoder(z.to(dtype)).to(z.dtype) + 1.0) / 2.0
        return images.clamp(0.0, 1.0) if clamp else images

    def encode(self, images: Tensor, generator=None) -> Tensor:
        """Images in 0..1 -> model-space latent (what ``Flux.velocity`` takes)."""
        return self.vae_to_model(self.encode_vae(images, generator))

    def decode(self, latent: Tensor, clamp: bool = True) -> Tensor:
        """Model-space latent -> images in 0..1."""
        require_tensor("latent", latent)
        return self.decode_vae(self.model_to_vae(latent), clamp=clamp)

    def encode_tiled(self, images: Tensor, tile: int = 512, overlap: int = 64) -> Tensor:
        """``encode`` in overlapping ``tile``-pixel tiles, blended with linear ramps over the overlaps.

        Bounds memory for large images. Tolerance: equal to ``encode`` (to float rounding) when one tile covers
        the image, and the blend itself is exact for any tile-local map (``blend_tiles``). Beyond that the
        network's GroupNorm statistics and mid-block attention are computed per tile; the difference this makes
        depends on the weights (small for a trained autoencoder on natural images, as with ComfyUI's tiled VAE
        nodes; large for random weights). ``tile`` and ``overlap`` are in pixels, multiples of the downscale (8).
        """
        d = self.params.downscale
        check_pixels("images", images, self.params.in_channels, d)
        check_tiling(tile, overlap, d, "pixels")
        z = blend_tiles(lambda t: self.encode_vae(t), images, tile, overlap, 1, d, self.params.z_channels)
        return self.vae_to_model(z)

    def decode_tiled(self, latent: Tensor, tile: int = 64, overlap: int = 8, clamp: bool = True) -> Tensor:
        """``decode`` in overlapping ``tile``-cell latent tiles (``tile=64`` is 512 px), blended linearly; same
        tolerance as ``encode_tiled``."""
        require_image_batch("latent", latent, channels=self.params.z_channels)
        check_tiling(tile, overlap, 1, "latent cells")
        z = self.model_to_vae(latent)
        images = blend_tiles(lambda t: self.decode_vae(t, clamp=False), z, tile, overlap, self.params.downscale,
                             1, self.params.out_channels)
        return images.clamp(0.0, 1.0) if clamp else images
