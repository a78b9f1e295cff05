"""The evaluate stage's steps, in order (run_evaluate_stage): score val and test, choose the
operating threshold on val, write the test tables, figures, Grad-CAM panels and metrics, then
publish (pneumonia.evaluation.publishing): MLflow metrics, the served model, registry tags and
aliases, the operating point, and the model card as Markdown and as the versions' description."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException

from pneumonia.config import Config
from pneumonia.contracts.arrays import load_split
from pneumonia.contracts.files import file_sha256, write_json, write_text
from pneumonia.contracts.metrics_report import (
    at_threshold,
    chosen_threshold,
    headline_metrics,
    measured,
    write_headline,
)
from pneumonia.contracts.model_card import ModelCard
from pneumonia.contracts.operating_point import OperatingPoint, write_operating_point
from pneumonia.contracts.paths import Paths
from pneumonia.contracts.site_reference import SiteReference, write_site_reference
from pneumonia.evaluation.model_card import model_card_markdown
from pneumonia.evaluation.outputs import write_figures, write_gradcam_panels, write_tables
from pneumonia.evaluation.publishing import (
    artifact_paths,
    describe_models,
    log_exports,
    publish_evaluation,
    registered_summary,
    run_tags,
)
from pneumonia.evaluation.report import (
    check_model_input,
    curve_tables,
    predictions_table,
    score_and_measure,
)
from pneumonia.imaging.transforms import input_limits
from pneumonia.inference.loading import CardedModel, load_carded_model
from pneumonia.registry import require_logged_model
from pneumonia.site.features import feature_layer_names, features_and_scores
from pneumonia.site.reference import build_site_reference
from pneumonia.tracking import StageRun

EVALUATED_SPLITS = ("val", "test")
# The test figures of the console's summary line, in this order.
SUMMARY_METRICS = ("roc_auc", "accuracy", "sensitivity", "specificity")
Split = tuple[np.ndarray, np.ndarray, pd.DataFrame]  # images, labels, index


@dataclass(frozen=True)
class EvaluationInputs:
    carded: CardedModel  # models/model.keras with train's model card
    splits: dict[str, Split]  # val and test, checked against the model's input

    def run_params(self, config: Config) -> dict[str, Any]:
        return {
            "evaluate": config.params["evaluate"],
            "model_version": self.carded.card.registry().version,
        }


def load_evaluation_inputs(config: Config) -> EvaluationInputs:
    """The trained model and its card, and the val and test arrays it must accept."""
    paths = config.paths
    carded = load_carded_model(paths.model, missing="run the train stage first (dvc repro)")
    splits = {}
    for name in EVALUATED_SPLITS:
        images, labels, index = load_split(paths.processed_split(name), mmap=False)
        check_model_input(carded.model, images, paths.model, paths.processed_split(name))
        splits[name] = (images, labels, index)
    return EvaluationInputs(carded, splits)


def run_evaluate_stage(run: StageRun, config: Config, inputs: EvaluationInputs) -> str:
    """Every step of the evaluate stage inside its open run; returns the summary line."""
    paths, settings, card = config.paths, config.evaluate, inputs.carded.card
    require_logged_model(card.registry().model_id, paths.model_card)
    run.log_hashes(
        "input", [paths.model, *(paths.processed_split(name) for name in EVALUATED_SPLITS)]
    )
    mlflow.set_tags(run_tags(card))
    copy_training_params(run, card)
    report = measure_and_write(config, inputs)
    indexes = {name: index for name, (_, _, index) in inputs.splits.items()}
    point = publish_evaluation(
        run,
        settings,
        paths,
        card,
        report,
        indexes,
        inputs.splits["val"][0][0],
        limits=input_limits(config.preprocess),
    )
    write_operating_point(paths.threshold, point)
    log_exports(run, inputs.carded.model, card, point)
    card_markdown = model_card_markdown(report, card, served=point.serving_model, point=point)
    # The final card (paths.model_card_markdown) is the site stage's: this one and its section.
    write_text(paths.evaluate_card_markdown, card_markdown)
    describe_models(settings, point, card_markdown)
    for path, folder in artifact_paths(paths):
        run.log_artifact(path, folder)
    summary = summary_line(config, report, point)
    run.describe(f"{summary}\n\n{card_markdown}")
    return summary


def copy_training_params(run: StageRun, card: ModelCard) -> None:
    """The params of the train run that made the model, logged on this run too: MLflow's
    side-by-side comparison shows a run's own params only, so two evaluate runs then show that
    `train.epochs` (or any train param) differed. The train run is found by the card's run id;
    one missing from this store (a copied model) is said in one line, not an error."""
    train_run_id = card.registry().run_id
    try:
        params = mlflow.MlflowClient().get_run(train_run_id).data.params
    except MlflowException:
        print(f"evaluate: train run {train_run_id} is not in this store; its params not copied")
        return
    own = set(mlflow.get_run(run.run_id).data.params)
    mlflow.log_params({key: value for key, value in params.items() if key not in own})


def measure_and_write(config: Config, inputs: EvaluationInputs) -> dict[str, Any]:
    """Score val and test, choose the threshold on val, and write the test tables, figures,
    Grad-CAM panels, the detail report and metrics.json; returns the detail report."""
    paths, settings, model = config.paths, config.evaluate, inputs.carded.model
    report, test_scores = score_and_measure(model, inputs.splits, settings)
    threshold = chosen_threshold(report)
    test_images, test_labels, test_index = inputs.splits["test"]
    tables = curve_tables(test_labels, test_scores, settings.calibration_bins)
    tables["predictions"] = predictions_table(test_index, test_labels, test_scores, threshold)
    write_tables(tables, paths)
    write_figures(
        at_threshold(report, "test"), tables, float(test_labels.mean()), paths.evaluate_plots
    )
    report["gradcam_examples"] = write_gradcam_panels(
        model,
        test_images,
        test_index,
        test_scores,
        test_labels,
        threshold,
        settings.gradcam_examples,
        paths.gradcam_panels,
    )
    write_json(paths.metrics_detail, report)
    write_headline(paths.metrics, headline_metrics(report))
    write_site_reference(
        paths.site_reference,
        site_reference_of(model, inputs.splits["val"], threshold, paths, settings.seed),
    )
    return report


def site_reference_of(
    model: keras.Model, val: Split, threshold: float, paths: Paths, seed: int
) -> SiteReference:
    """The model's site reference (contracts.site_reference): its pooled features and scores of
    the val images, val's patients split into reference and control parts with `seed`."""
    images, labels, index = val
    features, scores = features_and_scores(model, images)
    return build_site_reference(
        features,
        scores,
        index["patient_id"].to_numpy(),
        labels=labels,
        model_sha256=file_sha256(paths.model),
        feature_layers=feature_layer_names(model),
        threshold=threshold,
        seed=seed,
    )


def summary_line(config: Config, report: dict[str, Any], point: OperatingPoint) -> str:
    """`evaluate: threshold ... (rule, chosen on val); test roc_auc 0.9 [0.8, 0.95], ...` and what
    was registered."""
    settings = config.evaluate
    figures = {name: measured(report, "test", name) for name in SUMMARY_METRICS}
    return (
        f"evaluate: threshold {chosen_threshold(report):.4f} ({settings.threshold}, chosen on "
        "val); test "
        + ", ".join(
            f"{name} {figure.value:.3f} [{figure.low:.3f}, {figure.high:.3f}]"
            for name, figure in figures.items()
        )
        + registered_summary(settings, point)
    )
