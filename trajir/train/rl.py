"""Stage ``rl``: reinforcing ODE trajectories with M-SDE branches, Algorithm 1 and Eq. (15) (docs/equations.md §5).

For each sample: roll out the ODE with the frozen sampler copy, pick a branch step k, explore N M-SDE steps from
the ODE state with etas from the modulation network plus exploration noise, continue each branch with ODE steps
to the end, decode and score all N + 1 candidates (the unperturbed ODE continuation is candidate 0), and regress
one ODE step of the trained model from the ODE state onto the best branch's state at k + 1. Samples where no
branch beats the ODE contribute nothing; the modulation network moves towards the winning eta (a
cross-entropy-method update, docs/equations.md §5). Only the ranking of rewards is used, so any reward works.

``explore`` is Algorithm 1 steps 1-5 (``rollout``, ``branch_positions``, ``branch_etas``, then the branches of
``trajir.best_of_n`` finished by ``finish`` and ranked by ``select_best``), ``targets`` the regression targets of
``rl.target`` and ``loss`` Eq. (15) with the eta update and the optional anchors.

Options (``rl.*`` in ``trajir.train.config``): ``mode = "throughout"`` runs Best-of-N at every eligible step of one
M-SDE trajectory that continues from each step's winner (``explore_throughout``); ``select = "advantage"``
regresses onto the ODE step plus the group-normalised reward-weighted mean of the branches' deviations instead of
the argmax; ``eta_update`` chooses how the modulation network learns; ``final_weight`` and ``gt_weight`` add the
released code's anchors, and ``align_weight = 0`` keeps the anchors alone (the control for them).
"""
import copy
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..best_of_n import block_noise, branch, repeat_candidates, select_best
from ..compact import Recipe
from ..modulation import ModulationConfig, ModulationMLP
from ..trajectory import run, run_from_lq, take_rows
from . import randomness
from .pretrain import training_state
from .restorers import predictor
from .rewarding import reward_from_config
from .stage_base import Stage


@dataclass
class Exploration:
    """Everything one RL batch explored (kept for the loss, logs and tests)."""
    position: torch.Tensor    # [B] branch position k in the sampling path
    x_k: torch.Tensor         # [B, ...] ODE state at k
    x_next: torch.Tensor      # [N + 1, B, ...] regression targets at k + 1 (0 = the ODE step; see rl.target)
    images: torch.Tensor      # [N + 1, B, 3, H, W] decoded final images of every candidate
    scores: torch.Tensor      # [N + 1, B] rewards
    best: torch.Tensor        # [B] winning candidate
    etas: torch.Tensor        # [N + 1, B] eta of every candidate (0 for the ODE)
    eta_net: torch.Tensor     # [B] the modulation network's eta (with grad), or None with a fixed eta
    error: torch.Tensor       # [B] reconstruction error e_k of the clean estimate at k
    x_start: torch.Tensor = None  # [B, ...] the trajectory's start state (for the final-output anchor)


def group_advantage(scores):
    """``[N, B]`` rewards of the N branches of each sample -> ``(r - mean) / std`` over the branches (GRPO-style),
    0 for a sample whose branches all score alike."""
    mean = scores.mean(0, keepdim=True)
    std = scores.std(0, unbiased=False, keepdim=True)
    return torch.where(std > 0, (scores - mean) / std.clamp_min(1e-12), torch.zeros_like(scores))


def advantage_target(x_next, advantages):
    """The ODE step ``x_next[0]`` plus the advantage-weighted mean deviation of the N branches ``x_next[1:]``:
    a zeroth-order estimate of the reward's ascent direction at ``t_{k+1}``, in place of the argmax."""
    deviation = x_next[1:] - x_next[:1]
    weights = advantages.reshape(*advantages.shape, *([1] * (deviation.ndim - 2))).to(deviation)
    return x_next[0] + (weights * deviation).mean(0)


