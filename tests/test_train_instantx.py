"""python -m trajir.train on an InstantX / diffusers FLUX ControlNet (``flux.controlnet = "instantx"``): every stage
from a public-style file on a tiny FLUX, exact resume, the export, memory options, FSDP, bad files and configs,
the reward fallback and the shipped fluxir_upscaler_rl config."""
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from conftest import REPO
from test_train_flux import TINY_FLUX, fixed_batch
from trajir.compact import RECIPE_KEY, Recipe
from trajir.models import (AutoEncoder, AutoEncoderParams, Flux, FluxParams, InstantXControlNet, XLabsControlNet,
                           image_ids, instantx_params, load, pack_latents, save, text_ids, xlabs_params)
from trajir.models.layers import init_weights_
from trajir.train import build
from trajir.train.__main__ import main as train_main
from trajir.train.config import load_config
from trajir.train.distributed import DistEnv
from trajir.train.flux_restorer import FluxIRRestorer
from trajir.train.loop import build_stage, train
from trajir.train.metrics_log import read_metrics
from trajir.train.pretrain import Pretrain
from trajir.train.randomness import sample_keys
from trajir.train.rewarding import reward_from_config

UPSCALER = REPO / "trajir" / "train" / "configs" / "fluxir_upscaler_rl.toml"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny models run fastest on one thread (what run.threads = 1 gives the runs started by train())."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def instantx_config(tmp_path, *extra):
    return load_config(None, [f"run.out_dir={tmp_path}", *TINY_FLUX, "flux.controlnet=instantx", *extra])


def public_file(path, depth=2, single=0, modes=0, params=None, seed=11):
    """A ControlNet file as it comes from the Hub: diffusers keys, bf16, no trajir metadata, trained (non-zero)
    heads. Built on the tiny FLUX that ``flux.size = tiny`` gives the trainer (seed 0)."""
    base = Flux(FluxParams.tiny(), seed=0)
    if params is None:
        net = InstantXControlNet.from_flux(base, depth, single, modes, seed=seed)
    else:
        net = InstantXControlNet(params, seed=seed)
    for head in (*net.controlnet_blocks, *net.controlnet_single_blocks, net.controlnet_x_embedder):
        init_weights_(head, seed=seed)
    tmp = save(net, path.with_name("with_metadata_" + path.name))
    with safe_open(str(tmp), "pt") as f:
        save_file({k: f.get_tensor(k).to(torch.bfloat16) for k in f.keys()}, str(path))
    tmp.unlink()
    return path


def objective(cfg, steps, lr):
    """Losses of ``steps`` optimiser steps of the stage of ``cfg`` on one fixed batch and fixed keys."""
    _, stage = build_stage(cfg, DistEnv())
    if cfg["run.stage"] == "distill":
        stage.prepare(build.build_datasets(cfg)[0])
    batch, keys = fixed_batch(), sample_keys(0, 1, 0, 0, 1, 2)
    opt = torch.optim.AdamW(stage.parameters(), lr=lr)
    losses, logs = [], []
    for _ in range(steps):
        loss, values = stage.loss(batch, keys)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        logs.append(values)
    return losses, logs, stage


# --- every stage, from a public file -------------------------------------------------------------------------------

