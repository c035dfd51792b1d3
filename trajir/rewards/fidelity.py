"""Full-reference fidelity: PSNR and SSIM through kornia, on RGB or on the luma channel.

- PSNR (dB): ``10 log10(1 / MSE)`` per image over all channels and pixels, images in 0..1 (kornia's ``psnr``,
  which pools its MSE over whatever it is given, vmapped over the batch). Identical images have an infinite
  PSNR; scores are capped at ``PSNR_CAP`` = 100 dB (an MSE of 1e-10) so that a reward stays finite.
- SSIM (Wang et al., IEEE TIP 13(4), 2004): an 11x11 Gaussian window of sigma 1.5, K1 = 0.01, K2 = 0.03, data
  range 1, averaged over the valid region (no padding) and the channels -- kornia's ``ssim`` with
  ``padding="valid"``, the same numbers as scikit-image's ``structural_similarity(gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=1)``.
- The ``_y`` variants score the Y channel of YCbCr (MATLAB ``rgb2ycbcr``, 16..235 of 255, divided by 255): the
  convention of the restoration literature, and of FLUX-IR's deraining tables.

Inputs of any float dtype are computed in float32 (float64 stays float64); scores are float32 ``[B]``.
"""
import kornia
import torch
from torch.func import vmap

from ..checks import compute_dtype
from .common import check_images, check_reference, luma

PSNR_CAP = 100.0
SSIM_WINDOW = 11


def _prepare(images, reference, metric, min_size=1):
    check_images("images", images, min_size, metric)
    check_reference(images, reference, min_size, metric)
    dtype = compute_dtype(images, reference)
    return images.to(dtype), reference.to(dtype)


def _psnr(images, reference):
    # vmap turns kornia's pooled MSE into one batched reduction; a Python loop of per-image calls pays the
    # thread-pool start-up B times, which on a busy CPU costs more than the arithmetic
    per_image = vmap(lambda a, b: kornia.metrics.psnr(a, b, 1.0))(images, reference)
    return per_image.clamp(max=PSNR_CAP).float()


def _ssim(images, reference):
    ssim_map = kornia.metrics.ssim(images, reference, SSIM_WINDOW, max_val=1.0, eps=0.0, padding="valid")
    return ssim_map.mean(dim=(1, 2, 3)).float()


def psnr(images, reference):
    """PSNR in dB over RGB of ``images`` against ``reference`` (both ``[B, 3, H, W]`` in 0..1) -> ``[B]``."""
    images, reference = _prepare(images, reference, "PSNR")
    with torch.no_grad():
        return _psnr(images, reference)


def psnr_y(images, reference):
    """PSNR in dB on the YCbCr Y channel -> ``[B]``."""
    images, reference = _prepare(images, reference, "PSNR-Y")
    with torch.no_grad():
        return _psnr(luma(images, "ycbcr"), luma(reference, "ycbcr"))


def ssim(images, reference):
    """SSIM over RGB (mean of the per-channel maps) -> ``[B]``; images of at least 11x11 pixels."""
    images, reference = _prepare(images, reference, "SSIM", SSIM_WINDOW)
    with torch.no_grad():
        return _ssim(images, reference)


def ssim_y(images, reference):
    """SSIM on the YCbCr Y channel -> ``[B]``; images of at least 11x11 pixels."""
    images, reference = _prepare(images, reference, "SSIM-Y", SSIM_WINDOW)
    with torch.no_grad():
        return _ssim(luma(images, "ycbcr"), luma(reference, "ycbcr"))
