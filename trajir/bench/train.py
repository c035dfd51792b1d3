"""``python -m trajir.bench train``: step time and peak memory of the FLUX-IR ControlNet training step.

One step is what ``python -m trajir.train`` runs for ``model.kind = "fluxir_controlnet"``, stage ``pretrain``,
through the same code (``FluxIRRestorer`` + ``Pretrain.loss``): encode the (LQ, GT) batch with the frozen
autoencoder, the flow-matching loss through the ControlNet and the frozen base, backward into the ControlNet,
AdamW step. Rows side by side, all with gradient checkpointing: the base stored in bf16 and in fp8 (e4m3fn,
bf16 compute), plus fp32 on the CPU; ratios are against bf16.

* CUDA: random-weight FLUX-dev (11.9 B parameters) + the FLUX autoencoder at 512 x 512, batch 1, the ControlNet
  with 2 double blocks in fp32 under bf16 autocast; time per step, peak GPU memory, base weight memory.
* CPU: the tiny FLUX and autoencoder at 128 x 128. This times the code path only; the full-size measurement
  needs CUDA, and the script says so.

Then the shipped ``fluxir_upscaler_rl`` configuration: an InstantX ControlNet in jasperai's upscaler layout (5
double blocks, no single blocks; 2 on the tiny base) on the bf16 base, with the config's grid, RL and distillation
settings (stage rl+distill: 20 jumps from grid index 1, 4 Best-of-N branches, its reward or the fallback). Rows: one
pretrain step of that ControlNet and one rl+distill step (rollouts, decoding and scoring of every candidate, the
Eq. (15) regression), time and peak GPU memory, and their ratio.
"""
import argparse
import gc

import torch

import pathlib

from ..grids import RFGrid
from ..models import AutoEncoder, AutoEncoderParams, Flux, FluxParams, InstantXControlNet, XLabsControlNet
from ..train import randomness
from ..train.config import load_config
from ..train.distributed import DistEnv
from ..train.flux_restorer import FluxIROptions, FluxIRRestorer
from ..train.fp8 import storage_bytes
from ..train.pretrain import Pretrain
from ..train.rl import RLDistill
from .timing import timed

UPSCALER_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "train" / "configs" / "fluxir_upscaler_rl.toml"


def random_flux(params, device):
    """A FLUX with random weights: drawn on the GPU at full size (12 B values are too many for the CPU), else
    the seeded CPU initialisation."""
    if device.type != "cuda":
        return Flux(params, seed=0)
    with torch.device("meta"):
        base = Flux(params).to(torch.bfloat16)
    base = base.to_empty(device=device)
    gen = torch.Generator(device).manual_seed(0)
    with torch.no_grad():
        for p in base.parameters():  # matrices N(0, 0.02); norm scales (<= head size) 1; biases 0
            p.normal_(0.0, 0.02, generator=gen) if p.ndim > 1 else p.fill_(1.0 if p.shape[0] <= 128 else 0.0)
    return base


def make_restorer(base_dtype, full, device, controlnet="xlabs", cfg=None):
    """The restorer of one row: XLabs depth 2, or (``controlnet="instantx"``) the upscaler's layout with the
    ControlNet scale, guidance and grid of ``cfg``."""
    params = FluxParams.dev() if full else FluxParams.tiny()
    base = random_flux(params, device)
    if controlnet == "xlabs":
        net, options = XLabsControlNet.from_flux(base, depth=2), FluxIROptions(base_dtype=base_dtype)
        grid = RFGrid.uniform(21, 0.4675)
    else:
        net = InstantXControlNet.from_flux(base, depth=5 if full else 2, depth_single_blocks=0)
        options = FluxIROptions(base_dtype=base_dtype, controlnet_scale=cfg["flux.controlnet_scale"],
                                guidance=cfg["flux.guidance"])
        grid = RFGrid.uniform(cfg["sampling.steps"], cfg["sampling.shift"])
    ae = AutoEncoder(AutoEncoderParams.flux() if full else AutoEncoderParams.tiny(), seed=0)
    return FluxIRRestorer(base, ae, net, grid, device, options)


