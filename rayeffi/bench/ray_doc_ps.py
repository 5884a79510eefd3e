"""The baseline: a parameter server written the way Ray's documentation example does it.

One ``ParameterServer`` actor holds the whole model and applies the averaged gradients;
``DataWorker`` actors compute gradients from weights passed as object refs; the driver
runs the synchronous loop with a blocking ``ray.get`` every step (Ray docs,
"Parameter Server" example). Same model, optimizer, data shards and global batch as
rayeffi's parameter server; data in memory as tensors.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow.parquet as pq
import ray
import torch

from rayeffi.data import builtin_digits_paths
from rayeffi.data.info import DatasetInfo
from rayeffi.models import build_model
from rayeffi.recipe.models import StageConfig

INFO = DatasetInfo(64, 10, (1, 8, 8), 1437, 360)


def _digits(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    table = pq.read_table(path)
    features = torch.tensor(np.stack(table["features"].to_numpy(zero_copy_only=False)), dtype=torch.float32)
    return features, torch.tensor(table["label"].to_numpy(), dtype=torch.int64)


class ParameterServer:
    def __init__(self, stage: StageConfig):
        torch.set_num_threads(1)
        torch.manual_seed(stage.seed)
        self.model = build_model(stage.model, INFO)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=stage.optimizer.lr,
                                         momentum=stage.optimizer.momentum)

    def apply_gradients(self, *gradients):
        summed = [np.stack(g).mean(axis=0) for g in zip(*gradients)]
        self.optimizer.zero_grad()
        for param, grad in zip(self.model.parameters(), summed):
            param.grad = torch.from_numpy(grad)
        self.optimizer.step()
        return self.get_weights()

    def get_weights(self):
        return {k: v.cpu() for k, v in self.model.state_dict().items()}


class DataWorker:
    def __init__(self, stage: StageConfig, index: int, num_workers: int):
        torch.set_num_threads(1)
        self.model = build_model(stage.model, INFO)
        features, labels = _digits(builtin_digits_paths()[0])
        self.features, self.labels = features[index::num_workers], labels[index::num_workers]
        self.batch = stage.data.batch_size // num_workers
        self.position = 0

    def compute_gradients(self, weights):
        self.model.load_state_dict(weights)
        if self.position + self.batch > len(self.labels):
            self.position = 0
        rows = slice(self.position, self.position + self.batch)
        self.position += self.batch
        self.model.zero_grad()
        loss = torch.nn.functional.cross_entropy(self.model(self.features[rows]), self.labels[rows])
        loss.backward()
        return [p.grad.numpy() for p in self.model.parameters()]


def run_baseline(stage: StageConfig, num_workers: int, target: float) -> dict[str, float]:
    """Steady updates/s and training seconds until validation accuracy reaches ``target``."""
    server = ray.remote(ParameterServer).options(num_cpus=0.25).remote(stage)
    workers = [ray.remote(DataWorker).options(num_cpus=0.5).remote(stage, i, num_workers) for i in range(num_workers)]
    val_x, val_y = _digits(builtin_digits_paths()[1])
    model = build_model(stage.model, INFO)
    steps_per_epoch = -(-(INFO.num_train // num_workers) // (stage.data.batch_size // num_workers))
    current = server.get_weights.remote()
    ray.get([w.compute_gradients.remote(current) for w in workers])  # warm: actors up
    train_s, epoch_rates, time_to_target, accuracy = 0.0, [], None, 0.0
    for _ in range(stage.total_epochs):
        start = time.perf_counter()
        for _ in range(steps_per_epoch):
            gradients = [worker.compute_gradients.remote(current) for worker in workers]
            current = server.apply_gradients.remote(*gradients)
            ray.get(current)  # the documentation example's blocking get, every step
        seconds = time.perf_counter() - start
        train_s += seconds
        epoch_rates.append(steps_per_epoch / seconds)
        model.load_state_dict(ray.get(current))
        with torch.no_grad():
            accuracy = (model(val_x).argmax(1) == val_y).float().mean().item()
        if time_to_target is None and accuracy >= target:
            time_to_target = train_s
    for actor in [server, *workers]:
        ray.kill(actor)
    return {"updates_per_s": float(np.median(epoch_rates[1:] or epoch_rates)), "time_to_target_s": time_to_target,
            "val_accuracy": accuracy}
