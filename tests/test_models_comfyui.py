"""Parity with a real ComfyUI (skipped unless $COMFYUI_PATH names a checkout).

Each check runs this file as a child process ("worker") that imports ComfyUI on the CPU, so ComfyUI never
enters the test process (tests/test_repo.py checks that the pack imports without it). The worker prints one
JSON line of measurements; the tests below assert on them.

* module parity: the tiny FLUX, XLabs ControlNet and autoencoder built in ComfyUI's classes and in ours, loaded
  from one state dict (strict), agree to 1e-5 in float32; the full-size autoencoder through ``comfy.sd.VAE``
  (ComfyUI's VAELoader path) agrees too, and ComfyUI's key-based detection reads our FLUX-dev layout as ours.
* a real graph: full-width (hidden 3072, depth-1) files written by ``trajir.models.save`` go through the core
  nodes ``UNETLoader``, ``ControlNetLoader``, ``ControlNetApplyAdvanced`` and ``KSampler`` (euler, 3 steps,
  64 px); the sampled latent equals an Euler loop over our own modules, and ComfyUI logs no missing keys.
  It is the slow one (about a minute on 2 CPU cores; it writes two 0.8 GB files into a temporary folder).
"""
import json
import logging
import math
import os
import pathlib
import subprocess
import sys

import pytest

from conftest import REPO, comfyui_path, requires_comfyui


def run_worker(case, folder):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, __file__, case, str(folder)], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=900)
    assert proc.returncode == 0, f"worker {case!r} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    return run_worker("parity", tmp_path_factory.mktemp("parity"))


@requires_comfyui
def test_flux_matches_comfyui(parity):
    assert parity["flux_keys"] == [[], []]
    assert parity["flux"] <= 1e-5 * max(1.0, parity["flux_scale"])
    assert parity["flux_with_control"] <= 1e-5 * max(1.0, parity["flux_scale"])


@requires_comfyui
def test_xlabs_controlnet_matches_comfyui(parity):
    assert parity["cn_keys"] == [[], []]
    assert parity["cn_outputs"] == 19          # ComfyUI always emits residuals for 19 base blocks
    assert parity["cn_scale"] > 0.1 and parity["cn"] <= 1e-5


@requires_comfyui
def test_autoencoder_matches_comfyui(parity):
    assert parity["ae_keys"] == [[], []]
    assert parity["ae_encode"] <= 1e-5 and parity["ae_decode"] <= 1e-5
    # full size through comfy.sd.VAE: 30 layers of 128-512 channels accumulate more float32 rounding
    assert parity["vae_loader_channels"] == 16
    assert parity["vae_loader_encode"] <= 5e-5 and parity["vae_loader_decode"] <= 5e-5
    assert parity["process_in"] <= 1e-6


@requires_comfyui
def test_comfyui_detection_reads_our_flux_layout(parity):
    assert parity["detected"] == parity["ours"]


@requires_comfyui
def test_our_files_run_in_a_real_comfyui_graph(tmp_path):
    try:
        out = run_worker("graph", tmp_path)
    finally:
        for f in tmp_path.rglob("*.safetensors"):   # 1.6 GB that pytest would otherwise keep around
            f.unlink()
    assert out["key_warnings"] == []
    assert [m.split(":")[0] for m in out["key_warnings_when_broken"]] == ["missing controlnet keys"]
    assert "ControlNetFlux" in out["loaded"]
    assert out["controlnet_effect"] > 1e-2          # the ControlNet changed the sample
    assert out["graph_vs_ours"] <= 1e-4 * max(1.0, out["scale"])


# ---------------------------------------------------------------- worker (child process only) ----------------

def _import_comfy():
    sys.path.insert(0, str(comfyui_path()))
    from comfy.cli_args import args
    args.cpu = True               # before comfy.model_management is imported: no CUDA probing
    import comfy.model_management  # noqa: F401


def _max_diff(a, b):
    return float((a - b).abs().max())


def _comfy_flux_config(p):
    return dict(image_model="flux", in_channels=p.in_channels, patch_size=2, out_channels=p.out_channels,
                vec_in_dim=p.vec_in_dim, context_in_dim=p.context_in_dim, hidden_size=p.hidden_size,
                mlp_ratio=p.mlp_ratio, num_heads=p.num_heads, depth=p.depth,
                depth_single_blocks=p.depth_single_blocks, axes_dim=list(p.axes_dim), theta=p.theta,
                qkv_bias=p.qkv_bias, guidance_embed=p.guidance_embed)


def _keys(result):
    return [list(result.missing_keys), list(result.unexpected_keys)]


