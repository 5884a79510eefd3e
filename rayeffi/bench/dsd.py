"""``rayeffi bench dsd``: Dense-Sparse-Dense against two dense baselines, paired by seed.

For each seed one recipe trains a dense MLP on the built-in digits, then from those
same dense weights runs three arms for the same number of extra epochs:

- ``dsd``: sparse phase at the target sparsity, then re-dense at lr x 0.1 (Han 2017);
- ``same_schedule``: the identical phase plan and learning rates with nothing pruned
  (a dsd stage at sparsity 0): the equal-epoch control the paper did not run;
- ``decayed``: plain training continued at lr x 0.1 for all extra epochs: the paper's
  comparison (a converged baseline trained on at a decayed rate).

Printed per regime: mean, standard deviation, min and max of the paired differences
in final validation accuracy (percentage points) and how many seeds DSD won.

``--workload lm|lstm`` runs the same four stages on the built-in text (``data.dataset:
text``) with the byte-level transformer ``lm`` or the character-level ``lstm_lm`` (AdamW,
FP32, local mode), at sparsity 0.3 and 0.5, and compares validation perplexity per byte:
the paired differences ``dsd - control`` (lower is better: DSD wins a seed when its
difference is negative). ``--workload mlp`` (the default) is the digits benchmark above.
"""

from __future__ import annotations

import statistics
import tempfile
from typing import Any

from rayeffi.errors import UserError
from rayeffi.recipe import validate_recipe
from rayeffi.driver.run import run_recipe
from rayeffi.stages.ray_session import start_ray

REGIMES = {
    # name: (training rows, sparsity, hidden sizes)
    "full-data": (None, 0.5, [128, 64]),
    "small-data": (300, 0.5, [256, 128]),  # 300 rows and a wider net: the overfitting regime
    "high-sparsity": (None, 0.8, [128, 64]),
}


WORKLOADS = ("mlp", "lm", "lstm")
SEQUENCE_MODELS = {  # --workload: the model section
    "lm": {"name": "lm", "d_model": 64, "num_layers": 2, "num_heads": 4},
    "lstm": {"name": "lstm_lm", "d_model": 64, "num_layers": 2},
}
SEQUENCE_SPARSITIES = (0.3, 0.5)


def seed_recipe(seed: int, max_samples, sparsity: float, hidden: list[int], quick: bool):
    dense_epochs, sparse_epochs, redense_epochs = (3, 2, 2) if quick else (12, 5, 5)
    extra = sparse_epochs + redense_epochs
    schedule = {"sparse_epochs": sparse_epochs, "redense_epochs": redense_epochs, "redense_lr_factor": 0.1}
    return validate_recipe({
        "name": f"bench-dsd-{seed}",
        "seed": seed,
        "data": {"dataset": "digits", "batch_size": 64, "max_samples": max_samples},
        "model": {"name": "mlp", "hidden_sizes": hidden},
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "scaling": {"num_workers": 0},
        "stages": [
            {"name": "dense", "kind": "train", "epochs": dense_epochs},
            {"name": "dsd", "kind": "dsd", "init_from": "dense", "dsd": {"rounds": [sparsity], **schedule}},
            {"name": "same_schedule", "kind": "dsd", "init_from": "dense", "dsd": {"rounds": [0.0], **schedule}},
            {"name": "decayed", "kind": "train", "init_from": "dense", "epochs": extra, "optimizer": {"lr": 0.005}},
        ],
    })


def dsd_arm(sparsity: float) -> str:
    """The stage name of the DSD arm at ``sparsity``: ``dsd-s30`` at 0.3 (a stage name has no dots)."""
    return f"dsd-s{round(100 * sparsity)}"


def sequence_recipe(seed: int, workload: str, sparsities: tuple[float, ...], quick: bool):
    """One seed on the built-in text: ``dense``, then from its weights ``same_schedule``,
    ``decayed`` and one DSD arm per sparsity (``dsd_arm``), all with the same extra epochs
    (the controls do not depend on the sparsity, so they run once)."""
    dense_epochs, sparse_epochs, redense_epochs = (1, 1, 1) if quick else (6, 2, 2)
    extra = sparse_epochs + redense_epochs
    lr = 0.002
    schedule = {"sparse_epochs": sparse_epochs, "redense_epochs": redense_epochs, "redense_lr_factor": 0.1}
    return validate_recipe({
        "name": f"bench-dsd-{workload}-{seed}",
        "seed": seed,
        "task": "language_modeling",
        "data": {"dataset": "text", "seq_len": 64, "batch_size": 32, **({"max_samples": 64} if quick else {})},
        "model": SEQUENCE_MODELS[workload],
        "optimizer": {"name": "adamw", "lr": lr},
        "precision": "fp32",
        "scaling": {"num_workers": 0},
        "stages": [
            {"name": "dense", "kind": "train", "epochs": dense_epochs},
            {"name": "same_schedule", "kind": "dsd", "init_from": "dense", "dsd": {"rounds": [0.0], **schedule}},
            {"name": "decayed", "kind": "train", "init_from": "dense", "epochs": extra, "optimizer": {"lr": lr / 10}},
            *({"name": dsd_arm(sparsity), "kind": "dsd", "init_from": "dense", "dsd": {"rounds": [sparsity], **schedule}}
              for sparsity in sparsities),
        ],
    })


