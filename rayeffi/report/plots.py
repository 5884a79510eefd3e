"""``rayeffi report RUN_DIR``: loss and accuracy curves per stage, as PNG files."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers
import matplotlib.pyplot as plt  # noqa: E402

from rayeffi.errors import UserError  # noqa: E402
from rayeffi.report.dsd import plot_dsd_phases, plot_pruning_histograms  # noqa: E402


def read_summary(run_dir: str | Path) -> dict:
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        raise UserError(f"{path} does not exist: give the --out directory of a rayeffi run")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None


def write_report(run_dir: str | Path) -> list[Path]:
    """One ``report/STAGE.png`` per stage with a history; returns the files written."""
    run_dir = Path(run_dir)
    summary = read_summary(run_dir)
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    written = []
    for stage in summary.get("stages", []):
        history = stage.get("history") or []
        if not history:
            continue
        written.append(plot_stage(stage["name"], stage["kind"], history, out / f"{stage['name']}.png"))
        if stage["kind"] == "dsd":
            written.append(plot_dsd_phases(stage["name"], history, out / f"{stage['name']}-phases.png"))
            histogram = plot_pruning_histograms(stage["name"], history, out / f"{stage['name']}-pruning.png")
            written += [histogram] if histogram else []
    if not written:
        raise UserError(f"{run_dir}/summary.json has no stage with epoch history to plot")
    return written


def plot_stage(name: str, kind: str, history: list[dict], path: Path) -> Path:
    epochs = [row["epoch"] for row in history]
    figure, (loss_axis, accuracy_axis) = plt.subplots(1, 2, figsize=(10, 4))
    loss_axis.plot(epochs, [row["train_loss"] for row in history], marker="o", label="train")
    loss_axis.plot(epochs, [row["val_loss"] for row in history], marker="o", label="validation")
    loss_axis.set(xlabel="epoch", ylabel="loss", title=f"{name} ({kind}): loss")
    loss_axis.legend()
    accuracy_axis.plot(epochs, [row["val_accuracy"] for row in history], marker="o", color="tab:green")
    accuracy_axis.set(xlabel="epoch", ylabel="validation accuracy", title=f"{name}: accuracy", ylim=(0, 1))
    for axis in (loss_axis, accuracy_axis):
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
