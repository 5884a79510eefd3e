"""``rayeffi bench compile``: step time eager against ``torch.compile``, per model family, and
the graphs a DSD run compiles.

Per family (MLP, CNN, the built-in LM, an LSTM classifier), the same model at the same seed
trains with rayeffi's ``train_step`` eager and compiled (``models/compiled.py``, mode
``default``; on a CPU Inductor's C++ backend). Printed: the median step time of each after
warm-up, their ratio, the first compiled step's seconds (the compile), the largest
difference between the two arms' losses over the timed steps, and whether one batch's
gradients agree eager and compiled (``compiled_gradient_mismatch``: a compiled backward
that drops a layer's gradients can keep the losses close and the step fast).

Then a DSD run (dense -> sparse 50% -> re-dense, one epoch each, a short last batch and an
evaluation per epoch) on the compiled MLP counts the graphs TorchDynamo builds per epoch:
the first epoch builds them (training, the last short batch, evaluation); the masks are
applied to the weights after each step, outside the graph, so the phase changes build none.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from rayeffi.models.compiled import compile_model, compiled_gradient_mismatch, compiled_graphs
from rayeffi.parallel import DataParallel
from rayeffi.precision import FP32
from rayeffi.techniques.dsd.config import DsdConfig
from rayeffi.techniques.dsd.technique import DenseSparseDense
from rayeffi.bench.memory import Family, _rows, families as memory_families
from rayeffi.worker.build import assemble
from rayeffi.worker.step import StepParts, eval_step, train_step


class LSTMClassifier(nn.Module):
    """Each row read as 28 time steps of 28 features; the last hidden state is classified."""

    def __init__(self, hidden: int = 128):
        super().__init__()
        self.rnn = nn.LSTM(28, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x.reshape(x.shape[0], 28, 28))
        return self.head(out[:, -1])


def families() -> list[Family]:
    built_in = [family for family in memory_families() if not family.name.startswith("HF")]
    return [*built_in, Family("LSTM 28 steps x 28, hidden 128", LSTMClassifier, _rows(784, 10), 128)]


def _parts(family: Family, compiled: bool) -> StepParts:
    torch.manual_seed(0)
    model = family.build()
    if compiled:
        compile_model(model)
    return assemble(model, DataParallel(), FP32(), lambda m: torch.optim.SGD(m.parameters(), lr=0.01), task=family.task)


def _timed_steps(parts: StepParts, inputs, targets, steps: int) -> tuple[float, list[float], float]:
    """``(first step s, losses, median ms of the steps after it)``."""
    start = time.perf_counter()
    losses = [float(train_step(parts, inputs, targets))]
    first = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        losses.append(float(train_step(parts, inputs, targets)))
        times.append(time.perf_counter() - start)
    return first, losses, 1000 * statistics.median(times)


def dsd_graphs(rows: int = 96, batch: int = 32) -> list[int]:
    """Graphs built in each epoch of a dense -> sparse -> re-dense run of a compiled MLP."""
    from rayeffi.models.mlp import MLP

    torch.manual_seed(0)
    dsd = DenseSparseDense(DsdConfig(rounds=[0.5], dense_epochs=1, sparse_epochs=1, redense_epochs=1))
    parts = assemble(compile_model(MLP(64, 10, (64,))), DataParallel(), FP32(),
                     lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9), [dsd])
    generator = torch.Generator().manual_seed(0)
    inputs, targets = torch.rand(rows + 8, 64, generator=generator), torch.randint(0, 10, (rows + 8,), generator=generator)
    per_epoch = []
    for epoch in range(3):
        before = compiled_graphs()
        dsd.on_epoch_start(epoch, parts.model, parts.optimizer)
        parts.model.train()
        for start in range(0, len(targets), batch):  # the last batch is short: 8 rows
            train_step(parts, inputs[start:start + batch], targets[start:start + batch])
        parts.model.eval()
        eval_step(parts, inputs[:batch], targets[:batch])
        eval_step(parts, inputs[-8:], targets[-8:])
        per_epoch.append(compiled_graphs() - before)
    return per_epoch


def run(args) -> None:
    quick = args.quick
    steps = 3 if quick else 20
    print(f"device: cpu ({torch.get_num_threads()} torch threads), FP32, SGD, torch.compile mode default "
          f"(Inductor, C++ backend); step time: median of {steps} steps after the first")
    print(f"{'family':32s} {'eager ms':>9s} {'compiled ms':>12s} {'compiled/eager':>15s} {'compile s':>10s} "
          f"{'max |loss diff|':>16s}")
    for family in families()[:1] if quick else families():  # quick: the MLP only (compiling takes a while)
        batch_size = family.batch_size // 4 if quick else family.batch_size
        inputs, targets = family.batch(batch_size, torch.Generator().manual_seed(0))
        _, eager_losses, eager_ms = _timed_steps(_parts(family, False), inputs, targets, steps)
        compile_s, compiled_losses, compiled_ms = _timed_steps(_parts(family, True), inputs, targets, steps)
        difference = max(abs(a - b) for a, b in zip(eager_losses, compiled_losses))
        torch.manual_seed(0)
        mismatch = compiled_gradient_mismatch(family.build(), inputs, targets, family.task.loss)
        print(f"{family.name:32s} {eager_ms:9.1f} {compiled_ms:12.1f} {compiled_ms / eager_ms:15.2f} "
              f"{compile_s:10.1f} {difference:16.2e}  gradients {'agree' if mismatch is None else 'DIFFER: ' + mismatch}")
    graphs = dsd_graphs()
    print(f"DSD dense -> sparse 50% -> re-dense on a compiled MLP: graphs built per epoch {graphs} "
          f"(the first epoch: training, its short last batch, evaluation; each phase change: {max(graphs[1:])})")
