"""``python -m trajir.restore IMAGE [IMAGE ...] [--task TASK] [-o OUT]``: restore photos with a compact model.

The shipped default restorers (``trajir/weights/``) are small task-specific models trained by the CPU-scale
reproduction; ``--model`` takes any compact model exported by ``python -m trajir.train``. Large images are
processed in overlapping tiles. ``--demo`` degrades a held-out sample photo, restores it and reports the PSNR.
Bad input (unreadable images, options out of range, damaged model files, outputs that cannot be written or would
overwrite an input) is reported before the first image is restored; two inputs with the same name are written to
``name.png`` and ``name_2.png``, and the command says so.
"""
import argparse
import os
import pathlib
import shutil
import sys
import tempfile

import torch
from tqdm.auto import tqdm

from .checks import require_seed
from .compact import WEIGHTS, load_compact, restore, shipped_models
from .data import IMAGE_EXTENSIONS, degrade, read_image, sample_split, write_png
from .tiling import MIN_TILE, tile_overlap


def model_path(task=None, model=None):
    if model:
        if os.path.isdir(model):
            raise SystemExit(f"trajir.restore: --model {model!r} is a folder, not a model file")
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
    """``auto``, ``cpu``, ``cuda``, ``cuda:N``, ...: a device that exists here, or an error naming ``--device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {name!r} is not a device name; expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name!r}: CUDA is not available on this machine; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def output_targets(images, out):
    """``[(input, target)]`` and notes for renamed targets: one file for one image and ``-o NAME.png``, else a
    folder (default ``restored/``) with ``<input stem>.png`` each. Inputs that share a stem get ``_2``, ``_3``, ...
    instead of overwriting each other; a target that is an input itself is refused."""
    out = pathlib.Path(out) if out else None
    notes = []
    if out is not None and out.suffix and not out.is_dir():
        is_image = out.suffix.lower() in IMAGE_EXTENSIONS
        if len(images) > 1 and is_image:
            raise ValueError(f"-o {str(out)!r} names one file but {len(images)} images were given; give a folder")
        if len(images) == 1:
            if is_image and out.suffix.lower() != ".png":
                raise ValueError(f"-o {str(out)!r}: trajir.restore writes PNG files; name the output .png")
            pairs = [(images[0], out)]
            _refuse_overwriting_inputs(pairs, images)
            return pairs, notes
    folder = out or pathlib.Path("restored")
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"-o {str(folder)!r} is a file, not a folder; {len(images)} images need a folder")
    taken, pairs = {}, []
    for image in images:
        stem = pathlib.Path(image).stem
        name, n = f"{stem}.png", 1
        while name.casefold() in taken:
            n += 1
            name = f"{stem}_{n}.png"
        target = folder / name
        if n > 1:
            notes.append(f"{image} has the same name as {taken[f'{stem}.png'.casefold()]}; writing it to {target}")
        taken[name.casefold()] = image
        pairs.append((image, target))
    _refuse_overwriting_inputs(pairs, images)
    return pairs, notes


def _refuse_overwriting_inputs(pairs, images):
    for _, target in pairs:
        for image in images:
            if os.path.exists(target) and os.path.exists(image) and os.path.samefile(target, image):
                raise ValueError(f"-o: writing {target} would overwrite the input {image}; choose another output")


def check_outputs(pairs, sizes):
    """Before any work: every output folder can be created and written, and has room for the results (at most
    ``3 H W`` bytes per PNG, its uncompressed size)."""
    need = {}
    for (_, target), (h, w) in zip(pairs, sizes):
        folder = pathlib.Path(target).parent
        need[folder] = need.get(folder, 0) + 3 * h * w + 4096
    for folder, size in need.items():
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as e:
            raise ValueError(f"cannot write to the output folder {str(folder)!r}: {e.strerror or e}") from None
        free = shutil.disk_usage(folder).free
        if free < size:
            raise ValueError(f"not enough free space in {str(folder)!r}: {free / 1e6:.2f} MB free, the restored "
                             f"images need up to {size / 1e6:.2f} MB")


def restore_file(path, net, recipe, out_path, seed=0, tile=256, colour=None):
    lq = read_image(path)[None]
    with tqdm(total=1, desc=os.path.basename(str(path)), unit="tile", leave=False) as bar:
        def progress(done, total):
            bar.total = total
            bar.n = done
            bar.refresh()
        out = restore(net, recipe, lq, seed=seed, tile=tile, progress=progress, colour=colour)
    write_png(out_path, out[0])
    return out


def demo(net, recipe, task, out_dir, seed=0, colour=None):
    """Degrade a held-out sample photo for ``task``, restore it, write ``LQ | restored | GT`` and report PSNR."""
    from .rewards import score

    _, held_out = sample_split()
    gt = read_image(held_out[0])[None]
    h, w = (s // 8 * 8 for s in gt.shape[-2:])
    gt = gt[..., :h, :w]
    lq = degrade(task, gt, seed)
    out = restore(net, recipe, lq, seed=seed, colour=colour)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"demo_{task}.png")
    write_png(path, torch.cat([lq[0], out[0], gt[0]], dim=-1))
    before, after = float(score("psnr", lq, gt)), float(score("psnr", out, gt))
    print(f"{task} on {held_out[0].name}: PSNR {before:.2f} dB (degraded) -> {after:.2f} dB (restored, "
          f"{recipe.nfe} NFE); wrote {path} (degraded | restored | original)")
    return before, after


COLOUR_OPTIONS = {"model": None, "off": "", "lq_power_law": "lq_power_law"}  # --colour -> restore(colour=)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m trajir.restore", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="*", help="input images (png, jpg, ...)")
    p.add_argument("--task", help="which shipped restorer to use (see --list)")
    p.add_argument("--model", help="a compact model file exported by python -m trajir.train")
    p.add_argument("-o", "--out", help="output file (one input) or folder (default: ./restored/)")
    p.add_argument("--tile", type=int, default=256,
                   help=f"tile size for large images, at least {MIN_TILE} (0: whole image at once)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling noise, in [0, 2^64 - 1]")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--colour", choices=sorted(COLOUR_OPTIONS), default="model",
                   help="colour step after sampling: the model file's own (default), off, or lq_power_law (take the "
                        "colour from the input under the low-light power law; trajir.colour)")
    p.add_argument("--demo", action="store_true", help="degrade a held-out sample photo, restore it, report PSNR")
    p.add_argument("--list", action="store_true", help="list the shipped restorers")
    args = p.parse_args(argv)
    if args.list:
        for task, path in shipped_models().items():
            print(f"{task:<12} {path}")
        return 0
    if not args.images and not args.demo:
        p.error("give at least one image, or --demo")
    try:
        return run(args)
    except (ValueError, OSError) as e:  # bad input, or a write that failed: the message names the file
        raise SystemExit(f"trajir.restore: {e}") from None


def run(args):
    """Everything that can be checked is checked before the first image is restored: options, the model file
    (NaN weights included), every input image's header, the output names, folders and free space."""
    tile_overlap(args.tile, name="--tile")
    require_seed("--seed", args.seed)
    device = pick_device(args.device)
    path = model_path(args.task, args.model)
    net, recipe = load_compact(path, device=device)
    task = args.task or recipe.task
    if args.demo:
        demo(net, recipe, task, args.out or "restored", args.seed, COLOUR_OPTIONS[args.colour])
        return 0
    sizes = [tuple(read_image(image).shape[-2:]) for image in args.images]  # decoded once: a damaged file fails now
    pairs, notes = output_targets(args.images, args.out)
    check_outputs(pairs, sizes)
    for note in notes:
        print(f"trajir.restore: {note}", file=sys.stderr)
    for image, target in tqdm(pairs, desc="images", disable=len(pairs) < 2):
        restore_file(image, net, recipe, target, args.seed, args.tile, COLOUR_OPTIONS[args.colour])
        print(f"{image} -> {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
