"""Overlapping tiles blended with linear ramps: the one tiling helper (the autoencoder's tiled encode and decode,
tiled restoration).

Tiles start every ``tile - overlap`` samples and the last one sits flush with the end. Each tile's output is
weighted by the product of per-axis linear ramps over its inner edges (flat at the image border) and the sum is
normalised by the summed weights, so a map that commutes with cropping (a tile-local map) is reproduced exactly.
The tile count is about ``(H / (tile - overlap)) (W / (tile - overlap))``, so tiled restoration keeps the overlap
at most half a tile (``tile_overlap``): a 33 px tile with a 32 px overlap would step by one pixel.
"""
import torch
from torch import Tensor

MIN_TILE = 32       # tiled restoration: smaller tiles see too little of the image, and their count grows as 1 / tile^2
MAX_OVERLAP = 32    # tiled restoration's default blending width, at most a quarter of the tile


def check_tiling(tile: int, overlap: int, multiple: int = 1, unit: str = "pixels"):
    """``tile`` a positive multiple of ``multiple``; ``overlap`` a multiple of it in ``[0, tile)``."""
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < multiple or tile % multiple:
        raise ValueError(f"tile must be a positive multiple of {multiple} {unit}, got {tile!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or overlap < 0 or overlap % multiple \
            or overlap >= tile:
        raise ValueError(f"overlap must be a multiple of {multiple} {unit} in [0, tile={tile}), got {overlap!r}")


def tile_overlap(tile, overlap=None, name="tile"):
    """Tiled restoration's blending width for ``tile`` (0: no tiling, no overlap): ``overlap``, or by default
    ``min(32, tile // 4)``.

    Tiles start every ``tile - overlap`` pixels or less (the last one sits flush with the end), so the overlap must
    stay well below the tile for the count to stay near ``(H / tile) (W / tile)``: at most ``tile // 2`` (tiles step
    by at least half a tile; by default, three quarters). A 33 px tile with the old fixed 32 px overlap stepped by
    1 px.
    Refuses tiles below ``MIN_TILE`` (other than 0) with an error naming ``name``.
    """
    if isinstance(tile, bool) or not isinstance(tile, int) or (tile != 0 and tile < MIN_TILE):
        raise ValueError(f"{name} must be 0 (the whole image at once) or at least {MIN_TILE} px, got {tile!r}")
    if tile == 0 or overlap is None:
        return min(MAX_OVERLAP, tile // 4)
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap <= tile // 2:
        raise ValueError(f"overlap must be >= 0 and at most tile // 2 ({tile // 2} for tile {tile}), got {overlap!r}")
    return overlap


def tile_starts(length: int, tile: int, overlap: int) -> list:
    """Tile origins along one axis: stride ``tile - overlap``, the last tile flush with the end."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, tile - overlap))
    return starts + [length - tile]


def ramp(n: int, width: int, at_start: bool, at_end: bool) -> Tensor:
    """Blend weights along one tile axis: linear ramps of ``width`` samples on inner edges, flat at the borders
    (``at_start`` / ``at_end``: the tile touches the image's border there)."""
    w = torch.ones(n)
    if width > 0:
        pos = torch.arange(n, dtype=torch.float32) + 0.5
        if not at_start:
            w = torch.minimum(w, pos / width)
        if not at_end:
            w = torch.minimum(w, (n - pos) / width)
    return w


def blend_tiles(fn, x: Tensor, tile: int, overlap: int, up: int = 1, down: int = 1, out_channels: int = None,
                progress=None) -> Tensor:
    """Apply ``fn`` (which rescales by ``up / down``) to overlapping ``tile``-sized tiles of ``x`` ``[B, C, H, W]``
    and blend the outputs; returns ``[B, out_channels, H * up / down, W * up / down]`` in ``x``'s dtype.

    ``out_channels`` defaults to ``x``'s channels; ``progress(done, total)`` is called after each tile.
    """
    b, c, h, w = x.shape
    out_channels = c if out_channels is None else out_channels
    out_h, out_w = h * up // down, w * up // down
    out = torch.zeros(b, out_channels, out_h, out_w, dtype=torch.float32, device=x.device)
    weight = torch.zeros(1, 1, out_h, out_w, dtype=torch.float32, device=x.device)
    width = overlap * up // down
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    th, tw = min(tile, h), min(tile, w)
    done = 0
    for y0 in ys:
        for x0 in xs:
            piece = fn(x[:, :, y0:y0 + th, x0:x0 + tw]).float()
            oy, ox, oh, ow = y0 * up // down, x0 * up // down, th * up // down, tw * up // down
            mask = (ramp(oh, width, y0 == 0, y0 + th == h)[:, None]
                    * ramp(ow, width, x0 == 0, x0 + tw == w)[None, :]).to(x.device)
            out[:, :, oy:oy + oh, ox:ox + ow] += piece * mask
            weight[:, :, oy:oy + oh, ox:ox + ow] += mask
            done += 1
            if progress is not None:
                progress(done, len(ys) * len(xs))
    return (out / weight).to(x.dtype)
