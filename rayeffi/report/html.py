"""``report/index.html``: one static page for a whole run, built from ``summary.json``.

No scripts and no network: the stage PNGs sit beside the page and are linked by
relative paths, so the ``report/`` folder can be copied or served as it is.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Iterable

import yaml

from rayeffi.task import HEADLINE_KEYS, headline_metrics

PAGE_FILE = "index.html"
STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
section { border-top: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }
th { background: #f3f3f3; }
td.text, th.text { text-align: left; }
tr.best { background: #e6f4e6; }
img { max-width: 100%; display: block; margin: 0.5em 0; }
pre { background: #f7f7f7; padding: 1em; overflow-x: auto; font-size: 0.85em; }
nav a { margin-right: 1em; }
"""
EPOCH_COLUMNS = ("epoch", "train_loss", "val_loss", *HEADLINE_KEYS, "lr", "samples_per_s", "tokens_per_s")
PRECISION_COLUMNS = ("epoch", "loss_scale", "skipped_steps", "grad_underflow_fp16")
PHASE_COLUMNS = ("phase", "round", "epochs", "target_sparsity", "measured_sparsity", "lr", *HEADLINE_KEYS)


def write_html_report(run_dir: Path, summary: dict[str, Any], images: dict[str, list[Path]]) -> Path:
    """Write ``run_dir/report/index.html``; ``images``: each stage's PNGs (in ``report/``)."""
    stages = summary.get("stages", [])
    body = [
        f"<h1>rayeffi run: {_text(summary.get('recipe', {}).get('name', run_dir.name))}</h1>",
        f"<p>{_text(run_dir)}: status <b>{_text(summary.get('status', '?'))}</b>"
        + (f", {summary['wall_s']:.1f} s" if "wall_s" in summary else "") + "</p>",
        "<nav>" + "".join(f'<a href="#stage-{_text(s["name"])}">{_text(s["name"])}</a>' for s in stages)
        + '<a href="#recipe">recipe</a></nav>',
        *(_stage_section(stage, images.get(stage["name"], [])) for stage in stages),
        _tracking_section(summary.get("tracking") or {}),
        '<section id="recipe"><h2>Resolved recipe</h2>'
        f"<pre>{_text(yaml.safe_dump(summary.get('recipe', {}), sort_keys=False))}</pre></section>",
    ]
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>rayeffi report: {_text(run_dir.name)}</title><style>{STYLE}</style></head>\n<body>\n"
        + "\n".join(part for part in body if part) + "\n</body></html>\n"
    )
    path = run_dir / "report" / PAGE_FILE
    path.write_text(page)
    return path


def _stage_section(stage: dict[str, Any], images: list[Path]) -> str:
    name, history = stage["name"], stage.get("history") or []
    parts = [
        f'<section id="stage-{_text(name)}"><h2>{_text(name)} <small>({_text(stage.get("kind", ""))})</small></h2>',
        f"<p>{stage.get('wall_s', 0):.1f} s on {stage.get('num_workers', '?')} worker(s); "
        + "".join(f"final {key} {_number(value)}; " for key, value in headline_metrics(stage.get("metrics") or {}).items())
        + f"checkpoint <code>{_text(stage.get('checkpoint', ''))}</code></p>",
        *(f'<img src="{_text(image.name)}" alt="{_text(image.stem)}">' for image in images),
    ]
    if stage.get("rounds"):
        parts.append("<h3>Dense-Sparse-Dense phases</h3>" + _table(PHASE_COLUMNS, stage["rounds"]))
    if any("loss_scale" in row for row in history):
        parts.append("<h3>Loss scale</h3>" + _table(PRECISION_COLUMNS, history))
    if stage.get("trials"):
        parts.append("<h3>Tune trials</h3>" + _trials_table(stage))
    if history:
        parts.append("<h3>Epochs</h3>" + _table(EPOCH_COLUMNS, history))
    return "\n".join(parts) + "</section>"


def _trials_table(stage: dict[str, Any]) -> str:
    rows = []
    for trial in stage["trials"]:
        metrics = trial.get("metrics") or {}
        best = trial.get("trial_id") == stage.get("best_trial")
        cells = [_cell(trial.get("trial_id"), text=True), _cell(json.dumps(trial.get("config", {})), text=True),
                 _cell(trial.get("status"), text=True), _cell(trial.get("epochs_run")),
                 _cell(metrics.get("val_loss")), _cell(metrics.get("val_accuracy")),
                 _cell(trial.get("error", ""), text=True)]
        rows.append(f'<tr{" class=best" if best else ""}>{"".join(cells)}</tr>')
    header = "".join(f'<th class="text">{h}</th>' for h in ("trial", "config", "status")) + "".join(
        f"<th>{h}</th>" for h in ("epochs", "val_loss", "val_accuracy")) + '<th class="text">error</th>'
    return f"<table><tr>{header}</tr>{''.join(rows)}</table><p>Best trial highlighted.</p>"


def _tracking_section(tracking: dict[str, Any]) -> str:
    items = []
    if "tensorboard" in tracking:
        logdir = _text(tracking["tensorboard"].get("logdir", ""))
        items.append(f"<li>TensorBoard: <code>tensorboard --logdir {logdir}</code></li>")
    if "mlflow" in tracking:
        mlflow = tracking["mlflow"]
        items.append(f"<li>MLflow: {_text(mlflow.get('tracking_uri', ''))}, experiment id "
                     f"{_text(mlflow.get('experiment_id', ''))}, parent run <code>{_text(mlflow.get('run_id', ''))}"
                     "</code></li>")
    return f'<section id="tracking"><h2>Tracking</h2><ul>{"".join(items)}</ul></section>' if items else ""


def _table(columns: Iterable[str], rows: list[dict[str, Any]]) -> str:
    columns = [column for column in columns if any(column in row for row in rows)]
    header = "".join(f"<th>{_text(column)}</th>" for column in columns)
    body = "".join("<tr>" + "".join(_cell(row.get(column)) for column in columns) + "</tr>" for row in rows)
    return f"<table><tr>{header}</tr>{body}</table>"


def _cell(value: Any, text: bool = False) -> str:
    return f'<td class="text">{_text(value)}</td>' if text else f"<td>{_number(value)}</td>"


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e12:
        return str(int(value))  # loss scales, sample rates: 65536, not 6.554e+04
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) >= 1e4 or 0 < abs(value) < 1e-3 else f"{value:.4f}"
    return _text("" if value is None else value)


def _text(value: Any) -> str:
    return html.escape(str(value))