@pytest.mark.parametrize("stage, extra, steps, lr", [
    ("pretrain", [], 6, 2e-3),
    ("rl", ["rl.branches=3", "rl.eta_fixed=0.8"], 6, 2e-3),
    ("distill", ["distill.student_steps=1", "distill.start_index=1", "distill.cost_batches=1"], 8, 2e-3),
    ("rl+distill", ["rl.branches=3", "rl.eta_fixed=0.8", "distill.start_index=1", "union"], 6, 2e-3),
])
def test_each_stage_lowers_its_objective_from_a_public_file(tmp_path, stage, extra, steps, lr):
    if "union" in extra:   # a Union file in its mode 1: 1 double + 2 single blocks, 3 modes
        init = public_file(tmp_path / "union.safetensors", depth=1, single=2, modes=3)
        extra = [e for e in extra if e != "union"] + ["flux.controlnet_mode=1"]
    else:                  # the jasperai layout: double blocks only, no modes
        init = public_file(tmp_path / "upscaler.safetensors")
    cfg = instantx_config(tmp_path, f"run.stage={stage}", f"run.init={init}", *extra)
    losses, logs, stage_obj = objective(cfg, steps, lr)
    assert losses[-1] < 0.8 * losses[0], losses
    if stage.startswith("rl"):
        assert float(logs[0]["win_rate"]) > 0      # some branch beat the ODE: the regression has a target
    net = stage_obj.restorer.controlnet
    assert isinstance(net, InstantXControlNet) and net.params == load(init).params
    # only the ControlNet learns; the frozen base and autoencoder hold no grads
    assert all(p.grad is None and not p.requires_grad for p in stage_obj.restorer.base.parameters())


def test_fresh_instantx_controlnet_trains_and_its_hint_is_the_lq_latent(tmp_path):
    cfg = instantx_config(tmp_path, "flux.controlnet_depth=1", "flux.controlnet_single_depth=2")
    restorer = FluxIRRestorer.from_config(cfg, DistEnv())
    s = restorer.encode(fixed_batch())
    with torch.no_grad():
        assert torch.allclose(s["cond"]["hint"], restorer.ae.encode(fixed_batch()["lq"]), atol=1e-6)
        x, t = torch.randn(s["x0"].shape, generator=torch.Generator().manual_seed(1)), torch.tensor([0.3, 0.7])
        c = s["cond"]
        plain = restorer.base.velocity(x, t, c["txt"], c["y"], c["guidance"])
        assert torch.equal(restorer.predict(restorer.controlnet, x, t, c), plain)   # zero heads: the base alone
    # a fresh ControlNet with single blocks trains every parameter (no dead text stream to freeze)
    assert all(p.requires_grad for p in restorer.controlnet.parameters())
    losses, _, _ = objective(cfg, 6, 2e-3)
    assert losses[-1] < 0.85 * losses[0], losses


def test_predict_spreads_scaled_residuals_over_double_and_single_blocks(tmp_path):
    init = public_file(tmp_path / "union.safetensors", depth=1, single=2, modes=3)
    cfg = instantx_config(tmp_path, f"run.init={init}", "flux.controlnet_mode=2", "flux.controlnet_scale=0.5")
    restorer = FluxIRRestorer.from_config(cfg, DistEnv())
    s = restorer.encode(fixed_batch())
    x, t = torch.randn(s["x0"].shape, generator=torch.Generator().manual_seed(2)), torch.tensor([0.4, 0.9])
    c = s["cond"]
    with torch.no_grad():
        double, single = restorer.controlnet(pack_latents(x), image_ids(2, 4, 4), c["hint"], c["txt"],
                                             text_ids(2, c["txt"].shape[1]), t, c["y"], c["guidance"], mode=2)
        # the tiny base has 2 double and 2 single blocks: the one double residual serves both double blocks
        expect = restorer.base.velocity(x, t, c["txt"], c["y"], c["guidance"], [0.5 * double[0]] * 2,
                                        [0.5 * r for r in single])
        got = restorer.predict(restorer.controlnet, x, t, c)
    torch.testing.assert_close(got, expect, rtol=0, atol=1e-6)
    assert (got - restorer.base.velocity(x, t, c["txt"], c["y"], c["guidance"])).abs().max() > 1e-3


