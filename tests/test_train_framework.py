"""python -m trajir.train: config, checkpoints, exact resume, distributed equivalence, bad input, export."""
import os
import signal
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from trajir.compact import RECIPE_KEY, Recipe
from trajir.models import load
from trajir.train import checkpoint
from trajir.train.__main__ import main as train_main
from trajir.train.config import load_config, parse_override
from trajir.train.loop import train
from trajir.train.metrics_log import read_metrics
from trajir.train.pretrain import Pretrain

TINY = ["model.preset=tiny", "run.batch_size=2", "data.crop=32", "data.val_crop=32", "run.val_every=0",
        "run.log_every=1", "model.ema_decay=0.9", "sampling.steps=4", "run.threads=1"]


def tiny_config(tmp_path, *extra):
    return load_config(None, [f"run.out_dir={tmp_path}", *TINY, *extra])


# --- config ------------------------------------------------------------------------------------------------------

def test_unknown_key_lists_the_valid_keys(tmp_path):
    with pytest.raises(ValueError, match=r"unknown config key 'optim.learning_rate'.*Valid keys: run.out_dir"):
        load_config(None, ["optim.learning_rate=1e-4"])
    path = tmp_path / "c.toml"
    path.write_text("[optim]\nlr = 1e-4\n[model]\nwidth = 3\n")
    with pytest.raises(ValueError, match="unknown config key 'model.width'"):
        load_config(path)


def test_overrides_types_and_choices(tmp_path):
    cfg = load_config(None, ["optim.lr=3e-5", "run.out_dir=runs/x y", "model.ema_decay=0", "data.cache_latents=false"])
    assert cfg["optim.lr"] == 3e-5 and cfg["run.out_dir"] == "runs/x y"
    assert cfg["model.ema_decay"] == 0.0 and isinstance(cfg["model.ema_decay"], float)
    assert cfg["data.cache_latents"] is False
    assert parse_override("rl.reward=lpips=1,niqe=0.5") == ("rl.reward", "lpips=1,niqe=0.5")
    assert load_config(None, ["data.task=sr=3, denoise=1"])["data.task"] == "sr=3, denoise=1"
    with pytest.raises(ValueError, match=r"run.max_steps must be int .* got 'ten'"):
        load_config(None, ["run.max_steps=ten"])
    with pytest.raises(ValueError, match="run.stage must be one of pretrain, rl, distill, rl\\+distill"):
        load_config(None, ["run.stage=finetune"])
    with pytest.raises(ValueError, match="run.batch_size must be >= 1"):
        load_config(None, ["run.batch_size=0"])
    # --print-config shows the resolved values and round-trips through TOML
    cfg = load_config(None, ["optim.lr=3e-5", "rl.reward=psnr"])
    toml = tmp_path / "resolved.toml"
    toml.write_text(cfg.to_toml())
    assert load_config(toml) == cfg


def test_cli_print_config_and_shipped_configs(capsys):
    assert train_main(["compact_lowlight_cpu", "--set", "optim.lr=1e-3", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "lr = 0.001" in out and 'task = "lowlight"' in out
    with pytest.raises(SystemExit, match="unknown config key 'optim.lrate'"):
        train_main(["compact_lowlight_cpu", "--set", "optim.lrate=1e-3", "--print-config"])
    with pytest.raises(SystemExit, match="config 'nope' not found"):
        train_main(["nope"])


# --- checkpoints -------------------------------------------------------------------------------------------------

def test_checkpoint_round_trip_prune_and_latest(tmp_path):
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters())
    net(torch.ones(1, 3)).sum().backward()
    opt.step()
    state = {"model": net.state_dict(), "optimizer": opt.state_dict(), "data": {"epoch": 3, "step": (1, 2)}}
    for step in (10, 20, 30, 40):
        checkpoint.save_checkpoint(tmp_path, step, state, keep_last=2)
    assert [os.path.basename(p) for p in checkpoint.list_checkpoints(tmp_path)] == ["step_00000030", "step_00000040"]
    assert checkpoint.resolve_resume(tmp_path, "latest").endswith("step_00000040")
    step, back = checkpoint.load_checkpoint(checkpoint.resolve_resume(tmp_path, "latest"))
    assert step == 40 and back["data"] == {"epoch": 3, "step": (1, 2)}
    opt2 = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters())
    opt2.load_state_dict(back["optimizer"])  # int keys and nested param groups survive
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    # a crash mid-write leaves a temp folder that is ignored
    os.makedirs(tmp_path / ".tmp_step_00000050_1")
    assert checkpoint.resolve_resume(tmp_path, "latest").endswith("step_00000040")
    (tmp_path / "step_00000040" / "tensors.safetensors").write_bytes(b"truncated")
    with pytest.raises(ValueError, match="step_00000040 is unreadable or incomplete"):
        checkpoint.load_checkpoint(tmp_path / "step_00000040")
    with pytest.raises(FileNotFoundError, match="no checkpoint under"):
        checkpoint.resolve_resume(tmp_path / "empty", "latest")


