"""Scattering media: haze and underwater, both from the atmospheric-scattering image model with a depth proxy.

``I = J * t + A * (1 - t)`` with transmission ``t = exp(-beta * z)`` (Koschmieder; McCartney 1976) is the haze
model; under water the same model holds per colour channel with wavelength-dependent ``beta_c`` (red light is
absorbed first), plus the forward-scattered blur of the Jaffe-McGlamery model (Jaffe 1990, McGlamery 1980).
Clean photographs carry no depth, so ``depth_proxy`` makes a smooth one: distance grows towards a random
"horizon" direction near the top of the frame, with low-frequency variation on top.
"""
import torch
import torch.nn.functional as F

from .camera import gaussian_blur
from .rng import begin, check_range, finish, normal, uniform


def depth_proxy(shape, generator, like, *, tilt=30.0, roughness=0.3):
    """A smooth relative depth map ``[B,1,H,W]`` in 0..1 (0 near, 1 far).

    A linear ramp rising towards a direction within ``tilt`` degrees of "up" (scenes recede towards the horizon),
    plus ``roughness`` times a bicubic-upsampled 4x4 Gaussian field, rescaled to span 0..1 per image.
    """
    b, h, w = shape[0], shape[-2], shape[-1]
    theta = torch.deg2rad(uniform(generator, b, (-tilt, tilt))).to(like)
    coarse = normal(generator, (b, 1, 4, 4), like)
    ys = torch.linspace(1.0, -1.0, h, device=like.device, dtype=like.dtype)  # +1 at the top row
    xs = torch.linspace(-1.0, 1.0, w, device=like.device, dtype=like.dtype)
    ramp = (torch.cos(theta)[:, None, None, None] * ys[:, None]
            + torch.sin(theta)[:, None, None, None] * xs[None, :])
    field = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)
    depth = ramp + roughness * field
    lo = depth.amin(dim=(1, 2, 3), keepdim=True)
    hi = depth.amax(dim=(1, 2, 3), keepdim=True)
    return (depth - lo) / (hi - lo).clamp_min(1e-6)


def dehaze(images, generator, *, beta=(0.6, 2.5), airlight=(0.7, 1.0), near=(0.0, 0.3)):
    """Homogeneous haze: ``I = J t + A (1 - t)``, ``t = exp(-beta * z)``, ``z`` from ``near`` to 1 (relative depth).

    ``beta`` is the scattering coefficient per unit of the scene's depth range (RESIDE synthesises 0.6-1.8 with
    metric depth); ``airlight`` the grey level of the atmospheric light ``A``.
    """
    x, dtype, g = begin(images, generator)
    beta = check_range("beta", beta, 0.0, 10.0)
    airlight = check_range("airlight", airlight, 0.0, 1.0)
    near = check_range("near", near, 0.0, 1.0)
    b = x.shape[0]
    coef, light, z0 = (uniform(g, b, r).to(x)[:, None, None, None] for r in (beta, airlight, near))
    z = z0 + (1.0 - z0) * depth_proxy(x.shape, g, x)
    t = torch.exp(-coef * z)
    return finish(x * t + light * (1.0 - t), dtype)


# Attenuation per metre for red, green and blue (a range from clear oceanic to greenish coastal water, after
# Jerlov's water types) and the colour of the veiling light that backscatter adds.
UNDERWATER_BETA = ((0.25, 0.6), (0.03, 0.25), (0.02, 0.35))
UNDERWATER_BACKSCATTER = ((0.0, 0.2), (0.3, 0.6), (0.3, 0.7))


def underwater(images, generator, *, distance=(1.0, 8.0), forward_scatter=(0.0, 0.4), blur_sigma=(0.5, 2.0)):
    """Underwater colour cast and haze: a Jaffe-McGlamery-style sum of direct, forward-scattered and backscattered
    light.

    Per channel ``c``: ``D_c = J_c exp(-beta_c z)``, ``I_c = (1-f) D_c + f (G_sigma * D_c) + B_c (1 - exp(-beta_c z))``
    with ``z = distance * (0.5 + depth_proxy)`` metres, ``beta_c`` drawn from ``UNDERWATER_BETA`` (red is absorbed
    fastest) and the veiling light ``B_c`` from ``UNDERWATER_BACKSCATTER``; ``f`` is the forward-scatter share
    and ``G_sigma`` its Gaussian point-spread function.
    """
    x, dtype, g = begin(images, generator)
    distance = check_range("distance", distance, 0.0, 100.0)
    forward_scatter = check_range("forward_scatter", forward_scatter, 0.0, 1.0)
    blur_sigma = check_range("blur_sigma", blur_sigma, 0.05, 10.0)
    b = x.shape[0]
    beta = torch.stack([uniform(g, b, r) for r in UNDERWATER_BETA], dim=1).to(x)[:, :, None, None]
    veil = torch.stack([uniform(g, b, r) for r in UNDERWATER_BACKSCATTER], dim=1).to(x)[:, :, None, None]
    dist = uniform(g, b, distance).to(x)[:, None, None, None]
    share = uniform(g, b, forward_scatter).to(x)[:, None, None, None]
    sigma = uniform(g, b, blur_sigma)
    z = dist * (0.5 + depth_proxy(x.shape, g, x))
    t = torch.exp(-beta * z)
    direct = x * t
    forward = gaussian_blur(direct, sigma)
    return finish((1.0 - share) * direct + share * forward + veil * (1.0 - t), dtype)

