"""``python -m trajir.restore IMAGE [IMAGE ...] [--task TASK] [-o OUT]``: restore photos with a compact model.

The shipped default restorers (``trajir/weights/``) are small task-specific models trained by the CPU-scale
reproduction; ``--model`` takes any compact model exported by ``python -m trajir.train``. Large images are
processed in overlapping tiles. ``--demo`` degrades a held-out sample photo, restores it and reports the PSNR.
"""
import argparse
import os
import pathlib
import sys

import torch
from tqdm.auto import tqdm

from .compact import WEIGHTS, load_compact, restore, shipped_models
from .data import degrade, read_image, sample_split, write_png


def model_path(task=None, model=None):
    if model:
        if not os.path.isfile(model):
            raise SystemExit(f"trajir.restore: model file not found: {model}")
        return model
    models = shipped_models()
    if not models:
        raise SystemExit(f"trajir.restore: no shipped restorers in {WEIGHTS}; pass --model PATH (a compact model "
                         "exported by python -m trajir.train)")
    if task is None:
        if len(models) > 1:
            raise SystemExit(f"trajir.restore: choose --task from {', '.join(models)}")
        task = next(iter(models))
    if task not in models:
        raise SystemExit(f"trajir.restore: no shipped restorer for task {task!r}; shipped: {', '.join(models)} "
                         "(or pass --model PATH)")
    return str(models[task])


def pick_device(name):
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else
                        ("cpu" if name == "auto" else name))


def restore_file(path, net, recipe, out_path, seed=0, tile=256):
    lq = read_image(path)[None]
    with tqdm(total=1, desc=os.path.basename(str(path)), unit="tile", leave=False) as bar:
        def progress(done, total):
            bar.total = total
            bar.n = done
            bar.refresh()
        out = restore(net, recipe, lq, seed=seed, tile=tile, progress=progress)
    write_png(out_path, out[0])
    return out


def demo(net, recipe, task, out_dir, seed=0):
    """Degrade a held-out sample photo for ``task``, restore it, write ``LQ | restored | GT`` and report PSNR."""
    from .rewards import score

    _, held_out = sample_split()
    gt = read_image(held_out[0])[None]
    h, w = (s // 8 * 8 for s in gt.shape[-2:])
    gt = gt[..., :h, :w]
    lq = degrade(task, gt, seed)
    out = restore(net, recipe, lq, seed=seed)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"demo_{task}.png")
    write_png(path, torch.cat([lq[0], out[0], gt[0]], dim=-1))
    before, after = float(score("psnr", lq, gt)), float(score("psnr", out, gt))
    print(f"{task} on {held_out[0].name}: PSNR {before:.2f} dB (degraded) -> {after:.2f} dB (restored, "
          f"{recipe.nfe} NFE); wrote {path} (degraded | restored | original)")
    return before, after


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m trajir.restore", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="*", help="input images (png, jpg, ...)")
    p.add_argument("--task", help="which shipped restorer to use (see --list)")
    p.add_argument("--model", help="a compact model file exported by python -m trajir.train")
    p.add_argument("-o", "--out", help="output file (one input) or folder (default: ./restored/)")
    p.add_argument("--tile", type=int, default=256, help="tile size for large images (0: whole image at once)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling noise")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--demo", action="store_true", help="degrade a held-out sample photo, restore it, report PSNR")
    p.add_argument("--list", action="store_true", help="list the shipped restorers")
    args = p.parse_args(argv)
    if args.list:
        for task, path in shipped_models().items():
            print(f"{task:<12} {path}")
        return 0
    if not args.images and not args.demo:
        p.error("give at least one image, or --demo")
    path = model_path(args.task, args.model)
    net, recipe = load_compact(path, device=pick_device(args.device))
    task = args.task or recipe.task
    if args.demo:
        demo(net, recipe, task, args.out or "restored", args.seed)
        return 0
    if args.out and len(args.images) == 1 and pathlib.Path(args.out).suffix:
        targets = [pathlib.Path(args.out)]
    else:
        folder = pathlib.Path(args.out or "restored")
        targets = [folder / (pathlib.Path(i).stem + ".png") for i in args.images]
    for image, target in zip(tqdm(args.images, desc="images", disable=len(args.images) < 2), targets):
        restore_file(image, net, recipe, target, args.seed, args.tile)
        print(f"{image} -> {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
