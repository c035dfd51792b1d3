"""Does the ``rl`` stage's update climb the reward, and could any update of its kind? Two measurements in
parameter space on a trained compact model (docs/rl_diagnosis.md §6):

- ``rl_cosines``: per training batch, the cosine between the gradient of the stage's loss (Eq. (15), whatever the
  ``rl.*`` options) and the exact gradient of minus the final image's PSNR against the GT (the ``psnr`` reward),
  backpropagated through the whole ODE of the same model from the same noise. Both are descent directions of
  their losses, so +1 means the RL step is the exact one. By the chain rule the exact gradient is the sum over
  steps k of ``J_k^T g_{k+1}`` (``J_k``: the step's Jacobian in the parameters, ``g_{k+1}``: the final error's
  gradient at the next state), of which the RL loss estimates one term per sample.
- ``held_apart_change``: the exact gradient averaged over ``n`` samples, and the change of the mean final PSNR
  (dB) on other batches (held apart, other noise) after a step of length ``eps`` against it. A gain is a
  direction that generalises; if even the exact gradient of a few hundred samples lowers the PSNR of other
  samples, no estimate of it from that many samples can improve the model in expectation.
"""
import copy

import torch

from ..trajectory import run
from . import build, randomness
from .analysis import load_restorer
from .config import Config
from .diagnosis import fixed_batches, row_cosine
from .distributed import DistEnv
from .restorers import predictor
from .rl import RLAlign

CHECK_DRAW = 2_000_011       # the data draw of the gradient batches, apart from training and the diagnosis
HELD_APART_DRAW = 2_000_017  # the draw of the held-apart batches


def _flat_grad(params):
    out = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params]).clone()
    for p in params:
        p.grad = None
    return out


def _cos(a, b):
    """Cosine between two flat parameter vectors."""
    return float(row_cosine(a[None], b[None]))


def final_psnr(stage, net, batch, keys, grad=False):
    """``[B]`` PSNR (dB) of the decoded K-step ODE output of ``net`` (from the noise of ``keys``, stream 1 as in
    the RL rollout) against the GT; differentiable in ``net`` with ``grad``."""
    restorer = stage.restorer
    s = restorer.encode(batch)
    noise = randomness.normal(keys, 1, s["x0"].shape[1:], s["x0"].device).to(s["x0"])
    with torch.set_grad_enabled(grad):
        out = run(restorer.grid, stage.path, noise, predictor(restorer, net), s["cond"], lq=s["lq"],
                  ngs_w=stage.ngs_w).final
        mse = ((restorer.decode(out) - restorer.decode(s["x0"])) ** 2).flatten(1).mean(1)
        return -10 * torch.log10(mse.clamp_min(1e-10))


def exact_gradient(stage, batches):
    """Gradient of minus the mean final PSNR over ``batches`` (``[(batch, keys)]``) in the trained model's
    parameters (a descent direction, like the RL loss's gradient)."""
    net = stage.restorer.trainable()
    params = [p for p in net.parameters() if p.requires_grad]
    for batch, keys in batches:
        (-final_psnr(stage, net, batch, keys, grad=True).mean() / len(batches)).backward()
    return _flat_grad(params)


def rl_gradient(stage, batch, keys):
    """Gradient of the stage's loss on one batch (its exploration uses ``keys``, as in training)."""
    params = [p for p in stage.restorer.trainable().parameters() if p.requires_grad]
    loss, _ = stage.loss(batch, keys)
    loss.backward()
    return _flat_grad(params)


def stepped(net, direction, eps):
    """A copy of ``net`` moved by ``eps`` along ``-direction / |direction|`` (a flat parameter vector)."""
    out = copy.deepcopy(net)
    unit, offset = direction / direction.norm().clamp_min(1e-30), 0
    with torch.no_grad():
        for p in (p for p in out.parameters() if p.requires_grad):
            p -= eps * unit[offset:offset + p.numel()].view_as(p)
            offset += p.numel()
    return out


def held_apart_change(stage, direction, batches, eps):
    """Change of the mean final PSNR (dB) on ``batches`` after a step of length ``eps`` against ``direction``."""
    net = stage.restorer.trainable()
    before = float(torch.cat([final_psnr(stage, net, b, k) for b, k in batches]).double().mean())
    moved = stepped(net, direction, eps)
    return float(torch.cat([final_psnr(stage, moved, b, k) for b, k in batches]).double().mean()) - before


def check(cfg, model_path, rl_batches=4, sample_batches=(4, 16, 48), eps=(0.001, 0.003, 0.01), held_apart=12):
    """Both measurements for the ``rl.*`` settings of ``cfg`` on the model at ``model_path``:
    ``{"rl_cosines": [per batch], "held_apart": {samples: {eps: PSNR change in dB}}}``."""
    restorer, _ = load_restorer(model_path)
    restorer.trainable().requires_grad_(True)  # loaded for inference
    stage = RLAlign(Config({**cfg, "run.init": str(model_path), "run.stage": "rl"}), restorer, DistEnv())
    train_set, _ = build.build_datasets(cfg)
    cosines = []
    for batch, keys in fixed_batches(cfg, train_set, CHECK_DRAW, rl_batches):
        cosines.append(_cos(rl_gradient(stage, batch, keys), exact_gradient(stage, [(batch, keys)])))
    apart = fixed_batches(cfg, train_set, HELD_APART_DRAW, held_apart)
    changes = {}
    for count in sample_batches:
        direction = exact_gradient(stage, fixed_batches(cfg, train_set, CHECK_DRAW, count))
        changes[count * cfg["run.batch_size"]] = {e: held_apart_change(stage, direction, apart, e) for e in eps}
    return {"rl_cosines": cosines, "held_apart": changes}


def markdown(result):
    cos = ", ".join(f"{c:+.3f}" for c in result["rl_cosines"])
    eps = list(next(iter(result["held_apart"].values())))
    lines = [f"cos(RL gradient, exact gradient) per batch: {cos}", "",
             "| exact gradient of | " + " | ".join(f"eps {e:g}" for e in eps) + " |", "|---" * (len(eps) + 1) + "|"]
    for samples, row in result["held_apart"].items():
        lines.append(f"| {samples} samples | " + " | ".join(f"{row[e]:+.3f} dB" for e in eps) + " |")
    return "\n".join(lines)
