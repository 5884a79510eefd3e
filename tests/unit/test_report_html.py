"""``rayeffi report DIR`` writes one page with every stage; a headless Chromium renders it."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess

import matplotlib.pyplot
import pytest
import yaml

from rayeffi.cli import main
from rayeffi.recipe import load_recipe
from rayeffi.report.html import write_html_report
from rayeffi.report.numbers import column_format
from rayeffi.report.plots import plot_stage
from rayeffi.report.recipe_view import prune_unused, recipe_view
from rayeffi.report.stages_table import change_text, stage_rows
from rayeffi.techniques.dsd.report import plot_dsd_phases
from rayeffi.recipe.sections import DataConfig, ModelConfig, PrecisionConfig
from rayeffi.recipe.step_options import OptimizerConfig

CHROMIUM_TIMEOUT_S = 120
plt_close = matplotlib.pyplot.close
GLOBALS = {
    "task": {"name": "classification", "ignore_index": -100, "loss": None, "metrics": []},
    "data": DataConfig().model_dump(mode="json"),
    "model": ModelConfig().model_dump(mode="json"),
    "optimizer": OptimizerConfig().model_dump(mode="json"),
    "precision": PrecisionConfig().model_dump(mode="json"),
}


def _epoch(epoch, **extra):
    return {"epoch": epoch, "train_loss": 1.0 / epoch, "val_loss": 1.2 / epoch, "val_accuracy": 0.5 + epoch / 10,
            "lr": 0.1, "samples_per_s": 1000.0, **extra}


def _dsd_epoch(epoch, phase, sparsity):
    row = _epoch(epoch, dsd_phase=phase, dsd_round=1, sparsity=sparsity, target_sparsity=0.5,
                 layer_sparsity={"layers.0.weight": sparsity})
    if epoch == 2:
        row["pruning_histogram"] = {"log10_edges": [-3.0, -2.0, -1.0], "before": [5, 7], "after": [0, 7]}
    return row


ENVIRONMENT = {"versions": {"python": "3.11.9", "rayeffi": "0.3.0", "torch": "2.13.0"}, "host": "node-7",
               "platform": "Linux-x86_64", "started": "2026-01-02T10:00:00+0000",
               "ended": "2026-01-02T10:05:00+0000", "git_commit": "0123abcd+dirty"}


def _recipe_stage(name, kind, **keys):
    """A stage as ``Recipe.model_dump`` writes it: the global sections merged in."""
    return {"name": name, "kind": kind, "epochs": 2, "seed": 0, "init_from": None, "tune": None,
            "early_stop": None, "eval_every_steps": None, "checkpoint_every_steps": None, "techniques": [],
            **GLOBALS, **keys}


def _summary(tmp_path):
    history_fp16 = [_epoch(1, loss_scale=32768.0, skipped_steps=1, grad_underflow_fp16=0.01,
                           loss_scale_history=[[0, 65536.0], [3, 32768.0]]),
                    _epoch(2, loss_scale=65536.0, skipped_steps=1, grad_underflow_fp16=0.0,
                           loss_scale_history=[[8, 65536.0]])]
    dsd_history = [_dsd_epoch(1, "dense", 0.0), _dsd_epoch(2, "sparse", 0.5), _dsd_epoch(3, "redense", 0.0)]
    pruned_history = [_dsd_epoch(1, "sparse", 0.5), _dsd_epoch(2, "redense", 0.0)]
    stage = {"wall_s": 1.5, "num_workers": 2, "checkpoint": str(tmp_path / "stages" / "x" / "checkpoint.pt"),
             "parameters": 101_770, "nonzero_parameters": 101_770}
    return {
        "recipe": {"name": "page", "seed": 0, **GLOBALS, "stages": [
            _recipe_stage("fp16", "train", precision={**GLOBALS["precision"], "policy": "fp16"}),
            _recipe_stage("dsd", "dsd", dsd={"rounds": [{"sparsity": 0.5}], "dense_epochs": 1}),
            _recipe_stage("pruned", "dsd", init_from="fp16", dsd={"rounds": [{"sparsity": 0.5}], "dense_epochs": 0}),
            _recipe_stage("student", "distill", model={**GLOBALS["model"], "hidden_sizes": [32]},
                          distill={"teachers": [{"stage": "fp16", "checkpoint": None, "model": None}]}),
            _recipe_stage("search", "train")]},
        "status": "complete", "wall_s": 12.0, "environment": ENVIRONMENT,
        "tracking": {"tensorboard": {"logdir": str(tmp_path / "tensorboard")}},
        "stages": [
            {"name": "fp16", "kind": "train", "metrics": {**history_fp16[-1], "val_accuracy": 0.8125},
             "history": history_fp16, **stage, "wall_s": 695.3386},
            {"name": "dsd", "kind": "dsd", "metrics": dsd_history[-1], "history": dsd_history, **stage,
             "rounds": [{"phase": "sparse", "round": 1, "epochs": [2, 2], "target_sparsity": 0.5,
                         "measured_sparsity": 0.5, "lr": 0.1, "val_accuracy": 0.7}]},
            {"name": "pruned", "kind": "dsd", "metrics": {**pruned_history[-1], "val_accuracy": 0.825,
                                                          "sparsity": 0.5},
             "history": pruned_history, **stage, "nonzero_parameters": 50_885, "wall_s": 12690.0},
            {"name": "student", "kind": "distill", "metrics": {**_epoch(2), "val_accuracy": 0.79},
             "history": [_epoch(1), _epoch(2)], **stage, "parameters": 2_410, "nonzero_parameters": 2_410},
            {"name": "search", "kind": "train", "metrics": _epoch(1), "history": [_epoch(1)], **stage,
             "best_trial": "t1", "best_config": {"optimizer.lr": 0.2},
             "trials": [{"trial_id": "t1", "config": {"optimizer.lr": 0.2}, "status": "done", "epochs_run": 1,
                         "metrics": _epoch(1)},
                        {"trial_id": "t2", "config": {"optimizer.lr": 9.0}, "status": "error", "epochs_run": 0,
                         "metrics": {}, "error": "RuntimeError: <diverged>"}]},
        ],
    }


@pytest.fixture(scope="module")
def report_page(tmp_path_factory):
    """One run's page (and PNGs) for the whole module: plotting takes seconds."""
    run_dir = tmp_path_factory.mktemp("run")
    (run_dir / "summary.json").write_text(json.dumps(_summary(run_dir)))
    assert main(["report", str(run_dir)]) == 0
    return run_dir / "report" / "index.html"


