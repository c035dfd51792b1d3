"""Held-out evaluation that can tell small differences apart, and the statistics that say whether it did.

The held-out content is every photo not used for training: the config's held-out split and, when training on
the bundled samples, the extra public-domain / CC0 photos of ``trajir/data/samples/eval/``. Each photo gives
``crops`` seeded crop windows, and each crop ``draws`` degradations, each with its own sampling noise: one
*unit* is (photo, crop, draw). Every unit is a pure function of (seed, photo name, crop, draw), so every model
evaluated with the same settings sees the same LQ images and the same noise, and two models can be compared
unit by unit (a paired comparison).

Intervals come from a two-level bootstrap: resample the photos with replacement, then the units inside each
resampled photo. Photos are the coarse unit of variation (a model may help on one kind of content and not on
another), so an interval over units alone would be too narrow.
"""
import zlib
from dataclasses import dataclass

import torch

from ..data import degrade, read_image
from ..data.rng import derive_seed
from ..data.samples import FOLDER as SAMPLES_FOLDER
from ..data.images import list_images
from ..grids import grid_from_description
from ..compact import finish_colour, load_compact, to_images, to_state
from ..rewards import score
from ..trajectory import run_from_lq
from . import build

EXTRA_FOLDER = SAMPLES_FOLDER / "eval"


@dataclass
class Units:
    """The evaluation units, grouped by photo: ``lq``/``gt`` ``[P, U, 3, h, w]``, ``noise_seeds`` ``[P][U]``."""
    names: list
    lq: torch.Tensor
    gt: torch.Tensor
    noise_seeds: list
    task: str


def held_out_photos(cfg, extra=True):
    """``[(name, gt image or (lq, gt) pair)]``: the held-out split of ``cfg``'s data, plus the bundled evaluation
    photos when ``cfg`` trains on the bundled samples and ``extra`` is set."""
    if cfg["data.paired_dir"]:
        _, val = build.build_datasets(cfg)
        if not val:
            raise ValueError("the config holds out no images (data.holdout = 0): nothing to evaluate on")
        folders = val[0]
        return [(name, folders._decode(i)) for i, name in enumerate(folders.names)]
    files = build.held_out_files(cfg)
    if extra and not cfg["data.clean_dir"]:
        files = files + list_images(EXTRA_FOLDER, "evaluation photos folder")
    if not files:
        raise ValueError("the config holds out no images (data.holdout = 0) and adds no evaluation photos")
    return [(f.stem, read_image(f)) for f in files]


def _name_key(name):
    return zlib.crc32(name.encode("utf-8"))


