"""FLUX DiT: configuration, packing, RoPE, embeddings, equivariances, checkpointing, the full-size path on meta."""
import math

import pytest
import torch

from trajir.models import (Flux, FluxParams, XLabsControlNet, enable_gradient_checkpointing, freeze, image_ids,
                           pack_latents, params_from_state_dict, repeat_residuals, text_ids, unpack_latents,
                           xlabs_params)
from trajir.models.layers import EmbedND, apply_rope, init_weights_, timestep_embedding


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def inputs(params, b=2, h=6, w=8, t_len=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, params.in_channels, h, w, generator=g)
    txt = torch.randn(b, t_len, params.context_in_dim, generator=g)
    y = torch.randn(b, params.vec_in_dim, generator=g)
    return x, txt, y


@pytest.fixture(scope="module")
def tiny():
    return Flux(FluxParams.tiny(), seed=1).eval()


def test_real_configurations_have_the_published_sizes():
    with torch.device("meta"):
        dev, schnell = Flux(FluxParams.dev()), Flux(FluxParams.schnell())
    assert n_params(dev) == 11_901_408_320  # "12 B" FLUX.1-dev
    # schnell lacks only the guidance MLP (256 -> 3072 -> 3072)
    assert n_params(dev) - n_params(schnell) == (256 * 3072 + 3072) + (3072 * 3072 + 3072)


def test_params_validation_states_the_numbers():
    with pytest.raises(ValueError, match="hidden_size 100 must be divisible by num_heads 3"):
        FluxParams(hidden_size=100, num_heads=3)
    with pytest.raises(ValueError, match=r"axes_dim \[16, 56, 50\] .* head dimension 128"):
        FluxParams(axes_dim=(16, 56, 50))
    with pytest.raises(ValueError, match="depth must be a positive integer"):
        FluxParams(depth=0)
    with pytest.raises(ValueError, match="params must be a FluxParams"):
        Flux({"hidden_size": 64})


def test_pack_layout_and_round_trip():
    x = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).reshape(2, 3, 4, 6)
    tokens = pack_latents(x)
    assert tokens.shape == (2, 2 * 3, 12)
    # token (row 1, col 2) holds the 2x2 patch x[:, :, 2:4, 4:6], channel-major
    assert torch.equal(tokens[:, 1 * 3 + 2], x[:, :, 2:4, 4:6].reshape(2, 12))
    assert torch.equal(unpack_latents(tokens, 4, 6), x)
    with pytest.raises(ValueError, match="even h and w"):
        pack_latents(torch.zeros(1, 16, 5, 6))
    with pytest.raises(ValueError, match="do not unpack to a latent of size 4x4"):
        unpack_latents(tokens, 4, 4)


def test_position_ids():
    ids = image_ids(2, 4, 6)
    assert ids.shape == (2, 6, 3)
    assert ids[1, 5].tolist() == [0.0, 1.0, 2.0]   # token 5 = row 1, column 2 of a 2x3 grid
    assert torch.equal(ids[:, :, 0], torch.zeros(2, 6))
    assert torch.equal(text_ids(3, 7), torch.zeros(3, 7, 3))


def test_timestep_embedding_closed_form():
    t = torch.tensor([0.0, 0.25])
    emb = timestep_embedding(t, 8)
    freqs = torch.tensor([10000 ** (-k / 4) for k in range(4)])
    expected = torch.cat([torch.cos(250.0 * freqs), torch.sin(250.0 * freqs)])
    assert torch.equal(emb[0], torch.cat([torch.ones(4), torch.zeros(4)]))
    torch.testing.assert_close(emb[1], expected, rtol=0, atol=1e-5)


def test_rope_rotates_pairs_by_position_times_frequency():
    # one axis of width 4: pair k turns by pos * 10000^(-2k/4)
    pe = EmbedND(10000, [4])(torch.tensor([[[3.0]]]))
    x = torch.tensor([1.0, 0.0, 0.0, 1.0]).reshape(1, 1, 1, 4)
    out = apply_rope(x, pe).flatten()
    a0, a1 = 3.0, 3.0 * 10000 ** -0.5
    expected = torch.tensor([math.cos(a0), math.sin(a0), -math.sin(a1), math.cos(a1)])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


