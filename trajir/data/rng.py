"""Seeds, CPU generators and the checked random draws that the data pipeline shares.

Every random number in ``trajir.data`` is drawn on the CPU from an explicit ``torch.Generator`` and then moved to
the images' device, so a seed gives the same draws on every machine. Seeds for one sample are derived from
integer keys (base seed, sample index, epoch, stream) with a SplitMix64 mix, which is stable across Python runs
(unlike ``hash``) and keeps nearby keys uncorrelated.
"""
import math

import torch

from ..checks import compute_dtype, require_finite, require_image_batch

_MASK64 = (1 << 64) - 1


def _splitmix64(x):
    """One SplitMix64 output for the 64-bit state ``x`` (Steele, Lea & Flood 2014 constants)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def derive_seed(*keys):
    """A 63-bit seed from integer keys, e.g. ``derive_seed(seed, index, epoch)``; order matters."""
    state = 0
    for key in keys:
        if isinstance(key, bool) or not isinstance(key, int):
            raise ValueError(f"derive_seed keys must be integers, got {key!r} ({type(key).__name__})")
        state = _splitmix64(state ^ (key & _MASK64))
    return state >> 1


def as_generator(seed, name="seed"):
    """A CPU ``torch.Generator`` from an int seed, or the CPU generator itself (draws then move to the images)."""
    if isinstance(seed, torch.Generator):
        if seed.device.type != "cpu":
            raise ValueError(f"{name} must be a CPU torch.Generator (noise is drawn on the CPU, then moved), "
                             f"got one on {seed.device}")
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"{name} must be an int seed or a CPU torch.Generator, got {type(seed).__name__}")
    return torch.Generator().manual_seed(seed & _MASK64)


def check_range(name, value, low, high):
    """A ``(lo, hi)`` pair of finite numbers with ``low <= lo <= hi <= high``; a single number means ``(v, v)``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = (value, value)
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise ValueError(f"{name} must be a number or a (low, high) pair of numbers, got {value!r}")
    lo, hi = (float(v) for v in value)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if not (low <= lo <= hi <= high):
        raise ValueError(f"{name} must satisfy {low} <= low <= high <= {high}, got ({lo}, {hi})")
    return lo, hi


def check_odd_range(name, value, low, high):
    """Like :func:`check_range` for odd integer kernel sizes."""
    lo, hi = check_range(name, value, low, high)
    if lo != int(lo) or hi != int(hi) or int(lo) % 2 == 0 or int(hi) % 2 == 0:
        raise ValueError(f"{name} must be odd integers, got ({lo:g}, {hi:g})")
    return int(lo), int(hi)


def uniform(generator, shape, value_range):
    """float32 draws of ``shape`` (an int or a tuple), uniform in ``value_range`` (CPU)."""
    lo, hi = value_range
    return lo + (hi - lo) * torch.rand(shape, generator=generator, dtype=torch.float32)


def odd_integers(generator, n, value_range):
    """``n`` odd integers, uniform over the odd values of ``value_range`` (both ends odd)."""
    lo, hi = value_range
    return [lo + 2 * int(k) for k in torch.randint(0, (hi - lo) // 2 + 1, (n,), generator=generator)]


def normal(generator, shape, like):
    """Standard normal noise of ``shape`` drawn on the CPU, then moved to the device and dtype of ``like``."""
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(like.device, like.dtype)


def begin(images, seed):
    """Entry checks shared by the degradations: ``(images in the compute dtype, input dtype, CPU generator)``."""
    require_image_batch("images", images, channels=3)
    require_finite("images", images)
    if images.shape[-2] < 16 or images.shape[-1] < 16:
        raise ValueError(f"images must be at least 16x16 pixels, got {images.shape[-2]}x{images.shape[-1]}")
    return images.to(compute_dtype(images)).clamp(0, 1), images.dtype, as_generator(seed, "generator")


def finish(lq, dtype):
    """Clamp to 0..1 and return in the input's dtype."""
    return lq.clamp(0, 1).to(dtype)
