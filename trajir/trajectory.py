"""The trajectory runner: one loop that walks states along a path of grid indices.

Restoration, distillation, the analyses, RL and Best-of-N all move states the same way. At each jump ``a -> b``
of the path the model predicts (v or eps) at the state, negative LQ guidance (Eq. (19)-(20)) adjusts the
prediction when a guidance strength is given, and one step moves the state: the ODE jump of the grid, or whatever
the ``step`` hook returns (an M-SDE step, a branching into candidates). ``run_from_lq`` starts the walk at the
LQ-interpolated state of Eq. (17).
"""
from dataclasses import dataclass, field

import torch


@dataclass
class Trajectory:
    """The states of a walk (the start first) and the guided predictions its jumps used.

    Without ``keep`` only the last state is kept and ``preds`` is empty.
    """
    states: list
    preds: list = field(default_factory=list)

    @property
    def final(self):
        return self.states[-1]


def take_rows(tree, rows):
    """Rows ``rows`` of every tensor in ``tree`` (a tensor, a dict of them, or anything else, kept as it is)."""
    if torch.is_tensor(tree):
        return tree[rows]
    if isinstance(tree, dict):
        return {k: take_rows(v, rows) for k, v in tree.items()}
    return tree


def _predict(predict, x, index, context, chunk):
    """``predict`` on ``x``, in slices of at most ``chunk`` rows (all at once without ``chunk``)."""
    if chunk is None or len(x) <= chunk:
        return predict(x, index, context)
    parts = []
    for start in range(0, len(x), chunk):
        rows = slice(start, start + chunk)
        parts.append(predict(x[rows], index[rows] if torch.is_tensor(index) else index, take_rows(context, rows)))
    return torch.cat(parts)


def run(grid, path, x, predict, context=None, lq=None, ngs_w=0.0, step=None, keep=False, begin=None, chunk=None,
        every_row=False):
    """Walk ``x`` (the state at grid index ``path[0]``) along the jumps of ``path``; returns a :class:`Trajectory`.

    - ``predict(x, index, context)``: the network's prediction for the states ``x`` at grid ``index`` (an int, or
      one index per row when ``begin`` is given); ``context`` is the matching rows of ``context`` (conditioning).
    - ``lq``, ``ngs_w``: with ``lq`` given, the prediction is guided by Eq. (19)-(20) with strength ``ngs_w``.
    - ``step(position, x, pred, a, b)``: the next state of jump ``position`` (``a -> b``); the ODE jump without it.
      It may return more rows than it got (branching into candidates); ``context`` and ``lq`` must then be None.
    - ``keep``: keep every state and prediction, not just the last state.
    - ``begin``: one path position per row; a row waits (keeps its state) until its position comes. Only the
      waiting rows' model calls are skipped, unless ``every_row``: then every jump runs the model on all rows and
      drops the waiting rows' results, so every process of a collective (a sharded model) makes the same calls.
    - ``chunk``: at most this many rows per model call.
    """
    trajectory = Trajectory([x])
    for position, (a, b) in enumerate(zip(path, path[1:])):
        if begin is None:
            pred = _predict(predict, x, a, context, chunk)
            if lq is not None:
                pred = grid.guide(pred, x, lq, a, ngs_w)
            moved = grid.jump(x, pred, a, b) if step is None else step(position, x, pred, a, b)
        else:
            pred, moved = _run_rows(grid, position, x, a, b, predict, context, lq, ngs_w, step, begin, chunk,
                                    every_row)
        x = moved
        if keep:
            trajectory.states.append(x)
            trajectory.preds.append(pred)
    if not keep:
        trajectory.states = [x]
    return trajectory


def _run_rows(grid, position, x, a, b, predict, context, lq, ngs_w, step, begin, chunk, every_row):
    """One jump of ``run`` for the rows whose ``begin`` has come; the other rows keep their state."""
    active = begin <= position
    rows = torch.arange(len(x), device=x.device) if every_row else active.nonzero()[:, 0]
    if len(rows) == 0:
        return None, x
    sub = x[rows]
    index_a = torch.full((len(rows),), a, dtype=torch.long, device=x.device)
    index_b = torch.full((len(rows),), b, dtype=torch.long, device=x.device)
    pred = _predict(predict, sub, index_a, take_rows(context, rows), chunk)
    if lq is not None:
        pred = grid.guide(pred, sub, lq[rows], index_a, ngs_w)
    moved = grid.jump(sub, pred, index_a, index_b) if step is None else step(position, sub, pred, index_a, index_b)
    keep = active[rows].reshape(-1, *([1] * (x.ndim - 1)))
    out = x.clone()
    out[rows] = torch.where(keep, moved, sub)
    return pred, out


def run_from_lq(grid, path, predict, lq, noise, lq_weight=None, ngs_w=0.0, context=None, step=None, keep=False):
    """Start at the LQ-interpolated state of ``path[0]`` (Eq. (17), LQ weight ``lq_weight`` or the schedule's),
    then ``run`` the path with negative LQ guidance of strength ``ngs_w`` inside every jump."""
    x = grid.lq_start(lq, noise, path[0], lq_weight)
    return run(grid, path, x, predict, context, lq=lq, ngs_w=ngs_w, step=step, keep=keep)
