"""NIQE, the Natural Image Quality Evaluator (Mittal, Soundararajan & Bovik, IEEE SPL 20(3), 2013), in torch.

No-reference, lower is better, in the published units. The pristine multivariate Gaussian (mean ``[36]``,
covariance ``[36, 36]``) is the LIVE model of the MATLAB release, shipped as ``data/niqe_pris_params.npz`` from
the Apache-2.0 ``basicsr`` 1.4.2 sdist (see ``data/NOTICE.md``).

The pipeline follows the MATLAB reference as pyiqa and basicsr reproduce it, vectorised over the batch and over
all 96-px blocks at once:

1. luma (``color_space``: pyiqa's default "yiq", i.e. MATLAB's rgb2gray; "ycbcr" for basicsr's Y), scaled to
   0..255 and rounded to integers as the MATLAB code reads 8-bit images; cropped to whole 96-px blocks;
2. MSCN coefficients ``(I - mu) / (sigma + 1)`` with the 7x7 Gaussian window (sigma 7/6), replicate padding;
3. per block, 18 features: the GGD fit of the MSCN values (shape, scale) and AGGD fits (shape, mean, left and
   right scale) of the products of horizontally, vertically and diagonally adjacent coefficients (paper §III,
   Eqs. (3)-(8); neighbours wrap around inside the block, as in the reference);
4. the same at half scale (MATLAB bicubic ``imresize(I, 0.5)`` with antialiasing, 48-px blocks): 36 features;
5. the distance between the pristine MVG and the MVG fitted to the image's blocks (paper Eq. (10)):
   ``sqrt((mu_p - mu_d)^T ((S_p + S_d) / 2)^+ (mu_p - mu_d))``.

The shape fits pick the nearest of 9,801 tabulated ratios, so a feature can jump by a grid step when a ratio sits
near a midpoint, and the score by ~1e-2: the arithmetic decides. Everything is float64 as in the references,
and the places where pyiqa rounds to float32 are kept as pyiqa has them (the Gaussian window, the shape grid, the
half-scale resize), so that our scores equal pyiqa's to ~1e-6, up to such a grid flip in an occasional image.

Blocks without structure (a flat block has no negative and no positive MSCN values) give NaN features, which are
left out as the reference's nanmean / nancov do. An image with no valid block (a flat image) has no NIQE: ``niqe``
refuses it with an error naming the image, or with ``flat="nan"`` scores it NaN (what reward mixes use: their
normaliser maps NaN to 0, the worst).
"""
import functools
import pathlib

import numpy as np
import torch
import torch.nn.functional as F

from .common import check_images, luma

BLOCK = 96
PARAMS_PATH = pathlib.Path(__file__).resolve().parent / "data" / "niqe_pris_params.npz"
_FEATURES = 36
_CHUNK_VALUES = 2**21

# MATLAB imresize(I, 0.5) taps: the a = -0.5 cubic kernel stretched by 2 for antialiasing, sampled at the 8 input
# pixels around each output centre (offsets +-0.5, +-1.5, +-2.5, +-3.5) and normalised (the raw taps sum to 2).
_HALF_BICUBIC = (-0.01171875, -0.03515625, 0.11328125, 0.43359375, 0.43359375, 0.11328125, -0.03515625, -0.01171875)


