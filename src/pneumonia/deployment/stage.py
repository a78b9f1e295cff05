"""The site stage's steps (stages/site.py), after evaluate: the official test split treated as a
new site (site.protocol, docs/experiments.md round 5). It reads the model, its site reference,
its val-chosen operating point and the processed test split; checks the unlabeled test split and
the held-out val control against the reference; measures the check's false alarms; re-chooses
the threshold on draws of k labeled test patients; and writes reports/site/ (metrics.json, the
DVC metrics; calibration.csv; by_k.csv, the plot's data; check.json; a PNG) and the final
reports/model_card.md (evaluate's card and the site section), all logged to MLflow as the
`site` stage run. Everything is labeled site-calibrated: reports/metrics.json, the val-only
headline, is evaluate's and is not touched here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import mlflow
import numpy as np
import pandas as pd

from pneumonia.config import Config
from pneumonia.contracts.arrays import load_split
from pneumonia.contracts.files import write_csv, write_json, write_text
from pneumonia.contracts.operating_point import (
    OperatingPoint,
    check_model_file,
    read_operating_point,
)
from pneumonia.contracts.site_reference import SiteReference, read_site_reference
from pneumonia.deployment import outputs
from pneumonia.errors import PipelineError
from pneumonia.site import protocol
from pneumonia.site.features import features_and_scores
from pneumonia.tracking import StageRun

SPLIT = "test"
FIX = "re-run the pipeline (dvc repro)"


class SiteStageError(PipelineError, ValueError):
    """The site stage's inputs are missing or do not belong together."""


@dataclass(frozen=True)
class SiteInputs:
    model: keras.Model
    reference: SiteReference
    point: OperatingPoint  # the val-chosen operating point evaluate wrote
    images: np.ndarray
    labels: np.ndarray
    index: pd.DataFrame


def settings() -> dict[str, Any]:
    """The protocol's fixed settings (docs/experiments.md, round 5), logged as the run's params."""
    return {
        "k_values": list(protocol.K_VALUES),
        "draws": protocol.DRAWS,
        "target_sensitivity": protocol.TARGET,
        "confidence": protocol.CONFIDENCE,
        "fallback_confidences": list(protocol.FALLBACK_CONFIDENCES),
        "minimum_held_out_patients": protocol.MINIMUM_HELD_OUT_PATIENTS,
        "control_draws": protocol.CONTROL_DRAWS,
        "control_images": protocol.CONTROL_IMAGES,
    }


def load_model(config: Config) -> keras.Model:
    path = config.paths.model
    if not path.is_file():
        raise SiteStageError(f"{path}: not found; run the train stage first (dvc repro)")
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as error:  # Keras raises many kinds for a damaged or foreign file
        raise SiteStageError(
            f"{path}: not a readable Keras model ({type(error).__name__}); {FIX}"
        ) from error


def load_site_inputs(config: Config) -> SiteInputs:
    """The model, its site reference and operating point (both refused unless written for this
    very model file), and the processed test split it must accept."""
    paths = config.paths
    model = load_model(config)
    reference = read_site_reference(paths.site_reference, paths.model)
    point = read_operating_point(paths.threshold)
    check_model_file(point, paths.model, paths.threshold)
    images, labels, index = load_split(paths.processed_split(SPLIT), mmap=False)
    expected = tuple(model.input_shape[1:])
    if tuple(images.shape[1:]) != expected:
        raise SiteStageError(
            f"{paths.processed_split(SPLIT)}: images of shape {images.shape[1:]}, but "
            f"{paths.model} takes {expected}; {FIX}"
        )
    return SiteInputs(model, reference, point, images, labels, index)


def run_params(inputs: SiteInputs) -> dict[str, Any]:
    return {"site": settings(), "seed": inputs.reference.record.seed}


def measure(inputs: SiteInputs) -> dict[str, Any]:
    """Every figure of the stage: the checks, the false alarms, the new-site table, the
    headline. Seeded by the reference's seed (evaluate.seed), so a re-run gives the same."""
    reference, seed = inputs.reference, inputs.reference.record.seed
    features, scores = features_and_scores(inputs.model, inputs.images)
    # Patient ids come from the file names, not the labels: the classifier two-sample test
    # keeps a patient's images in one fold with them.
    test = protocol.whole_check(
        reference,
        features,
        scores,
        inputs.index["path"].tolist(),
        groups=inputs.index["patient_id"].to_numpy(),
    )
    control = protocol.whole_check(
        reference,
        reference.control_features,
        reference.control_scores,
        [f"control image {number}" for number in range(len(reference.control_scores))],
        groups=reference.control_groups,
    )
    alarms = protocol.control_false_alarms(reference, seed=seed)
    table = protocol.new_site_table(
        inputs.labels,
        scores,
        inputs.index["patient_id"].to_numpy(),
        inputs.point.threshold,
        seed=seed,
    )
    return {
        "label": protocol.LABEL,
        "model": inputs.point.model.as_json(),
        "test": test,
        "control": control,
        "false_alarms": alarms,
        "new_site": table,
        "headline": protocol.headline(table, test, alarms),
    }


