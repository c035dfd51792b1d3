"""XLabs ControlNet: size, key layout, initialisation from the base, hint range, residual rule."""
import pytest
import torch

from trajir.models import (Flux, FluxParams, XLabsControlNet, image_ids, pack_latents, repeat_residuals, text_ids,
                           xlabs_params)
from trajir.models.layers import init_weights_


def cn_inputs(params, b=2, h=4, w=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, params.in_channels, h, w, generator=g)
    txt = torch.randn(b, 3, params.context_in_dim, generator=g)
    y = torch.randn(b, params.vec_in_dim, generator=g)
    hint = torch.rand(b, 3, 8 * h, 8 * w, generator=g)
    return (pack_latents(x), image_ids(b, h, w), hint, txt, text_ids(b, 3), torch.tensor([0.3, 0.8]), y,
            torch.tensor([3.5, 2.0])), x


@pytest.fixture(scope="module")
def base():
    return Flux(FluxParams.tiny(), seed=1).eval()


def test_depth2_controlnet_of_flux_dev_has_744m_parameters():
    with torch.device("meta"):
        cn = XLabsControlNet(xlabs_params(FluxParams.dev(), depth=2))
    assert sum(p.numel() for p in cn.parameters()) == 743_807_280


def test_key_layout_is_xlabs():
    keys = set(XLabsControlNet(xlabs_params(FluxParams.tiny())).state_dict())
    assert {k.split(".")[0] for k in keys} == {"img_in", "time_in", "vector_in", "guidance_in", "txt_in",
                                               "double_blocks", "controlnet_blocks", "pos_embed_input",
                                               "input_hint_block"}
    hint_convs = sorted(int(k.split(".")[1]) for k in keys
                        if k.startswith("input_hint_block.") and k.endswith("weight"))
    assert hint_convs == list(range(0, 16, 2))
    # the markers ComfyUI's ControlNetLoader keys on for an XLabs file (comfy/controlnet.py)
    assert {"controlnet_blocks.0.weight", "double_blocks.0.img_attn.norm.key_norm.scale", "img_in.weight"} <= keys
    assert {"controlnet_blocks.1.bias", "double_blocks.1.txt_mlp.2.weight"} <= keys
    assert not any(k.startswith("double_blocks.2.") for k in keys)


def test_from_flux_copies_the_base_and_starts_at_zero(base):
    cn = XLabsControlNet.from_flux(base, depth=2)
    base_sd, cn_sd = base.state_dict(), cn.state_dict()
    shared = [k for k in cn_sd if k.split(".")[0] in ("img_in", "time_in", "vector_in", "guidance_in", "txt_in",
                                                        "double_blocks")]
    assert len(shared) > 40 and all(torch.equal(cn_sd[k], base_sd[k]) for k in shared)
    assert all(torch.count_nonzero(cn_sd[k]) == 0 for k in cn_sd
               if k.startswith(("controlnet_blocks.", "input_hint_block.14.")))
    args, x = cn_inputs(base.params)
    with torch.no_grad():
        res = cn(*args)
        plain = base.velocity(x, args[5], args[3], args[6], args[7])
        controlled = base.velocity(x, args[5], args[3], args[6], args[7], controlnet_residuals=res)
    assert len(res) == 2 and res[0].shape == (2, 6, 64)
    assert all(torch.count_nonzero(r) == 0 for r in res)
    torch.testing.assert_close(controlled, plain, rtol=0, atol=0)
    with pytest.raises(ValueError, match="depth must be between 1 and the base's 2 double blocks, got 3"):
        XLabsControlNet.from_flux(base, depth=3)


def test_hint_is_mapped_from_0_1_to_minus1_1():
    """A mid-grey hint (0.5) must reach the hint block as exact zeros, like ComfyUI's ``hint * 2 - 1``."""
    cn = init_weights_(XLabsControlNet(xlabs_params(FluxParams.tiny())), seed=3)
    torch.nn.init.zeros_(cn.input_hint_block[0].bias)
    args, _ = cn_inputs(cn.params)
    grey = list(args)
    grey[2] = torch.full_like(args[2], 0.5)
    blind = init_weights_(XLabsControlNet(xlabs_params(FluxParams.tiny())), seed=3)
    torch.nn.init.zeros_(blind.input_hint_block[0].bias)
    torch.nn.init.zeros_(blind.input_hint_block[0].weight)   # sees zeros whatever the hint
    with torch.no_grad():
        for a, b in zip(cn(*grey), blind(*args)):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        bright = cn(*[torch.ones_like(args[2]) if i == 2 else a for i, a in enumerate(args)])
    assert (bright[0] - cn(*grey)[0]).abs().max() > 1e-5  # float noise is ~1e-7


def test_residuals_repeat_over_19_blocks_like_comfyui():
    res = ["r0", "r1"]
    # ComfyUI: (controlnet_double * ceil(19 / 2))[:19]
    assert repeat_residuals(res, 19) == list(tuple(res) * 10)[:19]
    assert repeat_residuals(["a", "b", "c"], 4) == ["a", "b", "c", "a"]
    with pytest.raises(ValueError, match="controlnet_residuals must be a non-empty list"):
        repeat_residuals([], 19)


def test_validation():
    with pytest.raises(ValueError, match="no single-stream blocks, got depth_single_blocks=2"):
        XLabsControlNet(FluxParams.tiny())
    cn = XLabsControlNet(xlabs_params(FluxParams.tiny()))
    args, _ = cn_inputs(cn.params)
    bad = list(args)
    bad[2] = args[2][:, :, :16]
    with pytest.raises(ValueError, match=r"hint must be \[2, 3, H, W\] .* 6 image tokens"):
        cn(*bad)
    bad[2] = args[2][:, :1]
    with pytest.raises(ValueError, match="hint must have 3 channels"):
        cn(*bad)
    with pytest.raises(ValueError, match="flux must be a trajir Flux model"):
        XLabsControlNet.from_flux(cn)


def test_training_moves_the_heads_then_the_rest(base):
    cn = XLabsControlNet.from_flux(base)
    args, x = cn_inputs(base.params)
    opt = torch.optim.SGD(cn.parameters(), lr=0.5)
    for _ in range(2):
        opt.zero_grad()
        res = cn(*args)
        base.velocity(x, args[5], args[3], args[6], args[7], controlnet_residuals=res).square().mean().backward()
        opt.step()
    # after one step the heads are non-zero, so the second step reaches the copied blocks and the hint block
    assert cn.controlnet_blocks[0].weight.abs().max() > 0
    assert cn.double_blocks[0].img_attn.qkv.weight.grad.abs().max() > 0
    assert cn.input_hint_block[14].weight.grad.abs().max() > 0