@functools.lru_cache(maxsize=4)
def load_pristine_params(path=PARAMS_PATH):
    """``(mu [36], cov [36, 36], window [7, 7])`` as float64 tensors from a basicsr-layout ``.npz`` file."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"NIQE pristine parameters {path.name} not found in {path.parent}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: np.asarray(data[k], dtype=np.float64) for k in ("mu_pris_param", "cov_pris_param",
                                                                         "gaussian_window")}
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"NIQE parameter file {path} is unreadable or corrupt (expected an .npz with "
                         f"mu_pris_param, cov_pris_param, gaussian_window): {err}") from err
    mu, cov, window = (torch.from_numpy(arrays[k]) for k in ("mu_pris_param", "cov_pris_param", "gaussian_window"))
    mu = mu.reshape(-1)
    if mu.numel() != _FEATURES or tuple(cov.shape) != (_FEATURES, _FEATURES) or tuple(window.shape) != (7, 7):
        raise ValueError(f"NIQE parameter file {path} has shapes mu {tuple(mu.shape)}, cov {tuple(cov.shape)}, "
                         f"window {tuple(window.shape)}; expected [36], [36, 36], [7, 7]")
    if not (torch.isfinite(mu).all() and torch.isfinite(cov).all() and torch.isfinite(window).all()):
        raise ValueError(f"NIQE parameter file {path} contains NaN or inf values")
    return mu, cov, window


def _window_sum(x, window):
    """``sum_ab window[a, b] x[i + a - 3, j + b - 3]`` with replicate padding, for ``x [N, 1, H, W]``.

    Written as 49 shifted multiply-adds: on the CPU float64 ``conv2d`` is an order of magnitude slower, while these
    sums, added in the same order, equal its results to the last bit.
    """
    h, w = x.shape[-2:]
    padded = F.pad(x, (3, 3, 3, 3), mode="replicate")
    out = torch.zeros_like(x)
    for a in range(7):
        for b in range(7):
            out.add_(padded[..., a : a + h, b : b + w], alpha=float(window[a, b]))
    return out


def mscn(y, window):
    """Mean-subtracted contrast-normalised coefficients of ``y [N, 1, H, W]`` (paper Eq. (1)), constant C = 1.

    The 7x7 window is used at float32 precision, as pyiqa holds it: rounded, it is no longer exactly separable,
    and the variance of flat regions (a difference of two large sums) is sensitive to it.
    """
    window = window.float().double()
    mu = _window_sum(y, window)
    var = _window_sum(y * y, window) - mu * mu
    return (y - mu) / (var.abs().sqrt() + 1.0)


def _half_last(x):
    """Halve the last dimension with the 8 taps, symmetric borders, adding the products in tap order."""
    n = x.shape[-1]
    # symmetric padding repeats the edge pixel (MATLAB), unlike torch's "reflect"
    x = torch.cat([x[..., :3].flip(-1), x, x[..., -3:].flip(-1)], dim=-1)
    out = x[..., 0:n:2] * _HALF_BICUBIC[0]
    for k in range(1, 8):
        out = out + x[..., k : k + n : 2] * _HALF_BICUBIC[k]  # output i reads input 2i + k - 3
    return out


def half_bicubic(y):
    """MATLAB ``imresize(y, 0.5)`` (bicubic, antialiased, symmetric borders) of ``[N, 1, H, W]``, H and W even.

    Rows first, then columns, in float32 on ``y / 255`` and back: pyiqa's arithmetic, whose rounding the
    nearest-grid shape fit would otherwise expose (the result is returned in ``y``'s dtype).
    """
    x = (y / 255).float()
    return _half_last(_half_last(x.transpose(-1, -2)).transpose(-1, -2)).to(y.dtype) * 255


@functools.lru_cache(maxsize=8)
def _gamma_ratio_table(dtype, device):
    """Shapes ``a`` on the reference grid 0.2, 0.201, ..., 10 and ``r(a) = G(2/a)^2 / (G(1/a) G(3/a))``.

    ``r`` increases with ``a``. The grid is built in float32 like pyiqa's, so that near-ties resolve alike.
    """
    a = torch.arange(0.2, 10.001, 0.001, dtype=torch.float32, device=device).to(dtype)
    r = (2 * torch.lgamma(2 / a) - torch.lgamma(1 / a) - torch.lgamma(3 / a)).exp()
    return a, r


def _nearest(table, values):
    """Index of the table entry nearest to each value (first on ties, like argmin); NaN maps to 0 like argmin."""
    hi = torch.searchsorted(table, values.contiguous()).clamp(1, table.numel() - 1)
    lo = hi - 1
    idx = torch.where((values - table[lo]).abs() <= (table[hi] - values).abs(), lo, hi)
    return torch.where(torch.isnan(values), torch.zeros_like(idx), idx)


def aggd_fit(x):
    """Asymmetric generalised Gaussian fit of each row of ``x [..., P]`` by moment matching (paper Eqs. (5)-(7)).

    Returns ``(shape, left scale, right scale)``; the shape is the grid value whose ratio ``r(a)`` is nearest to
    the bias-corrected ``r_hat``, as in the reference's table search (a binary search here: ``r`` is monotone).
    """
    sq = x * x
    negative = x < 0
    total = sq.sum(-1)
    left_sq = torch.where(negative, sq, 0).sum(-1)
    left_std = (left_sq / negative.sum(-1)).sqrt()
    right_std = ((total - left_sq) / (x > 0).sum(-1)).sqrt()
    g = left_std / right_std
    r_hat = x.abs().mean(-1).square() / (total / x.shape[-1])
    r_norm = r_hat * (g**3 + 1) * (g + 1) / (g * g + 1).square()
    grid, table = _gamma_ratio_table(x.dtype, x.device)
    shape = grid[_nearest(table, r_norm)]
    scale = (torch.lgamma(1 / shape) - torch.lgamma(3 / shape)).exp().sqrt()
    return shape, left_std * scale, right_std * scale


def _tile_features(tiles):
    """The 18 features of each tile of ``tiles [M, b, b]`` -> ``[M, 18]``."""
    shape, beta_l, beta_r = aggd_fit(tiles.flatten(1))
    feats = [shape, (beta_l + beta_r) / 2]
    # neighbours: right, below, below-right, below-left (a circular shift inside each tile, as the reference)
    for shift in ((0, 1), (1, 0), (1, 1), (1, -1)):
        shape, beta_l, beta_r = aggd_fit((tiles * torch.roll(tiles, shift, dims=(-2, -1))).flatten(1))
        mean = (beta_r - beta_l) * (torch.lgamma(2 / shape) - torch.lgamma(1 / shape)).exp()
        feats += [shape, mean, beta_l, beta_r]
    return torch.stack(feats, dim=-1)


def block_features(coeffs, block):
    """The 18 NIQE features of every ``block x block`` tile of MSCN ``coeffs [N, 1, H, W]`` -> ``[N, tiles, 18]``.

    Tiles are taken column by column (MATLAB blockproc order); the feature order is the reference's. They are
    processed in chunks of about 2M values: temporaries that small are recycled by the allocator, while larger
    ones cost fresh pages each time, which on the CPU takes longer than the arithmetic.
    """
    n, _, h, w = coeffs.shape
    rows, cols = h // block, w // block
    tiles = coeffs[:, 0, : rows * block, : cols * block].reshape(n, rows, block, cols, block)
    tiles = tiles.permute(0, 3, 1, 2, 4).reshape(n * cols * rows, block, block)
    step = max(1, _CHUNK_VALUES // (block * block))
    feats = torch.cat([_tile_features(tiles[i : i + step]) for i in range(0, tiles.shape[0], step)])
    return feats.view(n, cols * rows, 18)


def _nan_mvg(feats):
    """Mean (NaN entries skipped per feature) and covariance (rows with any NaN dropped) of ``[B, N, F]``."""
    finite = ~torch.isnan(feats)
    mean = torch.where(finite, feats, 0).sum(1) / finite.sum(1)
    rows = finite.all(-1, keepdim=True)  # [B, N, 1]
    count = rows.sum(1, keepdim=True)  # [B, 1, 1]
    kept = torch.where(rows, feats, 0)
    centred = torch.where(rows, kept - kept.sum(1, keepdim=True) / count, 0)
    denom = torch.where(count > 1, count - 1, count)  # one row: divide by 1 (a zero covariance), as np.cov
    return mean, centred.transpose(1, 2) @ centred / denom


def niqe_from_luma(y, params=None):
    """NIQE of integer-valued luma ``y [B, 1, H, W]`` in 0..255 (float64, H and W >= 96) -> ``[B]`` float64."""
    mu_p, cov_p, window = params if params is not None else load_pristine_params()
    mu_p, cov_p, window = mu_p.to(y), cov_p.to(y), window.to(y)
    h, w = (s // BLOCK * BLOCK for s in y.shape[-2:])
    y = y[..., :h, :w]
    feats = torch.cat([block_features(mscn(y, window), BLOCK),
                       block_features(mscn(half_bicubic(y), window), BLOCK // 2)], dim=-1)
    mu_d, cov_d = _nan_mvg(feats)
    # an image without a single valid block has no distribution to compare: NaN (pinv would fail on it)
    valid = torch.isfinite(mu_d).all(-1) & torch.isfinite(cov_d).all(-1).all(-1)
    diff = torch.where(valid[:, None], mu_p - mu_d, 0).unsqueeze(-1)  # [B, 36, 1]
    inv = torch.linalg.pinv((cov_p + torch.where(valid[:, None, None], cov_d, 0)) / 2)
    quality = (diff.transpose(1, 2) @ inv @ diff).reshape(-1).sqrt()
    return torch.where(valid, quality, torch.nan)


FLAT_CHOICES = ("error", "nan")


def niqe(images, color_space="yiq", params_path=None, flat="error"):
    """NIQE of ``images [B, 3, H, W]`` in 0..1 (H, W >= 96) -> ``[B]`` float32, lower is better.

    ``color_space``: "yiq" (pyiqa's ``niqe``; MATLAB rgb2gray) or "ycbcr" (basicsr's Y channel).
    ``params_path``: another ``.npz`` of the basicsr layout (default: the shipped LIVE parameters).
    ``flat``: what an image without a single structured 96-px block gets (a flat image, whose NIQE is undefined):
    ``"error"`` raises a ``ValueError`` naming the images, ``"nan"`` scores them NaN.
    """
    if flat not in FLAT_CHOICES:
        raise ValueError(f"flat must be one of {FLAT_CHOICES}, got {flat!r}")
    check_images("images", images, BLOCK, "NIQE")
    params = load_pristine_params(PARAMS_PATH if params_path is None else pathlib.Path(params_path))
    device = images.device
    # float64 is not available on every accelerator (MPS): compute there on the CPU instead
    work = device if device.type in ("cpu", "cuda") else torch.device("cpu")
    y = luma(images.to(work, torch.float32), color_space).mul(255).round().double()
    with torch.no_grad():
        scores = niqe_from_luma(y, params).float()
    undefined = torch.isnan(scores).nonzero().flatten().tolist()
    if undefined and flat == "error":
        raise ValueError(f"NIQE is undefined for images {undefined}: no 96-px block has structure (a flat or nearly "
                         "flat image); pass flat='nan' to score such images NaN")
    return scores.to(device)
