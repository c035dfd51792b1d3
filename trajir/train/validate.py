"""Validation during training: reward metrics on the held-out split and a PNG grid of LQ | output | GT."""
import os

import torch

from ..data import evaluation_batches, write_png
from ..rewards import score

from .restorers import sample_images


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
                    scores[m].append(score(m, out, batch["gt"]))
                for lq, o, gt in zip(batch["lq"], out, batch["gt"]):
                    if len(rows) < grid_rows:
                        rows.append(torch.cat([lq, o, gt], dim=-1))
    means = {m: float(torch.cat(v).mean()) for m, v in scores.items() if v}
    picture = torch.cat(rows, dim=-2) if rows else None
    return means, picture


def validate(restorer, net, recipe, datasets, cfg, step):
    metrics = [m.strip() for m in cfg["val.metrics"].split(",") if m.strip()]
    means, picture = evaluate(restorer, net, recipe, datasets, metrics, cfg["val.batch_size"], cfg["val.draws"],
                              grid_rows=4 if cfg["val.grid"] else 0)
    if picture is not None:
        write_png(os.path.join(cfg["run.out_dir"], "val", f"step_{step:08d}.png"), picture)
    return {f"val/{m}": v for m, v in means.items()}
