"""Model families as the training stages see them: states, conditioning, one prediction call, images back.

A stage never needs to know whether it trains a pixel-space compact U-Net or a FLUX-IR ControlNet on a frozen
FLUX: it asks the restorer to ``encode`` a batch into states and conditioning, to ``predict`` with a given copy of
the trained module, and to ``decode`` states into images for the reward.
"""
import torch

from ..compact import finish_colour, to_images, to_state
from ..grids import grid_from_description
from ..trajectory import run_from_lq


class CompactRestorer:
    """A compact U-Net in pixel space (states in [-1, 1]) conditioned on the LQ image by concatenation."""

    kind = "compact"

    def __init__(self, net, grid, device):
        self.net, self.grid, self.device = net.to(device), grid, device

    def encode(self, batch):
        """``{"x0": GT state, "lq": LQ state, "cond": network conditioning}`` on the device."""
        lq = to_state(batch["lq"].to(self.device))
        return {"x0": to_state(batch["gt"].to(self.device)), "lq": lq, "cond": {"lq": lq}}

    def predict(self, net, x, t, cond):
        """The network output (v or eps) of ``net`` (the trained module or a frozen copy of it) at time input ``t``."""
        return net(x, cond["lq"], t)

    def decode(self, x):
        return to_images(x)

    def trainable(self):
        return self.net


def predictor(restorer, net, grid=None):
    """``predict(x, index, cond)`` for ``trajir.trajectory.run``: the output of ``net`` (the trained module, its DDP
    wrapper or a frozen copy) at grid ``index`` of ``grid`` (default: the restorer's)."""
    grid = restorer.grid if grid is None else grid

    def predict(x, index, cond):
        return restorer.predict(net, x, grid.model_time(index, x.shape[0]).to(x.device), cond)
    return predict


def sample_images(restorer, net, recipe, lq_images, seed):
    """Restore a batch of LQ images (0..1) with ``net`` following ``recipe``; returns images in 0..1."""
    grid = grid_from_description(recipe.grid)
    s = restorer.encode({"lq": lq_images, "gt": lq_images})
    lq = s["lq"]
    noise = torch.randn(lq.shape, generator=torch.Generator().manual_seed(int(seed))).to(lq)
    with torch.no_grad():
        out = run_from_lq(grid, recipe.path, predictor(restorer, net, grid), lq, noise, recipe.lq_weight,
                          recipe.ngs_w, s["cond"])
    return finish_colour(restorer.decode(out.final), lq_images.to(lq.device).float(), recipe.colour)