def test_export_is_the_diffusers_layout_and_round_trips_through_load(tmp_path):
    init = public_file(tmp_path / "union.safetensors", depth=1, single=2, modes=3)
    cfg = instantx_config(tmp_path, f"run.init={init}", "flux.controlnet_mode=1", "run.max_steps=2",
                          "optim.lr=1e-3", "run.export=cn.safetensors")
    assert train(cfg) == "done"
    path = tmp_path / "cn.safetensors"
    with safe_open(str(path), "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
        before = {k: f.get_tensor(k) for k in f.keys()}
    assert {"x_embedder.weight", "controlnet_x_embedder.weight", "controlnet_mode_embedder.weight",
            "transformer_blocks.0.attn.to_q.weight", "single_transformer_blocks.1.proj_mlp.weight",
            "controlnet_single_blocks.1.weight"} <= keys
    assert not any(k.startswith(("double_blocks.", "single_blocks.", "img_in.")) for k in keys)
    assert meta["trajir_kind"] == "instantx_controlnet"
    assert Recipe.from_json(meta[RECIPE_KEY]).path == [0, 1, 2, 3, 4]
    net, start = load(path), load(init)
    assert net.params == start.params and net.params.num_modes == 3
    changed = [k for k, v in net.state_dict().items() if not torch.equal(v, start.state_dict()[k])]
    assert "controlnet_blocks.0.weight" in changed and "controlnet_mode_embedder.weight" in changed
    # the export starts the next stage as a public file would
    again = save(net, tmp_path / "again.safetensors")
    with safe_open(str(again), "pt") as f:
        assert all(torch.equal(f.get_tensor(k), before[k]) for k in keys)


def test_resume_is_exact(tmp_path):
    init = public_file(tmp_path / "union.safetensors", depth=1, single=1, modes=3)
    common = [f"run.init={init}", "flux.controlnet_mode=0", "run.stage=rl+distill", "rl.branches=2",
              "distill.start_index=1", "run.max_steps=4", "run.save_every=2", "rl.refresh_every=2", "optim.lr=1e-3"]
    assert train(instantx_config(tmp_path / "one", *common)) == "done"
    (tmp_path / "two" / "checkpoints").mkdir(parents=True)
    shutil.copytree(tmp_path / "one" / "checkpoints" / "step_00000002",
                    tmp_path / "two" / "checkpoints" / "step_00000002")
    assert train(instantx_config(tmp_path / "two", *common), resume="latest") == "done"
    rows = {run: read_metrics(tmp_path / run / "metrics.jsonl") for run in ("one", "two")}
    assert [r["rl_loss"] for r in rows["two"]] == [r["rl_loss"] for r in rows["one"]][2:]
    for name in ("trajir_fluxir_controlnet.safetensors", "trajir_fluxir_controlnet_modulation.safetensors"):
        with safe_open(str(tmp_path / "one" / name), "pt") as a, safe_open(str(tmp_path / "two" / name), "pt") as b:
            assert set(a.keys()) == set(b.keys())
            assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys())


# --- memory options ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("base_dtype", ["bf16", "fp8"])
def test_low_precision_bases_and_checkpointing_keep_the_gradients(tmp_path, base_dtype):
    init = public_file(tmp_path / "union.safetensors", depth=1, single=2, modes=3)
    results = {}
    for dtype, checkpointing in (("fp32", False), ("fp32", True), (base_dtype, True)):
        cfg = instantx_config(tmp_path, f"run.init={init}", "flux.controlnet_mode=1", f"flux.base_dtype={dtype}",
                              f"flux.gradient_checkpointing={str(checkpointing).lower()}")
        restorer = FluxIRRestorer.from_config(cfg, DistEnv())
        loss, _ = Pretrain(cfg, restorer, DistEnv()).loss(fixed_batch(), sample_keys(0, 1, 0, 0, 1, 2))
        loss.backward()
        net = restorer.controlnet
        assert net.gradient_checkpointing == checkpointing and restorer.base.gradient_checkpointing == checkpointing
        results[(dtype, checkpointing)] = (float(loss.detach()), torch.cat([p.grad.flatten() for p in net.parameters()]))
    (l0, g0), (l1, g1), (l2, g2) = results.values()
    assert l0 == pytest.approx(l1, rel=1e-6)
    torch.testing.assert_close(g0, g1, rtol=1e-5, atol=1e-7)
    # bf16 / fp8 storage of the base: the same loss and gradient direction up to their rounding
    assert l2 == pytest.approx(l0, rel=0.05)
    assert float(torch.nn.functional.cosine_similarity(g0, g2, dim=0)) > 0.95


