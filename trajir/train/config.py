"""Training configuration: every key and its default in one place, a TOML file on top, ``--set`` on top of that.

Keys are ``section.name``. A key that is not listed here is an error that lists the valid keys, so a typo never
silently trains with a default.
"""
import copy
import difflib
import json
import math
import tomllib

from ..colour import require_colour_step

DEFAULTS = {
    "run": {
        "out_dir": "runs/trajir",   # checkpoints, logs, exports and validation grids go here
        "stage": "pretrain",        # pretrain | rl | distill | rl+distill
        "seed": 0,
        "device": "auto",           # auto | cpu | cuda | cuda:N
        "max_steps": 1000,          # optimiser steps of this stage
        "batch_size": 8,            # per process, per optimiser step (before gradient accumulation)
        "grad_accum": 1,
        "log_every": 10,
        "save_every": 500,          # checkpoint interval in steps; a final checkpoint is always written
        "keep_last": 3,             # checkpoints kept on disk (the newest)
        "val_every": 500,           # 0 disables validation during training
        "export": "",               # file name of the final export inside out_dir ("" = a name per model kind)
        "init": "",                 # weights to start from (a previous stage's export, or a public ControlNet file)
        "threads": 0,               # torch CPU threads (0 = torch's default)
    },
    "model": {
        "kind": "compact",          # compact | fluxir_controlnet | lq_encoder
        "param": "rf",              # rf (rectified flow) | vp (noise prediction; compact models only)
        "preset": "small",          # compact U-Net size: tiny (0.2 M) | small (2.2 M) | medium (18 M)
        "base_channels": 0,         # > 0 overrides the preset's width
        "channel_mult": "",         # e.g. "1,2,2": overrides the preset's levels
        "num_res_blocks": 0,        # > 0 overrides the preset's residual blocks per level
        "attn_levels": "",          # e.g. "2": levels with self-attention ("none" for no attention)
        "ema_decay": 0.999,         # 0 disables the EMA copy
    },
    "data": {
        "task": "lowlight",         # synthetic degradation for clean folders, or a mix "sr=3, denoise=1"
        "clean_dir": "",            # folder of clean images ("" = the bundled sample photos)
        "paired_dir": "",           # folder with lq/ and gt/ (takes precedence over clean_dir)
        "crop": 64,
        "holdout": 2,               # images held out for validation (by file, deterministic)
        "val_crop": 128,            # centre crop of the validation images (0 = whole image)
        "shuffle_channels": False,  # permute the colour channels of training crops (few photos: colour-blind model)
        "cache_latents": True,      # FLUX: encode GT / LQ once with the frozen VAE
        "prompt_embeddings": "",    # FLUX: file written by "TrajIR Save Conditioning" ("" = zeros)
    },
    "optim": {
        "name": "adamw",            # adamw | sgd (with optim.momentum; its step follows the gradient's size)
        "lr": 2e-4,
        "weight_decay": 0.0,
        "beta1": 0.9,
        "beta2": 0.999,
        "eps": 1e-8,
        "momentum": 0.9,            # sgd only
        "warmup_steps": 0,
        "schedule": "constant",     # constant | cosine
        "grad_clip": 1.0,           # 0 disables clipping
        "skip_nonfinite": 0,        # steps with a NaN/inf loss skipped (no update) before the run stops; 0: stop
    },
    "sampling": {
        "steps": 10,                # teacher / evaluation grid (NFE of the ODE)
        "shift": 0.0,               # rf: FLUX time shift mu of the grid (0 = uniform)
        "beta_start": 1e-4,         # vp: linear beta schedule of the grid
        "beta_end": 0.99,
        "colour": "",               # colour step the exported recipe applies after sampling (trajir.colour)
    },
    "rl": {
        "branches": 4,              # N M-SDE branches per sample (the ODE continuation is candidate 0)
        "reward": "psnr",           # a metric, a preset (psnr, fluxir-unified) or a mix "lpips=1, niqe=0.5"
        "reward_fallback": "",      # used instead when rl.reward's weight files are missing ("" = that is an error)
        "eta_max": 1.0,             # the modulation network's output range
        "eta_fixed": 0.0,           # > 0: plain-SDE alignment with this fixed eta (Table IX); 0: ModulationMLP
        "explore_std": 0.15,        # exploration noise on eta around the network's value
        "branch_steps": "",         # grid indices eligible as branch steps ("" = 0 .. K-2)
        "refresh_every": 50,        # steps between refreshes of the frozen sampler copy
        "modulation_lr": 1e-3,
        "target": "branch",         # branch: the winner's state (Eq. (15)); noise: the ODE step + the winner's noise
        "gt_weight": 0.0,           # optional anchor: weight of the flow-matching loss on GT pairs
        "final_weight": 0.0,        # optional anchor: MSE of the trained model's whole ODE output against the GT,
                                    # backpropagated through every step (the released task-specific code's anchor)
        "align_weight": 1.0,        # weight of the alignment term, Eq. (15) (0 with an anchor: anchors-only control)
        "mode": "branch",           # branch: one M-SDE branch step on the ODE trajectory (Algorithm 1); throughout:
                                    # Best-of-N at every eligible step of one M-SDE trajectory that follows the winners
        "select": "best",           # best: regress onto the argmax of the N + 1 candidates (Algorithm 1);
                                    # advantage: onto the ODE step + the group-normalised reward-weighted mean of
                                    # the N branches' deviations (every sample contributes); gradient: onto the ODE
                                    # step + rl.step_size x the branches' estimate of the reward's gradient (rewards
                                    # minus their mean, not normalised: steps and samples keep their true weight)
        "step_size": 0.01,          # select = gradient: how far along the estimated reward gradient the target lies
        "eta_update": "winner",     # modulation network: winner (regress onto the winning eta), advantage (onto the
                                    # reward-weighted mean eta offset: no drift when eta does not matter), none
        "records": "",              # FLUX: a folder of Best-of-N branch records from ComfyUI to learn from instead
        "explore_scale": 1,         # branch noise constant on blocks of this many pixels (latent cells) a side,
                                    # unit variance per pixel: 1 is the M-SDE's white noise; larger explores fewer
                                    # directions (C * ceil(H/s) * ceil(W/s)), so Best-of-N finds the ascent faster
        "antithetic": False,        # branches in pairs with opposite noise (z, -z); needs an even rl.branches
    },
    "distill": {
        "student_steps": 1,         # M jumps of the student
        "cost_batches": 4,          # batches averaged for the cost matrix of the step selection
        "start_index": 0,           # grid index the student starts from (Eq. (17) start time)
        "lq_weight": -1.0,          # weight of the LQ image in the start state (< 0: the schedule's value)
        "rho": 0.5,                 # reference = (1 - rho) teacher + rho GT, Eq. (18)
        "ngs_w": 0.001,             # negative LQ guidance strength inside student jumps, Eq. (19)-(20)
        "teacher": "",              # teacher weights ("" = the init weights)
        "path": "",                 # the student's jumps as grid indices, "0,9,10" ("" = chosen by the cost matrix;
                                    # it starts at distill.start_index, ends at the last index, student_steps jumps)
    },
    "flux": {
        "base": "",                 # flux1-dev.safetensors (BFL layout)
        "ae": "",                   # ae.safetensors
        "base_dtype": "bf16",       # bf16 | fp8 | fp32: storage of the frozen base
        "gradient_checkpointing": True,
        "controlnet": "xlabs",      # xlabs | instantx (diffusers FluxControlNetModel): the ControlNet's format
        "controlnet_depth": 2,      # double blocks of a new ControlNet (an instantx run.init brings its own)
        "controlnet_single_depth": 0,  # instantx: single blocks of a new ControlNet
        "controlnet_modes": 0,      # instantx: Union mode-embedder rows of a new ControlNet (0 = no modes)
        "controlnet_mode": -1,      # Union ControlNets: the mode to train and sample with (-1 = none)
        "controlnet_scale": 0.9,
        "guidance": 4.0,
        "size": "dev",              # dev (real) | tiny (tests)
        "fsdp": False,              # shard the frozen base across ranks
        "lq_encoder": "",           # LQ encoder file (model.kind = lq_encoder export); "" = the AE encoder
    },
    "reproduce": {                  # python -m trajir.train reproduce: steps of the phases after pretraining
        "rl_steps": 300,
        "rl_lr": 2e-5,
        "distill_steps": 300,
        "distill_lr": 5e-5,
        "phase_ema": 0.99,          # EMA decay of every phase after pretraining (pretraining's 0.999 would export a
                                    # model that is still about 80 % the starting weights after 200 steps)
        "control_time_steps": 0,    # flow-matching steps of the wall-clock control, as long as the rl phase on the
                                    # reference machine (0 = no such phase)
        "ship_steps": 0,            # steps of the shipped student: a 2-step student fine-tuned onto the GT alone
                                    # (distill.rho = 1); 0 = no such phase
        "ship_lr": 1e-4,
        "ship_from": "distill_2",   # the student it starts from: distill_2 | rl_distill_2
        "ship_start_index": -1,     # its distill.start_index (-1 = the config's)
        "ship_colour": "",          # its recipe's colour step (sampling.colour), e.g. "lq_power_law" for low light
    },
    "eval": {                       # evaluate / reproduce: held-out units and bootstrap (trajir.train.evaluation)
        "crops": 6,                 # seeded crop windows (data.val_crop px) per held-out photo
        "draws": 8,                 # degradations (each with its own sampling noise) per crop
        "extra_photos": True,       # add the bundled evaluation photos when training on the bundled samples
        "resamples": 10000,         # bootstrap resamples of the 95 % intervals
    },
    "val": {
        "batch_size": 2,
        "draws": 4,                 # degradations drawn per held-out image (synthetic data)
        "metrics": "psnr,ssim",     # reward metrics reported on the held-out split
        "grid": True,               # write a PNG grid LQ | output | GT
    },
}

