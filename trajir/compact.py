"""Compact restorers: the sampling recipe a trained model carries, loading one (shipped or trained), and tiled
restoration with it (the library behind ``python -m trajir.restore`` and the Compact Restore node).

A compact restorer works in pixel space scaled to [-1, 1] and is conditioned on the LQ image. Its recipe says how
it samples: the grid, the grid indices it visits (all of them for the K-step ODE teacher, a few for a distilled
student), the LQ weight of the start state (Eq. (17)) and the negative-LQ-guidance strength (Eq. (19)-(20)). The
trainer stores the recipe in the exported file's metadata; ``restore`` reads it back.
"""
import json
import pathlib
from dataclasses import asdict, dataclass, field

import torch
from safetensors import safe_open

from .checks import require_image_batch, require_seed, require_unit_interval
from .colour import match_lq_colour, require_colour_step
from .grids import grid_from_description
from .tiling import blend_tiles, tile_overlap
from .trajectory import run_from_lq

RECIPE_KEY = "trajir_recipe"
WEIGHTS = pathlib.Path(__file__).resolve().parent / "weights"


@dataclass
class Recipe:
    grid: dict                                  # grids.*.describe()
    path: list = field(default_factory=list)    # grid indices visited, increasing, ending at the clean end
    lq_weight: float = None                     # weight of the LQ image in the start state (None: the schedule's)
    ngs_w: float = 0.0                          # negative LQ guidance strength inside each jump
    task: str = ""
    colour: str = ""                            # colour step after sampling: "" none, "lq_power_law" (trajir.colour)
    note: str = ""

    def __post_init__(self):
        grid = grid_from_description(self.grid)
        if not self.path:
            self.path = list(range(grid.steps + 1))
        self.path = [int(i) for i in self.path]
        if (len(self.path) < 2 or any(b <= a for a, b in zip(self.path, self.path[1:]))
                or self.path[0] < 0 or self.path[-1] != grid.steps):
            raise ValueError(f"recipe path must increase from a start index to the clean end {grid.steps}, "
                             f"got {self.path}")
        if self.lq_weight is not None and not 0.0 <= self.lq_weight <= 1.0:
            raise ValueError(f"recipe lq_weight must lie in [0, 1], got {self.lq_weight}")
        require_colour_step("recipe colour", self.colour)

    @property
    def nfe(self):
        return len(self.path) - 1

    def to_json(self):
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text):
        return cls(**json.loads(text))


def shipped_models():
    """``{task: path}`` of the default restorers shipped with the package (``trajir/weights/``)."""
    return {p.stem.removeprefix("compact_"): p for p in sorted(WEIGHTS.glob("compact_*.safetensors"))}


def load_compact(path, device="cpu"):
    """``(model, recipe)`` of a compact-model file exported by ``python -m trajir.train`` (eval mode)."""
    from .models import load

    net = load(path, device=device)
    if net.kind != "compact_unet":
        raise ValueError(f"{path} holds a {net.kind}; a compact restorer file is needed")
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if RECIPE_KEY not in meta:
        raise ValueError(f"{path} has no sampling recipe ({RECIPE_KEY} metadata); export it with python -m trajir.train")
    return net.eval().requires_grad_(False), Recipe.from_json(meta[RECIPE_KEY])


def finish_colour(images, lq, step):
    """``images`` (0..1) after the recipe's colour step ``step`` (``Recipe.colour``) against their ``lq`` images."""
    require_colour_step("colour step", step)
    return match_lq_colour(images, lq) if step == "lq_power_law" else images


def to_state(images):
    return images * 2 - 1


def to_images(states):
    return ((states + 1) / 2).clamp(0, 1)


@torch.no_grad()
def restore(model, recipe, lq, seed=0, tile=0, overlap=None, progress=None, colour=None):
    """Restore ``lq`` ``[B, 3, H, W]`` (0..1) with ``model`` following ``recipe``; returns images in 0..1.

    ``tile > 0`` (at least 32) processes overlapping tiles of that size and blends them over ``overlap`` pixels
    (default ``min(32, tile // 4)``; ``trajir.tiling.tile_overlap``), for large images on small memory; the noise is
    drawn once for the whole image (CPU, from ``seed``, an integer in [0, 2^64 - 1]), so tiles agree where they
    overlap.
    ``progress(done, total)`` is called after each tile. ``colour`` overrides the recipe's colour step (None: the
    recipe's; ``""``: none); it runs once on the whole image, after the tiles are blended.
    """
    require_image_batch("lq", lq)
    require_unit_interval("lq", lq)
    require_seed("seed", seed)
    overlap = tile_overlap(tile, overlap)
    colour = require_colour_step("colour", recipe.colour if colour is None else colour)  # before sampling
    grid = grid_from_description(recipe.grid)
    device = next(model.parameters()).device
    noise = torch.randn(lq.shape, generator=torch.Generator().manual_seed(int(seed)))
    lq_state = to_state(lq.float())

    def run(lq_part, noise_part):
        lq_part, noise_part = lq_part.to(device), noise_part.to(device)

        def predict(x, index, _):
            return model(x, lq_part, grid.model_time(index, x.shape[0]).to(device))

        out = run_from_lq(grid, recipe.path, predict, lq_part, noise_part, recipe.lq_weight, recipe.ngs_w)
        return out.final.cpu()

    h, w = lq.shape[-2:]
    if tile <= 0 or (h <= tile and w <= tile):
        out = run(lq_state, noise)
        if progress is not None:
            progress(1, 1)
        return finish_colour(to_images(out), lq.float().cpu(), colour)
    # lq and noise travel as one tensor, so every tile gets the matching crops of both
    out = blend_tiles(lambda part: run(part[:, :3], part[:, 3:]), torch.cat([lq_state, noise], dim=1), tile, overlap,
                      out_channels=3, progress=progress)
    return finish_colour(to_images(out), lq.float().cpu(), colour)
