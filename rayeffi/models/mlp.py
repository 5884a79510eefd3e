"""A multi-layer perceptron for flat feature vectors."""

from __future__ import annotations

from torch import nn

from rayeffi.models.units import sequential_units


class MLP(nn.Module):
    """``Linear -> ReLU (-> Dropout)`` per hidden width, then a linear classifier.

    Images are flattened first, so the same model takes digits and Parquet rows.
    """

    def __init__(self, num_features: int, num_classes: int, hidden_sizes=(128, 64), dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = num_features
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)

    def pipeline_units(self):
        """The layers in order, for the pipeline strategy (``parallel/pipeline_split.py``)."""

        return sequential_units(self.layers, "layers.")
