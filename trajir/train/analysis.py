"""Analyses of trained compact models: held-out evaluation, the distillation-cost figure, trajectory plots."""
import json
import os

import torch

from ..compact import Recipe, load_compact
from ..data import collate
from ..distillation import select_steps
from ..grids import grid_from_description
from ..safefiles import write_text
from ..trajectory import run_from_lq
from . import build
from .distill import cost_analysis
from .plots import plot_cost, plot_trajectories
from .restorers import CompactRestorer, predictor
from .stage_base import evaluate


def load_restorer(path, device="cpu"):
    """``(restorer, recipe)`` of an exported compact model (the recipe travels in the file's metadata)."""
    net, recipe = load_compact(path, device)
    return CompactRestorer(net, grid_from_description(recipe.grid), torch.device(device)), recipe


def evaluate_file(path, cfg, metrics=("psnr", "ssim"), draws=None):
    """Mean metrics of an exported model on the held-out split of ``cfg``'s data."""
    restorer, recipe = load_restorer(path)
    _, val_sets = build.build_datasets(cfg)
    if not val_sets:
        raise ValueError("the config holds out no validation images (data.holdout = 0)")
    means, _ = evaluate(restorer, restorer.net, recipe, val_sets, list(metrics), cfg["val.batch_size"],
                        draws or cfg["val.draws"])
    return {**means, "nfe": recipe.nfe}


def analyze_cost(cfg, out_png, max_jumps=6):
    """The teacher's (``run.init``) jump-cost matrix over the training data, the best path for each number of
    jumps, a JSON next to the PNG (the paper's Fig. 2). Returns the JSON dict."""
    if not cfg["run.init"]:
        raise ValueError("analyze-cost needs the teacher: --set run.init=PATH (an exported compact model)")
    restorer, _ = load_restorer(cfg["run.init"])
    train_set, _ = build.build_datasets(cfg)
    cost = cost_analysis(restorer, restorer.net, train_set, cfg["distill.cost_batches"], cfg["run.batch_size"],
                         cfg["run.seed"])
    k = cost.shape[0] - 1
    best = {}
    for m in range(1, min(k, max_jumps) + 1):
        path = select_steps(cost, m)
        best[m] = {"path": path, "cost": float(sum(cost[a, b] for a, b in zip(path, path[1:])))}
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    plot_cost(cost, best, out_png)
    result = {"cost": cost.tolist(), "best_paths": best, "teacher": cfg["run.init"]}
    write_text(os.path.splitext(out_png)[0] + ".json", json.dumps(result, indent=1))
    return result


@torch.no_grad()
def trajectories(cfg, model_paths, out_png, labels=None, sde_eta=0.5, sde_runs=3, seed=0):
    """Fig. 7: (a) the ODE and ``sde_runs`` M-SDE trajectories of the first model, (b) the ODE trajectories of
    every model (e.g. pretrained, RL, distilled), all from one held-out image and one noise, projected to 2-D."""
    labels = labels or [os.path.splitext(os.path.basename(p))[0] for p in model_paths]
    labels = [f"{label} ({i + 1})" if labels.count(label) > 1 else label for i, label in enumerate(labels)]
    _, val_sets = build.build_datasets(cfg)
    dataset = val_sets[0] if val_sets else build.build_datasets(cfg)[0]
    batch = collate([dataset.sample(0, 0)])
    runs = {}
    first_restorer = None
    for label, path in zip(labels, model_paths):
        restorer, recipe = load_restorer(path)
        first_restorer = first_restorer or (restorer, recipe)
        s = restorer.encode(batch)
        noise = torch.randn(s["x0"].shape, generator=torch.Generator().manual_seed(seed))
        runs[label] = _states(restorer, recipe, s, noise)
    restorer, recipe = first_restorer
    s = restorer.encode(batch)
    noise = torch.randn(s["x0"].shape, generator=torch.Generator().manual_seed(seed))
    full = Recipe(grid=recipe.grid, lq_weight=recipe.lq_weight, ngs_w=recipe.ngs_w)
    sde = {"ODE": _states(restorer, full, s, noise)}
    for r in range(sde_runs):
        g = torch.Generator().manual_seed(seed + 1 + r)
        sde[f"M-SDE eta={sde_eta} #{r + 1}"] = _states(restorer, full, s, noise, sde_eta, g)
    return plot_trajectories([(f"{labels[0]}: ODE vs M-SDE", sde), ("ODE trajectories", runs)], out_png)


def _states(restorer, recipe, s, noise, eta=0.0, generator=None):
    """The states of ``recipe``'s path for the first sample: ODE jumps, or M-SDE steps with ``eta`` (the last
    jump, into the clean end, stays an ODE step)."""
    grid = restorer.grid

    def msde(position, x, pred, a, b):
        if b < grid.steps:
            return grid.msde(x, pred, a, b, eta, torch.randn(x.shape, generator=generator))
        return grid.jump(x, pred, a, b)

    walk = run_from_lq(grid, recipe.path, predictor(restorer, restorer.net), s["lq"], noise, recipe.lq_weight,
                       recipe.ngs_w, s["cond"], step=msde if eta > 0 else None, keep=True)
    return torch.stack(walk.states)[:, 0]
