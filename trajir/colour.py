"""Colour taken from the LQ image, for restorers of power-law low light (the ``lowlight`` degradation).

That degradation is ``lq = gain * x**gamma`` plus noise, with one gamma and one gain for all three channels. The
power multiplies every log colour ratio by gamma, so a dark input looks more saturated than the scene, and the
gain is unknown; but ``lq ** (1 / gamma)`` has the scene's channel proportions whatever the gain. A network that
must guess gamma and the gain from one image (the compact low-light restorer saw four photos, with shuffled
channels) leaves a per-image colour cast. ``match_lq_colour`` removes it after sampling: it reads gamma off the
restored image itself (the slope of log LQ against log restored, on block means so that sensor noise averages
out), and scales the restored channels so that their means have the proportions of ``lq ** (1 / gamma)``,
keeping the restored image's mean brightness. One gain per channel and image: structure and noise are untouched.
"""
import torch
import torch.nn.functional as F

from .checks import require_image_batch

COLOUR_STEPS = ("", "lq_power_law")   # the values of Recipe.colour: none, match_lq_colour


def require_colour_step(name, step):
    """``step`` if it is one of ``COLOUR_STEPS``, else an error naming ``name``."""
    if step not in COLOUR_STEPS:
        raise ValueError(f"{name} must be one of {COLOUR_STEPS}, got {step!r}")
    return step


def power_law_gamma(lq, restored, block=4, quantile=0.25, bounds=(1.0, 5.0)):
    """Per image, the gamma of ``lq ~ gain * restored ** gamma`` -> ``[B]``.

    Least squares of log LQ on log restored over ``block`` x ``block`` means of every channel, with one intercept
    (the gain), so the differences between channels count as well: a colour cast of ``restored`` tilts the slope
    a little. Per-channel intercepts remove that tilt but scored 0.6 dB lower on the low-light training photos,
    where this rule was chosen. Blocks darker than the ``quantile`` of the restored brightness are left out (there
    the LQ is mostly noise), selected on the restored side so the selection does not bias the slope. The result is clamped to ``bounds``; an image with
    no brightness variation gets the lower bound.
    """
    k = max(1, min(block, *lq.shape[-2:]))
    x = F.avg_pool2d(restored.float(), k).clamp_min(1e-3).log().flatten(2)     # [B, C, n]
    y = F.avg_pool2d(lq.float(), k).clamp_min(1e-4).log().flatten(2)
    brightness = x.mean(1)                                                      # [B, n]
    keep = (brightness >= brightness.quantile(quantile, dim=1, keepdim=True)).unsqueeze(1).expand_as(x).float()
    count = keep.sum((1, 2))
    mx, my = (x * keep).sum((1, 2)) / count, (y * keep).sum((1, 2)) / count
    dx, dy = x - mx[:, None, None], y - my[:, None, None]
    var, cov = (dx * dx * keep).sum((1, 2)), (dx * dy * keep).sum((1, 2))
    gamma = torch.where(var > 1e-8, cov / var.clamp_min(1e-8), torch.full_like(var, bounds[0]))
    return gamma.nan_to_num(bounds[0]).clamp(*bounds)


def match_lq_colour(restored, lq, gamma=None):
    """``restored`` ``[B, 3, H, W]`` with its channel means rebalanced to the proportions of ``lq ** (1 / gamma)``
    (0..1 images, same size); ``gamma`` (a number or one per image) defaults to ``power_law_gamma``."""
    require_image_batch("restored", restored)
    require_image_batch("lq", lq)
    if restored.shape != lq.shape:
        raise ValueError(f"restored and lq must have the same shape, got {tuple(restored.shape)} and "
                         f"{tuple(lq.shape)}")
    if gamma is None:
        gamma = power_law_gamma(lq, restored)
    gamma = torch.as_tensor(gamma, dtype=torch.float32, device=lq.device).reshape(-1, 1, 1, 1)
    if bool((gamma <= 0).any()):
        raise ValueError(f"gamma must be > 0, got {gamma.flatten().tolist()}")
    target = (lq.float().clamp_min(0) ** (1 / gamma)).mean((-1, -2))             # [B, C]
    means = restored.float().mean((-1, -2)).clamp_min(1e-4)
    shares = target / target.sum(1, keepdim=True).clamp_min(1e-8)
    gains = shares * means.sum(1, keepdim=True) / means
    return (restored.float() * gains[..., None, None]).clamp(0, 1).to(restored.dtype)
