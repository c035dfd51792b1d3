"""Crop sizes, up-front size checks, and the seeded random crop and flips applied to every training pair."""
import math
import pathlib

import torch

from .images import image_size

_SHOWN = 10


def parse_crop(crop):
    """``None`` (whole images), an int ``s`` (``s x s``) or ``(height, width)`` -> ``None`` or ``(h, w)``."""
    if crop is None:
        return None
    pair = (crop, crop) if isinstance(crop, int) and not isinstance(crop, bool) else crop
    if (not isinstance(pair, (tuple, list)) or len(pair) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 16 for v in pair)):
        raise ValueError(f"crop must be None, an integer >= 16 or a (height, width) pair of integers >= 16, "
                         f"got {crop!r}")
    return int(pair[0]), int(pair[1])


def check_sizes(items, crop, names=None):
    """``(h, w)`` of each item (an image file, read from its header, or a ``[3,H,W]`` tensor labelled by ``names``).

    With a ``crop``, every item must be at least that large; the error lists each one that is not (the first
    ten and a count), with its size, before any training starts.
    """
    sizes, small = [], []
    for i, item in enumerate(items):
        size = tuple(item.shape[-2:]) if torch.is_tensor(item) else image_size(item)
        sizes.append(size)
        if crop is not None and (size[0] < crop[0] or size[1] < crop[1]):
            if isinstance(item, (str, pathlib.Path)):
                label = str(item)
            else:
                label = names[i] if names is not None else f"image {i}"
            small.append(f"{label!r} ({size[0]}x{size[1]})")
    if small:
        listing = ", ".join(small[:_SHOWN]) + (f", ... and {len(small) - _SHOWN} more" if len(small) > _SHOWN else "")
        raise ValueError(f"crop {crop[0]}x{crop[1]} (height x width) is larger than {len(small)} image(s): "
                         f"{listing}; use a smaller crop or remove these images")
    return sizes


def random_crop_flip(images, crop, generator, *, hflip=True, vflip=False, shuffle_channels=False):
    """One random ``crop`` window and the same flips applied to every image of ``images`` (a list of
    ``[C,H,W]`` tensors of one size, e.g. ``[lq, gt]``).

    Four numbers are always drawn from ``generator`` (top, left, horizontal and vertical flip coins), so the
    stream does not depend on the flip options. ``crop=None`` keeps the whole image. ``shuffle_channels`` then
    draws one permutation of the colour channels for all images: with few training photos it keeps a model from
    learning their colours instead of the restoration.
    """
    h, w = images[0].shape[-2:]
    for img in images[1:]:
        if img.shape[-2:] != images[0].shape[-2:]:
            raise ValueError(f"images to crop together must share one size, got {tuple(images[0].shape[-2:])} and "
                             f"{tuple(img.shape[-2:])}")
    ch, cw = crop if crop is not None else (h, w)
    if ch > h or cw > w:
        raise ValueError(f"crop {ch}x{cw} is larger than the image ({h}x{w})")
    top = int(torch.randint(h - ch + 1, (1,), generator=generator))
    left = int(torch.randint(w - cw + 1, (1,), generator=generator))
    coins = torch.rand(2, generator=generator)
    dims = ([-1] if hflip and coins[0] < 0.5 else []) + ([-2] if vflip and coins[1] < 0.5 else [])
    perm = torch.randperm(images[0].shape[-3], generator=generator) if shuffle_channels else None
    out = []
    for img in images:
        img = img[..., top:top + ch, left:left + cw]
        img = img.flip(dims) if dims else img.contiguous()
        out.append(img[..., perm, :, :] if perm is not None else img)
    return out


MEGAPIXEL = 1024 * 1024  # as ComfyUI's ImageScaleToTotalPixels counts: 1.0 is FLUX's native 1024 x 1024


def capped_size(height, width, scale, max_megapixels, multiple=16):
    """``(H, W)`` of a ``height x width`` image scaled by ``scale``, shrunk (aspect kept) when that would exceed
    ``max_megapixels`` (units of 1024 x 1024 pixels), then rounded down to multiples of ``multiple`` (at least
    ``multiple``). It never exceeds the cap, so a x4 upscale of a phone photo cannot ask a diffusion model for a
    hundred-megapixel pass."""
    for name, value in (("height", height), ("width", width), ("multiple", multiple)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    for name, value in (("scale", scale), ("max_megapixels", max_megapixels)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    limit = max_megapixels * MEGAPIXEL
    if limit < multiple * multiple:
        raise ValueError(f"max_megapixels {max_megapixels} is below one {multiple}x{multiple} block")
    factor = min(float(scale), math.sqrt(limit / (height * width)))
    out_h = max(multiple, math.floor(height * factor / multiple) * multiple)
    out_w = max(multiple, math.floor(width * factor / multiple) * multiple)
    while out_h * out_w > limit:  # the floor at `multiple` can overshoot for extreme aspect ratios
        if out_h >= out_w:
            out_h -= multiple
        else:
            out_w -= multiple
    return out_h, out_w