def test_rope_scores_depend_only_on_relative_position():
    g = torch.Generator().manual_seed(0)
    emb = EmbedND(10000, [4, 14, 14])
    q, k = torch.randn(2, 1, 1, 1, 32, generator=g)
    p, r = torch.tensor([[[0.0, 3.0, 5.0]]]), torch.tensor([[[0.0, 7.0, 1.0]]])
    shift = torch.tensor([[[0.0, 11.0, -4.0]]])
    score = (apply_rope(q, emb(p)) * apply_rope(k, emb(r))).sum()
    shifted = (apply_rope(q, emb(p + shift)) * apply_rope(k, emb(r + shift))).sum()
    torch.testing.assert_close(score, shifted, rtol=1e-5, atol=1e-5)


def test_image_tokens_are_permutation_equivariant_and_text_order_free(tiny):
    x, txt, y = inputs(tiny.params)
    img, ids, tids = pack_latents(x), image_ids(2, 6, 8), text_ids(2, 5)
    perm = torch.randperm(img.shape[1], generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = tiny(img, ids, txt, tids, 0.4, y, 3.5)
        out_perm = tiny(img[:, perm], ids[:, perm], txt, tids, 0.4, y, 3.5)
        out_txt = tiny(img, ids, txt.flip(1), tids, 0.4, y, 3.5)
    torch.testing.assert_close(out_perm, out[:, perm], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_txt, out, rtol=1e-5, atol=1e-5)


def test_batch_items_are_independent_and_conditioning_matters(tiny):
    x, txt, y = inputs(tiny.params)
    t = torch.tensor([0.2, 0.9])
    with torch.no_grad():
        both = tiny.velocity(x, t, txt, y, guidance=3.5)
        first = tiny.velocity(x[:1], t[:1], txt[:1], y[:1], guidance=3.5)
        other_g = tiny.velocity(x, t, txt, y, guidance=1.0)
        other_t = tiny.velocity(x, t.flip(0), txt, y, guidance=3.5)
    assert both.shape == x.shape
    torch.testing.assert_close(both[:1], first, rtol=1e-5, atol=1e-5)
    assert (both - other_g).abs().max() > 1e-3
    assert (both - other_t).abs().max() > 1e-3


def test_guidance_required_by_dev_ignored_by_schnell():
    x, txt, y = inputs(FluxParams.tiny())
    with pytest.raises(ValueError, match="guidance is required by a guidance-distilled"):
        Flux(FluxParams.tiny()).velocity(x, 0.5, txt, y)
    schnell = Flux(FluxParams(**{**FluxParams.tiny().to_dict(), "guidance_embed": False}))
    assert not any(k.startswith("guidance_in") for k in schnell.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(schnell.velocity(x, 0.5, txt, y), schnell.velocity(x, 0.5, txt, y, guidance=9.0))


def test_input_validation_names_the_argument(tiny):
    x, txt, y = inputs(tiny.params)
    with pytest.raises(ValueError, match=r"txt must have shape \[2, T, 64\]"):
        tiny.velocity(x, 0.5, txt[..., :10], y, guidance=3.5)
    with pytest.raises(ValueError, match=r"y must be None or a \[2, 32\] tensor"):
        tiny.velocity(x, 0.5, txt, y[:, :5], guidance=3.5)
    with pytest.raises(ValueError, match=r"timesteps must be a number or a \[B\] tensor with B=2"):
        tiny.velocity(x, torch.ones(3), txt, y, guidance=3.5)
    with pytest.raises(ValueError, match="timesteps contains 1 NaN"):
        tiny.velocity(x, torch.tensor([0.5, float("nan")]), txt, y, guidance=3.5)


def test_controlnet_residuals_cycle_over_the_double_blocks():
    params = FluxParams(**{**FluxParams.tiny().to_dict(), "depth": 5})
    base = Flux(params, seed=2)
    x, txt, y = inputs(params)
    g = torch.Generator().manual_seed(5)
    r0, r1 = (0.1 * torch.randn(2, 12, params.hidden_size, generator=g) for _ in range(2))
    assert repeat_residuals([r0, r1], 5) == [r0, r1, r0, r1, r0]
    with torch.no_grad():
        short = base.velocity(x, 0.5, txt, y, 3.5, controlnet_residuals=[r0, r1])
        full = base.velocity(x, 0.5, txt, y, 3.5, controlnet_residuals=[r0, r1, r0, r1, r0])
        none = base.velocity(x, 0.5, txt, y, 3.5)
    torch.testing.assert_close(short, full, rtol=0, atol=0)
    assert (short - none).abs().max() > 1e-3
    with pytest.raises(ValueError, match=r"controlnet_residuals\[1\] must have shape \(2, 12, 64\)"):
        base.velocity(x, 0.5, txt, y, 3.5, controlnet_residuals=[r0, r1[:, :3]])


def test_gradient_checkpointing_gives_the_same_gradients():
    x, txt, y = inputs(FluxParams.tiny())
    grads = []
    for checkpointing in (False, True):
        model = enable_gradient_checkpointing(Flux(FluxParams.tiny(), seed=4), checkpointing)
        model.velocity(x, 0.5, txt, y, 3.5).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)


def test_frozen_base_passes_gradients_to_the_controlnet_only():
    base = freeze(Flux(FluxParams.tiny(), seed=1))
    cn = XLabsControlNet.from_flux(base)
    x, txt, y = inputs(base.params, h=4, w=4)
    hint = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    res = cn(pack_latents(x), image_ids(2, 4, 4), hint, txt, text_ids(2, 5), 0.5, y, 3.5)
    base.velocity(x, 0.5, txt, y, 3.5, controlnet_residuals=res).square().mean().backward()
    assert not base.training and all(p.grad is None and not p.requires_grad for p in base.parameters())
    # zero-initialised heads: the first step moves only them
    assert cn.controlnet_blocks[0].weight.grad.abs().max() > 0
    assert cn.double_blocks[0].img_mlp[0].weight.grad.abs().max() == 0


def test_half_precision_weights_and_io_dtypes(tiny):
    x, txt, y = inputs(tiny.params)
    bf16 = Flux(FluxParams.tiny(), seed=1).to(torch.bfloat16).eval()
    with torch.no_grad():
        ref = tiny.velocity(x, 0.5, txt, y, 3.5)
        out = bf16.velocity(x, 0.5, txt, y, 3.5)
        out_half = tiny.velocity(x.half(), 0.5, txt, y, 3.5)
    assert out.dtype == torch.float32 and out_half.dtype == torch.float16
    assert (out - ref).abs().max() < 0.1 * ref.abs().max()


def test_params_inferred_from_keys_match_comfyui_for_real_files_and_shapes_for_tiny_ones(tiny):
    with torch.device("meta"):
        dev_sd, schnell_sd = Flux(FluxParams.dev()).state_dict(), Flux(FluxParams.schnell()).state_dict()
    # ComfyUI hard-codes these for every FLUX file (docs/comfyui.md §7)
    assert params_from_state_dict(dev_sd) == FluxParams(
        in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096, hidden_size=3072, mlp_ratio=4.0,
        num_heads=24, depth=19, depth_single_blocks=38, axes_dim=(16, 56, 56), theta=10000, qkv_bias=True,
        guidance_embed=True)
    assert params_from_state_dict(schnell_sd) == FluxParams.schnell()
    prefixed = {"model.diffusion_model." + k: v for k, v in tiny.state_dict().items()}
    assert params_from_state_dict(prefixed) == FluxParams.tiny()
    with pytest.raises(ValueError, match="not a FLUX state dict"):
        params_from_state_dict({"img_in.weight": torch.zeros(3, 64)})


def test_full_size_dev_and_controlnet_forward_backward_on_meta():
    """The 512x512 training step of the benchmark, shape-checked without memory: 64x64 latent, 512 T5 tokens."""
    with torch.device("meta"):
        base = freeze(Flux(FluxParams.dev()))
        cn = XLabsControlNet(xlabs_params(FluxParams.dev(), 2))
        enable_gradient_checkpointing(base)
        x = torch.empty(1, 16, 64, 64)
        txt, y, hint = torch.empty(1, 512, 4096), torch.empty(1, 768), torch.empty(1, 3, 512, 512)
        res = cn(pack_latents(x), image_ids(1, 64, 64), hint, txt, text_ids(1, 512), torch.empty(1), y,
                 torch.empty(1))
        v = base.velocity(x, torch.empty(1), txt, y, torch.empty(1), controlnet_residuals=res)
        v.sum().backward()
    assert len(res) == 2 and res[0].shape == (1, 1024, 3072)
    assert v.shape == (1, 16, 64, 64)
    assert cn.controlnet_blocks[1].weight.grad.shape == (3072, 3072)


def test_init_is_seeded_and_device_independent():
    a = Flux(FluxParams.tiny(), seed=7).state_dict()
    b = Flux(FluxParams.tiny(), seed=7).state_dict()
    c = init_weights_(Flux(FluxParams.tiny(), seed=8).double(), seed=7).state_dict()
    assert all(torch.equal(a[k], b[k]) and torch.equal(a[k].double(), c[k]) for k in a)
    assert not torch.equal(a["img_in.weight"], Flux(FluxParams.tiny(), seed=8).state_dict()["img_in.weight"])
