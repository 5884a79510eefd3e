"""``rayeffi bench prune-distill``: DSD with a teacher distilling (one stage, two techniques)
against DSD alone, paired by seed.

One recipe, run in local mode on the built-in digits: a CNN teacher, then for each seed
a dense MLP and, from those same dense weights, two arms with the identical phase plan
(sparse at the target sparsity, then re-dense at lr x 0.1):

- ``dsd``: ``techniques: [dsd]`` on the hard labels;
- ``dsd_kd``: ``techniques: [dsd, distill]``, the teacher's soft targets (from the
  soft-label cache) in every phase.

Printed: each arm's mean accuracy and measured sparsity at the end of the sparse phase,
the paired differences in final validation accuracy (percentage points) and on how many
seeds distillation won.
"""

from __future__ import annotations

import statistics
import tempfile
from typing import Any

from rayeffi.recipe import validate_recipe
from rayeffi.driver.run import run_recipe
from rayeffi.stages.ray_session import start_ray

TEACHER = {"name": "cnn", "channels": [32, 64]}
STUDENT = {"name": "mlp", "hidden_sizes": [128, 64]}
DISTILL = {"name": "distill", "teachers": ["teacher"], "temperature": 4.0, "alpha": 0.7, "cache": True}


def bench_recipe(num_seeds: int, sparsity: float, quick: bool) -> Any:
    teacher_epochs, dense_epochs, sparse_epochs, redense_epochs = (3, 3, 2, 1) if quick else (12, 8, 4, 2)
    dsd = {"name": "dsd", "rounds": [sparsity], "sparse_epochs": sparse_epochs, "redense_epochs": redense_epochs}
    stages: list[dict[str, Any]] = [{"name": "teacher", "kind": "train", "epochs": teacher_epochs, "model": TEACHER}]
    for seed in range(num_seeds):
        stages += [
            {"name": f"dense-{seed}", "kind": "train", "seed": seed, "epochs": dense_epochs},
            {"name": f"dsd-{seed}", "kind": "train", "seed": seed, "init_from": f"dense-{seed}", "techniques": [dsd]},
            {"name": f"dsd_kd-{seed}", "kind": "train", "seed": seed, "init_from": f"dense-{seed}",
             "techniques": [dsd, DISTILL]},
        ]
    return validate_recipe({
        "name": "bench-prune-distill",
        "data": {"dataset": "digits", "batch_size": 64},
        "model": STUDENT,
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "scaling": {"num_workers": 0},
        "stages": stages,
    })


def _sparse_phase(stage: dict[str, Any]) -> dict[str, Any]:
    return next(r for r in stage["rounds"] if r["phase"] == "sparse")


def run(args) -> None:
    sparsity = args.sparsity if args.sparsity is not None else 0.5
    start_ray(None, 1)
    print(f"bench prune-distill: {args.seeds} seeds, sparsity {sparsity}, teacher CNN 32-64, student MLP 64-128-64-10",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="rayeffi-bench-prune-distill-") as out:
        summary = run_recipe(bench_recipe(args.seeds, sparsity, args.quick), out,
                             echo=lambda line: print(line, flush=True) if "done in" in line else None)
    stages = {stage["name"]: stage for stage in summary["stages"]}
    print(f"teacher val_accuracy {100 * stages['teacher']['metrics']['val_accuracy']:.2f}%")
    accuracy = {arm: [stages[f"{arm}-{seed}"]["metrics"]["val_accuracy"] for seed in range(args.seeds)]
                for arm in ("dense", "dsd", "dsd_kd")}
    for arm in ("dsd", "dsd_kd"):
        measured = [_sparse_phase(stages[f"{arm}-{seed}"])["measured_sparsity"] for seed in range(args.seeds)]
        sparse_acc = [_sparse_phase(stages[f"{arm}-{seed}"])["val_accuracy"] for seed in range(args.seeds)]
        print(f"  {arm:7s} sparse phase: measured sparsity {statistics.mean(measured):.3f}, "
              f"val_accuracy {100 * statistics.mean(sparse_acc):6.2f}%")
    for arm, values in accuracy.items():
        print(f"  {arm:7s} final val_accuracy mean {100 * statistics.mean(values):6.2f}%  "
              f"(per seed {', '.join(f'{100 * v:.2f}' for v in values)})")
    differences = [100 * (a - b) for a, b in zip(accuracy["dsd_kd"], accuracy["dsd"])]
    spread = statistics.stdev(differences) if len(differences) > 1 else 0.0
    wins = sum(d > 0 for d in differences)
    print(f"  dsd_kd - dsd: {statistics.mean(differences):+.2f} pt (sd {spread:.2f}, per seed "
          f"{', '.join(f'{d:+.2f}' for d in differences)}); distillation ahead on {wins}/{len(differences)} seeds")
