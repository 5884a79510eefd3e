"""DSD pictures: metrics across the dense, sparse and re-dense phases; weight magnitudes around pruning."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from rayeffi.task import headline_metrics  # noqa: E402

PHASE_COLOURS = {"dense": "#dddddd", "sparse": "#f6c9a8", "redense": "#bfe0c0"}


def plot_dsd_phases(name: str, history: list[dict], path: Path) -> Path:
    """Validation accuracy and losses per epoch, phases shaded, measured sparsity on a second axis."""
    epochs = [row["epoch"] for row in history]
    figure, (accuracy_axis, loss_axis) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for axis in (accuracy_axis, loss_axis):
        for row in history:
            axis.axvspan(row["epoch"] - 0.5, row["epoch"] + 0.5, color=PHASE_COLOURS[row["dsd_phase"]], lw=0)
        axis.grid(alpha=0.3)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no 1.2, 1.4 ticks
    figure_key = next(iter(headline_metrics(history[-1])), "val_loss")  # the task's figure
    accuracy_axis.plot(epochs, [row.get(figure_key) for row in history], marker="o", color="tab:green")
    accuracy_axis.set(ylabel=figure_key.replace("_", " "), title=f"{name}: Dense-Sparse-Dense phases")
    sparsity_axis = accuracy_axis.twinx()
    sparsity_axis.step(epochs, [row["sparsity"] for row in history], where="mid", color="tab:red", ls="--")
    sparsity_axis.set(ylabel="measured sparsity", ylim=(0, 1))
    loss_axis.plot(epochs, [row["train_loss"] for row in history], marker="o", label="train")
    loss_axis.plot(epochs, [row["val_loss"] for row in history], marker="o", label="validation")
    loss_axis.set(xlabel="epoch", ylabel="loss")
    ran = phases_that_ran(history)  # a stage starting from init_from weights has no dense phase
    handles = [plt.Rectangle((0, 0), 1, 1, color=PHASE_COLOURS[phase]) for phase in ran]
    loss_axis.legend(handles + loss_axis.get_legend_handles_labels()[0],
                     ran + ["train loss", "validation loss"], loc="upper right")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def phases_that_ran(history: list[dict]) -> list[str]:
    """The DSD phases with at least one epoch in ``history``, in ``PHASE_COLOURS`` order."""
    ran = {row["dsd_phase"] for row in history}
    return [phase for phase in PHASE_COLOURS if phase in ran]


def plot_pruning_histograms(name: str, history: list[dict], path: Path) -> Path | None:
    """|w| of the prunable layers just before and just after each pruning (log scale)."""
    events = [row for row in history if "pruning_histogram" in row]
    if not events:
        return None
    figure, axes = plt.subplots(1, len(events), figsize=(5 * len(events), 4), squeeze=False)
    for axis, row in zip(axes[0], events):
        histogram = row["pruning_histogram"]
        edges = histogram["log10_edges"]
        centres = [(a + b) / 2 for a, b in zip(edges, edges[1:])]
        width = edges[1] - edges[0]
        axis.bar(centres, histogram["before"], width=width, alpha=0.5, label="before pruning")
        axis.bar(centres, histogram["after"], width=width, alpha=0.7, label="after pruning (kept)")
        axis.set(xlabel="log10 |w|", ylabel="weights",
                 title=f"round {row['dsd_round']}: target sparsity {row['target_sparsity']:.2f}")
        axis.legend()
    figure.suptitle(f"{name}: weight magnitudes around pruning")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
