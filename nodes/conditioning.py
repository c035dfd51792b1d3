"""TrajIR Save Conditioning: a FLUX CONDITIONING (T5 tokens, pooled CLIP-L, guidance) as a prompt-embedding file
for ``python -m trajir.train`` (``trajir.conditioning``), written inside ComfyUI's output folder only."""
import torch

from ..trajir.checks import require_finite
from ..trajir.conditioning import save_conditioning
from .comfy_bridge import output_path

FLUX_CONTEXT_DIM = 4096
FLUX_POOLED_DIM = 768


def flux_embedding(conditioning):
    """``(context [T, 4096], pooled [768], guidance)`` of a one-prompt FLUX CONDITIONING (docs/comfyui.md §2)."""
    if not isinstance(conditioning, list) or not conditioning:
        raise ValueError("conditioning must be a non-empty CONDITIONING list (e.g. from CLIPTextEncode)")
    if len(conditioning) != 1:
        raise ValueError(f"conditioning holds {len(conditioning)} entries; save one prompt at a time "
                         "(not a ConditioningCombine / Concat result)")
    context, options = conditioning[0][0], conditioning[0][1]
    if not torch.is_tensor(context) or context.ndim != 3 or context.shape[0] != 1:
        shape = tuple(context.shape) if torch.is_tensor(context) else type(context).__name__
        raise ValueError(f"the conditioning tokens must be [1, tokens, dim] (one prompt), got {shape}")
    if context.shape[1] == 0:
        raise ValueError(f"conditioning has no tokens (shape {tuple(context.shape)}); encode a prompt (an empty "
                         "prompt still gives tokens)")
    pooled = options.get("pooled_output")
    if context.shape[-1] != FLUX_CONTEXT_DIM or not torch.is_tensor(pooled) or pooled.shape[-1] != FLUX_POOLED_DIM:
        got = tuple(pooled.shape) if torch.is_tensor(pooled) else None
        raise ValueError(f"not a FLUX conditioning: expected T5 tokens of dim {FLUX_CONTEXT_DIM} and a pooled CLIP-L "
                         f"vector of dim {FLUX_POOLED_DIM}, got tokens {tuple(context.shape)} and pooled {got}; "
                         "encode with DualCLIPLoader (type flux) and CLIPTextEncode")
    require_finite("the T5 tokens of the conditioning", context)
    require_finite("the pooled CLIP-L vector", pooled)
    return context[0].float().cpu(), pooled.reshape(-1).float().cpu(), float(options.get("guidance", 3.5))


class TrajIRSaveConditioning:
    """Writes the prompt embedding the FLUX-IR trainer conditions on."""

    DESCRIPTION = ("Saves a FLUX CONDITIONING (T5 tokens, pooled CLIP-L, guidance) as a safetensors file under "
                   "ComfyUI's output folder, for python -m trajir.train (prompt embeddings).")
    CATEGORY = "TrajIR/training"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("path",)
    OUTPUT_TOOLTIPS = ("The path of the written file.",)
    OUTPUT_NODE = True
    FUNCTION = "save"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "conditioning": ("CONDITIONING", {"tooltip": "A FLUX text conditioning (CLIPTextEncode with a "
                                                             "flux DualCLIPLoader; FluxGuidance sets guidance)."}),
                "filename": ("STRING", {"default": "trajir/prompts/prompt",
                                        "tooltip": "Name relative to the output folder; '.safetensors' is added and "
                                                   "an existing file is never overwritten (a _00001 counter is "
                                                   "added)."}),
            },
            "optional": {
                "prompt": ("STRING", {"default": "", "multiline": True,
                                      "tooltip": "The prompt text, stored in the file's metadata for reference."}),
            },
        }

    def save(self, conditioning, filename, prompt=""):
        context, pooled, guidance = flux_embedding(conditioning)
        path = output_path(filename)
        save_conditioning(path, context, pooled, guidance=guidance, prompt=prompt)
        return {"ui": {"text": [path]}, "result": (path,)}
