"""The one loader of a trained model with its model card, operating point and site reference.

Used by evaluate and shift-check (a model file and its card), by predict (a file, or any MLflow
model URI of the served pyfunc or the Keras flavor) and by the served model.

A served model's operating point is tied to the registry: evaluate records its settings.json's
sha256 (`settings_sha256`) and its threshold (`threshold`) as tags of the version it registers,
and loading refuses a served model whose settings.json differs from what its version records
(check_served_settings; the served model's own load calls check_served_model).

The operating point is evaluate's (val), `--threshold`'s, or a site's (`--site`,
inference.site_use): a site point is refused unless it was chosen for the very file, by its
sha256 (the registry's Keras flavor, a re-saved copy, by its logged model id). A model file's
site reference (site_reference.npz beside it) is refused if written for another file; none at
all (a model evaluated before references existed) leaves the rows without ood scores.
"""

from __future__ import annotations

import atexit
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import keras

from pneumonia.config import PreprocessConfig
from pneumonia.contracts import registry_tags
from pneumonia.contracts.files import file_sha256
from pneumonia.contracts.model_card import ModelCard, ModelCardError, read_model_card
from pneumonia.contracts.operating_point import (
    OperatingPoint,
    check_model_file,
    check_same_model,
    read_operating_point,
)
from pneumonia.contracts.paths import MODEL_CARD_FILE, THRESHOLD_FILE
from pneumonia.contracts.served_settings import (
    SETTINGS_ARTIFACT,
    ServedSettingsError,
    read_served_settings,
)
from pneumonia.imaging.transforms import config_from_settings
from pneumonia.inference.classifier import THRESHOLD_OVERRIDE, Classifier, PredictionError
from pneumonia.inference.site_use import (
    SitePoint,
    check_site_point_model_id,
    check_site_point_sha256,
    reference_beside,
    served_model_sha256,
    site_point_for_file,
    site_point_for_uri,
)
from pneumonia.redaction import redact_text, redact_url, tracking_urls

# MLflow URIs name a scheme (models:/, runs:/, file://, s3://, ...); a bare path does not.
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/")
_REGISTERED = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[^/]+))/?$")


@dataclass(frozen=True)
class CardedModel:
    """A saved Keras model with its model card and the preprocess settings the card records."""

    model: keras.Model
    card: ModelCard
    preprocess: PreprocessConfig
    path: Path


NOT_TRAINED = (
    "run the pipeline first (dvc repro) or pass --model with a .keras file or an MLflow model URI"
)


def load_keras_model(path: Path, missing: str = NOT_TRAINED) -> keras.Model:
    """A saved .keras file, for inference (not compiled); `missing` says what to do without it."""
    if not path.is_file():
        raise PredictionError(f"{path}: not found; {missing}")
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as error:  # Keras raises many kinds for a damaged or foreign file
        raise PredictionError(
            f"{path}: not a readable Keras model ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else 'no detail'}); re-create it with "
            "dvc repro, or pass another --model"
        ) from error


def load_carded_model(model_path: Path, missing: str = NOT_TRAINED) -> CardedModel:
    """A .keras file with the train stage's model card (model.json) beside it."""
    if not model_path.is_file():
        load_keras_model(model_path, missing)  # the clear "not found" error, before the card's
    card_path = model_path.with_name(MODEL_CARD_FILE)
    card = read_model_card(card_path)
    preprocess = config_from_settings(card.preprocess, card_path)
    return CardedModel(load_keras_model(model_path, missing), card, preprocess, model_path)