def test_fsdp_with_two_gloo_processes_equals_one_process_with_the_doubled_batch(tmp_path):
    init = public_file(tmp_path / "union.safetensors", depth=1, single=1, modes=3)
    common = [f"run.init={init}", "flux.controlnet_mode=2", "run.max_steps=2", "run.save_every=100",
              "optim.lr=1e-3", "run.stage=rl+distill", "rl.branches=2"]
    assert train(instantx_config(tmp_path / "one", *common, "run.batch_size=2")) == "done"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = [a for kv in ["flux.fsdp=true", "run.batch_size=1", f"run.out_dir={tmp_path / 'two'}"]
            for a in ("--set", kv)]
    workers = []
    for rank in range(2):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "WORLD_SIZE": "2", "RANK": str(rank), "LOCAL_RANK": str(rank)}
        command = [sys.executable, "-m", "trajir.train", str(tmp_path / "one" / "config.toml"), *args]
        workers.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True))
    for w in workers:
        _, err = w.communicate(timeout=300)
        assert w.returncode == 0, err[-3000:]
    wa = load(tmp_path / "one" / "trajir_fluxir_controlnet.safetensors").state_dict()
    wb = load(tmp_path / "two" / "trajir_fluxir_controlnet.safetensors").state_dict()
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-5
    la, lb = (read_metrics(tmp_path / run / "metrics.jsonl") for run in ("one", "two"))
    assert [r["rl_loss"] for r in la] == pytest.approx([r["rl_loss"] for r in lb], rel=1e-5)


# --- bad files and configurations ----------------------------------------------------------------------------------

def test_files_that_do_not_fit_name_the_file_and_what_was_expected(tmp_path):
    env = DistEnv()
    tiny = FluxParams.tiny()
    wide = public_file(tmp_path / "wide.safetensors",
                       params=instantx_params(FluxParams(**{**tiny.to_dict(), "hidden_size": 96, "num_heads": 3}), 1))
    deep = public_file(tmp_path / "deep.safetensors", params=instantx_params(tiny, 3, 0))
    long = public_file(tmp_path / "long.safetensors", params=instantx_params(tiny, 1, 3))
    union = public_file(tmp_path / "union.safetensors", depth=1, single=1, modes=4)
    plain = public_file(tmp_path / "plain.safetensors")
    xlabs = save(XLabsControlNet(xlabs_params(tiny, 2)), tmp_path / "xlabs.safetensors")
    cases = [
        ([f"run.init={wide}"], rf"run.init = {wide} does not fit the FLUX base: hidden_size 96 \(flux.base: 64\); "
                               r"num_heads 3 \(flux.base: 2\)"),
        ([f"run.init={deep}"], r"deep.safetensors does not fit the FLUX base: 3 double blocks \(flux.base has 2\)"),
        ([f"run.init={long}"], r"long.safetensors does not fit the FLUX base: 3 single blocks \(flux.base has 2\)"),
        ([f"run.init={xlabs}"], r"run.init = .*xlabs.safetensors holds a xlabs_controlnet, expected a "
                                r"instantx_controlnet \(for this file set flux.controlnet = xlabs\)"),
        ([f"run.init={union}"], r"union.safetensors is a Union ControlNet with 4 modes: set flux.controlnet_mode .* "
                                r"low quality 6"),
        ([f"run.init={union}", "flux.controlnet_mode=4"],
         r"flux.controlnet_mode = 4 is out of range for run.init = .*union.safetensors, a Union ControlNet with "
         r"modes 0..3"),
        ([f"run.init={plain}", "flux.controlnet_mode=0"],
         r"flux.controlnet_mode = 0, but run.init = .*plain.safetensors has no mode embedder"),
        (["flux.controlnet_modes=3"], r"the new instantx ControlNet \(flux.controlnet_modes = 3\) is a Union "
                                      r"ControlNet with 3 modes"),
    ]
    for extra, message in cases:
        with pytest.raises(ValueError, match=message):
            FluxIRRestorer.from_config(instantx_config(tmp_path, *extra), env)
    # the reverse: an InstantX file where an XLabs ControlNet is configured
    with pytest.raises(ValueError, match=r"run.init = .*plain.safetensors holds a instantx_controlnet, expected a "
                                         r"xlabs_controlnet \(for this file set flux.controlnet = instantx\)"):
        FluxIRRestorer.from_config(load_config(None, [f"run.out_dir={tmp_path}", *TINY_FLUX, f"run.init={plain}"]),
                                   env)
    with pytest.raises(ValueError, match="flux.controlnet_single_depth and flux.controlnet_modes describe an InstantX"):
        FluxIRRestorer.from_config(load_config(None, [f"run.out_dir={tmp_path}", *TINY_FLUX,
                                                      "flux.controlnet_modes=2"]), env)
    with pytest.raises(ValueError, match="flux.controlnet must be one of xlabs, instantx, got 'diffusers'"):
        instantx_config(tmp_path, "flux.controlnet=diffusers")


