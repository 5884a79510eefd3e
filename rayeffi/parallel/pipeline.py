"""Pipeline-model parallelism over Ray Train workers, with data parallelism across pipelines.

GPipe (Huang et al., "GPipe: Efficient Training of Giant Neural Networks using Pipeline
Parallelism", NeurIPS 2019): cut the model into K consecutive stages on K workers and
split each batch into M micro-batches, so stage k works on micro-batch m while stage
k+1 works on m-1. With equal stages an ideal schedule idles ``(K-1)/(M+K-1)`` of the
time (the bubble). 1F1B (Narayanan et al., "PipeDream", SOSP 2019; its flush variant)
interleaves one forward with one backward to hold at most K micro-batches of
activations; the interleaved and zero-bubble schedules put several chunks on a worker
to shrink the bubble further. Gradients are averaged over micro-batches, so a step
equals a single-process step on the whole batch.

Workers form a ``(data_parallel, num_stages)`` device mesh: world rank
``w = d x K + k`` holds stage ``k`` of pipeline ``d``. Every pipeline reads the same
global batch; pipeline ``d`` trains on its ``1/D`` share, and after the schedule the
gradients of each stage are averaged over the D replicas of that stage.

The schedules are ``torch.distributed.pipelining``'s, with one ``PipelineStage`` built
by hand per chunk over the process group Ray Train set up (gloo on CPU, nccl on GPU).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh

from rayeffi.parallel.base import Strategy, load_slot_states
from rayeffi.task import CLASSIFICATION
from rayeffi.parallel.pipeline_split import (
    UnitChain,
    buffers_kept,
    chunks_of_worker,
    eval_mode,
    measured_costs,
    parameter_costs,
    pipeline_units,
    plan_chunks,
    timing_sample,
)
from rayeffi.parallel.pipeline_timeline import Timeline

if TYPE_CHECKING:
    from rayeffi.recipe.pipeline import PipelineConfig  # pydantic: annotations only

_WIRE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64)
"""Dtypes an evaluation activation can have (autocast may leave FP16/BF16 outputs)."""
_HEADER_SIZE = 10
"""``[ndim, dtype index, *shape]``, padded: up to 8 dimensions."""

TIMING_ROWS = 16
"""Rows of the micro-batch ``balance: time`` measures each layer on (random features, or token ids)."""

SCHEDULE_CLASSES = {
    "gpipe": "ScheduleGPipe",
    "1f1b": "Schedule1F1B",
    "interleaved_1f1b": "ScheduleInterleaved1F1B",
    "looped_bfs": "ScheduleLoopedBFS",
    "interleaved_zero_bubble": "ScheduleInterleavedZeroBubble",
    "zbv_zero_bubble": "ScheduleZBVZeroBubble",
    "dualpipev": "ScheduleDualPipeV",
}
"""``parallel.schedule`` -> its class in ``torch.distributed.pipelining.schedules``, imported
when a pipeline is built: the package pulls in DTensor and dynamo (0.9 s), which every
other strategy's workers would pay at start-up."""


class LocalChunks(nn.Module):
    """This worker's chunks; parameters keep the full model's names (its state_dict is a slice)."""

    def __init__(self, chunks: list[UnitChain]):
        super().__init__()
        self.chunks = chunks  # plain list: the units are registered below under their own paths
        holder = UnitChain([unit for chunk in chunks for unit in zip(chunk.unit_names, chunk._sequence)])
        for name, child in holder.named_children():
            self.add_module(name, child)

    def forward(self, *args):
        raise RuntimeError("a pipelined model runs through its schedule: use Pipeline.forward_backward / evaluate")

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load this worker's slice of a full model state dict."""
        own = set(self.state_dict())
        return super().load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=strict, assign=assign)