def load_model_file(
    model_path: Path, threshold: float | None = None, site: str | None = None
) -> Classifier:
    """A `.keras` file with the train stage's `model.json` (preprocess settings), the evaluate
    stage's `threshold.json` and `site_reference.npz` beside it; `threshold` overrides the
    operating point, `site` (NAME or NAME@v<n>) uses that site's point from `sites/` beside the
    file. Without a reference (a model evaluated before they were written) it gives no
    out-of-distribution scores."""
    if not model_path.is_file():
        load_keras_model(model_path)  # the clear "not found" error
    card_path = model_path.with_name(MODEL_CARD_FILE)
    card = read_model_card(card_path, require_registry=False)
    if site is not None:
        point, _ = site_point_for_file(model_path, site)
        threshold, point_name = point.threshold, point.name
    elif threshold is None:
        threshold_path = model_path.with_name(THRESHOLD_FILE)
        point = read_operating_point(threshold_path)
        check_same_model(card, point, card_path, threshold_path)
        check_model_file(point, model_path, threshold_path)
        threshold, point_name = point.threshold, point.name
    else:
        point_name = THRESHOLD_OVERRIDE
    preprocess = config_from_settings(card.preprocess, card_path)
    reference = reference_beside(model_path)
    return Classifier(
        load_keras_model(model_path),
        threshold,
        preprocess,
        str(model_path),
        operating_point=point_name,
        reference=reference,
    )


def _quiet(text: object) -> str:
    """Text for a message: any password of a store URL masked."""
    return redact_text(str(text), *tracking_urls())


def _store() -> str:
    import mlflow

    return redact_url(mlflow.get_tracking_uri())


def _registered_version(uri: str, run_id: str | None):
    """The registry version a URI names (models:/name/version or models:/name@alias), else the
    newest version registered from the same run that evaluate tagged with a threshold."""
    import mlflow

    client = mlflow.MlflowClient()
    match = _REGISTERED.match(uri)
    if match and match["version"]:
        return client.get_model_version(match["name"], match["version"])
    if match and match["alias"]:
        return client.get_model_version_by_alias(match["name"], match["alias"])
    if not run_id:
        return None
    versions = [
        version
        for version in client.search_model_versions(f"run_id = '{run_id}'")
        if registry_tags.THRESHOLD in version.tags
    ]
    return max(versions, key=lambda version: int(version.version), default=None)


def _tag_threshold(version, uri: str) -> float:
    text = version.tags[registry_tags.THRESHOLD]
    value = registry_tags.OperatingPointTags.from_tags(version.tags).threshold
    if value is None:
        raise PredictionError(
            f"{uri}: {version.name} v{version.version} has '{registry_tags.THRESHOLD}' tag "
            f"{text!r}, not a decimal in [0, 1]; re-run the evaluate stage, or pass --threshold"
        )
    return value


def settings_problem(settings_path: Path, tags: dict[str, str]) -> str | None:
    """Why a served model's settings.json is not what its registry version records (the
    `settings_sha256` and `threshold` tags evaluate set), or None when it is. A version that
    records neither (registered before evaluate recorded them) has nothing to compare."""
    recorded = registry_tags.ServedVersionTags.recorded_settings_sha256(tags)
    if recorded:
        actual = file_sha256(settings_path)
        if actual != recorded:
            return (
                f"its settings.json has sha256 {actual[:12]}... but the registry recorded "
                f"{recorded[:12]}... when it was registered"
            )
    text = tags.get(registry_tags.THRESHOLD)
    if text is None:
        return None
    expected = registry_tags.OperatingPointTags.from_tags(tags).threshold
    if expected is None:
        return (
            f"the registry's '{registry_tags.THRESHOLD}' tag is {text!r}, not a decimal in [0, 1]"
        )
    try:
        threshold = read_served_settings(settings_path).threshold
    except (OSError, ServedSettingsError):
        return "its settings.json has no readable threshold"
    if not math.isclose(threshold, expected, rel_tol=1e-9, abs_tol=1e-12):
        return (
            f"its settings.json threshold is {threshold!r} but the registry's "
            f"'{registry_tags.THRESHOLD}' tag is {text}"
        )
    return None


