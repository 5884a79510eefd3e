"""``rayeffi bench intra-layer``: each split mode's per-layer time and traffic against the unsplit layer.

For every split mode and group size P (2 and 4 gloo processes under
``torch.multiprocessing``, one torch thread each), every rank times forward +
backward of the unsplit layer and of its split, in the same run, alternating one
iteration of each, with a barrier before each timed iteration; the figure is the median over iterations of the
slowest rank. Bytes are what one rank sends per forward + backward, counted by
``parallel/collectives.py: TRAFFIC`` at the standard algorithms' volume (ring
all-reduce, all-gather, exact halo sends). The ideal speed-up is P; with fewer cores
than processes both sides share the cores alike, and the bench says so.

Also printed: a picture of how an image and its feature maps are divided among the
workers (tiles, halos, channel and feature ranges).
"""

from __future__ import annotations

import os
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from rayeffi.parallel.collectives import TRAFFIC
from rayeffi.parallel.halo import SpatialGrid, take_tile
from rayeffi.parallel.mesh import RankGroup
from rayeffi.parallel.split_layers import SpatialConv2d
from rayeffi.parallel.split_model import split_chain, split_spatial
from rayeffi.recipe.intra_layer import squarest_grid

BATCH_FC, BATCH_CONV, IMAGE = 256, 32, 28


def _fc_pair() -> nn.Sequential:
    return nn.Sequential(nn.Linear(1024, 4096), nn.ReLU(), nn.Linear(4096, 1024))


def _conv_pair() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 32, 3, padding=1))


# name, builder, input shape, how it is split (P -> module)
MODES: list[tuple[str, Callable[[], nn.Module], tuple[int, ...], str]] = [
    ("fc: column + row pair 1024-4096-1024", _fc_pair, (BATCH_FC, 1024), "fc"),
    ("conv: out + in channel pair 32-64-32, 3x3", _conv_pair, (BATCH_CONV, 32, IMAGE, IMAGE), "channels"),
    ("conv: spatial tiles, same pair", _conv_pair, (BATCH_CONV, 32, IMAGE, IMAGE), "spatial"),
    ("conv: spatial, one 32-64 3x3 layer on a tile", lambda: nn.Conv2d(32, 64, 3, padding=1),
     (BATCH_CONV, 32, IMAGE, IMAGE), "spatial-layer"),
]
"""The pair modes go from the whole input to the whole output (gathers included); the
last row is one convolution inside a spatial region: tile in, tile out, halo only."""


def _split(module: nn.Module, how: str, group: RankGroup) -> nn.Module:
    if how == "fc":
        return split_chain(module, nn.Linear, group)
    if how == "channels":
        return split_chain(module, nn.Conv2d, group)
    grid = SpatialGrid(*squarest_grid(group.size), group)
    if how == "spatial-layer":
        return SpatialConv2d(module, grid)
    return split_spatial(module, grid)


def _time_alternating(unsplit: nn.Module, unsplit_inputs, split: nn.Module, split_inputs, steps: int):
    """Per-iteration seconds of both layers, alternating, so changing machine load hits both alike."""
    times: dict[str, list[float]] = {"unsplit": [], "split": []}
    for step in range(steps + 2):  # two untimed warm-up iterations
        for kind, module, inputs in (("unsplit", unsplit, unsplit_inputs), ("split", split, split_inputs)):
            dist.barrier()
            start = time.perf_counter()
            module(inputs).sum().backward()
            if step >= 2:
                times[kind].append(time.perf_counter() - start)
    return times