def test_the_page_has_every_stage_its_pictures_and_tables(report_page):
    page = report_page.read_text()
    for name in ("fp16", "dsd", "pruned", "student", "search"):
        assert f'id="stage-{name}"' in page
    for image in ("fp16.png", "dsd.png", "dsd-phases.png", "dsd-pruning.png", "pruned-phases.png", "search.png"):
        assert f'src="{image}"' in page and (report_page.parent / image).is_file()
    assert "Dense-Sparse-Dense phases" in page and "Loss scale" in page and "Tune trials" in page
    assert "RuntimeError: &lt;diverged&gt;" in page  # escaped, not markup
    assert 'id="recipe"' in page and "tensorboard --logdir" in page
    assert page.index('id="stages"') < page.index('id="stage-fp16"')  # the comparison comes first
    assert "<h2>dsd</h2>" in page and "<h2>pruned <small>(dsd)</small></h2>" in page  # no "dsd (dsd)"


def _table_cells(page, section):
    """The cell texts of the first table in ``<section id=section>``, header row first."""
    table = re.search(rf'<section id="{section}">.*?<table>(.*?)</table>', page, re.S).group(1)
    return [[html.unescape(cell) for cell in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row)]
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table)]


def test_the_stages_table_compares_each_stage_with_where_it_started(report_page):
    assert _table_cells(report_page.read_text(), "stages") == [
        ["stage", "kind", "val_accuracy", "parameters", "nonzero", "sparsity", "epochs", "wall s", "change", "from"],
        ["fp16", "train", "0.8125", "101,770", "101,770", "", "2", "695.3", "", ""],
        # its own dense phase (epoch 1, 0.6000) -> 0.8000
        ["dsd", "", "0.8000", "101,770", "101,770", "0.0", "3", "1.5", "+20.00 pt", "dense phase"],
        # init_from: fp16, no dense phase of its own
        ["pruned", "dsd", "0.8250", "101,770", "50,885", "0.5", "2", "12,690.0", "+1.25 pt", "fp16"],
        ["student", "distill", "0.7900", "2,410", "2,410", "", "2", "1.5", "-2.25 pt", "teacher fp16"],
        ["search", "train", "0.6000", "101,770", "101,770", "", "1", "1.5", "", ""],
    ]
    page = report_page.read_text()
    assert '<td class="text better">+1.25 pt</td>' in page and '<td class="text worse">-2.25 pt</td>' in page


