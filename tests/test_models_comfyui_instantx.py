"""The InstantX / diffusers FLUX ControlNet against a real ComfyUI (skipped unless $COMFYUI_PATH names a checkout).

Same worker pattern as tests/test_models_comfyui.py: this file runs as a child process that imports ComfyUI on
the CPU and prints one JSON line of measurements.

* module parity: files written by ``trajir.models.save`` (a no-mode file, a Union file, and the export of a
  ``trajir.train`` run) are converted with ComfyUI's own diffusers-to-BFL key conversion, as its ControlNetLoader
  does, and loaded strictly into ComfyUI's ``ControlNetFlux(latent_input=True)``. The 19 double and 38 single
  residual lists ComfyUI emits equal ours spread over FLUX.1's blocks, and ComfyUI's FLUX with those residuals
  gives our velocity, to 1e-5 in float32. The base has FLUX.1's 19 double and 38 single blocks (at tiny width),
  the block counts ComfyUI assumes when it spreads the residuals.
* a real graph: full-width (hidden 3072) files, the ControlNet with trajir's export metadata, through the core
  nodes UNETLoader, VAELoader, ControlNetLoader, SetUnionControlNetType (Union file), ControlNetApplyAdvanced with
  the VAE, KSampler (euler, 2 steps, 64 px); each sampled latent equals an Euler loop over our own modules fed
  the VAE latent of the hint, and ComfyUI logs no missing keys. The Union file has 1 double + 1 single block and
  10 modes, the other the jasperai upscaler's layout (1 double, no single blocks, no modes). About a minute on 2
  CPU cores; it writes 3 GB of files into a temporary folder and removes them.
"""
import json
import os
import pathlib
import subprocess
import sys

import pytest

from conftest import REPO, requires_comfyui

TRAIN_EXPORT = "trainer_export.safetensors"


def run_worker(case, folder):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, __file__, case, str(folder)], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=900)
    assert proc.returncode == 0, f"worker {case!r} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    folder = tmp_path_factory.mktemp("instantx_parity")
    from test_train_instantx import instantx_config
    from trajir.train.loop import train

    # a Union ControlNet exported by a short trainer run (mode 2, 1 double + 1 single block of the tiny base)
    cfg = instantx_config(folder / "run", "flux.controlnet_depth=1", "flux.controlnet_single_depth=1",
                          "flux.controlnet_modes=4", "flux.controlnet_mode=2", "run.max_steps=3", "optim.lr=1e-2",
                          f"run.export={TRAIN_EXPORT}")
    assert train(cfg) == "done"
    (folder / "run" / TRAIN_EXPORT).rename(folder / TRAIN_EXPORT)
    return run_worker("parity", folder)


@requires_comfyui
@pytest.mark.parametrize("case", ["plain", "union", "trainer"])
def test_instantx_controlnet_matches_comfyui(parity, case):
    assert parity["base_keys"] == [[], []]
    out = parity[case]
    assert out["keys"] == [[], []]                       # ComfyUI's conversion of our file loads strictly
    assert out["num_union_modes"] == out["modes"]
    assert (out["n_input"], out["n_output"]) == (19, 38 if out["single"] else 0)
    assert out["residual_scale"] > 1e-3 and out["residuals"] <= 1e-5
    assert out["velocity_effect"] > 1e-3                 # the residuals changed the base's prediction
    assert out["velocity"] <= 1e-5 * max(1.0, out["velocity_scale"])


@requires_comfyui
def test_union_mode_token_matters_in_comfyui_too(parity):
    # another mode changes ComfyUI's output: the mode token really is in the text stream on both sides
    assert parity["union"]["other_mode_effect"] > 1e-3


@requires_comfyui
def test_exported_instantx_files_run_in_a_real_comfyui_graph(tmp_path):
    try:
        out = run_worker("graph", tmp_path)
    finally:
        for f in tmp_path.rglob("*.safetensors"):   # 3 GB that pytest would otherwise keep around
            f.unlink()
    assert out["key_warnings"] == []
    assert [m.split(":")[0] for m in out["key_warnings_when_broken"]] == ["missing controlnet keys"]
    for case in ("union", "plain"):
        result = out[case]
        assert result["loaded"] == "ControlNetFlux" and result["union_modes"] == (10 if case == "union" else 0)
        assert result["controlnet_effect"] > 1e-2       # the ControlNet changed the sample
        assert result["graph_vs_ours"] <= 1e-4 * max(1.0, result["scale"]), result
    # SetUnionControlNetType's choice reached the model: the graph matches mode 1 and not mode 0
    assert out["union"]["other_mode_vs_graph"] > 10 * 1e-4 * max(1.0, out["union"]["scale"])


