"""The data order: epochs are permutations, resume continues exactly, ranks split the global batch."""
import json

import pytest
import torch

from trajir.data import EpochSampler, Loader, SyntheticPairs, collate, evaluation_batches


def _take(sampler, n):
    return [sampler.next_batch() for _ in range(n)]


def test_epochs_are_seeded_permutations():
    s = EpochSampler(12, 4, seed=1, drop_last=False)
    assert len(s) == 3
    batches = _take(s, 6)
    assert [e for e, _ in batches] == [0, 0, 0, 1, 1, 1]
    epoch0 = [i for _, b in batches[:3] for i in b]
    epoch1 = [i for _, b in batches[3:] for i in b]
    assert sorted(epoch0) == sorted(epoch1) == list(range(12)) and epoch0 != epoch1
    assert epoch0 != [i for _, b in _take(EpochSampler(12, 4, seed=2), 3) for i in b]
    assert [i for _, b in _take(EpochSampler(12, 4, shuffle=False), 3) for i in b] == list(range(12))


def test_drop_last_trims_and_padding_wraps():
    trimmed = EpochSampler(10, 4, seed=0)
    assert len(trimmed) == 2 and len({i for _, b in _take(trimmed, 2) for i in b}) == 8
    padded = EpochSampler(10, 4, seed=0, drop_last=False)
    order = padded.global_order(0)
    assert len(padded) == 3 and len(order) == 12 and order[10:] == order[:2] and sorted(order[:10]) == list(range(10))


@pytest.mark.parametrize("stop", [1, 3, 5, 7])
def test_resume_continues_the_uninterrupted_order(stop):
    straight = _take(EpochSampler(10, 3, seed=5, drop_last=False), 12)
    first = EpochSampler(10, 3, seed=5, drop_last=False)
    _take(first, stop)
    state = json.loads(json.dumps(first.state_dict()))  # checkpoints store it as plain data
    resumed = EpochSampler(10, 3, seed=5, drop_last=False)
    resumed.load_state_dict(state)
    assert _take(resumed, 12 - stop) == straight[stop:]


@pytest.mark.parametrize("world, batch, drop_last", [(2, 2, True), (2, 3, False), (3, 2, False), (4, 1, True)])
def test_ranks_split_the_global_batch(world, batch, drop_last):
    """World size ``W`` with batch ``b`` sees, step for step, what one rank with batch ``W*b`` sees:
    global element ``j`` is element ``j // W`` of rank ``j % W``."""
    single = _take(EpochSampler(11, world * batch, seed=9, drop_last=drop_last), 8)
    ranks = [_take(EpochSampler(11, batch, seed=9, drop_last=drop_last, rank=r, world_size=world), 8)
             for r in range(world)]
    for step, (epoch, full) in enumerate(single):
        assert all(ranks[r][step][0] == epoch for r in range(world))
        assert all(len(ranks[r][step][1]) == batch for r in range(world))
        assert full == [ranks[j % world][step][1][j // world] for j in range(world * batch)]


def test_state_moves_between_world_sizes_with_the_same_global_batch():
    one = EpochSampler(20, 4, seed=2)
    _take(one, 3)
    two = [EpochSampler(20, 2, seed=2, rank=r, world_size=2) for r in range(2)]
    for s in two:
        s.load_state_dict(one.state_dict())
    epoch, full = one.next_batch()
    halves = [s.next_batch() for s in two]
    assert epoch == halves[0][0] == halves[1][0] == 0
    assert full == [halves[j % 2][1][j // 2] for j in range(4)]


def test_sampler_errors():
    with pytest.raises(ValueError,
                       match=r"num_samples 3 is smaller than the global batch 4 \(batch_size 2 x world_size 2\)"):
        EpochSampler(3, 2, world_size=2)
    with pytest.raises(ValueError, match=r"rank must be an integer in 0..1, got 2"):
        EpochSampler(8, 2, rank=2, world_size=2)
    s = EpochSampler(8, 2, seed=1)
    with pytest.raises(ValueError, match=r"sampler state has seed = 2 but this sampler has 1"):
        s.load_state_dict(EpochSampler(8, 2, seed=2).state_dict())
    with pytest.raises(ValueError, match=r"sampler state has global_batch = 4 but this sampler has 2"):
        s.load_state_dict(EpochSampler(8, 4, seed=1).state_dict())
    with pytest.raises(ValueError, match=r"sampler state lacks 'seed'"):
        s.load_state_dict({"epoch": 0, "step": 0})


@pytest.fixture(scope="module")
def pairs():
    g = torch.Generator().manual_seed(0)
    return SyntheticPairs([torch.rand(3, 24, 24, generator=g) for _ in range(6)], "denoise", seed=1, crop=16)


def test_loader_resume_gives_identical_batches(pairs):
    straight = Loader(pairs, 2, seed=4)
    expected = [straight.next_batch() for _ in range(5)]
    first = Loader(pairs, 2, seed=4)
    [first.next_batch() for _ in range(2)]
    resumed = Loader(pairs, 2, seed=4)
    resumed.load_state_dict(first.state_dict())
    for want in expected[2:]:
        got = resumed.next_batch()
        assert torch.equal(got["lq"], want["lq"]) and got["name"] == want["name"] and got["epoch"] == want["epoch"]
    assert expected[3]["epoch"] == 1 and expected[0]["task"] == ["denoise", "denoise"]


def test_two_rank_loaders_interleave_to_the_single_batch(pairs):
    whole = Loader(pairs, 4, seed=8, drop_last=False).next_batch()
    halves = [Loader(pairs, 2, seed=8, drop_last=False, rank=r, world_size=2).next_batch() for r in range(2)]
    interleaved = torch.stack([halves[j % 2]["lq"][j // 2] for j in range(4)])
    assert torch.equal(interleaved, whole["lq"])


def test_evaluation_batches_and_collate(pairs):
    batches = list(evaluation_batches(pairs, 4))
    assert [len(b["name"]) for b in batches] == [4, 2]
    assert [n for b in batches for n in b["name"]] == pairs.names
    assert torch.equal(batches[1]["gt"][0], pairs.sample(4, 0)["gt"])
    odd = [{"lq": torch.zeros(3, 8, 8), "gt": torch.zeros(3, 8, 8), "task": "t", "name": "a"},
           {"lq": torch.zeros(3, 8, 9), "gt": torch.zeros(3, 8, 9), "task": "t", "name": "b"}]
    with pytest.raises(ValueError, match=r"samples in one batch differ in size \(a 8x8, b 8x9\); set a crop size"):
        collate(odd)
