"""Random-weight model files with the names, formats and key layouts of the files the shipped workflows load, for
running those workflows in a real ComfyUI (``test_workflows_comfyui.py``).

ComfyUI reads FLUX's width (3072) and head count from nothing in the file, so a file cannot be narrower than the
real model; it can be shallower. Each file has one double-stream block (and no single-stream block), which makes
the FLUX and ControlNet files about 400 M parameters instead of 12 B:

- ``flux1-dev.safetensors``: BFL layout in bf16 (what ``UNETLoader`` reads as FLUX.1-dev);
- ``flux1-dev-kontext_fp8_scaled.safetensors``: the same layout as ComfyUI's "scaled fp8" files (float8_e4m3fn
  weights with a float32 ``scale_weight`` per linear layer and the ``scaled_fp8`` marker), the format of the
  Comfy-Org Kontext file;
- ``ae.safetensors``: the FLUX autoencoder (16 latent channels; its size is fixed by ComfyUI, 84 M parameters);
- the jasperai upscaler and Shakker-Labs Union-Pro ControlNets: InstantX / diffusers layout
  (``transformer_blocks``, ``controlnet_x_embedder``, ...), the Union file with its ``controlnet_mode_embedder``.

The key sets come from ComfyUI's own modules built on the meta device, so they are exactly what ComfyUI's loaders
expect. Run as a script in a child process (``write_model_files``): it imports ComfyUI from $COMFYUI_PATH.
"""
import json
import os
import pathlib
import subprocess
import sys
import time

TESTS = pathlib.Path(__file__).resolve().parent
FLUX_SHAPE = dict(image_model="flux", in_channels=16, patch_size=2, out_channels=16, vec_in_dim=768,
                  context_in_dim=4096, hidden_size=3072, mlp_ratio=4.0, num_heads=24, axes_dim=[16, 56, 56],
                  theta=10000, qkv_bias=True, guidance_embed=True)
UNION_MODES = 10
FILES = {  # file -> (models sub-folder, kind)
    "flux1-dev.safetensors": ("diffusion_models", "flux_bf16"),
    "flux1-dev-kontext_fp8_scaled.safetensors": ("diffusion_models", "flux_scaled_fp8"),
    "ae.safetensors": ("vae", "flux_vae"),
    "jasperai-Flux.1-dev-Controlnet-Upscaler.safetensors": ("controlnet", "instantx"),
    "Shakker-Labs-FLUX.1-dev-ControlNet-Union-Pro.safetensors": ("controlnet", "instantx_union"),
}


