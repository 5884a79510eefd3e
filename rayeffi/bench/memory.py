"""``rayeffi bench memory``: activation memory and step time with and without activation checkpointing.

Per model family (the built-in MLP, CNN and LM, and a Hugging Face BERT classifier when
``transformers`` is installed), the same model at the same seed trains with rayeffi's
``train_step`` plain and with every block checkpointed (``models/checkpointing.py``).

Memory is counted exactly, on any device, by :class:`LiveBytes`: every tensor an operator
creates during one forward + loss + backward is counted while it is alive (each storage
once; the inputs and the parameters existed before and are not counted). Two figures:
``held`` is what is alive when the forward and loss end (the activations kept for the
backward: what checkpointing cuts), ``peak`` the most alive at once over the whole step
(the backward's gradients, and a checkpointed block's recomputed activations, included).
Step time is the median over timed steps after warm-up, the two arms alternating for
``rounds`` rounds. Last, the largest batch whose peak fits ``--budget-mib``, each way.
"""

from __future__ import annotations

import statistics
import weakref
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from rayeffi.models.checkpointing import checkpoint_blocks
from rayeffi.models.convnet import ConvNet
from rayeffi.models.lm import TransformerLM
from rayeffi.models.mlp import MLP
from rayeffi.parallel import DataParallel
from rayeffi.precision import FP32
from rayeffi.task import CLASSIFICATION, LanguageModeling, Task, logits_of
from rayeffi.worker.build import assemble
from rayeffi.worker.step import StepParts, train_step


