"""Weather on the lens and in the air: rain streaks, raindrops on glass, falling snow.

Same contract as ``camera.py``: ``fn(images [B,3,H,W] 0..1, generator, **ranges) -> lq`` at the input size, one
parameter draw per image from the CPU generator. kornia's ``RandomRain`` draws from the global RNG and paints
hard 200/255 lines, and its ``RandomSnow`` brightens dark regions rather than adding flakes, so streaks and flakes
are made here from sparse seeds smeared by kornia's motion and Gaussian kernels and screen-blended over the image.
"""
import math

import kornia
import torch
import torch.nn.functional as F

from .camera import gaussian_blur
from .rng import begin, check_odd_range, check_range, finish, odd_integers, uniform


def _seeds(generator, shape, density, like):
    """Sparse impulses: each pixel is lit with probability ``density[b]``, brightness uniform in 0.5..1.

    One uniform draw per pixel gives both: below the threshold, ``u / density`` is itself uniform in 0..1.
    """
    u = torch.rand(shape, generator=generator, dtype=torch.float32).to(like)
    d = density.to(like)[:, None, None, None]
    return torch.where(u < d, 0.5 + 0.5 * u / d, torch.zeros_like(u))


def _screen(x, layer):
    """Screen blend: light adds without overshooting white (``1 - (1-x)(1-layer)``)."""
    return 1.0 - (1.0 - x) * (1.0 - layer)


def derain(images, generator, *, density=(0.002, 0.01), length=(9, 31), tilt=(-20.0, 20.0),
           brightness=(0.5, 0.9), width=(0.3, 1.0)):
    """Rain streaks: sparse seeds smeared along a near-vertical line of odd ``length`` pixels, ``tilt`` degrees off
    vertical, thickened by a Gaussian of sigma ``width``, scaled so the brightest streak reaches ``brightness`` and
    screen-blended over the image (the layer model of Rain100/Rain800-style synthesis).
    """
    x, dtype, g = begin(images, generator)
    density = check_range("density", density, 0.0, 0.1)
    length = check_odd_range("length", length, 3, 63)
    tilt = check_range("tilt", tilt, -80.0, 80.0)
    brightness = check_range("brightness", brightness, 0.0, 1.0)
    width = check_range("width", width, 0.1, 5.0)
    if length[1] // 2 >= min(x.shape[-2:]):
        raise ValueError(f"length {length[1]} needs images larger than {length[1] // 2} pixels per side, "
                         f"got {x.shape[-2]}x{x.shape[-1]}")
    b, _, h, w = x.shape
    sizes = odd_integers(g, b, length)
    dens, tilts, peak, sigma = (uniform(g, b, r) for r in (density, tilt, brightness, width))
    seeds = _seeds(g, (b, 1, h, w), dens, x)
    # kornia takes one kernel size per call, so each image is smeared on its own.
    streaks = torch.cat([kornia.filters.motion_blur(seeds[i:i + 1], sizes[i], (90.0 + tilts[i:i + 1]).to(x),
                                                    torch.zeros(1).to(x), border_type="reflect", mode="bilinear")
                         for i in range(b)])
    streaks = gaussian_blur(streaks, sigma)
    top = streaks.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-8)
    layer = streaks / top * peak.to(x)[:, None, None, None]
    return finish(_screen(x, layer), dtype)