def make_units(cfg, crops=6, draws=8, crop=None, extra=True, seed=None):
    """The evaluation units of ``cfg``'s held-out content (see the module docstring)."""
    if crops < 1 or draws < 1:
        raise ValueError(f"crops and draws must be >= 1, got crops={crops}, draws={draws}")
    size = crop if crop is not None else cfg["data.val_crop"]
    seed = cfg["run.seed"] if seed is None else seed
    task = cfg["data.task"]
    if "=" in task:
        raise ValueError(f"the evaluation degrades with one task; data.task is a mix {task!r}")
    names, lqs, gts, seeds = [], [], [], []
    for name, image in held_out_photos(cfg, extra):
        paired = isinstance(image, tuple)
        lq_full, gt_full = image if paired else (None, image)
        h, w = gt_full.shape[-2:]
        ch, cw = (min(size, h), min(size, w)) if size else (h // 8 * 8, w // 8 * 8)
        key = _name_key(name)
        photo_lq, photo_gt, photo_seeds = [], [], []
        for c in range(crops):
            g = torch.Generator().manual_seed(derive_seed(seed, key, c))
            top = int(torch.randint(h - ch + 1, (1,), generator=g))
            left = int(torch.randint(w - cw + 1, (1,), generator=g))
            gt = gt_full[:, top:top + ch, left:left + cw]
            for d in range(draws):
                if paired:
                    lq = lq_full[:, top:top + ch, left:left + cw]
                else:
                    lq = degrade(task, gt[None], derive_seed(seed, key, c, d, 1))[0]
                photo_lq.append(lq)
                photo_gt.append(gt)
                photo_seeds.append(derive_seed(seed, key, c, d, 2))
        names.append(name)
        lqs.append(torch.stack(photo_lq))
        gts.append(torch.stack(photo_gt))
        seeds.append(photo_seeds)
    return Units(names, torch.stack(lqs), torch.stack(gts), seeds, task)


def model_restorer(net, recipe, device="cpu"):
    """``restore(lq [B,3,h,w], noise_seeds) -> images``: ``net`` sampled along ``recipe``, one noise per unit."""
    grid = grid_from_description(recipe.grid)

    @torch.no_grad()
    def run(lq, noise_seeds):
        noise = torch.stack([torch.randn(lq.shape[1:], generator=torch.Generator().manual_seed(s))
                             for s in noise_seeds]).to(device)
        lq_state = to_state(lq.to(device).float())
        x = run_from_lq(grid, recipe.path, lambda x, i, _: net(x, lq_state, grid.model_time(i, x.shape[0]).to(device)),
                        lq_state, noise, recipe.lq_weight, recipe.ngs_w).final
        return finish_colour(to_images(x).cpu(), lq.float(), recipe.colour)
    return run


def score_units(restore, units, metrics=("psnr", "ssim"), batch_size=16):
    """``{metric: [P, U] tensor}``: every unit restored by ``restore(lq, noise_seeds)`` and scored against its GT."""
    out = {m: torch.zeros(units.lq.shape[:2]) for m in metrics}
    for p in range(units.lq.shape[0]):
        for start in range(0, units.lq.shape[1], batch_size):
            rows = slice(start, min(start + batch_size, units.lq.shape[1]))
            images = restore(units.lq[p, rows], units.noise_seeds[p][rows]).float().clamp(0, 1)
            for m in metrics:
                out[m][p, rows] = score(m, images, units.gt[p, rows]).float()
    return out


def score_input(units, metrics=("psnr", "ssim")):
    """The degraded inputs' own scores (the 'do nothing' row)."""
    return score_units(lambda lq, seeds: lq, units, metrics)


def bootstrap_mean(values, resamples=10000, level=0.95, seed=0):
    """Mean of ``values`` ``[P, U]`` (P photos x U units) and its two-level bootstrap interval.

    Each resample draws P photos with replacement and, inside each, U of its units with replacement; the
    interval is the percentile interval of the resampled grand means. Returns
    ``{"mean", "lo", "hi", "std", "p_le_0"}``, the last being the share of resampled means <= 0 (for a paired
    difference: how often the bootstrap sees no gain).
    """
    values = torch.as_tensor(values, dtype=torch.float64)
    if values.ndim == 1:
        values = values[None]
    if values.ndim != 2 or values.numel() == 0:
        raise ValueError(f"values must be a [photos, units] array, got shape {tuple(values.shape)}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    p, u = values.shape
    g = torch.Generator().manual_seed(seed)
    means = torch.empty(resamples, dtype=torch.float64)
    chunk = max(1, 2_000_000 // (p * u))
    for start in range(0, resamples, chunk):
        r = min(chunk, resamples - start)
        photo = torch.randint(p, (r, p, 1), generator=g)
        unit = torch.randint(u, (r, p, u), generator=g)
        means[start:start + r] = values[photo, unit].mean(dim=(1, 2))
    alpha = (1 - level) / 2
    lo, hi = torch.quantile(means, torch.tensor([alpha, 1 - alpha], dtype=torch.float64)).tolist()
    return {"mean": float(values.mean()), "lo": lo, "hi": hi, "std": float(means.std()),
            "p_le_0": float((means <= 0).double().mean())}


def paired_difference(a, b, **kwargs):
    """Bootstrap of ``a - b`` over the same units (both ``[P, U]``, scored on identical draws and noise)."""
    a, b = torch.as_tensor(a), torch.as_tensor(b)
    if a.shape != b.shape:
        raise ValueError(f"paired scores must cover the same units, got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    return bootstrap_mean(a.double() - b.double(), **kwargs)


def evaluate_models(models, cfg, metrics=("psnr", "ssim"), crops=None, draws=None, resamples=None, device="cpu",
                    baselines=None):
    """Score exported compact models (``{label: path}``) and baseline functions (``{label: fn(lq) -> images}``)
    on the same units. Returns ``{"units": Units, "scores": {label: {metric: [P, U]}}, "nfe": {label: int}}``."""
    units = make_units(cfg, crops or cfg["eval.crops"], draws or cfg["eval.draws"], extra=cfg["eval.extra_photos"])
    scores, nfe = {"degraded input": score_input(units, metrics)}, {"degraded input": 0}
    for label, fn in (baselines or {}).items():
        scores[label] = score_units(lambda lq, seeds, fn=fn: fn(lq), units, metrics)
        nfe[label] = 0
    for label, path in models.items():
        net, recipe = load_compact(path, device)
        scores[label] = score_units(model_restorer(net, recipe, device), units, metrics)
        nfe[label] = recipe.nfe
    return {"units": units, "scores": scores, "nfe": nfe, "resamples": resamples or cfg["eval.resamples"]}


def summary(result, metric, label, reference=None):
    """The mean and interval of one row, and with ``reference`` the paired difference to that row."""
    scores, resamples = result["scores"], result["resamples"]
    row = bootstrap_mean(scores[label][metric], resamples=resamples)
    if reference is not None:
        row["diff"] = paired_difference(scores[label][metric], scores[reference][metric], resamples=resamples)
    return row


def describe(units):
    p, u = units.lq.shape[:2]
    return (f"{p} held-out photos ({', '.join(units.names)}) x {u} units each (crops x degradation draws), "
            f"{tuple(units.lq.shape[-2:])[0]} px crops")


def metric_digits(metric):
    """Decimals a metric is printed with: PSNR to 0.01 dB, the others (SSIM, LPIPS, ...) to 0.0001."""
    return 2 if metric.startswith("psnr") else 4


def format_interval(mean, lo, hi, metric, signed=False):
    """``mean [lo, hi]`` at the metric's precision; ``signed`` for differences (``+0.30 [-0.07, +0.68]``)."""
    spec = f"{'+' if signed else ''}.{metric_digits(metric)}f"
    return f"{mean:{spec}} [{lo:{spec}}, {hi:{spec}}]"


def report(result, metrics, labels, reference=None, against=None):
    """A markdown table: per row the NFE, each metric's mean with its 95 % interval and, against ``reference``
    (one label for every row) or ``against`` (``{label: reference label}``), the paired difference with its
    interval and the bootstrap share of resamples with no gain."""
    against = dict(against or {})
    if reference is not None:
        against.update({label: reference for label in labels if label != reference})
    head = "| model | NFE | " + " | ".join(m.upper() for m in metrics)
    if against:
        head += " | compared with | " + " | ".join(f"Δ{m.upper()} [95 %]" for m in metrics) + " | P(ΔPSNR ≤ 0)"
    lines = [head + " |", "|---" * (2 + len(metrics) + (len(metrics) + 2 if against else 0)) + "|"]
    for label in labels:
        rows = {m: summary(result, m, label) for m in metrics}
        cells = [format_interval(r["mean"], r["lo"], r["hi"], m) for m, r in rows.items()]
        line = f"| {label} | {result['nfe'][label]} | " + " | ".join(cells)
        if against:
            ref = against.get(label)
            if ref is None:
                line += " | – |" + " – |" * len(metrics) + " –"
            else:
                diffs = [summary(result, m, label, reference=ref)["diff"] for m in metrics]
                line += f" | {ref} | " + " | ".join(format_interval(d["mean"], d["lo"], d["hi"], m, signed=True)
                                                     for d, m in zip(diffs, metrics))
                line += f" | {diffs[0]['p_le_0']:.3f}" if metrics[0].startswith("psnr") else " | –"
        lines.append(line + " |")
    return "\n".join(lines)
