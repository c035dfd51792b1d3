"""``python -m trajir.bench data``: cost of each synthetic degradation next to decoding the image it degrades.

Times one ``degrade`` call per task on a batch of sample-photo crops and prints it as milliseconds per image
and as a ratio to reading one sample PNG from disk, all measured in this run.
"""
import argparse
import time

import torch

from ..data import TASKS, degrade, read_image, sample_images


def _best_of(fn, repeats):
    """Lowest wall time of ``repeats`` calls (the least disturbed by other work on the machine)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv):
    parser = argparse.ArgumentParser(prog="python -m trajir.bench data", description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="crop side in pixels (default 256)")
    parser.add_argument("--batch", type=int, default=4, help="images per degrade call (default 4)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per task, best kept (default 5)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.size < 64 or args.size > 384:
        parser.error(f"--size must be in 64..384 (the sample photos are 384 px on their longest side), got {args.size}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    files = sample_images()
    crops = [read_image(f)[:, :args.size, :args.size] for f in files]
    crops = [c for c in crops if c.shape[-2:] == (args.size, args.size)]
    batch = torch.stack([crops[i % len(crops)] for i in range(args.batch)])
    read_s = _best_of(lambda: read_image(files[0]), args.repeats)

    print(f"torch threads {torch.get_num_threads()}, batch {args.batch} x 3 x {args.size} x {args.size}; "
          f"reading {files[0].name}: {read_s * 1e3:.2f} ms")
    print(f"{'task':<12}{'ms/image':>10}{'x read':>9}")
    for task in TASKS:
        per_image = _best_of(lambda: degrade(task, batch, 0), args.repeats) / args.batch
        print(f"{task:<12}{per_image * 1e3:>10.2f}{per_image / read_s:>9.2f}")
    return 0