class LiveBytes(TorchDispatchMode):
    """Bytes of the tensors operators created that are still alive: now (``live``) and at most (``peak``)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._storages: dict[int, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                self._count(tensor)
        return out

    def _count(self, tensor: torch.Tensor) -> None:
        key = tensor.untyped_storage().data_ptr()
        if not key or key in self._storages:
            return  # a view of a storage already counted
        self._storages[key] = tensor.untyped_storage().nbytes()
        self.live += self._storages[key]
        self.peak = max(self.peak, self.live)
        weakref.finalize(tensor, self._free, key)  # the tensor's memory goes with its last reference

    def _free(self, key: int) -> None:
        self.live -= self._storages.pop(key)


def step_memory(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, task: Task) -> tuple[int, int]:
    """``(held, peak)`` bytes of one forward + loss + backward of ``model`` (gradients cleared after)."""
    model.train()
    with LiveBytes() as counter:
        outputs = logits_of(model(inputs))
        loss = task.loss(outputs, targets, task.count(targets) if task.per_token else None)
        held = counter.live
        loss.backward()
        del outputs, loss
    model.zero_grad(set_to_none=True)
    return held, counter.peak


@dataclass(frozen=True)
class Family:
    name: str
    build: Callable[[], nn.Module]
    batch: Callable[[int, torch.Generator], tuple[torch.Tensor, torch.Tensor]]
    batch_size: int
    task: Task = CLASSIFICATION


def _rows(num_features: int, num_classes: int):
    return lambda n, g: (torch.rand(n, num_features, generator=g), torch.randint(0, num_classes, (n,), generator=g))


def _tokens(seq_len: int, vocab: int, num_classes: int | None = None):
    def batch(n, g):
        ids = torch.randint(0, vocab, (n, seq_len), generator=g)
        if num_classes is None:  # next-token targets
            return ids, torch.randint(0, vocab, (n, seq_len), generator=g)
        return ids, torch.randint(0, num_classes, (n,), generator=g)
    return batch


def families() -> list[Family]:
    found = [
        Family("MLP 784-1024x3-10", lambda: MLP(784, 10, (1024, 1024, 1024)), _rows(784, 10), 256),
        Family("CNN 1x28x28 conv 16-32", lambda: ConvNet((1, 28, 28), 10, (16, 32)), _rows(784, 10), 128),
        Family("LM d256 x4 layers, seq 128", lambda: TransformerLM(256, 128, 256, 4, 4), _tokens(128, 256), 32,
               LanguageModeling()),
    ]
    try:
        from rayeffi.models.hf import bert_classifier

        bert_classifier(8, 2)  # transformers is installed
        found.append(Family("HF BERT h128 x4 layers, seq 64", lambda: bert_classifier(
            64, 10, vocab_size=256, hidden_size=128, num_layers=4, num_heads=4, intermediate_size=512),
            _tokens(64, 256, 10), 64))
    except Exception:  # noqa: BLE001  (no transformers: the family is left out, and said so)
        print("HF BERT: left out (pip install 'transformers<5' to include it)")
    return found


def _parts(family: Family, checkpointed: bool) -> StepParts:
    torch.manual_seed(0)
    model = family.build()
    if checkpointed:
        checkpoint_blocks(model)
    return assemble(model, DataParallel(), FP32(), lambda m: torch.optim.SGD(m.parameters(), lr=0.01), task=family.task)


def _step_ms(parts: StepParts, inputs, targets, warmup: int, steps: int) -> float:
    import time

    for _ in range(warmup):
        train_step(parts, inputs, targets)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        train_step(parts, inputs, targets)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def largest_batch(family: Family, checkpointed: bool, budget_bytes: int) -> int:
    """The largest batch (a multiple of 8) whose step ``peak`` is within ``budget_bytes``: from
    two measured sizes (memory grows linearly with the rows), then checked and walked down."""
    model = _parts(family, checkpointed).model
    generator = torch.Generator().manual_seed(0)

    def peak(rows: int) -> int:
        return step_memory(model, *family.batch(rows, generator), family.task)[1]

    small, large = 8, 32
    per_row = (peak(large) - peak(small)) / (large - small)
    rows = max(8, int((budget_bytes - peak(small)) / per_row + small) // 8 * 8)
    while rows > 8 and peak(rows) > budget_bytes:
        rows -= 8
    return rows if peak(rows) <= budget_bytes else 0


def run(args) -> None:
    quick = args.quick
    rounds, steps = (1, 1) if quick else (3, 10)
    budget_mib = getattr(args, "budget_mib", None) or 256
    print(f"device: cpu ({torch.get_num_threads()} torch threads), FP32, SGD; step time: median of {steps} steps, "
          f"median of {rounds} alternating rounds")
    print("memory: bytes of the tensors the step's operators created, alive at the forward's end (held) and at "
          "most over forward + backward (peak), parameters and inputs excluded")
    print(f"{'family':32s} {'arm':13s} {'held MiB':>9s} {'peak MiB':>9s} {'step ms':>8s}")
    for family in families():
        batch_size = family.batch_size // 4 if quick else family.batch_size
        inputs, targets = family.batch(batch_size, torch.Generator().manual_seed(0))
        times: dict[bool, list[float]] = {False: [], True: []}
        memory: dict[bool, tuple[int, int]] = {}
        for _ in range(rounds):
            for checkpointed in (False, True):
                parts = _parts(family, checkpointed)
                memory[checkpointed] = step_memory(parts.model, inputs, targets, family.task)
                times[checkpointed].append(_step_ms(parts, inputs, targets, warmup=0 if quick else 1, steps=steps))
        for checkpointed in (False, True):
            held, peak = memory[checkpointed]
            arm = "checkpointed" if checkpointed else "plain"
            print(f"{family.name:32s} {arm:13s} {held / 2**20:9.2f} {peak / 2**20:9.2f} "
                  f"{statistics.median(times[checkpointed]):8.1f}")
        plain, cut = memory[False], memory[True]
        print(f"{family.name:32s} batch {batch_size}: held x{cut[0] / plain[0]:.2f}, peak x{cut[1] / plain[1]:.2f}, "
              f"step time x{statistics.median(times[True]) / statistics.median(times[False]):.2f}")
        if not quick:
            fits = {c: largest_batch(family, c, budget_mib * 2**20) for c in (False, True)}
            print(f"{family.name:32s} largest batch within {budget_mib} MiB peak: plain {fits[False]}, "
                  f"checkpointed {fits[True]}")
