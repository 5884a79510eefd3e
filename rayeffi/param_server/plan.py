"""Which parameter lives on which server shard: whole tensors, balanced by size."""

from __future__ import annotations


def shard_plan(sizes: dict[str, int], num_servers: int) -> list[list[str]]:
    """Assign each parameter (``name -> numel``) to one of ``num_servers`` shards.

    Greedy longest-processing-time: largest tensor first, each onto the shard holding
    the fewest elements so far (ties: the lower shard index; equal sizes keep their
    model order). Parameters stay whole, so a layer's mask or optimizer state lives on
    one shard. Within a shard, names keep the model's order. Deterministic: every
    worker and server computes the same plan from the same model.
    """
    if num_servers > len(sizes):
        raise ValueError(
            f"parallel.num_servers {num_servers} is more than the model's {len(sizes)} parameter tensors: "
            f"use at most {len(sizes)}"
        )
    order = {name: index for index, name in enumerate(sizes)}
    loads = [0] * num_servers
    shards: list[list[str]] = [[] for _ in range(num_servers)]
    for name in sorted(sizes, key=lambda n: (-sizes[n], order[n])):
        target = min(range(num_servers), key=lambda k: (loads[k], k))
        shards[target].append(name)
        loads[target] += sizes[name]
    return [sorted(shard, key=order.__getitem__) for shard in shards]
