"""Training a causal LM on several torchrun ranks: the student under DDP, the teacher optionally sharded by FSDP.

Each rank reads a fixed share of the training blocks (every world-th block from its rank, the same count on
every rank), reshuffled each epoch. Fixed shares keep a rank's teacher-cache shards valid for every epoch and
rerun, and equal counts give every rank the same number of steps: an FSDP-sharded teacher's forward is a
collective (its layers' weights are gathered from all ranks), so a rank that stepped alone would hang them all.

FSDP here is torch's own (`torch.distributed.fsdp.fully_shard`, FSDP2): each decoder layer is a unit, so only
one layer's full weights exist at a time while the teacher runs; between forwards a rank holds 1/world of them.
"""

from __future__ import annotations

import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def rank_blocks(count: int, rank: int, size: int) -> list[int]:
    """This rank's block indices: rank, rank + size, ... over the largest multiple of `size` blocks."""
    return list(range(rank, count - count % size, size))


def shard_teacher(teacher, device) -> tuple[int, int]:
    """Shard `teacher` in place over the process group with FSDP2 on a mesh of `device`'s type (its shards placed
    there), a unit per decoder layer and the rest at the root; returns (parameters this rank holds, parameters of
    the whole teacher)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from compress.tasks.causal_lm.models import decoder_layers

    total = sum(p.numel() for p in teacher.parameters())
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for layer in decoder_layers(teacher):
        fully_shard(layer, mesh=mesh)
    fully_shard(teacher, mesh=mesh)
    local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in teacher.parameters())
    return local, total


def average_gradients(parameters, size: int) -> None:
    """All-reduce the mean gradient over `size` ranks of parameters DDP does not hold (hidden-state projections)."""
    if size == 1:
        return
    for p in parameters:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= size


def barrier(size: int) -> None:
    """Wait for all `size` ranks (nothing in one process)."""
    if size > 1:
        dist.barrier()