def check_served_settings(settings_path: Path, versions: list, source: str) -> None:
    """Refuse a served model whose settings.json differs from what any of its registry
    `versions` records (settings_problem); `source` names it in the message."""
    for version in versions:
        problem = settings_problem(settings_path, dict(version.tags))
        if problem:
            raise PredictionError(
                f"{source}: {version.name} v{version.version}: {problem}; the served model's "
                "files were changed after registration, so its threshold is not the one the "
                "registry records: re-register it with the evaluate stage (dvc repro)"
            )


def registered_versions_of_folder(model_folder: Path) -> list:
    """The registry versions registered from the logged model in `model_folder` (its MLmodel
    names the run and the model id)."""
    import mlflow
    from mlflow.models import Model

    meta = Model.load(str(model_folder))
    if not meta.run_id:
        return []
    model_id = getattr(meta, "model_id", None)
    versions = mlflow.MlflowClient().search_model_versions(f"run_id = '{meta.run_id}'")
    if model_id:
        versions = [
            version
            for version in versions
            if getattr(version, "model_id", None) == model_id
            or version.source == f"models:/{model_id}"
        ]
    return versions


def check_served_model(settings_path: Path) -> None:
    """For the served model's load (inference.serving's load_context, given the local path of
    its settings artifact): refuse settings that differ from what the registry recorded for
    this model's versions. Checked when MLFLOW_TRACKING_URI names a registry (as it does for
    `mlflow models serve -m models:/...`); a model folder served without one has no record to
    compare with."""
    from mlflow.exceptions import MlflowException

    if not os.environ.get("MLFLOW_TRACKING_URI"):
        return
    folder = settings_path.parent.parent
    if not (folder / "MLmodel").is_file():
        return
    try:
        versions = registered_versions_of_folder(folder)
    except MlflowException as error:
        raise PredictionError(
            f"served model ({folder}): cannot read its registry record in {_store()} to check "
            f"its threshold ({_quiet(error)}); check MLFLOW_TRACKING_URI"
        ) from error
    check_served_settings(settings_path, versions, f"served model ({folder})")


def _load_keras_flavor(uri: str, info, threshold: float | None, site: SitePoint) -> Classifier:
    import mlflow

    point_name = THRESHOLD_OVERRIDE
    if site is not None:
        point, point_path = site
        check_site_point_model_id(point, point_path, getattr(info, "model_id", None) or "", uri)
        threshold, point_name = point.threshold, point.name
    elif threshold is None:
        version = _registered_version(uri, info.run_id)
        if version is None or registry_tags.THRESHOLD not in version.tags:
            raise PredictionError(
                f"{uri}: no registered version with a '{registry_tags.THRESHOLD}' tag (set by "
                "the evaluate stage); pass --threshold, or use the served model "
                "(models:/pneumonia-classifier@candidate), which carries its threshold"
            )
        # The workspace's latest evaluation of this file (evaluation.publishing).
        threshold = _tag_threshold(version, uri)
        rule = registry_tags.OperatingPointTags.from_tags(version.tags).threshold_rule
        point_name = OperatingPoint(threshold=threshold, rule=rule).name
    # The train run logs the model card beside the model; it holds the preprocess settings.
    with tempfile.TemporaryDirectory() as scratch:
        try:
            card_file = mlflow.artifacts.download_artifacts(
                run_id=info.run_id, artifact_path=MODEL_CARD_FILE, dst_path=scratch
            )
        except Exception as error:  # MlflowException or OSError, depending on the store
            raise PredictionError(
                f"{uri}: cannot read {MODEL_CARD_FILE} (the preprocess settings) from run "
                f"{info.run_id}: {_quiet(error)}"
            ) from error
        try:
            card = read_model_card(Path(card_file), require_registry=False)
        except ModelCardError as error:
            raise PredictionError(f"{uri}: run {info.run_id}: {error}") from error
    preprocess = config_from_settings(card.preprocess, f"{uri} ({MODEL_CARD_FILE})")
    model = mlflow.keras.load_model(uri)
    # No site reference: the Keras flavor is logged by train, before evaluate writes one.
    return Classifier(model, threshold, preprocess, uri, operating_point=point_name)