def write_reports(config: Config, measured: dict[str, Any]) -> str:
    """reports/site/ and the final model card; returns the card's site section."""
    paths = config.paths
    table = measured["new_site"]
    write_json(paths.site_metrics, measured["headline"])
    detail = {key: value for key, value in measured.items() if key != "headline"}
    write_json(paths.site_check, detail)
    write_csv(paths.site_calibration_table, outputs.calibration_table(table))
    write_csv(paths.site_plot_table, outputs.plot_table(table))
    outputs.calibration_figure(table, paths.site_figure)
    if not paths.evaluate_card_markdown.is_file():
        raise SiteStageError(
            f"{paths.evaluate_card_markdown}: not found; the evaluate stage writes it (dvc repro)"
        )
    section = outputs.card_section(
        table, measured["test"], measured["control"], measured["false_alarms"]
    )
    write_text(
        paths.model_card_markdown,
        outputs.final_card(paths.evaluate_card_markdown.read_text(), section),
    )
    return section


def flat_figures(measured: dict[str, Any]) -> dict[str, float]:
    """The MLflow metrics: the headline, and each row of the new-site table under
    `k<k>_confidence_<c>/`; unmeasured figures left out."""
    figures = {f"site/{key}": value for key, value in measured["headline"].items()}
    for row in measured["new_site"]["rows"]:
        prefix = f"k{row['k']}_confidence_{row['confidence']:g}"
        figures.update(
            {
                f"{prefix}/{key}": value
                for key, value in row.items()
                if isinstance(value, int | float) and key not in ("k", "confidence")
            }
        )
    alarms = measured["false_alarms"]
    if not alarms.get("skipped"):
        figures["control/false_alarms"] = alarms["false_alarms"]
        figures["control/draws"] = alarms["draws"]
    return {key: float(value) for key, value in figures.items() if value is not None}


def summary_line(measured: dict[str, Any]) -> str:
    """`site: test p 0.001, classifier AUC 0.97; false alarms 0.045 of control draws; k=100
    (site-calibrated): sensitivity ..., specificity ... (val threshold ...)`."""
    figures = {key: value for key, value in measured["headline"].items()}

    def said(key: str, digits: int = 3) -> str:
        value = figures.get(key)
        return "n/a" if value is None else f"{value:.{digits}g}"

    return (
        f"site: test split p {said('test_shift_p_value')}, classifier AUC "
        f"{said('test_classifier_auc')}; check false-alarm rate on held-out val "
        f"{said('control_false_alarm_rate')}; k={protocol.HEADLINE_K} patients "
        f"({protocol.LABEL}, {protocol.TARGET:g} at confidence {protocol.CONFIDENCE:g}): "
        f"sensitivity {said('site_sensitivity')}, specificity {said('site_specificity')}, "
        f"target held {said('target_held')} (val threshold on the same patients: sensitivity "
        f"{said('val_threshold_sensitivity')}, specificity {said('val_threshold_specificity')})"
    )


def run_site_stage(run: StageRun, config: Config, inputs: SiteInputs) -> str:
    """Every step of the site stage inside its open run; returns the summary line."""
    paths = config.paths
    run.log_hashes(
        "input", [paths.model, paths.site_reference, paths.threshold, paths.processed_split(SPLIT)]
    )
    mlflow.set_tags(
        {
            **{f"model.{key}": str(value) for key, value in inputs.point.model.as_json().items()},
            "evaluate_run_id": inputs.point.evaluate_run_id or "",
        }
    )
    run.log_dataset(inputs.index, paths.processed_split(SPLIT), SPLIT, "new site")
    measured = measure(inputs)
    section = write_reports(config, measured)
    run.log_metrics(flat_figures(measured))
    run.log_artifact(paths.site_reports, "site")
    run.log_artifact(paths.model_card_markdown)
    summary = summary_line(measured)
    run.describe(f"{summary}\n\n{section}")
    return summary