def raindrop(images, generator, *, count=(5, 30), radius=(0.02, 0.08), minify=(2.0, 5.0), aspect=(0.7, 1.4),
             blur_sigma=(1.0, 3.0)):
    """Raindrops on the glass in front of the lens, as small refracting lenses (an in-house model).

    A drop with centre ``c`` and radii ``(rx, ry)`` (``radius`` is a fraction of the shorter image side,
    ``aspect`` = rx/ry) shows an inverted, ``minify``-times reduced view of the scene around it:
    ``p -> c - minify * (p - c)``, seen out of focus (Gaussian ``blur_sigma``) because the camera focuses on the
    scene. With ``q = |(p - c) / r|^2`` the drop's opacity is ``clip((1 - q) / 0.2, 0, 1)`` (a soft rim) and its
    shade ``1.1 - 0.3 q^2`` (light gathers in the middle, the rim is darker). Where drops overlap, the more
    opaque one wins.
    """
    x, dtype, g = begin(images, generator)
    count = check_range("count", count, 0, 500)
    if count != (int(count[0]), int(count[1])):
        raise ValueError(f"count must be whole numbers of drops, got ({count[0]:g}, {count[1]:g})")
    radius = check_range("radius", radius, 0.002, 0.5)
    minify = check_range("minify", minify, 0.5, 20.0)
    aspect = check_range("aspect", aspect, 0.2, 5.0)
    blur_sigma = check_range("blur_sigma", blur_sigma, 0.05, 10.0)
    b, _, h, w = x.shape
    most = int(count[1])
    counts = torch.randint(int(count[0]), most + 1, (b,), generator=g)
    shorter = float(min(h, w))
    cx, cy = uniform(g, (b, most), (0.0, w - 1.0)), uniform(g, (b, most), (0.0, h - 1.0))
    r = uniform(g, (b, most), radius) * shorter
    ratio = uniform(g, (b, most), aspect).sqrt()
    mag = uniform(g, (b, most), minify)
    sigma = uniform(g, b, blur_sigma)
    active = (torch.arange(most)[None, :] < counts[:, None]).to(x)
    cx, cy, rx, ry, mag = (v.to(x) for v in (cx, cy, r * ratio, r / ratio, mag))

    py = torch.arange(h, device=x.device, dtype=x.dtype)[None, :, None]
    px = torch.arange(w, device=x.device, dtype=x.dtype)[None, None, :]
    alpha = torch.zeros(b, h, w, device=x.device, dtype=x.dtype)
    q_hit = torch.zeros_like(alpha)
    sx, sy = px.expand(b, h, w).clone(), py.expand(b, h, w).clone()
    for n in range(most):
        c_x, c_y = cx[:, n, None, None], cy[:, n, None, None]
        q = ((px - c_x) / rx[:, n, None, None]) ** 2 + ((py - c_y) / ry[:, n, None, None]) ** 2
        a = ((1.0 - q) / 0.2).clamp(0, 1) * active[:, n, None, None]
        wins = a > alpha
        m = mag[:, n, None, None]
        sx = torch.where(wins, c_x - m * (px - c_x), sx)
        sy = torch.where(wins, c_y - m * (py - c_y), sy)
        q_hit = torch.where(wins, q, q_hit)
        alpha = torch.where(wins, a, alpha)
    # grid_sample's normalised coordinates for align_corners=False: pixel centre i maps to (2i + 1) / size - 1.
    grid = torch.stack([(2 * sx + 1) / w - 1, (2 * sy + 1) / h - 1], dim=-1)
    seen = F.grid_sample(gaussian_blur(x, sigma), grid, mode="bilinear", padding_mode="reflection",
                         align_corners=False)
    shade = (1.1 - 0.3 * q_hit.clamp(0, 1) ** 2)[:, None]
    a = alpha[:, None]
    return finish(x * (1.0 - a) + seen * shade * a, dtype)


def desnow(images, generator, *, density=(0.002, 0.01), size=(0.6, 2.5), brightness=(0.85, 1.0),
           veil=(0.0, 0.25)):
    """Falling snow: two layers of Gaussian flakes (far: small and dense, near: large and four times sparser),
    screen-combined, laid over the image in the flake colour ``brightness``, then a ``veil`` of the same colour
    for the scattering of the snowfall (an in-house model).

    ``size`` is the flake's Gaussian sigma in pixels, split at its geometric mean between the two layers; an
    impulse blurred by a Gaussian of sigma ``s`` is scaled by ``2 pi s^2`` so a flake's centre keeps the seed's
    brightness.
    """
    x, dtype, g = begin(images, generator)
    density = check_range("density", density, 0.0, 0.1)
    size = check_range("size", size, 0.2, 10.0)
    brightness = check_range("brightness", brightness, 0.0, 1.0)
    veil = check_range("veil", veil, 0.0, 1.0)
    b, _, h, w = x.shape
    mid = math.sqrt(size[0] * size[1])
    dens = uniform(g, b, density)
    colour, fog = (uniform(g, b, r).to(x)[:, None, None, None] for r in (brightness, veil))
    clear = torch.ones(b, 1, h, w, device=x.device, dtype=x.dtype)
    for layer_density, sizes in ((dens, (size[0], mid)), (dens / 4, (mid, size[1]))):
        sigma = uniform(g, b, sizes)
        flakes = gaussian_blur(_seeds(g, (b, 1, h, w), layer_density, x), sigma)
        clear = clear * (1.0 - (flakes * (2 * math.pi) * sigma.to(x)[:, None, None, None] ** 2).clamp(0, 1))
    snow = 1.0 - clear
    lq = x * (1.0 - snow) + colour * snow
    return finish(lq * (1.0 - fog) + colour * fog, dtype)
