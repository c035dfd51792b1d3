"""Models of trajir, in torch + einops, in the file layouts ComfyUI's loaders open (docs/architecture.md §5).

| model | class | file layout | ComfyUI loader |
|---|---|---|---|
| FLUX DiT (dev / schnell) | ``Flux(FluxParams.dev())`` | BFL (``model.diffusion_model.`` optional) | ``UNETLoader`` |
| FLUX-IR ControlNet | ``XLabsControlNet.from_flux(flux, depth=2)`` | XLabs | ``ControlNetLoader`` |
| InstantX ControlNet | ``InstantXControlNet(InstantXParams.jasperai_upscaler())`` | diffusers | ``ControlNetLoader`` |
| FLUX autoencoder | ``AutoEncoder(AutoEncoderParams.flux())`` | BFL ``ae.safetensors`` | ``VAELoader`` |
| LQ encoder | ``LQEncoder.from_autoencoder(ae)`` | ``encoder.*`` of ``ae.safetensors`` | - |
| compact restorer | ``CompactUNet(CompactUNetConfig.small())`` | trajir, config in metadata | - |

Every model has ``.kind`` and ``.config`` (its dataclass); ``load(path)`` / ``save(model, path)`` handle all six.
Each configuration has a ``.tiny()`` variant for tests; the real sizes are a config switch, not a code path.
"""
from .autoencoder import AutoEncoder, AutoEncoderParams
from .compact_unet import CompactUNet, CompactUNetConfig
from .controlnet import XLabsControlNet, xlabs_params
from .flux import (Flux, FluxParams, image_ids, pack_latents, params_from_state_dict, repeat_residuals, text_ids,
                   unpack_latents)
from .instantx import UNION_MODES, InstantXControlNet, InstantXParams, instantx_params, spread_residuals
from .io import KINDS, WeightFileError, load, save
from .layers import enable_gradient_checkpointing, freeze, init_weights_
from .lq_encoder import LQEncoder, lq_alignment_loss

__all__ = [
    "AutoEncoder", "AutoEncoderParams", "CompactUNet", "CompactUNetConfig", "Flux", "FluxParams",
    "InstantXControlNet", "InstantXParams", "KINDS", "LQEncoder", "UNION_MODES", "WeightFileError", "XLabsControlNet",
    "enable_gradient_checkpointing", "freeze", "image_ids", "init_weights_", "instantx_params", "load",
    "lq_alignment_loss", "pack_latents", "params_from_state_dict", "repeat_residuals", "save", "spread_residuals",
    "text_ids", "unpack_latents", "xlabs_params",
]
