"""Cutting a model into pipeline chunks: pure functions, no process group.

A model is pipelined as an ordered list of *units* ``(name, module)`` whose composition
is the model's forward: ``model(x) == units[-1](...units[1](units[0](x)))``. An
``nn.Sequential`` is its own unit list (nested ones are flattened); any other model
says how it flattens with a ``pipeline_units()`` method (the built-in MLP, CNN and
transformer do). Unit names are the modules' names in the model, so a chunk's
``state_dict`` keys are the full model's keys and the chunks of all stages merge back
into the unsplit model's state dict.

Chunks are consecutive runs of units. Their boundaries come from split points (unit
names, or a container whose first unit starts the chunk) or from balancing a cost
per unit (parameter count or measured time): the linear-partition problem, solved
exactly by dynamic programming, minimises the largest chunk's cost, which sets the
pipeline's steady-state step time.
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Sequence

import torch
from torch import nn

from rayeffi.errors import UserError
from rayeffi.models.units import Unit, sequential_units


def pipeline_units(model: nn.Module) -> list[Unit]:
    """The model as an ordered list of units (see the module docstring)."""
    if hasattr(model, "pipeline_units"):
        return list(model.pipeline_units())
    if isinstance(model, nn.Sequential):
        return sequential_units(model)
    lists = [name for name, child in model.named_modules() if isinstance(child, nn.ModuleList) and len(child) > 1]
    hint = (f" (its block list {lists[0]!r} sits between a stem and a head: list them as "
            f"[('stem', ...), ('{lists[0]}.0', ...), ..., ('head', ...)], each taking the previous one's output)"
            if lists else "")
    raise UserError(
        f"parallel.strategy pipeline: model {type(model).__name__} is neither an nn.Sequential nor has a "
        f"pipeline_units() method listing its layers in order as (name, module) pairs whose composition is its "
        f"forward{hint}: give it one, or use data_parallel"
    )


def _point_index(point: str, names: Sequence[str]) -> int:
    for index, name in enumerate(names):
        if name == point or name.startswith(point + "."):
            return index
    raise UserError(
        f"parallel.split_points: no module {point!r} in the model; its layers are: {', '.join(names)}"
    )


def chunk_starts_from_points(names: Sequence[str], points: Sequence[str]) -> list[int]:
    """Index of each chunk's first unit, from split point names (chunk 0 starts at 0)."""
    starts = [0] + [_point_index(point, names) for point in points]
    for previous, start, point in zip(starts, starts[1:], points):
        if start <= previous:
            raise UserError(
                f"parallel.split_points: {point!r} does not come after the previous split point "
                f"(each chunk needs at least one layer, in model order): layers are {', '.join(names)}"
            )
    return starts


def balanced_chunk_starts(costs: Sequence[float], num_chunks: int) -> list[int]:
    """Split ``costs`` into ``num_chunks`` non-empty consecutive runs minimising the largest sum.

    Dynamic programming over (units used, chunks made), O(n^2 k); ties keep chunks early.
    """
    n = len(costs)
    prefix = [0.0]
    for cost in costs:
        prefix.append(prefix[-1] + cost)
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(num_chunks + 1)]  # best[k][i]: first i units in k chunks
    cut = [[0] * (n + 1) for _ in range(num_chunks + 1)]
    best[0][0] = 0.0
    for k in range(1, num_chunks + 1):
        for i in range(k, n - (num_chunks - k) + 1):
            for j in range(k - 1, i):
                value = max(best[k - 1][j], prefix[i] - prefix[j])
                if value < best[k][i] - 1e-12:
                    best[k][i], cut[k][i] = value, j
    starts, i = [], n
    for k in range(num_chunks, 0, -1):
        i = cut[k][i]
        starts.append(i)
    return starts[::-1]


def parameter_costs(units: Sequence[Unit]) -> list[float]:
    """Parameters per unit, plus one so parameter-free layers still count a little."""
    return [1.0 + sum(p.numel() for p in module.parameters()) for _, module in units]


def measured_costs(units: Sequence[Unit], sample: torch.Tensor, repeats: int = 3) -> list[float]:
    """Seconds of forward + backward per unit on ``sample`` (best of ``repeats``); buffers
    such as BatchNorm's running statistics are left as they were."""
    with buffers_kept([module for _, module in units]):
        return _measured_costs(units, sample, repeats)