def test_every_table_writes_a_column_in_one_format(report_page):
    page = report_page.read_text()
    loss_scale = _table_cells(page, "stage-fp16")
    assert loss_scale[1:] == [["1", "32,768", "1", "0.01"], ["2", "65,536", "1", "0.00"]]
    assert "1.269e+04" not in page and "695.3386" not in page


def test_the_environment_is_shown_and_an_older_summary_leaves_it_out(report_page, tmp_path):
    page = report_page.read_text()
    assert _table_cells(page, "environment") == [
        ["versions", "python 3.11.9, rayeffi 0.3.0, torch 2.13.0"], ["host", "node-7"],
        ["platform", "Linux-x86_64"], ["started", "2026-01-02T10:00:00+0000"],
        ["ended", "2026-01-02T10:05:00+0000"], ["git commit", "0123abcd+dirty"]]
    older = _summary(tmp_path)  # before summaries carried parameters and the environment
    del older["environment"]
    for stage in older["stages"]:
        del stage["parameters"], stage["nonzero_parameters"]
    older["stages"][0]["parameters"] = 17_226  # one stage that has it: the others' cells are blank
    (tmp_path / "report").mkdir()
    page = write_html_report(tmp_path, older, images={}).read_text()
    rows = _table_cells(page, "stages")
    assert rows[0][3] == "parameters" and "nonzero" not in rows[0]
    assert [row[3] for row in rows[1:]] == ["17,226", "", "", "", ""]
    assert 'id="environment"' not in page and 'href="#environment"' not in page


def test_the_recipe_is_shown_once_with_each_stage_by_its_changes(report_page):
    page = report_page.read_text()
    recipe = yaml.safe_load(html.unescape(re.search(r'<section id="recipe">.*?<pre>(.*?)</pre>', page, re.S).group(1)))
    assert recipe["model"] == {"name": "mlp", "hidden_sizes": [128, 64], "dropout": 0.0}
    assert "synthetic" not in recipe["data"] and "augment" not in recipe["data"]
    student = next(stage for stage in recipe["stages"] if stage["name"] == "student")
    assert student["model"] == {"hidden_sizes": [32]}  # the rest is the globals'
    assert set(student) == {"name", "kind", "epochs", "model", "distill"}
    fp16 = next(stage for stage in recipe["stages"] if stage["name"] == "fp16")
    assert fp16["precision"]["policy"] == "fp16" and "loss_scale" in fp16["precision"]
    assert page.count("hidden_sizes: [128, 64]") == 1


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no headless Chromium on this machine (Debian: apt-get install chromium)")


IMAGE_CHECK = """<script>
window.addEventListener("load", () => {  // every image has loaded or failed by now
  for (const image of document.images)
    image.setAttribute("data-rendered", image.complete && image.naturalWidth > 0 ? "yes" : "no");
  document.body.setAttribute("data-checked", "yes");
});
</script>"""


def _rendered_dom(browser, page, profile):
    """The DOM Chromium builds from a copy of ``page`` that marks each image loaded or broken."""
    copy = page.with_name("rendered-check.html")  # beside the page: the same relative image paths
    copy.write_text(page.read_text().replace("</body>", IMAGE_CHECK + "</body>"))
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                          f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom", copy.as_uri()],
                         capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S)
    copy.unlink()
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'data-checked="yes"' in dom.stdout, "the page's load event never fired"
    return dom.stdout