# --- the reward fallback and the shipped config --------------------------------------------------------------------

def test_reward_fallback_is_explicit_and_reported(tmp_path, monkeypatch, capsys):
    import trajir.rewards.learned as learned

    monkeypatch.setenv("TRAJIR_IQA_DIR", str(tmp_path))      # an empty weight folder
    cfg = instantx_config(tmp_path, "rl.reward=fluxir-unified", "rl.reward_fallback=psnr")
    reward, spec, note = reward_from_config(cfg)
    assert spec == "psnr" and reward.weights == {"psnr": 1.0}
    assert "needs lpips, musiq, clipiqa, which cannot run here" in note and str(tmp_path) in note
    assert "rl.reward_fallback = 'psnr' instead" in note
    # with the learned metrics runnable, the configured reward is the one used
    for name in ("pyiqa_installed", "importable", "has_weights"):
        monkeypatch.setattr(learned, name, lambda *a, **k: True)
    reward, spec, note = reward_from_config(cfg)
    assert spec == "fluxir-unified" and set(reward.weights) == {"lpips", "niqe", "musiq", "clipiqa"}
    assert "every metric of it can run here" in note
    monkeypatch.undo()
    # no fallback configured: the reward is kept, and fails later naming its missing file
    assert reward_from_config(instantx_config(tmp_path, "rl.reward=fluxir-unified"))[2] is None
    with pytest.raises(ValueError, match="rl.reward_fallback = 'lpips' must run without learned-metric weights"):
        reward_from_config(instantx_config(tmp_path, "rl.reward=psnr", "rl.reward_fallback=lpips"))
    # the stage says which reward it trains with, and the export's recipe keeps it
    monkeypatch.setenv("TRAJIR_IQA_DIR", str(tmp_path))
    init = public_file(tmp_path / "upscaler.safetensors")
    capsys.readouterr()
    cfg = instantx_config(tmp_path / "run", f"run.init={init}", "run.stage=rl+distill", "rl.branches=2",
                          "distill.start_index=1", "run.max_steps=1", "rl.reward=fluxir-unified",
                          "rl.reward_fallback=psnr")
    assert train(cfg) == "done"
    assert "trajir.train: reward: rl.reward = 'fluxir-unified' needs" in capsys.readouterr().out
    with safe_open(str(tmp_path / "run" / "trajir_fluxir_controlnet.safetensors"), "pt") as f:
        assert Recipe.from_json(f.metadata()[RECIPE_KEY]).note.endswith("reward psnr")


