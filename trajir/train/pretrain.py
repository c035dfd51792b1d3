"""Stage ``pretrain``: flow matching (rectified flow) or noise prediction (VP) on (LQ, GT) pairs, Eq. (6).

Rectified flow: ``t ~ U(0, 1)``, ``x_t = (1 - t) x0 + t noise``, regress ``v = noise - x0``. VP: a continuous noise
level ``sqrt(alpha_bar)`` drawn between two neighbouring grid levels (SR3), regress the noise.
"""
import torch
import torch.nn.functional as F

from ..compact import Recipe
from . import randomness
from .stage_base import Stage


def training_state(grid, x0, noise, u):
    """``(x_t, network time input [B], regression target)`` for uniform draws ``u`` ``[B]``."""
    b = x0.shape[0]
    shape = (b,) + (1,) * (x0.ndim - 1)
    if grid.param == "rf":
        t = u
        x_t = (1 - t.view(shape)) * x0 + t.view(shape) * noise
        return x_t, t, noise - x0
    levels = grid.alpha.to(u.device, torch.float32)  # noisy (index 0) to clean (index K)
    k = grid.steps
    pos = u * k
    index = pos.long().clamp(max=k - 1)
    frac = pos - index
    alpha = levels[index] + frac * (levels[index + 1] - levels[index])
    x_t = alpha.view(shape) * x0 + (1 - alpha ** 2).clamp_min(0).sqrt().view(shape) * noise
    return x_t, alpha, noise


class Pretrain(Stage):
    """Supervised denoising loss of the restorer's trained module; samples with the K-step ODE from noise."""

    name = "pretrain"

    def recipe(self):
        return Recipe(grid=self.restorer.grid.describe(), lq_weight=0.0, task=self.cfg["data.task"],
                      note=f"pretrained, {self.restorer.grid.steps}-step ODE from noise")

    def loss(self, batch, keys):
        s = self.restorer.encode(batch)
        x0 = s["x0"]
        noise = randomness.normal(keys, 1, x0.shape[1:], x0.device).to(x0.dtype)
        u = randomness.uniform(keys, 2, x0.device)[:, 0]
        x_t, t, target = training_state(self.restorer.grid, x0, noise, u)
        pred = self.restorer.predict(self.model, x_t, t, s["cond"])
        loss = F.mse_loss(pred.float(), target.float())
        return loss, {"loss": loss.detach()}
