"""What every training stage shares: the trained module (or its DDP wrapper), parameters, validation (reward
metrics on the held-out split and a PNG grid of LQ | output | GT), export, no extra state."""
import os

import torch

from ..data import evaluation_batches, write_png
from ..models import save
from ..rewards import get_metric
from .restorers import sample_images


class Stage:
    name = "stage"

    def __init__(self, cfg, restorer, env):
        self.cfg, self.restorer, self.env = cfg, restorer, env
        self.model = restorer.trainable()  # the loop replaces it by its DDP wrapper in distributed runs

    def prepare(self, train_set):
        """Work done once before the first step (e.g. the distillation step selection)."""

    def next_batch(self, loader):
        """The next training batch (stages with their own data override this)."""
        return loader.next_batch()

    def parameters(self):
        return [p for p in self.restorer.trainable().parameters() if p.requires_grad]

    def before_optimizer_step(self):
        pass

    def after_step(self, step):
        pass

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def validate(self, net, datasets, step):
        """Held-out metrics ``{"val/<metric>": value}`` of ``net`` (``validate``); called on every rank.

        Rank 0 scores and writes the grid; the others return ``{}``. When the restorer's forward passes are
        collectives (a base sharded with FSDP), the other ranks run the same passes and drop the result.
        """
        if self.env.is_main:
            return validate(self.restorer, net, self.recipe(), datasets, self.cfg, step)
        if getattr(self.restorer, "collective", False):
            evaluate(self.restorer, net, self.recipe(), datasets, [], self.cfg["val.batch_size"], self.cfg["val.draws"])
        return {}

    def export(self, net, cfg):
        """Write the trained weights where their consumer loads them, with the sampling recipe; return the path.

        The file name is ``run.export``, else the restorer's ``export_name`` (the name its consumers load), else
        ``<kind>_<stage>.safetensors``.
        """
        name = (cfg["run.export"] or getattr(self.restorer, "export_name", "")
                or f"{self.restorer.kind}_{self.name.replace('+', '_')}.safetensors")
        path = os.path.join(cfg["run.out_dir"], name)
        recipe = self.recipe()
        recipe.colour = cfg["sampling.colour"]
        return save(net, path, metadata={"trajir_recipe": recipe.to_json()})


def evaluate(restorer, net, recipe, datasets, metrics, batch_size=2, draws=1, grid_rows=0):
    """Mean of each metric over every held-out sample (``draws`` degradations per image) and, if ``grid_rows``,
    a ``[3, H, W]`` image of the first rows ``LQ | output | GT``."""
    scores = {m: [] for m in metrics}
    rows = []
    net.eval()
    for dataset in datasets:
        for draw in range(draws):
            for batch in evaluation_batches(dataset, batch_size, draw=draw):
                out = sample_images(restorer, net, recipe, batch["lq"], seed=draw).cpu().float()
                for m in metrics:
                    metric = get_metric(m)  # no-reference metrics take no GT; a flat output scores NaN, not an error
                    scores[m].append(metric(out, batch["gt"] if metric.full_reference else None,
                                            **dict(metric.mix_options)))
                for lq, o, gt in zip(batch["lq"], out, batch["gt"]):
                    if len(rows) < grid_rows:
                        rows.append(torch.cat([lq, o, gt], dim=-1))
    means = {m: float(torch.cat(v).nanmean()) for m, v in scores.items() if v}
    picture = torch.cat(rows, dim=-2) if rows else None
    return means, picture


def validate(restorer, net, recipe, datasets, cfg, step):
    metrics = [m.strip() for m in cfg["val.metrics"].split(",") if m.strip()]
    means, picture = evaluate(restorer, net, recipe, datasets, metrics, cfg["val.batch_size"], cfg["val.draws"],
                              grid_rows=4 if cfg["val.grid"] else 0)
    if picture is not None:
        write_png(os.path.join(cfg["run.out_dir"], "val", f"step_{step:08d}.png"), picture)
    return {f"val/{m}": v for m, v in means.items()}
