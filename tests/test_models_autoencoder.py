"""FLUX autoencoder and LQ encoder: size, layout, latent spaces, posterior, tiling, alignment loss."""
import pytest
import torch
import torch.nn.functional as F
from conftest import sample_photo

from trajir.models import (AutoEncoder, AutoEncoderParams, LQEncoder, enable_gradient_checkpointing,
                           lq_alignment_loss)
from trajir.models.autoencoder import posterior
from trajir.tiling import blend_tiles


@pytest.fixture(scope="module")
def ae():
    return AutoEncoder(AutoEncoderParams.tiny(), seed=0).eval()


@pytest.fixture(scope="module")
def photo():
    return sample_photo("astronaut", (64, 96))


def test_flux_autoencoder_size_and_bfl_layout():
    with torch.device("meta"):
        full = AutoEncoder(AutoEncoderParams.flux())
    assert sum(p.numel() for p in full.parameters()) == 83_819_683
    keys = set(full.state_dict())
    assert {"encoder.conv_in.weight", "encoder.down.0.block.1.norm2.bias",
            "encoder.down.1.block.0.nin_shortcut.weight", "encoder.down.2.downsample.conv.weight",
            "encoder.mid.attn_1.q.weight", "encoder.conv_out.weight", "decoder.up.3.upsample.conv.weight",
            "decoder.up.0.block.2.conv2.weight", "decoder.mid.block_2.norm1.weight", "decoder.conv_out.bias"} <= keys
    assert full.state_dict()["encoder.conv_out.weight"].shape == (32, 512, 3, 3)   # mean and log-variance
    assert not any("quant_conv" in k or k.startswith("reg") for k in keys)
    assert not any(k.startswith("encoder.down.3.downsample") or k.startswith("decoder.up.0.upsample") for k in keys)


def test_params_validation():
    with pytest.raises(ValueError, match=r"ch_mult \[1, 2\] with ch 48 .* multiples of 32"):
        AutoEncoderParams(ch=48, ch_mult=(1, 2))
    with pytest.raises(ValueError, match="scale_factor must be finite and > 0"):
        AutoEncoderParams(scale_factor=0.0)


def test_latent_spaces_follow_comfyui_process_in_and_out(ae, photo):
    with torch.no_grad():
        z = ae.encode_vae(photo)
        x = ae.encode(photo)
    assert z.shape == (1, 16, 8, 12)
    torch.testing.assert_close(x, (z - 0.1159) * 0.3611)
    torch.testing.assert_close(ae.model_to_vae(x), z, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ae.model_to_vae(x), x / 0.3611 + 0.1159)
    with torch.no_grad():
        torch.testing.assert_close(ae.decode(x), ae.decode_vae(z), rtol=1e-5, atol=1e-5)


