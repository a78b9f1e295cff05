"""The model card a person reads: what the model is for, on whom it was measured, how well, at
which threshold, what a score means, and where it is known to fail. Built from evaluate's report
and train's machine card (models/model.json) only, so every figure in it is one the pipeline
measured; evaluate writes it (reports/evaluate/model_card.md), logs it to MLflow and puts it in
the registered versions' descriptions. The site stage writes reports/model_card.md: this card
with its "Site readiness (site-calibrated)" section after it (deployment.outputs)."""

from __future__ import annotations

import math
from typing import Any

from pneumonia.contracts.input_spec import input_spec_of
from pneumonia.contracts.metrics_report import (
    BOOTSTRAP,
    CONFUSION,
    HEADLINE_METRICS,
    THRESHOLD,
    at_threshold,
    chosen_threshold,
    flat_figure,
    flat_figures,
    measured,
    threshold_rule,
)
from pneumonia.contracts.model_card import ModelCard
from pneumonia.contracts.operating_point import OperatingPoint

TITLE = "# Model card: pneumonia from pediatric chest X-rays"
SECTIONS = (
    "## Intended use",
    "## Data",
    "## Performance on the test split",
    "## Operating threshold",
    "## What a score means",
    "## Known limitations",
    "## The model",
    "## Input spec",
)
METRIC_WORDS = {
    "roc_auc": "ROC AUC",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "accuracy": "Accuracy",
}
# The val figures the threshold section names.
VAL_RATES = ("sensitivity", "specificity")
# Specificity lower on test than on val by more than this is called out as a gap.
GAP = 0.05


def figure(value: float, digits: int = 3) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def with_interval(headline: dict[str, float], split: str, metric: str, confidence: str) -> str:
    """'ROC AUC 0.949 (95% CI 0.932-0.965)'."""
    measured_figure = flat_figure(headline, split, metric)
    value, low, high = measured_figure.value, measured_figure.low, measured_figure.high
    return f"{METRIC_WORDS[metric]} {figure(value)} ({confidence} CI {figure(low)}-{figure(high)})"


def rule_in_words(rule: str) -> str:
    if rule == "youden":
        return "Youden's rule: the threshold that maximises sensitivity + specificity - 1 on val"
    if rule.startswith("sensitivity:"):
        target = rule.split(":", 1)[1]
        return (
            f"the highest threshold whose val sensitivity reaches {target} (the best "
            "specificity there)"
        )
    return f"a fixed threshold set in params.yaml (evaluate.threshold: {rule})"


def network_in_words(train_card: ModelCard) -> str:
    """'The project's CNN, trained from scratch' or 'A densenet121 backbone from imagenet
    weights (file ..., sha256 ...)', from train's machine card."""
    weights = train_card.weights or {}
    architecture = weights.get("architecture", "cnn")
    if architecture == "cnn":
        return "The project's CNN, trained from scratch"
    if weights.get("setting") == "none":
        return f"A {architecture} backbone from random weights"
    return (
        f"A {architecture} backbone from {weights.get('setting')} weights (file "
        f"`{weights.get('file')}`, sha256 `{weights.get('sha256')}`)"
    )


def split_counts(section: dict[str, Any]) -> str:
    return (
        f"{section['images']} images of {section['patients']} patients "
        f"({section['pneumonia']} pneumonia, {section['normal']} normal)"
    )


def model_card_markdown(
    report: dict[str, Any],
    train_card: ModelCard,
    served: dict[str, str] | None = None,
    point: OperatingPoint | None = None,
) -> str:
    """The card as Markdown, from evaluate's detail report (evaluation.report) and train's
    model.json; `served` names the served model's registered version when there is one, `point`
    the operating point the input spec states (None: the report's threshold, chosen on val)."""
    headline = flat_figures(report)
    lines = [
        TITLE,
        "",
        opening_line(train_card, served),
        "",
        *INTENDED_USE,
        *data_section(report),
        *performance_section(report, headline),
        *threshold_section(report, headline),
        *SCORE_MEANING,
        *limitations_section(headline),
        *model_section(train_card),
        *input_spec_section(train_card, report, point),
    ]
    return "\n".join(lines)


