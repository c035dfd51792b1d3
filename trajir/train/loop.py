"""The training loop shared by every stage: optimiser, accumulation, DDP, logging, checkpoints, validation.

A stage supplies ``loss(batch, keys)``, its trainable parameters, ``after_step`` and any extra state; the loop
reads top to bottom: check, resume, build, then for each step accumulate, clip, step, check, log, save, validate.
Also here: the stage registry (``run.stage`` and ``model.kind`` -> restorer and stage), the EMA of the trained
weights and the Ctrl-C / SIGTERM handling.

A non-finite loss or non-finite weights stop the run with ``TrainingDiverged`` (``optim.skip_nonfinite`` first
skips up to that many steps with a non-finite loss): nothing is saved after the last finite checkpoint and no model
is exported. A resume whose training-relevant config keys differ from the checkpoint's is refused unless
``allow_config_change``; then the new optimiser settings take effect.
"""
import contextlib
import copy
import math
import os
import signal
import sys

import torch

from ..safefiles import write_text
from . import build, checkpoint, distributed, randomness
from .config import describe_changes, load_config, training_changes
from .distill import Distill
from .flux_restorer import FluxIRRestorer
from .lq_encoder_stage import LQEncoderPretrain, LQEncoderRestorer
from .metrics_log import MetricsLog
from .pretrain import Pretrain
from .records import RecordsRL
from .restorers import CompactRestorer
from .rl import RLAlign, RLDistill

MEMORY_HINT = ("out of memory. Options that reduce memory: run.batch_size (with run.grad_accum to keep the "
               "effective batch), data.crop, flux.gradient_checkpointing=true, flux.base_dtype=fp8, "
               "flux.fsdp=true (several GPUs), val.batch_size.")
RESUME_ENTRIES = ("model", "optimizer", "scheduler", "data", "stage", "rng")
OPTIMIZER_SETTINGS = ("lr", "initial_lr", "betas", "eps", "weight_decay")


class TrainingDiverged(RuntimeError):
    """The loss or the weights became NaN or inf; the run stopped without saving or exporting them."""


def build_optimizer(cfg, groups):
    """AdamW, or SGD with momentum (``optim.name = "sgd"``): SGD's step follows the gradient's size, so parameters
    that a noisy, weak gradient (the RL stage's) barely touches move little instead of a full Adam step."""
    if cfg["optim.name"] == "sgd":
        return torch.optim.SGD(groups, lr=cfg["optim.lr"], momentum=cfg["optim.momentum"],
                               weight_decay=cfg["optim.weight_decay"])
    return torch.optim.AdamW(groups, lr=cfg["optim.lr"], betas=(cfg["optim.beta1"], cfg["optim.beta2"]),
                             eps=cfg["optim.eps"], weight_decay=cfg["optim.weight_decay"])


def lr_factor(cfg):
    warmup, total, schedule = cfg["optim.warmup_steps"], cfg["run.max_steps"], cfg["optim.schedule"]

    def factor(step):  # step counts finished optimiser steps
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "cosine":
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0
    return factor


STAGES = {"pretrain": Pretrain, "rl": RLAlign, "distill": Distill, "rl+distill": RLDistill}
KINDS = ("compact", "fluxir_controlnet", "lq_encoder")


def build_stage(cfg, env):
    """The restorer (model family) and the stage object for ``run.stage`` and ``model.kind``."""
    kind, name = cfg["model.kind"], cfg["run.stage"]
    if name not in STAGES:
        raise ValueError(f"run.stage {name!r} is not available; stages: {', '.join(STAGES)}")
    if kind == "compact":
        restorer = CompactRestorer(build.build_compact(cfg, cfg["run.init"]), build.build_grid(cfg), env.device)
    elif kind == "fluxir_controlnet":
        restorer = FluxIRRestorer.from_config(cfg, env)
    elif kind == "lq_encoder":
        if name != "pretrain":
            raise ValueError(f"model.kind lq_encoder trains with run.stage pretrain only, got {name!r}")
        restorer = LQEncoderRestorer.from_config(cfg, env)
        return restorer, LQEncoderPretrain(cfg, restorer, env)
    else:
        raise ValueError(f"model.kind {kind!r} is not available; kinds: {', '.join(KINDS)}")
    if name == "rl" and cfg["rl.records"]:
        return restorer, RecordsRL(cfg, restorer, env)
    return restorer, STAGES[name](cfg, restorer, env)


