"""Prompt embeddings for FLUX training: a FLUX CONDITIONING (T5 tokens, pooled CLIP-L, guidance) saved by the
"TrajIR Save Conditioning" node, read by the trainer. Without a file the trainer uses zeros (the paper's
"no prompt" baseline)."""
import torch

from .safefiles import read_tagged, require_keys, write_tagged

KIND = "flux_conditioning"


def save_conditioning(path, context, pooled, guidance=3.5, prompt="", overwrite=False):
    """``context`` ``[T, D]`` (T5 tokens; D = 4096 for FLUX), ``pooled`` ``[P]`` (CLIP-L, P = 768)."""
    if context.ndim == 3 and context.shape[0] == 1:
        context = context[0]
    if pooled.ndim == 2 and pooled.shape[0] == 1:
        pooled = pooled[0]
    if context.ndim != 2:
        raise ValueError(f"context must be [tokens, dim] (or [1, tokens, dim]), got shape {tuple(context.shape)}")
    if pooled.ndim != 1:
        raise ValueError(f"pooled must be [dim] (or [1, dim]), got shape {tuple(pooled.shape)}")
    return write_tagged(path, {"context": context.float(), "pooled": pooled.float()}, KIND,
                        {"guidance": float(guidance), "prompt": prompt}, overwrite)


def load_conditioning(path):
    """``dict(context [T, D], pooled [P], guidance float, prompt str)``."""
    tensors, meta = read_tagged(path, KIND)
    require_keys(path, tensors, ("context", "pooled"))
    return {"context": tensors["context"], "pooled": tensors["pooled"],
            "guidance": float(meta.get("guidance", 3.5)), "prompt": meta.get("prompt", "")}


def zero_conditioning(tokens=1, context_dim=4096, pooled_dim=768, guidance=3.5):
    return {"context": torch.zeros(tokens, context_dim), "pooled": torch.zeros(pooled_dim), "guidance": guidance,
            "prompt": ""}