def opening_line(train_card: ModelCard, served: dict[str, str] | None) -> str:
    """Which registered versions the card describes, and what it is written from."""
    registry = train_card.registry()
    return (
        f"Keras model `{registry.registered_model}` version {registry.version} "
        f"(model id `{registry.model_id}`, train run `{registry.run_id}`)"
        + (
            f", served with its threshold as `{served['registered_model']}` version "
            f"{served['version']}"
            if served
            else ""
        )
        + ". Written by the evaluate stage from reports/evaluate/metrics_detail.json and "
        "models/model.json; the test figures below are the ones in reports/metrics.json, their "
        "intervals those of metrics_detail.json."
    )


INTENDED_USE = (
    SECTIONS[0],
    "",
    "- Research use only. Not a medical device; not for diagnosis or treatment decisions.",
    "- Input: one frontal (anterior-posterior) chest X-ray of a child aged 1 to 5. Output: the "
    "probability of pneumonia (bacterial or viral) against normal, and a label at the "
    "operating threshold.",
    "- Population: pediatric patients aged 1 to 5 at one hospital, Guangzhou Women and "
    "Children's Medical Center (Kermany et al., Cell 2018). Other ages, hospitals, scanners "
    "and adult chests are outside what was measured.",
    "",
)


def data_section(report: dict[str, Any]) -> list[str]:
    return [
        SECTIONS[1],
        "",
        "- Source: the Kermany et al. chest X-ray set (Kaggle `paultimothymooney/"
        "chest-xray-pneumonia`), JPEGs labelled NORMAL or PNEUMONIA.",
        "- Split: the official test split is kept as test; the official train and val images are "
        "re-split into train and val by patient (no child in two splits), stratified by class.",
        f"- Val (tuning, the best epoch, threshold): {split_counts(report['val'])}.",
        f"- Test (measured once, never used to choose anything): {split_counts(report['test'])}.",
        "",
    ]


def performance_section(report: dict[str, Any], headline: dict[str, float]) -> list[str]:
    """Test at the threshold with intervals and the confusion counts, then val."""
    confidence = f"{report[BOOTSTRAP]['confidence'] * 100:g}%"
    resamples = report[BOOTSTRAP]["resamples"]
    confusion = at_threshold(report, "test")[CONFUSION]
    return [
        SECTIONS[2],
        "",
        f"At the operating threshold {figure(headline[THRESHOLD], 4)}, with {confidence} "
        f"confidence intervals from {resamples} bootstrap resamples of patients:",
        "",
        *(
            f"- {with_interval(headline, 'test', metric, confidence)}"
            for metric in HEADLINE_METRICS
        ),
        f"- Confusion: {confusion['true_positive']} true positives, "
        f"{confusion['false_negative']} false negatives (missed pneumonia), "
        f"{confusion['true_negative']} true negatives, {confusion['false_positive']} false "
        "positives (normals called pneumonia).",
        "",
        "On val, at the same threshold:",
        "",
        *(f"- {with_interval(headline, 'val', metric, confidence)}" for metric in HEADLINE_METRICS),
        "",
        "Precision, F1, PR AUC, calibration (Brier, ECE) and test at 0.5 are in "
        "reports/evaluate/metrics_detail.json.",
        "",
    ]


def threshold_section(report: dict[str, Any], headline: dict[str, float]) -> list[str]:
    threshold = headline[THRESHOLD]
    rule = threshold_rule(report)
    sensitivity, specificity = (measured(report, "val", name) for name in VAL_RATES)
    return [
        SECTIONS[3],
        "",
        f"- Threshold {figure(threshold, 4)}: an image is called pneumonia when its probability "
        "is at or above it.",
        f"- Chosen on val by {rule_in_words(rule)} (evaluate.threshold: {rule}); test was not "
        "used to choose it.",
        f"- On val it gives sensitivity {figure(sensitivity.value)} and specificity "
        f"{figure(specificity.value)}.",
        "",
    ]


