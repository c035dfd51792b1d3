"""Model files: round trips, recognition, prefixes, dtype upcast (bf16 / fp16 / fp8 / scaled fp8), clear errors."""
import json
import os

import pytest
import torch
from safetensors.torch import save_file

from trajir.models import (AutoEncoder, AutoEncoderParams, CompactUNet, CompactUNetConfig, Flux, FluxParams,
                           LQEncoder, WeightFileError, XLabsControlNet, load, save, xlabs_params)
from trajir.models.layers import init_weights_


def tiny_models():
    ae = AutoEncoder(AutoEncoderParams.tiny(), seed=3)
    return {
        "flux": Flux(FluxParams.tiny(), seed=1),
        "xlabs_controlnet": init_weights_(XLabsControlNet(xlabs_params(FluxParams.tiny())), seed=2),
        "autoencoder": ae,
        "lq_encoder": LQEncoder.from_autoencoder(ae),
        "compact_unet": CompactUNet(CompactUNetConfig.tiny("vp"), seed=4),
    }


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def bare(tmp_path, model, name, transform=lambda sd: sd):
    """Write ``model`` the way BFL / ComfyUI / XLabs files come: no trajir metadata."""
    path = tmp_path / name
    save_file(transform({k: v.contiguous() for k, v in model.state_dict().items()}), str(path))
    return path


@pytest.mark.parametrize("kind", ["flux", "xlabs_controlnet", "autoencoder", "lq_encoder", "compact_unet"])
def test_save_load_round_trip(tmp_path, kind):
    model = tiny_models()[kind]
    path = save(model, tmp_path / f"{kind}.safetensors", metadata={"note": "test"})
    loaded = load(path)
    assert loaded.kind == kind and type(loaded) is type(model) and loaded.config == model.config
    assert same_weights(loaded, model) and not loaded.training
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 and p.requires_grad for p in loaded.parameters())
    assert os.listdir(tmp_path) == [f"{kind}.safetensors"]     # the temporary file is gone


def test_files_without_metadata_are_recognised_from_their_keys(tmp_path):
    models = tiny_models()
    for kind in ("flux", "xlabs_controlnet", "autoencoder", "lq_encoder"):
        loaded = load(bare(tmp_path, models[kind], f"{kind}.safetensors"))
        assert loaded.kind == kind and loaded.config == models[kind].config and same_weights(loaded, models[kind])


def test_comfyui_prefix_and_full_checkpoints(tmp_path):
    flux = Flux(FluxParams.tiny(), seed=1)
    prefixed = bare(tmp_path, flux, "prefixed.safetensors",
                    lambda sd: {"model.diffusion_model." + k: v for k, v in sd.items()})
    assert same_weights(load(prefixed), flux)
    full = bare(tmp_path, flux, "full.safetensors", lambda sd: {
        **{"model.diffusion_model." + k: v for k, v in sd.items()},
        "vae.decoder.conv_in.weight": torch.zeros(2), "text_encoders.t5xxl.x": torch.zeros(1)})
    assert load(full).kind == "flux"
    stray = bare(tmp_path, flux, "stray.safetensors", lambda sd: {
        **{"model.diffusion_model." + k: v for k, v in sd.items()}, "lora_unet.x": torch.zeros(1)})
    with pytest.raises(WeightFileError, match=r"stray.safetensors: keys outside 'model.diffusion_model.' .*lora_unet"):
        load(stray)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float8_e4m3fn])
def test_low_precision_files_are_upcast(tmp_path, dtype):
    flux = Flux(FluxParams.tiny(), seed=1)
    path = bare(tmp_path, flux, "low.safetensors", lambda sd: {k: v.to(dtype) for k, v in sd.items()})
    loaded = load(path)
    expected = {k: v.to(dtype).float() for k, v in flux.state_dict().items()}
    assert all(torch.equal(p, expected[k]) for k, p in loaded.state_dict().items())
    assert load(path, dtype=torch.bfloat16).img_in.weight.dtype == torch.bfloat16