# ---------------------------------------------------------------- worker (child process only) ----------------

def _strict_comfy_controlnet(path, params):
    """Our file -> ComfyUI's InstantX loading steps (comfy/controlnet.py ``load_controlnet_flux_instantx``, minus
    its width detection, which hard-codes 3072) -> ``(ControlNetFlux, [missing, unexpected])``."""
    import torch
    import comfy.model_detection
    import comfy.ops
    import comfy.utils
    from comfy.ldm.flux.controlnet import ControlNetFlux

    from test_models_comfyui import _comfy_flux_config, _keys

    sd = comfy.utils.load_torch_file(str(path))
    converted = comfy.model_detection.convert_diffusers_mmdit(sd, "")
    converted.update(sd)                      # ComfyUI keeps the keys its conversion did not consume
    modes = converted["controlnet_mode_embedder.weight"].shape[0] if "controlnet_mode_embedder.weight" in converted \
        else 0
    net = ControlNetFlux(latent_input=True, num_union_modes=modes,
                         control_latent_channels=converted["pos_embed_input.weight"].shape[1] // 4,
                         operations=comfy.ops.disable_weight_init, dtype=torch.float32, device="cpu",
                         **_comfy_flux_config(params))
    return net.eval(), _keys(net.load_state_dict(converted, strict=False))


def _parity(folder):
    import dataclasses

    import torch
    import comfy.ops
    from comfy.ldm.flux.model import Flux as ComfyFlux

    from test_models_comfyui import _comfy_flux_config, _keys, _max_diff
    from trajir import models as M
    from trajir.models.layers import init_weights_

    folder = pathlib.Path(folder)
    tiny = M.FluxParams.tiny()
    params = dataclasses.replace(tiny, depth=19, depth_single_blocks=38)   # FLUX.1's block counts, tiny width
    base = M.Flux(params, seed=1).eval()
    theirs = ComfyFlux(operations=comfy.ops.disable_weight_init, dtype=torch.float32, device="cpu",
                       **_comfy_flux_config(params)).eval()
    base_keys = _keys(theirs.load_state_dict(base.state_dict(), strict=False))

    def trained(depth, single, modes, seed):
        net = M.InstantXControlNet.from_flux(base, depth, single, modes, seed=seed)
        for head in (*net.controlnet_blocks, *net.controlnet_single_blocks, net.controlnet_x_embedder):
            init_weights_(head, seed=seed + 10)                # non-zero heads, as after training
        return net

    cases = {"plain": (trained(2, 3, 0, 1), None), "union": (trained(3, 2, 5, 2), 3)}
    for name, (net, _) in cases.items():
        M.save(net, folder / f"{name}.safetensors")
    cases["trainer"] = (None, 2)                              # the parity fixture's flux.controlnet_mode
    g = torch.Generator().manual_seed(0)
    b, h, w = 2, 8, 12
    x, ctx = torch.randn(b, 16, h, w, generator=g), torch.randn(b, 5, tiny.context_in_dim, generator=g)
    y, t, guidance = torch.randn(b, tiny.vec_in_dim, generator=g), torch.tensor([0.3, 0.9]), torch.tensor([3.5, 2.0])
    hint = torch.randn(b, 16, h, w, generator=g)              # the LQ image's latent, model space
    out = {}
    for name, (_, mode) in cases.items():
        path = folder / (TRAIN_EXPORT if name == "trainer" else f"{name}.safetensors")
        ours = M.load(path).eval()
        comfy_cn, keys = _strict_comfy_controlnet(path, ours.params)
        control_type = [] if mode is None else [mode]
        with torch.no_grad():
            double, single = ours(M.pack_latents(x), M.image_ids(b, h, w), hint, ctx, M.text_ids(b, 5), t, y,
                                  guidance, mode=mode)
            control = comfy_cn(x, t, ctx, y=y, guidance=guidance, hint=hint, control_type=control_type)
            spread_double = M.spread_residuals(double, 19)
            spread_single = M.spread_residuals(single, 38) if single else []
            diffs = [_max_diff(r, c) for r, c in zip(spread_double, control["input"])]
            diffs += [_max_diff(r, c) for r, c in zip(spread_single, control.get("output", []))]
            plain = base.velocity(x, t, ctx, y, guidance)
            v = base.velocity(x, t, ctx, y, guidance, controlnet_residuals=spread_double,
                              controlnet_single_residuals=spread_single or None)
            ref = theirs(x, t, ctx, y=y, guidance=guidance,
                         control={"input": [c.clone() for c in control["input"]],
                                  "output": [c.clone() for c in control.get("output", [])]})
            result = {"keys": keys, "modes": ours.params.num_modes, "num_union_modes": comfy_cn.num_union_modes,
                      "single": ours.params.depth_single_blocks, "n_input": len(control["input"]),
                      "n_output": len(control.get("output", [])), "residuals": max(diffs),
                      "residual_scale": float(double[0].abs().max()), "velocity": _max_diff(v, ref),
                      "velocity_scale": float(v.abs().max()), "velocity_effect": _max_diff(v, plain)}
            if name == "union":
                other = comfy_cn(x, t, ctx, y=y, guidance=guidance, hint=hint, control_type=[0])
                result["other_mode_effect"] = _max_diff(other["input"][0], control["input"][0])
        out[name] = result
    out["base_keys"] = base_keys
    return out


