"""Reading and writing model files: safetensors only, layouts that ComfyUI's loaders open.

``load(path)`` recognises what a file holds from its keys (and, for trajir-written files, the ``trajir_kind`` /
``trajir_config`` metadata), builds the matching module on the meta device, checks every key and shape, then
assigns the tensors, upcast to ``dtype`` (float32 by default; bf16 / fp16 / fp8-e4m3fn files, and ComfyUI's
"scaled fp8" files, are dequantised) and checked to be finite. Nothing is unpickled: what a file is follows from
its header (length, then JSON), never from magic bytes. ``save`` writes atomically, with the process umask's
permissions (``trajir.safefiles.write_safetensors``).
"""
import json
import os
import pathlib
import struct

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ..safefiles import write_safetensors

from .autoencoder import AutoEncoder, AutoEncoderParams
from .compact_unet import CompactUNet, CompactUNetConfig
from .controlnet import XLabsControlNet
from .diffusers_keys import bfl_to_diffusers, diffusers_to_bfl
from .flux import KEY_FLUX, PATCH, Flux, FluxParams, count_blocks, default_axes_dim, params_from_state_dict
from .instantx import InstantXControlNet, InstantXParams
from .lq_encoder import LQEncoder

KINDS = ("flux", "xlabs_controlnet", "instantx_controlnet", "autoencoder", "lq_encoder", "compact_unet")
# the keys ComfyUI's ControlNetLoader routes to its InstantX / diffusers FLUX path (comfy/controlnet.py)
KEY_INSTANTX, KEY_DIFFUSERS_FLUX = "controlnet_x_embedder.weight", "x_embedder.weight"
UNET_PREFIX = "model.diffusion_model."
# other components of a full ComfyUI / LDM checkpoint, skipped when the diffusion model is taken out of it
CHECKPOINT_PREFIXES = ("vae.", "text_encoders.", "first_stage_model.", "cond_stage_model.", "conditioner.")
META_KIND, META_CONFIG = "trajir_kind", "trajir_config"
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on the JSON header
COMPUTE_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


class WeightFileError(ValueError):
    """A weight file that is missing, unreadable, or does not hold a model trajir knows."""


def safetensors_header(path):
    """The parsed JSON header of a safetensors file (8-byte little-endian length, then that many bytes of JSON),
    or None when the file does not start like one. Decides what a file is: a header length of 128 mod 256 starts
    with the byte 0x80 and one of 0x4B50 mod 65536 with "PK", like pickles, yet the file is safetensors."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return None
        length = struct.unpack("<Q", head)[0]
        if length < 2 or length > min(size - 8, MAX_HEADER_BYTES):
            return None
        text = f.read(length)
    try:
        header = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return header if isinstance(header, dict) else None


def _looks_like_pickle(head: bytes) -> bool:
    """torch.save's zip archive (a local file header "PK\x03\x04") or a bare pickle (protocol 2-5 opcode)."""
    return head[:4] == b"PK\x03\x04" or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"))


