"""Per-sample random draws keyed by the sample, not by the process.

Each training sample gets an integer key from (seed, step, micro-batch, global sample index); every random number
a stage draws for that sample comes from a CPU generator seeded with ``derive_seed(key, stream)``. So a run is
identical on every device, a resumed run continues exactly, and 2 ranks of batch b draw exactly what 1 rank of
batch 2b draws (the DDP equivalence test relies on it).
"""
import torch

from ..data.rng import derive_seed


def sample_keys(seed, step, micro, rank, world_size, batch_size):
    """Keys of this rank's batch: element ``i`` is global element ``i * world_size + rank`` (trajir.data.order)."""
    return [derive_seed(seed, step, micro, i * world_size + rank) for i in range(batch_size)]


def normal(keys, stream, shape, device):
    """``[len(keys), *shape]`` standard normal noise, one generator per sample."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(derive_seed(k, stream)))
                        for k in keys]).to(device)


def uniform(keys, stream, device, count=1):
    """``[len(keys), count]`` uniform draws in [0, 1)."""
    return torch.stack([torch.rand(count, generator=torch.Generator().manual_seed(derive_seed(k, stream)))
                        for k in keys]).to(device)


def integers(keys, stream, low, high):
    """One integer in ``[low, high)`` per sample (a Python list)."""
    return [int(torch.randint(low, high, (1,), generator=torch.Generator().manual_seed(derive_seed(k, stream))))
            for k in keys]
