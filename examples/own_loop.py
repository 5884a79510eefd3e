"""Your own Ray Train loop, with rayeffi's techniques added: bf16, Dense-Sparse-Dense and distillation.

    python examples/own_loop.py --smoke     # 2 workers, about a minute on a laptop
    python examples/own_loop.py             # the full schedule

Everything below is plain Ray Train (a ``TorchTrainer``, Ray Data shards,
``ray.train.report``) except ``rayeffi.prepare``: it wraps the model and the optimizer in
the bf16 policy, DDP, DSD (masks chosen once per sparse phase, re-dense at LR/10) and
Hinton distillation from a teacher, and gives the loop five calls: ``epoch_start``,
``autocast``, ``loss``, ``backward``, ``step`` (and ``epoch_end`` for the metrics). The
teacher is trained first by the same loop with no technique. See docs/api.md.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
import torch.nn.functional as F
from ray.train import Checkpoint, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from torch import nn

import rayeffi
from rayeffi.data import builtin_digits_paths  # the 8x8 digits rayeffi ships (features, label)


def mlp(hidden: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def run_epochs(fx: rayeffi.Prepared, train_batches, val_batches, epochs: int, report=None) -> dict:
    """The user's epoch loop; ``*_batches()`` yield ``(features, labels)`` on the model's device."""
    for epoch in range(epochs):
        fx.epoch_start(epoch)  # DSD enters its phase here
        loss_sum, rows = 0.0, 0
        for features, labels in train_batches():
            with fx.autocast():
                logits = fx.model(features)
                loss = fx.loss(F.cross_entropy(logits.float(), labels), logits, features, labels)  # + KD
            fx.backward(loss)
            fx.step()
            loss_sum, rows = loss_sum + loss.item() * len(labels), rows + len(labels)
        metrics = fx.epoch_end(train_loss=loss_sum / rows, **evaluate(fx, val_batches))
        if report is not None:
            report(metrics)
    return metrics


@torch.no_grad()
def evaluate(fx: rayeffi.Prepared, val_batches) -> dict:
    fx.model.eval()
    sums = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, rows
    for features, labels in val_batches():
        with fx.autocast():
            logits = fx.model(features).float()
        sums += torch.tensor([F.cross_entropy(logits, labels, reduction="sum").item(),
                              (logits.argmax(1) == labels).sum().item(), len(labels)], dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(sums)  # every worker scored its own shard
    return {"val_loss": sums[0].item() / sums[2].item(), "val_accuracy": sums[1].item() / sums[2].item()}


def train_loop_per_worker(config: dict) -> None:
    device = ray.train.torch.get_device()
    batch = config["batch_size"] // ray.train.get_context().get_world_size()

    def batches(name):
        shard = ray.train.get_dataset_shard(name)
        return lambda: ((b["features"].to(device), b["label"].to(device))
                        for b in shard.iter_torch_batches(batch_size=batch))

    train, val = batches("train"), batches("val")
    torch.manual_seed(0)
    teacher = mlp(128).to(device)
    with rayeffi.prepare(teacher, torch.optim.SGD(teacher.parameters(), lr=0.1, momentum=0.9),
                         precision="bf16") as fx:
        teacher_metrics = run_epochs(fx, train, val, config["teacher_epochs"])
    torch.manual_seed(1)
    student = mlp(32).to(device)
    dsd = rayeffi.DsdConfig(rounds=[0.5], dense_epochs=config["phase_epochs"], sparse_epochs=config["phase_epochs"],
                            redense_epochs=config["phase_epochs"])
    distill = rayeffi.DistillConfig(teachers=[teacher], temperature=4.0, alpha=0.7)
    fx = rayeffi.prepare(student, torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9), precision="bf16",
                         techniques=[dsd, distill])

    def report(metrics: dict) -> None:
        scalars = {key: value for key, value in metrics.items() if isinstance(value, (int, float, str))}
        scalars["teacher_val_accuracy"] = teacher_metrics["val_accuracy"]
        if metrics["epoch"] < fx.epochs:
            ray.train.report(scalars)  # every rank reports: it is a barrier
            return
        with tempfile.TemporaryDirectory() as directory:
            state = fx.state_dict()  # every rank: it may be a collective
            if ray.train.get_context().get_world_rank() == 0:  # rank 0 attaches the checkpoint
                torch.save({"model": fx.module.state_dict(), "sparse": fx.sparse_state(), "dsd": fx.summary(),
                            "training": state}, os.path.join(directory, "student.pt"))
                ray.train.report(scalars, checkpoint=Checkpoint.from_directory(directory))
            else:
                ray.train.report(scalars)

    with fx:
        run_epochs(fx, train, val, fx.epochs, report)


def main(argv: list[str] | None = None, storage: str | None = None) -> ray.train.Result:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="1 epoch per phase, 2 teacher epochs")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    if not ray.is_initialized():  # a private Ray on this machine, reached on loopback only
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, args.workers + 1),
                 _node_ip_address="127.0.0.1", dashboard_host="127.0.0.1", log_to_driver=False)
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    ray.data.DataContext.get_current().enable_progress_bars = False
    train_path, val_path = builtin_digits_paths()
    datasets = {"train": ray.data.read_parquet(train_path).materialize(),
                "val": ray.data.read_parquet(val_path).materialize()}
    phase_epochs = 1 if args.smoke else 4
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"batch_size": 64, "teacher_epochs": 2 if args.smoke else 10, "phase_epochs": phase_epochs},
        scaling_config=ScalingConfig(num_workers=args.workers),
        run_config=RunConfig(name=f"own-loop-{os.getpid()}", storage_path=storage or tempfile.mkdtemp()),
        datasets=datasets,
    )
    result = trainer.fit()
    metrics = result.metrics
    print(f"teacher val_accuracy {metrics['teacher_val_accuracy']:.4f}")
    print(f"student val_accuracy {metrics['val_accuracy']:.4f} after {metrics['epoch']} epochs "
          f"(dense, sparse, re-dense), bf16 on {args.workers} workers")
    with result.checkpoint.as_directory() as directory:
        saved = torch.load(os.path.join(directory, "student.pt"), weights_only=True)
    sparse = next(phase for phase in saved["dsd"]["rounds"] if phase["phase"] == "sparse")
    print(f"DSD sparsity in the sparse phase: {sparse['measured_sparsity']:.4f} (target {sparse['target_sparsity']})")
    print(f"KD soft loss {metrics['kd_soft_loss']:.4f}, cross-entropy {metrics['kd_ce_loss']:.4f}")
    return result


if __name__ == "__main__":
    main()