class Pipeline(Strategy):
    name = "pipeline"
    min_world_size = 2

    def __init__(self, world_rank: int, world_size: int, device: torch.device | None, config: PipelineConfig,
                 info: Any = None):
        super().__init__(world_rank, world_size, device, config, info)
        self.num_stages = config.num_stages
        self.data_parallel_size = world_size // config.num_stages
        self.pp_rank, self.dp_rank = world_rank % config.num_stages, world_rank // config.num_stages
        self.timeline: Timeline | None = None
        self._losses: list[torch.Tensor] = []
        self._task = CLASSIFICATION
        self._mean_count: torch.Tensor | None = None

    @classmethod
    def from_config(cls, config, world_rank, world_size, device, info=None) -> Pipeline:
        return cls(world_rank, world_size, device, config, info)

    # -- building -------------------------------------------------------------------------------------------
    def setup(self, model, precision, make_optimizer):
        """One loss scale for the whole pipeline: each chunk runs its forward under the policy's
        autocast, and every stage skips a step when any stage overflowed."""
        model, optimizer = super().setup(model, precision, make_optimizer)
        for chunk in self.local.chunks:
            chunk.autocast = precision.autocast
        # GradScaler creates its scale at the first scale(): stages without the loss need it too
        precision.scale_loss(torch.zeros((), device=self.device))
        return model, optimizer

    def wrap(self, model: nn.Module) -> nn.Module:
        mesh = init_device_mesh(self.device.type, (self.data_parallel_size, self.num_stages),
                                mesh_dim_names=("dp", "pp"))
        self.pp_group, self.dp_group = mesh.get_group("pp"), mesh.get_group("dp")
        units = pipeline_units(model)
        chunks = plan_chunks(units, self.config.num_chunks, self.config.split_points, self._costs(units))
        from rayeffi.recipe.pipeline import V_SCHEDULES  # lazily: the module imports without pydantic

        v_shape = self.config.schedule in V_SCHEDULES
        self.chunk_ids = chunks_of_worker(self.pp_rank, self.num_stages, self.config.chunks_per_worker, v_shape)
        self.holders = {c: r for r in range(self.num_stages)
                        for c in chunks_of_worker(r, self.num_stages, self.config.chunks_per_worker, v_shape)}
        self.chunk_units = [[name for name, _ in chunk] for chunk in chunks]
        self.local = LocalChunks([UnitChain(chunks[c]) for c in self.chunk_ids]).to(self.device)
        self.schedule = None  # built at the first step, once the precision policy is known
        return self.local

    def _costs(self, units) -> list[float]:
        if self.config.split_points or self.config.balance == "params":
            return parameter_costs(units)
        costs = [None]
        if self.world_rank == 0:  # one worker measures, all use its figures: every rank must cut alike
            for _, module in units:
                module.to(self.device)
            sample = timing_sample(units, TIMING_ROWS, self.info.num_features).to(self.device)
            costs = [measured_costs(units, sample)]  # leaves BatchNorm statistics as they were
        dist.broadcast_object_list(costs, src=0)  # sync point
        return costs[0]

    def global_grad_norm(self, local_norm: torch.Tensor) -> torch.Tensor:
        """Each stage holds a part of the model: the squares add up over the stages of a pipeline
        (its replicas hold the same, already averaged, gradients)."""
        squares = (local_norm.to(self.device, torch.float32) ** 2).reshape(1)
        dist.all_reduce(squares, group=self.pp_group)  # sync point: every stage clips by the same factor
        return squares.sqrt().reshape(())

    def agree_on_gradients(self, parts) -> None:
        if self.precision.skips_on_overflow:  # loss-scaled policies skip steps on overflow
            self._agree_on_overflow()

    def _agree_on_overflow(self) -> None:
        """One loss scale for the whole mesh: if any stage's gradients hold an inf/NaN, every
        stage skips the step and backs off the scale.

        Each stage sees only its own gradients. Where another stage overflowed, an inf is
        written into one local gradient, so the precision policy's own path (``unscale_``
        records it, the step is skipped, ``update`` backs off) runs the same everywhere.
        """
        grads = [p.grad for p in self.local.parameters() if p.grad is not None]
        local = any(not torch.isfinite(g).all() for g in grads)
        flag = torch.tensor([float(local)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # sync point: all stages of all pipelines
        if flag.item() and not local and grads:
            grads[0].view(-1)[0] = float("inf")

    def _chunk_examples(self, microbatch: torch.Tensor) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """``(input, output)`` of this worker's chunks for one micro-batch, for static stage shapes.

        Left to itself each ``PipelineStage`` infers its shapes with a training-mode forward of
        made-up inputs, which wrote garbage into BatchNorm's running statistics (NaN validation
        loss, 10% accuracy). Here real rows travel through the chunks in order, as in
        :meth:`evaluate`: eval mode, under each chunk's autocast (the dtypes it really sends),
        every buffer restored afterwards.
        """
        def example(tensor):
            return tensor.detach().requires_grad_(tensor.is_floating_point())

        examples, x, last = {}, microbatch, self.config.num_chunks - 1
        with torch.no_grad(), eval_mode([self.local]), buffers_kept([self.local]):
            for c in range(self.config.num_chunks):
                if self.holders[c] != self.pp_rank:
                    continue
                if c > 0 and self.holders[c - 1] != self.pp_rank:
                    x = self._recv(self.holders[c - 1])  # sync point
                out = self.local.chunks[self.chunk_ids.index(c)](x)
                examples[c], x = (example(x), example(out)), out
                if c < last and self.holders[c + 1] != self.pp_rank:
                    self._send(out, self.holders[c + 1])
        return examples

    def _build_schedule(self, inputs: torch.Tensor):
        from torch.distributed.pipelining import schedules
        from torch.distributed.pipelining.stage import PipelineStage

        # static shapes from real rows in eval mode (see _chunk_examples)
        examples = self._chunk_examples(inputs[: inputs.shape[0] // self.config.num_microbatches])
        stages = [
            PipelineStage(chunk, c, self.config.num_chunks, self.device, input_args=examples[c][0],
                          output_args=examples[c][1], group=self.pp_group)
            for chunk, c in zip(self.local.chunks, self.chunk_ids)
        ]
        if self.timeline is not None:
            for stage in stages:
                self.timeline.instrument(stage)
        schedule_class = getattr(schedules, SCHEDULE_CLASSES[self.config.schedule])
        from rayeffi.recipe.pipeline import SINGLE_STAGE_SCHEDULES

        first = stages[0] if self.config.schedule in SINGLE_STAGE_SCHEDULES else stages
        return schedule_class(first, n_microbatches=self.config.num_microbatches, loss_fn=self._loss_fn)

    def _loss_fn(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self._mean_count is None:
            loss = self._task.loss(outputs, targets)  # FP32 reduction
        else:  # per token: the schedule averages micro-batches, so x M gives sum / mean count (task.py)
            loss = self._task.loss(outputs, targets, self._mean_count / self.config.num_microbatches)
        self._losses.append(loss.detach())
        return self.precision.scale_loss(loss)

    # -- the step ------------------------------------------------------------------------------------------
    @property
    def has_first(self) -> bool:
        return 0 in self.chunk_ids

    @property
    def has_last(self) -> bool:
        return self.config.num_chunks - 1 in self.chunk_ids

    def local_batch(self, inputs, targets, extras):
        """This pipeline's ``1/D`` share of a batch read by every worker."""
        share = inputs.shape[0] // self.data_parallel_size
        rows = slice(self.dp_rank * share, (self.dp_rank + 1) * share)
        return inputs[rows], targets[rows], {name: column[rows] for name, column in extras.items()}

    def forward_backward(self, parts, inputs, targets, extras=None) -> torch.Tensor:
        """The schedule runs forward+backward of all micro-batches, then the data-parallel
        gradient average; returns the loss (the mean over micro-batches, from the last stage)."""
        if self.schedule is None:
            self.schedule = self._build_schedule(inputs)
        targets = self._from_first(targets)
        self._task = parts.task
        self._mean_count = self.mean_count(parts.task.count(targets)) if parts.task.per_token else None
        self._losses = []
        args = (inputs,) if self.has_first else ()
        self.schedule.step(*args, target=targets if self.has_last else None)
        self._average_gradients()  # sync point across the data-parallel replicas of this stage
        # the last M: at the first step the stage's shape inference calls the loss function too
        last = self._losses[-self.config.num_microbatches:]
        loss = torch.stack(last).mean() if self.has_last else torch.zeros((), device=self.device)
        return self._from_last(loss)

    def _from_first(self, tensor: torch.Tensor) -> torch.Tensor:
        """The first stage's copy: labels travel with the inputs (sync point)."""
        tensor = tensor.contiguous()
        dist.broadcast(tensor, group=self.pp_group, group_src=self.holders[0])
        return tensor

    def _from_last(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach().float().contiguous()
        dist.broadcast(tensor, group=self.pp_group, group_src=self.holders[self.config.num_chunks - 1])
        return tensor

    def _average_gradients(self) -> None:
        if self.data_parallel_size == 1:
            return
        params = [p for p in self.local.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        for dtype in {p.grad.dtype for p in params}:
            grads = [p.grad for p in params if p.grad.dtype == dtype]
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat, group=self.dp_group)  # one all-reduce per dtype
            flat /= self.data_parallel_size
            offset = 0
            for g in grads:
                g.copy_(flat[offset:offset + g.numel()].view_as(g))
                offset += g.numel()

    @torch.no_grad()
    def evaluate(self, parts, inputs, targets):
        """``[loss_sum, correct, count]``: the whole batch forward through the chunks in order."""
        targets = self._from_first(targets)
        x = inputs
        outputs = None
        for c in range(self.config.num_chunks):
            holder = self.holders[c]
            if holder != self.pp_rank:
                continue
            if c > 0 and self.holders[c - 1] != self.pp_rank:
                x = self._recv(self.holders[c - 1])
            x = self.local.chunks[self.chunk_ids.index(c)](x)
            if c == self.config.num_chunks - 1:
                outputs = x
            elif self.holders[c + 1] != self.pp_rank:
                self._send(x, self.holders[c + 1])
        sums = torch.zeros(3, device=self.device)  # on the device: nccl broadcasts device tensors
        if outputs is not None:
            sums = parts.task.eval_sums(outputs, targets).float()
        return self._from_last(sums).double()

    def _send(self, tensor, to_pp_rank: int) -> None:
        """A tensor to another stage of this pipeline: its shape and dtype first, then its data,
        both as device tensors (NCCL sends nothing else; gloo takes them too)."""
        tensor = tensor.contiguous()
        header = torch.zeros(_HEADER_SIZE, dtype=torch.int64, device=self.device)
        header[0], header[1] = tensor.dim(), _WIRE_DTYPES.index(tensor.dtype)
        header[2:2 + tensor.dim()] = torch.tensor(tensor.shape, dtype=torch.int64)
        dist.send(header, group=self.pp_group, group_dst=to_pp_rank)
        dist.send(tensor, group=self.pp_group, group_dst=to_pp_rank)

    def _recv(self, from_pp_rank: int) -> torch.Tensor:
        header = torch.empty(_HEADER_SIZE, dtype=torch.int64, device=self.device)
        dist.recv(header, group=self.pp_group, group_src=from_pp_rank)
        ndim, dtype, *shape = header.tolist()  # host sync: the buffer's size depends on it
        tensor = torch.empty(shape[:ndim], dtype=_WIRE_DTYPES[dtype], device=self.device)
        dist.recv(tensor, group=self.pp_group, group_src=from_pp_rank)
        return tensor

    # -- metrics and checkpoints -----------------------------------------------------------------------------
    @property
    def replicas(self) -> int:
        return self.data_parallel_size

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        # the stages of one pipeline hold identical metric sums: add up the pipelines only
        if self.data_parallel_size > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=self.dp_group)  # sync point
        return tensor

    def all_gather_object(self, obj):
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def training_state(self, parts) -> dict[str, Any]:
        """The unsplit model assembled from the first pipeline's stages, this worker's optimizer,
        precision and technique states, and every stage's under ``pipeline_stages`` by pipeline
        rank (collectives)."""
        slices = self.all_gather_object({k: v.detach().cpu() for k, v in self.local.state_dict().items()})
        model: dict[str, torch.Tensor] = {}
        for pp_rank in range(self.num_stages):
            model.update(slices[pp_rank])
        local = super().training_state(parts)
        del local["model"]
        return {"model": model, **local, "pipeline_stages": self.all_gather_object(local)[: self.num_stages]}

    def load_training_state(self, parts, state: dict[str, Any]) -> None:
        self.local.load_state_dict(state["model"])  # this worker's slice
        local = state.get("pipeline_stages", [state] * self.num_stages)[self.pp_rank]
        parts.optimizer.load_state_dict(local["optimizer"])
        load_slot_states(parts, self.precision, local)


def check_pipeline_stage(stage, info) -> None:
    """On the driver, before any worker starts: the model can be cut as the recipe asks."""
    from rayeffi.models import build_model

    config = stage.parallel
    units = pipeline_units(build_model(stage.model, info))
    plan_chunks(units, config.num_chunks, config.split_points, parameter_costs(units))
