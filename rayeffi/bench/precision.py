"""``rayeffi bench precision``: step time and activation memory, FP32 against BF16 autocast.

On CPUs (this file); ``--device cuda`` runs every policy on a GPU with MFU (``precision_gpu.py``).

One workload per model family, all measured in the same run: a wide MLP
(1024-2048-2048-10, batch 256), the small CNN (``rayeffi.models.ConvNet``, 28x28
single-channel images, channels 16-32, batch 256), the ``lm`` transformer language model
and the ``lstm_lm`` LSTM language model (d_model 64, 2 layers, 32 sequences of 64 bytes,
256 symbols: ``examples/language_model.yaml``'s size on one of its two workers). Each
policy trains with rayeffi's own ``train_step`` (SGD with momentum, random data): step
time is the median over timed steps after warm-up,
and the policies alternate for ``rounds`` rounds so drifting machine load hits both;
the figure printed is the median over rounds.

Activation memory is measured exactly, not sampled: the bytes of every tensor autograd
saves for backward during one forward + loss (``torch.autograd.graph.saved_tensors_hooks``),
each storage counted once, the model's own parameters excluded (they exist with or
without a forward). Autocast also saves the BF16 copies of the weights its matmuls
used; those are reported in their own column. FP16 is not timed on CPUs: PyTorch has no fast FP16 kernels there
(a 4096x4096 FP16 matmul took 507 s on the benchmark machine); time it on a GPU.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from rayeffi.errors import UserError
from rayeffi.models.convnet import ConvNet
from rayeffi.models.mlp import MLP
from rayeffi.parallel import DataParallel
from rayeffi.precision import PRECISIONS, Precision
from rayeffi.models.lm import TransformerLM
from rayeffi.models.lstm_lm import LSTMLM
from rayeffi.task import CLASSIFICATION, LanguageModeling, Task
from rayeffi.worker.build import assemble
from rayeffi.worker.step import StepParts, train_step

POLICIES = ("fp32", "bf16")
BATCH = 256


LM_VOCAB, LM_SEQ_LEN, LM_BATCH = 256, 64, 32


@dataclass(frozen=True)
class Workload:
    name: str
    build: Callable[[], nn.Module]
    num_features: int
    token_ids: bool = False
    """Language models: ``[LM_BATCH, LM_SEQ_LEN]`` token ids in, the next tokens as targets."""

    @property
    def task(self) -> Task:
        return LanguageModeling() if self.token_ids else CLASSIFICATION


WORKLOADS = (
    Workload("MLP 1024-2048-2048-10", lambda: MLP(1024, 10, (2048, 2048)), 1024),
    Workload("CNN 1x28x28, conv 16-32, fc 64", lambda: ConvNet((1, 28, 28), 10, (16, 32)), 28 * 28),
    Workload("LM transformer d64 x2, 32x64 tokens", lambda: TransformerLM(LM_VOCAB, LM_SEQ_LEN, 64, 2, 4),
             LM_SEQ_LEN, token_ids=True),
    Workload("LSTM LM d64 x2, 32x64 tokens", lambda: LSTMLM(LM_VOCAB, 64, 2), LM_SEQ_LEN, token_ids=True),
)


def _parts(workload: Workload, policy: str, device: torch.device) -> StepParts:
    torch.manual_seed(0)
    precision: Precision = PRECISIONS[policy]()
    return assemble(workload.build(), DataParallel(device=device), precision,
                    lambda m: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9), task=workload.task)


def _batch(workload: Workload, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    if workload.token_ids:
        tokens = torch.randint(0, LM_VOCAB, (LM_BATCH, LM_SEQ_LEN + 1), generator=generator)
        return tokens[:, :-1].to(device), tokens[:, 1:].to(device)
    inputs = torch.rand(BATCH, workload.num_features, generator=generator)
    return inputs.to(device), torch.randint(0, 10, (BATCH,), generator=generator).to(device)


def step_ms(parts: StepParts, inputs: torch.Tensor, targets: torch.Tensor, warmup: int, steps: int) -> float:
    """Median milliseconds of one ``train_step`` after ``warmup`` untimed steps."""
    synchronize = torch.cuda.synchronize if inputs.is_cuda else (lambda: None)
    for _ in range(warmup):
        train_step(parts, inputs, targets)
    times = []
    for _ in range(steps):
        synchronize()
        start = time.perf_counter()
        train_step(parts, inputs, targets)
        synchronize()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def saved_bytes(parts: StepParts, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[int, int]:
    """``(activation bytes, weight-copy bytes)`` autograd keeps for backward over one forward + loss.

    Each storage is counted once; the model's own parameters are left out. A saved
    tensor with a parameter's shape but another dtype is autocast's low-precision copy
    of that weight, counted apart from the activations.
    """
    parameters = {p.data_ptr() for p in parts.model.parameters()}
    parameter_shapes = {tuple(p.shape) for p in parts.model.parameters()}
    activations: dict[int, int] = {}
    weight_copies: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            kind = weight_copies if tuple(tensor.shape) in parameter_shapes else activations
            kind[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        with parts.precision.autocast():
            loss = parts.task.loss(parts.model(inputs), targets)
    del loss
    return sum(activations.values()), sum(weight_copies.values())


def measure(workload: Workload, device: torch.device, rounds: int, steps: int) -> dict[str, dict[str, float]]:
    inputs, targets = _batch(workload, device)
    times: dict[str, list[float]] = {policy: [] for policy in POLICIES}
    memory: dict[str, tuple[int, int]] = {}
    for _ in range(rounds):
        for policy in POLICIES:  # alternate, so a change in machine load hits both policies
            parts = _parts(workload, policy, device)
            times[policy].append(step_ms(parts, inputs, targets, warmup=3, steps=steps))
            memory[policy] = saved_bytes(parts, inputs, targets)
    return {policy: {"ms": statistics.median(times[policy]), "rounds_ms": times[policy],
                     "activation_mib": memory[policy][0] / 2**20, "weight_copy_mib": memory[policy][1] / 2**20}
            for policy in POLICIES}


def run(args) -> None:
    device = getattr(args, "device", None) or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise UserError("bench precision --device cuda: no CUDA device is visible here "
                            "(torch.cuda.is_available() is False): run it on a GPU machine or use --device cpu")
        from rayeffi.bench.precision_gpu import run_gpu

        return run_gpu(args.quick)
    device = torch.device("cpu")
    rounds, steps = (1, 5) if args.quick else (3, 20)
    print(f"device: {device} ({torch.get_num_threads()} torch threads), batch {BATCH} ({LM_BATCH} sequences of "
          f"{LM_SEQ_LEN} tokens for the language models), SGD momentum 0.9, "
          f"median of {steps} steps, median of {rounds} alternating rounds")
    print("memory: bytes saved for backward over one forward + loss (torch.autograd.graph.saved_tensors_hooks, "
          "parameters excluded); autocast's low-precision weight copies listed apart")
    print(f"{'workload':34s} {'policy':6s} {'step ms':>9s} {'activation MiB':>15s} {'weight copies MiB':>18s}")
    for workload in WORKLOADS:
        results = measure(workload, device, rounds, steps)
        for policy in POLICIES:
            row = results[policy]
            rounds_text = ", ".join(f"{ms:.1f}" for ms in row["rounds_ms"])
            print(f"{workload.name:34s} {policy:6s} {row['ms']:9.1f} {row['activation_mib']:15.2f} "
                  f"{row['weight_copy_mib']:18.2f}   (rounds: {rounds_text})")
        fp32, bf16 = results["fp32"], results["bf16"]
        print(f"{workload.name:34s} bf16 speed-up {fp32['ms'] / bf16['ms']:.2f}x "
              f"(bf16/fp32 step time {bf16['ms'] / fp32['ms']:.2f}), "
              f"activation memory bf16/fp32 {bf16['activation_mib'] / fp32['activation_mib']:.2f}x")
    print("fp16: not timed on CPU (no fast FP16 kernels; a 4096x4096 FP16 matmul took 507 s here): "
          "time it on a GPU")