def test_decode_range_and_shapes(ae):
    z = 3.0 * torch.randn(2, 16, 4, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        raw = ae.decode_vae(z, clamp=False)
        images = ae.decode_vae(z)
    assert images.shape == (2, 3, 32, 48)
    torch.testing.assert_close(images, raw.clamp(0, 1))
    assert images.min() >= 0 and images.max() <= 1


def test_posterior_mean_or_seeded_sample():
    g = torch.Generator().manual_seed(1)
    moments = torch.randn(2, 32, 3, 3, generator=g)
    mean, logvar = moments.chunk(2, dim=1)
    assert torch.equal(posterior(moments), mean)
    draw = posterior(moments, torch.Generator().manual_seed(5))
    eps = torch.randn(2, 16, 3, 3, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(draw, mean + torch.exp(0.5 * logvar) * eps)


def test_input_validation(ae):
    with pytest.raises(ValueError, match="images height and width must be multiples of 8 .* got 60x64"):
        ae.encode(torch.rand(1, 3, 60, 64))
    with pytest.raises(ValueError, match="images must have 3 channels"):
        ae.encode(torch.rand(1, 4, 64, 64))
    bad = torch.rand(1, 3, 8, 8)
    bad[0, 1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="images contains 1 NaN"):
        ae.encode(bad)
    with pytest.raises(ValueError, match=r"tile must be a positive multiple of 8 pixels, got 60"):
        ae.encode_tiled(torch.rand(1, 3, 64, 64), tile=60)
    with pytest.raises(ValueError, match=r"overlap must be a multiple of 1 latent cells in \[0, tile=8\), got 8"):
        ae.decode_tiled(torch.zeros(1, 16, 16, 16), tile=8, overlap=8)


def test_one_tile_equals_untiled(ae, photo):
    with torch.no_grad():
        torch.testing.assert_close(ae.encode_tiled(photo, tile=96, overlap=16), ae.encode(photo), rtol=0, atol=0)
        z = ae.encode(photo)
        torch.testing.assert_close(ae.decode_tiled(z, tile=16, overlap=4), ae.decode(z), rtol=0, atol=1e-6)


def test_blend_is_exact_for_tile_local_maps():
    """With a map that commutes with cropping, overlapping tiles and ramps reproduce the untiled result."""
    x = torch.randn(2, 3, 40, 56, generator=torch.Generator().manual_seed(0))
    down = blend_tiles(lambda t: F.avg_pool2d(t, 8), x, 24, 8, 1, 8, 3)     # the encoder's geometry
    torch.testing.assert_close(down, F.avg_pool2d(x, 8), rtol=0, atol=1e-6)
    z = torch.randn(1, 16, 9, 13, generator=torch.Generator().manual_seed(1))
    up = blend_tiles(lambda t: F.interpolate(t, scale_factor=8.0), z, 4, 2, 8, 1, 16)   # the decoder's
    torch.testing.assert_close(up, F.interpolate(z, scale_factor=8.0), rtol=0, atol=1e-6)


def test_tiled_runs_on_several_tiles(ae):
    big = sample_photo("coffee", (64, 80))
    with torch.no_grad():
        z = ae.encode_tiled(big, tile=32, overlap=8)      # 3 x 3 tiles
        images = ae.decode_tiled(z, tile=4, overlap=1)
    assert z.shape == (1, 16, 8, 10) and images.shape == (1, 3, 64, 80)
    assert torch.isfinite(z).all() and images.min() >= 0 and images.max() <= 1


def test_gradient_checkpointing_in_encoder_and_decoder(photo):
    grads = []
    for on in (False, True):
        model = enable_gradient_checkpointing(AutoEncoder(AutoEncoderParams.tiny(), seed=3), on)
        model.decode(model.encode(photo[..., :32, :32]), clamp=False).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-8)


def test_lq_encoder_starts_as_the_autoencoder_encoder(ae, photo):
    lq = LQEncoder.from_autoencoder(ae)
    assert set(lq.state_dict()) == {k for k in ae.state_dict() if k.startswith("encoder.")}
    with torch.no_grad():
        torch.testing.assert_close(lq(photo), ae.encode(photo), rtol=0, atol=0)
        lq.encoder.conv_in.bias.add_(1.0)     # a fine-tuning step must not touch the autoencoder
    assert not torch.equal(lq.encoder.conv_in.bias, ae.encoder.conv_in.bias)


def test_lq_alignment_loss_is_mse_and_trains_only_the_lq_side(ae, photo):
    lq = LQEncoder.from_autoencoder(ae)
    degraded = (photo + 0.1 * torch.randn(photo.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    gt_latent = ae.encode(photo)
    lq_latent = lq(degraded)
    loss = lq_alignment_loss(lq_latent, gt_latent)
    torch.testing.assert_close(loss, ((lq_latent - gt_latent) ** 2).mean())
    loss.backward()
    assert lq.encoder.conv_in.weight.grad.abs().max() > 0 and ae.encoder.conv_in.weight.grad is None
    assert lq_alignment_loss(gt_latent, gt_latent).item() == 0.0
    with pytest.raises(ValueError, match=r"lq_latent has shape \(1, 16, 8, 12\) but gt_latent has shape"):
        lq_alignment_loss(lq_latent, gt_latent[..., :4])


def test_lq_encoder_fine_tuning_reduces_the_alignment_loss(ae, photo):
    lq = LQEncoder.from_autoencoder(ae)
    degraded = F.interpolate(F.avg_pool2d(photo, 4), scale_factor=4.0, mode="nearest")
    with torch.no_grad():
        target = ae.encode(photo)
    opt = torch.optim.Adam(lq.parameters(), lr=1e-3)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = lq_alignment_loss(lq(degraded), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