def write_model_files(comfy_path, models_dir, timeout=900):
    """Write every file of ``FILES`` under ``models_dir/<folder>/`` (a child process); returns its report."""
    env = {**os.environ, "PYTHONPATH": ""}
    proc = subprocess.run([sys.executable, str(pathlib.Path(__file__).resolve()), str(comfy_path), str(models_dir)],
                          cwd=str(comfy_path), env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"writing the random model files failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                           f"{proc.stderr[-6000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _random(shape, generator, kind, torch):
    """Weights that keep a random network's activations in range: unit fan-in variance, norms at 1, biases 0."""
    if kind == "ones":
        return torch.ones(shape)
    if kind == "zeros":
        return torch.zeros(shape)
    fan_in = 1
    for s in shape[1:]:
        fan_in *= s
    return torch.randn(shape, generator=generator) / max(1, fan_in) ** 0.5


def _kind(key, shape):
    if key.endswith(".scale") or (key.endswith(".weight") and len(shape) == 1):
        return "ones"
    if key.endswith(".bias"):
        return "zeros"
    return "random"


def _filled(shapes, generator, torch, dtype, scale=None):
    out = {}
    for key, shape in shapes.items():
        t = _random(tuple(shape), generator, _kind(key, shape), torch)
        if scale is not None and scale(key):
            t = t * 0.05  # ControlNet outputs: small residuals, as a trained ControlNet's start from zero
        out[key] = t.to(dtype).contiguous()
    return out


def _flux_shapes(torch):
    import comfy.ops
    from comfy.ldm.flux.model import Flux

    with torch.device("meta"):
        model = Flux(operations=comfy.ops.disable_weight_init, depth=1, depth_single_blocks=0, **FLUX_SHAPE)
    linears = {name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}, linears


def _instantx_shapes(torch, union_modes):
    """The diffusers-layout key set of a FLUX ControlNet: ComfyUI's module keys renamed with the inverse of
    ``comfy.utils.flux_to_diffusers`` (fused q/k/v become separate diffusers tensors)."""
    import comfy.ops
    import comfy.utils
    from comfy.ldm.flux.controlnet import ControlNetFlux

    with torch.device("meta"):
        net = ControlNetFlux(latent_input=True, num_union_modes=union_modes, control_latent_channels=16,
                             operations=comfy.ops.disable_weight_init, depth=1, depth_single_blocks=0, **FLUX_SHAPE)
    comfy_shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    mapping = comfy.utils.flux_to_diffusers({"depth": 1, "depth_single_blocks": 0, "hidden_size": 3072})
    shapes, covered = {}, set()
    for diffusers_key, target in mapping.items():
        source = target if isinstance(target, str) else target[0]
        if source not in comfy_shapes:
            continue  # keys of the base model that a ControlNet does not have (final layer)
        shape = list(comfy_shapes[source])
        if not isinstance(target, str) and target[1] is not None:
            dim, _, length = target[1]
            shape[dim] = length
        shapes[diffusers_key] = tuple(shape)
        covered.add(source)
    for key, shape in comfy_shapes.items():  # controlnet_blocks.*, the mode embedder: same name in both layouts
        if key not in covered:
            shapes[key] = shape
    return shapes


def _vae_shapes(torch):
    from comfy.ldm.models.autoencoder import AutoencodingEngine

    config = {"double_z": True, "z_channels": 16, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
              "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
    with torch.device("meta"):
        vae = AutoencodingEngine(
            regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
            encoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Encoder", "params": config},
            decoder_config={"target": "comfy.ldm.modules.diffusionmodules.model.Decoder", "params": config})
    return {k: tuple(v.shape) for k, v in vae.state_dict().items()}


def _scaled_fp8(state, linears, torch):
    """ComfyUI's scaled-fp8 format: each linear weight stored as float8_e4m3fn with a float32 ``scale_weight``
    (weight = fp8 * scale), other tensors in bf16, and the ``scaled_fp8`` marker key."""
    out = {}
    for key, t in state.items():
        module = key.rsplit(".", 1)[0]
        if module in linears and key.endswith(".weight"):
            scale = t.float().abs().amax().clamp_min(1e-8) / 448.0  # 448: the largest float8_e4m3fn value
            out[key] = (t.float() / scale).to(torch.float8_e4m3fn)
            out[f"{module}.scale_weight"] = scale.reshape(()).float()
        else:
            out[key] = t.to(torch.bfloat16)
    out["scaled_fp8"] = torch.zeros(2, dtype=torch.float8_e4m3fn)  # 2 elements: no fp8 matmul optimisation
    return out


def main(comfy_path, models_dir):
    sys.path.insert(0, str(comfy_path))
    from comfy.cli_args import args

    args.cpu = True
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    report = {}
    flux, linears = _flux_shapes(torch)
    for name, (folder, kind) in FILES.items():
        start = time.time()
        if kind == "flux_bf16":
            state = _filled(flux, generator, torch, torch.bfloat16)
        elif kind == "flux_scaled_fp8":
            state = _scaled_fp8(_filled(flux, generator, torch, torch.float32), linears, torch)
        elif kind == "flux_vae":
            state = _filled(_vae_shapes(torch), generator, torch, torch.bfloat16)
        else:
            shapes = _instantx_shapes(torch, UNION_MODES if kind == "instantx_union" else 0)
            state = _filled(shapes, generator, torch, torch.bfloat16,
                            scale=lambda key: key.startswith("controlnet_") and "blocks" in key)
        path = pathlib.Path(models_dir) / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(path))
        report[name] = {"tensors": len(state), "params": sum(t.numel() for t in state.values()),
                        "bytes": path.stat().st_size, "seconds": round(time.time() - start, 1)}
        del state
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
