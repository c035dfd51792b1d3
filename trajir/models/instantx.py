"""The InstantX / diffusers FLUX ControlNet (diffusers ``FluxControlNetModel``): jasperai's upscaler, the InstantX
and Shakker-Labs Union ControlNets, and FLUX-IR ControlNets trained from them.

A copy of the base's embedders, its first ``depth`` double-stream and first ``depth_single_blocks`` single-stream
blocks. The hint is the VAE latent of the control image in model space (ComfyUI: ControlNetApplyAdvanced with a VAE
encodes the IMAGE and applies the FLUX latent format's scale and shift), packed into 2x2 patches like the latent and
added to the image tokens through ``controlnet_x_embedder``. A Union file has ``controlnet_mode_embedder``: the
chosen mode's row becomes one extra text token in front of the prompt, at text position (0, 0, 0). After every
double block ``controlnet_blocks[i]`` maps the image tokens to a residual, after every single block
``controlnet_single_blocks[i]`` maps the image part of the joint sequence to one.

The base adds residual ``i // ceil(n_base / n)`` of the n residuals after its block i (``spread_residuals``): each
residual serves a run of consecutive blocks. diffusers computes the run length from the base's own block count,
ComfyUI (``ControlNetFlux`` with ``latent_input``) from FLUX.1's 19 double and 38 single blocks; the two agree for
FLUX.1-dev and -schnell. The file layout is diffusers' (``diffusers_keys.py``); inside, the blocks are the BFL
blocks of ``layers.py``.

Published configurations (their ``config.json``): jasperai ``Flux.1-dev-Controlnet-Upscaler`` 5 double, 0 single
blocks, no modes; InstantX ``FLUX.1-dev-Controlnet-Union`` and Shakker-Labs ``FLUX.1-dev-ControlNet-Union-Pro``
5 double, 10 single blocks, 10 mode rows (7 used: canny 0, tile 1, depth 2, blur 3, pose 4, gray 5, low quality 6).
"""
import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..checks import require_tensor
from .flux import PATCH, Flux, FluxParams, add_inputs_and_double_blocks, check_tokens, conditioning_vector, pack_latents
from .layers import SingleStreamBlock, finite, init_weights_, run_block, zero_

UNION_MODES = {"canny": 0, "tile": 1, "depth": 2, "blur": 3, "pose": 4, "gray": 5, "low quality": 6}


@dataclass(frozen=True)
class InstantXParams(FluxParams):
    """``FluxParams`` of the ControlNet's trunk (``depth`` double, ``depth_single_blocks`` single blocks) plus
    ``num_modes``, the rows of a Union file's mode embedder (0: no mode embedder)."""
    num_modes: int = 0

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.num_modes, int) or isinstance(self.num_modes, bool) or self.num_modes < 0:
            raise ValueError(f"InstantXParams.num_modes must be an integer >= 0, got {self.num_modes!r}")

    @classmethod
    def jasperai_upscaler(cls) -> "InstantXParams":
        """jasperai ``Flux.1-dev-Controlnet-Upscaler``: 5 double blocks, no single blocks, no modes."""
        return cls(depth=5, depth_single_blocks=0)

    @classmethod
    def union(cls) -> "InstantXParams":
        """InstantX ``FLUX.1-dev-Controlnet-Union`` / Shakker-Labs ``FLUX.1-dev-ControlNet-Union-Pro``."""
        return cls(depth=5, depth_single_blocks=10, num_modes=10)


def instantx_params(base: FluxParams, depth: int = 5, depth_single_blocks: int = 0,
                    num_modes: int = 0) -> InstantXParams:
    """The ControlNet's configuration for a base model: same width and embedders, its own block counts."""
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(FluxParams)}
    return InstantXParams(**{**fields, "depth": depth, "depth_single_blocks": depth_single_blocks,
                             "num_modes": num_modes})


