"""The synthetic degradation registry: task name -> seeded function making a low-quality twin of a clean image.

The tasks are FLUX-IR's training mix (docs/equations.md §11; docs/architecture.md §6). Every function has the signature
``fn(images [B,3,H,W] 0..1, generator, **ranges) -> lq [B,3,H,W] 0..1`` with ``lq`` at the input size,
computes in float32 (float64 stays float64) and returns the input's dtype. Parameters and noise are drawn per
image from a CPU generator and then moved, so a seed gives bit-identical results on every run on one device and
the same draws on every device (the filters then agree up to each device's floating-point rounding).
"""
import inspect
import math

from .camera import compress, deblur, denoise, lowlight, sr
from .rng import as_generator
from .scattering import dehaze, underwater
from .weather import derain, desnow, raindrop

TASKS = {
    "sr": sr,
    "deblur": deblur,
    "denoise": denoise,
    "jpeg": compress,
    "lowlight": lowlight,
    "derain": derain,
    "raindrop": raindrop,
    "desnow": desnow,
    "underwater": underwater,
    "dehaze": dehaze,
}


# The options that set how strong each degradation is, with the direction that degrades more (+1: a larger
# value, -1: a smaller one) and whether the value is an odd kernel size or a whole count. Options left out
# (angles, tilts, colours, aspect ratios) keep their random ranges at every strength.
STRENGTH_OPTIONS = {
    "sr": {"blur_sigma": 1, "noise_sigma": 1, "jpeg_quality": -1},
    "deblur": {"length": 1},
    "denoise": {"sigma": 1},
    "jpeg": {"quality": -1},
    "lowlight": {"gamma": 1, "gain": -1, "shot": 1, "read": 1},
    "derain": {"density": 1, "length": 1, "brightness": 1, "width": 1},
    "raindrop": {"count": 1, "radius": 1, "blur_sigma": 1},
    "desnow": {"density": 1, "size": 1, "veil": 1},
    "underwater": {"distance": 1, "forward_scatter": 1, "blur_sigma": 1},
    "dehaze": {"beta": 1, "near": 1},
}
ODD_OPTIONS = {("deblur", "length"), ("derain", "length")}
WHOLE_OPTIONS = {("raindrop", "count"), ("sr", "jpeg_quality"), ("jpeg", "quality")}


def task_options(task):
    """The strength options of ``task`` and their defaults, e.g. ``{"sigma": (5/255, 50/255)}`` for denoise."""
    fn = _lookup(task)
    return {name: p.default for name, p in inspect.signature(fn).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY}


def degrade(task, images, seed, **options):
    """Degrade ``images`` for ``task`` with ``seed`` (an int or a CPU ``torch.Generator``).

    ``options`` override the task's parameter ranges (see :func:`task_options`); an unknown option is a
    ``ValueError`` that lists the valid ones.
    """
    allowed = task_options(task)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for task {task!r}; valid options: {sorted(allowed)}")
    return TASKS[task](images, as_generator(seed), **options)


def strength_options(task, strength):
    """The options of ``task`` at ``strength`` in 0..1: each strength option of :data:`STRENGTH_OPTIONS` fixed at
    the point of its default range that far from the mildest end (0: the mildest value, 1: the strongest); odd
    kernel sizes round to the nearest odd value, counts to whole numbers."""
    defaults = task_options(task)
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be a number in 0..1 (0 = the mildest degradation of the range, 1 = the "
                         f"strongest), got {strength!r}")
    out = {}
    for name, direction in STRENGTH_OPTIONS[task].items():
        lo, hi = defaults[name]
        toward = strength if direction > 0 else 1.0 - strength
        value = lo * (1.0 - toward) + hi * toward  # exact at both ends of the range
        if (task, name) in ODD_OPTIONS:
            value = 2 * math.floor(value / 2) + 1
        elif (task, name) in WHOLE_OPTIONS:
            value = math.floor(value + 0.5)
        out[name] = value
    return out


def degrade_at_strength(task, images, seed, strength):
    """:func:`degrade` with the task's strength options fixed by :func:`strength_options`; the other options
    keep their random ranges, drawn from ``seed``."""
    return degrade(task, images, seed, **strength_options(task, strength))


def _lookup(task):
    if task not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")
    return TASKS[task]
