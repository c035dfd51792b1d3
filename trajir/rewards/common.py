"""Input checks and colour helpers shared by the reward metrics.

Every metric takes images ``[B, 3, H, W]`` in 0..1. Values outside 0..1 are refused, never clipped: a reward
computed on silently clipped pixels (or on a 0..255 image squashed to white) would rank candidates on data the
caller did not mean to score. Clamp first (``images.clamp(0, 1)``) when overshoot is expected.
"""
import math

import torch

from ..checks import require_image_batch

# ITU-R BT.601 luma as (weights, offset, divisor): Y = (w . rgb + offset) / divisor. "ycbcr" is MATLAB's
# rgb2ycbcr Y (16..235 of 255), the convention of the restoration literature's Y-channel PSNR/SSIM; "yiq" is the
# plain luma, MATLAB's rgb2gray, used by pyiqa's NIQE. The order of operations is the references' own, so that
# NIQE's rounding to 8-bit levels falls on the same side.
_LUMA = {
    "ycbcr": ((65.481, 128.553, 24.966), 16.0, 255.0),
    "yiq": ((0.299, 0.587, 0.114), 0.0, 1.0),
}
COLOR_SPACES = tuple(_LUMA)


def check_images(name, images, min_size=1, metric=None):
    """Refuse anything but a non-empty finite float batch ``[B, 3, H, W]`` in 0..1 with ``H, W >= min_size``."""
    require_image_batch(name, images, channels=3)
    if images.shape[0] == 0:
        raise ValueError(f"{name} has an empty batch (shape {tuple(images.shape)}); expected at least one image")
    height, width = images.shape[-2:]
    if min(height, width) < min_size:
        who = f"{metric} needs" if metric else "expected"
        raise ValueError(f"{name} is {height}x{width} pixels; {who} images of at least {min_size}x{min_size}")
    # one pass: NaN propagates through aminmax, so finite extremes mean a finite tensor
    lo, hi = torch.stack(torch.aminmax(images)).tolist()
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name} contains NaN or inf values; expected finite numbers in 0..1")
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"{name} has values in [{lo:.4g}, {hi:.4g}]; expected 0..1 (values outside are refused, "
                         "not clipped: clamp with images.clamp(0, 1) if the overshoot is intended)")
    return images


def check_reference(images, reference, min_size=1, metric=None):
    """The reference of a full-reference metric: present, valid, and the same shape as ``images``."""
    if reference is None:
        raise ValueError(f"{metric} is a full-reference metric: pass reference, a [B, 3, H, W] batch shaped like "
                         "images")
    check_images("reference", reference, min_size, metric)
    if tuple(reference.shape) != tuple(images.shape):
        raise ValueError(f"reference has shape {tuple(reference.shape)} but images has shape {tuple(images.shape)}; "
                         "expected equal shapes")
    return reference


def luma(images, color_space):
    """The luma channel ``[B, 1, H, W]`` of RGB ``images`` in 0..1 (``color_space`` "ycbcr" or "yiq")."""
    if color_space not in _LUMA:
        raise ValueError(f"color_space is {color_space!r}; expected one of {COLOR_SPACES}")
    weights, offset, divisor = _LUMA[color_space]
    w = torch.tensor(weights, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return ((images * w).sum(dim=1, keepdim=True) + offset) / divisor
