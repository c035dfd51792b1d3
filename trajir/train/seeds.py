"""Comparing two training recipes over several training seeds.

The intervals of ``evaluation`` resample the held-out units, so they describe one trained model. A second
training seed (other batches, other noise) moves a short fine-tune by more than those intervals are wide, so a
claim that recipe A beats recipe B rests on one paired difference per seed: train A and B with the same seed,
score both on the same units, and treat the per-seed mean differences as the sample. Their mean carries a
Student-t interval with (seeds - 1) degrees of freedom.
"""
import functools
import math

import torch

from .evaluation import format_interval, paired_difference


def _t_density(x, df):
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_norm - (df + 1) / 2 * math.log1p(x * x / df))


def student_t_cdf(x, df, intervals=4000):
    """P(T <= x) for Student's t with ``df`` degrees of freedom (Simpson's rule on the density from 0 to |x|)."""
    if df <= 0:
        raise ValueError(f"df must be > 0, got {df}")
    a = abs(x)
    h = a / intervals
    inner = sum((4 if i % 2 else 2) * _t_density(i * h, df) for i in range(1, intervals))
    area = h / 3 * (_t_density(0.0, df) + inner + _t_density(a, df))
    return 0.5 + math.copysign(area, x)


@functools.lru_cache(maxsize=256)
def student_t_quantile(p, df):
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom, by bisection on ``student_t_cdf``."""
    if not 0 < p < 1:
        raise ValueError(f"p must lie in (0, 1), got {p}")
    if p < 0.5:
        return -student_t_quantile(1 - p, df)
    lo, hi = 0.0, 1.0
    while student_t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if student_t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def seed_interval(differences, level=0.95):
    """Mean of per-seed differences with its Student-t interval over the seeds:
    ``{"mean", "lo", "hi", "sd", "seeds"}``."""
    d = torch.as_tensor(differences, dtype=torch.float64).flatten()
    if d.numel() < 2:
        raise ValueError(f"differences: a seed interval needs at least 2 seeds, got {d.numel()}")
    if not torch.isfinite(d).all():
        raise ValueError(f"differences must be finite, got {d.tolist()}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    n = d.numel()
    sd = float(d.std())  # n - 1 in the denominator
    half = student_t_quantile(1 - (1 - level) / 2, n - 1) * sd / math.sqrt(n)
    mean = float(d.mean())
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "sd": sd, "seeds": n}


def seed_report(result, pairs, metrics=("psnr", "ssim")):
    """A markdown table: one row per seed (``pairs`` = ``[(label A, label B)]``, scored in ``result`` by
    ``evaluation.evaluate_models``) with A - B and its interval over the units, then the mean over the seeds
    with its Student-t interval over the seeds."""
    if len(pairs) < 2:
        raise ValueError(f"pairs: compare at least 2 seeds (one model pair per seed), got {len(pairs)}")
    scores, resamples = result["scores"], result["resamples"]
    lines = ["| seed | A − B | " + " | ".join(f"Δ{m.upper()} [95 %]" for m in metrics) + " |",
             "|---" * (2 + len(metrics)) + "|"]
    per_seed = {m: [] for m in metrics}
    for i, (a, b) in enumerate(pairs, 1):
        cells = []
        for m in metrics:
            d = paired_difference(scores[a][m], scores[b][m], resamples=resamples)
            per_seed[m].append(d["mean"])
            cells.append(format_interval(d["mean"], d["lo"], d["hi"], m, signed=True))
        lines.append(f"| {i} | {a} − {b} | " + " | ".join(cells) + " |")
    over_seeds = {m: seed_interval(per_seed[m]) for m in metrics}
    cells = [format_interval(s["mean"], s["lo"], s["hi"], m, signed=True) for m, s in over_seeds.items()]
    lines.append(f"| mean over {len(pairs)} seeds | Student t over the seeds | " + " | ".join(cells) + " |")
    return "\n".join(lines)
