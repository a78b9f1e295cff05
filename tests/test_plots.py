"""`dvc plots show`: every chart titled and labelled, nothing drawn twice, the confusion matrix laid
out like the PNG (actual on y, predicted on x, NORMAL first), and a page that needs no network."""

from __future__ import annotations

import configparser
import importlib.util
import json
import re
from pathlib import Path

import keras
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import yaml
from dvc_render import VegaRenderer

from pneumonia.config import load_config
from pneumonia.contracts.labels import CLASSES
from pneumonia.deployment.outputs import plot_table
from pneumonia.evaluation.outputs import write_figures, write_tables
from pneumonia.evaluation.plots import confusion_matrix, draw_confusion
from pneumonia.evaluation.report import curve_tables, predictions_table
from pneumonia.model.training import history_table
from pneumonia.site.protocol import new_site_table

from helpers import PROJECT_ROOT, commit_baseline, copy_repository, run_command, tool_environment

DVC_DIR = PROJECT_ROOT / ".dvc"
# A script tag that loads from anywhere: DVC's default page loads Vega from cdn.jsdelivr.net.
SCRIPT_SOURCE = re.compile(r"<script[^>]*\bsrc\s*=", re.IGNORECASE)
COUNTS = {"true_negative": 7, "false_positive": 3, "false_negative": 2, "true_positive": 11}


def plot_definitions() -> tuple[list[str], dict[str, dict]]:
    """dvc.yaml's plots: the image folders (plain paths) and the Vega charts by id."""
    entries = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["plots"]
    folders = [entry for entry in entries if isinstance(entry, str)]
    charts = {}
    for entry in entries:
        if isinstance(entry, dict):
            ((plot_id, definition),) = entry.items()
            charts[plot_id] = definition
    return folders, charts


def the_only_y(definition: dict) -> str:
    (fields,) = definition["y"].values()
    assert isinstance(fields, str), definition
    return fields


def offline_template() -> Path:
    config = configparser.ConfigParser()
    config.read(DVC_DIR / "config")
    # DVC resolves a relative plots.html_template against .dvc/.
    return (DVC_DIR / config["plots"]["html_template"]).resolve()


def test_every_chart_has_a_title_and_named_axes():
    _, charts = plot_definitions()
    assert len(charts) >= 6
    for plot_id, definition in charts.items():
        for key in ("title", "x_label", "y_label"):
            label = definition.get(key, "")
            # Unlabelled, DVC names an axis after its field, or "y" for several fields.
            assert label and label not in ("x", "y"), (plot_id, key, label)


def test_learning_curves_put_train_and_val_in_one_chart_each():
    _, charts = plot_definitions()
    fields = {tuple(next(iter(d["y"].values()))) for d in charts.values() if d["x"] == "epoch"}
    assert fields == {("auc", "val_auc"), ("loss", "val_loss")}


def test_the_png_versions_of_the_vega_charts_are_left_out():
    folders, _ = plot_definitions()
    # The test curves and confusion matrix are drawn by Vega; their PNGs are for MLflow. The
    # sample grids stay; the Grad-CAM panels (images of patients, not DVC-cached, so `dvc plots
    # diff` could not load another revision's) are on disk and in MLflow only.
    assert folders == ["${paths.reports}/samples"]


def test_offline_template_inlines_vega_and_has_no_remote_scripts():
    template = offline_template()
    assert template == PROJECT_ROOT / "docs" / "plots" / "offline_template.html"
    page = template.read_text(encoding="utf-8")
    assert page.count("{plot_divs}") == 1
    # With a {scripts} placeholder DVC would add its CDN script tags.
    assert "{scripts}" not in page
    assert not SCRIPT_SOURCE.search(page)
    assert "cdn.jsdelivr" not in page
    spec = importlib.util.spec_from_file_location(
        "build_template", PROJECT_ROOT / "docs" / "plots" / "build_template.py"
    )
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    for name, (version, _) in builder.PACKAGES.items():
        assert f"<script>/* {name} {version} */" in page, name
        assert (PROJECT_ROOT / "docs" / "plots" / "licenses" / f"{name}.LICENSE").is_file()
    # vega-embed defines the global dvc_render's plot divs call.
    assert "vegaEmbed" in page


def confusion_spec(rows: pd.DataFrame) -> dict:
    """The Vega-Lite spec DVC fills for dvc.yaml's confusion matrix, from rows of a predictions
    table (the project's template from .dvc/plots, as `dvc plots show` finds it)."""
    _, charts = plot_definitions()
    definition = charts["Test confusion matrix"]
    datapoints = [{**row, "rev": "workspace"} for row in rows.to_dict("records")]
    renderer = VegaRenderer(
        datapoints,
        "Test confusion matrix",
        template=definition["template"],
        template_dir=str(DVC_DIR / "plots"),
        x=definition["x"],
        y=the_only_y(definition),
        title=definition["title"],
        x_label=definition["x_label"],
        y_label=definition["y_label"],
    )
    return renderer.get_filled_template()


