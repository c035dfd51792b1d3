"""The stage registry: ``run.stage`` and ``model.kind`` -> (restorer, stage)."""
from . import build
from .distill import Distill
from .flux_restorer import FluxIRRestorer
from .lq_encoder_stage import LQEncoderPretrain, LQEncoderRestorer
from .pretrain import Pretrain
from .records import RecordsRL
from .restorers import CompactRestorer
from .rl import RLAlign, RLDistill

STAGES = {"pretrain": Pretrain, "rl": RLAlign, "distill": Distill, "rl+distill": RLDistill}
KINDS = ("compact", "fluxir_controlnet", "lq_encoder")


def build_stage(cfg, env):
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