def _graph(folder):
    import gc
    import logging

    import torch
    import comfy.controlnet
    import comfy.model_management
    import comfy.utils
    import folder_paths
    import nodes
    from comfy_extras.nodes_controlnet import SetUnionControlNetType

    from test_models_comfyui import KEY_MESSAGES, _max_diff, _simple_flux_sigmas
    from trajir import models as M
    from trajir.grids import RFGrid
    from trajir.models.layers import init_weights_
    from trajir.compact import RECIPE_KEY, Recipe

    records = []
    handler = logging.Handler(level=logging.DEBUG)
    handler.emit = lambda r: records.append(r.getMessage())
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.DEBUG)

    folder = pathlib.Path(folder)
    for sub in ("diffusion_models", "controlnet", "vae"):
        (folder / sub).mkdir()
        folder_paths.add_model_folder_path(sub, str(folder / sub))
    base = M.Flux(M.FluxParams(depth=1, depth_single_blocks=1), seed=0)   # full width: ComfyUI hard-codes 3072
    M.save(base.to(torch.bfloat16), folder / "diffusion_models" / "trajir_flux_d1s1.safetensors")
    union = M.InstantXControlNet.from_flux(base.float(), depth=1, depth_single_blocks=1, num_modes=10, seed=3)
    del base
    for head in (*union.controlnet_blocks, *union.controlnet_single_blocks, union.controlnet_x_embedder):
        init_weights_(head, seed=5)                          # as after training: non-zero heads
    recipe = {RECIPE_KEY: Recipe(grid=RFGrid.uniform(21, 0.4675).describe(), path=list(range(1, 22)), ngs_w=1e-3,
                                 task="sr").to_json()}       # the metadata Stage.export writes
    M.save(union.to(torch.bfloat16), folder / "controlnet" / "trajir_union.safetensors", metadata=recipe)
    # the jasperai upscaler's layout (no single blocks, no modes) with the Union file's double block and heads
    with torch.device("meta"):
        plain = M.InstantXControlNet(M.instantx_params(union.params, 1, 0, 0))
    plain.load_state_dict({k: v for k, v in union.state_dict().items()
                           if not k.startswith(("controlnet_mode_", "single_blocks.", "controlnet_single_blocks."))},
                          assign=True)
    M.save(plain.to(torch.bfloat16), folder / "controlnet" / "trajir_upscaler.safetensors", metadata=recipe)
    del union, plain
    ae = M.AutoEncoder(M.AutoEncoderParams.flux(), seed=0)
    M.save(ae.to(torch.bfloat16), folder / "vae" / "trajir_ae.safetensors")
    del ae
    gc.collect()

    g = torch.Generator().manual_seed(1)
    ctx, pooled = torch.randn(1, 4, 4096, generator=g), torch.randn(1, 768, generator=g)
    image = torch.rand(1, 64, 64, 3, generator=g)           # ComfyUI IMAGE layout, 8x the 8x8 latent
    cond = [[ctx, {"pooled_output": pooled, "guidance": 3.5}]]
    latent = {"samples": torch.zeros(1, 16, 8, 8)}
    seed, steps, strength = 7, 2, 0.8
    comfy_types = {"union": "depth", "plain": None}         # SetUnionControlNetType "depth" is index 1
    modes = {"union": 1, "plain": None}

    model = nodes.UNETLoader().load_unet("trajir_flux_d1s1.safetensors", "default")[0]
    vae = nodes.VAELoader().load_vae("trajir_ae.safetensors")[0]
    sampler = nodes.KSampler()
    without = sampler.sample(model, seed, steps, 1.0, "euler", "simple", cond, cond, latent)[0]["samples"]
    results, samples = {}, {}
    first = len(records)
    for case, file in (("union", "trajir_union.safetensors"), ("plain", "trajir_upscaler.safetensors")):
        control_net = nodes.ControlNetLoader().load_controlnet(file)[0]
        loaded = type(control_net.control_model).__name__
        union_modes = control_net.control_model.num_union_modes
        if comfy_types[case]:
            control_net = SetUnionControlNetType().set_controlnet_type(control_net, comfy_types[case])[0]
        pos, neg = nodes.ControlNetApplyAdvanced().apply_controlnet(cond, cond, control_net, image, strength, 0.0,
                                                                    1.0, vae=vae)
        samples[case] = sampler.sample(model, seed, steps, 1.0, "euler", "simple", pos, neg, latent)[0]["samples"]
        results[case] = {"loaded": loaded, "union_modes": union_modes,
                         "controlnet_effect": _max_diff(samples[case], without)}
        del control_net, pos, neg
    key_warnings = [m for m in records[first:] if m.startswith(KEY_MESSAGES)]
    broken = comfy.utils.load_torch_file(str(folder / "controlnet" / "trajir_union.safetensors"))
    del broken["controlnet_single_blocks.0.bias"]
    first = len(records)
    comfy.controlnet.load_controlnet_state_dict(broken)
    broken_warnings = [m for m in records[first:] if m.startswith(KEY_MESSAGES)]
    del broken, model, vae
    comfy.model_management.unload_all_models()
    gc.collect()

    base = M.load(folder / "diffusion_models" / "trajir_flux_d1s1.safetensors")
    ae = M.load(folder / "vae" / "trajir_ae.safetensors")
    with torch.no_grad():
        hint = ae.encode(image.movedim(-1, 1))               # ComfyUI: VAE encode, then the FLUX latent format
    del ae
    sigmas = _simple_flux_sigmas(steps)

    def euler(cn, mode):
        x = torch.randn(latent["samples"].shape, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            for s, s_next in zip(sigmas[:-1], sigmas[1:]):
                t = torch.tensor([s])
                double, single = cn(M.pack_latents(x), M.image_ids(1, 8, 8), hint, ctx, M.text_ids(1, 4), t, pooled,
                                    3.5, mode=mode)
                v = base.velocity(x, t, ctx, pooled, 3.5,
                                  controlnet_residuals=M.spread_residuals([strength * r for r in double], 1),
                                  controlnet_single_residuals=M.spread_residuals([strength * r for r in single], 1)
                                  if single else None)
                x = x + v * (s_next - s)
        return x / 0.3611 + 0.1159                           # ComfyUI returns process_out'd (VAE-space) samples

    for case, file in (("union", "trajir_union.safetensors"), ("plain", "trajir_upscaler.safetensors")):
        cn = M.load(folder / "controlnet" / file)
        ours = euler(cn, modes[case])
        results[case].update(graph_vs_ours=_max_diff(samples[case], ours), scale=float(ours.abs().max()))
        if case == "union":   # our loop in another mode is far from the graph: "depth" selected mode 1
            results[case]["other_mode_vs_graph"] = _max_diff(samples[case], euler(cn, 0))
        del cn
    return {"key_warnings": key_warnings, "key_warnings_when_broken": broken_warnings, **results}


if __name__ == "__main__":
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    from test_models_comfyui import _import_comfy

    _import_comfy()
    result = _parity(sys.argv[2]) if sys.argv[1] == "parity" else _graph(sys.argv[2])
    print(json.dumps(result))