CHOICES = {
    "run.stage": ("pretrain", "rl", "distill", "rl+distill"),
    "model.kind": ("compact", "fluxir_controlnet", "lq_encoder"),
    "model.param": ("rf", "vp"),
    "model.preset": ("tiny", "small", "medium"),
    "optim.name": ("adamw", "sgd"),
    "reproduce.ship_from": ("distill_2", "rl_distill_2"),
    "optim.schedule": ("constant", "cosine"),
    "flux.base_dtype": ("bf16", "fp8", "fp32"),
    "flux.size": ("dev", "tiny"),
    "flux.controlnet": ("xlabs", "instantx"),
    "rl.target": ("branch", "noise"),
    "rl.select": ("best", "advantage", "gradient"),
    "rl.mode": ("branch", "throughout"),
    "rl.eta_update": ("winner", "advantage", "none"),
}


def valid_keys():
    return [f"{section}.{name}" for section, values in DEFAULTS.items() for name in values]


class Config(dict):
    """A flat ``{"section.name": value}`` mapping with attribute-free, explicit access: ``cfg["optim.lr"]``."""

    def section(self, name):
        prefix = name + "."
        return {k[len(prefix):]: v for k, v in self.items() if k.startswith(prefix)}

    def to_toml(self):
        lines = []
        for section in DEFAULTS:
            lines.append(f"[{section}]")
            for name, value in self.section(section).items():
                lines.append(f"{name} = {_toml_value(value)}")
            lines.append("")
        return "\n".join(lines)


