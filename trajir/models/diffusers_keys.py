"""FLUX trunk weights between BFL key names (ours) and diffusers' ``FluxTransformer2DModel`` /
``FluxControlNetModel`` names.

Two things differ. Names: ``img_in`` is ``x_embedder``, ``double_blocks.N`` are ``transformer_blocks.N``,
``single_blocks.N`` are ``single_transformer_blocks.N``, and so on (``_DOUBLE``, ``_SINGLE``, ``_EMBEDDERS``).
Fused matrices: BFL stores q, k and v of a stream as one ``qkv`` matrix and a single block's q, k, v and MLP input as
one ``linear1``; diffusers stores them separately, so those rows are split on the way out and concatenated on the
way back. Both layouts order the adaLN chunks (shift, scale, gate) alike, so modulation weights copy unchanged.
Keys outside the trunk (``controlnet_*``) pass through unchanged.
"""
import re

import torch

# BFL name inside a double block -> diffusers name inside a transformer block (same tensor, renamed)
_DOUBLE = {
    "img_mod.lin": "norm1.linear",
    "txt_mod.lin": "norm1_context.linear",
    "img_attn.proj": "attn.to_out.0",
    "txt_attn.proj": "attn.to_add_out",
    "img_mlp.0": "ff.net.0.proj",
    "img_mlp.2": "ff.net.2",
    "txt_mlp.0": "ff_context.net.0.proj",
    "txt_mlp.2": "ff_context.net.2",
}
_DOUBLE_NORMS = {
    "img_attn.norm.query_norm.scale": "attn.norm_q.weight",
    "img_attn.norm.key_norm.scale": "attn.norm_k.weight",
    "txt_attn.norm.query_norm.scale": "attn.norm_added_q.weight",
    "txt_attn.norm.key_norm.scale": "attn.norm_added_k.weight",
}
# fused BFL matrix -> its diffusers parts, in row order
_DOUBLE_FUSED = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
}
_SINGLE = {"modulation.lin": "norm.linear", "linear2": "proj_out"}
_SINGLE_NORMS = {"norm.query_norm.scale": "attn.norm_q.weight", "norm.key_norm.scale": "attn.norm_k.weight"}
_SINGLE_FUSED = {"linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")}
_EMBEDDERS = {
    "img_in": "x_embedder",
    "txt_in": "context_embedder",
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
}
_BFL_BLOCK = re.compile(r"^(double_blocks|single_blocks)\.(\d+)\.(.+)$")
_DIFFUSERS_BLOCK = re.compile(r"^(transformer_blocks|single_transformer_blocks)\.(\d+)\.(.+)$")


def _split_sizes(hidden: int, rows: int, parts: int) -> list:
    # q, k, v are hidden rows each; a single block's MLP input takes the remaining rows
    return [hidden] * parts if parts == 3 else [hidden] * 3 + [rows - 3 * hidden]


def _renamed(name: str, table: dict, norms: dict):
    if name in norms:
        return norms[name]
    stem, _, end = name.rpartition(".")
    if stem in table and end in ("weight", "bias"):
        return f"{table[stem]}.{end}"
    return None


def bfl_to_diffusers(sd: dict, hidden: int) -> dict:
    """A BFL-named state dict (``img_in``, ``double_blocks``, ``single_blocks``, ...) in diffusers names.

    ``hidden`` is the model width (the row count of each of q, k and v). Tensors are views or splits of the
    inputs; meta tensors work too (shape-only checks).
    """
    out = {}
    for key, value in sd.items():
        match = _BFL_BLOCK.match(key)
        if match is None:
            stem, _, end = key.rpartition(".")
            out[f"{_EMBEDDERS[stem]}.{end}" if stem in _EMBEDDERS else key] = value
            continue
        kind, index, name = match.groups()
        table, norms, fused = ((_DOUBLE, _DOUBLE_NORMS, _DOUBLE_FUSED) if kind == "double_blocks"
                               else (_SINGLE, _SINGLE_NORMS, _SINGLE_FUSED))
        prefix = f"{'transformer_blocks' if kind == 'double_blocks' else 'single_transformer_blocks'}.{index}."
        stem, _, end = name.rpartition(".")
        if stem in fused:
            parts = fused[stem]
            for part, piece in zip(parts, torch.split(value, _split_sizes(hidden, value.shape[0], len(parts)))):
                out[f"{prefix}{part}.{end}"] = piece
            continue
        renamed = _renamed(name, table, norms)
        if renamed is None:
            raise ValueError(f"no diffusers name for the FLUX key {key!r}")
        out[prefix + renamed] = value
    return out


def diffusers_to_bfl(sd: dict) -> dict:
    """The inverse of ``bfl_to_diffusers``: diffusers names back to BFL, q/k/v (and the MLP input) concatenated.

    Keys that are not part of the FLUX trunk pass through unchanged (the caller's key check reports strays). A
    block that lacks a part of a fused matrix raises, naming the block and the missing parts.
    """
    inverse_embedders = {v: k for k, v in _EMBEDDERS.items()}
    out, pending = {}, {}   # pending: BFL fused key -> (its diffusers parts in order, {part: tensor}, block name)
    for key, value in sd.items():
        match = _DIFFUSERS_BLOCK.match(key)
        if match is None:
            stem, _, end = key.rpartition(".")
            out[f"{inverse_embedders[stem]}.{end}" if stem in inverse_embedders else key] = value
            continue
        kind, index, name = match.groups()
        double = kind == "transformer_blocks"
        table, norms, fused = ((_DOUBLE, _DOUBLE_NORMS, _DOUBLE_FUSED) if double
                               else (_SINGLE, _SINGLE_NORMS, _SINGLE_FUSED))
        prefix = f"{'double_blocks' if double else 'single_blocks'}.{index}."
        inverse_norms = {v: k for k, v in norms.items()}
        inverse = {v: k for k, v in table.items()}
        stem, _, end = name.rpartition(".")
        if name in inverse_norms:
            out[prefix + inverse_norms[name]] = value
        elif stem in inverse and end in ("weight", "bias"):
            out[f"{prefix}{inverse[stem]}.{end}"] = value
        else:
            target = next((f for f, parts in fused.items() if stem in parts), None)
            if target is None or end not in ("weight", "bias"):
                out[key] = value
                continue
            entry = pending.setdefault(f"{prefix}{target}.{end}", (fused[target], {}, f"{kind}.{index}"))
            entry[1][stem] = value
    for key, (parts, pieces, block) in pending.items():
        missing = [p for p in parts if p not in pieces]
        if missing:
            raise ValueError(f"{block} has {sorted(pieces)} but lacks {missing} ({key.rpartition('.')[2]})")
        out[key] = torch.cat([pieces[p] for p in parts], dim=0)
    return out
