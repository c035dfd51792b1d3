"""Classical restoration baselines the learned restorers are measured against (no training, no model files).

- ``gamma_nlm`` (low light): a global gamma curve that lifts the image's mean brightness to ``target_mean``, then
  non-local means (Buades, Coll & Morel 2005) with its strength set from a robust noise estimate. The defaults
  (mean 0.35, strength 1.0) scored best of a small grid on the training photos of the CPU configs.
- ``gray_world`` (underwater): per-channel gains that equalise the channel means (grey-world white balance),
  then a per-channel percentile stretch to the full range.

Images are ``[B, 3, H, W]`` in 0..1, processed per image.
"""
import math

import torch
import torch.nn.functional as F

from .checks import require_image_batch


def noise_sigma(image):
    """Robust per-image noise estimate: the median absolute value of a zero-mean 3x3 high-pass of each channel,
    scaled so that white Gaussian noise of std ``s`` gives ``s``."""
    kernel = torch.tensor([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]], dtype=image.dtype)
    kernel = kernel.to(image.device).expand(image.shape[1], 1, 3, 3)
    high = F.conv2d(image, kernel, groups=image.shape[1])       # the filter's gain on white noise: sqrt(36) = 6
    return high.abs().flatten(1).median(dim=1).values / (0.6745 * 6.0)


def non_local_means(image, h, patch=5, window=11):
    """Non-local means of ``image`` ``[B, C, H, W]``: each pixel becomes the mean of the pixels in its search
    ``window``, weighted by ``exp(-d / h^2)`` with ``d`` the mean squared difference of the two ``patch`` x
    ``patch`` neighbourhoods (over channels) and ``h`` (a number or one per image) the filtering strength.
    """
    if patch % 2 == 0 or window % 2 == 0:
        raise ValueError(f"patch and window must be odd, got patch={patch}, window={window}")
    b, c, height, width = image.shape
    h = torch.as_tensor(h, dtype=image.dtype, device=image.device).reshape(-1, 1, 1, 1).expand(b, 1, 1, 1)
    r, p = window // 2, patch // 2
    padded = F.pad(image, (r + p,) * 4, mode="reflect")
    centre = padded[..., r:r + height + 2 * p, r:r + width + 2 * p]
    total = torch.zeros_like(image)
    weights = torch.zeros(b, 1, height, width, dtype=image.dtype, device=image.device)
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            shifted = padded[..., r + dy:r + dy + height + 2 * p, r + dx:r + dx + width + 2 * p]
            distance = F.avg_pool2d(((centre - shifted) ** 2).mean(1, keepdim=True), patch, stride=1)
            w = torch.exp(-distance / h.clamp_min(1e-12) ** 2)
            total += w * shifted[..., p:p + height, p:p + width]
            weights += w
    return total / weights


def gamma_curve(image, target_mean=0.35):
    """``image ** g`` per image with ``g`` chosen so that the mean brightness becomes ``target_mean``."""
    mean = image.mean(dim=(1, 2, 3)).clamp(1e-4, 0.999)
    g = (math.log(target_mean) / mean.log()).reshape(-1, 1, 1, 1)
    return image.clamp_min(0) ** g


def gamma_nlm(lq, target_mean=0.35, strength=1.0, patch=5, window=11):
    """Low-light baseline: gamma to ``target_mean`` brightness, then non-local means with ``h = strength x`` the
    estimated noise std of the brightened image."""
    require_image_batch("lq", lq)
    bright = gamma_curve(lq.float(), target_mean)
    h = strength * noise_sigma(bright).clamp_min(1e-3) * math.sqrt(2)
    return non_local_means(bright, h, patch, window).clamp(0, 1).to(lq.dtype)


def gray_world(lq, low=0.01, high=0.99):
    """Underwater baseline: grey-world channel gains, then a per-channel ``low``..``high`` percentile stretch."""
    require_image_batch("lq", lq)
    x = lq.float()
    means = x.mean(dim=(2, 3), keepdim=True).clamp_min(1e-4)
    x = (x * means.mean(1, keepdim=True) / means).clamp(0, 1)
    flat = x.flatten(2)
    lo = flat.quantile(low, dim=2)[..., None, None]
    hi = flat.quantile(high, dim=2)[..., None, None]
    return ((x - lo) / (hi - lo).clamp_min(1e-4)).clamp(0, 1).to(lq.dtype)


BASELINES = {"lowlight": ("gamma + non-local means", gamma_nlm), "underwater": ("grey world + stretch", gray_world)}
