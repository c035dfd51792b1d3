"""Reward metrics for scoring restorations (docs/architecture.md §7, docs/equations.md §5).

One registry, one calling convention: ``score(name, images, reference=None, **options)`` takes images
``[B, 3, H, W]`` in 0..1 (values outside 0..1 are refused; clamp first) and returns per-image float32 scores
``[B]`` in the metric's own units. ``available()`` lists the metrics usable now.

- ``psnr``, ``psnr_y`` (dB, capped at 100) and ``ssim``, ``ssim_y``: full-reference, higher is better; kornia,
  on RGB or on the YCbCr Y channel (``fidelity.py``);
- ``niqe``: no-reference, lower is better; in-house torch with the LIVE pristine model (``niqe.py``,
  ``data/niqe_pris_params.npz``);
- ``uciqe``, ``uiqm``: no-reference underwater colour metrics, higher is better; in-house (``underwater.py``);
- ``lpips`` (full-reference, lower is better), ``musiq``, ``clipiqa``, ``maniqa`` (no-reference, higher is
  better): pyiqa, built from weight files in a local folder, never downloaded (``learned.py``).

:class:`Reward` mixes metrics (presets "psnr" and "fluxir-unified"); :func:`set_default_iqa_dirs` registers the
learned metrics' weight folder (the ComfyUI node layer passes ``folder_paths.get_folder_paths("iqa")``).
"""
from .composite import PRESETS, Reward
from .learned import CorruptWeightsError, MissingWeightsError, iqa_dirs, set_default_iqa_dirs
from .registry import METRICS, Metric, Normaliser, available, get_metric, score

__all__ = ["METRICS", "PRESETS", "CorruptWeightsError", "Metric", "MissingWeightsError", "Normaliser", "Reward",
           "available", "get_metric", "iqa_dirs", "score", "set_default_iqa_dirs"]
