"""The FLUX-IR side of python -m trajir.train: the ControlNet restorer on a tiny random FLUX, the LQ encoder stage,
fp8 storage, prompt embeddings, cached latents, FSDP with 2 gloo processes, the shipped configs."""
import copy
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from conftest import REPO, sample_photo
from trajir.compact import RECIPE_KEY, Recipe
from trajir.conditioning import save_conditioning
from trajir.models import (AutoEncoder, AutoEncoderParams, Flux, FluxParams, LQEncoder, WeightFileError,
                           XLabsControlNet, load, lq_alignment_loss, save)
from trajir.train import randomness
from trajir.train.__main__ import main as train_main
from trajir.train.config import load_config
from trajir.train.distributed import DistEnv
from trajir.train.flux_restorer import EXPORT_NAME, FluxIRRestorer
from trajir.train.fp8 import Float8Linear, quantize_fp8_, storage_bytes
from trajir.train.latent_cache import latent_cache_plan
from trajir.train.loop import build_stage, train
from trajir.train.lq_encoder_stage import LQEncoderPretrain, LQEncoderRestorer
from trajir.train.metrics_log import read_metrics
from trajir.train.pretrain import Pretrain

TINY_FLUX = ["model.kind=fluxir_controlnet", "flux.size=tiny", "flux.base_dtype=fp32", "run.batch_size=1",
             "data.crop=32", "data.val_crop=32", "sampling.steps=4", "run.val_every=0", "run.log_every=1",
             "model.ema_decay=0", "run.threads=1", "val.draws=1", "val.metrics=psnr"]


def flux_config(tmp_path, *extra):
    return load_config(None, [f"run.out_dir={tmp_path}", *TINY_FLUX, *extra])


def fixed_batch():
    gt = torch.cat([sample_photo("astronaut", 32), sample_photo("coffee", 32)])
    noise = torch.randn(gt.shape, generator=torch.Generator().manual_seed(0))
    return {"lq": (0.3 * gt + 0.05 * noise).clamp(0, 1), "gt": gt}


