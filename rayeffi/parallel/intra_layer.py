"""Intra-layer model parallelism: each layer of one model split across a group of workers.

``parallel: {strategy: intra_layer, conv: spatial | channels | none, fc: split | none}``.
The workers form a 2-D mesh (``mesh.py``): a model-parallel group of
``model_parallel_size`` workers runs one copy of the model with its layers split
(``split_model.py``, ``split_layers.py``); the groups are data-parallel replicas
whose gradients DDP averages over the data-parallel axis.

Data layout: every rank of a model-parallel group must compute on the *same* batch,
but Ray Train hands each worker its own shard. :meth:`IntraLayer.local_batch` all-gathers
the group's shards, so a group trains on ``batch_size / data_parallel_size`` rows, the
same global batch the data-parallel strategy uses; metrics are summed over the
data-parallel axis only (a group's ranks hold identical sums).

Checkpoints hold the whole, unsplit model (same keys as the plain model, loadable by
``init_from`` and ``rayeffi export``): shards are all-gathered by every rank before
rank 0 writes. Optimizer state of sharded parameters is kept per rank.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from rayeffi.data.info import DatasetInfo
from rayeffi.errors import UserError
from rayeffi.models import ConvNet, MLP, build_model
from rayeffi.parallel.base import Strategy, load_slot_states
from rayeffi.parallel.collectives import all_gather, all_reduce, my_slice
from rayeffi.parallel.halo import SpatialGrid
from rayeffi.parallel.mesh import Mesh, RankGroup, build_mesh
from rayeffi.parallel.split_model import check_spatial, split_chain, split_spatial

if TYPE_CHECKING:
    # pure configuration (pydantic): annotations only, so the step imports without pydantic
    from rayeffi.recipe.intra_layer import IntraLayerConfig


def split_builtin_model(model: nn.Module, config: IntraLayerConfig, group: RankGroup) -> nn.Module:
    """Split ``model`` in place over ``group``: a built-in :class:`MLP` or :class:`ConvNet`, or a
    plain ``nn.Sequential`` (treated like the MLP's layers)."""
    if isinstance(model, (MLP, nn.Sequential)):
        if config.fc == "split":
            split_chain(model.layers if isinstance(model, MLP) else model, nn.Linear, group)
        return model
    if not isinstance(model, ConvNet):
        raise UserError(f"parallel.strategy intra_layer splits the built-in models (mlp, cnn), not {type(model).__name__}")
    if config.conv == "spatial":
        rows, cols = config.spatial_grid(group.size)
        model.features = split_spatial(model.features, SpatialGrid(rows, cols, group))
    elif config.conv == "channels":
        split_chain(model.features, nn.Conv2d, group)
    if config.fc == "split":
        split_chain(model.classifier, nn.Linear, group)
    return model


def check_intra_layer_stage(stage, info: DatasetInfo) -> None:
    """Driver-side check of an intra_layer stage that needs the built model: the spatial tiles
    fit every convolution and pooling (the rest is checked when the recipe is validated)."""
    config: IntraLayerConfig = stage.parallel
    num_workers = stage.scaling.num_workers
    if stage.model.name == "cnn" and config.conv == "spatial" and num_workers:
        model = build_model(stage.model, info)
        try:
            check_spatial(model.features, info.image_shape[1:], config.spatial_grid(config.group_size(num_workers)),
                          "model.features")
        except ValueError as exc:
            raise UserError(f"parallel.conv spatial: {exc}") from None


class IntraLayer(Strategy):
    name = "intra_layer"

    def __init__(self, world_rank=0, world_size=1, device=None, config: IntraLayerConfig | None = None, info=None):
        super().__init__(world_rank, world_size, device, config, info)
        if config is None:
            from rayeffi.recipe.intra_layer import IntraLayerConfig  # the default split needs pydantic

            config = IntraLayerConfig()
        self.config = config
        self.mesh: Mesh | None = None
        self._shard_dims: dict[str, int] = {}

    @property
    def model_parallel(self) -> RankGroup:
        return self.mesh.model_parallel

    def wrap(self, model: nn.Module) -> nn.Module:
        size = self.config.group_size(self.world_size)
        if self.world_size == 1:
            self.mesh = Mesh(RankGroup.single(), RankGroup.single())
        else:
            self.mesh = build_mesh(self.world_rank, self.world_size, size)
        model = split_builtin_model(model, self.config, self.model_parallel).to(self.device)
        self._shard_dims = {
            f"{prefix}.{name}" if prefix else name: dim
            for prefix, module in model.named_modules()
            for name, dim in getattr(module, "shard_dims", {}).items()
        }
        if self.mesh.data_parallel.size == 1:
            return model
        # DDP over the data-parallel axis only; it broadcasts from the axis' first rank
        return DistributedDataParallel(model, process_group=self.mesh.data_parallel.group)

    def unwrap(self, model: nn.Module) -> nn.Module:
        return model.module if isinstance(model, DistributedDataParallel) else model

    def local_batch(self, inputs, targets, extras):
        """The model-parallel group's whole batch: every rank's shard, concatenated in rank order."""
        group = self.model_parallel
        if group.size == 1:
            return inputs, targets, extras
        gather = lambda tensor: torch.cat(all_gather(tensor, group), 0)  # noqa: E731
        return gather(inputs), gather(targets), {name: gather(column) for name, column in extras.items()}

    @property
    def replicas(self) -> int:
        return self.mesh.data_parallel.size

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        # the ranks of a model-parallel group hold the same rows: sum over data-parallel replicas only
        return all_reduce(tensor, self.mesh.data_parallel)

    def training_state(self, parts) -> dict:
        """The unsplit model (shards gathered: a collective every rank enters); the optimizer
        state per rank where parameters are sharded (each rank's is of its own shards)."""
        state = super().training_state(parts)
        for name, dim in self._shard_dims.items():
            state["model"][name] = torch.cat(all_gather(state["model"][name], self.model_parallel), dim)
        if self._shard_dims:
            state["optimizer"] = {"by_rank": self.all_gather_object(state["optimizer"])}
        return state

    def load_training_state(self, parts, state: dict) -> None:
        model = dict(state["model"])
        for name, dim in self._shard_dims.items():
            model[name] = my_slice(model[name], dim, self.model_parallel)
        self.unwrap(parts.model).load_state_dict(model)
        optimizer = state["optimizer"]
        parts.optimizer.load_state_dict(optimizer["by_rank"][self.world_rank] if "by_rank" in optimizer else optimizer)
        load_slot_states(parts, self.precision, state)
