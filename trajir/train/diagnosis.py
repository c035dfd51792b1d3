"""Where the RL signal goes: measurements of the Best-of-N exploration of the ``rl`` stage on a trained model.

For fixed training batches and each setting (number of branches N, branch step k, eta), the stage's own
exploration is run and, per sample, the regression target's deviation from the ODE step ``delta = target -
x_ode(t_{k+1})`` is compared with two directions at ``t_{k+1}``:

- towards the GT state: ``(1 - t_{k+1}) (x0 - x0_hat)``, the change that puts the clean estimate on the GT;
- the reward's ascent direction: the gradient of ``-MSE(final image, GT)`` with respect to the state at
  ``t_{k+1}``, through the ODE continuation of the frozen sampler (first-order: what the best branch should
  approximate).

With ``rl.explore_scale`` > 1 the branches explore only block-constant directions; ``ascent_share`` is then the
share of the ascent's energy inside that subspace (1 for white noise): the most of the ascent such branches can
find.

Reported per setting: the win rate (a branch beats the ODE), the reward gain of the winner, the RMS of ``delta``
per pixel, its projection on the GT direction (per pixel, so comparable to the RMS) and its cosines with both
directions, for the argmax target (``best``) and the advantage-weighted one (``advantage``).
"""
import torch

from ..data import collate
from .analysis import load_restorer
from .config import Config
from .distributed import DistEnv
from .randomness import sample_keys
from .restorers import predictor
from .rl import RLAlign, advantage_target, group_advantage

DIAGNOSIS_DRAW = 2_000_003  # the data draw of the diagnosis batches, apart from every training draw


def row_cosine(a, b):
    """``[B]`` cosines between the rows of ``a`` and ``b`` (each flattened)."""
    a, b = a.flatten(1).double(), b.flatten(1).double()
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-30)


def fixed_batches(cfg, train_set, draw, count):
    """``count`` training batches of data draw ``draw`` with their per-sample keys, ``[(batch, keys)]``: the same
    crops, degradations and noise every time they are asked for."""
    size = cfg["run.batch_size"]
    return [(collate([train_set.sample((j * size + i) % len(train_set), draw) for i in range(size)]),
             sample_keys(cfg["run.seed"], draw, j, 0, 1, size)) for j in range(count)]


def reward_gradient(stage, x_next, position, s):
    """Gradient of ``-MSE(decoded ODE continuation, GT)`` with respect to the states ``x_next`` at ``position + 1``."""
    path = torch.tensor(stage.path, device=x_next.device)
    x = x_next.detach().clone().requires_grad_(True)
    y = x
    for p in range(int(position.min()) + 1, len(stage.path) - 1):
        active = (position + 1 <= p).reshape(-1, *([1] * (x.ndim - 1)))
        a, c = path[p].expand(len(x)), path[p + 1].expand(len(x))
        stepped = stage.ode_step(stage.sampler, y, a, c, s)
        y = torch.where(active, stepped, y)
    loss = -((stage.restorer.decode(y) - stage.restorer.decode(s["x0"])) ** 2).mean()
    (grad,) = torch.autograd.grad(loss, x)
    return grad