def losses_on_fixed_batch(stage, steps, lr):
    batch, keys = fixed_batch(), randomness.sample_keys(0, 1, 0, 0, 1, 2)
    opt = torch.optim.AdamW(stage.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss, _ = stage.loss(batch, keys)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


# --- the ControlNet restorer ---------------------------------------------------------------------------------------

def test_pretrain_steps_lower_the_loss_on_a_fixed_batch(tmp_path):
    restorer = FluxIRRestorer.from_config(flux_config(tmp_path), DistEnv())
    losses = losses_on_fixed_batch(Pretrain(flux_config(tmp_path), restorer, DistEnv()), 6, 2e-3)
    assert losses[-1] < 0.85 * losses[0], losses
    # only the ControlNet learns: the base and the autoencoder hold no grads
    assert all(p.grad is None and not p.requires_grad for p in restorer.base.parameters())
    assert all(not p.requires_grad for p in restorer.ae.parameters())


def test_fresh_controlnet_leaves_the_base_unchanged_and_residuals_are_scaled(tmp_path):
    restorer = FluxIRRestorer.from_config(flux_config(tmp_path, "flux.controlnet_scale=0.5"), DistEnv())
    s = restorer.encode(fixed_batch())
    x, t = torch.randn(s["x0"].shape, generator=torch.Generator().manual_seed(1)), torch.tensor([0.3, 0.7])
    c = s["cond"]
    with torch.no_grad():
        plain = restorer.base.velocity(x, t, c["txt"], c["y"], c["guidance"])
        assert torch.equal(restorer.predict(restorer.controlnet, x, t, c), plain)  # zero-initialised heads
        torch.nn.init.normal_(restorer.controlnet.controlnet_blocks[0].weight, std=0.5)
        res = restorer.controlnet(*_controlnet_args(x, c, t))
        expect = restorer.base.velocity(x, t, c["txt"], c["y"], c["guidance"], [0.5 * r for r in res])
        assert torch.allclose(restorer.predict(restorer.controlnet, x, t, c), expect, atol=1e-6)
        assert not torch.allclose(expect, plain, atol=1e-3)
    # the states: GT and LQ latents of the frozen autoencoder, the hint is the LQ image itself
    batch = fixed_batch()
    assert torch.allclose(s["x0"], restorer.ae.encode(batch["gt"]), atol=1e-6)
    assert torch.allclose(s["lq"], restorer.ae.encode(batch["lq"]), atol=1e-6)
    assert torch.equal(c["hint"], batch["lq"]) and c["guidance"].tolist() == [4.0, 4.0]


def _controlnet_args(x, c, t):
    from trajir.models import image_ids, pack_latents, text_ids

    b, _, h, w = x.shape
    return (pack_latents(x), image_ids(b, h, w), c["hint"], c["txt"], text_ids(b, c["txt"].shape[1]), t, c["y"],
            c["guidance"])


def test_export_is_an_xlabs_controlnet_and_validation_samples_through_the_restorer(tmp_path):
    cfg = flux_config(tmp_path, "run.max_steps=2", "run.val_every=2", "optim.lr=1e-3")
    assert train(cfg) == "done"
    path = tmp_path / EXPORT_NAME
    net = load(path)
    assert net.kind == "xlabs_controlnet" and net.params.depth == 2 and net.params.depth_single_blocks == 0
    fresh = XLabsControlNet.from_flux(Flux(FluxParams.tiny()), 2)
    assert set(net.state_dict()) == set(fresh.state_dict())
    assert {"controlnet_blocks.1.weight", "pos_embed_input.weight", "input_hint_block.14.weight",
            "double_blocks.1.img_attn.norm.key_norm.scale"} <= set(net.state_dict())
    assert not any(k.startswith(("single_blocks.", "final_layer.")) for k in net.state_dict())
    assert float(net.controlnet_blocks[0].weight.detach().abs().max()) > 0  # trained away from the zero init
    with safe_open(str(path), "pt") as f:
        recipe = Recipe.from_json(f.metadata()[RECIPE_KEY])
    assert recipe.path == [0, 1, 2, 3, 4] and recipe.lq_weight == 0.0
    rows = read_metrics(tmp_path / "metrics.jsonl")
    val = [r for r in rows if "val/psnr" in r]
    assert len(val) == 1 and 0 < val[0]["val/psnr"] < 100
    assert (tmp_path / "val" / "step_00000002.png").is_file()


def test_rl_distill_runs_two_steps_on_tiny_flux(tmp_path):
    cfg = flux_config(tmp_path, "run.stage=rl+distill", "run.max_steps=2", "distill.start_index=1",
                      "rl.branches=2")
    assert train(cfg) == "done"
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2] and all("rl_loss" in r and "win_rate" in r for r in rows)
    with safe_open(str(tmp_path / EXPORT_NAME), "pt") as f:
        recipe = Recipe.from_json(f.metadata()[RECIPE_KEY])
    assert recipe.path == [1, 2, 3, 4] and recipe.ngs_w == pytest.approx(1e-3) and recipe.lq_weight is None
    assert (tmp_path / "trajir_fluxir_controlnet_modulation.safetensors").is_file()


# --- fp8 storage ---------------------------------------------------------------------------------------------------

def test_fp8_weights_round_within_the_e4m3_bound():
    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(96, 40)
    with torch.no_grad():  # rows of very different magnitude: each row gets its own scale
        lin.weight.copy_(torch.randn(40, 96, generator=g) * torch.logspace(-4, 1, 40)[:, None])
        lin.weight[7] = 0.0
    q = Float8Linear(lin)
    w, deq = lin.weight.detach(), q.dequantized(torch.float32)
    scale = w.abs().amax(1, keepdim=True) / 448
    # half an ulp of a 3-bit mantissa (2^-4 relative), or half the smallest subnormal step (2^-10 of the scale)
    bound = w.abs() * 2.0 ** -4 + torch.where(scale > 0, scale, torch.ones_like(scale)) * 2.0 ** -10
    assert bool(((deq - w).abs() <= bound * (1 + 1e-6)).all())
    assert torch.equal(deq[7], torch.zeros(96))
    assert torch.allclose(deq.abs().amax(1), w.abs().amax(1), rtol=1e-6)  # each row's peak is exact
    assert q.weight.dtype == torch.float8_e4m3fn and q.weight.element_size() == 1
    # forward in bf16 against float32 arithmetic on the dequantised weight: bf16 roundings only (2^-8 each)
    x = torch.randn(5, 96, generator=g).bfloat16()
    bias = lin.bias.detach().bfloat16().float()
    exact = F.linear(x.float(), deq, bias)
    magnitude = x.float().abs() @ deq.abs().T + bias.abs()
    assert bool(((q(x).float() - exact).abs() <= 2.0 ** -6 * magnitude).all())
    # the input gradient (the weight is re-dequantised in backward, autograd keeps only the fp8 copy)
    x = x.float().requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append((t.dtype, tuple(t.shape))) or t, lambda t: t):
        out = q(x.bfloat16())
    assert (torch.float8_e4m3fn, (40, 96)) in saved and (torch.bfloat16, (40, 96)) not in saved
    out.float().square().sum().backward()
    ref = x.detach().clone().requires_grad_()
    F.linear(ref.bfloat16(), q.dequantized(torch.bfloat16), q.bias).float().square().sum().backward()
    assert torch.equal(x.grad, ref.grad)