def test_confusion_chart_puts_actual_on_y_and_predicted_on_x_with_counts():
    labels = np.array([0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.9, 0.2, 0.8, 0.7])
    index = pd.DataFrame({"path": [f"{i}.jpeg" for i in range(5)], "patient_id": list("abcde")})
    spec = confusion_spec(predictions_table(index, labels, scores, 0.5))
    encoding = spec["spec"]["encoding"]
    assert encoding["x"]["field"] == "predicted"
    assert encoding["y"]["field"] == "actual"
    # The PNG's order: NORMAL (the negative class) first on both axes, so top left on y.
    assert encoding["x"]["sort"] == encoding["y"]["sort"] == list(CLASSES)
    assert encoding["x"]["title"] == "predicted class"
    assert encoding["y"]["title"] == "actual class"
    marks = [
        layer["mark"]["type"] if isinstance(layer["mark"], dict) else layer["mark"]
        for layer in spec["spec"]["layer"]
    ]
    assert marks == ["rect", "text"]
    assert spec["spec"]["layer"][1]["encoding"]["text"]["field"] == "images"  # always shown
    assert spec["spec"]["transform"][0]["groupby"] == ["actual", "predicted"]


def test_png_confusion_matrix_has_the_same_layout():
    matrix = confusion_matrix(COUNTS)
    # Row = actual, column = predicted, in CLASSES order.
    assert matrix[0, 1] == COUNTS["false_positive"]  # actual NORMAL, called PNEUMONIA
    assert matrix[1, 0] == COUNTS["false_negative"]
    figure, axes = plt.subplots()
    try:
        draw_confusion(axes, COUNTS, CLASSES)
        assert axes.get_xlabel() == "predicted class"
        assert axes.get_ylabel() == "actual class"
        assert [tick.get_text() for tick in axes.get_xticklabels()] == list(CLASSES)
        assert [tick.get_text() for tick in axes.get_yticklabels()] == list(CLASSES)
        cells = {(text.get_position(), text.get_text()) for text in axes.texts}
        assert ((1, 0), "3") in cells  # x = predicted PNEUMONIA, y = actual NORMAL
        assert ((0, 1), "2") in cells
        # imshow puts row 0 at the top, as Vega puts the first of the sort order.
        assert axes.yaxis_inverted()
    finally:
        plt.close(figure)


def write_reports(repo: Path) -> None:
    """What train and evaluate write for the plots, from their own functions on toy numbers."""
    config = load_config(repo / "params.yaml")
    paths = config.paths
    history = keras.callbacks.History()
    history.history = {
        name: list(np.linspace(start, start + 0.1, 4))
        for name, start in (("auc", 0.8), ("val_auc", 0.75), ("loss", 0.5), ("val_loss", 0.6))
    }
    paths.history_table.parent.mkdir(parents=True, exist_ok=True)
    history_table(history).to_csv(paths.history_table, index=False)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 60)
    scores = np.clip(labels * 0.4 + rng.random(60) * 0.6, 0, 1)
    tables = curve_tables(labels, scores, bins=5)
    index = pd.DataFrame({"path": [f"{i}.jpeg" for i in range(60)], "patient_id": range(60)})
    tables["predictions"] = predictions_table(index, labels, scores, 0.5)
    write_tables(tables, paths)
    measured = {
        "specificity": {"value": 0.8},
        "sensitivity": {"value": 0.9},
        "roc_auc": {"value": 0.9},
        "pr_auc": {"value": 0.9},
        "ece": {"value": 0.1},
        "confusion": COUNTS,
    }
    write_figures(measured, tables, float(labels.mean()), paths.evaluate_plots)
    for folder, name in ((paths.gradcam_panels, "true_positive"), (paths.samples, "train")):
        folder.mkdir(parents=True, exist_ok=True)
        plt.imsave(folder / f"{name}.png", rng.random((8, 8)))
    # The site stage's plot table, from its own functions on 300 toy patients of 2 images each.
    site_labels = np.repeat(rng.integers(0, 2, 300), 2)
    site_scores = np.clip(site_labels * 0.4 + rng.random(600) * 0.6, 0, 1)
    table = new_site_table(site_labels, site_scores, np.repeat(np.arange(300), 2), 0.5, draws=5)
    paths.site_plot_table.parent.mkdir(parents=True, exist_ok=True)
    plot_table(table).to_csv(paths.site_plot_table, index=False)


@pytest.mark.slow
def test_dvc_plots_show_renders_an_offline_page_with_labelled_charts(tmp_path):
    repo = tmp_path / "repo"
    copy_repository(repo)
    write_reports(repo)
    env = tool_environment()
    commit_baseline(repo, env)

    run_command(["dvc", "plots", "show", "-o", str(tmp_path / "page")], repo, env)
    page = (tmp_path / "page" / "index.html").read_text(encoding="utf-8")
    assert not SCRIPT_SOURCE.search(page)
    assert "https://cdn" not in page
    assert "vegaEmbed('#" in page  # the charts are there, drawn by the inlined vega-embed
    assert "train.png" in page and "true_positive.png" not in page
    assert "roc.png" not in page and "confusion_matrix.png" not in page

    shown = json.loads(run_command(["dvc", "plots", "show", "--json"], repo, env).stdout)["data"]
    _, charts = plot_definitions()
    for plot_id, definition in charts.items():
        (rendered,) = shown[plot_id]
        assert rendered["type"] == "vega"
        text = json.dumps(rendered["content"])
        for key in ("title", "x_label", "y_label"):
            assert json.dumps(definition[key]) in text, (plot_id, key)
        assert '"title": "y"' not in text, plot_id
    confusion = shown["Test confusion matrix"][0]["content"]["spec"]["encoding"]
    assert (confusion["x"]["field"], confusion["y"]["field"]) == ("predicted", "actual")
