"""Camera degradations: super-resolution chain, motion blur, sensor noise, low light, JPEG compression.

Each task is ``fn(images [B,3,H,W] 0..1, generator, **ranges) -> lq [B,3,H,W] 0..1`` at the input size; every
range is ``(low, high)`` (or one number) and each image draws its own parameters from the CPU generator, in a
fixed order, so a seed reproduces the batch exactly. Noise levels are on the 0..1 intensity scale (x/255).
"""
import math

import kornia
import torch
import torch.nn.functional as F

from .rng import begin, check_odd_range, check_range, finish, normal, odd_integers, uniform


def gaussian_blur(x, sigma):
    """Isotropic Gaussian blur with one sigma per image (``sigma``: CPU tensor [B]).

    The kernel reaches 3 sigma, cut to the image size (reflect padding needs a radius below each side).
    """
    radius = max(1, min(math.ceil(3.0 * float(sigma.max())), min(x.shape[-2:]) - 1))
    sigmas = sigma.to(x.device, x.dtype)[:, None].expand(-1, 2)
    return kornia.filters.gaussian_blur2d(x, (2 * radius + 1, 2 * radius + 1), sigmas, border_type="reflect")


def jpeg(x, quality):
    """JPEG encode-decode per image (``quality``: CPU tensor [B] in 1..100) with kornia's codec model."""
    return kornia.enhance.jpeg_codec_differentiable(x, quality.to(x.device, x.dtype))


def sr(images, generator, *, scale=4, blur_sigma=(0.2, 3.0), noise_sigma=(1 / 255, 20 / 255),
       jpeg_quality=(40, 95)):
    """x``scale`` super-resolution input: Gaussian blur, bicubic down, Gaussian noise, JPEG, bicubic back up.

    A one-pass version of Real-ESRGAN's first-order chain (Wang et al. 2021, blur sigma 0.2-3, noise 1-30/255,
    JPEG 30-95), which docs/equations.md §11 names as FLUX-IR's SR degradation; the result is resized to the input size
    because the restorer maps LQ to HQ at equal size.
    """
    x, dtype, g = begin(images, generator)
    if isinstance(scale, bool) or not isinstance(scale, int) or not 2 <= scale <= 8:
        raise ValueError(f"scale must be an integer in 2..8, got {scale!r}")
    blur_sigma = check_range("blur_sigma", blur_sigma, 0.05, 10.0)
    noise_sigma = check_range("noise_sigma", noise_sigma, 0.0, 0.5)
    jpeg_quality = check_range("jpeg_quality", jpeg_quality, 1, 100)
    b, _, h, w = x.shape
    sigma = uniform(g, b, blur_sigma)
    noise_level = uniform(g, b, noise_sigma)
    quality = uniform(g, b, jpeg_quality).round()
    small = F.interpolate(gaussian_blur(x, sigma), size=(math.ceil(h / scale), math.ceil(w / scale)),
                          mode="bicubic", antialias=True, align_corners=False)
    small = small + noise_level.to(x)[:, None, None, None] * normal(g, small.shape, x)
    small = jpeg(small.clamp(0, 1), quality)
    return finish(F.interpolate(small, size=(h, w), mode="bicubic", align_corners=False), dtype)


def deblur(images, generator, *, length=(7, 21), angle=(0.0, 360.0), direction=(-0.5, 0.5)):
    """Linear camera-shake blur: kornia's motion kernel of odd ``length`` pixels at ``angle`` degrees.

    ``direction`` in -1..1 weights the streak towards one end (0 = uniform), as in
    ``kornia.filters.get_motion_kernel2d``.
    """
    x, dtype, g = begin(images, generator)
    length = check_odd_range("length", length, 3, 63)
    angle = check_range("angle", angle, -360.0, 360.0)
    direction = check_range("direction", direction, -1.0, 1.0)
    if length[1] // 2 >= min(x.shape[-2:]):
        raise ValueError(f"length {length[1]} needs images larger than {length[1] // 2} pixels per side, "
                         f"got {x.shape[-2]}x{x.shape[-1]}")
    b = x.shape[0]
    sizes = odd_integers(g, b, length)
    angles = uniform(g, b, angle)
    directions = uniform(g, b, direction)
    # One kernel size per call in kornia, so images with different lengths are blurred one at a time.
    out = [kornia.filters.motion_blur(x[i:i + 1], sizes[i], angles[i:i + 1].to(x), directions[i:i + 1].to(x),
                                      border_type="reflect", mode="bilinear") for i in range(b)]
    return finish(torch.cat(out), dtype)


def compress(images, generator, *, quality=(10, 50)):
    """JPEG compression artefacts (blocking, ringing, colour bleeding) at a ``quality`` drawn per image, with
    kornia's model of the codec (the 8x8 DCT quantisation and 4:2:0 chroma subsampling of baseline JPEG)."""
    x, dtype, g = begin(images, generator)
    quality = check_range("quality", quality, 1, 100)
    if quality != (int(quality[0]), int(quality[1])):
        raise ValueError(f"quality must be whole numbers, got ({quality[0]:g}, {quality[1]:g})")
    level = torch.randint(int(quality[0]), int(quality[1]) + 1, (x.shape[0],), generator=g).float()
    return finish(jpeg(x, level), dtype)


def denoise(images, generator, *, sigma=(5 / 255, 50 / 255)):
    """Additive white Gaussian noise with one standard deviation per image (the usual 5..50 / 255 band)."""
    x, dtype, g = begin(images, generator)
    sigma = check_range("sigma", sigma, 0.0, 1.0)
    level = uniform(g, x.shape[0], sigma).to(x)[:, None, None, None]
    return finish(x + level * normal(g, x.shape, x), dtype)


def lowlight(images, generator, *, gamma=(1.2, 2.2), gain=(0.05, 0.35), shot=(1e-4, 5e-3),
             read=(1e-3, 1e-2)):
    """Synthetic low light plus sensor noise: ``d = gain * x**gamma``, ``lq = d + sqrt(shot*d + read**2) * n``.

    The power darkens shadows more than highlights (exposure is lost non-linearly after the camera curve);
    ``shot`` is the Poisson variance per unit intensity and ``read`` the Gaussian read-noise deviation, the
    heteroscedastic Gaussian approximation of Poisson-Gaussian sensor noise (Foi et al. 2008). The paper's
    low-light task is "synthetic low-light + noise".
    """
    x, dtype, g = begin(images, generator)
    gamma = check_range("gamma", gamma, 1.0, 5.0)
    gain = check_range("gain", gain, 0.01, 1.0)
    shot = check_range("shot", shot, 0.0, 0.1)
    read = check_range("read", read, 0.0, 0.2)
    b = x.shape[0]
    per_image = [uniform(g, b, r).to(x)[:, None, None, None] for r in (gamma, gain, shot, read)]
    gam, gn, sh, rd = per_image
    dark = gn * x.pow(gam)
    return finish(dark + torch.sqrt(sh * dark + rd * rd) * normal(g, x.shape, x), dtype)
