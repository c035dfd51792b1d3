"""The synthetic degradation registry: task name -> seeded function making a low-quality twin of a clean image.

The tasks are FLUX-IR's training mix (docs/equations.md §11; docs/architecture.md §6). Every function has the signature
``fn(images [B,3,H,W] 0..1, generator, **ranges) -> lq [B,3,H,W] 0..1`` with ``lq`` at the input size,
computes in float32 (float64 stays float64) and returns the input's dtype. Parameters and noise are drawn per
image from a CPU generator and then moved, so a seed gives bit-identical results on every run on one device and
the same draws on every device (the filters then agree up to each device's floating-point rounding).
"""
import inspect

from .camera import deblur, denoise, lowlight, sr
from .rng import as_generator
from .scattering import dehaze, underwater
from .weather import derain, desnow, raindrop

TASKS = {
    "sr": sr,
    "deblur": deblur,
    "denoise": denoise,
    "lowlight": lowlight,
    "derain": derain,
    "raindrop": raindrop,
    "desnow": desnow,
    "underwater": underwater,
    "dehaze": dehaze,
}


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


def _lookup(task):
    if task not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")
    return TASKS[task]
