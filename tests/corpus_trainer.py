"""Corpus part ``trainer``: ``python -m trajir.train`` with bad config values, diverging runs, bad initial weights
and resumes from changed configs and damaged checkpoints. Every run is a tiny one (``corpus_shared.TINY_TOML``:
a 0.2 M U-Net, 32 px crops, 4 steps); a clear error is a non-zero exit whose message names the key or folder."""
import json
import math

import torch
from safetensors.torch import load_file

from corpus import Case, run_cli
from trajir.train.__main__ import main as train_main
from trajir.train.metrics_log import read_metrics


def train(ctx, *sets, args=(), out=None, config=None):
    out = ctx.tmp / "run" if out is None else out
    argv = [config or ctx.shared.tiny_toml, "--set", f"run.out_dir={out}"]
    for kv in sets:
        argv += ["--set", kv]
    return run_cli(train_main, *argv, *args)


def bad_setting(*sets):
    """A run with ``sets``; it must stop before training (``no_training``)."""
    return lambda ctx: train(ctx, *sets)


def no_training(ctx):
    run = ctx.tmp / "run"
    assert not (run / "checkpoints").exists(), "training started (checkpoints were written)"
    exports = list(run.glob("*.safetensors")) if run.exists() else []
    assert not exports, f"a model was exported: {[p.name for p in exports]}"


def exit_ok(result):
    assert result.code == 0, f"exit {result.code}: {result.text[-400:]}"


# --- divergence ----------------------------------------------------------------------------------------------------

def _checkpoints(run):
    root = run / "checkpoints"
    return sorted(p for p in root.iterdir() if p.name.startswith("step_")) if root.exists() else []


def finite_checkpoints_and_no_export(ctx):
    run = ctx.tmp / "run"
    assert not list(run.glob("*.safetensors")), "a model was exported from a diverged run"
    for folder in _checkpoints(run):
        tensors = load_file(folder / "tensors.safetensors")
        bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        assert not bad, f"checkpoint {folder.name} holds non-finite tensors {bad[:3]}"


def _nan_init(ctx):
    from trajir.models import load, save

    net = load(ctx.shared.tiny_run() / "compact_pretrain.safetensors")
    with torch.no_grad():
        next(net.parameters()).view(-1)[0] = float("nan")
    path = ctx.tmp / "nan_init.safetensors"
    save(net, path)
    return train(ctx, f"run.init={path}")


