"""What evaluate records outside its files: the val and test datasets and metrics in MLflow
against the trained model, the registry tags promotion compares, the served model (image bytes
in; score, label at the chosen threshold and out-of-distribution score out), and the operating
point that ties the threshold to the model it was chosen for.

The workspace's evaluation (`dvc repro`, or `python stages/evaluate.py`) and an experiment's
(any `dvc exp run`: in the workspace, queued or `--temp`) are recorded differently, so that a
throwaway experiment cannot move the alias a server or `pneumonia promote` reads, nor change what
the workspace's registry entries say:

- Both register a new served-model version carrying its own operating point (threshold, rule,
  val figures, the evaluate run) and the sha256 of its settings.json.
- The workspace's evaluation points `@<evaluate.alias>` at both versions and sets the Keras
  version's operating-point tags (`threshold`, `threshold_rule`, the val figures): they are the
  workspace's latest evaluation of that file, and what `predict --model models:/<keras>/<n>`
  applies. It also records `threshold.<rule>` on the Keras version, one tag per rule, so
  evaluating the same file under another rule keeps every rule's threshold.
- An experiment's evaluation leaves the Keras version and the workspace's aliases alone: its
  served version is tagged `dvc_experiment=<name>` and gets the alias `exp-<name>`; promote
  refuses it unless told (`pneumonia promote --from exp-<name> --allow-experiment`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import keras
import mlflow
import numpy as np
import pandas as pd

from pneumonia.config import EvaluateConfig
from pneumonia.contracts import registry_tags
from pneumonia.contracts.files import file_sha256
from pneumonia.contracts.metrics_report import AT_0_5, at_threshold, chosen_threshold, measured
from pneumonia.contracts.model_card import ModelCard
from pneumonia.contracts.model_reference import ModelReference
from pneumonia.contracts.operating_point import OperatingPoint
from pneumonia.contracts.paths import Paths
from pneumonia.evaluation.report import flat_metrics
from pneumonia.inference.loading import SETTINGS_ARTIFACT
from pneumonia.inference.serving import encode_png, log_serving_model
from pneumonia.progress import say
from pneumonia.registry import describe_model, tag_version
from pneumonia.tracking import StageRun


def dvc_experiment(environ: Mapping[str, str] | None = None) -> str | None:
    """The name of the DVC experiment this stage runs in (DVC_EXP_NAME, which `dvc exp run`
    sets for every stage, in the workspace or not); None for `dvc repro` and a stage run by
    hand."""
    environ = os.environ if environ is None else environ
    return environ.get("DVC_EXP_NAME") or None


def settings_sha256(model_id: str) -> str:
    """The sha256 of the served model's settings.json as the artifact store holds it."""
    location = mlflow.get_logged_model(model_id).artifact_location.rstrip("/")
    with tempfile.TemporaryDirectory() as scratch:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{location}/{SETTINGS_ARTIFACT}", dst_path=scratch
        )
        return file_sha256(Path(local))


def publish_evaluation(
    run: StageRun,
    settings: EvaluateConfig,
    paths: Paths,
    card: ModelCard,
    report: dict[str, Any],
    indexes: dict[str, pd.DataFrame],
    example_image: np.ndarray,
    limits: dict[str, int] | None = None,
) -> OperatingPoint:
    """Log, tag and register what evaluate measured; returns the operating point to write.
    `limits` are the served model's input limits (params.yaml's preprocess.limits.max_pixels and
    max_file_bytes). Inside a DVC experiment (dvc_experiment) the workspace's aliases and the
    Keras version's tags are left alone (module docstring)."""
    experiment = dvc_experiment()
    trained = card.registry()
    threshold = chosen_threshold(report)
    datasets = log_measured(run, paths, report, indexes, trained.model_id or None)
    point = OperatingPoint(
        threshold=threshold,
        rule=str(settings.threshold),
        val_sensitivity=measured(report, "val", "sensitivity").value,
        val_specificity=measured(report, "val", "specificity").value,
        model=ModelReference(**trained.model, sha256=file_sha256(paths.model)),
        evaluate_run_id=run.run_id,
    )
    val_roc_auc = measured(report, "val", "roc_auc").value
    tags = version_tags(threshold, point, val_roc_auc, datasets["val"].digest)
    if experiment is None:
        figure = registry_tags.format_figure(threshold)
        rule_tag = {registry_tags.rule_threshold_tag(point.rule): figure}
        tag_version(trained.registered_model, trained.version, settings.alias, {**tags, **rule_tag})
    served = log_serving_model(
        paths.model,
        threshold,
        card.preprocess,
        settings.serving_model_name,
        source=point.model.as_json(),
        example_image=encode_png(example_image),
        limits=limits,
        operating_point=point.name,
        site_reference=paths.site_reference,
    )
    served_alias = (
        settings.alias if experiment is None else registry_tags.experiment_alias(experiment)
    )
    tag_version(
        settings.serving_model_name,
        served.version,
        served_alias,
        {
            **tags,
            **registry_tags.ServedVersionTags(
                source_model=trained.registered_model,
                source_model_version=trained.version,
                source_model_id=trained.model_id,
                settings_sha256=settings_sha256(served.model_id),
                dvc_experiment=experiment,
            ).tags(),
        },
    )
    serving_model = {
        "registered_model": settings.serving_model_name,
        "version": served.version,
        "model_id": served.model_id,
        "alias": served_alias,
    }
    if experiment is not None:
        serving_model[registry_tags.DVC_EXPERIMENT] = experiment
    return point.model_copy(update={"serving_model": serving_model})


