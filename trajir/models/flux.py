"""The FLUX.1 rectified-flow DiT (dev / schnell) in BFL's checkpoint layout.

Follows BFL flux ``src/flux/model.py``: 19 double-stream (MM-DiT) blocks, 38 single-stream blocks, RoPE over
(t, h, w) position ids, a timestep embedding and, for dev, a distilled-guidance embedding. Latents enter as
packed 2x2 patches ``[B, h/2 * w/2, 4C]``; the network predicts the velocity ``v = eps - x0``
(docs/equations.md §1). ControlNet residuals are added to the image tokens after the double blocks (see
``repeat_residuals``) and, for InstantX / diffusers ControlNets, after the single blocks too (``instantx.py``).
"""
import dataclasses
from dataclasses import dataclass, field

import torch
from einops import rearrange, repeat
from torch import Tensor, nn

from ..checks import require_tensor
from .layers import (DoubleStreamBlock, EmbedND, LastLayer, MLPEmbedder, SingleStreamBlock, batch_vector,
                     init_weights_, run_block, timestep_embedding)

PATCH = 2  # FLUX packs 2x2 latent patches into one token
KEY_FLUX = "double_blocks.0.img_attn.norm.key_norm.scale"  # ComfyUI's marker key for the FLUX family


@dataclass(frozen=True)
class FluxParams:
    """Hyper-parameters of the FLUX DiT (BFL ``FluxParams``; ``in_channels`` counts latent channels, not 4x).

    ``axes_dim`` splits the head dimension between the RoPE axes (t, h, w); it must sum to
    ``hidden_size / num_heads`` and each part must be even.
    """
    in_channels: int = 16
    out_channels: int = 16
    vec_in_dim: int = 768
    context_in_dim: int = 4096
    hidden_size: int = 3072
    mlp_ratio: float = 4.0
    num_heads: int = 24
    depth: int = 19
    depth_single_blocks: int = 38
    axes_dim: tuple = field(default=(16, 56, 56))
    theta: int = 10000
    qkv_bias: bool = True
    guidance_embed: bool = True

    def __post_init__(self):
        object.__setattr__(self, "axes_dim", tuple(int(a) for a in self.axes_dim))
        for name in ("in_channels", "out_channels", "vec_in_dim", "context_in_dim", "hidden_size", "num_heads",
                     "depth", "theta"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"FluxParams.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.depth_single_blocks, int) or self.depth_single_blocks < 0:
            raise ValueError(f"FluxParams.depth_single_blocks must be an integer >= 0, got "
                             f"{self.depth_single_blocks!r}")
        if not self.mlp_ratio > 0:
            raise ValueError(f"FluxParams.mlp_ratio must be > 0, got {self.mlp_ratio}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"FluxParams.hidden_size {self.hidden_size} must be divisible by num_heads "
                             f"{self.num_heads}")
        head_dim = self.hidden_size // self.num_heads
        if len(self.axes_dim) != 3 or sum(self.axes_dim) != head_dim or any(a < 2 or a % 2 for a in self.axes_dim):
            raise ValueError(f"FluxParams.axes_dim {list(self.axes_dim)} must be 3 positive even numbers summing to "
                             f"the head dimension {head_dim} (hidden_size {self.hidden_size} / num_heads "
                             f"{self.num_heads})")

    @classmethod
    def dev(cls) -> "FluxParams":
        """FLUX.1-dev: guidance-distilled, about 11.9 B parameters."""
        return cls()

    @classmethod
    def schnell(cls) -> "FluxParams":
        """FLUX.1-schnell: same trunk, no guidance embedding."""
        return cls(guidance_embed=False)

    @classmethod
    def tiny(cls) -> "FluxParams":
        """A 2+2-block, width-64 FLUX for tests (about 0.5 M parameters)."""
        return cls(vec_in_dim=32, context_in_dim=64, hidden_size=64, num_heads=2, depth=2, depth_single_blocks=2,
                   axes_dim=(4, 14, 14))

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "axes_dim": list(self.axes_dim)}

    @classmethod
    def from_dict(cls, d: dict) -> "FluxParams":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown FluxParams field(s) {unknown}; expected a subset of {sorted(names)}")
        return cls(**d)


