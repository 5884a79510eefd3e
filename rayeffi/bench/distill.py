"""``rayeffi bench distill``: a distilled student against the same student trained alone.

One recipe, run in local mode: a CNN teacher on the built-in digits (``--dataset
mnist``: on the built-in 5,000 MNIST digits, Hinton et al.'s setting, the teacher
trained with random crops), then for each seed two students with identical initial
weights, data order, optimizer and epochs:

- ``alone``: the MLP trained on the hard labels (cross-entropy only);
- ``kd``: the same MLP distilled from the teacher (Hinton et al. 2015,
  ``alpha * T^2 * KL + (1 - alpha) * CE``), from the teacher soft-label cache.

Printed: each arm's mean and spread, the paired differences in final validation
accuracy (percentage points) and on how many seeds distillation won. Then the cost of
the teacher: the student's epoch time from the cache against the same student
recomputing the teacher on the fly (``distill.cache: false``), with the teacher's and
the student's parameter counts. The cached and the on-the-fly run must end at the same
accuracy (no augmentation: the same soft targets).

``--workload lm``: on the built-in text, a teacher ``lm`` (d_model 64) and a student
``lm`` half as wide (d_model 32), per seed trained alone and with per-token KD (the KL over
the vocabulary at every real position, the teacher run on the fly), same epochs and
initial weights, FP32, local mode; printed: the paired differences in validation
perplexity per byte (``kd - alone``: lower is better).
"""

from __future__ import annotations

import statistics
import tempfile
from typing import Any

from rayeffi.bench import steady_epoch_s
from rayeffi.bench.dsd import paired
from rayeffi.data.info import DatasetInfo
from rayeffi.errors import UserError
from rayeffi.models import build_model
from rayeffi.recipe import validate_recipe
from rayeffi.recipe.sections import ModelConfig
from rayeffi.driver.run import run_recipe
from rayeffi.stages.ray_session import start_ray

TEACHER = {"name": "cnn", "channels": [32, 64]}
STUDENT = {"name": "mlp", "hidden_sizes": [64]}
DISTILL = {"teachers": ["teacher"], "temperature": 4.0, "alpha": 0.9}


SHAPES = {"digits": (64, (1, 8, 8)), "mnist": (784, (1, 28, 28))}


def bench_recipe(num_seeds: int, quick: bool, dataset: str = "digits") -> Any:
    teacher_epochs, student_epochs = (3, 3) if quick else (12, 12)
    if dataset == "mnist" and not quick:
        teacher_epochs = 24  # 12 reached 98.30%; Hinton's setting wants a teacher of >= 98.5%
    teacher: dict[str, Any] = {"name": "teacher", "kind": "train", "epochs": teacher_epochs, "model": TEACHER}
    if dataset == "mnist":  # the teacher learns from random crops; the students see the plain images
        teacher["data"] = {"augment": {"crop_padding": 2}}
    stages: list[dict[str, Any]] = [teacher]
    for seed in range(num_seeds):
        stages.append({"name": f"alone-{seed}", "kind": "train", "seed": seed, "epochs": student_epochs,
                       "model": STUDENT})
        stages.append({"name": f"kd-{seed}", "kind": "distill", "seed": seed, "epochs": student_epochs,
                       "model": STUDENT, "distill": {**DISTILL, "cache": True}})
    stages.append({"name": "kd-live", "kind": "distill", "seed": 0, "epochs": student_epochs,
                   "model": STUDENT, "distill": {**DISTILL, "cache": False}})
    return validate_recipe({
        "name": "bench-distill",
        "data": {"dataset": dataset, "batch_size": 64, **({"max_samples": 512} if quick else {})},
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "schedule": {"name": "cosine"}},
        "scaling": {"num_workers": 0},
        "stages": stages,
    })


LM_TEACHER = {"name": "lm", "d_model": 64, "num_layers": 2, "num_heads": 4}
LM_STUDENT = {**LM_TEACHER, "d_model": 32}  # half as wide
LM_DISTILL = {"teachers": ["teacher"], "temperature": 2.0, "alpha": 0.5, "cache": False}


def lm_recipe(num_seeds: int, quick: bool) -> Any:
    """``--workload lm``: the teacher, then per seed ``alone-<seed>`` and ``kd-<seed>``."""
    teacher_epochs, student_epochs = (1, 1) if quick else (6, 6)
    stages: list[dict[str, Any]] = [{"name": "teacher", "kind": "train", "epochs": teacher_epochs, "model": LM_TEACHER}]
    for seed in range(num_seeds):
        stages.append({"name": f"alone-{seed}", "kind": "train", "seed": seed, "epochs": student_epochs,
                       "model": LM_STUDENT})
        stages.append({"name": f"kd-{seed}", "kind": "distill", "seed": seed, "epochs": student_epochs,
                       "model": LM_STUDENT, "distill": LM_DISTILL})
    return validate_recipe({
        "name": "bench-distill-lm",
        "task": "language_modeling",
        "data": {"dataset": "text", "seq_len": 64, "batch_size": 32, **({"max_samples": 64} if quick else {})},
        "optimizer": {"name": "adamw", "lr": 0.002, "schedule": {"name": "cosine", "min_lr_factor": 0.1}},
        "precision": "fp32",
        "scaling": {"num_workers": 0},
        "stages": stages,
    })