def _inf_weight_at_step_2(ctx):
    """A fault: the optimiser step of step 2 leaves an inf in one weight while the loss is still finite."""
    original = torch.optim.AdamW.step
    calls = [0]

    def step(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls[0] += 1
        if calls[0] == 2:
            with torch.no_grad():
                self.param_groups[0]["params"][0].view(-1)[0] = math.inf
        return out

    ctx.monkeypatch.setattr(torch.optim.AdamW, "step", step)
    return train(ctx, "run.save_every=1")


def _check_skipped(result, ctx):
    exit_ok(result)
    rows = read_metrics(ctx.tmp / "run" / "metrics.jsonl")
    assert sum(r.get("skipped_steps", 0) for r in rows) == 1, f"logged rows {rows}"
    assert all(math.isfinite(r["loss"]) for r in rows if "loss" in r), f"a NaN loss was logged: {rows}"
    assert (ctx.tmp / "run" / "compact_pretrain.safetensors").is_file()


def _nan_loss_once(limit):
    """A fault: the loss of step 3 is NaN (an fp16 overflow, a bad batch), the others are finite."""
    def run(ctx):
        from trajir.train.pretrain import Pretrain

        original = Pretrain.loss
        calls = [0]

        def loss(self, batch, keys):
            value, values = original(self, batch, keys)
            calls[0] += 1
            if calls[0] == 3:
                value = value * math.nan
                values = {k: v * math.nan for k, v in values.items()}
            return value, values

        ctx.monkeypatch.setattr(Pretrain, "loss", loss)
        return train(ctx, "run.save_every=1", *([f"optim.skip_nonfinite={limit}"] if limit else []))
    return run


def _check_val_niqe(result, ctx):
    exit_ok(result)
    rows = [r for r in read_metrics(ctx.tmp / "run" / "metrics.jsonl") if "val/niqe" in r]
    assert rows and all(math.isfinite(r["val/niqe"]) for r in rows), f"validation rows {rows}"


# --- resume --------------------------------------------------------------------------------------------------------

def resume(*sets, args=(), prepare=None):
    """Resume a private copy of the tiny run (checkpoints at steps 2 and 4) with ``sets``."""
    def run(ctx):
        ctx.run = ctx.shared.copy_run(ctx.tmp)
        if prepare is not None:
            prepare(ctx)
        return train(ctx, *sets, args=("--resume", "latest", *args), out=ctx.run)
    return run


def config_unchanged(ctx):
    text = (ctx.run / "config.toml").read_text()
    assert "lr = 0.0002" in text, "config.toml was rewritten with the refused value"


def _check_new_lr_used(result, ctx):
    exit_ok(result)
    rows = [r for r in read_metrics(ctx.run / "metrics.jsonl") if r["step"] > 4]
    assert rows and all(r["lr"] == 1e-3 for r in rows), f"lr after the resume: {[r['lr'] for r in rows]}"
    assert "lr = 0.001" in (ctx.run / "config.toml").read_text()


def _check_longer(result, ctx):
    exit_ok(result)
    assert read_metrics(ctx.run / "metrics.jsonl")[-1]["step"] == 6


def _drop_entry(name):
    def prepare(ctx):
        state = ctx.run / "checkpoints" / "step_00000004" / "state.json"
        meta = json.loads(state.read_text())
        meta["structure"]["__dict__"] = [kv for kv in meta["structure"]["__dict__"] if kv[0] != name]
        state.write_text(json.dumps(meta))
    return prepare


def _corrupt(*steps, how="truncate"):
    def prepare(ctx):
        for step in steps:
            folder = ctx.run / "checkpoints" / f"step_{step:08d}"
            if how == "truncate":
                data = (folder / "tensors.safetensors").read_bytes()
                (folder / "tensors.safetensors").write_bytes(data[: len(data) // 3])
            else:
                (folder / "state.json").write_text("{not json")
    return prepare


def _check_fell_back(result, ctx):
    exit_ok(result)
    assert "step_00000004" in result.text and "step_00000002" in result.text, \
        f"no warning naming the corrupt and the used checkpoint: {result.text[-400:]}"
    steps = [r["step"] for r in read_metrics(ctx.run / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4], f"logged steps {steps}: expected the resume from step 2 to redo 3 and 4"


def _leftover(ctx):
    ctx.leftover = ctx.run / "checkpoints" / ".tmp_step_00000006_4242"
    ctx.leftover.mkdir()
    (ctx.leftover / "tensors.safetensors").write_bytes(b"\0" * 1000)


def _check_leftover_removed(result, ctx):
    exit_ok(result)
    assert not ctx.leftover.exists(), "the .tmp_step_ leftover of a killed write is still there"


def _explicit_not_a_checkpoint(ctx):
    (ctx.tmp / "somewhere").mkdir()
    return train(ctx, args=("--resume", ctx.tmp / "somewhere"))


def _out_dir_is_a_file(ctx):
    (ctx.tmp / "occupied").write_text("a file")
    return train(ctx, out=ctx.tmp / "occupied")


def _bad_toml(ctx):
    path = ctx.tmp / "bad.toml"
    path.write_text("[run]\nmax_steps = = 3\n")
    return run_cli(train_main, path, "--set", f"run.out_dir={ctx.tmp / 'run'}")


def _missing_clean_dir(ctx):
    return train(ctx, f"data.clean_dir={ctx.tmp / 'no_photos'}")


CASES = [
    # values that cannot work, refused before training
    Case("optim.lr=nan", bad_setting("optim.lr=nan"), r"optim.lr must be a finite number, got nan",
         kinds=(SystemExit,), after=no_training),
    Case("optim.lr=inf", bad_setting("optim.lr=inf"), r"optim.lr must be a finite number, got inf",
         kinds=(SystemExit,), after=no_training),
    Case("optim.lr=-1", bad_setting("optim.lr=-1.0"), r"optim.lr must be > 0, got -1", kinds=(SystemExit,),
         after=no_training),
    Case("optim.lr=0", bad_setting("optim.lr=0.0"), r"optim.lr must be > 0, got 0", kinds=(SystemExit,),
         after=no_training),
    Case("optim.beta1=1.5", bad_setting("optim.beta1=1.5"), r"optim.beta1 must lie in \[0, 1\), got 1.5",
         kinds=(SystemExit,), after=no_training),
    Case("optim.eps=-1", bad_setting("optim.eps=-1.0"), r"optim.eps must be > 0, got -1", kinds=(SystemExit,),
         after=no_training),
    Case("optim.grad_clip=-1", bad_setting("optim.grad_clip=-1.0"), r"optim.grad_clip must be >= 0, got -1",
         kinds=(SystemExit,), after=no_training),
    Case("optim.weight_decay=-0.1", bad_setting("optim.weight_decay=-0.1"),
         r"optim.weight_decay must be >= 0, got -0.1", kinds=(SystemExit,), after=no_training),
    Case("model.ema_decay=1.5", bad_setting("model.ema_decay=1.5"), r"model.ema_decay must lie in \[0, 1\), got 1.5",
         kinds=(SystemExit,), after=no_training),
    Case("run.seed=2^70", bad_setting(f"run.seed={2**70}"), r"run.seed must lie in \[0, 2\^63 - 1\]",
         kinds=(SystemExit,), after=no_training),
    Case("data.crop=-8", bad_setting("data.crop=-8"), r"data.crop must be 0 \(whole images\) or at least 16, got -8",
         kinds=(SystemExit,), after=no_training),
    Case("run.val_every=-1", bad_setting("run.val_every=-1"), r"run.val_every must be >= 0, got -1",
         kinds=(SystemExit,), after=no_training),
    Case("distill.lq_weight=nan", bad_setting("run.stage=distill", "distill.lq_weight=nan"),
         r"distill.lq_weight must be a finite number, got nan", kinds=(SystemExit,), after=no_training),
    Case("distill.lq_weight=2", bad_setting("run.stage=distill", "distill.lq_weight=2.0"),
         r"distill.lq_weight must be < 0 \(the schedule's value\) or lie in \[0, 1\], got 2",
         kinds=(SystemExit,), after=no_training),
    Case("distill.rho=1.5", bad_setting("run.stage=distill", "distill.rho=1.5"),
         r"distill.rho must lie in \[0, 1\], got 1.5", kinds=(SystemExit,), after=no_training),
    Case("rl.eta_max=-1", bad_setting("run.stage=rl", "rl.eta_max=-1.0"), r"rl.eta_max must be > 0, got -1",
         kinds=(SystemExit,), after=no_training),
    Case("sampling.shift=nan", bad_setting("sampling.shift=nan"), r"sampling.shift must be a finite number",
         kinds=(SystemExit,), after=no_training),
    Case("val.metrics=bogus", bad_setting("val.metrics=psnr,bogus", "run.val_every=2"),
         r"val.metrics: unknown metric 'bogus'", kinds=(SystemExit,), after=no_training),
    Case("val.metrics=niqe on 32 px crops", bad_setting("val.metrics=psnr,niqe", "run.val_every=2"),
         r"val.metrics: niqe needs images of at least 96 px, but data.val_crop is 32", kinds=(SystemExit,),
         after=no_training),
    Case("val.metrics=niqe on 96 px crops", bad_setting("val.metrics=psnr,niqe", "run.val_every=2", "data.val_crop=96",
                                                        "val.draws=1"), check=_check_val_niqe),
    Case("data.task=sky", bad_setting("data.task=sky"), r"data.task.*'sky'", kinds=(SystemExit,),
         after=no_training),
    Case("data.holdout=100", bad_setting("data.holdout=100"), r"data.holdout", kinds=(SystemExit,),
         after=no_training),
    Case("run.max_steps=0", bad_setting("run.max_steps=0"), r"run.max_steps must be >= 1", kinds=(SystemExit,),
         after=no_training),
    Case("unknown key", bad_setting("optim.learning_rate=1e-3"), r"unknown config key 'optim.learning_rate'",
         kinds=(SystemExit,), after=no_training),
    Case("--set without =", bad_setting("optim.lr"), r"--set expects key=value", kinds=(SystemExit,),
         after=no_training),
    Case("invalid TOML", _bad_toml, r"bad\.toml is not valid TOML", kinds=(SystemExit,), after=no_training),
    Case("data.clean_dir missing", _missing_clean_dir, r"data.clean_dir '.*no_photos' does not exist",
         kinds=(SystemExit,), after=no_training),
    Case("run.out_dir is a file", _out_dir_is_a_file, r"run.out_dir '.*occupied' is a file, not a folder",
         kinds=(SystemExit,)),
    # divergence and bad weights
    Case("optim.lr=1e12 without clipping", bad_setting("optim.lr=1e12", "optim.grad_clip=0.0", "run.save_every=1"),
         r"loss is (nan|inf) at step \d.*optim.lr", kinds=(SystemExit,), after=finite_checkpoints_and_no_export),
    Case("optim.lr=1e12 with clipping", bad_setting("optim.lr=1e12", "run.save_every=1"),
         r"(loss|weights?) .*(nan|inf|NaN).* step \d", kinds=(SystemExit,), after=finite_checkpoints_and_no_export),
    Case("optim.lr=1e37: the weights blow up", bad_setting("optim.lr=1e37", "optim.grad_clip=0.0", "run.save_every=1"),
         r"(NaN or inf in the weights|the loss is (nan|inf)).* at step \d", kinds=(SystemExit,),
         after=finite_checkpoints_and_no_export),
    Case("an inf weight after step 2 (fault)", _inf_weight_at_step_2,
         r"NaN or inf in the weights .* after the optimiser step at step 2", kinds=(SystemExit,),
         after=finite_checkpoints_and_no_export),
    Case("a NaN loss at step 3 (fault)", _nan_loss_once(0), r"the loss is nan at step 3", kinds=(SystemExit,),
         after=finite_checkpoints_and_no_export),
    Case("a NaN loss at step 3, optim.skip_nonfinite=1", _nan_loss_once(1), check=_check_skipped),
    Case("run.init with a NaN weight", _nan_init, r"nan_init\.safetensors.* NaN or inf", kinds=(SystemExit,),
         after=no_training),
    Case("run.init missing", bad_setting("run.init=/nonexistent/model.safetensors"),
         r"model\.safetensors'? not found", kinds=(SystemExit,), after=no_training),
    # resume
    Case("--resume latest without checkpoints", lambda ctx: train(ctx, args=("--resume", "latest")),
         r"--resume latest: no checkpoint under", kinds=(SystemExit,)),
    Case("--resume a folder that is no checkpoint", _explicit_not_a_checkpoint,
         r"--resume .*somewhere: not a checkpoint folder", kinds=(SystemExit,)),
    Case("resume with a new optim.lr", resume("optim.lr=1e-3"),
         r"optim.lr: 0.0002 -> 0.001.*--allow-config-change", kinds=(SystemExit,), after=config_unchanged),
    Case("resume with a new data.task", resume("data.task=underwater"),
         r"data.task: 'lowlight' -> 'underwater'", kinds=(SystemExit,), after=config_unchanged),
    Case("resume with a new optim.lr, allowed", resume("optim.lr=1e-3", "run.max_steps=6",
                                                       args=("--allow-config-change",)), check=_check_new_lr_used),
    Case("resume with more steps", resume("run.max_steps=6"), check=_check_longer),
    Case("resume with another model, allowed", resume("model.preset=small", args=("--allow-config-change",)),
         r"step_00000004 does not fit this run's model", kinds=(SystemExit,)),
    Case("checkpoint without its optimizer entry", resume(prepare=_drop_entry("optimizer")),
         r"checkpoint .*step_00000004 lacks the entry 'optimizer'", kinds=(SystemExit,)),
    Case("checkpoint without its model entry", resume(prepare=_drop_entry("model")),
         r"checkpoint .*step_00000004 lacks the entry 'model'", kinds=(SystemExit,)),
    Case("newest checkpoint truncated", resume(prepare=_corrupt(4)), check=_check_fell_back),
    Case("newest checkpoint's state.json garbled", resume(prepare=_corrupt(4, how="json")), check=_check_fell_back),
    Case("every checkpoint corrupt", resume(prepare=_corrupt(2, 4)),
         r"no intact checkpoint under .*checkpoints", kinds=(SystemExit,)),
    Case("leftover of a killed checkpoint write", resume("run.max_steps=6", prepare=_leftover),
         check=_check_leftover_removed),
]