def default_axes_dim(head_dim: int) -> tuple:
    """FLUX's 16:56:56 split of a 128-wide head (2:7:7), scaled to ``head_dim`` (a multiple of 32)."""
    if head_dim % 32:
        raise ValueError(f"cannot infer the RoPE axes for head dimension {head_dim}: expected a multiple of 32 "
                         "(FLUX splits the head 2:7:7 between the t, h, w axes)")
    return (head_dim // 8, head_dim * 7 // 16, head_dim * 7 // 16)


def pack_latents(x: Tensor) -> Tensor:
    """``[B, C, h, w]`` -> ``[B, h/2 * w/2, 4C]``: 2x2 patches, channel-major inside a patch (BFL / ComfyUI)."""
    require_tensor("x", x)
    if x.ndim != 4 or x.shape[-2] % PATCH or x.shape[-1] % PATCH:
        raise ValueError(f"x must be [B, C, h, w] with even h and w, got shape {tuple(x.shape)}")
    return rearrange(x, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=PATCH, pw=PATCH)


def unpack_latents(tokens: Tensor, h: int, w: int) -> Tensor:
    """Inverse of ``pack_latents``: ``[B, h/2 * w/2, 4C]`` -> ``[B, C, h, w]`` (h, w: latent size)."""
    require_tensor("tokens", tokens)
    if h % PATCH or w % PATCH or tokens.ndim != 3 or tokens.shape[1] != (h // PATCH) * (w // PATCH) \
            or tokens.shape[2] % (PATCH * PATCH):
        raise ValueError(f"tokens of shape {tuple(tokens.shape)} do not unpack to a latent of size {h}x{w}; "
                         f"expected [B, {h // PATCH * (w // PATCH)}, 4C] and even h, w")
    return rearrange(tokens, "b (h w) (c ph pw) -> b c (h ph) (w pw)", h=h // PATCH, w=w // PATCH, ph=PATCH,
                     pw=PATCH)


def image_ids(batch: int, h: int, w: int, device=None, dtype=torch.float32) -> Tensor:
    """Position ids ``[B, h/2 * w/2, 3]`` of the packed tokens of an ``h x w`` latent: (0, row, column)."""
    if h % PATCH or w % PATCH or h < PATCH or w < PATCH:
        raise ValueError(f"latent size {h}x{w} must be even and at least 2x2")
    rows = torch.arange(h // PATCH, device=device, dtype=dtype)
    cols = torch.arange(w // PATCH, device=device, dtype=dtype)
    ids = torch.stack([torch.zeros(h // PATCH, w // PATCH, device=device, dtype=dtype),
                       rows[:, None].expand(-1, w // PATCH), cols[None, :].expand(h // PATCH, -1)], dim=-1)
    return repeat(ids, "h w c -> b (h w) c", b=batch)


def text_ids(batch: int, length: int, device=None, dtype=torch.float32) -> Tensor:
    """Text tokens all sit at position (0, 0, 0): ``[B, T, 3]`` zeros."""
    return torch.zeros(batch, length, 3, device=device, dtype=dtype)


def check_tokens(params: FluxParams, img, img_ids, txt, txt_ids, y):
    """Shape checks shared by the DiT and the ControlNet; returns the batch size."""
    for name, x in (("img", img), ("img_ids", img_ids), ("txt", txt), ("txt_ids", txt_ids)):
        require_tensor(name, x)
        if x.ndim != 3:
            raise ValueError(f"{name} must have 3 dimensions [B, tokens, channels], got shape {tuple(x.shape)}")
    b, n = img.shape[:2]
    if img.shape[2] != params.in_channels * PATCH * PATCH:
        raise ValueError(f"img must have {params.in_channels * PATCH * PATCH} channels (packed 2x2 patches of "
                         f"{params.in_channels}), got shape {tuple(img.shape)}")
    if tuple(img_ids.shape) != (b, n, 3):
        raise ValueError(f"img_ids must have shape {(b, n, 3)}, got {tuple(img_ids.shape)}")
    if txt.shape[0] != b or txt.shape[2] != params.context_in_dim:
        raise ValueError(f"txt must have shape [{b}, T, {params.context_in_dim}], got {tuple(txt.shape)}")
    if tuple(txt_ids.shape) != (b, txt.shape[1], 3):
        raise ValueError(f"txt_ids must have shape {(b, txt.shape[1], 3)}, got {tuple(txt_ids.shape)}")
    if y is not None and (not torch.is_tensor(y) or tuple(y.shape) != (b, params.vec_in_dim)):
        raise ValueError(f"y must be None or a [{b}, {params.vec_in_dim}] tensor (pooled CLIP-L), got "
                         f"{tuple(y.shape) if torch.is_tensor(y) else type(y).__name__}")
    return b


def conditioning_vector(model: nn.Module, timesteps, guidance, y, batch: int, device, dtype) -> Tensor:
    """``vec = time_in(emb(t)) + guidance_in(emb(g)) + vector_in(y)``, the adaLN conditioning (BFL flux).

    ``y=None`` means a zero pooled embedding (ComfyUI does the same). A guidance-distilled model needs
    ``guidance`` (BFL raises too); a model without a guidance embedding ignores it.
    """
    params = model.params
    vec = model.time_in(timestep_embedding(batch_vector("timesteps", timesteps, batch, device)).to(dtype))
    if params.guidance_embed:
        if guidance is None:
            raise ValueError("guidance is required by a guidance-distilled (dev) model; pass the distilled "
                             "guidance scale, e.g. 3.5, as a number or a [B] tensor")
        vec = vec + model.guidance_in(timestep_embedding(batch_vector("guidance", guidance, batch, device)).to(dtype))
    if y is None:
        y = torch.zeros(batch, params.vec_in_dim, device=device, dtype=dtype)
    return vec + model.vector_in(y.to(device=device, dtype=dtype))


def add_inputs_and_double_blocks(module: nn.Module, params: FluxParams):
    """The embedders and double-stream blocks that the FLUX DiT and its XLabs ControlNet share, under the key
    names both file layouts use (``img_in``, ``time_in``, ``vector_in``, ``guidance_in``, ``txt_in``,
    ``double_blocks``)."""
    hidden = params.hidden_size
    module.pe_embedder = EmbedND(params.theta, params.axes_dim)
    module.img_in = nn.Linear(params.in_channels * PATCH * PATCH, hidden, bias=True)
    module.time_in = MLPEmbedder(256, hidden)
    module.vector_in = MLPEmbedder(params.vec_in_dim, hidden)
    module.guidance_in = MLPEmbedder(256, hidden) if params.guidance_embed else nn.Identity()
    module.txt_in = nn.Linear(params.context_in_dim, hidden)
    module.double_blocks = nn.ModuleList(
        DoubleStreamBlock(hidden, params.num_heads, params.mlp_ratio, params.qkv_bias) for _ in range(params.depth))


class Flux(nn.Module):
    """FLUX DiT. ``forward`` works on packed tokens; ``velocity`` on ``[B, 16, h, w]`` latents."""

    kind = "flux"

    def __init__(self, params: FluxParams, seed: int = 0):
        super().__init__()
        if not isinstance(params, FluxParams):
            raise ValueError(f"params must be a FluxParams, got {type(params).__name__}")
        self.params = params
        self.gradient_checkpointing = False
        hidden = params.hidden_size
        add_inputs_and_double_blocks(self, params)
        self.single_blocks = nn.ModuleList(
            SingleStreamBlock(hidden, params.num_heads, params.mlp_ratio) for _ in range(params.depth_single_blocks))
        self.final_layer = LastLayer(hidden, params.out_channels * PATCH * PATCH)
        init_weights_(self, seed)

    @property
    def config(self) -> FluxParams:
        return self.params

    def forward(self, img: Tensor, img_ids: Tensor, txt: Tensor, txt_ids: Tensor, timesteps, y=None,
                guidance=None, controlnet_residuals=None, controlnet_single_residuals=None) -> Tensor:
        """Velocity tokens ``[B, N, 4*out_channels]`` for packed ``img [B, N, 4*in_channels]``.

        ``timesteps`` is the rectified-flow t in [0, 1] (ComfyUI's sigma), ``[B]`` or a number. ``txt``
        ``[B, T, context_in_dim]`` are T5 embeddings, ``y [B, vec_in_dim]`` the pooled CLIP-L vector.
        ``controlnet_residuals`` (list of ``[B, N, hidden]``) are added to the image tokens after double block i,
        cycling over the list (``repeat_residuals``). ``controlnet_single_residuals`` holds one ``[B, N, hidden]``
        per single block, added to the image tokens of the joint sequence after single block i (an InstantX
        ControlNet's outputs spread over the blocks with ``instantx.spread_residuals``). Computes in the weights'
        dtype and returns in ``img``'s dtype.
        """
        batch = check_tokens(self.params, img, img_ids, txt, txt_ids, y)
        dtype = self.img_in.weight.dtype
        expected = (batch, img.shape[1], self.params.hidden_size)
        per_block = None
        if controlnet_residuals is not None:
            per_block = repeat_residuals(controlnet_residuals, self.params.depth)
            check_residuals("controlnet_residuals", per_block[:len(controlnet_residuals)], expected)
        if controlnet_single_residuals is not None:
            if not isinstance(controlnet_single_residuals, (list, tuple)) \
                    or len(controlnet_single_residuals) != self.params.depth_single_blocks:
                raise ValueError(f"controlnet_single_residuals must be a list of one tensor per single block "
                                 f"({self.params.depth_single_blocks}), got {controlnet_single_residuals!r:.80}")
            check_residuals("controlnet_single_residuals", controlnet_single_residuals, expected)

        vec = conditioning_vector(self, timesteps, guidance, y, batch, img.device, dtype)
        x = self.img_in(img.to(dtype))
        ctx = self.txt_in(txt.to(dtype))
        pe = self.pe_embedder(torch.cat((txt_ids, img_ids), dim=1))
        for i, block in enumerate(self.double_blocks):
            x, ctx = run_block(self, block, x, ctx, vec, pe)
            if per_block is not None:
                x = x + per_block[i].to(dtype)
        joint = torch.cat((ctx, x), dim=1)
        n_txt = ctx.shape[1]
        for i, block in enumerate(self.single_blocks):
            joint = run_block(self, block, joint, vec, pe)
            if controlnet_single_residuals is not None:
                joint = torch.cat((joint[:, :n_txt], joint[:, n_txt:] + controlnet_single_residuals[i].to(dtype)),
                                  dim=1)
        out = self.final_layer(joint[:, n_txt:], vec)
        return out.to(img.dtype)

    def velocity(self, x: Tensor, t, txt: Tensor, y=None, guidance=None, controlnet_residuals=None,
                 controlnet_single_residuals=None) -> Tensor:
        """``v(x_t, t)`` for latents ``x [B, C, h, w]`` (model space, h and w even): pack, run, unpack."""
        require_tensor("x", x)
        if x.ndim != 4 or x.shape[1] != self.params.in_channels:
            raise ValueError(f"x must be [B, {self.params.in_channels}, h, w], got shape {tuple(x.shape)}")
        require_tensor("txt", txt)
        b, _, h, w = x.shape
        tokens = self(pack_latents(x), image_ids(b, h, w, device=x.device), txt,
                      text_ids(b, txt.shape[1], device=x.device), t, y, guidance, controlnet_residuals,
                      controlnet_single_residuals)
        return unpack_latents(tokens, h, w)


def check_residuals(name: str, residuals, expected: tuple):
    """Every entry of a residual list is a tensor of shape ``expected`` ``(B, N, hidden)``."""
    for i, r in enumerate(residuals):
        if not torch.is_tensor(r) or tuple(r.shape) != expected:
            raise ValueError(f"{name}[{i}] must have shape {expected}, got "
                             f"{tuple(r.shape) if torch.is_tensor(r) else type(r).__name__}")


def repeat_residuals(residuals, n_blocks: int) -> list:
    """Spread a ControlNet's per-block residuals over ``n_blocks`` base double blocks, cycling: block i gets
    ``residuals[i % len(residuals)]``.

    This is ComfyUI's rule for XLabs files (``ControlNetFlux``: the tuple of ``depth`` residuals repeated
    ``ceil(19 / depth)`` times and cut to the 19 base blocks; a shallower base uses the first ones) and X-Flux's
    ``controlnet_block_residuals[i % len]``. A full-length list passes through unchanged.
    """
    if not isinstance(residuals, (list, tuple)) or len(residuals) == 0:
        raise ValueError(f"controlnet_residuals must be a non-empty list of tensors, got {residuals!r:.80}")
    return [residuals[i % len(residuals)] for i in range(n_blocks)]


def count_blocks(keys, prefix: str) -> int:
    """Number of consecutive ``prefix{i}.`` groups among ``keys`` (ComfyUI's ``count_blocks``)."""
    n = 0
    while any(k.startswith(f"{prefix}{n}.") for k in keys):
        n += 1
    return n


def _shape(sd, key):
    if key not in sd:
        raise ValueError(f"missing key {key!r}; it is needed to infer the FLUX configuration")
    return tuple(sd[key].shape)


def params_from_state_dict(sd: dict) -> FluxParams:
    """Infer ``FluxParams`` from the keys and shapes of a BFL-layout state dict (prefix already stripped or not).

    Block counts, ``in_channels``, ``vec_in_dim`` and ``guidance_embed`` come from the keys as in ComfyUI's
    ``detect_unet_config`` (docs/comfyui.md §7). ComfyUI hard-codes the width (3072, 24 heads, T5 4096); here the
    width, heads (from the QK-norm size), context width, MLP ratio and ``qkv_bias`` are read from shapes, which
    gives ComfyUI's values for real files and also works for narrow test files. The RoPE split is not stored in
    a checkpoint: FLUX's 2:7:7 split is assumed (``default_axes_dim``), giving [16, 56, 56] for real files.
    ``out_channels`` is read from ``final_layer`` when present (a ControlNet has none).
    """
    prefix = "model.diffusion_model."
    if any(k.startswith(prefix) for k in sd):
        sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    if KEY_FLUX not in sd or "img_in.weight" not in sd:
        raise ValueError(f"not a FLUX state dict: expected the keys {KEY_FLUX!r} and 'img_in.weight'")
    hidden, packed_in = _shape(sd, "img_in.weight")
    head_dim = _shape(sd, KEY_FLUX)[0]
    if head_dim < 1 or hidden % head_dim:
        raise ValueError(f"img_in.weight width {hidden} is not a multiple of the QK-norm size {head_dim}")
    out_key = "final_layer.linear.weight"
    out_channels = _shape(sd, out_key)[0] // (PATCH * PATCH) if out_key in sd else packed_in // (PATCH * PATCH)
    return FluxParams(
        in_channels=packed_in // (PATCH * PATCH),
        out_channels=out_channels,
        vec_in_dim=_shape(sd, "vector_in.in_layer.weight")[1],
        context_in_dim=_shape(sd, "txt_in.weight")[1],
        hidden_size=hidden,
        mlp_ratio=_shape(sd, "double_blocks.0.img_mlp.0.weight")[0] / hidden,
        num_heads=hidden // head_dim,
        depth=count_blocks(sd, "double_blocks."),
        depth_single_blocks=count_blocks(sd, "single_blocks."),
        axes_dim=default_axes_dim(head_dim),
        qkv_bias="double_blocks.0.img_attn.qkv.bias" in sd,
        guidance_embed="guidance_in.in_layer.weight" in sd,
    )