# --- exact resume ------------------------------------------------------------------------------------------------

def test_stopped_and_resumed_run_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    steps = 8  # logged every 2 steps: the interval means must survive the stop after step 3 too
    full = tiny_config(tmp_path / "full", f"run.max_steps={steps}", "run.save_every=100", "run.log_every=2")
    assert train(full) == "done"

    original = Pretrain.after_step

    def stop_after_three(self, step):  # a real SIGTERM arriving during step 3
        original(self, step)
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(Pretrain, "after_step", stop_after_three)
    part = tiny_config(tmp_path / "part", f"run.max_steps={steps}", "run.save_every=100", "run.log_every=2")
    assert train(part) == "stopped"
    assert checkpoint.resolve_resume(tmp_path / "part" / "checkpoints", "latest").endswith("step_00000003")
    monkeypatch.setattr(Pretrain, "after_step", original)
    assert train(part, resume="latest") == "done"

    a = read_metrics(tmp_path / "full" / "metrics.jsonl")
    b = read_metrics(tmp_path / "part" / "metrics.jsonl")
    assert [r["step"] for r in b] == list(range(2, steps + 1, 2))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    wa = load(tmp_path / "full" / "compact_pretrain.safetensors").state_dict()
    wb = load(tmp_path / "part" / "compact_pretrain.safetensors").state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_export_carries_the_sampling_recipe(tmp_path):
    cfg = tiny_config(tmp_path, "run.max_steps=2")
    train(cfg)
    path = tmp_path / "compact_pretrain.safetensors"
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        recipe = Recipe.from_json(f.metadata()[RECIPE_KEY])
    assert recipe.path == [0, 1, 2, 3, 4] and recipe.lq_weight == 0.0
    assert load(path).kind == "compact_unet"
    assert (tmp_path / "config.toml").read_text().count("[run]") == 1


# --- distributed -------------------------------------------------------------------------------------------------

