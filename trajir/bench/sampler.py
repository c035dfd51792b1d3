"""``python -m trajir.bench sampler``: time per step of ``sample_msde`` (eta 0 and eta 1) against a bare Euler
loop on the same small model, measured interleaved in one run, each round in a seeded shuffled order.
Target ratio <= 1.05: the model call dominates, and the sampler adds no model evaluations and no host-device
synchronisation per step."""
import argparse
import random
import statistics

import torch
from torch import nn

from ..samplers import sample_msde
from .timing import wall_time


class SmallDenoiser(nn.Module):
    """A few convolutions standing in for a network: returns an x0 estimate in the k-diffusion convention."""

    def __init__(self, channels=16, width=64):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.SiLU(),
                                 nn.Conv2d(width, width, 3, padding=1), nn.SiLU(),
                                 nn.Conv2d(width, channels, 3, padding=1))

    def forward(self, x, sigma, **extra_args):
        return x - sigma.reshape(-1, 1, 1, 1) * self.net(x)


def euler_loop(model, x, sigmas):
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        x0 = model(x, sigmas[i] * s_in)
        x = x + (x - x0) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
    return x


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m trajir.bench sampler", description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=64, help="latent height and width")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=15, help="interleaved repetitions; the median is reported")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    model = SmallDenoiser().to(device).eval()
    x = torch.randn(args.batch, 16, args.size, args.size, generator=torch.Generator().manual_seed(0)).to(device)
    sigmas = torch.linspace(1, 0, args.steps + 1).to(device)
    variants = {
        "bare Euler loop": lambda: euler_loop(model, x, sigmas),
        "sample_msde eta=0": lambda: sample_msde(model, x, sigmas, eta=0.0, disable=True),
        "sample_msde eta=1": lambda: sample_msde(model, x, sigmas, eta=1.0, extra_args={"seed": 0}, disable=True),
    }
    times = {name: [] for name in variants}
    with torch.inference_mode():
        for fn in variants.values():  # warm-up
            fn()
        for round_index in range(args.rounds):
            order = list(variants.items())
            random.Random(round_index).shuffle(order)  # no variant always runs first or right after another
            for name, fn in order:
                times[name].append(wall_time(fn, device) / args.steps)
    base = statistics.median(times["bare Euler loop"])
    print(f"sampler benchmark: device={device}, latent {args.batch}x16x{args.size}x{args.size}, "
          f"{args.steps} steps, median of {args.rounds} rounds in shuffled order, torch threads={torch.get_num_threads()}")
    print(f"{'variant':<22}{'ms/step':>10}{'ratio':>9}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<22}{median * 1e3:>10.3f}{median / base:>9.3f}")
    print("target: ratio <= 1.05 for both sample_msde variants")
    return 0
