"""Turning a config into the objects of a run: data, the model family, the grid."""
import math

from ..checks import parse_weights
from ..data import TASKS, Loader, PairedFolders, SyntheticPairs, TaskMix, list_images, sample_images, split_holdout
from ..grids import RFGrid, VPGrid
from ..models import CompactUNet, CompactUNetConfig, load

EPOCH_SAMPLES = 512  # samples per data epoch when the folders hold fewer (crops and degradations are redrawn)


def parse_task_mix(text):
    """``"lowlight"`` or ``"sr=3, denoise=1"`` -> ``[("sr", 3.0), ("denoise", 1.0)]``; task names are checked."""
    if "=" not in text:
        mix = {text.strip(): 1.0}
    else:
        mix = parse_weights(text, "data.task")
        if not all(w > 0 for w in mix.values()):
            raise ValueError(f"data.task: every task weight must be > 0, got {text!r}")
    unknown = [t for t in mix if t not in TASKS]
    if unknown:
        raise ValueError(f"data.task: unknown task(s) {', '.join(repr(t) for t in unknown)}; expected one of "
                         f"{', '.join(sorted(TASKS))}")
    return list(mix.items())


def _split(items, holdout):
    try:
        return split_holdout(items, holdout) if holdout else (items, [])
    except ValueError as e:
        raise ValueError(f"data.holdout: {e}") from None


def build_grid(cfg):
    if cfg["model.param"] == "rf":
        return RFGrid.uniform(cfg["sampling.steps"], cfg["sampling.shift"])
    return VPGrid.linear(cfg["sampling.steps"], cfg["sampling.beta_start"], cfg["sampling.beta_end"])


def split_files(cfg):
    """``(training files, held-out files)`` of a clean-image config (``data.clean_dir`` or the bundled samples)."""
    files = list_images(cfg["data.clean_dir"], "data.clean_dir") if cfg["data.clean_dir"] else sample_images()
    return _split(files, cfg["data.holdout"])


def held_out_files(cfg):
    return split_files(cfg)[1]


def build_datasets(cfg):
    """``(train dataset, [validation datasets])``; every file is checked here, before training starts."""
    seed, crop, holdout = cfg["run.seed"], cfg["data.crop"] or None, cfg["data.holdout"]
    val_crop = cfg["data.val_crop"] or None
    shuffle = cfg["data.shuffle_channels"]
    if cfg["data.paired_dir"]:
        names = PairedFolders(cfg["data.paired_dir"]).names
        train_names, val_names = _split(names, holdout)
        train = [(PairedFolders(cfg["data.paired_dir"], crop=crop, seed=seed, names=train_names,
                                shuffle_channels=shuffle), 1.0)]
        val = [PairedFolders(cfg["data.paired_dir"], crop=val_crop, seed=seed + 1, names=val_names, hflip=False)]
        val = val if val_names else []
    else:
        train_files, val_files = split_files(cfg)
        tasks = parse_task_mix(cfg["data.task"])
        train = [(SyntheticPairs(train_files, task, seed=seed, crop=crop, shuffle_channels=shuffle), w)
                 for task, w in tasks]
        val = [SyntheticPairs(val_files, task, seed=seed + 1, crop=val_crop, hflip=False)
               for task, _ in tasks] if val_files else []
    total = sum(len(d) for d, _ in train)
    mix = TaskMix(train, seed=seed, length=max(total, EPOCH_SAMPLES))
    return mix, val


def build_loader(cfg, dataset, env):
    return Loader(dataset, cfg["run.batch_size"], seed=cfg["run.seed"], rank=env.rank, world_size=env.world_size)


def compact_config(cfg):
    preset = {"tiny": CompactUNetConfig.tiny, "small": CompactUNetConfig.small,
              "medium": CompactUNetConfig.medium}[cfg["model.preset"]](param=cfg["model.param"])
    fields = preset.to_dict()
    if cfg["model.base_channels"] > 0:
        fields["base_channels"] = cfg["model.base_channels"]
        fields["norm_groups"] = math.gcd(fields["base_channels"], preset.norm_groups)
    if cfg["model.channel_mult"]:
        fields["channel_mult"] = _ints("model.channel_mult", cfg["model.channel_mult"])
    if cfg["model.num_res_blocks"] > 0:
        fields["num_res_blocks"] = cfg["model.num_res_blocks"]
    if cfg["model.attn_levels"]:
        text = cfg["model.attn_levels"]
        fields["attn_levels"] = () if text.strip() == "none" else _ints("model.attn_levels", text)
    return CompactUNetConfig.from_dict(fields)


def _ints(key, text):
    try:
        return tuple(int(v) for v in text.replace(",", " ").split())
    except ValueError:
        raise ValueError(f"{key} must be a list of integers like \"1,2,2\", got {text!r}") from None


def build_compact(cfg, init=None):
    """A compact U-Net from the config, or from ``init`` (a compact-model file) when given."""
    if init:
        net = load(init)
        if net.kind != "compact_unet":
            raise ValueError(f"run.init {init} holds a {net.kind}, expected a compact model for model.kind=compact")
        if net.config.param != cfg["model.param"]:
            raise ValueError(f"run.init {init} is a {net.config.param} model but model.param is "
                             f"{cfg['model.param']}")
        return net.train()
    return CompactUNet(compact_config(cfg), seed=cfg["run.seed"]).train()