def test_chromium_renders_every_section_and_every_image(report_page, tmp_path):
    browser = _chromium()
    dom = _rendered_dom(browser, report_page, tmp_path / "profile")
    assert re.findall(r'<section id="([^"]+)"', dom) == [
        "stages", "stage-fp16", "stage-dsd", "stage-pruned", "stage-student", "stage-search", "tracking",
        "environment", "recipe"]
    images = re.findall(r"<img [^>]*>", dom)
    assert len(images) == report_page.read_text().count("<img ") == 9
    assert all('data-rendered="yes"' in image for image in images), [i for i in images if "yes" not in i]
    assert [row[0] for row in _table_cells(dom, "stages")] == ["stage", "fp16", "dsd", "pruned", "student", "search"]

    (report_page.parent / "student.png").rename(report_page.parent / "moved.png")  # the check sees a broken one
    try:
        broken = _rendered_dom(browser, report_page, tmp_path / "profile")
    finally:
        (report_page.parent / "moved.png").rename(report_page.parent / "student.png")
    assert re.findall(r'<img src="([^"]+)"[^>]*data-rendered="no"', broken) == ["student.png"]


@pytest.mark.parametrize(("values", "written"), [
    ([0.8125, 0.825], ["0.8125", "0.8250"]),  # the same decimals down a column
    ([695.3386, 12690.0, 1.5], ["695.3", "12,690.0", "1.5"]),  # never 695.3386 beside 1.269e+04
    ([32768.0, 65536.0, None], ["32,768", "65,536", ""]),  # whole numbers as integers; missing is blank
    ([0.1, 0.01, 0.001], ["0.100", "0.010", "0.001"]),
    ([0.048343, 2.30258], ["0.048", "2.303"]),
    ([0.0, 0.5], ["0.0", "0.5"]),
    ([1e-6, 0.1], ["1.000e-06", "1.000e-01"]),  # a range fixed point cannot hold
    ([3e9, 1.5e9], ["3.000e+09", "1.500e+09"]),
    ([2.5, float("nan"), "n/a"], ["2.5", "nan", "n/a"]),
])
def test_a_column_has_one_number_format(values, written):
    write = column_format(values)
    assert [write(value) for value in values] == written


def test_changes_are_points_for_accuracies_and_per_cent_otherwise():
    assert change_text("val_accuracy", 0.8125, 0.8250) == "+1.25 pt"
    assert change_text("val_token_accuracy", 0.5, 0.45) == "-5.00 pt"
    assert change_text("val_perplexity", 12.0, 9.0) == "-25.0 %"
    assert change_text("val_rmse", 0.5, 0.55) == "+10.0 %"


def test_a_language_model_stage_is_compared_on_perplexity_lower_being_better():
    summary = {"recipe": {"stages": [{"name": "lm", "kind": "train"},
                                     {"name": "sparse", "kind": "train", "init_from": "lm",
                                      "techniques": [{"name": "dsd"}]}]},
               "stages": [{"name": "lm", "kind": "train",
                           "metrics": {"val_perplexity": 12.0, "val_token_accuracy": 0.4}},
                          {"name": "sparse", "kind": "train",
                           "metrics": {"val_perplexity": 9.0, "val_token_accuracy": 0.5}}]}
    rows = stage_rows(summary)
    assert rows[1]["kind"] == "train + dsd" and rows[1]["from"] == "lm"
    assert rows[1]["change"] == "-25.0 %" and rows[1]["better"] is True
    summary["recipe"]["stages"][1]["init_from"] = {"path": "lm", "strict": False, "prefix": ""}  # the long form
    assert stage_rows(summary)[1]["from"] == "lm"
    summary["recipe"]["stages"][1]["init_from"] = "/weights/lm.safetensors"  # a file: nothing to compare with
    assert "change" not in stage_rows(summary)[1]


def _resolved(raw):
    """``summary.json``'s ``recipe`` for a recipe dict."""
    return load_recipe({"name": "r", **raw}).model_dump(mode="json")