def log_measured(
    run: StageRun,
    paths: Paths,
    report: dict[str, Any],
    indexes: dict[str, pd.DataFrame],
    model_id: str | None,
) -> dict[str, Any]:
    """The val and test datasets, and the figures measured on each against the trained model;
    returns the logged datasets by split."""
    datasets = {
        name: run.log_dataset(index, paths.processed_split(name), name, context)
        for name, index, context in (
            ("val", indexes["val"], "validation"),
            ("test", indexes["test"], "test"),
        )
    }
    mlflow.log_metrics(
        flat_metrics(at_threshold(report, "val"), "val"),
        model_id=model_id,
        dataset=datasets["val"],
    )
    mlflow.log_metrics(
        {
            **flat_metrics(at_threshold(report, "test"), "test"),
            **flat_metrics(at_threshold(report, "test", AT_0_5), "test_at_0.5"),
        },
        model_id=model_id,
        dataset=datasets["test"],
    )
    return datasets


def version_tags(
    threshold: float, point: OperatingPoint, val_roc_auc: float, val_digest: str
) -> dict[str, str]:
    """What `pneumonia promote` compares (val only) and `pneumonia predict` reads (threshold),
    with figures as registry_tags.format_figure writes them (what promote reads back)."""
    return registry_tags.OperatingPointTags(
        threshold=threshold,
        threshold_rule=point.rule,
        val_roc_auc=val_roc_auc,
        val_sensitivity=point.val_sensitivity,
        val_specificity=point.val_specificity,
        val_dataset_digest=val_digest,
        evaluate_run_id=point.evaluate_run_id,
    ).tags()


def run_tags(card: ModelCard) -> dict[str, str]:
    """Tags of the evaluate run that name the trained model it measured."""
    trained = card.registry()
    return {
        "train_run_id": trained.run_id,
        "model_id": trained.model_id,
        "registered_model": trained.registered_model,
        "registered_model_version": trained.version,
    }


def describe_models(settings: EvaluateConfig, point: OperatingPoint, card_markdown: str) -> None:
    """The model card as the description of both registered versions (the Keras model and the
    served one), and a one-line description of the served model's registry entry. An
    experiment's evaluation describes only its own served version: the Keras version's
    description stays the workspace's."""
    describe_model(
        settings.serving_model_name,
        "The trained network with its operating threshold, served by `mlflow models serve`: PNG, "
        "JPEG or DICOM chest X-ray bytes in; out, the network's score (comparable only within one "
        "version, not a probability), the label at the named operating point (a threshold "
        "chosen on val does not carry to a shifted site) and an out-of-distribution flag for "
        "images far from the model's validation images. Each version's "
        "description is its model card. Research use only, not a medical device.",
        version=point.serving_model["version"],
        version_description=card_markdown,
    )
    if registry_tags.DVC_EXPERIMENT in point.serving_model:
        return
    describe_model(
        point.model.registered_model,
        None,
        version=point.model.version,
        version_description=card_markdown,
    )


def registered_summary(settings: EvaluateConfig, point: OperatingPoint) -> str:
    """The end of evaluate's summary line: what it registered and which aliases it moved."""
    keras = f"{point.model.registered_model} v{point.model.version}"
    served = point.serving_model or {}
    name = f"{settings.serving_model_name} v{served.get('version')}"
    experiment = served.get(registry_tags.DVC_EXPERIMENT)
    if experiment is None:
        return f"; {keras} and {name} are @{settings.alias}"
    return (
        f"; experiment {experiment}: {name} is @{served.get('alias')} (the workspace's "
        f"@{settings.alias} and the tags of {keras} are left as they were)"
    )


# Where the evaluate run keeps the model in each export format (pneumonia export's layout).
EXPORT_ARTIFACTS = "export"


def log_exports(run: StageRun, model: keras.Model, card: ModelCard, point: OperatingPoint) -> None:
    """The evaluated model in every export format (export.formats: ONNX and a TensorFlow
    SavedModel, each with its input spec at the chosen operating point, golden arrays and the
    reference preprocessing), logged as the run's artifacts export/onnx and export/savedmodel:
    what `pneumonia export` writes, for the very model and threshold this run registered."""
    from pneumonia.export.formats import EXPORT_FORMATS, export_model

    written = []
    with tempfile.TemporaryDirectory() as scratch:
        for export_format in EXPORT_FORMATS:
            try:
                result = export_model(
                    model,
                    card.image_spec,
                    threshold=point.threshold,
                    operating_point=point.name,
                    export_format=export_format,
                    out=Path(scratch) / export_format,
                )
            except Exception as error:
                # The model is evaluated and registered whatever a converter makes of it: a
                # failed export is said, tagged and left to `pneumonia export`, not fatal.
                mlflow.set_tag(f"{EXPORT_ARTIFACTS}.{export_format}", "failed")
                written.append(f"{export_format} failed ({type(error).__name__}: {error})")
                continue
            run.log_artifact(result.out, f"{EXPORT_ARTIFACTS}/{export_format}")
            written.append(
                f"{export_format} {result.model_bytes / 1e6:.1f} MB in {result.seconds:.1f} s"
            )
    say(f"export: {', '.join(written)} (MLflow artifacts {EXPORT_ARTIFACTS}/)")


def artifact_paths(paths: Paths) -> list[tuple[Path, str | None]]:
    """What the evaluate run keeps as artifacts, and under which folder."""
    return [
        (paths.metrics, None),
        (paths.evaluate_card_markdown, None),
        (paths.threshold, None),
        (paths.site_reference, None),
        (paths.evaluate_reports, "evaluation"),
        (paths.evaluate_tables, "evaluation/tables"),
    ]
