"""reports/metrics.json's flat headline and the Markdown model card built from the same report."""

import json
import re

import numpy as np
import pytest

from pneumonia.config import load_config
from pneumonia.contracts.files import write_json
from pneumonia.contracts.image_spec import ImageSpec
from pneumonia.contracts.metrics_report import (
    FLAT_FIGURE_KEYS,
    HEADLINE_KEYS,
    HEADLINE_METRICS,
    HEADLINE_SPLITS,
    MetricsReportError,
    figure_key,
    flat_figures,
    headline_metrics,
    read_headline,
)
from pneumonia.contracts.model_card import (
    ModelCard,
    RegistryRecord,
    build_model_card,
    selection,
)
from pneumonia.evaluation.model_card import (
    SECTIONS,
    TITLE,
    model_card_markdown,
    network_in_words,
)
from pneumonia.evaluation.report import evaluation_report

from helpers import PROJECT_ROOT, write_params

SPEC = {
    "image_size": 128,
    "resize": "letterbox",
    "clahe": True,
    "clahe_clip_limit": 2.0,
    "clahe_tile_grid": 8,
}
TRAIN_CARD = build_model_card(
    image_size=128,
    preprocess=ImageSpec(**SPEC),
    hyperparameters={"batch_size": 32, "model.depth": 4},
    selected=selection("none", 3),
    ensemble_members=1,
    validation={},
    tuning=None,
    registry=RegistryRecord("r-1", "pneumonia-cnn", "3", "m-1", "models:/m-1"),
)