def test_scaled_fp8_files_multiply_the_scale_back(tmp_path):
    flux = Flux(FluxParams.tiny(), seed=1)
    scale = torch.tensor(0.01)

    def scaled(sd):
        out = {"scaled_fp8": torch.zeros(0, dtype=torch.float8_e4m3fn)}
        for k, v in sd.items():
            if k == "img_in.weight":
                out[k] = (v / scale).to(torch.float8_e4m3fn)
                out["img_in.scale_weight"] = scale
                out["img_in.scale_input"] = torch.tensor(1.0)
            else:
                out[k] = v
        return out

    loaded = load(bare(tmp_path, flux, "scaled.safetensors", scaled))
    expected = (flux.img_in.weight / scale).to(torch.float8_e4m3fn).float() * scale
    assert torch.equal(loaded.img_in.weight.detach(), expected.detach())


def test_mismatched_files_fail_with_the_reason(tmp_path):
    flux = Flux(FluxParams.tiny(), seed=1)
    missing = bare(tmp_path, flux, "missing.safetensors",
                   lambda sd: {k: v for k, v in sd.items() if k != "single_blocks.1.linear2.bias"})
    with pytest.raises(WeightFileError, match=r"missing.safetensors: does not match a flux .*1 missing key\(s\) "
                                              r"\['single_blocks.1.linear2.bias'\]"):
        load(missing)
    extra = bare(tmp_path, flux, "extra.safetensors", lambda sd: {**sd, "final_layer.extra": torch.zeros(1)})
    with pytest.raises(WeightFileError, match=r"1 unexpected key\(s\) \['final_layer.extra'\]"):
        load(extra)
    shape = bare(tmp_path, flux, "shape.safetensors",
                 lambda sd: {**sd, "final_layer.linear.bias": torch.zeros(7)})
    with pytest.raises(WeightFileError,
                       match=r"wrong shape\(s\) \['final_layer.linear.bias \(7,\) \(expected \(64,\)\)'\]"):
        load(shape)