def test_fp8_base_matches_bf16_within_tolerance(tmp_path):
    base = Flux(FluxParams.tiny(), seed=3)
    x = torch.randn(2, 16, 4, 4, generator=torch.Generator().manual_seed(0))
    txt = torch.randn(2, 3, 64, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.3, 0.8])
    with torch.no_grad():
        b16 = copy.deepcopy(base).to(torch.bfloat16)
        b8 = quantize_fp8_(copy.deepcopy(base))
        v16, v8 = b16.velocity(x, t, txt, None, 4.0).float(), b8.velocity(x, t, txt, None, 4.0).float()
    # measured 2.6 %; stated tolerance: 5 % relative L2 error of the velocity against the bf16 base
    assert float((v8 - v16).norm() / v16.norm()) < 0.05
    assert storage_bytes(b8) < 0.56 * storage_bytes(b16)
    assert sum(isinstance(m, Float8Linear) for m in b8.modules()) > 20 and b8.img_in.weight.dtype == torch.bfloat16
    # through the restorer: fp8 storage, gradients still reach the ControlNet
    restorer = FluxIRRestorer.from_config(flux_config(tmp_path, "flux.base_dtype=fp8"), DistEnv())
    loss, _ = Pretrain(flux_config(tmp_path), restorer, DistEnv()).loss(fixed_batch(),
                                                                          randomness.sample_keys(0, 1, 0, 0, 1, 2))
    loss.backward()
    assert float(restorer.controlnet.controlnet_blocks[0].weight.grad.abs().sum()) > 0


# --- prompt embeddings and cached latents ------------------------------------------------------------------------

def test_prompt_embedding_file_is_used(tmp_path):
    g = torch.Generator().manual_seed(0)
    files = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.safetensors"
        save_conditioning(path, torch.randn(3, 64, generator=g), torch.randn(32, generator=g), prompt=name)
        files.append(path)
    batch = fixed_batch()
    x, t = torch.randn(2, 16, 4, 4, generator=g), torch.tensor([0.5, 0.5])
    preds = []
    for file in (*files, files[0], ""):
        restorer = FluxIRRestorer.from_config(flux_config(tmp_path, f"data.prompt_embeddings={file}"), DistEnv())
        s = restorer.encode(batch)
        with torch.no_grad():
            preds.append(restorer.predict(restorer.controlnet, x, t, s["cond"]))
        if file:
            assert s["cond"]["txt"].shape == (2, 3, 64)
    assert torch.equal(preds[0], preds[2])
    assert not torch.allclose(preds[0], preds[1], atol=1e-4) and not torch.allclose(preds[0], preds[3], atol=1e-4)
    wide = tmp_path / "t5xxl.safetensors"
    save_conditioning(wide, torch.zeros(2, 4096), torch.zeros(768))
    with pytest.raises(ValueError, match=r"context width 4096 and pooled width 768 do not fit .* takes 64 \(T5\)"):
        FluxIRRestorer.from_config(flux_config(tmp_path, f"data.prompt_embeddings={wide}"), DistEnv())


