"""``python -m trajir.bench models``: cost of a FLUX-IR ControlNet training step and of the other models.

1. A FLUX-architecture base (frozen) + XLabs ControlNet training step (forward through both, backward into
   the ControlNet, AdamW step), with and without gradient checkpointing, side by side: time per step and the
   activation memory autograd keeps (bytes saved for backward, parameters excluded; a device-independent
   measure). First a narrow configuration (256 px on the CPU, 512 px on CUDA); then, on CUDA, the full-size
   FLUX-dev base (random weights, bf16, frozen) with the depth-2 ControlNet (fp32 master weights, bf16
   autocast) at 512 x 512, printing peak GPU memory and time per step. Without CUDA that part is skipped,
   saying so.
2. The compact U-Net presets at 128 px (forward, forward + backward), and the ratio between them.
3. The autoencoder (the FLUX one on CUDA, the tiny one on the CPU): untiled against tiled, time ratio.
"""
import argparse

import torch

from ..models import (AutoEncoder, AutoEncoderParams, CompactUNet, CompactUNetConfig, Flux, FluxParams,
                      XLabsControlNet, enable_gradient_checkpointing, freeze, image_ids, pack_latents, text_ids)
from .timing import timed


def saved_activation_bytes(fn, params):
    """Bytes of the tensors autograd saves for backward while ``fn`` runs (shared storages counted once)."""
    param_storages = {p.untyped_storage().data_ptr() for p in params}
    storages = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in param_storages:
            storages[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(storages.values())


def controlnet_step(base, cn, opt, batch, autocast):
    """One FLUX-IR ControlNet training step: residuals from the LQ hint, base velocity, MSE to the target."""
    x, hint, txt, y, t, target = batch
    b, _, h, w = x.shape
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        res = cn(pack_latents(x), image_ids(b, h, w, device=x.device), hint, txt, text_ids(b, txt.shape[1], x.device),
                 t, y, 4.0)
        v = base.velocity(x, t, txt, y, 4.0, controlnet_residuals=res)
        loss = (v.float() - target).square().mean()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss


def make_batch(params, size, text_tokens, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = size // 8
    tensors = (torch.randn(1, params.in_channels, h, h, generator=g), torch.rand(1, 3, size, size, generator=g),
               torch.randn(1, text_tokens, params.context_in_dim, generator=g),
               torch.randn(1, params.vec_in_dim, generator=g), torch.rand(1, generator=g),
               torch.randn(1, params.in_channels, h, h, generator=g))
    return tuple(t.to(device) for t in tensors)


def bench_controlnet(base, cn, size, text_tokens, device, repeats, autocast):
    batch = make_batch(base.params, size, text_tokens, device)
    opt = torch.optim.AdamW([p for p in cn.parameters() if p.requires_grad], lr=1e-6)
    rows = {}
    for checkpointing in (False, True):
        enable_gradient_checkpointing(base, checkpointing)
        enable_gradient_checkpointing(cn, checkpointing)
        try:
            _, saved = saved_activation_bytes(lambda: controlnet_step(base, cn, opt, batch, autocast),
                                              list(base.parameters()) + list(cn.parameters()))
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            seconds = timed(lambda: controlnet_step(base, cn, opt, batch, autocast), device, repeats)
            peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
            rows[checkpointing] = (seconds, saved / 2**20, peak)
        except torch.OutOfMemoryError:
            rows[checkpointing] = None
            torch.cuda.empty_cache()
    for checkpointing, row in rows.items():
        label = "checkpointing on " if checkpointing else "checkpointing off"
        if row is None:
            print(f"  {label}: out of memory")
            continue
        peak = f", peak GPU memory {row[2]:.1f} GiB" if row[2] is not None else ""
        print(f"  {label}: {row[0] * 1000:8.1f} ms/step, activations kept {row[1]:8.1f} MiB{peak}")
    if rows.get(False) and rows.get(True):
        print(f"  ratio on/off: time x{rows[True][0] / rows[False][0]:.2f}, "
              f"activations x{rows[True][1] / max(rows[False][1], 1e-9):.3f}")


def narrow_flux_params():
    """FLUX's head size (128) and RoPE split with width 512, 2 + 4 blocks: the full model's code path, small."""
    return FluxParams(vec_in_dim=768, context_in_dim=512, hidden_size=512, num_heads=4, depth=2,
                      depth_single_blocks=4)


def full_size(device, repeats, params):
    with torch.device("meta"):
        base = Flux(params).to(torch.bfloat16)
    base = freeze(base.to_empty(device=device))
    gen = torch.Generator(device).manual_seed(0)
    with torch.no_grad():
        # random weights drawn on the device: 12 B values are too many to draw on the CPU
        for name, p in base.named_parameters():
            if name.endswith(".scale"):
                p.fill_(1.0)
            elif p.ndim == 1:
                p.zero_()
            else:
                p.normal_(0.0, 0.02, generator=gen)
    cn = XLabsControlNet.from_flux(base, depth=2).float()
    n_base = sum(p.numel() for p in base.parameters()) / 1e9
    n_cn = sum(p.numel() for p in cn.parameters()) / 1e6
    print(f"full size: FLUX-dev base {n_base:.2f} B params (bf16, frozen) + XLabs ControlNet {n_cn:.0f} M params "
          f"(fp32 master, bf16 autocast), 512x512 (1024 image + 512 text tokens), AdamW")
    bench_controlnet(base, cn, 512, 512, device, repeats, autocast=True)


def bench_compact(device, repeats):
    print("compact U-Net, batch 1 at 128 px:")
    results = {}
    for name in ("small", "medium"):
        model = CompactUNet(getattr(CompactUNetConfig, name)(), seed=0).to(device)
        x, lq = torch.randn(1, 3, 128, 128, device=device), torch.rand(1, 3, 128, 128, device=device)
        with torch.no_grad():
            fwd = timed(lambda: model(x, lq, 0.5), device, repeats)
        both = timed(lambda: model(x, lq, 0.5).square().mean().backward(), device, repeats)
        n = sum(p.numel() for p in model.parameters()) / 1e6
        results[name] = fwd
        print(f"  {name:<6} {n:5.1f} M params: forward {fwd * 1000:7.1f} ms, forward+backward {both * 1000:7.1f} ms")
    print(f"  ratio medium/small forward: x{results['medium'] / results['small']:.2f}")


def bench_autoencoder(device, repeats, full):
    params = AutoEncoderParams.flux() if full else AutoEncoderParams.tiny()
    ae = AutoEncoder(params, seed=0).to(device).eval()
    size = 512 if full else 256
    images = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        latent = ae.encode(images)
        rows = {
            "encode": timed(lambda: ae.encode(images), device, repeats),
            f"encode_tiled(tile={size // 2}, overlap={size // 8})":
                timed(lambda: ae.encode_tiled(images, tile=size // 2, overlap=size // 8), device, repeats),
            "decode": timed(lambda: ae.decode(latent), device, repeats),
            f"decode_tiled(tile={size // 16}, overlap={size // 64})":
                timed(lambda: ae.decode_tiled(latent, tile=size // 16, overlap=size // 64), device, repeats),
        }
    print(f"autoencoder ({'FLUX' if full else 'tiny'}), {size} x {size}:")
    names = list(rows)
    for name in names:
        print(f"  {name:<36} {rows[name] * 1000:8.1f} ms")
    print(f"  ratio tiled/untiled: encode x{rows[names[1]] / rows[names[0]]:.2f}, "
          f"decode x{rows[names[3]] / rows[names[2]]:.2f}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m trajir.bench models", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions; the median is reported")
    parser.add_argument("--skip-full", action="store_true",
                        help="on CUDA, skip the full-size FLUX-dev + ControlNet step and the FLUX autoencoder")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)

    params = narrow_flux_params()
    base = freeze(Flux(params, seed=0).to(device))
    cn = XLabsControlNet.from_flux(base, depth=2)
    size = 512 if device.type == "cuda" else 256
    print(f"FLUX-architecture base {sum(p.numel() for p in base.parameters()) / 1e6:.1f} M params (frozen, width "
          f"{params.hidden_size}, {params.depth}+{params.depth_single_blocks} blocks) + ControlNet depth 2, "
          f"{size}x{size}, {device.type}:")
    bench_controlnet(base, cn, size, 64, device, args.repeats, autocast=False)
    del base, cn

    full = device.type == "cuda" and not args.skip_full
    if full:
        full_size(device, args.repeats, FluxParams.dev())
    else:
        print("full size FLUX-dev + ControlNet at 512x512: SKIPPED "
              + ("(no CUDA device; the full-size shapes are checked on the meta device by the tests)"
                 if device.type != "cuda" else "(--skip-full)"))
    bench_compact(device, args.repeats)
    bench_autoencoder(device, args.repeats, full=full)
    return 0
