"""InstantX / diffusers FLUX ControlNet: published sizes, diffusers key layout and conversion, initialisation from
the base, the mode token, residuals over double and single blocks, files with and without metadata, errors."""
import dataclasses
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from trajir.models import (Flux, FluxParams, InstantXControlNet, InstantXParams, WeightFileError,
                           enable_gradient_checkpointing, image_ids, instantx_params, load, pack_latents, save,
                           spread_residuals, text_ids)
from trajir.models.diffusers_keys import bfl_to_diffusers, diffusers_to_bfl
from trajir.models.layers import init_weights_


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def trained(net, seed=5):
    """Non-zero heads and hint embedding, as in a trained or downloaded file."""
    for head in (*net.controlnet_blocks, *net.controlnet_single_blocks, net.controlnet_x_embedder):
        init_weights_(head, seed=seed)
    return net


@pytest.fixture(scope="module")
def base():
    return Flux(dataclasses.replace(FluxParams.tiny(), depth=3, depth_single_blocks=4), seed=1).eval()


def cn_inputs(params, b=2, h=4, w=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, params.in_channels, h, w, generator=g)
    txt = torch.randn(b, 3, params.context_in_dim, generator=g)
    y = torch.randn(b, params.vec_in_dim, generator=g)
    hint = torch.randn(b, params.in_channels, h, w, generator=g)
    return (pack_latents(x), image_ids(b, h, w), hint, txt, text_ids(b, 3), torch.tensor([0.3, 0.8]), y,
            torch.tensor([3.5, 2.0])), x


def test_published_configurations_match_the_published_file_sizes():
    # jasperai/Flux.1-dev-Controlnet-Upscaler: config.json num_layers 5, num_single_layers 0, num_mode null; the
    # bf16 diffusion_pytorch_model.safetensors is listed as 3.58 GB. InstantX/FLUX.1-dev-Controlnet-Union and
    # Shakker-Labs/FLUX.1-dev-ControlNet-Union-Pro: num_layers 5, num_single_layers 10, num_mode 10; 6.6 GB.
    with torch.device("meta"):
        upscaler = InstantXControlNet(InstantXParams.jasperai_upscaler())
        union = InstantXControlNet(InstantXParams.union())
    assert n_params(upscaler) == 1_791_605_248 and n_params(union) == 3_301_956_608
    # two bytes per parameter, within the rounding of the sizes as listed (3 significant digits, 2 for 6.6)
    assert 3.575e9 <= 2 * n_params(upscaler) < 3.585e9
    assert 6.55e9 <= 2 * n_params(union) < 6.65e9
    keys = set(union.state_dict())
    assert union.controlnet_mode_embedder.weight.shape == (10, 3072) and union.controlnet_x_embedder.in_features == 64
    assert sum(k.startswith("controlnet_single_blocks.") and k.endswith(".weight") for k in keys) == 10


def test_file_layout_is_diffusers_and_routes_to_comfyuis_instantx_loader(tmp_path, base):
    net = InstantXControlNet.from_flux(base, 2, 1, num_modes=3)
    path = save(net, tmp_path / "cn.safetensors")
    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
    assert {"x_embedder.weight", "context_embedder.bias", "time_text_embed.timestep_embedder.linear_2.weight",
            "time_text_embed.guidance_embedder.linear_1.bias", "time_text_embed.text_embedder.linear_1.weight",
            "transformer_blocks.1.attn.to_q.weight", "transformer_blocks.1.attn.add_v_proj.bias",
            "transformer_blocks.0.attn.norm_added_k.weight", "transformer_blocks.0.ff_context.net.2.weight",
            "transformer_blocks.0.norm1_context.linear.weight", "transformer_blocks.0.attn.to_add_out.weight",
            "single_transformer_blocks.0.proj_mlp.weight", "single_transformer_blocks.0.attn.to_v.bias",
            "single_transformer_blocks.0.norm.linear.weight", "single_transformer_blocks.0.proj_out.weight",
            "controlnet_blocks.1.weight", "controlnet_single_blocks.0.bias", "controlnet_x_embedder.weight",
            "controlnet_mode_embedder.weight"} <= keys
    assert not any(k.startswith(("double_blocks.", "single_blocks.", "img_in.", "txt_in.")) for k in keys)
    assert not {"transformer_blocks.2.attn.to_q.weight", "single_transformer_blocks.1.proj_out.weight"} & keys
    # ComfyUI's ControlNetLoader sends a file with controlnet_blocks.0.weight down its InstantX path when the keys
    # of the XLabs, SD3 and Qwen layouts it tests first are absent and controlnet_x_embedder.weight is present
    assert "controlnet_blocks.0.weight" in keys and "controlnet_x_embedder.weight" in keys
    assert not {"double_blocks.0.img_attn.norm.key_norm.scale", "pos_embed_input.proj.weight",
                "transformer_blocks.0.img_mlp.net.0.proj.weight"} & keys


