"""torch.distributed for ``torchrun --nproc_per_node=N -m trajir.train ...``: process group, device, and the few
collectives the loop uses. Every rank calls every collective in the same order; only rank 0 writes files."""
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def enabled(self):
        return self.world_size > 1


def setup(device="auto"):
    """Join the process group when started by torchrun (WORLD_SIZE > 1); pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        device = torch.device("cuda", local if device.index is None else device.index)
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    return DistEnv(rank, world, local, device)


def teardown(env):
    if env.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env):
    if env.enabled:
        dist.barrier()


def any_rank(env, flag):
    """True on every rank if ``flag`` is true on any (used to stop all ranks at the same step)."""
    if not env.enabled:
        return bool(flag)
    t = torch.tensor([1.0 if flag else 0.0], device=env.device if env.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def mean_over_ranks(env, values):
    """Average a dict of floats over ranks (logging)."""
    if not env.enabled or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64,
                     device=env.device if env.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return {k: v / env.world_size for k, v in zip(keys, t.tolist())}