def test_shipped_upscaler_config_and_its_path_on_a_tiny_flux(tmp_path, capsys, monkeypatch):
    assert train_main(["fluxir_upscaler_rl", "--print-config"]) == 0
    out = capsys.readouterr().out
    for line in ('stage = "rl+distill"', 'kind = "fluxir_controlnet"', 'controlnet = "instantx"',
                 'init = "Flux.1-dev-Controlnet-Upscaler/diffusion_pytorch_model.safetensors"',
                 'base = "FLUX.1-dev/flux1-dev.safetensors"', 'ae = "FLUX.1-dev/ae.safetensors"', "steps = 21",
                 "shift = 0.4675", "start_index = 1", "ngs_w = 0.001", 'reward = "fluxir-unified"',
                 'reward_fallback = "psnr"', "controlnet_scale = 0.6", "guidance = 3.5", 'task = "sr"'):
        assert line in out, line
    header = UPSCALER.read_text().split("\n[run]")[0]
    for text in ("huggingface-cli download black-forest-labs/FLUX.1-dev flux1-dev.safetensors ae.safetensors "
                 "--local-dir FLUX.1-dev", "huggingface-cli download jasperai/Flux.1-dev-Controlnet-Upscaler "
                 "--local-dir Flux.1-dev-Controlnet-Upscaler", "python -m trajir.train fluxir_upscaler_rl"):
        assert text in header, text
    # the shipped config itself, run for one step with tiny stand-ins for its three files
    monkeypatch.setenv("TRAJIR_IQA_DIR", str(tmp_path))
    files = {"flux.base": save(Flux(FluxParams.tiny(), seed=0), tmp_path / "flux1-dev.safetensors"),
             "flux.ae": save(AutoEncoder(AutoEncoderParams.tiny(), seed=0), tmp_path / "ae.safetensors"),
             "run.init": public_file(tmp_path / "diffusion_pytorch_model.safetensors")}
    overrides = [f"{k}={v}" for k, v in files.items()] + [
        f"run.out_dir={tmp_path / 'run'}", "flux.base_dtype=fp32", "data.crop=32", "data.val_crop=32",
        "sampling.steps=5", "run.max_steps=1", "run.val_every=0", "rl.branches=2", "run.threads=1"]
    cfg = load_config(UPSCALER, overrides)
    assert train(cfg) == "done"
    net = load(tmp_path / "run" / "trajir_fluxir_upscaler.safetensors")
    assert net.kind == "instantx_controlnet" and net.params == load(files["run.init"]).params
    with safe_open(str(tmp_path / "run" / "trajir_fluxir_upscaler.safetensors"), "pt") as f:
        recipe = Recipe.from_json(f.metadata()[RECIPE_KEY])
    assert recipe.path == [1, 2, 3, 4, 5] and recipe.ngs_w == pytest.approx(1e-3)
    assert recipe.note.endswith("reward psnr")
    assert (tmp_path / "run" / "trajir_fluxir_upscaler_modulation.safetensors").is_file()


def test_train_benchmark_runs_the_upscaler_step_on_a_cpu(capsys):
    from trajir.bench.train import measure, upscaler

    seconds, peak, base_gib = measure("fp32", False, 32, torch.device("cpu"), 1, controlnet="instantx",
                                      stage_name="rl+distill")
    assert seconds > 0 and peak is None and base_gib > 0
    upscaler(False, 32, torch.device("cpu"), 1)
    out = capsys.readouterr().out
    assert "full size needs CUDA" in out and "ratio rl+distill/pretrain: time x" in out


def test_branch_records_train_an_instantx_controlnet_with_the_hint_encoded(tmp_path):
    from test_train_records import write_records

    write_records(tmp_path / "records", hint_size=16)   # ComfyUI keeps the hint at the image's size: resized to 32
    init = public_file(tmp_path / "upscaler.safetensors")
    cfg = instantx_config(tmp_path / "run", "run.stage=rl", f"rl.records={tmp_path / 'records'}", f"run.init={init}",
                          "run.batch_size=2", "optim.lr=3e-3", "run.max_steps=8")
    restorer, stage = build_stage(cfg, DistEnv())
    batch = stage.next_batch(None)
    hint = restorer.control_hint(batch["hint"], 4, 4)
    with torch.no_grad():
        resized = torch.nn.functional.interpolate(batch["hint"], size=(32, 32), mode="bilinear", align_corners=False)
        assert torch.allclose(hint, restorer.ae.encode(resized), atol=1e-6) and hint.shape == (2, 16, 4, 4)
    assert train(cfg) == "done"
    losses = [r["rl_loss"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")]
    assert len(losses) == 8 and sum(losses[-3:]) < sum(losses[:3])
