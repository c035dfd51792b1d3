"""trajir.best_of_n: batched scoring of N x B candidates (argmax per image, ties to the ODE candidate), and the
rollout of the ODE and N M-SDE branches that the Best-of-N node runs, against independent loops and closed forms."""
import math

import pytest
import torch
from conftest import sample_photo

from trajir import best_of_n
from trajir.best_of_n import select_best
from trajir.rewards import Reward


class Recorder:
    """A reward = mean pixel value (or given per-candidate values); records every call."""

    def __init__(self, values=None):
        self.calls, self.values = [], values

    def __call__(self, images, reference=None):
        self.calls.append((images.clone(), None if reference is None else reference.clone()))
        if self.values is None:
            return images.mean(dim=(1, 2, 3))
        return self.values.reshape(-1)[sum(len(c[0]) for c in self.calls[:-1]):][: len(images)]


def constant_candidates(levels):
    """candidates[n, b] is a flat image of value levels[n][b]."""
    v = torch.tensor(levels, dtype=torch.float32)
    return v[:, :, None, None, None].expand(*v.shape, 3, 8, 8).clone()


def test_best_index_is_the_argmax_per_image_in_one_call():
    levels = [[0.1, 0.9, 0.5], [0.7, 0.2, 0.5], [0.3, 0.4, 0.8]]  # N = 3, B = 3
    reward = Recorder()
    best, scores = select_best(constant_candidates(levels), reward)
    assert best.tolist() == [1, 0, 2]
    torch.testing.assert_close(scores, torch.tensor(levels))
    assert len(reward.calls) == 1 and reward.calls[0][0].shape == (9, 3, 8, 8)


def test_ties_go_to_the_ode_candidate_else_to_the_lowest_index():
    values = torch.tensor([[0.5, 0.2, 0.9], [0.9, 0.2, 0.9], [0.9, 0.2, 0.1]])  # image 1: all tied
    cands = constant_candidates([[0.0] * 3] * 3)
    best, _ = select_best(cands, Recorder(values), ode_index=0)
    assert best.tolist() == [1, 0, 0]  # image 0: 1 and 2 tie, ODE (0) is worse -> lowest of them
    best, _ = select_best(cands, Recorder(values), ode_index=2)
    assert best.tolist() == [2, 2, 0]
    best, _ = select_best(cands, Recorder(values), ode_index=None)
    assert best.tolist() == [1, 0, 0]


def test_nan_scores_never_win():
    values = torch.tensor([[math.nan, math.nan], [0.1, math.nan]])
    best, scores = select_best(constant_candidates([[0.0] * 2] * 2), Recorder(values), ode_index=0)
    assert best.tolist() == [1, 0]  # image 1: everything NaN -> the ODE candidate
    assert torch.isnan(scores[0]).all()


def test_chunks_give_the_same_result_in_fewer_images_per_call():
    levels = torch.rand(4, 3, generator=torch.Generator().manual_seed(0)).tolist()
    full = select_best(constant_candidates(levels), Recorder())
    reward = Recorder()
    chunked = select_best(constant_candidates(levels), reward, chunk_size=5)
    assert [len(c[0]) for c in reward.calls] == [5, 5, 2]
    assert torch.equal(full[0], chunked[0]) and torch.equal(full[1], chunked[1])


def test_each_candidate_is_scored_against_its_own_image_reference():
    reference = torch.stack([torch.full((3, 8, 8), float(b) / 10) for b in range(3)])  # [B = 3, ...]
    reward = Recorder()
    select_best(constant_candidates([[0.0] * 3] * 2), reward, reference=reference)
    images, ref = reward.calls[0]
    assert ref.shape == images.shape == (6, 3, 8, 8)
    for n in range(2):
        for b in range(3):
            assert torch.equal(ref[n * 3 + b], reference[b])


