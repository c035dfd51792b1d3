"""Batches for the training loop: a dataset read in the order of an :class:`EpochSampler`, in this process.

No worker processes: samples are small crops, the degradations are vectorised torch, and a single process
keeps the order trivially deterministic. A batch is ``{"lq": [B,3,h,w], "gt": [B,3,h,w], "task": [str],
"name": [str], "epoch": int}``; the loader's state is the sampler's, so checkpointing it resumes exactly.
"""
import torch

from .order import EpochSampler


def collate(samples):
    """Stack samples ``{"lq", "gt", "task", "name"}`` into one batch; all crops must share one size."""
    sizes = {tuple(s["gt"].shape[-2:]) for s in samples}
    if len(sizes) > 1:
        listing = ", ".join(f"{s['name']} {s['gt'].shape[-2]}x{s['gt'].shape[-1]}" for s in samples[:10])
        raise ValueError(f"samples in one batch differ in size ({listing}); set a crop size or use batch size 1")
    return {"lq": torch.stack([s["lq"] for s in samples]), "gt": torch.stack([s["gt"] for s in samples]),
            "task": [s["task"] for s in samples], "name": [s["name"] for s in samples]}


class Loader:
    """Endless batches of ``dataset`` for one rank; see :class:`EpochSampler` for the order and the DDP split.

    Each sample is ``dataset.sample(index, epoch)``, so a crop and its degradation are fixed by the index and
    the epoch alone.
    """

    def __init__(self, dataset, batch_size, *, seed=0, shuffle=True, drop_last=True, rank=0, world_size=1):
        if not hasattr(dataset, "sample") or not hasattr(dataset, "__len__"):
            raise ValueError(f"dataset must have sample(index, draw) and __len__, got {type(dataset).__name__}")
        self.dataset = dataset
        self.sampler = EpochSampler(len(dataset), batch_size, seed=seed, shuffle=shuffle, drop_last=drop_last,
                                    rank=rank, world_size=world_size)

    def __len__(self):
        return len(self.sampler)

    def next_batch(self):
        epoch, indices = self.sampler.next_batch()
        batch = collate([self.dataset.sample(i, epoch) for i in indices])
        batch["epoch"] = epoch
        return batch

    def __iter__(self):
        while True:
            yield self.next_batch()

    def state_dict(self):
        return {"sampler": self.sampler.state_dict()}

    def load_state_dict(self, state):
        if not isinstance(state, dict) or "sampler" not in state:
            raise ValueError("loader state must be a dict from Loader.state_dict() with a 'sampler' entry")
        self.sampler.load_state_dict(state["sampler"])


def evaluation_batches(dataset, batch_size=1, draw=0):
    """One pass over ``dataset`` in index order (the last batch may be short), every sample under ``draw``:
    the fixed batches a held-out validation scores at every evaluation."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    for start in range(0, len(dataset), batch_size):
        yield collate([dataset.sample(i, draw) for i in range(start, min(start + batch_size, len(dataset)))])
