"""The 2-D worker mesh of intra-layer parallelism: data-parallel x model-parallel.

World rank ``r = dp_index * model_parallel_size + mp_index``: the ranks of one
model-parallel group are contiguous (as in Megatron-LM), and the ranks holding the
same piece of the model in different groups form one data-parallel group.

A group of one rank has no process group at all (``group is None``): every collective
below short-circuits, so the split layers run unchanged in a single process.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist


@dataclass(frozen=True)
class RankGroup:
    """One process group as the split layers see it: its global ranks, in order, and my place."""

    ranks: tuple[int, ...]
    index: int
    group: object = None
    """The ``torch.distributed`` process group, None for a group of one rank."""

    @property
    def size(self) -> int:
        return len(self.ranks)

    @classmethod
    def single(cls) -> RankGroup:
        return cls(ranks=(0,), index=0)


@dataclass(frozen=True)
class Mesh:
    """My model-parallel group (the split layers' collectives) and data-parallel group (DDP)."""

    model_parallel: RankGroup
    data_parallel: RankGroup

    @property
    def world_size(self) -> int:
        return self.model_parallel.size * self.data_parallel.size


def mesh_ranks(world_size: int, model_parallel_size: int) -> tuple[list[list[int]], list[list[int]]]:
    """``(model_parallel_groups, data_parallel_groups)`` as lists of global ranks."""
    if world_size % model_parallel_size:
        raise ValueError(f"{world_size} workers do not split into model-parallel groups of {model_parallel_size}")
    num_groups = world_size // model_parallel_size
    model_groups = [list(range(g * model_parallel_size, (g + 1) * model_parallel_size)) for g in range(num_groups)]
    data_groups = [list(range(m, world_size, model_parallel_size)) for m in range(model_parallel_size)]
    return model_groups, data_groups


def build_mesh(world_rank: int, world_size: int, model_parallel_size: int) -> Mesh:
    """Create the process groups (a collective: every rank calls it, in the same order)."""
    model_groups, data_groups = mesh_ranks(world_size, model_parallel_size)
    return Mesh(_mine(model_groups, world_rank), _mine(data_groups, world_rank))


def _mine(all_groups: list[list[int]], world_rank: int) -> RankGroup:
    mine = None
    for ranks in all_groups:
        # dist.new_group must be entered by every rank for every group, even the ones it is not in
        group = dist.new_group(ranks) if len(ranks) > 1 else None
        if world_rank in ranks:
            mine = RankGroup(tuple(ranks), ranks.index(world_rank), group)
    assert mine is not None
    return mine