def test_cached_latents_equal_fresh_encodes(tmp_path):
    assert latent_cache_plan(flux_config(tmp_path)) == (False, False)                    # random crops
    assert latent_cache_plan(flux_config(tmp_path, "data.crop=0")) == (True, False)      # synthetic LQ redrawn
    assert latent_cache_plan(flux_config(tmp_path, "data.crop=0", f"data.paired_dir={tmp_path}")) == (True, True)
    assert latent_cache_plan(flux_config(tmp_path, "data.crop=0", "data.cache_latents=false")) == (False, False)
    restorer = FluxIRRestorer.from_config(flux_config(tmp_path, "data.crop=0", f"data.paired_dir={tmp_path}"),
                                          DistEnv())
    batch = fixed_batch()
    first = restorer.encode(batch)
    again = restorer.encode({"lq": batch["lq"].flip(0), "gt": batch["gt"].flip(0)})  # same images, other order
    assert restorer.gt_cache.hits == 2 and restorer.gt_cache.misses == 2 and restorer.lq_cache.hits == 2
    assert torch.equal(again["x0"], first["x0"].flip(0)) and torch.equal(again["lq"], first["lq"].flip(0))
    with torch.no_grad():
        assert torch.allclose(first["x0"], restorer.ae.encode(batch["gt"]), atol=1e-6)
        assert torch.allclose(first["lq"], restorer.ae.encode(batch["lq"]), atol=1e-6)
        # a flipped image is other pixels: its own entry, equal to its own fresh encode
        flipped = {"lq": batch["lq"].flip(-1), "gt": batch["gt"].flip(-1)}
        assert torch.allclose(restorer.encode(flipped)["x0"], restorer.ae.encode(flipped["gt"]), atol=1e-6)
        assert len(restorer.gt_cache) == 4
        # one image twice in a batch is encoded once
        twice = {"lq": batch["lq"][:1].repeat(2, 1, 1, 1) * 0.5, "gt": batch["gt"][:1].repeat(2, 1, 1, 1) * 0.5}
        restorer.encode(twice)
        assert len(restorer.gt_cache) == 5 and restorer.gt_cache.misses == 5


# --- the LQ encoder ------------------------------------------------------------------------------------------------

def lq_config(tmp_path, *extra):
    return load_config(None, [f"run.out_dir={tmp_path}", "model.kind=lq_encoder", "flux.size=tiny",
                              "run.batch_size=2", "data.crop=32", "data.val_crop=32", "run.val_every=0",
                              "model.ema_decay=0", "run.threads=1", "val.draws=1", *extra])


def test_lq_encoder_stage_lowers_its_loss_and_validates_against_an_independent_computation(tmp_path):
    cfg = lq_config(tmp_path)
    restorer = LQEncoderRestorer.from_config(cfg, DistEnv())
    stage = LQEncoderPretrain(cfg, restorer, DistEnv())
    batch = fixed_batch()
    with torch.no_grad():  # E_LQ starts as E: the first loss is the AE's own LQ-to-GT latent distance
        start = lq_alignment_loss(restorer.ae.encode(batch["lq"]), restorer.ae.encode(batch["gt"]))
    losses = losses_on_fixed_batch(stage, 5, 1e-3)
    assert losses[0] == pytest.approx(float(start), rel=1e-5)
    assert losses[-1] < 0.5 * losses[0], losses
    ae = restorer.ae
    from trajir.data import SyntheticPairs, sample_images

    held_out = SyntheticPairs(sample_images()[:2], "lowlight", seed=1, crop=32, hflip=False)
    values, _ = stage.evaluate(LQEncoder.from_autoencoder(ae), [held_out])
    pairs = [held_out.sample(i, 0) for i in range(2)]
    lq, gt = torch.stack([p["lq"] for p in pairs]), torch.stack([p["gt"] for p in pairs])
    with torch.no_grad():
        z, target = ae.encode(lq), ae.encode(gt)
        mse = float(((z - target) ** 2).mean())
        psnr = float((10 * torch.log10(1 / ((ae.decode(z) - gt) ** 2).flatten(1).mean(1))).mean())
    assert values["val/latent_mse"] == pytest.approx(mse, rel=1e-4)
    assert values["val/psnr"] == pytest.approx(psnr, abs=1e-3)


def test_lq_encoder_run_exports_the_encoder_file(tmp_path):
    assert train(lq_config(tmp_path, "run.max_steps=1", "run.val_every=1")) == "done"
    net = load(tmp_path / "trajir_lq_encoder.safetensors")
    assert net.kind == "lq_encoder" and net.params == AutoEncoderParams.tiny()
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert any("val/latent_mse" in r and "val/psnr" in r for r in rows)
    # the export is what the ControlNet run loads as flux.lq_encoder
    restorer = FluxIRRestorer.from_config(
        flux_config(tmp_path, f"flux.lq_encoder={tmp_path / 'trajir_lq_encoder.safetensors'}"), DistEnv())
    batch = fixed_batch()
    with torch.no_grad():
        assert torch.allclose(restorer.encode(batch)["lq"], net(batch["lq"]), atol=1e-6)


