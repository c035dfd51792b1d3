"""Adapters shared by the nodes: ComfyUI IMAGE <-> ``[B, C, H, W]``, LATENT checks, model-sampling detection,
SDE / guidance windows, safe paths inside the output folder, the ``iqa`` model folder.

Nothing here imports ComfyUI at module level (docs/comfyui.md §1: the pack must import without it); the functions
that need ``comfy`` / ``folder_paths`` import them when called.
"""
import math
import os
import re

import torch

WINDOW_UNITS = ("percent", "sigma")
IQA_FOLDER = "iqa"


def image_to_bchw(name, image):
    """A ComfyUI IMAGE ``[B, H, W, C]`` (docs/comfyui.md §2) as float32 ``[B, 3, H, W]``; an alpha channel is
    dropped."""
    if not torch.is_tensor(image) or image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
        shape = tuple(image.shape) if torch.is_tensor(image) else type(image).__name__
        raise ValueError(f"{name} must be a ComfyUI IMAGE [batch, height, width, 1/3/4 channels], got {shape}")
    _require_items(name, image.shape[0], image.shape[1:3], "images", tuple(image.shape))
    x = image.float()[..., :3].permute(0, 3, 1, 2)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.contiguous()


def bchw_to_image(x):
    """``[B, 3, H, W]`` float in 0..1 as a ComfyUI IMAGE ``[B, H, W, 3]`` float32 on the CPU."""
    return x.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().contiguous()


def latent_samples(name, latent, channels=None, frames=False):
    """The ``samples`` tensor of a LATENT dict, checked against the model's latent channels: ``[B, C, h, w]``, or
    with ``frames`` also the video-VAE layout ``[B, C, T, h, w]`` (Qwen-Image and Wan latents, T = 1 for an
    image)."""
    if not isinstance(latent, dict) or not torch.is_tensor(latent.get("samples")):
        raise ValueError(f"{name} must be a LATENT (a dict with a 'samples' tensor), got {type(latent).__name__}")
    samples = latent["samples"]
    if frames and samples.ndim not in (4, 5):
        raise ValueError(f"{name} must hold image latents [batch, channels, height, width] or video-VAE latents "
                         f"[batch, channels, frames, height, width], got shape {tuple(samples.shape)}")
    if not frames and samples.ndim != 4:
        raise ValueError(f"{name} must hold image latents [batch, channels, height, width], got shape "
                         f"{tuple(samples.shape)}")
    _require_items(name, samples.shape[0], samples.shape[2:], "latents", tuple(samples.shape))
    if channels is not None and samples.shape[1] != channels:
        raise ValueError(f"{name} has {samples.shape[1]} channels but the model expects {channels} (shape "
                         f"{tuple(samples.shape)}); encode the image with the VAE that belongs to this model")
    return samples


def _require_items(name, batch, size, what, shape):
    """A batch of at least one item of non-zero size (an empty batch otherwise fails deep inside, unnamed)."""
    if batch == 0:
        raise ValueError(f"{name} is an empty batch (0 {what}, shape {shape}); expected at least one")
    if 0 in tuple(size):
        raise ValueError(f"{name} has a height, width or frame count of 0 (shape {shape})" if len(size) == 3
                         else f"{name} has a height or width of 0 (shape {shape})")


def model_latent_channels(model_patcher):
    """The number of latent channels the model works in (16 for FLUX / SD3, 4 for SD1.x / SDXL)."""
    return int(model_patcher.get_model_object("latent_format").latent_channels)


def parameterisation(model_sampling):
    """``"rf"`` for rectified-flow models (CONST model sampling: FLUX, SD3), ``"ve"`` for noise- and
    v-prediction models (EPS and its subclasses: SD1.x, SDXL), which k-diffusion presents as ``x0 + sigma eps``."""
    import comfy.model_sampling

    if isinstance(model_sampling, comfy.model_sampling.CONST):
        return "rf"
    if isinstance(model_sampling, comfy.model_sampling.EPS):
        return "ve"
    kinds = [c.__name__ for c in type(model_sampling).__mro__[1:-1]]
    raise ValueError(f"unsupported model sampling {kinds}: TrajIR nodes handle rectified-flow models (CONST: "
                     "FLUX, SD3) and noise-prediction models (EPS / V_PREDICTION: SD1.x, SDXL)")


