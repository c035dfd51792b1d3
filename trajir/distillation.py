"""Cost-aware trajectory distillation: the jump cost Eq. (16)/(16a), the adaptive step selection and the
reference Eq. (18) (docs/equations.md §6).

A student jump a -> b over the teacher grid is cheap when one solver step from the teacher state ``x_a`` with
the model's own prediction lands on the teacher state ``x_b``. The implied prediction is the one that would;
the cost is its L2 distance to the model's prediction.
"""
import math

import torch

from .checks import (as_result, compute_dtype, per_sample, require_finite, require_float, require_same_shape,
                     require_scalar_or_tensor, require_tensor)


def _check_pair(x_a, x_b):
    require_float("x_a", x_a)
    require_float("x_b", x_b)
    require_same_shape("x_b", x_b, "x_a", x_a)
    require_finite("x_a", x_a)
    require_finite("x_b", x_b)


def implied_velocity(x_a, x_b, t_a, t_b):
    """Eq. (16a), rectified flow: the velocity whose Euler step from ``x_a`` at ``t_a`` lands on ``x_b`` at
    ``t_b``: ``(x_a - x_b)/(t_a - t_b)``."""
    _check_pair(x_a, x_b)
    require_scalar_or_tensor("t_a", t_a, x_a, 0.0, 1.0)
    require_scalar_or_tensor("t_b", t_b, x_a, 0.0, 1.0)
    if not bool((torch.as_tensor(t_a, dtype=torch.float64) > torch.as_tensor(t_b, dtype=torch.float64)).all()):
        raise ValueError(f"t_b must be smaller than t_a, got t_a={t_a} and t_b={t_b}")
    dtype = compute_dtype(x_a)
    t_a, t_b = per_sample(t_a, x_a, dtype), per_sample(t_b, x_a, dtype)
    return as_result((x_a.to(dtype) - x_b.to(dtype)) / (t_a - t_b), x_a.dtype)


def implied_eps(x_a, x_b, alpha_a, sigma_a, alpha_b, sigma_b):
    """Eq. (16a), noise prediction: the noise whose DDIM step from ``x_a`` lands on ``x_b``:
    ``((a_b/a_a) x_a - x_b) / ((a_b/a_a) s_a - s_b)``."""
    _check_pair(x_a, x_b)
    for name, value in (("alpha_a", alpha_a), ("alpha_b", alpha_b), ("sigma_a", sigma_a), ("sigma_b", sigma_b)):
        require_scalar_or_tensor(name, value, x_a, 0.0)
    dtype = compute_dtype(x_a)
    a_a, s_a, a_b, s_b = (per_sample(v, x_a, dtype) for v in (alpha_a, sigma_a, alpha_b, sigma_b))
    ratio = a_b / a_a
    denominator = ratio * s_a - s_b
    if not bool((torch.as_tensor(denominator) > 0).all()):
        raise ValueError("the jump must go towards data: need (alpha_b/alpha_a) sigma_a > sigma_b, got "
                         f"alpha_a={alpha_a}, sigma_a={sigma_a}, alpha_b={alpha_b}, sigma_b={sigma_b}")
    return as_result((ratio * x_a.to(dtype) - x_b.to(dtype)) / denominator, x_a.dtype)


def distillation_cost(pred, implied):
    """Eq. (16): per-sample L2 norm ``||pred - implied||_2`` over all non-batch dimensions, float32 ``[B]``."""
    require_tensor("pred", pred)
    require_tensor("implied", implied)
    require_same_shape("implied", implied, "pred", pred)
    if pred.ndim < 1:
        raise ValueError("pred must have a batch dimension")
    diff = pred.to(compute_dtype(pred)) - implied.to(compute_dtype(pred))
    return diff.flatten(1).norm(dim=1).float() if pred.ndim > 1 else diff.abs().float()