def specificity_gap(headline: dict[str, float]) -> str:
    """The val-to-test specificity gap in words, called large above GAP."""
    val_specificity = flat_figure(headline, "val", "specificity").value
    test_specificity = flat_figure(headline, "test", "specificity").value
    gap = val_specificity - test_specificity
    if math.isnan(gap):
        return "the val and test specificity could not both be measured"
    if gap > GAP:
        return (
            f"specificity is {figure(val_specificity)} on val but {figure(test_specificity)} "
            "on test, at the same threshold: a large gap"
        )
    return (
        f"specificity is {figure(val_specificity)} on val and {figure(test_specificity)} "
        "on test, at the same threshold"
    )


# Short: the card is also the registered versions' description, which MLflow keeps to 5000
# characters; the site stage's section is in reports/model_card.md only.
SCORE_MEANING = (
    SECTIONS[4],
    "",
    "- The score is the network's output, comparable only within one model version: a re-trained "
    "model scores the same image differently, and its threshold moves. The val-chosen threshold "
    "and calibration on val do not carry to a shifted site: see the site section of "
    "reports/model_card.md and `pneumonia site calibrate`.",
    "",
)


def limitations_section(headline: dict[str, float]) -> list[str]:
    return [
        SECTIONS[5],
        "",
        f"- Val is not test: {specificity_gap(headline)}. Val is carved from the official train "
        "images, test is the dataset's own test split; a threshold chosen on val carries over "
        "imperfectly.",
        "- It over-calls normals: on another population or acquisition (another hospital, "
        "scanner, exposure, adult patients) expect more normal chests called pneumonia than the "
        "test figures above, and re-check the threshold on local data first.",
        "- One hospital, one age band: nothing here measures other sites, ages or devices.",
        "- Frontal views only: there are no lateral views in the data; a lateral or rotated film "
        "is out of scope.",
        "- Labels are image-level pneumonia vs normal; it does not tell bacterial from viral, "
        "nor find other findings (effusion, nodules, tubes).",
        "- Grad-CAM (the evaluate panels, `pneumonia predict --gradcam`) shows where the score's "
        "evidence lies, relative within each image, from the network's last feature map: coarse "
        "(a few cells across the image), not a segmentation nor a reason a clinician could check. "
        "It can mark the shoulders, diaphragm, abdomen or burnt-in text: shortcuts the model may "
        "use, which a new site's images need not share.",
        "- Research use only, not a medical device.",
        "",
    ]


def model_section(train_card: ModelCard) -> list[str]:
    """The input the model takes, the network and its hyperparameters, how it was selected."""
    spec = train_card.image_spec
    hyperparameters = train_card.hyperparameters
    return [
        SECTIONS[6],
        "",
        f"- Input: {spec.image_size} px grayscale, resize "
        f"`{spec.resize}`, CLAHE {spec.clahe}; raw uint8 "
        "pixels, normalisation inside the model.",
        f"- {network_in_words(train_card)} ({train_card.ensemble_members} member(s), "
        "probabilities averaged; provenance in models/model.json); hyperparameters: "
        + ", ".join(f"{key} {value}" for key, value in sorted(hyperparameters.items()))
        + ".",
        f"- Selection: {train_card.selection}.",
        "",
    ]


def input_spec_section(
    train_card: ModelCard, report: dict[str, Any], point: OperatingPoint | None
) -> list[str]:
    """The versioned input spec (contracts.input_spec) in a few lines."""
    threshold = chosen_threshold(report) if point is None else point.threshold
    name = point.name if point is not None else f"val ({threshold_rule(report)})"
    spec = input_spec_of(train_card.image_spec, threshold=threshold, operating_point=name)
    # Two lines, not the JSON: the card is the registered versions' description, which a
    # PostgreSQL registry holds in 5,000 characters.
    lines = spec.summary()
    return [
        SECTIONS[7],
        "",
        f"Version {spec.schema_version}, in full as input_spec.json beside every export "
        "(`pneumonia export`; this run's artifacts export/): "
        f"{lines[0].removeprefix('input').strip()}; {lines[1].removeprefix('prepare').strip()}.",
        "",
    ]