def window_sigmas(unit, start, end, percent_to_sigma):
    """The sigma interval ``(sigma_high, sigma_low)`` of a window given in sampling percent or in sigma.

    ``percent``: ``0 <= start <= end <= 1`` through the model's ``percent_to_sigma`` (0 is the start of sampling,
    1 its end, as ComfyUI's ControlNet start/end). ``sigma``: ``start >= end >= 0``, noise to data.
    """
    if unit not in WINDOW_UNITS:
        raise ValueError(f"window unit must be one of {WINDOW_UNITS}, got {unit!r}")
    start, end = float(start), float(end)
    if not (math.isfinite(start) and math.isfinite(end)):
        raise ValueError(f"window start and end must be finite, got {start} and {end}")
    if unit == "percent":
        if not 0.0 <= start <= end <= 1.0:
            raise ValueError(f"a window in percent needs 0 <= start <= end <= 1 (fractions of the sampling run), "
                             f"got start {start} and end {end}")
        return float(percent_to_sigma(start)), float(percent_to_sigma(end))
    if not start >= end >= 0.0:
        raise ValueError(f"a window in sigma needs start >= end >= 0 (sampling runs from high to low sigma), got "
                         f"start {start} and end {end}")
    return start, end


def check_interrupt():
    """Raise ComfyUI's interrupt exception if the user pressed Cancel (docs/comfyui.md §5)."""
    import comfy.model_management

    comfy.model_management.throw_exception_if_processing_interrupted()


def resolve_output_path(output_dir, name, extension=".safetensors"):
    """A new file path for ``name`` (a relative path, sub-folders allowed) inside ``output_dir``.

    Refuses empty names, absolute paths, ``..`` components and paths that resolve (through symlinks) outside the
    folder. An existing file is never overwritten: the first free ``name_00001``, ``name_00002``, ... is taken
    instead, as ComfyUI's SaveImage numbers its files.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError("the file name is empty; give a name relative to ComfyUI's output folder")
    name = name.strip()
    if "\x00" in name:
        raise ValueError(f"the file name {name!r} contains a NUL character")
    parts = re.split(r"[\\/]", name)
    if os.path.isabs(name) or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise ValueError(f"the file name {name!r} is an absolute path; give a name relative to ComfyUI's output "
                         "folder")
    if ".." in parts:
        raise ValueError(f"the file name {name!r} contains '..'; files are written only inside ComfyUI's output "
                         "folder")
    root = os.path.realpath(output_dir)
    stem = os.path.join(root, *[p for p in parts if p not in ("", ".")])
    stem = stem.removesuffix(extension)
    path = f"{stem}{extension}"
    counter = 0
    while os.path.lexists(path):
        counter += 1
        path = f"{stem}_{counter:05d}{extension}"
    real = os.path.realpath(path)
    if os.path.commonpath([root, real]) != root:
        raise ValueError(f"the file name {name!r} resolves to {real}, outside ComfyUI's output folder {root}")
    return path


def output_path(name, extension=".safetensors"):
    """``resolve_output_path`` inside ComfyUI's output folder."""
    import folder_paths

    return resolve_output_path(folder_paths.get_output_directory(), name, extension)


def register_model_folder(name):
    """Register ``models/<name>`` with ComfyUI's folder_paths (``iqa``: the learned-metric weights, ``trajir``: the
    compact restorers); a no-op returning False when the pack is imported without ComfyUI."""
    try:
        import folder_paths
    except ImportError:
        return False
    folder_paths.add_model_folder_path(name, os.path.join(folder_paths.models_dir, name))
    return True


def model_folder_paths(name):
    """The folders registered for ``name``, registering ``models/<name>`` on first use (empty outside ComfyUI)."""
    try:
        import folder_paths
    except ImportError:
        return []
    if name not in folder_paths.folder_names_and_paths:
        register_model_folder(name)
    return folder_paths.get_folder_paths(name)


def iqa_dirs():
    """The registered ``iqa`` folders (empty outside ComfyUI)."""
    return model_folder_paths(IQA_FOLDER)
