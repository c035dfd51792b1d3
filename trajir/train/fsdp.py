"""``flux.fsdp = true``: shard the frozen FLUX base over the ranks of a torchrun job (docs/architecture.md §6).

torch FSDP2 (``fully_shard``): every double- and single-stream block is one unit and the embedders plus the final
layer form the root unit. A rank keeps 1/N of each weight and gathers one block's full weights just before the
block runs (again for the recomputation of gradient checkpointing), then frees them. The base holds no grads, so
nothing is reduced for it; the trained ControlNet stays replicated under DDP. Works on CUDA (NCCL) and on the CPU
(gloo), which is how the tests run it.

Every forward pass of a sharded base is a collective: all ranks must call the base the same number of times, in
the same order. The training stages do; validation runs its forward passes on every rank for this reason
(``Stage.validate``).
"""
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard


def shard_frozen_base(base: nn.Module, env) -> nn.Module:
    """Shard ``base`` (a trajir ``Flux``, frozen, on the CPU or ``env.device``) across ``env``'s ranks in place.

    FSDP moves each unit to ``env.device`` as it shards it, so a base loaded on the CPU never has to fit on one
    GPU whole. Returns ``base``.
    """
    if not env.enabled:
        raise ValueError("flux.fsdp = true shards the frozen base across ranks, but this run has 1 process; start it "
                         "with torchrun --nproc_per_node=N (N >= 2) or set flux.fsdp = false")
    if any(p.requires_grad for p in base.parameters()):
        raise ValueError("shard_frozen_base expects a frozen base (freeze it first): FSDP here never reduces grads")
    mesh = init_device_mesh(env.device.type, (env.world_size,))
    for block in (*base.double_blocks, *base.single_blocks):
        fully_shard(block, mesh=mesh, reshard_after_forward=True)
    fully_shard(base, mesh=mesh, reshard_after_forward=True)
    return base
