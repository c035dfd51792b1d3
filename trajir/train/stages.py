"""The stage registry: ``run.stage`` and ``model.kind`` -> (restorer, stage)."""
from . import build
from .distill import Distill
from .pretrain import Pretrain
from .restorers import CompactRestorer
from .rl import RLAlign, RLDistill

STAGES = {"pretrain": Pretrain, "rl": RLAlign, "distill": Distill, "rl+distill": RLDistill}


def build_stage(cfg, env):
    kind, name = cfg["model.kind"], cfg["run.stage"]
    if name not in STAGES:
        raise ValueError(f"run.stage {name!r} is not available; stages: {', '.join(STAGES)}")
    if kind != "compact":
        raise ValueError(f"model.kind {kind!r} is not available; kinds: compact")
    restorer = CompactRestorer(build.build_compact(cfg, cfg["run.init"]), build.build_grid(cfg), env.device)
    return restorer, STAGES[name](cfg, restorer, env)