def test_key_conversion_splits_the_fused_matrices_and_round_trips(base):
    sd = base.state_dict()
    hidden = base.params.hidden_size
    d = bfl_to_diffusers(sd, hidden)
    qkv = sd["double_blocks.1.txt_attn.qkv.weight"]
    assert torch.equal(d["transformer_blocks.1.attn.add_k_proj.weight"], qkv[hidden:2 * hidden])
    linear1 = sd["single_blocks.2.linear1.bias"]
    assert torch.equal(d["single_transformer_blocks.2.attn.to_v.bias"], linear1[2 * hidden:3 * hidden])
    assert torch.equal(d["single_transformer_blocks.2.proj_mlp.bias"], linear1[3 * hidden:])
    assert d["single_transformer_blocks.2.proj_mlp.weight"].shape == (4 * hidden, hidden)
    # a ControlNet has no final layer: the base's passes through under its BFL name
    assert torch.equal(d["final_layer.linear.weight"], sd["final_layer.linear.weight"])
    back = diffusers_to_bfl(d)
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)
    del d["transformer_blocks.0.attn.to_v.weight"]
    with pytest.raises(ValueError, match=r"transformer_blocks.0 has \['attn.to_k', 'attn.to_q'\] but lacks "
                                         r"\['attn.to_v'\] \(weight\)"):
        diffusers_to_bfl(d)


def test_from_flux_copies_the_base_and_leaves_its_prediction_unchanged(base):
    net = InstantXControlNet.from_flux(base, 2, 3, num_modes=4)
    base_sd, net_sd = base.state_dict(), net.state_dict()
    shared = [k for k in net_sd if not k.startswith("controlnet_")]
    assert len(shared) > 60 and all(torch.equal(net_sd[k], base_sd[k]) for k in shared)
    assert {k.split(".")[0] for k in shared} == {"img_in", "time_in", "vector_in", "guidance_in", "txt_in",
                                                  "double_blocks", "single_blocks"}
    assert all(torch.count_nonzero(v) == 0 for k, v in net_sd.items()
               if k.startswith(("controlnet_blocks.", "controlnet_single_blocks.", "controlnet_x_embedder.")))
    args, x = cn_inputs(base.params)
    with torch.no_grad():
        double, single = net(*args, mode=1)
        plain = base.velocity(x, args[5], args[3], args[6], args[7])
        controlled = base.velocity(x, args[5], args[3], args[6], args[7], spread_residuals(double, 3),
                                   spread_residuals(single, 4))
    assert (len(double), len(single)) == (2, 3) and double[0].shape == (2, 6, 64)
    torch.testing.assert_close(controlled, plain, rtol=0, atol=0)
    for bad, message in (((4, 0), "depth must be between 1 and the base's 3 double blocks, got 4"),
                         ((1, 5), "depth_single_blocks must be between 0 and the base's 4 single blocks, got 5")):
        with pytest.raises(ValueError, match=message):
            InstantXControlNet.from_flux(base, *bad)