def _parity():
    import torch
    import comfy.latent_formats
    import comfy.model_detection
    import comfy.ops
    import comfy.sd
    from comfy.ldm.flux.controlnet import ControlNetFlux
    from comfy.ldm.flux.model import Flux as ComfyFlux
    from comfy.ldm.models.autoencoder import AutoencodingEngine

    from trajir import models as M
    from trajir.models.layers import init_weights_

    ops, out = comfy.ops.disable_weight_init, {}
    g = torch.Generator().manual_seed(0)
    p = M.FluxParams.tiny()
    ours = M.Flux(p, seed=1).eval()
    theirs = ComfyFlux(operations=ops, dtype=torch.float32, device="cpu", **_comfy_flux_config(p))
    out["flux_keys"] = _keys(theirs.load_state_dict(ours.state_dict(), strict=False))
    b, h, w = 2, 8, 12
    x, ctx = torch.randn(b, 16, h, w, generator=g), torch.randn(b, 5, p.context_in_dim, generator=g)
    y, t, guidance = torch.randn(b, p.vec_in_dim, generator=g), torch.tensor([0.3, 0.9]), torch.tensor([3.5, 2.0])
    hint = torch.rand(b, 3, 8 * h, 8 * w, generator=g)

    cn = init_weights_(M.XLabsControlNet(M.xlabs_params(p, 2)), seed=3).eval()   # non-zero heads: a "trained" one
    comfy_cn = ControlNetFlux(operations=ops, dtype=torch.float32, device="cpu",
                              **_comfy_flux_config(M.xlabs_params(p, 2)))
    out["cn_keys"] = _keys(comfy_cn.load_state_dict(cn.state_dict(), strict=False))
    with torch.no_grad():
        v = ours.velocity(x, t, ctx, y, guidance)
        out["flux"], out["flux_scale"] = _max_diff(v, theirs(x, t, ctx, y=y, guidance=guidance)), float(v.abs().max())
        res = cn(M.pack_latents(x), M.image_ids(b, h, w), hint, ctx, M.text_ids(b, 5), t, y, guidance)
        control = comfy_cn(x, t, ctx, y=y, guidance=guidance, hint=hint)["input"]
        out["cn_outputs"] = len(control)
        out["cn"] = max(_max_diff(r, c) for r, c in zip(M.repeat_residuals(res, len(control)), control))
        out["cn_scale"] = float(res[0].abs().max())
        v = ours.velocity(x, t, ctx, y, guidance, controlnet_residuals=res)
        ref = theirs(x, t, ctx, y=y, guidance=guidance, control={"input": [c.clone() for c in control], "output": []})
        out["flux_with_control"] = _max_diff(v, ref)

    ap = M.AutoEncoderParams.tiny()
    dd = {"double_z": True, "z_channels": ap.z_channels, "resolution": 256, "in_channels": 3, "out_ch": 3,
          "ch": ap.ch, "ch_mult": list(ap.ch_mult), "num_res_blocks": ap.num_res_blocks, "attn_resolutions": [],
          "dropout": 0.0}
    comfy_ae = AutoencodingEngine(
        regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
        encoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Encoder", "params": dd},
        decoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Decoder", "params": dd})
    ae = M.AutoEncoder(ap, seed=1).eval()
    out["ae_keys"] = _keys(comfy_ae.load_state_dict(ae.state_dict(), strict=False))
    images = torch.rand(2, 3, 64, 48, generator=g)
    with torch.no_grad():
        z = ae.encode_vae(images)
        out["ae_encode"] = _max_diff(z, comfy_ae.encode(images * 2 - 1))
        out["ae_decode"] = _max_diff(ae.decode_vae(z, clamp=False), (comfy_ae.decode(z) + 1) / 2)

        full = M.AutoEncoder(M.AutoEncoderParams.flux(), seed=0).eval()
        vae = comfy.sd.VAE(sd=full.state_dict())
        pixels = torch.rand(1, 64, 64, 3, generator=g)          # ComfyUI IMAGE layout [B, H, W, C]
        z_comfy, z_ours = vae.encode(pixels), full.encode_vae(pixels.movedim(-1, 1))
        out["vae_loader_channels"] = vae.latent_channels
        out["vae_loader_encode"] = _max_diff(z_comfy, z_ours)
        out["vae_loader_decode"] = _max_diff(vae.decode(z_comfy).movedim(-1, 1), full.decode_vae(z_ours))
        out["process_in"] = _max_diff(comfy.latent_formats.Flux().process_in(z_comfy), full.vae_to_model(z_ours))

    with torch.device("meta"):
        dev_sd = M.Flux(M.FluxParams.dev()).state_dict()
    detected = comfy.model_detection.detect_unet_config(dev_sd, "")
    ours_cfg = _comfy_flux_config(M.params_from_state_dict(dev_sd))
    out["detected"] = {k: detected.get(k) for k in ours_cfg}
    out["ours"] = ours_cfg
    return out


# what ComfyUI logs when a file's keys do not fit its module (comfy/controlnet.py, model_base.py, sd.py)
KEY_MESSAGES = ("missing controlnet keys", "unexpected controlnet keys", "unet missing", "unet unexpected",
                "left over keys")


def _simple_flux_sigmas(steps, shift=1.15, n=10000):
    """ComfyUI's "simple" scheduler on ModelSamplingFlux (docs/comfyui.md §3), re-derived: every (n/steps)-th of the
    n shifted grid points t_k = k/n, from the top, then 0."""
    ts = [(n - int(i * n / steps)) / n for i in range(steps)]
    return [math.exp(shift) / (math.exp(shift) + (1 / t - 1)) for t in ts] + [0.0]


def _graph(folder):
    import torch
    import comfy.controlnet
    import comfy.utils
    import folder_paths
    import nodes

    from trajir import models as M
    from trajir.models.layers import init_weights_

    records = []
    handler = logging.Handler(level=logging.DEBUG)
    handler.emit = lambda r: records.append(r.getMessage())
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.DEBUG)

    folder = pathlib.Path(folder)
    for sub in ("diffusion_models", "controlnet"):
        (folder / sub).mkdir()
        folder_paths.add_model_folder_path(sub, str(folder / sub))
    params = M.FluxParams(depth=1, depth_single_blocks=0)      # full width: ComfyUI hard-codes 3072
    base = M.Flux(params, seed=0)
    cn = M.XLabsControlNet.from_flux(base, depth=1)
    init_weights_(cn.controlnet_blocks, seed=5)                # as after training: non-zero heads
    init_weights_(cn.input_hint_block[-1], seed=6)
    M.save(base.to(torch.bfloat16), folder / "diffusion_models" / "trajir_flux_d1.safetensors")
    M.save(cn.to(torch.bfloat16), folder / "controlnet" / "trajir_xlabs_d1.safetensors")
    del base, cn

    g = torch.Generator().manual_seed(1)
    ctx, pooled = torch.randn(1, 4, 4096, generator=g), torch.randn(1, 768, generator=g)
    hint = torch.rand(1, 64, 64, 3, generator=g)
    cond = [[ctx, {"pooled_output": pooled, "guidance": 3.5}]]
    latent = {"samples": torch.zeros(1, 16, 8, 8)}
    seed, steps, strength = 7, 3, 0.8

    model = nodes.UNETLoader().load_unet("trajir_flux_d1.safetensors", "default")[0]
    control_net = nodes.ControlNetLoader().load_controlnet("trajir_xlabs_d1.safetensors")[0]
    pos, neg = nodes.ControlNetApplyAdvanced().apply_controlnet(cond, cond, control_net, hint, strength, 0.0, 1.0)
    sampler = nodes.KSampler()
    with_cn = sampler.sample(model, seed, steps, 1.0, "euler", "simple", pos, neg, latent)[0]["samples"]
    without = sampler.sample(model, seed, steps, 1.0, "euler", "simple", cond, cond, latent)[0]["samples"]

    key_warnings = [m for m in records if m.startswith(KEY_MESSAGES)]
    # that check can fail: the same file with one key dropped makes ComfyUI complain
    broken = comfy.utils.load_torch_file(str(folder / "controlnet" / "trajir_xlabs_d1.safetensors"))
    del broken["controlnet_blocks.0.bias"]
    first = len(records)
    comfy.controlnet.load_controlnet_state_dict(broken)
    broken_warnings = [m for m in records[first:] if m.startswith(KEY_MESSAGES)]
    del broken

    base = M.load(folder / "diffusion_models" / "trajir_flux_d1.safetensors")
    cn = M.load(folder / "controlnet" / "trajir_xlabs_d1.safetensors")
    sigmas = _simple_flux_sigmas(steps)
    x = torch.randn(latent["samples"].shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for s, s_next in zip(sigmas[:-1], sigmas[1:]):
            t = torch.tensor([s])
            res = cn(M.pack_latents(x), M.image_ids(1, 8, 8), hint.movedim(-1, 1), ctx, M.text_ids(1, 4), t, pooled,
                     3.5)
            v = base.velocity(x, t, ctx, pooled, 3.5, controlnet_residuals=[strength * r for r in res])
            x = x + v * (s_next - s)
    ours = x / 0.3611 + 0.1159                  # ComfyUI returns process_out'd (VAE-space) samples
    return {
        "key_warnings": key_warnings,
        "key_warnings_when_broken": broken_warnings,
        "loaded": " ".join(m for m in records if m.startswith("Requested to load")),
        "controlnet_effect": _max_diff(with_cn, without),
        "graph_vs_ours": _max_diff(with_cn, ours),
        "scale": float(ours.abs().max()),
    }


if __name__ == "__main__":
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    _import_comfy()
    result = _parity() if sys.argv[1] == "parity" else _graph(sys.argv[2])
    print(json.dumps(result))