def run_lm(args) -> None:
    """``--workload lm``: each arm's perplexity and the paired ``kd - alone`` differences. No Ray."""
    with tempfile.TemporaryDirectory(prefix="rayeffi-bench-distill-") as out:
        summary = run_recipe(lm_recipe(args.seeds, args.quick), out, echo=_progress)
    perplexity = {stage["name"]: stage["metrics"]["val_perplexity"] for stage in summary["stages"]}
    alone = [perplexity[f"alone-{seed}"] for seed in range(args.seeds)]
    kd = [perplexity[f"kd-{seed}"] for seed in range(args.seeds)]
    stats = paired(kd, alone, lower_is_better=True)
    print(f"text: teacher lm d_model {LM_TEACHER['d_model']}: val_perplexity {perplexity['teacher']:.3f}; "
          f"student lm d_model {LM_STUDENT['d_model']}, {args.seeds} seeds "
          f"(T={LM_DISTILL['temperature']}, alpha={LM_DISTILL['alpha']}; val_perplexity per byte, lower is better):")
    for name, values in (("alone (cross-entropy)", alone), ("per-token KD", kd)):
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"  {name:24s} mean {statistics.mean(values):7.3f}  (sd {spread:.3f}, min {min(values):7.3f}, "
              f"max {max(values):7.3f})")
    print(f"  kd - alone (ppl): {stats['mean']:+.3f}  (sd {stats['sd']:.3f}, min {stats['min']:+.3f}, "
          f"max {stats['max']:+.3f}); per seed: " + ", ".join(f"{d:+.3f}" for d in stats["differences"]))
    print(f"  distillation ahead (lower perplexity) on {stats['wins']}/{args.seeds} seeds")


def _num_parameters(model: dict[str, Any], dataset: str = "digits") -> int:
    num_features, image_shape = SHAPES[dataset]
    info = DatasetInfo(num_features=num_features, num_classes=10, image_shape=image_shape, num_train=1, num_val=1)
    return sum(p.numel() for p in build_model(ModelConfig.model_validate(model), info).parameters())


def _steady_epoch_s(stage: dict[str, Any]) -> float:
    return steady_epoch_s([epoch["epoch_s"] for epoch in stage["history"]])


def _line(name: str, values: list[float]) -> str:
    points = [100 * v for v in values]
    spread = statistics.stdev(points) if len(points) > 1 else 0.0
    return f"  {name:24s} mean {statistics.mean(points):6.2f}  (sd {spread:4.2f}, min {min(points):6.2f}, max {max(points):6.2f})"


def _progress(line: str) -> None:
    """Which arm and seed is running: the stages' start and end lines only."""
    if line.startswith("[") and ("done in" in line or "epochs on" in line):
        print(line, flush=True)


def run(args) -> None:
    workload = getattr(args, "workload", None) or "mlp"
    if workload not in ("mlp", "lm"):
        raise UserError(f"--workload {workload}: not a distill workload; choose from mlp, lm")
    if workload == "lm":
        run_lm(args)
        return
    start_ray(None, 1)
    with tempfile.TemporaryDirectory(prefix="rayeffi-bench-distill-") as out:
        dataset = getattr(args, "dataset", None) or "digits"
        summary = run_recipe(bench_recipe(args.seeds, args.quick, dataset), out, echo=_progress)
    stages = {stage["name"]: stage for stage in summary["stages"]}
    accuracy = lambda name: stages[name]["metrics"]["val_accuracy"]  # noqa: E731
    alone = [accuracy(f"alone-{seed}") for seed in range(args.seeds)]
    kd = [accuracy(f"kd-{seed}") for seed in range(args.seeds)]
    differences = [k - a for k, a in zip(kd, alone)]

    print(f"{dataset}: teacher CNN {TEACHER['channels']}: val_accuracy {100 * accuracy('teacher'):.2f}%, "
          f"{_num_parameters(TEACHER, dataset):,} parameters; student MLP {STUDENT['hidden_sizes']}: "
          f"{_num_parameters(STUDENT, dataset):,} parameters")
    print(f"students over {args.seeds} seeds (val_accuracy %, T={DISTILL['temperature']}, alpha={DISTILL['alpha']}):")
    print(_line("alone (cross-entropy)", alone))
    print(_line("distilled", kd))
    print(_line("distilled - alone (pt)", differences))
    print("  per seed (pt): " + ", ".join(f"{100 * d:+.2f}" for d in differences))
    print(f"  distillation ahead on {sum(d > 0 for d in differences)}/{args.seeds} seeds, "
          f">= +0.4 pt on {sum(d >= 0.004 for d in differences)}/{args.seeds}")

    cached, live, plain = _steady_epoch_s(stages["kd-0"]), _steady_epoch_s(stages["kd-live"]), _steady_epoch_s(stages["alone-0"])
    print("student epoch time (median, first epoch left out):")
    print(f"  trained alone            {plain:.3f} s")
    print(f"  from the soft-label cache {cached:.3f} s")
    print(f"  teacher recomputed        {live:.3f} s")
    print(f"  cache / recompute = {cached / live:.2f}x; cache written once in {stages['kd-0']['cache']['wall_s']:.1f} s")
    print(f"  same soft targets: cached {100 * accuracy('kd-0'):.2f}% vs on the fly {100 * accuracy('kd-live'):.2f}%")