def test_residuals_spread_over_runs_of_blocks_like_comfyui():
    def comfyui_rule(residuals, n_blocks):   # ControlNetFlux, latent_input: each residual repeated, then cut
        repeat = math.ceil(n_blocks / len(residuals))
        return [r for r in residuals for _ in range(repeat)][:n_blocks]

    for n, blocks in ((5, 19), (10, 38), (1, 19), (2, 19), (3, 38), (7, 7), (4, 5)):
        names = [f"r{i}" for i in range(n)]
        assert spread_residuals(names, blocks) == comfyui_rule(names, blocks), (n, blocks)
    assert spread_residuals(["a", "b"], 19)[9:11] == ["a", "b"]   # blocks 0-9 take the first, 10-18 the second
    with pytest.raises(ValueError, match="3 ControlNet residuals cannot be spread over 2 base blocks"):
        spread_residuals(["a", "b", "c"], 2)
    with pytest.raises(ValueError, match="residuals must be a non-empty list"):
        spread_residuals([], 19)


def test_single_block_residuals_are_added_to_the_image_tokens(base):
    args, x = cn_inputs(base.params)
    g = torch.Generator().manual_seed(3)
    res = [0.3 * torch.randn(2, 6, 64, generator=g) for _ in range(4)]
    t, txt, y, guidance = args[5], args[3], args[6], args[7]
    with torch.no_grad():
        ours = base(args[0], args[1], txt, args[4], t, y, guidance, controlnet_single_residuals=res)
        # by hand from the model's parts
        from trajir.models.flux import conditioning_vector

        vec = conditioning_vector(base, t, guidance, y, 2, x.device, torch.float32)
        img, ctx = base.img_in(args[0]), base.txt_in(txt)
        pe = base.pe_embedder(torch.cat((args[4], args[1]), dim=1))
        for block in base.double_blocks:
            img, ctx = block(img, ctx, vec, pe)
        joint = torch.cat((ctx, img), dim=1)
        for block, r in zip(base.single_blocks, res):
            joint = block(joint, vec, pe)
            joint[:, 3:] += r
        by_hand = base.final_layer(joint[:, 3:], vec)
    torch.testing.assert_close(ours, by_hand, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"one tensor per single block \(4\)"):
        base(args[0], args[1], txt, args[4], t, y, guidance, controlnet_single_residuals=res[:3])
    with pytest.raises(ValueError, match=r"controlnet_single_residuals\[2\] must have shape \(2, 6, 64\)"):
        base(args[0], args[1], txt, args[4], t, y, guidance,
             controlnet_single_residuals=[*res[:2], res[2][:, :2], res[3]])


