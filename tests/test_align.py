"""best_of_n: batched scoring of N x B candidates, argmax per image, ties to the ODE candidate."""
import math

import pytest
import torch
from conftest import sample_photo

from trajir.align import best_of_n
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
    best, scores = best_of_n(constant_candidates(levels), reward)
    assert best.tolist() == [1, 0, 2]
    torch.testing.assert_close(scores, torch.tensor(levels))
    assert len(reward.calls) == 1 and reward.calls[0][0].shape == (9, 3, 8, 8)


def test_ties_go_to_the_ode_candidate_else_to_the_lowest_index():
    values = torch.tensor([[0.5, 0.2, 0.9], [0.9, 0.2, 0.9], [0.9, 0.2, 0.1]])  # image 1: all tied
    cands = constant_candidates([[0.0] * 3] * 3)
    best, _ = best_of_n(cands, Recorder(values), ode_index=0)
    assert best.tolist() == [1, 0, 0]  # image 0: 1 and 2 tie, ODE (0) is worse -> lowest of them
    best, _ = best_of_n(cands, Recorder(values), ode_index=2)
    assert best.tolist() == [2, 2, 0]
    best, _ = best_of_n(cands, Recorder(values), ode_index=None)
    assert best.tolist() == [1, 0, 0]


def test_nan_scores_never_win():
    values = torch.tensor([[math.nan, math.nan], [0.1, math.nan]])
    best, scores = best_of_n(constant_candidates([[0.0] * 2] * 2), Recorder(values), ode_index=0)
    assert best.tolist() == [1, 0]  # image 1: everything NaN -> the ODE candidate
    assert torch.isnan(scores[0]).all()


def test_chunks_give_the_same_result_in_fewer_images_per_call():
    levels = torch.rand(4, 3, generator=torch.Generator().manual_seed(0)).tolist()
    full = best_of_n(constant_candidates(levels), Recorder())
    reward = Recorder()
    chunked = best_of_n(constant_candidates(levels), reward, chunk_size=5)
    assert [len(c[0]) for c in reward.calls] == [5, 5, 2]
    assert torch.equal(full[0], chunked[0]) and torch.equal(full[1], chunked[1])


def test_each_candidate_is_scored_against_its_own_image_reference():
    reference = torch.stack([torch.full((3, 8, 8), float(b) / 10) for b in range(3)])  # [B = 3, ...]
    reward = Recorder()
    best_of_n(constant_candidates([[0.0] * 3] * 2), reward, reference=reference)
    images, ref = reward.calls[0]
    assert ref.shape == images.shape == (6, 3, 8, 8)
    for n in range(2):
        for b in range(3):
            assert torch.equal(ref[n * 3 + b], reference[b])


def test_psnr_reward_picks_the_least_noisy_candidate_and_the_ode_on_ties():
    clean = torch.cat([sample_photo("astronaut", (32, 32)), sample_photo("rocket", (32, 32))])
    g = torch.Generator().manual_seed(0)
    noisy = [(clean + s * torch.randn(clean.shape, generator=g)).clamp(0, 1) for s in (0.2, 0.05, 0.1)]
    best, _ = best_of_n(torch.stack(noisy), Reward.preset("psnr"), reference=clean, ode_index=0)
    assert best.tolist() == [1, 1]
    # two perfect candidates tie at the 100 dB cap: the ODE candidate (index 2 here) wins
    best, _ = best_of_n(torch.stack([clean, noisy[0], clean]), Reward.preset("psnr"), reference=clean, ode_index=2)
    assert best.tolist() == [2, 2]


def test_bad_arguments_are_refused():
    cands = constant_candidates([[0.1, 0.2]] * 3)
    with pytest.raises(ValueError, match=r"candidates must have shape \[N, B, C, H, W\] with N, B >= 1, "
                                         r"got \(3, 2, 3, 8\)"):
        best_of_n(cands[..., 0], Recorder())
    with pytest.raises(ValueError, match=r"ode_index is 3; expected None or an integer in \[0, 2\] \(N = 3\)"):
        best_of_n(cands, Recorder(), ode_index=3)
    with pytest.raises(ValueError, match=r"chunk_size is 0; expected None or a positive integer"):
        best_of_n(cands, Recorder(), chunk_size=0)
    with pytest.raises(ValueError, match=r"reference has shape \(1, 3, 8, 8\); expected \(2, 3, 8, 8\)"):
        best_of_n(cands, Recorder(), reference=torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"full-reference metric\(s\) \['psnr'\]: pass reference"):
        best_of_n(cands, Reward.preset("psnr"))
