"""Stage ``distill``: cost-aware trajectory distillation, Eq. (16)-(18) (docs/equations.md §6-8).

Before training, the teacher's K-step ODE trajectories on a few batches give the jump-cost matrix (Eq. (16)) and
``select_steps`` picks the student's M jumps. The student starts at the LQ-interpolated state of its first grid
index (Eq. (17)), applies negative LQ guidance inside every jump (Eq. (19)–(20)), and regresses its M-jump output
onto ``(1 - rho) x_teacher + rho x_gt`` (Eq. (18)), where the teacher started from the same noise.
"""
import copy
import json
import os

import torch

from ..compact import Recipe
from ..data import collate
from ..distillation import cost_matrix_rf, cost_matrix_vp, distillation_reference, select_steps
from ..models import load
from ..safefiles import write_text
from ..trajectory import run_from_lq
from . import randomness
from .restorers import predictor
from .stage_base import Stage

COST_DRAW = 1_000_003  # the data draw of the cost-matrix batches, apart from every training draw


def teacher_trajectory(restorer, net, grid, s, noise):
    """The teacher's full K-step ODE from pure noise: ``(states [K+1, B, ...], predictions [K, B, ...])``."""
    teacher = run_from_lq(grid, list(range(grid.steps + 1)), predictor(restorer, net, grid), s["lq"], noise,
                          lq_weight=0.0, context=s["cond"], keep=True)
    return torch.stack(teacher.states), torch.stack(teacher.preds)


@torch.no_grad()
def cost_analysis(restorer, teacher, dataset, batches, batch_size, seed):
    """Average jump-cost matrix ``[K+1, K+1]`` of the teacher over ``batches`` fixed batches of ``dataset``."""
    grid = restorer.grid
    total = None
    for j in range(batches):
        batch = collate([dataset.sample((j * batch_size + i) % len(dataset), COST_DRAW) for i in range(batch_size)])
        s = restorer.encode(batch)
        keys = randomness.sample_keys(seed, COST_DRAW, j, 0, 1, batch_size)
        noise = randomness.normal(keys, 1, s["x0"].shape[1:], s["x0"].device).to(s["x0"])
        states, preds = teacher_trajectory(restorer, teacher, grid, s, noise)
        preds = list(preds) + [preds[-1]]  # no jump starts at the clean end; its entry is never used
        if grid.param == "rf":
            cost = cost_matrix_rf(list(states), grid.t.tolist(), preds)
        else:
            cost = cost_matrix_vp(list(states), grid.alpha.tolist(), grid.sigma.tolist(), preds)
        total = cost if total is None else total + cost
    return total / batches


def student_path(cost, start, num_steps, fixed=""):
    """``select_steps`` on the sub-grid from ``start`` to the clean end, as indices of the full grid, or the path
    ``fixed`` names ("0,9,10"), checked against the same constraints."""
    k = cost.shape[0] - 1
    if not 0 <= start < k:
        raise ValueError(f"distill.start_index must lie in 0..{k - 1}, got {start}")
    if num_steps > k - start:
        raise ValueError(f"distill.student_steps ({num_steps}) exceeds the {k - start} grid steps from "
                         f"distill.start_index {start}")
    if not fixed.strip():
        return [start + i for i in select_steps(cost[start:, start:], num_steps)]
    try:
        path = [int(i) for i in fixed.split(",")]
    except ValueError:
        path = None
    if (path is None or len(path) != num_steps + 1 or path[0] != start or path[-1] != k
            or any(b <= a for a, b in zip(path, path[1:]))):
        raise ValueError(f"distill.path must be {num_steps + 1} increasing grid indices from distill.start_index "
                         f"{start} to {k} (distill.student_steps = {num_steps} jumps), got {fixed!r}")
    return path


class Distill(Stage):
    name = "distill"

    def __init__(self, cfg, restorer, env):
        super().__init__(cfg, restorer, env)
        source = cfg["distill.teacher"] or cfg["run.init"]
        if source:
            teacher = load(source).to(restorer.device)
            if teacher.kind != restorer.trainable().kind:
                raise ValueError(f"distill.teacher {source} holds a {teacher.kind}, expected a "
                                 f"{restorer.trainable().kind}")
        else:
            teacher = copy.deepcopy(restorer.trainable())
        self.teacher = teacher.eval().requires_grad_(False)
        self.start = cfg["distill.start_index"]
        self.lq_weight = None if cfg["distill.lq_weight"] < 0 else cfg["distill.lq_weight"]
        self.rho, self.ngs_w = cfg["distill.rho"], cfg["distill.ngs_w"]
        self.path, self.cost = None, None

    def prepare(self, train_set):
        """Choose the student's jumps from the teacher's cost matrix (identical on every rank)."""
        self.cost = cost_analysis(self.restorer, self.teacher, train_set, self.cfg["distill.cost_batches"],
                                  self.cfg["run.batch_size"], self.cfg["run.seed"])
        self.path = student_path(self.cost, self.start, self.cfg["distill.student_steps"], self.cfg["distill.path"])
        if self.env.is_main:
            write_text(os.path.join(self.cfg["run.out_dir"], "distill_cost.json"),
                       json.dumps({"cost": self.cost.tolist(), "path": self.path}))
        return self.path

    def recipe(self):
        return Recipe(grid=self.restorer.grid.describe(), path=self.path, lq_weight=self.lq_weight, ngs_w=self.ngs_w,
                      task=self.cfg["data.task"], note=f"distilled student, {len(self.path) - 1} NFE")

    def loss(self, batch, keys):
        grid, s = self.restorer.grid, self.restorer.encode(batch)
        noise = randomness.normal(keys, 1, s["x0"].shape[1:], s["x0"].device).to(s["x0"])
        if self.rho < 1:
            with torch.no_grad():
                states, _ = teacher_trajectory(self.restorer, self.teacher, grid, s, noise)
            reference = distillation_reference(states[-1], s["x0"], self.rho)
        else:  # rho = 1: the target is the GT alone, and the teacher's K-step rollout would be thrown away
            reference = s["x0"]
        student = run_from_lq(grid, self.path, predictor(self.restorer, self.model), s["lq"], noise, self.lq_weight,
                              self.ngs_w, s["cond"])
        loss = ((student.final.float() - reference.float()) ** 2).mean()     # Eq. (18)
        return loss, {"distill_loss": loss.detach()}

    def state_dict(self):
        return {"path": list(self.path)}

    def load_state_dict(self, state):
        if list(state["path"]) != self.path:
            raise ValueError(f"the checkpoint's student path {state['path']} differs from the one selected now "
                             f"{self.path}; was the teacher or the data changed?")