def spread_residuals(residuals, n_blocks: int) -> list:
    """Residual ``i // ceil(n_blocks / len(residuals))`` for each of ``n_blocks`` base blocks (see the module
    docstring). ``residuals`` must be non-empty and no longer than ``n_blocks`` (the rest would be dropped)."""
    if not isinstance(residuals, (list, tuple)) or not residuals:
        raise ValueError(f"residuals must be a non-empty list of tensors, got {residuals!r:.80}")
    if len(residuals) > n_blocks:
        raise ValueError(f"{len(residuals)} ControlNet residuals cannot be spread over {n_blocks} base blocks: the "
                         f"last {len(residuals) - n_blocks} would never be added")
    run = math.ceil(n_blocks / len(residuals))
    return [residuals[i // run] for i in range(n_blocks)]


class InstantXControlNet(nn.Module):
    """InstantX / diffusers-format FLUX ControlNet. ``forward`` returns ``(double residuals, single residuals)``."""

    kind = "instantx_controlnet"

    def __init__(self, params: InstantXParams, seed: int = 0):
        super().__init__()
        if not isinstance(params, InstantXParams):
            raise ValueError(f"params must be an InstantXParams (see instantx_params), got {type(params).__name__}")
        self.params = params
        self.gradient_checkpointing = False
        hidden = params.hidden_size
        add_inputs_and_double_blocks(self, params)
        self.single_blocks = nn.ModuleList(
            SingleStreamBlock(hidden, params.num_heads, params.mlp_ratio) for _ in range(params.depth_single_blocks))
        self.controlnet_blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(params.depth))
        self.controlnet_single_blocks = nn.ModuleList(
            nn.Linear(hidden, hidden) for _ in range(params.depth_single_blocks))
        self.controlnet_x_embedder = nn.Linear(params.in_channels * PATCH * PATCH, hidden)
        self.controlnet_mode_embedder = nn.Embedding(params.num_modes, hidden) if params.num_modes else None
        init_weights_(self, seed)
        self.init_controlnet_parts_(seed)

    @torch.no_grad()
    def init_controlnet_parts_(self, seed: int):
        """What the base does not provide: zero heads and hint embedding (diffusers' ``from_transformer``: a new
        ControlNet leaves the base's prediction unchanged), and the mode embedder ~ N(0, 1) (torch's default for an
        embedding) drawn from ``seed``. Meta tensors are left alone."""
        for head in (*self.controlnet_blocks, *self.controlnet_single_blocks, self.controlnet_x_embedder):
            zero_(head)
        embedder = self.controlnet_mode_embedder
        if embedder is not None and not embedder.weight.is_meta:
            gen = torch.Generator().manual_seed(int(seed) + 1)
            embedder.weight.copy_(torch.randn(embedder.weight.shape, generator=gen))

    @property
    def config(self) -> InstantXParams:
        return self.params

    @classmethod
    def from_flux(cls, flux: Flux, depth: int = 5, depth_single_blocks: int = 0, num_modes: int = 0,
                  seed: int = 0) -> "InstantXControlNet":
        """A new ControlNet whose embedders and blocks are copies of the base's first ``depth`` double and first
        ``depth_single_blocks`` single blocks; heads and hint embedding start at zero, the mode embedder (if
        ``num_modes``) is drawn from ``seed``."""
        if not isinstance(flux, Flux):
            raise ValueError(f"flux must be a trajir Flux model, got {type(flux).__name__}")
        if not 1 <= depth <= flux.params.depth:
            raise ValueError(f"depth must be between 1 and the base's {flux.params.depth} double blocks, got {depth}")
        if not 0 <= depth_single_blocks <= flux.params.depth_single_blocks:
            raise ValueError(f"depth_single_blocks must be between 0 and the base's {flux.params.depth_single_blocks} "
                             f"single blocks, got {depth_single_blocks}")
        ref = flux.img_in.weight
        params = instantx_params(flux.params, depth, depth_single_blocks, num_modes)
        with torch.device("meta"):  # every weight is copied or set below: no random fill of the full-size trunk
            net = cls(params, seed=seed)
        net = net.to_empty(device=ref.device).to(ref.dtype)
        limits = {"double_blocks": depth, "single_blocks": depth_single_blocks}
        copied = {k: v for k, v in flux.state_dict().items()
                  if k.split(".")[0] in ("img_in", "time_in", "vector_in", "guidance_in", "txt_in")
                  or (k.split(".")[0] in limits and int(k.split(".")[1]) < limits[k.split(".")[0]])}
        missing, unexpected = net.load_state_dict(copied, strict=False)
        if unexpected or any(not k.startswith("controlnet_") for k in missing):
            raise ValueError(f"base model does not match the ControlNet layout: unexpected {unexpected}, "
                             f"missing {missing}")
        net.init_controlnet_parts_(seed)
        return net

    def check_mode(self, mode):
        """``mode`` must be an index into a Union file's mode embedder, and None for a file without one."""
        n = self.params.num_modes
        if n == 0:
            if mode is not None:
                raise ValueError(f"mode={mode!r} given, but this ControlNet has no mode embedder (not a Union file); "
                                 "pass mode=None")
            return
        if mode is None:
            names = ", ".join(f"{k} {v}" for k, v in UNION_MODES.items())
            raise ValueError(f"this Union ControlNet has a mode embedder with {n} rows: pass mode=0..{n - 1} (the "
                             f"InstantX / Shakker-Labs Union modes: {names})")
        if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode < n:
            raise ValueError(f"mode must be an integer in 0..{n - 1} for this Union ControlNet, got {mode!r}")

    def forward(self, img: Tensor, img_ids: Tensor, hint: Tensor, txt: Tensor, txt_ids: Tensor, timesteps,
                y=None, guidance=None, mode=None) -> tuple:
        """``(double, single)``: one residual ``[B, N, hidden]`` per double and per single block of the ControlNet.

        ``hint`` is the control image's latent ``[B, in_channels, h, w]`` in model space, the size of the latent
        ``img`` was packed from. ``mode`` selects a Union file's mode (an int) and must be None otherwise. Other
        arguments as ``Flux.forward``. Computes in the weights' dtype, returns in ``img``'s dtype.
        """
        batch = check_tokens(self.params, img, img_ids, txt, txt_ids, y)
        require_tensor("hint", hint)
        finite("hint", hint)
        c = self.params.in_channels
        if hint.ndim != 4 or hint.shape[0] != batch or hint.shape[1] != c or hint.shape[2] % PATCH \
                or hint.shape[3] % PATCH or (hint.shape[2] // PATCH) * (hint.shape[3] // PATCH) != img.shape[1]:
            raise ValueError(f"hint must be the control image's latent [{batch}, {c}, h, w] with even h, w and "
                             f"(h/2)*(w/2) = {img.shape[1]} image tokens, got shape {tuple(hint.shape)}")
        self.check_mode(mode)
        dtype = self.img_in.weight.dtype
        x = self.img_in(img.to(dtype)) + self.controlnet_x_embedder(pack_latents(hint.to(dtype)))
        vec = conditioning_vector(self, timesteps, guidance, y, batch, img.device, dtype)
        ctx = self.txt_in(txt.to(dtype))
        if mode is not None:
            token = self.controlnet_mode_embedder(torch.tensor([mode], device=img.device)).to(dtype)
            ctx = torch.cat((token[None].expand(batch, -1, -1), ctx), dim=1)
            txt_ids = torch.cat((txt_ids[:, :1], txt_ids), dim=1)
        pe = self.pe_embedder(torch.cat((txt_ids, img_ids), dim=1))
        double = []
        for block, head in zip(self.double_blocks, self.controlnet_blocks):
            x, ctx = run_block(self, block, x, ctx, vec, pe)
            double.append(head(x).to(img.dtype))
        joint, n_txt = torch.cat((ctx, x), dim=1), ctx.shape[1]
        single = []
        for block, head in zip(self.single_blocks, self.controlnet_single_blocks):
            joint = run_block(self, block, joint, vec, pe)
            single.append(head(joint[:, n_txt:]).to(img.dtype))
        return double, single