def gradient_estimate(x_next, scores):
    """The branches' zeroth-order estimate of the reward's gradient at ``t_{k+1}``: ``sum_n (r_n - mean r) d_n /
    (N |d|^2 / D)`` with ``d_n = x_next[n] - x_next[0]`` the N branches' deviations from the ODE step (``[N, B,
    ...]``), ``|d|^2 / D`` their mean square per element. For Gaussian deviations of that power it is unbiased to
    first order, and unlike the group-normalised advantage it keeps the reward's scale: a sample or a branch step
    where the reward barely changes contributes little. With block noise (``rl.explore_scale``) it estimates
    the gradient's projection onto block-constant images, times the block's pixel count."""
    deviation = x_next[1:] - x_next[:1]
    centred = scores - scores.mean(0, keepdim=True)
    power = deviation.double().pow(2).flatten(2).mean(2).mean(0).clamp_min(1e-30)          # [B]
    weights = centred.reshape(*centred.shape, *([1] * (deviation.ndim - 2))).to(deviation)
    return (weights * deviation).mean(0) / power.reshape(-1, *([1] * (deviation.ndim - 2))).to(deviation)


class RLAlign(Stage):
    name = "rl"

    def __init__(self, cfg, restorer, env):
        super().__init__(cfg, restorer, env)
        grid = restorer.grid
        self.sampler = copy.deepcopy(restorer.trainable()).eval().requires_grad_(False)  # theta_pre
        self.reward, self.reward_spec, note = reward_from_config(cfg)
        if note and env.is_main:
            print(f"trajir.train: {note}", flush=True)
        self.branches = cfg["rl.branches"]
        self.eta_fixed, self.eta_max, self.explore_std = cfg["rl.eta_fixed"], cfg["rl.eta_max"], cfg["rl.explore_std"]
        if self.eta_fixed > self.eta_max:
            raise ValueError(f"rl.eta_fixed ({self.eta_fixed}) exceeds rl.eta_max ({self.eta_max})")
        self.modulation = None
        if self.eta_fixed == 0:
            self.modulation = ModulationMLP(ModulationConfig(eta_max=self.eta_max, eta_init=self.eta_max / 2))
            self.modulation.to(restorer.device)
        self.path, self.lq_weight, self.ngs_w = self.sampling_path(cfg, grid)
        eligible = [int(s) for s in cfg["rl.branch_steps"].replace(",", " ").split()] if cfg["rl.branch_steps"] \
            else list(range(len(self.path) - 2))
        bad = [p for p in eligible if not 0 <= p <= len(self.path) - 3]
        if not eligible or bad:
            raise ValueError(f"rl.branch_steps must be positions 0..{len(self.path) - 3} of the {len(self.path) - 1}"
                             f"-jump sampling path (never the last jump), got {cfg['rl.branch_steps']!r}")
        self.eligible = eligible
        if cfg["rl.antithetic"] and self.branches % 2:
            raise ValueError(f"rl.antithetic pairs the branches (z, -z): rl.branches must be even, got {self.branches}")

    def sampling_path(self, cfg, grid):
        """The trajectory RL aligns: the K-step ODE from pure noise (``rl``)."""
        return list(range(grid.steps + 1)), 0.0, 0.0

    def recipe(self):
        return Recipe(grid=self.restorer.grid.describe(), path=self.path, lq_weight=self.lq_weight, ngs_w=self.ngs_w,
                      task=self.cfg["data.task"],
                      note=f"{self.name} aligned, {len(self.path) - 1} steps, reward {self.reward_spec}")

    def parameters(self):
        groups = [{"params": super().parameters()}]
        if self.modulation is not None:
            groups.append({"params": list(self.modulation.parameters()), "lr": self.cfg["rl.modulation_lr"]})
        return groups

    # --- Algorithm 1, steps 1-5 ---------------------------------------------------------------------------------

    def rollout(self, s, keys):
        """Steps 1-2: the frozen sampler's ODE from the start state; every state and guided prediction."""
        noise = randomness.normal(keys, 1, s["x0"].shape[1:], s["x0"].device).to(s["x0"])
        return run_from_lq(self.restorer.grid, self.path, predictor(self.restorer, self.sampler), s["lq"], noise,
                           self.lq_weight, self.ngs_w, s["cond"], keep=True)

    def branch_positions(self, keys, device):
        """Step 3: one eligible branch position k per sample (never the last jump)."""
        choice = torch.tensor(randomness.integers(keys, 3, 0, len(self.eligible)), device=device)
        return torch.tensor(self.eligible, device=device)[choice]

    def branch_etas(self, error, t_k, keys):
        """Step 4's modulation: ``(eta_net [B] with grad or None, etas [N, B])``, the network's eta (or
        ``rl.eta_fixed``) plus exploration noise, inside ``[0, rl.eta_max]``."""
        b, n, device = error.shape[0], self.branches, error.device
        eta_net = self.modulation(error, t_k) if self.modulation is not None else None
        base = eta_net.detach() if eta_net is not None else torch.full((b,), self.eta_fixed, device=device)
        jitter = randomness.normal(keys, 4, (n,), device).T if eta_net is not None else torch.zeros(n, b, device=device)
        return eta_net, (base[None] + self.explore_std * jitter).clamp(0, self.eta_max)

    def branch_noise(self, keys, stream, shape, device):
        """``[N, B, *shape]`` noise of the N branches: white as in the M-SDE, or constant on ``rl.explore_scale``
        blocks (``trajir.best_of_n.block_noise``); with ``rl.antithetic`` the second half is the first negated."""
        scale, draws = self.cfg["rl.explore_scale"], self.branches // 2 if self.cfg["rl.antithetic"] else self.branches
        coarse = (*shape[:-2], -(-shape[-2] // scale), -(-shape[-1] // scale))
        z = randomness.normal(keys, stream, (draws, *coarse), device).transpose(0, 1)   # [draws, B, ...]
        if self.cfg["rl.antithetic"]:
            z = torch.cat([z, -z])
        return block_noise(z, shape[-2:]) if scale > 1 else z

    @torch.no_grad()
    def finish(self, x, position, s):
        """Continue the states ``x`` that sit at path positions ``position`` (per sample) with the frozen sampler's
        ODE steps to the end.

        When every forward pass is a collective (a base sharded across ranks), all ranks make the same calls:
        each step runs on every sample from the earliest eligible position on, and samples not yet at their
        position keep their state.
        """
        collective = getattr(self.restorer, "collective", False)
        first = min(self.eligible) + 1 if collective else int(position.min())
        walk = run(self.restorer.grid, self.path[first:], x, predictor(self.restorer, self.sampler), s["cond"],
                   lq=s["lq"], ngs_w=self.ngs_w, begin=position - first, chunk=max(1, self.cfg["run.batch_size"]),
                   every_row=collective)
        return walk.final

    def explore(self, batch, keys):
        """Algorithm 1, steps 1-5, for one batch (no gradients except through the modulation network's eta)."""
        grid, n = self.restorer.grid, self.branches
        s = self.restorer.encode(batch)
        x0, device = s["x0"], s["x0"].device
        b = x0.shape[0]
        path, rows = torch.tensor(self.path, device=device), torch.arange(b, device=device)
        with torch.no_grad():
            ode = self.rollout(s, keys)
            states, preds = torch.stack(ode.states), torch.stack(ode.preds)  # [P + 1, B, ...], [P, B, ...]
            position = self.branch_positions(keys, device)                     # [B]
            x_k, ode_next, pred_k = states[position, rows], states[position + 1, rows], preds[position, rows]
            a, c = path[position], path[position + 1]
            error = ((grid.x0(x_k, pred_k, a) - x0) ** 2).flatten(1).mean(1)
        eta_net, etas = self.branch_etas(error, grid.model_time(a, b).to(device), keys)   # [B], [N, B]
        with torch.no_grad():
            z = self.branch_noise(keys, 5, x0.shape[1:], device).to(x0)                      # [N, B, ...]
            branches = branch(grid, x_k, pred_k, a, c, etas, z)                             # [N, B, ...]
            finals = self.finish(branches.flatten(0, 1), repeat_candidates(position, n) + 1,
                                 repeat_candidates({"cond": s["cond"], "lq": s["lq"]}, n))
            decoded = self.restorer.decode(finals)
            images = torch.cat([self.restorer.decode(states[-1])[None], decoded.reshape(n, b, *decoded.shape[1:])])
            best, scores = select_best(images.float(), self.reward, reference=batch["gt"].to(device).float(),
                                       ode_index=0)
        x_next = torch.cat([ode_next[None], self.targets(grid, x_k, pred_k, a, c, etas, branches, ode_next)])
        etas = torch.cat([torch.zeros(1, b, device=device), etas])
        return Exploration(position, x_k, x_next, images, scores, best, etas, eta_net, error, ode.states[0]), s

    def targets(self, grid, x_k, pred_k, a, c, etas, branches, ode_next):
        """The regression targets of the branches ``[N, B, ...]``: their states (``rl.target = "branch"``, Eq. (15)),
        or the ODE step plus each branch's noise, without the M-SDE drift bias (``"noise"``)."""
        if self.cfg["rl.target"] == "branch":
            return branches
        mean = branch(grid, x_k, pred_k, a, c, etas, torch.zeros_like(branches))
        return ode_next[None] + (branches - mean)

    # --- Eq. (15) ---------------------------------------------------------------------------------------------

    def ode_step(self, net, x, a, c, s):
        """``Phi(x)``: one guided ODE jump ``a -> c`` (per-sample indices) of ``net``."""
        pred = self.restorer.grid.guide(predictor(self.restorer, net)(x, a, s["cond"]), x, s["lq"], a, self.ngs_w)
        return self.restorer.grid.jump(x, pred, a, c)

    def ode_output(self, net, x, s):
        """The whole guided ODE along the sampling path from ``x`` with ``net``, with gradients (BPTT)."""
        return run(self.restorer.grid, self.path, x, predictor(self.restorer, net), s["cond"], lq=s["lq"],
                   ngs_w=self.ngs_w).final

    def alignment_target(self, e):
        """``(target [B, ...], weight [B])`` of Eq. (15): the winner (``rl.select = "best"``; weight 0 where the
        ODE won), the advantage-weighted target (``"advantage"``; weight 0 where all branches tied) or the ODE step
        moved along the branches' gradient estimate (``"gradient"``)."""
        rows = torch.arange(e.best.shape[0], device=e.best.device)
        if self.cfg["rl.select"] == "advantage":
            advantages = group_advantage(e.scores[1:])
            return advantage_target(e.x_next, advantages).detach(), (advantages.abs().sum(0) > 0).float()
        if self.cfg["rl.select"] == "gradient":
            estimate = gradient_estimate(e.x_next, e.scores[1:])
            return (e.x_next[0] + self.cfg["rl.step_size"] * estimate).detach(), torch.ones_like(e.scores[0])
        return e.x_next[e.best, rows].detach(), (e.best > 0).float()

    def eta_target(self, e):
        """``(target [B], weight [B])`` of the modulation network's regression (``rl.eta_update``)."""
        rows = torch.arange(e.best.shape[0], device=e.best.device)
        if self.cfg["rl.eta_update"] == "advantage":  # REINFORCE for a Gaussian around eta_net: no drift when the
            advantages = group_advantage(e.scores[1:])  # reward does not depend on eta
            offset = (advantages * (e.etas[1:] - e.eta_net.detach()[None])).mean(0)
            return e.eta_net.detach() + offset, (advantages.abs().sum(0) > 0).float()
        return e.etas[e.best, rows].detach(), (e.best > 0).float()

    def loss(self, batch, keys):
        explore = self.explore_throughout if self.cfg["rl.mode"] == "throughout" else self.explore
        e, s = explore(batch, keys)
        rows = torch.arange(e.x_k.shape[0], device=e.x_k.device)
        path = torch.tensor(self.path, device=e.x_k.device)
        a, c = path[e.position], path[e.position + 1]
        won = (e.best > 0).float()                                  # samples where a branch beat the ODE
        target, weight = self.alignment_target(e)
        step = self.ode_step(self.model, e.x_k, a, c, s)            # Phi_theta(x_k), with grad
        error = ((step.float() - target.float()) ** 2).flatten(1).mean(1)
        align = (weight * error).mean()                             # Eq. (15); exactly 0 when nobody wins
        loss = self.cfg["rl.align_weight"] * align
        logs = {"rl_loss": align.detach(), "win_rate": won.mean(), "reward_ode": e.scores[0].mean(),
                "reward_best": e.scores[e.best, rows].mean()}
        if e.eta_net is not None:
            logs["eta"] = e.eta_net.detach().mean()
            if self.cfg["rl.eta_update"] != "none":
                eta_goal, eta_weight = self.eta_target(e)
                eta_loss = (eta_weight * (e.eta_net - eta_goal) ** 2).mean()
                loss = loss + eta_loss
                logs["eta_loss"] = eta_loss.detach()
        base = self._base_encoding(batch, s)
        if self.cfg["rl.gt_weight"] > 0:                            # optional anchor: flow matching on the pairs
            anchor = self.anchor(base, keys)
            loss = loss + self.cfg["rl.gt_weight"] * anchor
            logs["anchor_loss"] = anchor.detach()
        if self.cfg["rl.final_weight"] > 0:                         # optional anchor: the ODE output against the GT
            final = self.ode_output(self.model, e.x_start[:base["x0"].shape[0]], base)
            final_loss = ((final.float() - base["x0"].float()) ** 2).mean()
            loss = loss + self.cfg["rl.final_weight"] * final_loss
            logs["final_loss"] = final_loss.detach()
        return loss, logs

    def _base_encoding(self, batch, s):
        """The batch's own encoding (``s`` repeats it once per recorded step in ``mode = "throughout"``)."""
        rows = slice(0, len(batch["gt"]))
        return {"x0": s["x0"][rows], "lq": s["lq"][rows], "cond": take_rows(s["cond"], rows)}

    def explore_throughout(self, batch, keys):
        """Best-of-N at every eligible step of one M-SDE trajectory (``rl.mode = "throughout"``).

        From the start state, each eligible step makes N M-SDE candidates and the ODE candidate from the current
        state, continues all with the frozen sampler's ODE steps, scores them and moves the trajectory to the
        winner. Every eligible step is one record of the returned :class:`Exploration` (records are step-major: B
        per step), with the encoding ``s`` repeated to match.
        """
        grid, n = self.restorer.grid, self.branches
        s = self.restorer.encode(batch)
        x0, device = s["x0"], s["x0"].device
        b = x0.shape[0]
        path, rows = torch.tensor(self.path, device=device), torch.arange(b, device=device)
        gt = batch["gt"].to(device).float()
        sample = predictor(self.restorer, self.sampler)
        records = []
        with torch.no_grad():
            noise = randomness.normal(keys, 1, x0.shape[1:], device).to(x0)
            x = x_start = grid.lq_start(s["lq"], noise, self.path[0], self.lq_weight)
        for p in range(len(self.path) - 1):
            a, c = path[p].expand(b), path[p + 1].expand(b)
            with torch.no_grad():
                pred = grid.guide(sample(x, a, s["cond"]), x, s["lq"], a, self.ngs_w)
                ode_next = grid.jump(x, pred, a, c)
            if p not in self.eligible:
                x = ode_next
                continue
            with torch.no_grad():
                error = ((grid.x0(x, pred, a) - x0) ** 2).flatten(1).mean(1)
            step_keys = [k + 1_000_003 * (p + 1) for k in keys]
            eta_net, etas = self.branch_etas(error, grid.model_time(a, b).to(device), step_keys)
            with torch.no_grad():
                z = self.branch_noise(step_keys, 5, x0.shape[1:], device).to(x0)
                branches = branch(grid, x, pred, a, c, etas, z)                          # [N, B, ...]
                position = torch.full((b,), p, device=device)
                candidates = torch.cat([ode_next[None], branches])                       # [N + 1, B, ...]
                finals = self.finish(candidates.flatten(0, 1), repeat_candidates(position, n + 1) + 1,
                                     repeat_candidates({"cond": s["cond"], "lq": s["lq"]}, n + 1))
                images = self.restorer.decode(finals).reshape(n + 1, b, *x0.shape[1:])
                best, scores = select_best(images.float(), self.reward, reference=gt, ode_index=0)
                targets = torch.cat([ode_next[None], self.targets(grid, x, pred, a, c, etas, branches, ode_next)])
            records.append(Exploration(position, x, targets, images, scores, best,
                                       torch.cat([torch.zeros(1, b, device=device), etas]), eta_net, error))
            x = candidates[best, rows]                                  # the trajectory follows the winner

        def cat(name, dim):
            return torch.cat([getattr(r, name) for r in records], dim)

        eta_net = cat("eta_net", 0) if self.modulation is not None else None
        e = Exploration(cat("position", 0), cat("x_k", 0), cat("x_next", 1), cat("images", 1), cat("scores", 1),
                        cat("best", 0), cat("etas", 1), eta_net, cat("error", 0), x_start)
        m = len(records)
        return e, {"x0": repeat_candidates(s["x0"], m), "lq": repeat_candidates(s["lq"], m),
                   "cond": repeat_candidates(s["cond"], m)}

    def anchor(self, s, keys):
        """The flow-matching (or noise-prediction) loss of the trained model on the batch's GT pairs."""
        noise = randomness.normal(keys, 6, s["x0"].shape[1:], s["x0"].device).to(s["x0"])
        u = randomness.uniform(keys, 7, s["x0"].device)[:, 0]
        x_t, t, target = training_state(self.restorer.grid, s["x0"], noise, u)
        return ((self.restorer.predict(self.model, x_t, t, s["cond"]).float() - target.float()) ** 2).mean()

    def before_optimizer_step(self):
        """The modulation network is not wrapped in DDP: average its gradients over ranks by hand."""
        if self.env.enabled and self.modulation is not None:
            for p in self.modulation.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= self.env.world_size

    def after_step(self, step):
        if step % self.cfg["rl.refresh_every"] == 0:  # Algorithm 1 step 7: refresh the frozen sampler copy
            self.sampler.load_state_dict(self.restorer.trainable().state_dict())

    def state_dict(self):
        state = {"sampler": self.sampler.state_dict()}
        if self.modulation is not None:
            state["modulation"] = self.modulation.state_dict()
        return state

    def load_state_dict(self, state):
        self.sampler.load_state_dict(state["sampler"])
        if self.modulation is not None:
            self.modulation.load_state_dict(state["modulation"])

    def export(self, net, cfg):
        path = super().export(net, cfg)
        if self.modulation is not None:
            self.modulation.save(path.with_name(path.stem + "_modulation.safetensors"))
        return path


class RLDistill(RLAlign):
    """Stage ``rl+distill`` (the FLUX-IR recipe): RL with guidance on the few-step path that starts at the
    LQ-interpolated state, Eq. (17), with negative LQ guidance, Eq. (19)–(20), inside every step."""

    name = "rl+distill"

    def sampling_path(self, cfg, grid):
        start = cfg["distill.start_index"]
        if not 0 <= start < grid.steps - 1:
            raise ValueError(f"distill.start_index must lie in 0..{grid.steps - 2} for rl+distill, got {start}")
        weight = None if cfg["distill.lq_weight"] < 0 else cfg["distill.lq_weight"]
        return list(range(start, grid.steps + 1)), weight, cfg["distill.ngs_w"]
