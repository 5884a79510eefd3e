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
"""

from __future__ import annotations

import statistics
import tempfile

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


def _describe(differences: list[float]) -> str:
    points = [100 * d for d in differences]
    spread = statistics.stdev(points) if len(points) > 1 else 0.0
    wins = sum(d > 0 for d in differences)
    return (f"{statistics.mean(points):+6.2f} pt  (sd {spread:4.2f}, min {min(points):+6.2f}, "
            f"max {max(points):+6.2f}; DSD ahead on {wins}/{len(points)} seeds)")


def run(args) -> None:
    seeds = range(args.seeds)
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