def block_projection(x, scale):
    """``x`` ``[B, ..., H, W]`` projected on the functions constant on ``scale x scale`` blocks (the span of
    ``trajir.best_of_n.block_noise``): each block replaced by its mean. ``scale`` must divide H and W."""
    h, w = x.shape[-2:]
    if h % scale or w % scale:
        raise ValueError(f"explore_scale {scale} does not divide the crop {h} x {w}")
    blocks = x.reshape(*x.shape[:-2], h // scale, scale, w // scale, scale).mean((-3, -1), keepdim=True)
    return blocks.expand(*x.shape[:-2], h // scale, scale, w // scale, scale).reshape(x.shape)


def measure(stage, batch, keys):
    """One exploration of ``stage`` on ``batch``: ``{name: [B] tensor}`` of the quantities in the module docstring."""
    e, s = stage.explore(batch, keys)
    grid = stage.restorer.grid
    rows = torch.arange(len(e.best))
    ode_next = e.x_next[0]
    c = torch.tensor(stage.path)[e.position + 1]
    with torch.no_grad():
        pred = grid.guide(predictor(stage.restorer, stage.sampler)(ode_next, c, s["cond"]), ode_next, s["lq"], c,
                          stage.ngs_w)
        t_next = grid.t[c].float().reshape(-1, *([1] * (ode_next.ndim - 1)))
        towards_gt = (1 - t_next) * (s["x0"] - grid.x0(ode_next, pred, c))
    ascent = reward_gradient(stage, ode_next, e.position, s)
    pixels = ode_next[0].numel()
    scale = stage.cfg["rl.explore_scale"]
    divides = ascent.shape[-2] % scale == 0 and ascent.shape[-1] % scale == 0
    inside = block_projection(ascent, scale) if divides else torch.full_like(ascent, float("nan"))
    out = {"win": (e.best > 0).double(), "gain": (e.scores[e.best, rows] - e.scores[0]).double(),
           "gt_rms": towards_gt.flatten(1).double().norm(dim=1) / pixels ** 0.5,
           "ascent_share": inside.flatten(1).double().norm(dim=1) ** 2 / ascent.flatten(1).double().norm(dim=1) ** 2}
    targets = {"best": e.x_next[e.best, rows], "advantage": advantage_target(e.x_next, group_advantage(e.scores[1:]))}
    unit_gt = towards_gt.flatten(1).double() / towards_gt.flatten(1).double().norm(dim=1, keepdim=True)
    for name, target in targets.items():
        delta = (target - ode_next).flatten(1).double()
        out[f"{name}_rms"] = delta.norm(dim=1) / pixels ** 0.5
        out[f"{name}_proj_gt"] = (delta * unit_gt).sum(1) / pixels ** 0.5
        out[f"{name}_cos_gt"] = row_cosine(delta, towards_gt)
        out[f"{name}_cos_ascent"] = row_cosine(delta, ascent)
    if e.eta_net is not None:
        out["eta_net"] = e.eta_net.detach().double()
    return out


def settings(branches=(4, 8, 16), branch_steps=(0, 2, 4, 6, 8), etas=(0.1, 0.3, 0.5), scales=(4, 8, 16, 48),
             base_n=4, base_eta=0.3):
    """The one-factor-at-a-time sweep: ``[(label, overrides)]`` over N, the branch step, eta and the exploration
    scale (block-constant branch noise, ``rl.explore_scale``)."""
    out = [(f"N={n}", {"rl.branches": n, "rl.eta_fixed": base_eta}) for n in branches]
    out += [(f"k={k}", {"rl.branches": base_n, "rl.eta_fixed": base_eta, "rl.branch_steps": str(k)})
            for k in branch_steps]
    out += [(f"eta={eta}", {"rl.branches": base_n, "rl.eta_fixed": eta}) for eta in etas]
    out += [(f"scale={s}", {"rl.branches": base_n, "rl.eta_fixed": base_eta, "rl.explore_scale": s}) for s in scales]
    return out


def diagnose(cfg, model_path, sweep=None, batches=2):
    """``{label: {quantity: mean over samples}}`` for each setting of ``sweep`` (default :func:`settings`) on
    ``batches`` fixed training batches of ``cfg``. Branch steps outside the model's grid are skipped."""
    from . import build

    restorer, _ = load_restorer(model_path)
    train_set, _ = build.build_datasets(cfg)
    data = fixed_batches(cfg, train_set, DIAGNOSIS_DRAW, batches)
    results = {}
    for label, overrides in (sweep if sweep is not None else settings()):
        run = Config({**cfg, "run.init": str(model_path), "rl.explore_std": 0.0, **overrides})
        run["rl.eta_max"] = max(run["rl.eta_max"], run["rl.eta_fixed"])
        try:
            stage = RLAlign(run, restorer, DistEnv())
        except ValueError:
            continue  # a branch step this grid does not have
        totals = {}
        for batch, keys in data:
            for name, values in measure(stage, batch, keys).items():
                totals.setdefault(name, []).append(values)
        results[label] = {name: float(torch.cat(v).mean()) for name, v in totals.items()}
    return results


COLUMNS = [("win", "win rate"), ("gain", "reward gain"), ("gt_rms", "GT dir. RMS"), ("ascent_share", "ascent share"),
           ("best_rms", "best: RMS"), ("best_proj_gt", "best: proj. GT"), ("best_cos_gt", "best: cos GT"),
           ("best_cos_ascent", "best: cos ascent"), ("advantage_rms", "adv.: RMS"),
           ("advantage_proj_gt", "adv.: proj. GT"), ("advantage_cos_ascent", "adv.: cos ascent")]


def markdown(results):
    lines = ["| setting | " + " | ".join(label for _, label in COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for label, row in results.items():
        lines.append(f"| {label} | " + " | ".join(f"{row[key]:.4g}" for key, _ in COLUMNS) + " |")
    return "\n".join(lines)