def cost_matrix_rf(states, times, velocities):
    """Jump costs over a rectified-flow teacher trajectory, averaged over the batch: ``[K+1, K+1]``.

    ``states[j]`` is the teacher state at ``times[j]`` (``[K+1, B, ...]``, times decreasing), ``velocities[j]``
    the model's velocity there. Entry ``[a, b]`` (b > a) is the mean over samples of
    ``||v(x_a) - implied_velocity(x_a, x_b)||``; entries with b <= a are inf (not a jump).
    """
    return _cost_matrix(states, velocities, lambda a, b: implied_velocity(states[a], states[b], times[a], times[b]))


def cost_matrix_vp(states, alphas, sigmas, eps):
    """As ``cost_matrix_rf`` for a noise-prediction teacher: ``eps[j]`` is the model's noise prediction at
    ``states[j]``, whose schedule values are ``alphas[j]``, ``sigmas[j]``."""
    return _cost_matrix(states, eps, lambda a, b: implied_eps(states[a], states[b], alphas[a], sigmas[a],
                                                              alphas[b], sigmas[b]))


def _cost_matrix(states, preds, implied):
    if len(states) != len(preds):
        raise ValueError(f"states has {len(states)} entries but the predictions have {len(preds)}")
    k = len(states)
    cost = torch.full((k, k), math.inf, dtype=torch.float64)
    for a in range(k - 1):
        for b in range(a + 1, k):
            cost[a, b] = distillation_cost(preds[a], implied(a, b)).double().mean()
    return cost


def select_steps(cost, num_steps):
    """The ``num_steps``-jump path 0 = a_0 < a_1 < ... < a_M = K over the teacher grid with the least summed
    cost (dynamic programming; the adaptive step selection of docs/equations.md §6).

    ``cost[a, b]`` is the cost of one student jump from grid index a to b > a (``[K+1, K+1]``; entries with
    b <= a are ignored; +inf forbids a jump). Returns the list of grid indices ``[0, ..., K]``. Among paths of
    equal cost the one found first wins, so the result is deterministic.
    """
    require_tensor("cost", cost)
    if cost.ndim != 2 or cost.shape[0] != cost.shape[1] or cost.shape[0] < 2:
        raise ValueError(f"cost must be a square [K+1, K+1] matrix with K >= 1, got shape {tuple(cost.shape)}")
    k = cost.shape[0] - 1
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or not 1 <= num_steps <= k:
        raise ValueError(f"num_steps must be an integer in [1, {k}] for a grid of {k} teacher steps, "
                         f"got {num_steps!r}")
    c = cost.detach().double().cpu()
    upper = torch.triu(torch.ones_like(c, dtype=torch.bool), diagonal=1)
    if bool(torch.isnan(c[upper]).any()) or bool((c[upper] == -math.inf).any()):
        raise ValueError("cost contains NaN or -inf above the diagonal; expected finite costs or +inf")
    c = c.tolist()
    # best[m][j]: least cost of reaching index j in exactly m jumps; back[m][j]: the index before j
    best = [[math.inf] * (k + 1) for _ in range(num_steps + 1)]
    back = [[-1] * (k + 1) for _ in range(num_steps + 1)]
    best[0][0] = 0.0
    for m in range(1, num_steps + 1):
        for j in range(m, k + 1):
            for i in range(m - 1, j):
                total = best[m - 1][i] + c[i][j]
                if total < best[m][j]:  # strict: the first predecessor found wins ties
                    best[m][j], back[m][j] = total, i
    if best[num_steps][k] == math.inf:
        raise ValueError(f"no {num_steps}-jump path from 0 to {k} has finite cost")
    path = [k]
    for m in range(num_steps, 0, -1):
        path.append(back[m][path[-1]])
    return path[::-1]


def distillation_reference(teacher, gt, rho):
    """Eq. (18): the student's regression target ``(1 - rho) x_teacher + rho x_gt`` (rho in [0, 1])."""
    require_tensor("teacher", teacher)
    require_tensor("gt", gt)
    require_same_shape("gt", gt, "teacher", teacher)
    require_scalar_or_tensor("rho", rho, teacher, 0.0, 1.0)
    return (1 - rho) * teacher + rho * gt
