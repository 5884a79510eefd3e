"""A pipeline step as a Gantt chart: one row per stage worker, a box per micro-batch action."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers
import matplotlib.pyplot as plt  # noqa: E402

COLOURS = {"F": "#4C72B0", "B": "#DD8452", "W": "#55A868"}
LABELS = {"F": "forward", "B": "backward", "W": "weight gradient (zero bubble)"}


def plot_pipeline_gantt(events_by_worker: list[list], step_s: float, title: str, path: str | Path) -> Path:
    """``events_by_worker[k]``: ``(action, chunk, microbatch, start_s, end_s)`` relative to the
    step start; white space in a row is that worker's bubble (waiting on its neighbours)."""
    num_workers = len(events_by_worker)
    figure, axes = plt.subplots(figsize=(11, 0.7 * num_workers + 1.6))
    for row, events in enumerate(events_by_worker):
        y = num_workers - 1 - row
        for action, chunk, microbatch, start, end in events:
            axes.broken_barh([(start * 1e3, (end - start) * 1e3)], (y - 0.4, 0.8), facecolors=COLOURS[action],
                             edgecolor="white", linewidth=0.5)
            if (end - start) / step_s > 0.02:
                axes.text((start + end) / 2 * 1e3, y, str(microbatch), ha="center", va="center", fontsize=7,
                          color="white")
    axes.set_yticks(range(num_workers), [f"worker {k}" for k in reversed(range(num_workers))])
    axes.set_xlim(0, step_s * 1e3)
    axes.set_xlabel("ms since the step started (numbers: micro-batch)")
    axes.set_title(title, fontsize=10)
    used = {e[0] for events in events_by_worker for e in events}
    handles = [plt.Rectangle((0, 0), 1, 1, color=COLOURS[a]) for a in COLOURS if a in used]
    axes.legend(handles, [LABELS[a] for a in COLOURS if a in used], loc="upper right", fontsize=8)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