def scored(count: int, seed: int, separation: float):
    rng = np.random.default_rng(seed)
    labels = (rng.random(count) < 0.6).astype(int)
    scores = np.clip(separation * labels + (1 - separation) * rng.random(count), 0, 1)
    patients = np.repeat(np.arange(count // 2), 2)[:count].astype(str)
    return labels, scores, patients


@pytest.fixture
def report(tmp_path):
    """A real detail report: val separates well, test less (a val/test gap, as on Kermany)."""
    settings = load_config(write_params(tmp_path, {"evaluate.bootstrap": 200})).evaluate
    return evaluation_report(settings, 0.45, scored(160, 1, 0.5), scored(120, 2, 0.25))


def test_headline_is_flat_few_numeric_and_keyed_as_defined(report, tmp_path):
    headline = headline_metrics(report)
    assert (
        tuple(headline)
        == HEADLINE_KEYS
        == (
            "roc_auc",
            "sensitivity",
            "specificity",
            "accuracy",
            "threshold",
            "val_roc_auc",
        )
    )
    assert all(type(value) is float for value in headline.values())
    assert headline["threshold"] == 0.45
    assert headline["roc_auc"] == report["test"]["at_threshold"]["roc_auc"]["value"]
    assert headline["specificity"] == report["test"]["at_threshold"]["specificity"]["value"]
    assert headline["val_roc_auc"] == report["val"]["at_threshold"]["roc_auc"]["value"]
    # What evaluate writes round-trips through the reader, and DVC gets a flat object.
    write_json(tmp_path / "metrics.json", headline)
    assert read_headline(tmp_path / "metrics.json") == headline
    assert not any(
        isinstance(value, dict)
        for value in json.loads((tmp_path / "metrics.json").read_text()).values()
    )


def test_flat_figures_carry_every_interval(report):
    figures = flat_figures(report)
    assert tuple(figures) == FLAT_FIGURE_KEYS
    assert len(figures) == 1 + len(HEADLINE_SPLITS) * len(HEADLINE_METRICS) * 3 == 25
    test_auc = report["test"]["at_threshold"]["roc_auc"]
    assert (figures["test_roc_auc_low"], figures["test_roc_auc_high"]) == (
        test_auc["ci_low"],
        test_auc["ci_high"],
    )
    assert figures["val_specificity"] == report["val"]["at_threshold"]["specificity"]["value"]
    for split in HEADLINE_SPLITS:
        for metric in HEADLINE_METRICS:
            low, value, high = (
                figures[figure_key(split, metric, bound)] for bound in ("low", None, "high")
            )
            assert low <= value <= high, (split, metric)


def test_dvc_metrics_show_fits_100_columns(report, tmp_path):
    """The headline is the one DVC metrics file; `dvc metrics show` prints it at most 100 wide.
    Every other figure (train's, the site stage's) is a report read by name: DVC prints all
    metrics files as one table, and `dvc exp show` prefixes the names two files share."""
    import os
    import subprocess

    import yaml

    write_json(tmp_path / "metrics.json", headline_metrics(report))
    (tmp_path / "dvc.yaml").write_text("metrics:\n  - metrics.json\n")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run(["dvc", "init", "-q"], cwd=tmp_path, check=True)
    shown = subprocess.run(
        ["dvc", "metrics", "show"],
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "100"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    widths = [len(line) for line in shown.splitlines()]
    assert widths and max(widths) <= 100, shown
    declared = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())
    metric_files = [
        next(iter(entry)) if isinstance(entry, dict) else entry
        for stage in declared["stages"].values()
        for entry in stage.get("metrics", [])
    ]
    assert metric_files == ["${paths.reports}/metrics.json"], metric_files


def test_an_old_metrics_file_is_refused_naming_the_fix(report, tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, flat_figures(report))  # what evaluate wrote before the narrow headline
    with pytest.raises(MetricsReportError, match=r"lacks roc_auc.*re-run the evaluate stage"):
        read_headline(path)
    write_json(path, {**headline_metrics(report), "roc_auc": "high"})
    with pytest.raises(MetricsReportError, match="roc_auc is 'high', not a number"):
        read_headline(path)
    with pytest.raises(ValueError, match="not a headline figure"):
        figure_key("train", "roc_auc")


NUMBER = r"(\d+\.\d+|n/a)"


def card_figures(card: str, split_heading: str) -> dict[str, tuple[str, str, str]]:
    """'- ROC AUC 0.949 (95% CI 0.932-0.965)' lines after a heading, by metric."""
    block = card.split(split_heading, 1)[1]
    figures = {}
    pattern = (
        rf"^- (ROC AUC|Sensitivity|Specificity|Accuracy) {NUMBER} \(95% CI {NUMBER}-{NUMBER}\)"
    )
    for match in re.finditer(pattern, block, flags=re.MULTILINE):
        name = match.group(1)
        if name not in figures:  # the first block after the heading
            figures[name] = match.group(2, 3, 4)
    return figures


def test_model_card_has_its_sections_and_the_figures_of_metrics_json(report):
    card = model_card_markdown(
        report, TRAIN_CARD, served={"registered_model": "clf", "version": "7"}
    )
    headline = flat_figures(report)
    assert card.startswith(TITLE)
    positions = [card.index(f"\n{section}\n") for section in SECTIONS]
    assert positions == sorted(positions)
    words = {"roc_auc": "ROC AUC", "sensitivity": "Sensitivity", "specificity": "Specificity"}
    words["accuracy"] = "Accuracy"
    test_figures = card_figures(card, "## Performance on the test split")
    val_figures = card_figures(card, "On val, at the same threshold:")
    for split, figures in (("test", test_figures), ("val", val_figures)):
        for metric in HEADLINE_METRICS:
            quoted = [float(text) for text in figures[words[metric]]]
            expected = [headline[figure_key(split, metric, b)] for b in (None, "low", "high")]
            assert quoted == pytest.approx(expected, abs=5e-4), (split, metric)
    threshold = re.search(r"Threshold (\d\.\d{4}): an image", card).group(1)
    assert float(threshold) == pytest.approx(headline["threshold"], abs=5e-5)
    # Counts from the report, population and limits in words.
    test = report["test"]
    assert f"{test['images']} images of {test['patients']} patients" in card
    assert "Guangzhou Women and Children's Medical Center" in card and "aged 1 to 5" in card
    assert "Kermany et al." in card
    assert "Youden" in card and "on val" in card
    assert "not a medical device" in card.lower() and "lateral" in card
    assert "over-calls normals" in card and "One hospital" in card
    # The val/test specificity gap, from this report's own figures.
    gap = (
        f"specificity is {headline['val_specificity']:.3f} on val but "
        f"{headline['test_specificity']:.3f} on test"
    )
    assert headline["val_specificity"] - headline["test_specificity"] > 0.05
    assert gap in card
    assert "`pneumonia-cnn` version 3" in card and "`clf` version 7" in card
    # It fits a registered version's description (MLflow keeps 5000 characters).
    assert len(card) < 5000


def test_model_card_names_the_rule_that_chose_the_threshold(report):
    report = {**report, "threshold": {**report["threshold"], "rule": "sensitivity:0.95"}}
    card = model_card_markdown(report, TRAIN_CARD)
    assert "val sensitivity reaches 0.95" in card
    assert "served" not in card.split("\n\n")[1]  # no served version named when there is none


def test_the_card_names_the_network_it_describes():
    assert network_in_words(ModelCard(preprocess=SPEC)) == "The project's CNN, trained from scratch"
    weights = {"architecture": "densenet121", "setting": "imagenet", "file": "w.h5"}
    card = ModelCard(preprocess=SPEC, weights={**weights, "sha256": "ab12"})
    assert network_in_words(card) == (
        "A densenet121 backbone from imagenet weights (file `w.h5`, sha256 `ab12`)"
    )
    random = ModelCard(
        preprocess=SPEC, weights={"architecture": "mobilenetv3small", "setting": "none"}
    )
    assert network_in_words(random) == "A mobilenetv3small backbone from random weights"