# --- bad configurations --------------------------------------------------------------------------------------------

def test_bad_flux_configs_name_the_key(tmp_path):
    env = DistEnv()
    cases = [
        (["flux.fsdp=true"], "this run has 1 process"),
        (["flux.fsdp=true", "flux.base_dtype=fp8"], "fp8 and flux.fsdp = true do not combine"),
        (["flux.size=dev"], "flux.base is empty"),
        (["model.param=vp"], "model.param must be rf, got vp"),
        (["data.crop=40"], "data.crop must be a multiple of 16 .* got 40"),
    ]
    for extra, message in cases:
        with pytest.raises(ValueError, match=message):
            FluxIRRestorer.from_config(flux_config(tmp_path, *extra), env)
    with pytest.raises(WeightFileError, match=f"'flux1-dev.safetensors' not found in folder '{tmp_path}'"):
        FluxIRRestorer.from_config(flux_config(tmp_path, f"flux.base={tmp_path / 'flux1-dev.safetensors'}"), env)
    ae_file = save(AutoEncoder(AutoEncoderParams.tiny()), tmp_path / "ae.safetensors")
    with pytest.raises(ValueError, match=r"run.init = .*ae.safetensors holds a autoencoder, expected a xlabs_contr"):
        FluxIRRestorer.from_config(flux_config(tmp_path, f"run.init={ae_file}"), env)
    with pytest.raises(ValueError, match="trains with run.stage pretrain only, got 'rl'"):
        build_stage(lq_config(tmp_path, "run.stage=rl"), env)


# --- FSDP and the shipped configs ----------------------------------------------------------------------------------

def test_fsdp_with_two_gloo_processes_equals_one_process_with_the_doubled_batch(tmp_path):
    # rl+distill: its branches make every rank call the sharded base the same number of times
    common = [*TINY_FLUX, "run.max_steps=2", "run.save_every=100", "run.val_every=2", "optim.lr=1e-3",
              "run.stage=rl+distill", "rl.branches=2"]
    assert train(flux_config(tmp_path / "one", *common, "run.batch_size=2")) == "done"
    with socket.socket() as sock:  # a free port: other test runs may hold a fixed one
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = [a for kv in ["flux.fsdp=true", "run.batch_size=1", f"run.out_dir={tmp_path / 'two'}"]
            for a in ("--set", kv)]
    workers = []
    for rank in range(2):  # what torchrun --nproc_per_node=2 starts, without its launcher process
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank)}
        command = [sys.executable, "-m", "trajir.train", str(tmp_path / "one" / "config.toml"), *args]
        workers.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True))
    for w in workers:
        _, err = w.communicate(timeout=300)
        assert w.returncode == 0, err[-3000:]
    wa = load(tmp_path / "one" / EXPORT_NAME).state_dict()
    wb = load(tmp_path / "two" / EXPORT_NAME).state_dict()
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-5
    la, lb = (read_metrics(tmp_path / run / "metrics.jsonl") for run in ("one", "two"))
    assert [r["rl_loss"] for r in la if "rl_loss" in r] == pytest.approx(
        [r["rl_loss"] for r in lb if "rl_loss" in r], rel=1e-5)
    # validation ran its sampling on both ranks (the sharded base needs every rank) and scored once
    assert [r["val/psnr"] for r in la if "val/psnr" in r] == pytest.approx(
        [r["val/psnr"] for r in lb if "val/psnr" in r], abs=1e-4)


def test_shipped_flux_configs_load(capsys):
    assert train_main(["fluxir_controlnet", "--print-config"]) == 0
    out = capsys.readouterr().out
    for line in ('kind = "fluxir_controlnet"', "lr = 4e-05", "warmup_steps = 10", "weight_decay = 0.01",
                 "grad_clip = 1.0", 'base_dtype = "bf16"', "steps = 21", "shift = 0.4675", "start_index = 1"):
        assert line in out, line
    assert train_main(["fluxir_lq_encoder", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert 'kind = "lq_encoder"' in out and "lr = 2e-05" in out
    # the second stage named in the file's comments
    cfg = load_config(REPO / "trajir" / "train" / "configs" / "fluxir_controlnet.toml",
                      ["run.stage=rl+distill", "run.init=runs/fluxir_controlnet/" + EXPORT_NAME])
    assert cfg["run.stage"] == "rl+distill" and cfg["model.kind"] == "fluxir_controlnet"