def test_two_gloo_processes_equal_one_process_with_the_doubled_batch(tmp_path):
    common = [*TINY, "run.max_steps=3", "model.ema_decay=0", "run.save_every=100"]
    args = [a for kv in common for a in ("--set", kv)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": "29533"}
    one = subprocess.run([sys.executable, "-m", "trajir.train", "compact_lowlight_cpu", *args,
                          "--set", f"run.out_dir={tmp_path / 'one'}", "--set", "run.batch_size=4"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
                          "-m", "trajir.train", "compact_lowlight_cpu", *args,
                          "--set", f"run.out_dir={tmp_path / 'two'}", "--set", "run.batch_size=2"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    wa = load(tmp_path / "one" / "compact_pretrain.safetensors").state_dict()
    wb = load(tmp_path / "two" / "compact_pretrain.safetensors").state_dict()
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-5
    la = [r["loss"] for r in read_metrics(tmp_path / "one" / "metrics.jsonl")]
    lb = [r["loss"] for r in read_metrics(tmp_path / "two" / "metrics.jsonl")]
    assert la == pytest.approx(lb, rel=1e-5)
    # rank 1 wrote nothing: one set of checkpoints, one log
    assert len(checkpoint.list_checkpoints(tmp_path / "two" / "checkpoints")) == 1


# --- bad input ---------------------------------------------------------------------------------------------------

def test_bad_data_fails_before_training(tmp_path):
    with pytest.raises(ValueError, match="clean_dir"):
        train(tiny_config(tmp_path / "a", f"data.clean_dir={tmp_path / 'missing'}"))
    paired = tmp_path / "pairs"
    (paired / "lq").mkdir(parents=True)
    (paired / "gt").mkdir()
    from trajir.data import write_png
    write_png(paired / "lq" / "a.png", torch.rand(3, 40, 40))
    write_png(paired / "gt" / "b.png", torch.rand(3, 40, 40))
    with pytest.raises(ValueError, match="have no GT: a"):
        train(tiny_config(tmp_path / "b", f"data.paired_dir={paired}"))
    small = tmp_path / "small"
    small.mkdir()
    for name in "abc":
        write_png(small / f"{name}.png", torch.rand(3, 20, 20))
    with pytest.raises(ValueError, match=r"20x20"):
        train(tiny_config(tmp_path / "c", f"data.clean_dir={small}", "data.holdout=1"))
    assert not (tmp_path / "c" / "checkpoints").exists()


def test_out_of_memory_names_the_options(tmp_path, monkeypatch):
    def oom(self, batch, keys):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Pretrain, "loss", oom)
    with pytest.raises(SystemExit, match="run.batch_size .* flux.gradient_checkpointing=true"):
        train(tiny_config(tmp_path, "run.max_steps=2"))


def test_weighted_mix_syntax_is_shared():
    from trajir.rewards import Reward
    from trajir.train.build import parse_task_mix

    assert parse_task_mix("sr=3, denoise=1") == [("sr", 3.0), ("denoise", 1.0)]
    assert parse_task_mix("lowlight") == [("lowlight", 1.0)]
    assert Reward.from_spec("psnr=1, ssim=0.5", "rl.reward").weights == {"psnr": 1.0, "ssim": 0.5}
    assert Reward.from_spec("fluxir-unified", "rl.reward").weights == {"lpips": 1.0, "niqe": 1.0, "musiq": 1.0,
                                                                       "clipiqa": 1.0}
    with pytest.raises(ValueError, match="data.task entry 'sr:3' is not name=weight"):
        parse_task_mix("sr:3, denoise=1")
    with pytest.raises(ValueError, match="rl.reward entry 'ssim=x': 'x' is not a number"):
        Reward.from_spec("psnr=1, ssim=x", "rl.reward")


def test_every_shipped_config_resolves_and_names_real_tasks():
    from trajir.data import TASKS
    from trajir.train.__main__ import resolve_config, shipped_configs
    from trajir.train.build import parse_task_mix

    assert {"compact_lowlight_cpu.toml", "compact_underwater_cpu.toml", "fluxir_controlnet.toml"} <= set(
        shipped_configs())
    for name in shipped_configs():
        cfg = load_config(resolve_config(name))
        assert all(task in TASKS for task, _ in parse_task_mix(cfg["data.task"])), name


def test_a_diverging_run_stops_with_its_last_finite_checkpoint_and_no_export(tmp_path):
    from trajir.train.loop import TrainingDiverged

    cfg = tiny_config(tmp_path, "run.max_steps=6", "optim.lr=1e12", "optim.grad_clip=0", "run.save_every=1")
    with pytest.raises(TrainingDiverged, match=r"the loss is (nan|inf) at step 2 \(optim.lr=1000000000000.0, "
                                               r"optim.grad_clip=0.0\); the run is stopped: the last checkpoint, "
                                               r".*step_00000001, holds finite weights, and no model was exported"):
        train(cfg)
    assert [os.path.basename(p) for p in checkpoint.list_checkpoints(tmp_path / "checkpoints")] == ["step_00000001"]
    assert not list(tmp_path.glob("*.safetensors"))
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1]  # the NaN step is not logged
    with pytest.raises(SystemExit, match=r"trajir.train: the loss is (nan|inf) at step \d"):  # a non-zero exit
        train_main(["compact_lowlight_cpu", *[a for kv in TINY for a in ("--set", kv)], "--set",
                    f"run.out_dir={tmp_path / 'cli'}", "--set", "optim.lr=1e12", "--set", "run.max_steps=4"])


@pytest.mark.parametrize("setting, message", [
    ("run.seed=-1", r"run.seed must lie in \[0, 2\^63 - 1\], got -1"),
    ("optim.beta2=1.0", r"optim.beta2 must lie in \[0, 1\), got 1.0"),
    ("sampling.beta_start=0.0", r"sampling.beta_start must be > 0, got 0.0"),
    ("rl.refresh_every=0", r"rl.refresh_every must be >= 1, got 0"),
    ("data.val_crop=8", r"data.val_crop must be 0 \(whole images\) or at least 16, got 8"),
    ("optim.skip_nonfinite=-1", r"optim.skip_nonfinite must be >= 0, got -1"),
    ("rl.explore_std=nan", r"rl.explore_std must be a finite number, got nan from --set rl.explore_std=nan"),
])
def test_values_that_cannot_work_are_refused_when_the_config_loads(setting, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, [setting])