def test_psnr_reward_picks_the_least_noisy_candidate_and_the_ode_on_ties():
    clean = torch.cat([sample_photo("astronaut", (32, 32)), sample_photo("rocket", (32, 32))])
    g = torch.Generator().manual_seed(0)
    noisy = [(clean + s * torch.randn(clean.shape, generator=g)).clamp(0, 1) for s in (0.2, 0.05, 0.1)]
    best, _ = select_best(torch.stack(noisy), Reward.preset("psnr"), reference=clean, ode_index=0)
    assert best.tolist() == [1, 1]
    # two perfect candidates tie at the 100 dB cap: the ODE candidate (index 2 here) wins
    best, _ = select_best(torch.stack([clean, noisy[0], clean]), Reward.preset("psnr"), reference=clean, ode_index=2)
    assert best.tolist() == [2, 2]


def test_bad_arguments_are_refused():
    cands = constant_candidates([[0.1, 0.2]] * 3)
    with pytest.raises(ValueError, match=r"candidates must have shape \[N, B, C, H, W\] with N, B >= 1, "
                                         r"got \(3, 2, 3, 8\)"):
        select_best(cands[..., 0], Recorder())
    with pytest.raises(ValueError, match=r"ode_index is 3; expected None or an integer in \[0, 2\] \(N = 3\)"):
        select_best(cands, Recorder(), ode_index=3)
    with pytest.raises(ValueError, match=r"chunk_size is 0; expected None or a positive integer"):
        select_best(cands, Recorder(), chunk_size=0)
    with pytest.raises(ValueError, match=r"reference has shape \(1, 3, 8, 8\); expected \(2, 3, 8, 8\)"):
        select_best(cands, Recorder(), reference=torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"full-reference metric\(s\) \['psnr'\]: pass reference"):
        select_best(cands, Reward.preset("psnr"))


# --- the rollout -----------------------------------------------------------------------------------------------

SIGMAS = [1.0, 0.8, 0.6, 0.4, 0.2, 0.0]


def toy_denoise(x, sigma):
    """A smooth nonlinear stand-in for a model: x0 depends on x and sigma."""
    return 0.5 * torch.tanh(x) + 0.1 * sigma


def euler_loop(x, sigmas, denoise=toy_denoise):
    """k-diffusion's sample_euler (docs/comfyui.md §3), written out independently."""
    for i in range(len(sigmas) - 1):
        d = (x - denoise(x, sigmas[i])) / sigmas[i]
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return x


@pytest.mark.parametrize("mode", best_of_n.BRANCH_MODES)
@pytest.mark.parametrize("param", ["rf", "ve"])
def test_candidate_0_is_exactly_the_euler_ode(mode, param):
    sigmas = torch.tensor(SIGMAS) * (1 if param == "rf" else 10)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1)) * float(sigmas[0])
    etas = best_of_n.candidate_etas(3, 1.0, "fixed")
    final, x_t, x_next = best_of_n.rollout(toy_denoise, x, sigmas, etas, param, mode, branch_step=2, seed=5)
    assert final.shape == x_t.shape == x_next.shape == (4, 2, 3, 4, 4)
    assert torch.equal(final[0], euler_loop(x, sigmas))
    assert torch.equal(x_t[0], euler_loop(x, sigmas[:3]))  # the ODE state at the branch step
    if mode == "single_step":
        assert all(torch.equal(x_t[n], x_t[0]) for n in range(4))  # every branch leaves the same ODE state
    assert all(float((final[n] - final[0]).abs().max()) > 1e-3 for n in range(1, 4))
    assert float((final[1] - final[2]).abs().max()) > 1e-3


def test_branches_with_eta_0_all_follow_the_ode():
    x = torch.randn(1, 2, 3, 3, generator=torch.Generator().manual_seed(2))
    final, _, _ = best_of_n.rollout(toy_denoise, x, torch.tensor(SIGMAS), best_of_n.candidate_etas(2, 0.0, "fixed"),
                                    "rf", "throughout", branch_step=1)
    assert all(torch.equal(final[n], final[0]) for n in range(3))


