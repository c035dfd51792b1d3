"""The data order: a seeded, epoch-based shuffle cut into batches, resumable and split across ranks.

Epoch ``e`` visits the global order ``P_e = randperm(num_samples)`` drawn from ``derive_seed(seed, e)`` (or
``0..n-1`` without shuffling), trimmed (``drop_last``) or wrapped around (otherwise) to a multiple of the
global batch ``G = batch_size * world_size``. Global step ``s`` of the epoch covers ``P_e[s*G : (s+1)*G]``, and
rank ``r`` takes the strided part ``P_e[s*G + r :: world_size]`` of it, so element ``i`` of rank ``r``'s batch is
element ``i * world_size + r`` of the global batch.

The correspondence the trainer's DDP test relies on: with ``world_size`` ranks of batch ``b``, step ``s`` of
epoch ``e`` covers exactly the samples of step ``s`` of one rank with batch ``world_size * b`` (same seed), and
global element ``j`` sits on rank ``j % world_size`` at position ``j // world_size``. Datasets key each sample
by ``(index, epoch)``, never by rank, so the samples themselves are equal too.

The state is ``(epoch, step)`` plus what fixes the order (seed, sizes); a run resumed from ``state_dict()``
yields exactly the batches the uninterrupted run would have yielded next, also with another world size as long
as the global batch is the same.
"""
import torch

from .rng import derive_seed


def _positive_int(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


class EpochSampler:
    """Batches of dataset indices for one rank: ``next_batch() -> (epoch, [indices])``, forever."""

    def __init__(self, num_samples, batch_size, *, seed=0, shuffle=True, drop_last=True, rank=0, world_size=1):
        self.num_samples = _positive_int("num_samples", num_samples)
        self.batch_size = _positive_int("batch_size", batch_size)
        self.world_size = _positive_int("world_size", world_size)
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
            raise ValueError(f"rank must be an integer in 0..{world_size - 1}, got {rank!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        self.rank, self.seed, self.shuffle, self.drop_last = rank, seed, bool(shuffle), bool(drop_last)
        self.global_batch = self.batch_size * self.world_size
        if self.drop_last and self.num_samples < self.global_batch:
            raise ValueError(f"num_samples {num_samples} is smaller than the global batch {self.global_batch} "
                             f"(batch_size {batch_size} x world_size {world_size}); with drop_last no batch "
                             "would ever be formed")
        self.epoch, self.step = 0, 0
        self._order = None  # (epoch, global order) cached for the current epoch

    @property
    def batches_per_epoch(self):
        full, rest = divmod(self.num_samples, self.global_batch)
        return full if self.drop_last or rest == 0 else full + 1

    def __len__(self):
        return self.batches_per_epoch

    def global_order(self, epoch):
        """The epoch's global order, trimmed or wrapped to ``batches_per_epoch * global_batch`` indices."""
        if self.shuffle:
            g = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
            order = torch.randperm(self.num_samples, generator=g)
        else:
            order = torch.arange(self.num_samples)
        total = self.batches_per_epoch * self.global_batch
        if total > self.num_samples:
            # Wrap around like DistributedSampler, so every rank gets full batches and reaches every collective.
            order = order.repeat(-(-total // self.num_samples))
        return order[:total].tolist()

    def next_batch(self):
        """``(epoch, indices)`` of this rank's next batch; advances the position."""
        if self.step >= self.batches_per_epoch:
            self.epoch, self.step = self.epoch + 1, 0
        if self._order is None or self._order[0] != self.epoch:
            self._order = (self.epoch, self.global_order(self.epoch))
        start = self.step * self.global_batch
        indices = self._order[1][start + self.rank:start + self.global_batch:self.world_size]
        epoch = self.epoch
        self.step += 1
        return epoch, indices

    def __iter__(self):
        while True:
            yield self.next_batch()

    def state_dict(self):
        """Plain ints: the position, and what must match for ``load_state_dict``."""
        return {"epoch": self.epoch, "step": self.step, "seed": self.seed, "num_samples": self.num_samples,
                "global_batch": self.global_batch, "shuffle": self.shuffle, "drop_last": self.drop_last}

    def load_state_dict(self, state):
        """Continue from ``state``; the order-defining fields must match this sampler."""
        for key in ("seed", "num_samples", "global_batch", "shuffle", "drop_last"):
            if key not in state:
                raise ValueError(f"sampler state lacks {key!r}; expected a dict from EpochSampler.state_dict()")
            mine = getattr(self, key)
            if state[key] != mine:
                raise ValueError(f"sampler state has {key} = {state[key]!r} but this sampler has {mine!r}; "
                                 "a resumed run must keep the data order settings")
        epoch, step = state.get("epoch"), state.get("step")
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (epoch, step)):
            raise ValueError(f"sampler state needs non-negative integer epoch and step, got {epoch!r}, {step!r}")
        if step > self.batches_per_epoch:
            raise ValueError(f"sampler state step {step} exceeds the {self.batches_per_epoch} batches per epoch")
        self.epoch, self.step = epoch, step
