"""Image files: list a folder, read an image as ``[3, H, W]`` float 0..1, write a PNG atomically.

Pillow decodes; EXIF orientation is applied so a photo is read the way viewers show it; grey is repeated to
three channels, alpha is dropped (the stored RGB values are kept), palette images are expanded, 16-bit greys are
scaled by 1/65535. Every failure names the file.
"""
import pathlib
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps

from ..checks import require_finite, require_tensor
from ..safefiles import atomic_path

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def list_images(folder, name="folder"):
    """Sorted image files (by extension, case-insensitive; hidden files skipped) directly inside ``folder``."""
    path = pathlib.Path(folder)
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a folder"
        raise ValueError(f"{name} {str(path)!r} {what}; expected a folder of images ({', '.join(IMAGE_EXTENSIONS)})")
    files = sorted(p for p in path.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ValueError(f"{name} {str(path)!r} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def _open(path):
    """Open with Pillow (header only), turning every failure into a ValueError naming the file."""
    path = pathlib.Path(path)
    if path.is_dir():
        raise ValueError(f"{str(path)!r} is a folder, not an image file")
    if not path.is_file():
        raise ValueError(f"image file {str(path)!r} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read image {str(path)!r}: {e}") from None


def image_size(path):
    """``(height, width)`` of an image file as it will be read (after EXIF rotation), from its header."""
    with _open(path) as img:
        try:
            orientation = img.getexif().get(0x0112, 1)
        except (OSError, ValueError, SyntaxError):
            orientation = 1
        w, h = img.size
    # EXIF orientations 5-8 swap the axes.
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def read_image(path):
    """An image file as a float32 tensor ``[3, H, W]`` in 0..1."""
    with _open(path) as img:
        try:
            img = ImageOps.exif_transpose(img)
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img, dtype=np.float32) / 65535.0
            elif img.mode == "F":
                arr = np.asarray(img, dtype=np.float32)
            else:
                # Grey, palette, CMYK and alpha images: Pillow's RGB conversion drops alpha (no compositing).
                arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
        except (OSError, ValueError, SyntaxError) as e:
            raise ValueError(f"cannot read image {str(path)!r}: {e}") from None
    t = torch.from_numpy(np.ascontiguousarray(arr))
    t = t[None].expand(3, -1, -1) if t.ndim == 2 else t.permute(2, 0, 1)
    return t.clamp(0, 1).contiguous()


def write_png(path, image):
    """Write ``image`` (``[3,H,W]``, ``[1,H,W]`` or a batch of one) in 0..1 as an 8-bit PNG, atomically.

    The bytes go to a temporary file in the same folder, which is then renamed over ``path``, so a reader
    never sees a half-written file; the file gets the process umask's permissions (``safefiles.atomic_path``).
    """
    require_tensor("image", image)
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"image must have shape [3, H, W], [1, H, W] or [1, 3, H, W], got {tuple(image.shape)}")
    require_finite("image", image)
    arr = (image.detach().float().cpu().clamp(0, 1) * 255.0).round().to(torch.uint8)
    arr = arr[0].numpy() if arr.shape[0] == 1 else arr.permute(1, 2, 0).numpy()
    path = pathlib.Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")
    return path
