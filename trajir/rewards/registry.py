"""The metric registry: one calling convention for every reward metric.

``metric(images, reference=None, **options) -> [B] float32`` on ``images.device``, with images ``[B, 3, H, W]``
in 0..1 (values outside are refused, see ``common.py``) and scores in the metric's own units. Each entry states
whether it needs a reference, whether higher is better, and a normaliser to "about 0..1, higher is better" used to
mix metrics (docs/equations.md §5). Normalised NaN (NIQE of an image without structure, which a mix asks for
through the metric's ``mix_options``; called alone, NIQE refuses such an image) counts as 0, the worst.
"""
import dataclasses
import inspect
from collections.abc import Callable

import torch

from . import fidelity, learned, niqe, underwater


@dataclasses.dataclass(frozen=True)
class Normaliser:
    """``scale * score + offset``, optionally clipped to 0..1; NaN becomes 0."""

    scale: float
    offset: float = 0.0
    clip: bool = False

    def __call__(self, scores):
        out = scores.float() * self.scale + self.offset
        if self.clip:
            out = out.clamp(0.0, 1.0)
        return torch.nan_to_num(out, nan=0.0)

    def __str__(self):
        text = f"{self.scale:g} * score" + (f" + {self.offset:g}" if self.offset else "")
        return f"clip({text}, 0, 1)" if self.clip else text


@dataclasses.dataclass(frozen=True)
class Metric:
    """A registered metric; call it like :func:`trajir.rewards.score` without the name."""

    name: str
    fn: Callable
    full_reference: bool
    higher_is_better: bool
    normalise: Normaliser
    units: str
    min_size: int
    description: str
    needs_pyiqa: bool = False
    mix_options: tuple = ()  # (name, value) options a reward mix passes: what a ranking needs, not an error

    @property
    def options(self):
        """The keyword options ``fn`` accepts besides the images (and reference)."""
        params = list(inspect.signature(self.fn).parameters)
        return tuple(params[2 if self.full_reference else 1 :])

    @property
    def weight_files(self):
        """Groups of weight file names (one of each group is needed); empty for in-house metrics."""
        return learned.WEIGHT_FILES.get(self.name, ()) if self.needs_pyiqa else ()

    def is_available(self, iqa_dir=None):
        """Whether the metric can run now: pyiqa (and what it imports) installed, weight files present."""
        if not self.needs_pyiqa:
            return True
        return (learned.pyiqa_installed() and learned.has_weights(self.name, iqa_dir)
                and learned.importable(self.name))

    def __call__(self, images, reference=None, **options):
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} for metric {self.name!r}; it accepts "
                             f"{list(self.options) or 'no options'}")
        if self.full_reference:
            return self.fn(images, reference, **options)
        if reference is not None:
            raise ValueError(f"{self.name} is a no-reference metric: pass reference=None")
        return self.fn(images, **options)


METRICS = {m.name: m for m in (
    Metric("psnr", fidelity.psnr, True, True, Normaliser(1 / 50), "dB", 1,
           "PSNR over RGB (kornia), capped at 100 dB"),
    Metric("psnr_y", fidelity.psnr_y, True, True, Normaliser(1 / 50), "dB", 1,
           "PSNR on the YCbCr Y channel"),
    Metric("ssim", fidelity.ssim, True, True, Normaliser(1.0), "", fidelity.SSIM_WINDOW,
           "SSIM over RGB (kornia, 11x11 Gaussian window, valid region)"),
    Metric("ssim_y", fidelity.ssim_y, True, True, Normaliser(1.0), "", fidelity.SSIM_WINDOW,
           "SSIM on the YCbCr Y channel"),
    Metric("niqe", niqe.niqe, False, False, Normaliser(-1 / 10, 1.0, clip=True), "", niqe.BLOCK,
           "NIQE with the LIVE pristine model (in-house torch)", mix_options=(("flat", "nan"),)),
    Metric("uciqe", underwater.uciqe, False, True, Normaliser(1.0), "", 1,
           "UCIQE underwater colour quality (in-house)"),
    Metric("uiqm", underwater.uiqm, False, True, Normaliser(1 / 5), "", underwater.UIQM_BLOCK,
           "UIQM underwater quality (in-house)"),
    Metric("lpips", learned.lpips, True, False, Normaliser(-1.0, 1.0), "", learned.MIN_SIZE,
           "LPIPS v0.1 AlexNet distance (pyiqa)", needs_pyiqa=True),
    Metric("musiq", learned.musiq, False, True, Normaliser(1 / 100), "", learned.MIN_SIZE,
           "MUSIQ, KonIQ-10k (pyiqa)", needs_pyiqa=True),
    Metric("clipiqa", learned.clipiqa, False, True, Normaliser(1.0), "", learned.MIN_SIZE,
           "CLIP-IQA, RN50 (pyiqa)", needs_pyiqa=True),
    Metric("maniqa", learned.maniqa, False, True, Normaliser(1.0), "", learned.MIN_SIZE,
           "MANIQA, KonIQ-10k (pyiqa)", needs_pyiqa=True),
)}


def get_metric(name):
    """The registered :class:`Metric` called ``name``."""
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; expected one of {sorted(METRICS)}")
    return METRICS[name]


def available(iqa_dir=None):
    """Names of the metrics usable now, given what is installed and which weight files are present."""
    return [name for name, metric in METRICS.items() if metric.is_available(iqa_dir)]


def score(name, images, reference=None, **options):
    """Per-image scores ``[B]`` float32 of metric ``name`` in its own units (PSNR in dB, NIQE lower is better)."""
    return get_metric(name)(images, reference, **options)
