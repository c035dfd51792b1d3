"""Public-domain and CC0 sample photos shipped for demos, tests and the CPU training configs.

Taken from scikit-image's bundled data and downscaled (longest side 384 px, Lanczos, lossless PNG); README.md
in this folder gives the source and licence of each file. ``sample_pair`` turns a photo (or any image) into an
(LQ, GT) pair with a seeded synthetic degradation, the input of the zero-download ComfyUI workflows.
"""
import math
import pathlib

import torch.nn.functional as F

from ...checks import require_finite, require_image_batch, require_seed
from ..datasets import split_holdout
from ..degrade import TASKS, degrade_at_strength
from ..images import list_images, read_image

FOLDER = pathlib.Path(__file__).resolve().parent
HELD_OUT = 2  # photos kept out of training for validation
SIDE_MULTIPLE = 16  # FLUX-family latents are 1/8 of the image with 2x2 patches: sides divisible by 16
NO_DEGRADATION = "none"


def sample_images():
    """The sample photos, sorted by name."""
    return list_images(FOLDER, "samples folder")


def sample_split():
    """``(train, held_out)`` lists of sample photos: a fixed split by file name (:func:`split_holdout`)."""
    return split_holdout(sample_images(), HELD_OUT)


def sample_names():
    """The names of the sample photos without extension (``"astronaut"``, ...), sorted."""
    return [p.stem for p in sample_images()]


def load_sample(name):
    """The sample photo ``name`` (see :func:`sample_names`) as ``[1, 3, H, W]`` float32 in 0..1."""
    names = sample_names()
    if name not in names:
        raise ValueError(f"unknown sample photo {name!r}; the bundled photos are {names}")
    return read_image(FOLDER / f"{name}.png")[None]


def resize_longest(images, size):
    """``images`` ``[B, 3, H, W]`` resized (antialiased bicubic) so the longest side is ``size``; 0 keeps them."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"size must be an integer >= 0 (the longest side in pixels, 0 keeps the size), got {size!r}")
    h, w = images.shape[-2:]
    if size == 0 or size == max(h, w):
        return images
    scale = size / max(h, w)
    shape = (max(1, round(h * scale)), max(1, round(w * scale)))
    return F.interpolate(images, size=shape, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)


def crop_to_multiple(images, multiple=SIDE_MULTIPLE):
    """The centre crop of ``images`` whose sides are multiples of ``multiple`` (at least ``multiple``)."""
    h, w = images.shape[-2:]
    if h < multiple or w < multiple:
        raise ValueError(f"the image is {h}x{w} pixels; at least {multiple}x{multiple} is needed")
    ch, cw = h // multiple * multiple, w // multiple * multiple
    top, left = (h - ch) // 2, (w - cw) // 2
    return images[..., top:top + ch, left:left + cw]


def sample_pair(clean, task=NO_DEGRADATION, strength=0.5, seed=0, size=0, downscale=1):
    """An ``(lq, gt)`` pair, each ``[B, 3, H, W]`` float32 in 0..1, from a clean image batch ``clean``.

    ``clean`` is resized so its longest side is ``size`` (0 keeps it) and centre-cropped to sides divisible by
    16; that is the GT. The LQ is the GT degraded for ``task`` (one of ``trajir.data.TASKS``; ``"none"`` leaves
    it clean) at ``strength`` (``degrade_at_strength``: 0 the mildest of the task's range, 1 the strongest) with
    the other parameters drawn from ``seed``, then shrunk ``downscale`` times (antialiased bicubic) when
    ``downscale`` > 1: the input of a x``downscale`` super-resolution, whose GT is the full-size photo.
    """
    require_image_batch("clean", clean, channels=3)
    require_finite("clean", clean)
    require_seed("seed", seed)
    if task != NO_DEGRADATION and task not in TASKS:
        raise ValueError(f"task must be {NO_DEGRADATION!r} or one of {sorted(TASKS)}, got {task!r}")
    if isinstance(downscale, bool) or not isinstance(downscale, int) or not 1 <= downscale <= 8:
        raise ValueError(f"downscale must be an integer in 1..8, got {downscale!r}")
    gt = crop_to_multiple(resize_longest(clean.float().clamp(0, 1), size))
    if downscale > 1 and min(gt.shape[-2:]) < SIDE_MULTIPLE * downscale:
        raise ValueError(f"downscale {downscale} needs an image of at least {SIDE_MULTIPLE * downscale} pixels per "
                         f"side, got {gt.shape[-2]}x{gt.shape[-1]}")
    lq = gt if task == NO_DEGRADATION else degrade_at_strength(task, gt, seed, strength)
    if downscale > 1:
        small = (math.ceil(gt.shape[-2] / downscale), math.ceil(gt.shape[-1] / downscale))
        lq = F.interpolate(lq, size=small, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    return lq.contiguous(), gt.contiguous()