def test_unreadable_and_foreign_files(tmp_path):
    with pytest.raises(WeightFileError, match=r"weight file 'absent.safetensors' not found in folder"):
        load(tmp_path / "absent.safetensors")
    good = save(Flux(FluxParams.tiny()), tmp_path / "good.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-1000])
    with pytest.raises(WeightFileError, match="truncated.safetensors: not a readable safetensors file .*truncated"):
        load(truncated)
    pickle = tmp_path / "model.pt"
    torch.save({"img_in.weight": torch.zeros(2)}, pickle)
    with pytest.raises(WeightFileError, match="model.pt: this is a PyTorch pickle .* never unpickles"):
        load(pickle)
    text = tmp_path / "notes.safetensors"
    text.write_text("not weights at all")
    with pytest.raises(WeightFileError, match="notes.safetensors: not a readable safetensors file"):
        load(text)
    other = tmp_path / "other.safetensors"
    save_file({"controlnet_x_embedder.weight": torch.zeros(2, 2)}, str(other))
    with pytest.raises(WeightFileError, match=r"other.safetensors: unknown model layout .*controlnet_x_embedder"):
        load(other)


def test_metadata_is_checked(tmp_path):
    unet = CompactUNet(CompactUNetConfig.tiny())
    no_config = bare(tmp_path, unet, "unet.safetensors")
    with pytest.raises(WeightFileError, match="unknown model layout"):
        load(no_config)
    tensors = {k: v.contiguous() for k, v in unet.state_dict().items()}
    save_file(tensors, str(tmp_path / "u2.safetensors"), metadata={"trajir_kind": "compact_unet"})
    with pytest.raises(WeightFileError, match="must carry its configuration as JSON in .*'trajir_config'"):
        load(tmp_path / "u2.safetensors")
    save_file(tensors, str(tmp_path / "u3.safetensors"),
              metadata={"trajir_kind": "compact_unet", "trajir_config": json.dumps({"width": 3})})
    with pytest.raises(WeightFileError, match=r"invalid trajir_config metadata .*unknown CompactUNetConfig field"):
        load(tmp_path / "u3.safetensors")
    flux = Flux(FluxParams.tiny())
    save_file({k: v.contiguous() for k, v in flux.state_dict().items()}, str(tmp_path / "f.safetensors"),
              metadata={"trajir_kind": "autoencoder"})
    with pytest.raises(WeightFileError, match="metadata says trajir_kind='autoencoder' but the keys hold a flux"):
        load(tmp_path / "f.safetensors")


def test_save_arguments(tmp_path):
    flux = Flux(FluxParams.tiny())
    with pytest.raises(ValueError, match="model must be one of trajir's models"):
        save(torch.nn.Linear(2, 2), tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match=r"metadata keys \['trajir_kind'\] are written by trajir itself"):
        save(flux, tmp_path / "x.safetensors", metadata={"trajir_kind": "x"})
    with pytest.raises(ValueError, match="metadata must map str to str"):
        save(flux, tmp_path / "x.safetensors", metadata={"steps": 3})
    with pytest.raises(ValueError, match="folder .*nowhere.* does not exist"):
        save(flux, tmp_path / "nowhere" / "x.safetensors")
    with pytest.raises(ValueError, match=r"dtype must be one of \['torch.float32', .* got torch.float8_e4m3fn"):
        load(save(flux, tmp_path / "x.safetensors"), dtype=torch.float8_e4m3fn)


def test_loaded_models_compute_like_the_saved_ones(tmp_path):
    models = tiny_models()
    unet = load(save(models["compact_unet"], tmp_path / "u.safetensors"))
    x, lq = torch.randn(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(unet(x, lq, 0.5), models["compact_unet"](x, lq, 0.5), rtol=0, atol=1e-5)
    assert unet.cfg.param == "vp"


@pytest.mark.parametrize("residue, modulus", [(128, 256), (0x4B50, 0x10000), (0x80 + 0x0200, 0x10000)],
                         ids=["0x80 first byte", "PK length bytes", "0x80 0x02 like a pickle"])
def test_a_safetensors_file_is_recognised_by_its_header_whatever_its_first_bytes(tmp_path, residue, modulus):
    """The first 8 bytes are the header length: 1 valid file in 256 starts with 0x80 (a pickle's first byte),
    1 in 65536 with "PK" (a zip archive's). Such files must load exactly like any other."""
    from corpus_shared import header_length, resave_with_header_length

    unet = CompactUNet(CompactUNetConfig.tiny(), seed=4)
    src = save(unet, tmp_path / "unet.safetensors")
    dst = tmp_path / "padded.safetensors"
    n = resave_with_header_length(src, dst, residue, modulus)
    assert n == header_length(dst) and n % modulus == residue
    head = dst.read_bytes()[:2]
    assert head[0] == 0x80 or head == b"PK"
    assert same_weights(load(dst), unet)


def test_pickles_are_still_refused_and_damaged_weights_named(tmp_path):
    for name, kwargs in (("zip.pt", {}), ("legacy.pt", {"_use_new_zipfile_serialization": False})):
        torch.save({"img_in.weight": torch.zeros(2)}, tmp_path / name, **kwargs)
        with pytest.raises(WeightFileError, match=f"{name}: this is a PyTorch pickle"):
            load(tmp_path / name)
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(WeightFileError, match=r"empty\.safetensors: the file is empty"):
        load(tmp_path / "empty.safetensors")
    with pytest.raises(WeightFileError, match="is a folder, not a model file"):
        load(tmp_path)
    unet = CompactUNet(CompactUNetConfig.tiny(), seed=4)
    with torch.no_grad():
        unet.conv_in.weight[0, 0, 0, 0] = float("nan")
    path = save(unet, tmp_path / "nan.safetensors")
    with pytest.raises(WeightFileError, match=r"nan\.safetensors: 1 tensor\(s\) hold NaN or inf values "
                                              r"\(\['conv_in.weight'\]\)"):
        load(path)
