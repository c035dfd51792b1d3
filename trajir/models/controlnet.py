"""The FLUX-IR ControlNet in XLabs layout (X-Flux ``src/flux/controlnet.py``; docs/equations.md §11).

A copy of the base's embedders and first ``depth`` (2) double-stream blocks. The LQ image enters in pixel
space through ``input_hint_block`` (8x downsampling convs), is packed into 2x2 patches and added to the image
tokens through ``pos_embed_input``. After each double block a zero-initialised ``controlnet_blocks[i]`` linear
layer emits a residual; the base adds residual ``i % depth`` after its double block i (``repeat_residuals``).

File layout: the keys ComfyUI's ``ControlNetFlux`` expects when it detects an XLabs file
(``controlnet_blocks.0.weight`` + ``double_blocks.0.img_attn.norm.key_norm.scale``, comfy/controlnet.py
``load_controlnet_flux_xlabs_mistoline``): no ``final_layer``, no ``single_blocks``.
"""
import dataclasses

import torch
from einops import rearrange
from torch import Tensor, nn

from ..checks import require_image_batch
from .flux import PATCH, Flux, FluxParams, add_inputs_and_double_blocks, check_tokens, conditioning_vector
from .layers import finite, init_weights_, run_block, zero_

HINT_DOWNSCALE = 8  # three stride-2 convs: the hint has the pixel size of the image the latent decodes to


def xlabs_params(base: FluxParams, depth: int = 2) -> FluxParams:
    """The ControlNet's configuration for a base model: same width and embedders, ``depth`` double blocks only."""
    return dataclasses.replace(base, depth=depth, depth_single_blocks=0)


def _hint_block() -> nn.Sequential:
    # 3 -> 16 channels, three stride-2 stages (8x down); indices 0, 2, ..., 14 hold the convs (XLabs keys)
    layers = [nn.Conv2d(3, 16, 3, padding=1), nn.SiLU()]
    for stride in (1, 2, 1, 2, 1, 2):
        layers += [nn.Conv2d(16, 16, 3, padding=1, stride=stride), nn.SiLU()]
    layers.append(nn.Conv2d(16, 16, 3, padding=1))
    return nn.Sequential(*layers)


class XLabsControlNet(nn.Module):
    """XLabs-format FLUX ControlNet. ``forward`` returns ``depth`` residuals ``[B, N, hidden]``.

    ``params.depth`` is the ControlNet depth; ``params.depth_single_blocks`` must be 0 (use ``xlabs_params``).
    """

    kind = "xlabs_controlnet"

    def __init__(self, params: FluxParams, seed: int = 0):
        super().__init__()
        if not isinstance(params, FluxParams):
            raise ValueError(f"params must be a FluxParams, got {type(params).__name__}")
        if params.depth_single_blocks != 0:
            raise ValueError(f"an XLabs ControlNet has no single-stream blocks, got depth_single_blocks="
                             f"{params.depth_single_blocks}; build its params with xlabs_params(base, depth)")
        self.params = params
        self.gradient_checkpointing = False
        hidden = params.hidden_size
        add_inputs_and_double_blocks(self, params)
        self.controlnet_blocks = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(params.depth))
        # the hint is patchified like the latent: 16 channels x 2x2 = 64 = 4 * in_channels for FLUX
        self.pos_embed_input = nn.Linear(16 * PATCH * PATCH, hidden, bias=True)
        self.input_hint_block = _hint_block()
        init_weights_(self, seed)
        # X-Flux: zero outputs make a fresh ControlNet leave the base's prediction unchanged
        for block in self.controlnet_blocks:
            zero_(block)
        zero_(self.input_hint_block[-1])

    @property
    def config(self) -> FluxParams:
        return self.params

    @classmethod
    def from_flux(cls, flux: Flux, depth: int = 2, seed: int = 0) -> "XLabsControlNet":
        """A new ControlNet whose embedders and double blocks are copies of the base's first ``depth`` ones.

        ``controlnet_blocks`` and the last hint conv start at zero; the other hint convs and
        ``pos_embed_input`` are initialised from ``seed``.
        """
        if not isinstance(flux, Flux):
            raise ValueError(f"flux must be a trajir Flux model, got {type(flux).__name__}")
        if not 1 <= depth <= flux.params.depth:
            raise ValueError(f"depth must be between 1 and the base's {flux.params.depth} double blocks, got {depth}")
        ref = flux.img_in.weight
        net = cls(xlabs_params(flux.params, depth), seed=seed).to(device=ref.device, dtype=ref.dtype)
        copied = {k: v for k, v in flux.state_dict().items()
                  if k.split(".")[0] in ("img_in", "time_in", "vector_in", "guidance_in", "txt_in")
                  or (k.startswith("double_blocks.") and int(k.split(".")[1]) < depth)}
        missing, unexpected = net.load_state_dict(copied, strict=False)
        if unexpected or any(not k.startswith(("controlnet_blocks.", "pos_embed_input.", "input_hint_block."))
                             for k in missing):
            raise ValueError(f"base model does not match the ControlNet layout: unexpected {unexpected}, "
                             f"missing {missing}")
        return net

    def forward(self, img: Tensor, img_ids: Tensor, hint: Tensor, txt: Tensor, txt_ids: Tensor, timesteps,
                y=None, guidance=None) -> list:
        """Residuals for the base's double blocks, one per ControlNet block, each ``[B, N, hidden]``.

        ``hint`` is the LQ image ``[B, 3, 8h, 8w]`` in 0..1 (the pixel size of the latent's image). It is mapped
        to [-1, 1] here, as ComfyUI's ``ControlNetFlux.forward`` does with the 0..1 IMAGE it receives
        (``hint * 2 - 1``; ComfyUI first resizes the IMAGE to 8x the latent size, nearest-exact with a centre
        crop, and applies no VAE for XLabs files) and as X-Flux's data pipeline does before the hint block.
        Other arguments as ``Flux.forward``. Computes in the weights' dtype, returns in ``img``'s dtype.
        """
        batch = check_tokens(self.params, img, img_ids, txt, txt_ids, y)
        require_image_batch("hint", hint, channels=3)
        finite("hint", hint)
        n_tokens = (hint.shape[2] // (HINT_DOWNSCALE * PATCH)) * (hint.shape[3] // (HINT_DOWNSCALE * PATCH))
        if hint.shape[0] != batch or hint.shape[2] % 16 or hint.shape[3] % 16 or n_tokens != img.shape[1]:
            raise ValueError(f"hint must be [{batch}, 3, H, W] with H, W multiples of 16 and (H/16)*(W/16) = "
                             f"{img.shape[1]} image tokens (8x the latent size), got shape {tuple(hint.shape)}")
        dtype = self.img_in.weight.dtype
        cond = self.input_hint_block(hint.to(dtype) * 2.0 - 1.0)
        cond = rearrange(cond, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=PATCH, pw=PATCH)
        x = self.img_in(img.to(dtype)) + self.pos_embed_input(cond)
        vec = conditioning_vector(self, timesteps, guidance, y, batch, img.device, dtype)
        ctx = self.txt_in(txt.to(dtype))
        pe = self.pe_embedder(torch.cat((txt_ids, img_ids), dim=1))
        residuals = []
        for block, head in zip(self.double_blocks, self.controlnet_blocks):
            x, ctx = run_block(self, block, x, ctx, vec, pe)
            residuals.append(head(x).to(img.dtype))
        return residuals