def test_defaults_that_do_not_apply_are_left_out_and_set_keys_are_kept(tmp_path):
    parquet = tmp_path / "rows.parquet"
    user = _resolved({"data": {"dataset": "parquet", "path": str(parquet)}, "model": {"name": "my.models:build"},
                      "stages": [{"name": "a", "kind": "train", "epochs": 1}]})
    pruned = prune_unused(user)
    assert set(pruned["model"]) == {"name", "kwargs", "input_dtype"}  # no built-in's sizes for a user model
    assert "synthetic" not in pruned["data"] and "augment" not in pruned["data"] and "seq_len" not in pruned["data"]
    assert pruned["data"]["path"] == str(parquet) and pruned["data"]["label_column"] == "label"
    assert "momentum" in pruned["optimizer"]  # sgd reads it
    assert "loss_scale" not in pruned["precision"] and "ignore_index" not in pruned["task"]

    built_in = prune_unused(_resolved({
        "data": {"dataset": "synthetic", "augment": {"crop_padding": 2}}, "task": "classification",
        "model": {"name": "lm", "hidden_sizes": [8]}, "optimizer": {"name": "adam"},
        "stages": [{"name": "a", "kind": "train", "epochs": 1}]}))
    assert built_in["model"]["hidden_sizes"] == [8]  # set by the user: kept, even where unread
    assert {"d_model", "num_layers", "num_heads", "dropout"} <= set(built_in["model"])
    assert "channels" not in built_in["model"] and "kwargs" not in built_in["model"]
    assert "synthetic" in built_in["data"] and built_in["data"]["augment"]["crop_padding"] == 2
    assert "path" not in built_in["data"] and "momentum" not in built_in["optimizer"]


def test_the_recipe_view_shows_each_stage_by_what_it_changes():
    view = recipe_view(_resolved({
        "optimizer": {"name": "sgd", "lr": 0.05},
        "stages": [{"name": "dense", "kind": "train", "epochs": 2},
                   {"name": "small", "kind": "train", "epochs": 1, "init_from": "previous",
                    "model": {"name": "cnn"}, "optimizer": {"lr": 0.01}, "data": {"image_shape": None}},
                   {"name": "dsd", "kind": "dsd", "init_from": "dense", "dsd": {"rounds": [0.5]}}]}))
    assert view["stages"][0] == {"name": "dense", "kind": "train", "epochs": 2}
    assert view["stages"][1] == {"name": "small", "kind": "train", "epochs": 1, "init_from": "previous",
                                 "model": {"name": "cnn", "channels": [16, 32]}, "optimizer": {"lr": 0.01}}
    assert view["stages"][2]["dsd"]["rounds"] == [{"sparsity": 0.5}]  # a round's unset keys left out
    assert "epochs" not in view["stages"][2]


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plot functions draw, kept instead of closed."""
    figures = []
    monkeypatch.setattr(matplotlib.pyplot, "close", figures.append)
    yield figures
    for figure in figures:
        plt_close(figure)


def test_curves_have_whole_epoch_ticks_and_titles_say_the_kind_once(drawn, tmp_path):
    history = [_epoch(epoch) for epoch in (1, 2, 3)]
    plot_stage("dsd", "dsd", history, tmp_path / "a.png")
    plot_stage("student", "distill", history, tmp_path / "b.png")
    loss_axis, metric_axis = drawn[0].axes
    for axis in (loss_axis, metric_axis):
        ticks = [tick for tick in axis.get_xticks() if 1 <= tick <= 3]
        assert ticks == [1, 2, 3]  # not 1.25, 1.5, ...
    assert loss_axis.get_title() == "dsd: loss" and drawn[1].axes[0].get_title() == "student (distill): loss"


def test_the_dsd_legend_names_only_the_phases_that_ran(drawn, tmp_path):
    from_init = [_dsd_epoch(1, "sparse", 0.5), _dsd_epoch(2, "sparse", 0.5), _dsd_epoch(3, "redense", 0.0)]
    plot_dsd_phases("pruned", from_init, tmp_path / "a.png")
    labels = [text.get_text() for text in drawn[0].axes[1].get_legend().get_texts()]
    assert labels == ["sparse", "redense", "train loss", "validation loss"]
    ticks = [tick for tick in drawn[0].axes[0].get_xticks() if 1 <= tick <= 3]
    assert ticks == [1, 2, 3]
