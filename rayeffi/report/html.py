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

from rayeffi.report.numbers import column_format
from rayeffi.report.recipe_view import recipe_view
from rayeffi.report.stages_table import TEXT_COLUMNS, stage_rows
from rayeffi.task import HEADLINE_KEYS

PAGE_FILE = "index.html"
STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
section { border-top: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }
th { background: #f3f3f3; }
td.text, th.text { text-align: left; }
tr.best { background: #e6f4e6; }
td.better { color: #17692b; } td.worse { color: #a31515; }
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
    sections = [("stages", "stages"), *((f"stage-{s['name']}", s["name"]) for s in stages),
                ("environment", "environment"), ("recipe", "recipe")]
    body = [
        f"<h1>rayeffi run: {_text(summary.get('recipe', {}).get('name', run_dir.name))}</h1>",
        f"<p>{_text(run_dir)}: status <b>{_text(summary.get('status', '?'))}</b>"
        + (f", {summary['wall_s']:.1f} s" if "wall_s" in summary else "") + "</p>",
        "<nav>" + "".join(f'<a href="#{_text(anchor)}">{_text(label)}</a>' for anchor, label in sections
                          if anchor != "environment" or summary.get("environment")) + "</nav>",
        _stages_section(summary),
        *(_stage_section(stage, images.get(stage["name"], [])) for stage in stages),
        _tracking_section(summary.get("tracking") or {}),
        _environment_section(summary.get("environment")),
        '<section id="recipe"><h2>Resolved recipe</h2><p>The global settings, then what each stage sets or '
        "changes; defaults that do not apply (another model's sizes, another dataset's options) are left out.</p>"
        f"<pre>{_text(_yaml(recipe_view(summary.get('recipe', {}))))}</pre></section>",
    ]
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>rayeffi report: {_text(run_dir.name)}</title><style>{STYLE}</style></head>\n<body>\n"
        + "\n".join(part for part in body if part) + "\n</body></html>\n"
    )
    path = run_dir / "report" / PAGE_FILE
    path.write_text(page)
    return path


STAGE_COLUMNS = ("stage", "kind", *HEADLINE_KEYS, "parameters", "nonzero_parameters", "sparsity", "epochs",
                 "wall_s", "change", "from")

STAGE_HEADERS = {"nonzero_parameters": "nonzero", "wall_s": "wall s"}


def _stages_section(summary: dict[str, Any]) -> str:
    """Every stage on one table: its headline metric and the change against where it started."""
    rows = stage_rows(summary)
    if not rows:
        return ""
    classes = ["better" if row.get("better") else "worse" if row.get("better") is False else "" for row in rows]
    return ('<section id="stages"><h2>Stages</h2>'
            + _table(STAGE_COLUMNS, rows, text_columns=TEXT_COLUMNS, cell_classes={"change": classes},
                     headers=STAGE_HEADERS)
            + "<p>change: of the first metric, in points for accuracies and in per cent otherwise, against "
            "<i>from</i> (the stage's own dense phase, its <code>init_from</code> stage, or its teacher); "
            "sparsity: zeros among the pruned weights.</p></section>")


def _stage_section(stage: dict[str, Any], images: list[Path]) -> str:
    name, kind, history = stage["name"], stage.get("kind", ""), stage.get("history") or []
    parts = [
        f'<section id="stage-{_text(name)}"><h2>{_text(name)}'
        + (f" <small>({_text(kind)})</small>" if kind and kind != name else "") + "</h2>",
        f"<p>{stage.get('wall_s', 0):.1f} s on {stage.get('num_workers', '?')} worker(s); "
        f"checkpoint <code>{_text(stage.get('checkpoint', ''))}</code></p>",
        *(f'<img src="{_text(image.name)}" alt="{_text(image.stem)}">' for image in images),
    ]
    if stage.get("rounds"):
        phases = [{**phase, "epochs": _epoch_range(phase.get("epochs"))} for phase in stage["rounds"]]
        parts.append("<h3>Dense-Sparse-Dense phases</h3>"
                     + _table(PHASE_COLUMNS, phases, text_columns=("phase", "epochs")))
    if any("loss_scale" in row for row in history):
        parts.append("<h3>Loss scale</h3>" + _table(PRECISION_COLUMNS, history))
    if stage.get("trials"):
        parts.append("<h3>Tune trials</h3>" + _trials_table(stage))
    if history:
        parts.append("<h3>Epochs</h3>" + _table(EPOCH_COLUMNS, history))
    return "\n".join(parts) + "</section>"


TRIAL_COLUMNS = ("trial", "config", "status", "epochs", "val_loss", *HEADLINE_KEYS, "error")


def _epoch_range(epochs: Any) -> Any:
    """``[3, 5]`` -> ``3-5``, ``[2, 2]`` -> ``2``."""
    if isinstance(epochs, list) and len(epochs) == 2:
        return str(epochs[0]) if epochs[0] == epochs[1] else f"{epochs[0]}-{epochs[1]}"
    return epochs


def _trials_table(stage: dict[str, Any]) -> str:
    rows = [{"trial": trial.get("trial_id"), "config": json.dumps(trial.get("config", {})),
             "status": trial.get("status"), "epochs": trial.get("epochs_run"),
             **{key: (trial.get("metrics") or {}).get(key) for key in ("val_loss", *HEADLINE_KEYS)},
             "error": trial.get("error", "")} for trial in stage["trials"]]
    best = ["best" if trial.get("trial_id") == stage.get("best_trial") else "" for trial in stage["trials"]]
    return (_table(TRIAL_COLUMNS, rows, text_columns=("trial", "config", "status", "error"), row_classes=best)
            + "<p>Best trial highlighted.</p>")


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


def _environment_section(environment: dict[str, Any] | None) -> str:
    """Versions, host, times and commit (``summary.json``'s ``environment``; older runs lack it)."""
    if not environment:
        return ""
    versions = ", ".join(f"{name} {version}" for name, version in (environment.get("versions") or {}).items())
    rows = [("versions", versions), ("host", environment.get("host")), ("platform", environment.get("platform")),
            ("started", environment.get("started")), ("ended", environment.get("ended")),
            ("git commit", environment.get("git_commit"))]
    cells = "".join(f'<tr><th class="text">{label}</th><td class="text">{_text(value)}</td></tr>'
                    for label, value in rows if value)
    return f'<section id="environment"><h2>Environment</h2><table>{cells}</table></section>'


def _table(columns: Iterable[str], rows: list[dict[str, Any]], text_columns: Iterable[str] = (),
           row_classes: list[str] | None = None, cell_classes: dict[str, list[str]] | None = None,
           headers: dict[str, str] | None = None) -> str:
    """An HTML table of the ``columns`` some row has; each number column in one format
    (``numbers.column_format``), text columns left-aligned and escaped."""
    columns = [column for column in columns if any(row.get(column) not in (None, "") for row in rows)]
    text_columns, cell_classes = set(text_columns), cell_classes or {}
    formats = {column: column_format([row.get(column) for row in rows]) for column in columns}
    header = "".join(f'<th{_class("text" if column in text_columns else "")}>'
                     f'{_text((headers or {}).get(column, column))}</th>' for column in columns)
    body = []
    for index, row in enumerate(rows):
        cells = []
        for column in columns:
            classes = " ".join(filter(None, ["text" if column in text_columns else "",
                                             cell_classes.get(column, [""] * len(rows))[index]]))
            value = row.get(column)
            written = _text("" if value is None else value) if column in text_columns else _text(formats[column](value))
            cells.append(f"<td{_class(classes)}>{written}</td>")
        body.append(f"<tr{_class(row_classes[index] if row_classes else '')}>{''.join(cells)}</tr>")
    return f"<table><tr>{header}</tr>{''.join(body)}</table>"


class _RecipeDumper(yaml.SafeDumper):
    """Lists of plain values on one line (``hidden_sizes: [128, 64]``), as a recipe is written."""


_RecipeDumper.add_representer(list, lambda dumper, items: dumper.represent_sequence(
    "tag:yaml.org,2002:seq", items, flow_style=not any(isinstance(item, (dict, list)) for item in items)))


def _yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_RecipeDumper, sort_keys=False)


def _class(name: str) -> str:
    return f' class="{name}"' if name else ""


def _text(value: Any) -> str:
    return html.escape(str(value))
