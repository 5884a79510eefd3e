"""``rayeffi report RUN_DIR``: loss and accuracy curves per stage as PNG files, and one page with them all."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from rayeffi.errors import UserError  # noqa: E402
from rayeffi.task import headline_metrics  # noqa: E402
from rayeffi.techniques.dsd.report import plot_dsd_phases, plot_pruning_histograms  # noqa: E402
from rayeffi.report.html import write_html_report  # noqa: E402


def read_summary(run_dir: str | Path) -> dict:
    path = Path(run_dir) / "summary.json"
    if not path.is_file():
        raise UserError(f"{path} does not exist: give the --out directory of a rayeffi run")
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    check_summary_shape(summary, path)
    return summary


HISTORY_KEYS = ("epoch", "train_loss", "val_loss")
"""What every epoch row needs to be plotted."""
DSD_KEYS = ("dsd_phase", "sparsity")


def check_summary_shape(summary, path: Path) -> None:
    """The parts of ``summary.json`` a report reads, checked up front: one line naming the first bad one."""
    def bad(where: str, what: str) -> UserError:
        return UserError(f"{path}: {where} {what}, so this is not a summary.json written by rayeffi run: "
                         "give the --out directory of a rayeffi run (or re-run it)")

    if not isinstance(summary, dict):
        raise bad("the file", f"holds a {type(summary).__name__}, not a mapping")
    if not isinstance(summary.get("recipe", {}), dict):
        raise bad("'recipe'", f"is a {type(summary['recipe']).__name__}, not a mapping")
    stages = summary.get("stages", [])
    if not isinstance(stages, list):
        raise bad("'stages'", f"is a {type(stages).__name__}, not a list")
    for index, stage in enumerate(stages):
        if not isinstance(stage, dict) or not isinstance(stage.get("name"), str) or not isinstance(stage.get("kind"), str):
            raise bad(f"stages[{index}]", "is not a mapping with a 'name' and a 'kind'")
        history = stage.get("history") or []
        if not isinstance(history, list):
            raise bad(f"stage {stage['name']!r}: 'history'", "is not a list")
        ran_dsd = stage["kind"] == "dsd" or "rounds" in stage  # a kind: dsd stage, or dsd in its techniques
        needed = HISTORY_KEYS + (DSD_KEYS if ran_dsd else ())
        for row in history:
            missing = [key for key in needed if not isinstance(row, dict) or key not in row]
            if missing:
                raise bad(f"stage {stage['name']!r}: an epoch row", f"lacks {', '.join(missing)}")
            wrong = [key for key in HISTORY_KEYS if not isinstance(row[key], (int, float)) or isinstance(row[key], bool)]
            if wrong:
                raise bad(f"stage {stage['name']!r}: epoch row {row['epoch']!r}", f"has non-numbers in {', '.join(wrong)}")


def write_report(run_dir: str | Path) -> list[Path]:
    """``report/STAGE.png`` per stage with a history, then ``report/index.html``; returns the files."""
    run_dir = Path(run_dir)
    summary = read_summary(run_dir)
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    try:
        images = {stage["name"]: stage_images(stage, out) for stage in summary.get("stages", [])}
    except (KeyError, TypeError, ValueError, IndexError) as exc:  # a field check_summary_shape does not cover
        raise UserError(f"{run_dir}/summary.json: a stage cannot be plotted ({type(exc).__name__}: {exc}): "
                        "it is not the shape rayeffi run writes") from None
    written = [path for paths in images.values() for path in paths]
    if not written:
        raise UserError(f"{run_dir}/summary.json has no stage with epoch history to plot")
    return written + [write_html_report(run_dir, summary, images)]


def stage_images(stage: dict, out: Path) -> list[Path]:
    """The PNGs of one stage: curves (with the loss scale), and for DSD its phases and pruning."""
    history = stage.get("history") or []
    if not history:
        return []
    name = stage["name"]
    images = [plot_stage(name, stage["kind"], history, out / f"{name}.png")]
    if "dsd_phase" in history[0]:  # the dsd technique ran (kind: dsd, or in the techniques list)
        images.append(plot_dsd_phases(name, history, out / f"{name}-phases.png"))
        histogram = plot_pruning_histograms(name, history, out / f"{name}-pruning.png")
        images += [histogram] if histogram else []
    return images


def loss_scale_points(history: list[dict]) -> list[tuple[int, float]]:
    """The ``[step, scale]`` points of every epoch, in order (mixed precision runs only)."""
    return [(int(step), float(scale)) for row in history for step, scale in row.get("loss_scale_history") or []]


def plot_stage(name: str, kind: str, history: list[dict], path: Path) -> Path:
    epochs = [row["epoch"] for row in history]
    scale_points = loss_scale_points(history)
    figure, axes = plt.subplots(1, 3 if scale_points else 2, figsize=(15 if scale_points else 10, 4))
    loss_axis, accuracy_axis = axes[0], axes[1]
    loss_axis.plot(epochs, [row["train_loss"] for row in history], marker="o", label="train")
    loss_axis.plot(epochs, [row["val_loss"] for row in history], marker="o", label="validation")
    loss_axis.set(xlabel="epoch", ylabel="loss", title=f"{stage_title(name, kind)}: loss")
    loss_axis.legend()
    figure_key = next(iter(headline_metrics(history[-1])), None)  # the task's figure: accuracy, perplexity...
    if figure_key is not None:
        accuracy_axis.plot(epochs, [row.get(figure_key) for row in history], marker="o", color="tab:green")
        accuracy_axis.set(xlabel="epoch", ylabel=figure_key.replace("_", " "), title=f"{name}: {figure_key}")
        if "accuracy" in figure_key:
            accuracy_axis.set_ylim(0, 1)
    if scale_points:
        _plot_loss_scale(axes[2], name, scale_points, int(history[-1].get("skipped_steps", 0)))
    for axis in axes:
        axis.grid(alpha=0.3)
    for axis in axes[:2]:
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole: no 1.2, 1.4 ticks
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def stage_title(name: str, kind: str) -> str:
    """``dense``, ``student (distill)``: the kind only where it is not the name already."""
    return name if not kind or kind == name else f"{name} ({kind})"


def _plot_loss_scale(axis, name: str, points: list[tuple[int, float]], skipped: int) -> None:
    steps, scales = zip(*points)
    axis.step(steps, scales, where="post", color="tab:purple", marker=".")  # a scale holds until it changes
    axis.set_yscale("log", base=2)
    axis.set(xlabel="optimizer step", ylabel="loss scale", title=f"{name}: loss scale ({skipped} steps skipped)")