def read_safetensors(path) -> tuple:
    """``(state_dict, metadata)`` of a safetensors file, with errors that name the file and what is wrong."""
    path = pathlib.Path(path)
    if path.is_dir():
        raise WeightFileError(f"{path} is a folder, not a model file")
    if not path.is_file():
        raise WeightFileError(f"weight file {path.name!r} not found in folder {str(path.parent)!r}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
    if size == 0:
        raise WeightFileError(f"{path}: the file is empty (0 bytes), not a readable safetensors file")
    if safetensors_header(path) is None:
        if _looks_like_pickle(head):
            raise WeightFileError(f"{path}: this is a PyTorch pickle (.pt/.ckpt/.bin), which trajir never "
                                  "unpickles; convert it to safetensors")
        declared = struct.unpack("<Q", head)[0] if len(head) == 8 else None
        raise WeightFileError(f"{path}: not a readable safetensors file (no JSON header: header length field "
                              f"{declared}, file size {size} bytes); the file may be truncated or in another format")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as e:
        declared = struct.unpack("<Q", head)[0]
        raise WeightFileError(f"{path}: not a readable safetensors file ({e}); file size {size} bytes, header "
                              f"length field {declared}; the file may be truncated or in another format") from None
    return sd, metadata


def check_finite_weights(sd: dict, path):
    """Refuse NaN or inf weights (a diverged training run, a damaged file) before any work uses them."""
    bad = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise WeightFileError(f"{path}: {len(bad)} tensor(s) hold NaN or inf values ({_few(bad)}); the weights are "
                              "damaged (e.g. exported from a diverged training run)")


def take_diffusion_model(sd: dict, path) -> dict:
    """Strip ComfyUI's optional ``model.diffusion_model.`` prefix (a full checkpoint keeps the DiT under it)."""
    if not any(k.startswith(UNET_PREFIX) for k in sd):
        return sd
    stray = [k for k in sd if not k.startswith(UNET_PREFIX) and not k.startswith(CHECKPOINT_PREFIXES)]
    if stray:
        raise WeightFileError(f"{path}: keys outside {UNET_PREFIX!r} and the known checkpoint parts "
                              f"{list(CHECKPOINT_PREFIXES)}: {_few(stray)}")
    return {k[len(UNET_PREFIX):]: v for k, v in sd.items() if k.startswith(UNET_PREFIX)}


def split_fp8_scales(sd: dict) -> tuple:
    """``(weights, scales)``: ComfyUI "scaled fp8" files store ``weight / scale_weight`` in fp8 next to a
    ``scaled_fp8`` marker and per-layer ``scale_weight`` / ``scale_input`` (``comfy.ops.scaled_fp8_ops``). The
    markers are split off so that the remaining keys are the model's."""
    if "scaled_fp8" not in sd:
        return sd, {}
    scales = {k[:-len("scale_weight")] + "weight": v for k, v in sd.items() if k.endswith(".scale_weight")}
    weights = {k: v for k, v in sd.items()
               if k != "scaled_fp8" and not k.endswith((".scale_weight", ".scale_input"))}
    return weights, scales


def dequantize(sd: dict, scales: dict, dtype: torch.dtype) -> dict:
    """Cast every tensor to ``dtype`` (through float32, times its fp8 scale when it has one). Entries are taken
    out of ``sd`` one by one, so a 12 B model is never held twice in full."""
    out = {}
    for k in list(sd):
        t = sd.pop(k)
        if k in scales:
            t = t.to(torch.float32) * scales[k].to(torch.float32)
        elif t.dtype != dtype:
            t = t.to(torch.float32)
        out[k] = t.to(dtype)
    return out


def detect_kind(sd: dict, metadata: dict, path) -> str:
    """Which trajir model the keys describe; the metadata's ``trajir_kind`` must agree when present."""
    keys = set(sd)
    if "controlnet_blocks.0.weight" in keys and KEY_FLUX in keys and "input_hint_block.0.weight" in keys:
        kind = "xlabs_controlnet"
    elif KEY_INSTANTX in keys and KEY_DIFFUSERS_FLUX in keys:
        kind = "instantx_controlnet"
    elif KEY_FLUX in keys and "img_in.weight" in keys and "controlnet_blocks.0.weight" not in keys:
        kind = "flux"
    elif "encoder.conv_in.weight" in keys and "decoder.conv_in.weight" in keys:
        kind = "autoencoder"
    elif "encoder.conv_in.weight" in keys and not any(k.startswith("decoder.") for k in keys):
        kind = "lq_encoder"
    elif metadata.get(META_KIND) == "compact_unet":
        kind = "compact_unet"
    else:
        raise WeightFileError(f"{path}: unknown model layout (first keys {_few(sorted(keys))}); trajir loads BFL "
                              "FLUX DiTs, XLabs and InstantX / diffusers FLUX ControlNets, the FLUX autoencoder, LQ "
                              "encoders and its own compact U-Nets")
    declared = metadata.get(META_KIND)
    if declared is not None and declared != kind:
        raise WeightFileError(f"{path}: metadata says {META_KIND}={declared!r} but the keys hold a {kind}")
    return kind


def _config_from_metadata(metadata: dict, cls, path):
    if META_CONFIG not in metadata:
        return None
    try:
        return cls.from_dict(json.loads(metadata[META_CONFIG]))
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise WeightFileError(f"{path}: invalid {META_CONFIG} metadata for {cls.__name__}: {e}") from None


def _autoencoder_params(sd: dict, path) -> AutoEncoderParams:
    """FLUX-AE geometry from shapes (ComfyUI hard-codes it; reading it lets tiny test files load too)."""
    try:
        ch, in_ch = sd["encoder.conv_in.weight"].shape[:2]
        levels = count_blocks(sd, "encoder.down.")
        mult = [sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0] // ch for i in range(levels)]
        out_ch = sd["decoder.conv_out.weight"].shape[0] if "decoder.conv_out.weight" in sd else in_ch
        return AutoEncoderParams(in_channels=in_ch, out_channels=out_ch, ch=ch, ch_mult=mult,
                                 num_res_blocks=count_blocks(sd, "encoder.down.0.block."),
                                 z_channels=sd["encoder.conv_out.weight"].shape[0] // 2)
    except KeyError as e:
        raise WeightFileError(f"{path}: missing key {e.args[0]!r} needed to infer the autoencoder configuration") \
            from None


def instantx_params_from_state_dict(sd: dict, path) -> InstantXParams:
    """``InstantXParams`` from the diffusers keys and shapes of a ``FluxControlNetModel`` file.

    Block and mode counts come from the keys, widths from shapes (``x_embedder`` gives the width and the latent
    channels, the QK-norm size the head dimension); the RoPE split is FLUX's 2:7:7. Files whose hint embedding is
    not the latent's patch width (inpainting variants with a mask channel) or that carry a pixel-space
    ``input_hint_block`` are refused: trajir feeds these ControlNets the VAE latent only.
    """
    def shape(key):
        if key not in sd:
            raise WeightFileError(f"{path}: missing key {key!r}, needed to infer the InstantX ControlNet configuration")
        return tuple(sd[key].shape)

    hidden, packed = shape(KEY_DIFFUSERS_FLUX)
    depth = count_blocks(sd, "transformer_blocks.")
    single = count_blocks(sd, "single_transformer_blocks.")
    if depth == 0:
        raise WeightFileError(f"{path}: an InstantX ControlNet needs at least one transformer_blocks.N (double block)")
    if any(k.startswith("input_hint_block.") for k in sd):
        raise WeightFileError(f"{path}: this diffusers FLUX ControlNet has a pixel-space input_hint_block "
                              "(conditioning_embedding_channels); trajir supports the latent-hint layout of the "
                              "InstantX, jasperai and Shakker-Labs files only")
    hint_width = shape(KEY_INSTANTX)[1]
    if hint_width != packed:
        raise WeightFileError(f"{path}: {KEY_INSTANTX} takes {hint_width} channels, but the latent patches have "
                              f"{packed} (x_embedder); extra hint channels (e.g. an inpainting mask) are not supported")
    head_dim = shape("transformer_blocks.0.attn.norm_q.weight")[0]
    if head_dim < 1 or hidden % head_dim:
        raise WeightFileError(f"{path}: x_embedder width {hidden} is not a multiple of the QK-norm size {head_dim}")
    try:
        return InstantXParams(
            in_channels=packed // (PATCH * PATCH), out_channels=packed // (PATCH * PATCH),
            vec_in_dim=shape("time_text_embed.text_embedder.linear_1.weight")[1],
            context_in_dim=shape("context_embedder.weight")[1], hidden_size=hidden,
            mlp_ratio=shape("transformer_blocks.0.ff.net.0.proj.weight")[0] / hidden, num_heads=hidden // head_dim,
            depth=depth, depth_single_blocks=single, axes_dim=default_axes_dim(head_dim),
            qkv_bias="transformer_blocks.0.attn.to_q.bias" in sd,
            guidance_embed="time_text_embed.guidance_embedder.linear_1.weight" in sd,
            num_modes=shape("controlnet_mode_embedder.weight")[0] if "controlnet_mode_embedder.weight" in sd else 0)
    except ValueError as e:
        raise WeightFileError(f"{path}: cannot build an InstantX ControlNet from this file: {e}") from None


def file_layout(model: nn.Module, sd: dict) -> dict:
    """``sd`` (the model's own key names) as the file stores it: diffusers names for an InstantX ControlNet."""
    if model.kind == "instantx_controlnet":
        return bfl_to_diffusers(sd, model.params.hidden_size)
    return sd


def build_for(kind: str, sd: dict, metadata: dict, path) -> nn.Module:
    """The module (on the meta device, no storage) for a file's kind and configuration."""
    try:
        with torch.device("meta"):
            if kind in ("flux", "xlabs_controlnet"):
                params = _config_from_metadata(metadata, FluxParams, path) or params_from_state_dict(sd)
                return Flux(params) if kind == "flux" else XLabsControlNet(params)
            if kind == "instantx_controlnet":
                params = (_config_from_metadata(metadata, InstantXParams, path)
                          or instantx_params_from_state_dict(sd, path))
                return InstantXControlNet(params)
            if kind in ("autoencoder", "lq_encoder"):
                params = _config_from_metadata(metadata, AutoEncoderParams, path) or _autoencoder_params(sd, path)
                return AutoEncoder(params) if kind == "autoencoder" else LQEncoder(params)
            cfg = _config_from_metadata(metadata, CompactUNetConfig, path)
            if cfg is None:
                raise WeightFileError(f"{path}: a compact U-Net file must carry its configuration as JSON in the "
                                      f"safetensors metadata field {META_CONFIG!r}")
            return CompactUNet(cfg)
    except WeightFileError:
        raise
    except ValueError as e:
        raise WeightFileError(f"{path}: cannot build a {kind} from this file: {e}") from None


def check_state_dict(model: nn.Module, sd: dict, path):
    """Every key present, none extra, every shape equal, in the file's own key names; the error lists what
    differs."""
    expected = file_layout(model, model.state_dict())
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    wrong = [f"{k} {tuple(sd[k].shape)} (expected {tuple(v.shape)})" for k, v in expected.items()
             if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s) {_few(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s) {_few(unexpected)}")
    if wrong:
        problems.append(f"{len(wrong)} wrong shape(s) {_few(wrong)}")
    if problems:
        raise WeightFileError(f"{path}: does not match a {model.kind} with {model.config}: " + "; ".join(problems))


def load(path, device="cpu", dtype=None) -> nn.Module:
    """Load any trajir model file; ``model.kind`` says which one, ``model.config`` holds its configuration.

    ``dtype`` defaults to float32 (half-precision and fp8 files are upcast); pass ``torch.bfloat16`` to keep a
    12 B FLUX at 24 GB. The model is returned in eval mode with ``requires_grad`` on, ready for ``freeze`` or
    training.
    """
    dtype = torch.float32 if dtype is None else dtype
    if dtype not in COMPUTE_DTYPES:
        raise ValueError(f"dtype must be one of {[str(d) for d in COMPUTE_DTYPES]} (the models compute in their "
                         f"weights' dtype), got {dtype!r}")
    sd, metadata = read_safetensors(path)
    sd, scales = split_fp8_scales(take_diffusion_model(sd, path))
    kind = detect_kind(sd, metadata, path)
    model = build_for(kind, sd, metadata, path)
    check_state_dict(model, sd, path)
    sd = dequantize(sd, scales, dtype)
    check_finite_weights(sd, path)
    if kind == "instantx_controlnet":
        sd = diffusers_to_bfl(sd)
    model.load_state_dict({k: v.to(device) for k, v in sd.items()}, strict=True, assign=True)
    return model.eval()


def save(model: nn.Module, path, metadata=None) -> pathlib.Path:
    """Write ``model`` as safetensors in its consumer's layout (BFL / XLabs / diffusers ``FluxControlNetModel`` /
    ``ae.safetensors`` keys, no prefix), tensors in their current dtype, with ``trajir_kind`` and
    ``trajir_config`` metadata; atomic replace."""
    kind = getattr(model, "kind", None)
    if kind not in KINDS:
        raise ValueError(f"model must be one of trajir's models ({', '.join(KINDS)}), got {type(model).__name__}")
    extra = dict(metadata or {})
    if any(not isinstance(k, str) or not isinstance(v, str) for k, v in extra.items()):
        raise ValueError("metadata must map str to str (safetensors metadata is text)")
    reserved = sorted({META_KIND, META_CONFIG} & set(extra))
    if reserved:
        raise ValueError(f"metadata keys {reserved} are written by trajir itself")
    extra.update({META_KIND: kind, META_CONFIG: json.dumps(model.config.to_dict(), sort_keys=True)})
    path = pathlib.Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"folder {str(path.parent)!r} for {path.name!r} does not exist")
    write_safetensors(path, file_layout(model, model.state_dict()), extra)
    return path


def _few(items, n: int = 5) -> str:
    items = list(items)
    return str(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")
