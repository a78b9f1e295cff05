"""What a site calibration records outside its point file: an MLflow run `site-calibrate@<site>`
in the project's experiment (the settings, the measured figures, the point as an artifact), and,
when the model's card names a registered model, one served version for the site: the served
model of evaluate with the site's threshold, aliased `site-<site>`, so a server can serve each
site at its own operating point (`mlflow models serve -m models:/<served>@site-<site>`)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow

from pneumonia.config import Config
from pneumonia.contracts import registry_tags
from pneumonia.contracts.operating_point import OperatingPoint
from pneumonia.deployment.workflow import SiteModel
from pneumonia.site.points import check_site_name

STAGE = "site-calibrate"
# On a site's served versions: which site and which version of its point they serve.
SITE_TAG = "site"
SITE_VERSION_TAG = "site_version"
ALIAS_PREFIX = "site-"
POINT_ARTIFACT_FOLDER = "site"


def run_name(site: str) -> str:
    return f"{STAGE}@{site}"


def site_alias(site: str) -> str:
    """The served version's alias, `site-<name>`: one per site (site names hold only what an
    alias may, site.points.SITE_NAME, so no two sites share one)."""
    return registry_tags.check_alias(f"{ALIAS_PREFIX}{check_site_name(site)}")


def calibration_params(point: OperatingPoint, model_path: Path) -> dict[str, Any]:
    calibration = point.calibration
    if calibration is None:
        raise ValueError("not a site operating point (no calibration)")
    return {
        "site": point.site,
        "site_version": point.version,
        "target": calibration.target_sensitivity,
        "confidence": calibration.confidence,
        "folder": calibration.folder,
        "model": str(model_path),
        "model_sha256": point.model.sha256,
        "rule": calibration.rule,
    }


def calibration_metrics(point: OperatingPoint) -> dict[str, float]:
    """The counts and the figures measured on the calibration images, with their intervals."""
    calibration = point.calibration
    if calibration is None:
        raise ValueError("not a site operating point (no calibration)")
    metrics = {
        "threshold": point.threshold,
        "positives": calibration.positives,
        "negatives": calibration.negatives,
        "detected": calibration.detected,
        "sensitivity_lower_bound": calibration.sensitivity_lower_bound,
    }
    for name in ("sensitivity", "specificity"):
        interval = getattr(calibration, name)
        metrics.update(
            {name: interval.value, f"{name}_low": interval.low, f"{name}_high": interval.high}
        )
    return {key: float(value) for key, value in metrics.items()}


@contextmanager
def calibration_run(config: Config, site: str) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run `site-calibrate@<site>` in the project's experiment (tracking.configure:
    the project's store, or MLFLOW_TRACKING_URI); a failure leaves its error on the run, as a
    stage's does (tracking.record_failure)."""
    from pneumonia.tracking import (
        HEARTBEAT_TAG,
        ProcessIdentity,
        RunHeartbeat,
        configure,
        git_state,
        heartbeat_value,
        record_failure,
    )

    configure(config)
    # The process and heartbeat tags of a stage run: a calibration killed midway leaves a run
    # that the next stage can prove orphaned and close (tracking.close_orphaned_runs).
    tags = {
        "stage": STAGE,
        SITE_TAG: site,
        **git_state(config.workspace),
        **ProcessIdentity.current().tags(),
        HEARTBEAT_TAG: heartbeat_value(),
    }
    description = f"Calibration of site {site}, running or stopped before it stored its point."
    with mlflow.start_run(run_name=run_name(site), tags=tags, description=description) as run:
        heartbeat = RunHeartbeat(run.info.run_id, mlflow.get_tracking_uri()).start()
        try:
            yield run
        except BaseException as error:
            try:
                record_failure(error)
            except Exception as problem:  # the store itself failed: report the first error
                print(f"{STAGE}: could not record the error on the run: {problem}", file=sys.stderr)
            raise
        finally:
            heartbeat.stop()


def log_calibration(point: OperatingPoint, model_path: Path) -> None:
    """The run's params and metrics (the point's file is logged once stored: log_point_file)."""
    mlflow.log_params(calibration_params(point, model_path))
    mlflow.log_metrics(calibration_metrics(point))


def log_point_file(path: Path) -> None:
    mlflow.log_artifact(str(path), POINT_ARTIFACT_FOLDER)


def describe_run(point: OperatingPoint, summary: str) -> None:
    """The run's description in the MLflow UI: which point it stored, and what it measured."""
    from pneumonia.tracking import NOTE_TAG, clip

    mlflow.set_tag(NOTE_TAG, clip(f"Site {point.site} v{point.version}: {summary}"))


def registers_a_served_version(site_model: SiteModel) -> bool:
    """Whether the card names a registered Keras model (a model of the pipeline); a bare .keras
    file (benchmarks) has no registry entry to serve the site from."""
    return bool(site_model.card.registered_model().get("registered_model"))


def register_site_model(
    point: OperatingPoint,
    site_model: SiteModel,
    serving_model_name: str,
    limits: dict[str, int] | None,
) -> dict[str, Any]:
    """Register the served model at the site's threshold as a new version of
    `serving_model_name`, aliased `site-<site>`, in the active run; returns what the point
    records of it (its `serving_model`). Tagged with the threshold and settings.json's sha256
    as evaluate tags its versions (loading checks them), but with no val figures: promote
    compares those, and a site's version is no candidate for the workspace's alias."""
    from pneumonia.evaluation.publishing import settings_sha256
    from pneumonia.inference.serving import log_serving_model
    from pneumonia.registry import tag_version

    if point.site is None or point.version is None:
        raise ValueError("a site's served version needs the point's site and version")
    reference = site_model.reference_path
    served = log_serving_model(
        site_model.path,
        point.threshold,
        site_model.card.preprocess,
        serving_model_name,
        source=point.model.as_json(),
        limits=limits,
        operating_point=point.name,
        # Its answers then carry out-of-distribution scores; a model without one still serves.
        site_reference=reference if reference.is_file() else None,
    )
    trained = site_model.card.registered_model()
    alias = site_alias(point.site)
    tags = {
        **registry_tags.OperatingPointTags(
            threshold=point.threshold, threshold_rule=point.rule
        ).tags(),
        **registry_tags.ServedVersionTags(
            source_model=str(trained.get("registered_model") or ""),
            source_model_version=str(trained.get("version") or ""),
            source_model_id=str(trained.get("model_id") or ""),
            settings_sha256=settings_sha256(served.model_id),
        ).tags(),
        SITE_TAG: point.site,
        SITE_VERSION_TAG: str(point.version),
    }
    tag_version(serving_model_name, served.version, alias, tags)
    return {
        "registered_model": serving_model_name,
        "version": served.version,
        "model_id": served.model_id,
        "alias": alias,
    }