def _rank(rank: int, world_size: int, port: int, steps: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    group = RankGroup(tuple(range(world_size)), rank)
    results = {}
    for name, build, shape, how in MODES:
        torch.manual_seed(0)
        unsplit = build()
        split = _split(build(), how, group)
        inputs = torch.randn(*shape)
        split_inputs = inputs
        if how == "spatial-layer":
            split_inputs = take_tile(inputs, SpatialGrid(*squarest_grid(world_size), group))
        TRAFFIC.clear()  # only the split layer communicates (barriers are not counted)
        results[name] = _time_alternating(unsplit, inputs, split, split_inputs, steps)
        results[name]["bytes"] = {k: v // (steps + 2) for k, v in TRAFFIC.items()}
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(world_size: int, steps: int) -> dict:
    """Per mode: median over steps of the slowest rank's ms (unsplit, split) and rank 0's bytes."""
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_rank, args=(world_size, _free_port(), steps, out_dir), nprocs=world_size)
        by_rank = [torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=True) for r in range(world_size)]
    summary = {}
    for name, *_ in MODES:
        slowest = {kind: [1000 * max(ranks) for ranks in zip(*(r[name][kind] for r in by_rank))]
                   for kind in ("unsplit", "split")}
        summary[name] = {kind: statistics.median(times) for kind, times in slowest.items()}
        summary[name]["bytes"] = by_rank[0][name]["bytes"]
    return summary


def picture(height: int, width: int, grid: tuple[int, int], halo: int) -> str:
    """Which rank owns each pixel, and rank 0's tile with the halo it receives ('h')."""
    rows, cols = grid
    tile_h, tile_w = height // rows, width // cols
    owner = [[str((y // tile_h) * cols + x // tile_w) for x in range(width)] for y in range(height)]
    lines = [f"{height}x{width} image on a {rows}x{cols} grid: the digit is the rank owning the pixel"]
    lines += ["  " + " ".join(row) for row in owner]
    lines.append(f"rank 0's {tile_h}x{tile_w} tile after a {halo}-pixel halo exchange "
                 "('0' its own, 'h' received from neighbours, '.' zero padding at the image border):")
    for y in range(-halo, tile_h + halo):
        cells = []
        for x in range(-halo, tile_w + halo):
            inside = 0 <= y < tile_h and 0 <= x < tile_w
            cells.append("0" if inside else ("h" if y >= 0 and x >= 0 else "."))
        lines.append("  " + " ".join(cells))
    return "\n".join(lines)


def channel_picture(num_channels: int, num_ranks: int, label: str) -> str:
    share = num_channels // num_ranks
    spans = ", ".join(f"rank {r}: {r * share}-{(r + 1) * share - 1}" for r in range(num_ranks))
    return f"{label} ({num_channels}) over {num_ranks} ranks: {spans}"


def run(args) -> None:
    steps = 3 if args.quick else 15
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, gloo, 1 torch thread per process, "
          f"median of {steps} forward+backward iterations (slowest rank), unsplit and split alternating on every rank")
    print(f"{'mode':42s} {'P':>2s} {'unsplit ms':>10s} {'split ms':>9s} {'speed-up':>8s}  bytes sent per rank per step")
    for world_size in (2, 4):
        results = measure(world_size, steps)
        for name, row in results.items():
            traffic = ", ".join(f"{kind} {value / 2**10:.1f} KiB" for kind, value in sorted(row["bytes"].items()))
            print(f"{name:42s} {world_size:2d} {row['unsplit']:10.2f} {row['split']:9.2f} "
                  f"{row['unsplit'] / row['split']:7.2f}x  {traffic}")
    if (os.cpu_count() or 1) < 4:
        print(f"note: {os.cpu_count()} CPUs for 4 processes: at P=4 the unsplit and the split layers are both timed "
              "with 4 processes sharing the cores, so the ratio compares one rank's work, not the wall-clock "
              "speed-up a machine with a core per worker would show")
    print()
    print(picture(8, 8, (2, 2), 1))
    print(picture(8, 8, (1, 2), 1).split("\n")[0] + " (1x2): ranks 0 | 1 by columns 0-3 | 4-7")
    print(channel_picture(16, 4, "conv by feature maps: output channels of conv 1"))
    print(channel_picture(64, 4, "fc by output activations: hidden units of fc 1"))