def paired(arm: list[float], control: list[float], lower_is_better: bool) -> dict[str, Any]:
    """The paired differences ``arm - control`` per seed: mean, sd (0 for one seed), min,
    max, and the seeds on which the arm is better (lower when ``lower_is_better``)."""
    differences = [a - c for a, c in zip(arm, control, strict=True)]
    return {
        "differences": differences,
        "mean": statistics.mean(differences),
        "sd": statistics.stdev(differences) if len(differences) > 1 else 0.0,
        "min": min(differences),
        "max": max(differences),
        "wins": sum((d < 0) if lower_is_better else (d > 0) for d in differences),
    }


def _describe_perplexity(arm: list[float], control: list[float]) -> str:
    stats = paired(arm, control, lower_is_better=True)
    per_seed = ", ".join(f"{d:+.3f}" for d in stats["differences"])
    return (f"{stats['mean']:+.3f} ppl  (sd {stats['sd']:.3f}, min {stats['min']:+.3f}, max {stats['max']:+.3f}; "
            f"DSD ahead (lower) on {stats['wins']}/{len(stats['differences'])} seeds; per seed: {per_seed})")


def run_sequence(workload: str, seeds: range, quick: bool) -> None:
    """``--workload lm|lstm``: per sparsity, each arm's validation perplexity and DSD's
    paired differences against both controls. Local mode: no Ray."""
    perplexity: dict[str, list[float]] = {}
    for seed in seeds:
        with tempfile.TemporaryDirectory(prefix="rayeffi-bench-dsd-") as out:
            summary = run_recipe(sequence_recipe(seed, workload, SEQUENCE_SPARSITIES, quick), out,
                                 echo=lambda line: None)
        for stage in summary["stages"]:
            perplexity.setdefault(stage["name"], []).append(stage["metrics"]["val_perplexity"])
    model = SEQUENCE_MODELS[workload]
    print(f"workload {workload}: model {model['name']} d_model {model['d_model']}, {model['num_layers']} layers, "
          f"built-in text, FP32, {len(seeds)} seeds (val_perplexity per byte, lower is better)")
    for arm, values in perplexity.items():
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"  {arm:14s} val_perplexity mean {statistics.mean(values):7.3f}  (sd {spread:.3f}, "
              f"min {min(values):7.3f}, max {max(values):7.3f})")
    for sparsity in SEQUENCE_SPARSITIES:
        print(f"sparsity {sparsity}:")
        for baseline in ("same_schedule", "decayed"):
            print(f"  dsd - {baseline:13s}: {_describe_perplexity(perplexity[dsd_arm(sparsity)], perplexity[baseline])}")


def _describe(differences: list[float]) -> str:
    points = [100 * d for d in differences]
    spread = statistics.stdev(points) if len(points) > 1 else 0.0
    wins = sum(d > 0 for d in differences)
    return (f"{statistics.mean(points):+6.2f} pt  (sd {spread:4.2f}, min {min(points):+6.2f}, "
            f"max {max(points):+6.2f}; DSD ahead on {wins}/{len(points)} seeds)")


def run(args) -> None:
    seeds = range(args.seeds)
    workload = getattr(args, "workload", None) or "mlp"
    if workload not in WORKLOADS:
        raise UserError(f"--workload {workload}: not a dsd workload; choose from {', '.join(WORKLOADS)}")
    if workload != "mlp":
        if args.regimes:
            raise UserError(f"--regimes: digits regimes apply to --workload mlp only; drop it for --workload {workload}")
        run_sequence(workload, seeds, args.quick)
        return
    unknown = sorted(set(args.regimes or ()) - set(REGIMES))
    if unknown:
        raise UserError(f"--regimes {' '.join(unknown)}: not a regime; choose from {', '.join(REGIMES)}")
    start_ray(None, 1)
    regimes = {name: REGIMES[name] for name in (args.regimes or REGIMES)}
    for regime, (max_samples, sparsity, hidden) in regimes.items():
        accuracy: dict[str, list[float]] = {"dense": [], "dsd": [], "same_schedule": [], "decayed": []}
        for seed in seeds:
            with tempfile.TemporaryDirectory(prefix="rayeffi-bench-dsd-") as out:
                summary = run_recipe(seed_recipe(seed, max_samples, sparsity, hidden, args.quick), out,
                                     echo=lambda line: None)
            for stage in summary["stages"]:
                accuracy[stage["name"]].append(stage["metrics"]["val_accuracy"])
        rows = max_samples or 1437
        print(f"regime {regime}: {rows} training rows, MLP 64-{'-'.join(map(str, hidden))}-10, "
              f"sparsity {sparsity}, {len(seeds)} seeds")
        for arm, values in accuracy.items():
            print(f"  {arm:14s} val_accuracy mean {100 * statistics.mean(values):6.2f}%  "
                  f"(min {100 * min(values):6.2f}, max {100 * max(values):6.2f})")
        for baseline in ("same_schedule", "decayed"):
            differences = [a - b for a, b in zip(accuracy["dsd"], accuracy[baseline])]
            print(f"  dsd - {baseline:13s}: {_describe(differences)}")