def test_the_mode_is_one_extra_text_token(base):
    net = trained(InstantXControlNet.from_flux(base, 2, 2, num_modes=4))
    args, _ = cn_inputs(base.params)
    with torch.no_grad():
        outputs = [net(*args, mode=m) for m in range(4)]
    assert (outputs[1][0][0] - outputs[2][0][0]).abs().max() > 1e-4
    # the mode token is the embedder row in front of the projected prompt: a no-mode ControlNet whose txt_in maps
    # one extra input token exactly onto that row gives the same residuals
    plain = InstantXControlNet(instantx_params(net.params, 2, 2, 0))
    plain.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith("controlnet_mode_")})
    ctx_dim = base.params.context_in_dim
    with torch.no_grad():
        w, bias = plain.txt_in.weight, plain.txt_in.bias
        row = net.controlnet_mode_embedder.weight[2]
        token = torch.linalg.lstsq(w, (row - bias)[:, None]).solution[:, 0]   # txt_in(token) = row (w is 64x64)
        txt = torch.cat((token.expand(2, 1, ctx_dim), args[3]), dim=1)
        same = plain(args[0], args[1], args[2], txt, text_ids(2, 4), *args[5:])
    for a, b in zip(outputs[2][0] + outputs[2][1], same[0] + same[1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # training moves only the chosen row of the embedder
    net.zero_grad()
    double, single = net(*args, mode=3)
    (sum(r.square().mean() for r in double + single)).backward()
    grad = net.controlnet_mode_embedder.weight.grad
    assert grad[3].abs().max() > 0 and grad[[0, 1, 2]].abs().max() == 0


def test_mode_and_hint_errors(base):
    union = InstantXControlNet.from_flux(base, 1, 0, num_modes=4)
    plain = InstantXControlNet.from_flux(base, 1)
    args, _ = cn_inputs(base.params)
    with pytest.raises(ValueError, match=r"Union ControlNet has a mode embedder with 4 rows: pass mode=0..3 .*tile 1"):
        union(*args)
    for bad in (4, -1, True, 1.0):
        with pytest.raises(ValueError, match=r"mode must be an integer in 0..3"):
            union(*args, mode=bad)
    with pytest.raises(ValueError, match="no mode embedder"):
        plain(*args, mode=0)
    bad = list(args)
    bad[2] = args[2][:, :, :2]
    with pytest.raises(ValueError, match=r"hint must be the control image's latent \[2, 16, h, w\] .* 6 image tokens"):
        plain(*bad)
    bad[2] = torch.rand(2, 3, 32, 48)   # an image where the latent belongs
    with pytest.raises(ValueError, match=r"hint must be the control image's latent"):
        plain(*bad)
    with pytest.raises(ValueError, match="params must be an InstantXParams"):
        InstantXControlNet(FluxParams.tiny())
    with pytest.raises(ValueError, match="num_modes must be an integer >= 0"):
        InstantXParams(num_modes=-2)


def test_hint_latent_reaches_the_residuals_and_checkpointing_keeps_gradients(base):
    args, _ = cn_inputs(base.params)
    net = trained(InstantXControlNet.from_flux(base, 2, 2))
    with torch.no_grad():
        a = net(*args)[0][0]
        b = net(*[torch.zeros_like(args[2]) if i == 2 else v for i, v in enumerate(args)])[0][0]
    assert (a - b).abs().max() > 1e-3
    grads = []
    for on in (False, True):
        model = enable_gradient_checkpointing(trained(InstantXControlNet.from_flux(base, 2, 2)), on)
        double, single = model(*args)
        sum(r.square().mean() for r in double + single).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)


def test_files_load_with_and_without_metadata(tmp_path, base):
    net = trained(InstantXControlNet.from_flux(base, 2, 1, num_modes=7))
    ours = load(save(net, tmp_path / "ours.safetensors"))
    with safe_open(str(tmp_path / "ours.safetensors"), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file({k: v.to(torch.bfloat16) for k, v in tensors.items()}, str(tmp_path / "public.safetensors"))
    public = load(tmp_path / "public.safetensors")   # as from the Hub: bf16, no trajir metadata
    for loaded in (ours, public):
        assert loaded.kind == "instantx_controlnet" and loaded.params == net.params
    sd, ref = public.state_dict(), net.state_dict()
    assert all(torch.equal(sd[k], ref[k].to(torch.bfloat16).float()) for k in ref)
    assert all(torch.equal(v, ref[k]) for k, v in ours.state_dict().items())


def test_bad_files_name_the_file_and_what_was_expected(tmp_path, base):
    net = InstantXControlNet.from_flux(base, 2, 1)
    with safe_open(str(save(net, tmp_path / "cn.safetensors")), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}

    def write(name, sd):
        save_file(sd, str(tmp_path / name))
        return tmp_path / name

    broken = write("broken.safetensors",
                   {k: v for k, v in tensors.items() if k != "transformer_blocks.1.ff.net.2.bias"})
    with pytest.raises(WeightFileError, match=r"broken.safetensors: does not match a instantx_controlnet .* 1 missing "
                                              r"key\(s\) \['transformer_blocks.1.ff.net.2.bias'\]"):
        load(broken)
    inpaint = dict(tensors, **{"controlnet_x_embedder.weight": torch.zeros(64, 68)})
    with pytest.raises(WeightFileError, match="controlnet_x_embedder.weight takes 68 channels, but the latent patches "
                                              "have 64"):
        load(write("inpaint.safetensors", inpaint))
    pixel = dict(tensors, **{"input_hint_block.conv_in.weight": torch.zeros(16, 3, 3, 3)})
    with pytest.raises(WeightFileError, match="pixel.safetensors: .*pixel-space input_hint_block"):
        load(write("pixel.safetensors", pixel))
