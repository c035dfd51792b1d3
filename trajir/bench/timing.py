"""Wall-clock timing shared by the benchmarks: a device's queued work is finished before and after each call,
so asynchronous CUDA launches are not mistaken for finished work."""
import statistics
import time

import torch


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def wall_time(fn, device):
    """Seconds taken by one call of ``fn``."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def timed(fn, device, repeats, warmup=True):
    """Median wall time of ``fn`` over ``repeats`` calls, after one warm-up call unless ``warmup`` is False."""
    if warmup:
        fn()
    return statistics.median([wall_time(fn, device) for _ in range(repeats)])