def _measured_costs(units: Sequence[Unit], sample: torch.Tensor, repeats: int) -> list[float]:
    costs = []
    x = sample
    for _, module in units:
        best = inf = float("inf")
        for _ in range(repeats):
            inputs = x.detach().requires_grad_(x.is_floating_point())
            start = time.perf_counter()
            out = module(inputs)
            if out.requires_grad:
                out.float().sum().backward()
            if out.is_cuda:
                torch.cuda.synchronize()  # kernels run asynchronously: wait before reading the clock
            best = min(best, time.perf_counter() - start)
        module.zero_grad(set_to_none=True)
        costs.append(best if best < inf else 0.0)
        with torch.no_grad():
            x = module(x)
    return costs


def timing_sample(units: Sequence[Unit], num_rows: int, num_features: int) -> torch.Tensor:
    """Rows the ``balance: time`` probe measures on: token ids in range for a model that starts
    with an embedding (random floats would index out of it), random features otherwise."""
    for _, module in units:
        first = next((m for m in module.modules() if next(m.parameters(recurse=False), None) is not None), None)
        if first is None:
            continue
        if isinstance(first, (nn.Embedding, nn.EmbeddingBag)):
            return torch.randint(0, first.num_embeddings, (num_rows, num_features))
        break
    return torch.randn(num_rows, num_features)


@contextlib.contextmanager
def buffers_kept(modules: Sequence[nn.Module]):
    """Restore every buffer (BatchNorm running statistics) of ``modules`` on exit."""
    saved = [(buffer, buffer.detach().clone()) for module in modules for buffer in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


@contextlib.contextmanager
def eval_mode(modules: Sequence[nn.Module]):
    """Every submodule in eval mode (BatchNorm reads its running statistics and leaves them), then back."""
    flags = [(m, m.training) for module in modules for m in module.modules()]
    for module, _ in flags:
        module.training = False
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


def plan_chunks(
    units: Sequence[Unit],
    num_chunks: int,
    split_points: Sequence[str] | None = None,
    costs: Sequence[float] | None = None,
) -> list[list[Unit]]:
    """The units of each chunk, from split points or balanced ``costs`` (default: parameters)."""
    names = [name for name, _ in units]
    if num_chunks > len(units):
        raise UserError(
            f"parallel: {num_chunks} pipeline chunks but the model has only {len(units)} layers "
            f"({', '.join(names)}): lower parallel.num_stages or stages_per_worker"
        )
    if split_points:
        starts = chunk_starts_from_points(names, split_points)
    else:
        starts = balanced_chunk_starts(costs if costs is not None else parameter_costs(units), num_chunks)
    ends = starts[1:] + [len(units)]
    return [list(units[start:end]) for start, end in zip(starts, ends)]


def chunks_of_worker(pp_rank: int, num_stages: int, chunks_per_worker: int, v_shape: bool) -> list[int]:
    """Which chunk indices pipeline worker ``pp_rank`` holds, in execution order.

    Looped placement: ``r, r+K, r+2K, ...``. V placement (ZBV, DualPipeV): ``r, 2K-1-r``,
    so the first and last chunks share worker 0.
    """
    if v_shape:
        return [pp_rank, 2 * num_stages - 1 - pp_rank]
    return [pp_rank + num_stages * v for v in range(chunks_per_worker)]


class UnitChain(nn.Module):
    """Units applied in order, registered under their original paths (so state_dict keys match).

    ``autocast`` is the precision policy's forward context: each pipeline chunk runs its
    own forward under it (the schedule calls chunks, not the whole model).
    """

    def __init__(self, units: Sequence[Unit], autocast: Callable[[], contextlib.AbstractContextManager] | None = None):
        super().__init__()
        self.unit_names = [name for name, _ in units]
        self._sequence = [module for _, module in units]  # a plain list: registered once, below
        for name, module in units:
            parent: nn.Module = self
            *path, leaf = name.split(".")
            for part in path:
                if not hasattr(parent, part):
                    parent.add_module(part, nn.Module())
                parent = getattr(parent, part)
            parent.add_module(leaf, module)
        self.autocast = autocast or contextlib.nullcontext

    def forward(self, x):
        with self.autocast():
            for module in self._sequence:
                x = module(x)
        return x


def split_state_dict_keys(chunks: Sequence[Sequence[Unit]]) -> list[set[str]]:
    """The state_dict keys each chunk owns."""
    return [set(UnitChain(chunk).state_dict()) for chunk in chunks]
