"""TrajIR Compact Restore: IMAGE -> IMAGE with a compact task-specific restorer, no FLUX needed.

The shipped default restorers (``trajir/weights/``) and any compact model exported by ``python -m trajir.train``
placed in ``ComfyUI/models/trajir/`` are offered. Each file carries its sampling recipe (steps, start, guidance, colour step).
"""
import os

import torch

from ..trajir.checks import SEED_MAX, require_seed, require_unit_interval
from ..trajir.compact import load_compact, restore, shipped_models
from ..trajir.tiling import tile_overlap
from .comfy_bridge import bchw_to_image, check_interrupt, image_to_bchw, model_folder_paths

MODEL_FOLDER = "trajir"
SHIPPED_SUFFIX = " (shipped)"
# the node's colour choices -> restore()'s colour argument (None: the recipe's step)
COLOUR_CHOICES = {"from model": None, "off": "", "lq_power_law": "lq_power_law"}


def model_choices():
    """Shipped restorers first (``"lowlight (shipped)"``), then the files in ``models/trajir``."""
    choices = [task + SHIPPED_SUFFIX for task in shipped_models()]
    if not model_folder_paths(MODEL_FOLDER):  # outside ComfyUI
        return choices
    import folder_paths

    return choices + [f for f in folder_paths.get_filename_list(MODEL_FOLDER) if f.endswith(".safetensors")]


def model_file(choice):
    """The file behind a choice of ``model_choices``; errors name the choice and the folder."""
    if choice.endswith(SHIPPED_SUFFIX):
        task = choice[: -len(SHIPPED_SUFFIX)]
        models = shipped_models()
        if task not in models:
            raise ValueError(f"model {choice!r}: no shipped restorer for task {task!r}; shipped: {sorted(models)}")
        return str(models[task])
    import folder_paths

    path = folder_paths.get_full_path(MODEL_FOLDER, choice)
    if path is None:
        raise ValueError(f"model {choice!r} not found; put compact models exported by python -m trajir.train in "
                         f"{os.path.join(folder_paths.models_dir, MODEL_FOLDER)}")
    return path


class TrajIRCompactRestore:
    """Restores images with a compact conditional U-Net trained by the FLUX-IR recipe (RL + distillation)."""

    DESCRIPTION = ("Restores an IMAGE batch with a compact task-specific model (low light, underwater, ...): "
                   "1-2 model evaluations per tile for distilled students. Runs on the CPU or the GPU.")
    CATEGORY = "TrajIR/restore"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("The restored images, at the input size.",)
    FUNCTION = "restore"

    @classmethod
    def INPUT_TYPES(cls):
        choices = model_choices()
        return {"required": {
            "image": ("IMAGE", {"tooltip": "The low-quality images to restore."}),
            "model": (choices, {"default": choices[0] if choices else "",
                                "tooltip": "A shipped restorer (by task) or a compact model file from "
                                           "ComfyUI/models/trajir/ exported by python -m trajir.train."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 2**63 - 1,
                             "tooltip": "Seed of the sampling noise (the result is the same on every device)."}),
            "tile": ("INT", {"default": 256, "min": 0, "max": 4096, "step": 32,
                             "tooltip": "Tile size for large images (0 restores the whole image at once; else at "
                                        "least 32)."}),
        }, "optional": {
            "colour": (list(COLOUR_CHOICES), {
                "default": "from model",
                "tooltip": "Colour step after sampling: the model's own (the shipped low-light restorer takes its "
                           "colour from the input under the low-light power law), none, or that step forced."}),
        }}

    def restore(self, image, model, seed, tile, colour="from model"):
        import comfy.model_management
        import comfy.utils

        images = image_to_bchw("image", image)
        require_unit_interval("image", images)
        require_seed("seed", seed)
        tile_overlap(tile)  # a tile size that cannot work fails here, before the model is loaded
        if colour not in COLOUR_CHOICES:
            raise ValueError(f"colour must be one of {list(COLOUR_CHOICES)}, got {colour!r}")
        device = comfy.model_management.get_torch_device()
        net, recipe = load_compact(model_file(model), device=device)
        bar = comfy.utils.ProgressBar(images.shape[0])
        out = []
        for i in range(images.shape[0]):
            check_interrupt()
            out.append(restore(net, recipe, images[i:i + 1], seed=(seed + i) % (SEED_MAX + 1), tile=tile,
                               progress=lambda done, total: check_interrupt(), colour=COLOUR_CHOICES[colour]))
            bar.update(1)
        return (bchw_to_image(torch.cat(out)),)
