"""``python -m trajir.bench rewards``: images per second of each in-house reward metric against pyiqa's
implementation of the same metric, measured side by side in one run (random 512x512 images by default).

Targets: never slower than pyiqa; NIQE at least 2x faster on a batch of 8. pyiqa has no UCIQE or UIQM; those
rows show our speed alone. pyiqa's NIQE reads the LIVE parameters from a .mat written here from our .npz.
"""
import argparse
import functools
import math
import tempfile
import time

import numpy as np
import torch

from ..rewards import niqe as niqe_module
from ..rewards import score
from ..rewards.learned import pyiqa_installed

# our metric -> (pyiqa class path, constructor options) computing the same quantity
_PYIQA = {
    "psnr": ("pyiqa.archs.psnr_arch.PSNR", {"test_y_channel": False, "eps": 0.0}),
    "psnr_y": ("pyiqa.archs.psnr_arch.PSNR", {"test_y_channel": True, "color_space": "ycbcr", "eps": 0.0}),
    "ssim": ("pyiqa.archs.ssim_arch.SSIM", {"test_y_channel": False}),
    "ssim_y": ("pyiqa.archs.ssim_arch.SSIM", {"test_y_channel": True, "color_space": "ycbcr"}),
    "niqe": ("pyiqa.archs.niqe_arch.NIQE", {}),
    "uciqe": None,
    "uiqm": None,
}
_FULL_REFERENCE = ("psnr", "psnr_y", "ssim", "ssim_y")


def _pyiqa_metric(name, workdir):
    import importlib

    path, opts = _PYIQA[name]
    module, cls = path.rsplit(".", 1)
    opts = dict(opts)
    if name == "niqe":
        from scipy.io import savemat

        mat = f"{workdir}/niqe_params.mat"
        with np.load(niqe_module.PARAMS_PATH, allow_pickle=False) as data:
            savemat(mat, {"mu_prisparam": data["mu_pris_param"], "cov_prisparam": data["cov_pris_param"]})
        opts["pretrained_model_path"] = mat
    return getattr(importlib.import_module(module), cls)(**opts)


def _seconds(fn, loops, device):
    """Mean seconds per call of ``fn`` over ``loops`` back-to-back calls."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(loops):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / loops


def _rates(fns, batch, repeats, device):
    """Best images per second of each function; the functions take turns, so that both see the same machine
    (a busy CPU slows whichever runs at that moment), and fast ones loop to at least 50 ms per sample."""
    loops = []
    for fn in fns:
        fn()  # warm-up
        loops.append(max(1, math.ceil(0.05 / max(_seconds(fn, 1, device), 1e-6))))
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            best[i] = min(best[i], _seconds(fn, loops[i], device))
    return [batch / b for b in best]


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m trajir.bench rewards", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8, help="images per call (default 8)")
    parser.add_argument("--size", type=int, default=512, help="image height and width (default 512)")
    parser.add_argument("--repeats", type=int, default=5, help="timed samples per metric, best kept (default 5)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--metrics", nargs="*", default=list(_PYIQA), choices=list(_PYIQA),
                        help="metrics to time (default: all in-house ones)")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.size < 96 or args.repeats < 1:
        parser.error(f"need --batch >= 1, --size >= 96 (NIQE's block), --repeats >= 1; got {args.batch}, "
                     f"{args.size}, {args.repeats}")
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    reference = torch.rand(args.batch, 3, args.size, args.size, generator=g).to(device)
    images = (reference + 0.05 * torch.randn(reference.shape, generator=g).to(device)).clamp(0, 1)
    have_pyiqa = pyiqa_installed()
    print(f"rewards: {args.batch} images of {args.size}x{args.size} per call on {device}, best of {args.repeats}; "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    if not have_pyiqa:
        print("pyiqa is not installed: only our implementations are timed (pip install 'pyiqa>=0.1.13')")
    print(f"{'metric':<8} {'ours img/s':>11} {'pyiqa img/s':>12} {'speed-up':>9}")
    with tempfile.TemporaryDirectory() as workdir, torch.no_grad():
        for name in args.metrics:
            ref = reference if name in _FULL_REFERENCE else None
            fns = [functools.partial(score, name, images, ref)]
            if have_pyiqa and _PYIQA[name] is not None:
                metric = _pyiqa_metric(name, workdir).to(device)
                fns.append(functools.partial(metric, *((images,) if ref is None else (images, ref))))
            ours, theirs = (_rates(fns, args.batch, args.repeats, device) + [None])[:2]
            cells = (f"{theirs:12.1f} {ours / theirs:8.2f}x" if theirs else f"{'-':>12} {'-':>9}")
            print(f"{name:<8} {ours:11.1f} {cells}")
    return 0