@pytest.mark.parametrize("param, scale", [("rf", 1.0), ("ve", 8.0)])
def test_a_branch_step_keeps_the_marginal_of_point_mass_data(param, scale):
    """Point-mass data at c with the exact x0 = c. The rf step is exact at any step size (docs/equations.md §4): it
    lands on ``(1 - t') c + t' eps'``, eps' standard normal. The ve step Eq. (11) is first order: from ``c + s eps``
    it gives ``c + (s' - eta^2 (s - s')) eps + eta sqrt(s^2 - s'^2) z``. The ODE then ends at c."""
    c = 0.3
    sigmas = torch.tensor([1.0, 0.9, 0.7, 0.4, 0.0]) * scale
    t = float(sigmas[0])
    eps = torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(3))
    x = (1 - t) * c + t * eps if param == "rf" else c + t * eps
    etas = best_of_n.candidate_etas(8, 1.0, "fixed")
    final, _, x_next = best_of_n.rollout(lambda x, s: torch.full_like(x, c), x, sigmas, etas, param, "single_step",
                                         branch_step=1, seed=9)
    t_next = float(sigmas[2])
    signal = (1 - t_next) * c if param == "rf" else c
    residual = (x_next[1:] - signal) / t_next
    s, s_next = float(sigmas[1]), t_next
    std = 1.0 if param == "rf" else math.sqrt((s_next - (s - s_next)) ** 2 + s * s - s_next * s_next) / s_next
    assert float(residual.mean()) == pytest.approx(0.0, abs=0.02)
    assert float(residual.std()) == pytest.approx(std, abs=0.02)
    torch.testing.assert_close(final, torch.full_like(final, c), atol=1e-5, rtol=0)


def test_model_calls_are_chunked_in_whole_image_batches():
    sizes, started = [], []

    def denoise(x, sigma):
        sizes.append(x.shape[0])
        return toy_denoise(x, sigma)

    x = torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(4))
    chunk = best_of_n.chunk_size(5, images=2)
    assert chunk == 4
    etas = best_of_n.candidate_etas(4, 0.5, "fixed")
    for mode in best_of_n.BRANCH_MODES:
        sizes.clear(), started.clear()
        best_of_n.rollout(denoise, x, torch.tensor(SIGMAS), etas, "rf", mode, branch_step=2, chunk=chunk,
                          before_call=lambda: started.append(1))
        assert len(started) == len(sizes) == best_of_n.count_model_calls(5, 2, mode, 4, 2, chunk)
        assert all(s <= chunk and s % 2 == 0 for s in sizes)
        assert sum(sizes) == (3 * 2 + 2 * 10 if mode == "single_step" else 5 * 10)


def test_candidate_etas():
    assert best_of_n.candidate_etas(3, 0.5, "fixed") == [0.0, 0.5, 0.5, 0.5]
    etas = best_of_n.candidate_etas(4000, 1.0, "random", seed=1)
    assert etas[0] == 0.0 and all(0 <= e < 1 for e in etas[1:])
    assert sum(e * e for e in etas[1:]) / 4000 == pytest.approx(0.5, abs=0.02)  # eta^2 ~ U[0, 1)
    assert etas == best_of_n.candidate_etas(4000, 1.0, "random", seed=1)


@pytest.mark.parametrize("call, message", [
    (lambda: best_of_n.candidate_etas(0, 1.0, "fixed"), "candidates must be an integer >= 1, got 0"),
    (lambda: best_of_n.candidate_etas(2, math.nan, "fixed"), "eta must be finite and >= 0"),
    (lambda: best_of_n.candidate_etas(2, 1.0, "gaussian"), "eta_mode must be one of"),
    (lambda: best_of_n.chunk_size(0, 1), "batch_size must be an integer >= 1, got 0"),
    (lambda: best_of_n.check_branch_step(4, 5), r"branch_step must lie in \[0, 3\] for a schedule of 5 steps"),
    (lambda: best_of_n.check_branch_step(0, 1), "needs a schedule of at least 2 steps"),
    (lambda: best_of_n.rollout(toy_denoise, torch.zeros(1, 1, 2, 2), torch.tensor(SIGMAS), [0.0, 1.0], "rf",
                               "everywhere"), "mode must be one of"),
])
def test_bad_best_of_n_settings_are_refused(call, message):
    with pytest.raises(ValueError, match=message):
        call()
