"""Stage ``rl`` from branch records (``rl.records``): Eq. (15) on the best M-SDE branches that ComfyUI's
"TrajIR Best-of-N Trajectory Aligner" saved while sampling with real FLUX.

Each record row holds the ODE state ``x_t``, the winning branch's state ``x_next`` one step later, the times and
the step's conditioning. Rows where the ODE itself won (eta 0) carry no update and are skipped; the others train
one ODE step of the FLUX-IR ControlNet, ``x_t + (t_next - t) v_theta(x_t)``, onto ``x_next``.
"""
import pathlib

import torch
import torch.nn.functional as F

from ..best_of_n import CONDITIONING, load_branch
from ..compact import Recipe
from ..data.order import EpochSampler
from .stage_base import Stage


def index_records(folder):
    """``[(file, row)]`` of every winning branch row under ``folder``; errors name the folder or the file."""
    root = pathlib.Path(folder)
    if not root.is_dir():
        raise ValueError(f"rl.records {folder!r} is not a folder; point it at the branch records the Best-of-N "
                         "node saved (ComfyUI/output/trajir/branches by default)")
    files = sorted(root.rglob("*.safetensors"))
    if not files:
        raise ValueError(f"rl.records {folder!r} holds no .safetensors branch records")
    rows = []
    for path in files:
        record = load_branch(path)
        missing = [name for name in CONDITIONING if name not in record]
        if record["param"] != "rf" or missing:
            raise ValueError(f"{path}: a FLUX-IR record needs param 'rf' and the conditioning {CONDITIONING}; it "
                             f"has param {record['param']!r} and lacks {missing} (save it from a FLUX graph with "
                             "ControlNetApplyAdvanced feeding the guider)")
        rows += [(path, i) for i, eta in enumerate(record["eta"].tolist()) if eta > 0]
    if not rows:
        raise ValueError(f"no record under {folder!r} has a branch that beat the ODE (every eta is 0): nothing to learn")
    return rows


class RecordsRL(Stage):
    name = "rl"

    def __init__(self, cfg, restorer, env):
        super().__init__(cfg, restorer, env)
        if restorer.kind != "fluxir_controlnet":
            raise ValueError(f"rl.records trains a FLUX-IR ControlNet (model.kind = fluxir_controlnet), got "
                             f"model.kind = {restorer.kind}")
        self.rows = index_records(cfg["rl.records"])
        self.order = EpochSampler(len(self.rows), cfg["run.batch_size"], seed=cfg["run.seed"], rank=env.rank,
                                  world_size=env.world_size, drop_last=False)

    def recipe(self):
        return Recipe(grid=self.restorer.grid.describe(), lq_weight=0.0, task=self.cfg["data.task"],
                      note="aligned on Best-of-N branch records")

    def next_batch(self, loader):
        _, picks = self.order.next_batch()
        records = {}
        rows = []
        for i in picks:
            path, row = self.rows[i]
            records.setdefault(path, load_branch(path))
            rows.append({k: v[row] for k, v in records[path].items() if k != "param"})
        return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}

    def loss(self, batch, keys):
        device = self.restorer.device
        x_t, x_next = batch["x_t"].to(device), batch["x_next"].to(device)
        t, t_next = batch["t"].to(device), batch["t_next"].to(device)
        h, w = x_t.shape[-2:]
        hint = self.restorer.control_hint(batch["hint"], h, w)  # the LQ image, or its latent for InstantX
        cond = {"hint": hint, "txt": batch["context"].to(device), "y": batch["pooled"].to(device),
                "guidance": batch["guidance"].to(device)}
        v = self.restorer.predict(self.model, x_t, t, cond)
        step = x_t + (t_next - t).view(-1, 1, 1, 1) * v
        loss = F.mse_loss(step.float(), x_next.float())
        return loss, {"rl_loss": loss.detach(), "reward": batch["reward"].mean()}

    def state_dict(self):
        return {"records": self.order.state_dict()}

    def load_state_dict(self, state):
        self.order.load_state_dict(state["records"])
