"""Underwater colour metrics FLUX-IR reports for underwater enhancement: UCIQE and UIQM (no-reference, higher is
better). Both are closed-form image statistics, vectorised over the batch; images in 0..1 are computed in float32.

UCIQE (Yang & Sowmya, IEEE TIP 24(12), 2015), in CIELab (D65, kornia's ``rgb_to_lab``), with lightness and chroma
on one 0..1 scale (``L = L*/100``, ``C = sqrt(a*^2 + b*^2)/100``):

    UCIQE = 0.4680 sigma_c + 0.2745 con_l + 0.2576 mu_s

``sigma_c``: the (population) standard deviation of chroma; ``con_l``: the mean lightness of the brightest 1 % of
the pixels minus that of the darkest 1 % (at least one pixel each); ``mu_s``: the mean saturation ``C / L``
(0 where ``L = 0``).

UIQM (Panetta, Gao & Agaian, IEEE JOE 41(3), 2016), on 0..255 values:

    UIQM = 0.0282 UICM + 0.2953 UISM + 3.5753 UIConM

- UICM (colourfulness, Eq. 1-4): on ``RG = R - G`` and ``YB = (R + G)/2 - B``, the alpha-trimmed means (drop the
  ceil(0.1 N) lowest and floor(0.1 N) highest values) and the variances about them over all N pixels:
  ``-0.0268 sqrt(mu_RG^2 + mu_YB^2) + 0.1586 sqrt(s2_RG + s2_YB)``.
- UISM (sharpness, Eq. 5-6): per channel, the Sobel gradient magnitude (replicate borders) times the channel;
  its EME over 10x10 blocks, ``2/(k1 k2) sum log(max/min)`` (blocks whose minimum is 0 add nothing); channels
  weighted 0.299, 0.587, 0.114.
- UIConM (contrast, Eq. 7): the logAMEE of the intensity ``(R + G + B)/3`` over 10x10 blocks,
  ``-1/(k1 k2) sum q log q`` with ``q = (max - min)/(max + min)`` (blocks with ``q = 0`` add nothing). The PLIP
  operations of the paper are replaced by ordinary arithmetic, as the evaluation code behind most published
  UIQM numbers does; unlike that code, the block extremes are taken on the intensity, as the paper defines it,
  not across the three channels (which would score a colour cast as contrast).

Images are cropped to whole 10x10 blocks from the top-left corner; they must be at least 10x10 pixels.
"""
import math

import kornia
import torch
import torch.nn.functional as F

from ..checks import compute_dtype
from .common import check_images

UCIQE_WEIGHTS = (0.4680, 0.2745, 0.2576)
UIQM_WEIGHTS = (0.0282, 0.2953, 3.5753)
UIQM_BLOCK = 10
_TRIM = 0.1


def uciqe(images):
    """UCIQE of ``images [B, 3, H, W]`` in 0..1 -> ``[B]`` float32."""
    check_images("images", images, 1, "UCIQE")
    with torch.no_grad():
        lab = kornia.color.rgb_to_lab(images.to(compute_dtype(images))).flatten(2) / 100  # [B, 3, N]
        light, chroma = lab[:, 0], lab[:, 1:].norm(dim=1)
        sigma_c = chroma.std(dim=-1, correction=0)
        k = max(1, round(0.01 * light.shape[-1]))
        con_l = light.topk(k, dim=-1).values.mean(-1) - light.topk(k, dim=-1, largest=False).values.mean(-1)
        saturation = torch.where(light > 0, chroma / light.clamp(min=torch.finfo(light.dtype).tiny), 0)
        mu_s = saturation.mean(-1)
        c1, c2, c3 = UCIQE_WEIGHTS
        return (c1 * sigma_c + c2 * con_l + c3 * mu_s).float()


def _trimmed_stats(x):
    """Alpha-trimmed mean and the variance about it of each row of ``x [B, N]`` (UIQM Eqs. 2-3)."""
    n = x.shape[-1]
    low, high = math.ceil(_TRIM * n), math.floor(_TRIM * n)
    kept = x.sort(dim=-1).values[:, low : n - high]
    mean = kept.mean(-1)
    return mean, (x - mean[:, None]).square().mean(-1)


def uicm(x255):
    """UIQM's colourfulness of ``x255 [B, 3, H, W]`` in 0..255 -> ``[B]``."""
    r, g, b = x255.flatten(2).unbind(1)
    mu_rg, var_rg = _trimmed_stats(r - g)
    mu_yb, var_yb = _trimmed_stats((r + g) / 2 - b)
    return -0.0268 * (mu_rg**2 + mu_yb**2).sqrt() + 0.1586 * (var_rg + var_yb).sqrt()


def _blocks(x):
    """``[B, C, H, W]`` -> ``[B, C, H // 10, W // 10, 100]`` (whole blocks from the top-left corner)."""
    bsz, c, h, w = x.shape
    rows, cols = h // UIQM_BLOCK, w // UIQM_BLOCK
    x = x[..., : rows * UIQM_BLOCK, : cols * UIQM_BLOCK].reshape(bsz, c, rows, UIQM_BLOCK, cols, UIQM_BLOCK)
    return x.permute(0, 1, 2, 4, 3, 5).flatten(-2)


def uism(x255):
    """UIQM's sharpness: the luma-weighted EME of the Sobel edge maps -> ``[B]``."""
    gx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=x255.dtype, device=x255.device)
    kernels = torch.stack([gx, gx.t()]).unsqueeze(1)  # [2, 1, 3, 3]
    bsz, c, h, w = x255.shape
    grads = F.conv2d(F.pad(x255.reshape(bsz * c, 1, h, w), (1, 1, 1, 1), mode="replicate"), kernels)
    edges = grads.norm(dim=1).view(bsz, c, h, w) * x255
    blocks = _blocks(edges)
    hi, lo = blocks.amax(-1), blocks.amin(-1)
    log_ratio = torch.where(lo > 0, hi.log() - lo.clamp(min=torch.finfo(lo.dtype).tiny).log(), 0)
    eme = 2 * log_ratio.mean(dim=(-2, -1))  # [B, C]
    weights = torch.tensor((0.299, 0.587, 0.114), dtype=eme.dtype, device=eme.device)
    return eme @ weights


def uiconm(x255):
    """UIQM's contrast: the logAMEE of the intensity over 10x10 blocks -> ``[B]``."""
    blocks = _blocks(x255.mean(dim=1, keepdim=True))[:, 0]  # [B, rows, cols, 100]
    hi, lo = blocks.amax(-1), blocks.amin(-1)
    q = (hi - lo) / (hi + lo).clamp(min=torch.finfo(hi.dtype).tiny)
    terms = torch.where(q > 0, q * q.clamp(min=torch.finfo(q.dtype).tiny).log(), 0)
    return -terms.mean(dim=(-2, -1))


def uiqm(images):
    """UIQM of ``images [B, 3, H, W]`` in 0..1 (at least 10x10 pixels) -> ``[B]`` float32."""
    check_images("images", images, UIQM_BLOCK, "UIQM")
    with torch.no_grad():
        x255 = images.to(compute_dtype(images)) * 255
        c1, c2, c3 = UIQM_WEIGHTS
        return (c1 * uicm(x255) + c2 * uism(x255) + c3 * uiconm(x255)).float()