class EMA:
    """Exponential moving average of the trained weights, with the usual warm-up so short runs are not dominated
    by the initial weights: ``decay_k = min(decay, (1 + k) / (10 + k))``."""

    def __init__(self, module, decay):
        self.decay = decay
        self.updates = 0
        self.shadow = {k: v.detach().clone().float() for k, v in module.state_dict().items()
                       if v.is_floating_point()}

    @torch.no_grad()
    def update(self, module):
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, v in module.state_dict().items():
            if k in self.shadow:
                self.shadow[k].lerp_(v.detach().float(), 1 - d)

    def copy_of(self, module):
        """A copy of ``module`` holding the averaged weights."""
        out = copy.deepcopy(module)
        state = out.state_dict()
        out.load_state_dict({k: self.shadow[k].to(state[k].dtype) if k in self.shadow else v
                             for k, v in state.items()})
        return out

    def state_dict(self):
        return {"updates": self.updates, "shadow": dict(self.shadow)}

    def load_state_dict(self, state):
        self.updates = int(state["updates"])
        missing = set(self.shadow) - set(state["shadow"])
        if missing:
            raise ValueError(f"EMA state lacks {sorted(missing)[:5]}")
        self.shadow = {k: v.clone().float() for k, v in state["shadow"].items()}


class StopRequest:
    """Ctrl-C / SIGTERM during training: finish the current step, write a checkpoint, exit. A second Ctrl-C stops
    at once."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. inside a test runner thread): no handler
                pass
        return self

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def train(cfg, resume=None, allow_config_change=False):
    """Run ``cfg``; ``resume`` is None, ``"latest"`` or a checkpoint folder. Returns ``"done"`` or ``"stopped"``;
    raises ``TrainingDiverged`` when the loss or the weights stop being finite. ``allow_config_change`` lets a
    resume change training-relevant keys (optimiser, data, model, stage settings)."""
    env = distributed.setup(cfg["run.device"])
    try:
        return _train(cfg, resume, env, allow_config_change)
    except torch.cuda.OutOfMemoryError as e:
        raise SystemExit(f"trajir.train: {MEMORY_HINT} ({e})") from e
    finally:
        distributed.teardown(env)


def check_before_training(cfg):
    """What can be checked from the config alone, before data or models are built."""
    from ..rewards import get_metric

    out_dir = cfg["run.out_dir"]
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"run.out_dir {out_dir!r} is a file, not a folder")
    for name in (m.strip() for m in cfg["val.metrics"].split(",")):
        if not name:
            continue
        try:
            metric = get_metric(name)
        except ValueError as e:
            raise ValueError(f"val.metrics: {e}") from None
        if cfg["data.val_crop"] and cfg["data.val_crop"] < metric.min_size:
            raise ValueError(f"val.metrics: {name} needs images of at least {metric.min_size} px, but "
                             f"data.val_crop is {cfg['data.val_crop']}")


def load_resume(cfg, ckpt_root, resume, env, allow_config_change):
    """``(folder, step, state)`` to resume from: the newest intact checkpoint for ``latest`` (a damaged newer one
    is skipped with a warning), checked for its entries and for config changes."""
    if resume == "latest":
        folder, step, state, skipped = checkpoint.load_latest(ckpt_root)
        for bad, error in skipped if env.is_main else ():
            print(f"trajir.train: warning: skipping the damaged checkpoint {bad} ({error}); resuming from {folder}",
                  file=sys.stderr, flush=True)
    else:
        folder = checkpoint.resolve_resume(ckpt_root, resume)
        step, state = checkpoint.load_checkpoint(folder)
    saved = state.get("config")
    if saved is None:  # written before checkpoints carried their config: the run's config.toml, if readable
        toml = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(folder))), "config.toml")
        try:
            saved = dict(load_config(toml)) if os.path.isfile(toml) else None
        except (OSError, ValueError):
            saved = None
    changes = training_changes(saved, cfg) if saved is not None else []
    if changes and not allow_config_change:
        raise ValueError(f"--resume {folder}: the config differs from the checkpoint's in training-relevant keys "
                         f"({describe_changes(changes)}); resume with the checkpoint's values, start a new run "
                         "(another run.out_dir), or pass --allow-config-change to continue with the new values")
    if changes and env.is_main:
        print(f"trajir.train: resuming {folder} with changed keys ({describe_changes(changes)})", file=sys.stderr,
              flush=True)
    return folder, step, state


def _load_into(folder, what, load, value):
    """``load(value)`` with an error naming the checkpoint when the shapes or structure do not fit this run."""
    try:
        load(value)
    except (RuntimeError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"checkpoint {folder} does not fit this run's {what}: {first}") from None


def nonfinite_parameters(module):
    """Names of the parameters of ``module`` that hold NaN or inf (one host sync for all of them)."""
    named = [(n, p) for n, p in module.named_parameters() if p.is_floating_point()]
    if not named:
        return []
    finite = torch.stack([torch.isfinite(p.detach()).all() for _, p in named]).cpu()
    return [n for (n, _), ok in zip(named, finite.tolist()) if not ok]


def _diverged(what, step, cfg, ckpt_root):
    found = checkpoint.list_checkpoints(ckpt_root)
    kept = f"the last checkpoint, {found[-1]}, holds finite weights" if found else "no checkpoint was written"
    return TrainingDiverged(
        f"{what} at step {step} (optim.lr={cfg['optim.lr']}, optim.grad_clip={cfg['optim.grad_clip']}); the run "
        f"is stopped: {kept}, and no model was exported. A lower optim.lr, optim.grad_clip > 0 or "
        "optim.warmup_steps keep a run finite; optim.skip_nonfinite skips a few bad steps")


def _train(cfg, resume, env, allow_config_change=False):
    if cfg["run.threads"]:
        torch.set_num_threads(cfg["run.threads"])
    torch.manual_seed(cfg["run.seed"])
    out_dir, seed = cfg["run.out_dir"], cfg["run.seed"]
    ckpt_root = os.path.join(out_dir, "checkpoints")
    check_before_training(cfg)
    if env.is_main and os.path.isdir(ckpt_root):
        checkpoint.remove_leftovers(ckpt_root)
    resumed = load_resume(cfg, ckpt_root, resume, env, allow_config_change) if resume else None
    train_set, val_sets = build.build_datasets(cfg)
    loader = build.build_loader(cfg, train_set, env)
    restorer, stage = build_stage(cfg, env)
    stage.prepare(train_set)
    trained = restorer.trainable()
    if env.enabled:
        ids = [env.device.index] if env.device.type == "cuda" else None
        stage.model = torch.nn.parallel.DistributedDataParallel(trained, device_ids=ids)
    groups = stage.parameters()
    params = [p for g in groups for p in g["params"]] if isinstance(groups[0], dict) else groups
    optimizer = build_optimizer(cfg, groups)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg))
    ema = EMA(trained, cfg["model.ema_decay"]) if cfg["model.ema_decay"] > 0 else None

    start, skipped_steps = 0, 0
    window = {}  # sums of the logged values since the last log line (each line shows the interval's mean)
    if resumed:
        folder, start, state = resumed
        checkpoint.require_entries(state, folder, RESUME_ENTRIES + (("ema",) if ema is not None else ()))
        fresh = [{k: g[k] for k in OPTIMIZER_SETTINGS if k in g} for g in optimizer.param_groups]
        _load_into(folder, "model", trained.load_state_dict, state["model"])
        _load_into(folder, "optimizer", optimizer.load_state_dict, state["optimizer"])
        _load_into(folder, "learning-rate schedule", scheduler.load_state_dict, state["scheduler"])
        _load_into(folder, "data order", loader.load_state_dict, state["data"])
        _load_into(folder, "stage", stage.load_state_dict, state["stage"])
        if ema is not None:
            _load_into(folder, "EMA", ema.load_state_dict, state["ema"])
        if allow_config_change:  # the optimiser settings of the new config, not the checkpoint's
            for group, settings in zip(optimizer.param_groups, fresh):
                group.update(settings)
            scheduler.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
            for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
                group["lr"] = base * factor(scheduler.last_epoch)
        torch.set_rng_state(state["rng"]["torch"])
        window = dict(state.get("log_window", {}))
        skipped_steps = int(state.get("skipped_nonfinite", 0))
    if env.is_main:
        os.makedirs(out_dir, exist_ok=True)
        write_text(os.path.join(out_dir, "config.toml"), cfg.to_toml())
    log = MetricsLog(out_dir, cfg["run.max_steps"], start, enabled=env.is_main)
    if resume and env.is_main:
        log.message(f"resumed from {folder} at step {start}")

    def save(step):
        if env.is_main:
            state = {"model": trained.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "data": loader.state_dict(), "stage": stage.state_dict(),
                     "rng": {"torch": torch.get_rng_state()}, "log_window": dict(window), "config": dict(cfg),
                     "skipped_nonfinite": skipped_steps}
            if ema is not None:
                state["ema"] = ema.state_dict()
            checkpoint.save_checkpoint(ckpt_root, step, state, cfg["run.keep_last"])
        distributed.barrier(env)

    def weights_for_inference():
        return ema.copy_of(trained) if ema is not None else trained

    accum, clip = cfg["run.grad_accum"], cfg["optim.grad_clip"]
    status = "done"
    with StopRequest() as stop:
        try:
            for step in range(start + 1, cfg["run.max_steps"] + 1):
                trained.train()
                optimizer.zero_grad(set_to_none=True)
                totals, bad_loss = {}, None
                for micro in range(accum):
                    batch = stage.next_batch(loader)
                    size = len(next(v for v in batch.values() if torch.is_tensor(v)))
                    keys = randomness.sample_keys(seed, step, micro, env.rank, env.world_size, size)
                    sync = env.enabled and micro < accum - 1
                    with stage.model.no_sync() if sync else contextlib.nullcontext():
                        loss, values = stage.loss(batch, keys)
                        (loss / accum).backward()
                    value = float(loss.detach())
                    if not math.isfinite(value) and bad_loss is None:
                        bad_loss = value
                    for k, v in values.items():
                        totals[k] = totals.get(k, 0.0) + float(v) / accum
                if distributed.any_rank(env, bad_loss is not None):
                    shown = "nan" if bad_loss is None or math.isnan(bad_loss) else str(bad_loss)
                    skipped_steps += 1
                    if skipped_steps > cfg["optim.skip_nonfinite"]:
                        raise _diverged(f"the loss is {shown}", step, cfg, ckpt_root)
                    log.message(f"step {step}: the loss is {shown}; step skipped without an update "
                                f"({skipped_steps} of optim.skip_nonfinite={cfg['optim.skip_nonfinite']})")
                    optimizer.zero_grad(set_to_none=True)
                    totals = None  # the interval's means leave the skipped step out
                else:
                    stage.before_optimizer_step()
                    if clip > 0:
                        totals["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, clip))
                    optimizer.step()
                    bad = nonfinite_parameters(trained)
                    if distributed.any_rank(env, bool(bad)):
                        raise _diverged(f"NaN or inf in the weights ({', '.join(bad[:3]) or 'on another rank'}) "
                                        "after the optimiser step", step, cfg, ckpt_root)
                    if ema is not None:
                        ema.update(trained)
                scheduler.step()
                stage.after_step(step)
                if totals is None:
                    window["_skipped"] = window.get("_skipped", 0) + 1
                else:
                    for k, v in totals.items():
                        window[k] = window.get(k, 0.0) + v
                    window["_steps"] = window.get("_steps", 0) + 1
                if step % cfg["run.log_every"] == 0 or step == cfg["run.max_steps"]:
                    count, skipped = window.pop("_steps", 0), window.pop("_skipped", 0)
                    values = distributed.mean_over_ranks(env, {k: v / count for k, v in window.items()}) if count \
                        else {}
                    if skipped:
                        values["skipped_steps"] = skipped
                    values["lr"] = scheduler.get_last_lr()[0]
                    log.log(step, values)
                    window = {}
                log.advance()
                stopping = distributed.any_rank(env, stop.requested)
                if stopping or step % cfg["run.save_every"] == 0 or step == cfg["run.max_steps"]:
                    save(step)
                if cfg["run.val_every"] and step % cfg["run.val_every"] == 0 and val_sets:
                    values = stage.validate(weights_for_inference(), val_sets, step)  # every rank calls it
                    if env.is_main:
                        log.log(step, values)
                    distributed.barrier(env)
                if stopping:
                    log.message(f"stopped on request after step {step}; resume with --resume latest")
                    status = "stopped"
                    break
        finally:
            log.close()
    if status == "done" and env.is_main:
        path = stage.export(weights_for_inference(), cfg)
        print(f"trajir.train: wrote {path}")
    distributed.barrier(env)
    return status