def _download_model(uri: str) -> Path:
    """The model folder a URI names, downloaded into a folder removed when the process ends
    (MLflow puts the served model's code folder on sys.path, so it must outlive the load)."""
    import mlflow

    folder = tempfile.mkdtemp(prefix="pneumonia-model-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=folder))


def load_mlflow_model(
    uri: str,
    threshold: float | None = None,
    site: str | None = None,
    models_folder: Path | None = None,
) -> Classifier:
    """An MLflow model URI (models:/name/version, models:/name@alias, models:/<model id>,
    runs:/<run id>/<name>, a local model folder URI): the served pyfunc, which carries its
    threshold, preprocess settings (checked against its registry version) and site reference,
    or the Keras flavor logged by train. `site` names a site point among those stored in
    `models_folder`/sites (the project's paths.models)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    site_point = site_point_for_uri(site, models_folder, uri)
    try:
        info = mlflow.models.get_model_info(uri)
    except (MlflowException, OSError) as error:
        raise PredictionError(
            f"{uri}: cannot load this MLflow model ({_quiet(error)}); check the URI and "
            f"MLFLOW_TRACKING_URI (tracking store {_store()})"
        ) from error
    if "keras" in info.flavors:
        return _load_keras_flavor(uri, info, threshold, site_point)
    try:
        folder = _download_model(uri)
        settings = folder / SETTINGS_ARTIFACT
        if settings.is_file():
            match = _REGISTERED.match(uri)
            versions = (
                [_registered_version(uri, info.run_id)]
                if match
                else registered_versions_of_folder(folder)
            )
            check_served_settings(settings, versions, uri)
        loaded = mlflow.pyfunc.load_model(str(folder))
    except (MlflowException, ImportError, OSError) as error:
        raise PredictionError(
            f"{uri}: MLflow cannot load this model ({_quiet(error)}); a served model logged by "
            "another version of this project may need that version's code (mlflow models "
            "serve with --env-manager virtualenv)"
        ) from error
    wrapped = loaded.unwrap_python_model() if "python_function" in info.flavors else None
    # The served pyfunc (inference.serving) holds a Classifier; matched by what it holds, so
    # this module need not import the serving one.
    classifier = getattr(wrapped, "classifier", None)
    if not isinstance(classifier, Classifier):
        raise PredictionError(
            f"{uri}: not a pneumonia model (flavors {', '.join(info.flavors)}); expected the "
            "served pyfunc registered by evaluate or the Keras model registered by train"
        )
    classifier = replace(classifier, source=uri)
    if site_point is not None:
        point, point_path = site_point
        check_site_point_sha256(point, point_path, served_model_sha256(folder), uri)
        return replace(classifier, threshold=point.threshold, operating_point=point.name)
    if threshold is None:
        return classifier
    return replace(classifier, threshold=threshold, operating_point=THRESHOLD_OVERRIDE)


def is_mlflow_uri(model: str | Path) -> bool:
    return bool(_URI.match(str(model)))


def load_classifier(
    model: str | Path,
    threshold: float | None = None,
    site: str | None = None,
    models_folder: Path | None = None,
) -> Classifier:
    """A path: a .keras file with its model.json and threshold.json beside it; anything with a
    scheme (models:/..., runs:/...): an MLflow model URI. `threshold` overrides the operating
    point; `site` (NAME or NAME@v<n>) uses a site's point instead: from sites/ beside a model
    file, or in `models_folder`/sites (the project's paths.models) for a URI."""
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise PredictionError(f"--threshold must be in [0, 1], got {threshold}")
    if threshold is not None and site is not None:
        raise PredictionError(
            f"--site {site} and --threshold {threshold}: pass one; a site's operating point "
            "is its threshold"
        )
    if is_mlflow_uri(model):
        return load_mlflow_model(str(model), threshold, site, models_folder)
    return load_model_file(Path(model), threshold, site)