def measure(base_dtype, full, size, device, repeats, controlnet="xlabs", stage_name="pretrain"):
    """``(seconds per step, peak GPU GiB or None, base weight GiB)`` of one configuration."""
    cfg = load_config(UPSCALER_CONFIG) if controlnet == "instantx" else load_config(None)
    restorer = make_restorer(base_dtype, full, device, controlnet, cfg)
    env = DistEnv(device=device)
    stage = RLDistill(cfg, restorer, env) if stage_name == "rl+distill" else Pretrain(cfg, restorer, env)
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(1, 3, size, size, generator=g)
    batch, keys = {"gt": gt, "lq": (0.5 * gt).clamp(0, 1)}, randomness.sample_keys(0, 1, 0, 0, 1, 1)
    opt = torch.optim.AdamW(stage.parameters(), lr=1e-6)

    def step():
        loss, _ = stage.loss(batch, keys)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up: kernels, AdamW state
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = timed(step, device, repeats, warmup=False)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return seconds, peak, storage_bytes(restorer.base) / 2**30


def free_memory(device):
    """Release what the previous configuration left (its models die when ``measure`` returns)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m trajir.bench train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps after one warm-up; the median is reported")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    full = device.type == "cuda"
    size = 512 if full else 128
    dtypes = ("bf16", "fp8") if full else ("bf16", "fp8", "fp32")
    if full:
        print(f"FLUX-dev (random weights, frozen) + XLabs ControlNet depth 2 (fp32, bf16 autocast) + FLUX autoencoder, "
              f"{size}x{size}, batch 1, gradient checkpointing, AdamW, {torch.cuda.get_device_name(device)}:")
    else:
        print(f"tiny FLUX + ControlNet depth 2 + tiny autoencoder, {size}x{size}, batch 1, gradient checkpointing, "
              "AdamW, CPU (code path only).\nThe full-size FLUX-dev measurement at 512x512 (step time, peak memory) "
              "needs CUDA: run this on a GPU machine.")
    rows = {}
    for dtype in dtypes:
        try:
            rows[dtype] = measure(dtype, full, size, device, args.repeats)
        except torch.OutOfMemoryError:
            rows[dtype] = None
        free_memory(device)
    for dtype, row in rows.items():
        if row is None:
            print(f"  base {dtype:<4}: out of memory")
            continue
        peak = f", peak GPU memory {row[1]:6.1f} GiB" if row[1] is not None else ""
        print(f"  base {dtype:<4}: {row[0] * 1000:9.1f} ms/step, base weights {row[2] * 1024:9.2f} MiB{peak}")
    ref = rows.get("bf16")
    for dtype, row in rows.items():
        if dtype != "bf16" and row and ref:
            peak = f", peak memory x{row[1] / ref[1]:.2f}" if row[1] is not None else ""
            print(f"  ratio {dtype}/bf16: time x{row[0] / ref[0]:.2f}, base weights x{row[2] / ref[2]:.2f}{peak}")
    upscaler(full, size, device, args.repeats)
    return 0


def upscaler(full, size, device, repeats):
    """The rows of the shipped fluxir_upscaler_rl configuration (see the module docstring)."""
    cfg = load_config(UPSCALER_CONFIG)
    layout = "5 double blocks" if full else "2 double blocks on the tiny base"
    print(f"fluxir_upscaler_rl: InstantX ControlNet, jasperai upscaler layout ({layout}), base bf16, {size}x{size}, "
          f"batch 1, {cfg['sampling.steps']}-step grid from index {cfg['distill.start_index']}, "
          f"{cfg['rl.branches']} branches" + ("" if full else ", CPU (code path only; full size needs CUDA)") + ":")
    rows = {}
    for stage in ("pretrain", "rl+distill"):
        try:
            rows[stage] = measure("bf16", full, size, device, repeats, controlnet="instantx", stage_name=stage)
        except torch.OutOfMemoryError:
            rows[stage] = None
        free_memory(device)
    for stage, row in rows.items():
        if row is None:
            print(f"  {stage:<10}: out of memory")
            continue
        peak = f", peak GPU memory {row[1]:6.1f} GiB" if row[1] is not None else ""
        print(f"  {stage:<10}: {row[0] * 1000:9.1f} ms/step{peak}")
    if all(rows.values()):
        a, b = rows["pretrain"], rows["rl+distill"]
        peak = f", peak memory x{b[1] / a[1]:.2f}" if b[1] is not None else ""
        print(f"  ratio rl+distill/pretrain: time x{b[0] / a[0]:.2f}{peak}")