def _toml_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def _unknown(key):
    close = difflib.get_close_matches(key, valid_keys(), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return ValueError(f"unknown config key {key!r}.{hint} Valid keys: {', '.join(valid_keys())}")


def _coerce(key, value, source):
    default = DEFAULTS[key.split(".")[0]][key.split(".")[1]]
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
        if ok and not math.isfinite(value):
            raise ValueError(f"{key} must be a finite number, got {value} from {source}")
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ValueError(f"{key} must be {type(default).__name__} (like {default!r}), got {value!r} from {source}")
    if key in CHOICES and value not in CHOICES[key]:
        raise ValueError(f"{key} must be one of {', '.join(CHOICES[key])}, got {value!r} from {source}")
    return value


def parse_override(text):
    """``section.name=value`` with a TOML value; bare words are strings (``run.out_dir=runs/a``)."""
    if "=" not in text:
        raise ValueError(f"--set expects key=value, got {text!r}")
    key, raw = (s.strip() for s in text.split("=", 1))
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def load_config(path=None, overrides=()):
    """Defaults, then the TOML file at ``path``, then ``overrides`` (``key=value`` strings), all validated."""
    cfg = Config({f"{s}.{n}": copy.deepcopy(v) for s, values in DEFAULTS.items() for n, v in values.items()})
    if path is not None:
        with open(path, "rb") as f:
            try:
                data = tomllib.load(f)
            except tomllib.TOMLDecodeError as e:
                raise ValueError(f"{path} is not valid TOML: {e}") from e
        for section, values in data.items():
            if not isinstance(values, dict):
                raise _unknown(section)
            for name, value in values.items():
                key = f"{section}.{name}"
                if key not in cfg:
                    raise _unknown(key)
                cfg[key] = _coerce(key, value, str(path))
    for text in overrides:
        key, value = parse_override(text)
        if key not in cfg:
            raise _unknown(key)
        if isinstance(cfg[key], str) and not isinstance(value, str):  # "rl.branch_steps=3" means the text "3"
            value = text.split("=", 1)[1].strip()
        cfg[key] = _coerce(key, value, f"--set {text}")
    check_ranges(cfg)
    return cfg


SEED_MAX = 2**63 - 1  # the data order and the per-sample keys derive 63-bit seeds from it
AT_LEAST_1 = ("run.max_steps", "run.batch_size", "run.grad_accum", "run.log_every", "run.save_every", "run.keep_last",
              "sampling.steps", "rl.branches", "rl.refresh_every", "rl.explore_scale", "distill.student_steps",
              "distill.cost_batches", "val.batch_size", "val.draws", "reproduce.rl_steps", "reproduce.distill_steps",
              "eval.crops", "eval.draws", "eval.resamples")
NON_NEGATIVE = ("run.val_every", "run.threads", "data.holdout", "optim.weight_decay", "optim.warmup_steps",
                "optim.grad_clip", "optim.skip_nonfinite", "rl.eta_fixed", "rl.explore_std", "rl.gt_weight",
                "rl.final_weight", "rl.align_weight", "distill.start_index", "distill.ngs_w", "flux.controlnet_depth",
                "flux.controlnet_single_depth", "flux.controlnet_modes", "flux.controlnet_scale", "flux.guidance",
                "reproduce.control_time_steps", "reproduce.ship_steps")
POSITIVE = ("optim.lr", "optim.eps", "rl.eta_max", "rl.modulation_lr", "rl.step_size", "reproduce.rl_lr",
            "reproduce.distill_lr", "reproduce.ship_lr", "sampling.beta_start", "sampling.beta_end")
UNIT_OPEN = ("optim.beta1", "optim.beta2", "optim.momentum", "model.ema_decay", "reproduce.phase_ema")  # [0, 1)
MIN_CROP = 16


def check_ranges(cfg):
    """Values that cannot work are refused here, before anything is built, with the key in the message."""
    for key in AT_LEAST_1:
        if cfg[key] < 1:
            raise ValueError(f"{key} must be >= 1, got {cfg[key]}")
    for key in NON_NEGATIVE:
        if cfg[key] < 0:
            raise ValueError(f"{key} must be >= 0, got {cfg[key]}")
    for key in POSITIVE:
        if not cfg[key] > 0:
            raise ValueError(f"{key} must be > 0, got {cfg[key]}")
    for key in UNIT_OPEN:
        if not 0 <= cfg[key] < 1:
            raise ValueError(f"{key} must lie in [0, 1), got {cfg[key]}")
    if not 0 <= cfg["run.seed"] <= SEED_MAX:
        raise ValueError(f"run.seed must lie in [0, 2^63 - 1], got {cfg['run.seed']}")
    for key in ("data.crop", "data.val_crop"):
        if cfg[key] != 0 and cfg[key] < MIN_CROP:
            raise ValueError(f"{key} must be 0 (whole images) or at least {MIN_CROP}, got {cfg[key]}")
    if not 0 <= cfg["distill.rho"] <= 1:
        raise ValueError(f"distill.rho must lie in [0, 1], got {cfg['distill.rho']}")
    if cfg["reproduce.ship_start_index"] < -1:
        raise ValueError(f"reproduce.ship_start_index must be -1 (the config's distill.start_index) or a grid index "
                         f">= 0, got {cfg['reproduce.ship_start_index']}")
    if cfg["distill.lq_weight"] > 1:
        raise ValueError(f"distill.lq_weight must be < 0 (the schedule's value) or lie in [0, 1], got "
                         f"{cfg['distill.lq_weight']}")
    for key in ("sampling.colour", "reproduce.ship_colour"):
        require_colour_step(key, cfg[key])


# Keys a resumed run may change freely: where and how often it logs, saves, validates and evaluates, how long it
# runs, on which device and threads. Every other key shapes the training itself, and a resume that changes one is
# refused (trajir.train --allow-config-change accepts it).
RESUME_FREE = ("run.out_dir", "run.max_steps", "run.log_every", "run.save_every", "run.keep_last", "run.val_every",
               "run.export", "run.threads", "run.device", "flux.gradient_checkpointing", "sampling.colour")
RESUME_FREE_SECTIONS = ("val", "reproduce", "eval")


def training_changes(saved, cfg):
    """``[(key, saved value, new value)]`` for the training-relevant keys where ``cfg`` differs from ``saved`` (the
    config a checkpoint was written with). Keys the saved config lacks (added since) count only when the new
    value is not the default."""
    out = []
    for key, value in cfg.items():
        if key in RESUME_FREE or key.split(".")[0] in RESUME_FREE_SECTIONS:
            continue
        default = DEFAULTS[key.split(".")[0]][key.split(".")[1]]
        old = saved.get(key, default)
        if old != value:
            out.append((key, old, value))
    return out


def describe_changes(changes):
    return ", ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in changes)
