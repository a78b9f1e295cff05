"""What the `pneumonia site` commands do between the files and the statistics: read a site's
images (unlabeled files and folders, or a labeled folder with NORMAL/ and PNEUMONIA/), score them
with a model file and its site reference, run the check, choose the site's operating point, and
describe the stored points. The MLflow side of a calibration is deployment.publishing."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pneumonia.config import PreprocessConfig
from pneumonia.contracts.files import file_sha256
from pneumonia.contracts.labels import CLASSES, POSITIVE_CLASS
from pneumonia.contracts.model_reference import ModelReference
from pneumonia.contracts.operating_point import OperatingPoint
from pneumonia.contracts.paths import SITE_REFERENCE_FILE
from pneumonia.contracts.site_reference import SiteReference, read_site_reference
from pneumonia.errors import PipelineError
from pneumonia.site import statistics
from pneumonia.site.calibration import calibrate_site
from pneumonia.site.check import SiteCheck, check_site
from pneumonia.site.points import site_versions

# How many characters of a model's sha256 `site list` shows.
SHA256_SHOWN = 12


class SiteWorkflowError(PipelineError, ValueError):
    """A site folder, its images or a site setting cannot be used; the message names the folder
    or the option and the fix."""


@dataclass(frozen=True)
class SiteImages:
    """A site's readable images as the model takes them, and what could not be read."""

    images: np.ndarray  # (N, S, S, 1) uint8
    names: list[str]  # the path of each image, for the report
    labels: np.ndarray | None  # True = pneumonia; None for unlabeled images
    skipped: list[str]  # one line per unreadable image: its path and why

    def __len__(self) -> int:
        return len(self.names)


def read_images(
    entries: Sequence[tuple[Path, str | None]],
    preprocess: PreprocessConfig,
    labels: Sequence[bool] | None = None,
) -> SiteImages:
    """Decode and preprocess each (path, error) entry (inference.prediction.expand_inputs) as
    predict does (inference.prediction.decode_sources), refusing what cannot be a chest X-ray;
    an unreadable image is skipped, not fatal: one bad file must not stop a check of hundreds."""
    from pneumonia.inference.prediction import decode_sources

    readable = [position for position, (_, error) in enumerate(entries) if error is None]
    batch = decode_sources(
        preprocess, [(str(entries[position][0]), entries[position][0]) for position in readable]
    )
    images, decoded, errors = batch.images, batch.positions, batch.errors
    failed = {position: error for position, (_, error) in enumerate(entries) if error is not None}
    failed.update({readable[index]: error for index, error in errors.items()})
    kept = [readable[index] for index in decoded]
    names = [str(entries[position][0]) for position in kept]
    chosen = None if labels is None else np.asarray(labels, dtype=bool)[kept]
    return SiteImages(images, names, chosen, [failed[position] for position in sorted(failed)])


def unlabeled_site_images(inputs: Iterable[str | Path], preprocess: PreprocessConfig) -> SiteImages:
    """Image files as given and folders searched recursively, as predict reads them."""
    from pneumonia.inference.prediction import expand_inputs

    return read_images(expand_inputs(inputs), preprocess)


def labeled_entries(folder: Path) -> tuple[list[tuple[Path, str | None]], list[bool]]:
    """The images of FOLDER/NORMAL and FOLDER/PNEUMONIA (searched recursively) with their labels
    (True = pneumonia); a missing folder is refused, naming what it lacks."""
    from pneumonia.inference.prediction import expand_inputs

    if not folder.is_dir():
        raise SiteWorkflowError(
            f"{folder}: not a folder; pass a folder holding the site's labeled images in "
            f"{CLASSES[0]}/ and {CLASSES[1]}/"
        )
    missing = [name for name in CLASSES if not (folder / name).is_dir()]
    if missing:
        raise SiteWorkflowError(
            f"{folder}: no {' or '.join(f'{name}/' for name in missing)} subfolder; put the "
            f"site's labeled images in {folder / CLASSES[0]} and {folder / CLASSES[1]}"
        )
    entries: list[tuple[Path, str | None]] = []
    labels: list[bool] = []
    for name in CLASSES:
        found = expand_inputs([folder / name])
        entries.extend(found)
        labels.extend([name == POSITIVE_CLASS] * len(found))
    return entries, labels


@dataclass(frozen=True)
class SiteModel:
    """A model file with its card, read for the site commands."""

    model: Any  # keras.Model (not imported here: `site list` needs no TensorFlow)
    card: Any  # contracts.model_card.ModelCard
    preprocess: PreprocessConfig
    path: Path
    sha256: str

    @property
    def reference_path(self) -> Path:
        """Where evaluate writes the model's site reference: beside the model file."""
        return self.path.with_name(SITE_REFERENCE_FILE)

    def reference(self) -> SiteReference:
        """The site reference written for this very file (its sha256), else a one-line error."""
        return read_site_reference(self.reference_path, self.path)

    def model_reference(self) -> ModelReference:
        """What a site point records of its model: the registry version the card names (where
        it names one) and the file's sha256."""
        registered = {key: value for key, value in self.card.registered_model().items() if value}
        return ModelReference(**registered, sha256=self.sha256)


def load_site_model(model: str | Path, preprocess_limits: PreprocessConfig | None) -> SiteModel:
    """A .keras file with its model card; `preprocess_limits` (params.yaml's preprocess
    section) sets the input limits, as predict applies them."""
    from pneumonia.imaging.transforms import with_limits
    from pneumonia.inference.loading import is_mlflow_uri, load_carded_model

    if is_mlflow_uri(model):
        raise SiteWorkflowError(
            f"--model {model}: the site commands take a .keras file with its model.json and "
            f"{SITE_REFERENCE_FILE} beside it, not an MLflow URI; download the model's folder "
            "(mlflow artifacts download) or use the pipeline's models/model.keras"
        )
    path = Path(model)
    carded = load_carded_model(path)
    preprocess = carded.preprocess
    if preprocess_limits is not None:
        preprocess = with_limits(preprocess, preprocess_limits)
    return SiteModel(carded.model, carded.card, preprocess, path, file_sha256(path))


def score_images(site_model: SiteModel, images: SiteImages) -> tuple[np.ndarray, np.ndarray]:
    """(features, scores) of the images: one model call gives both (site.features)."""
    from pneumonia.site.features import features_and_scores

    return features_and_scores(site_model.model, images.images)


def run_check(
    site_model: SiteModel, images: SiteImages, reference: SiteReference | None = None
) -> SiteCheck:
    """The site check of unlabeled images against the model's reference (read here unless
    given: a caller reads it first to fail before decoding any image)."""
    from pneumonia.site.check import MINIMUM_IMAGES

    reference = reference or site_model.reference()
    if len(images) < MINIMUM_IMAGES:
        raise SiteWorkflowError(
            f"{len(images)} readable image(s) ({len(images.skipped)} skipped): a site check needs "
            f"at least {MINIMUM_IMAGES}; pass more of the site's images"
        )
    features, scores = score_images(site_model, images)
    return check_site(reference, features, scores, images.names)


def calibrate(
    site_model: SiteModel,
    images: SiteImages,
    *,
    site: str,
    folder: Path,
    target: float,
    confidence: float,
) -> OperatingPoint:
    """The site's operating point on its labeled images (version unset); too few pneumonia
    images is a one-line refusal naming how many the guarantee needs."""
    from pneumonia.model.scoring import score

    if images.labels is None:
        raise ValueError("calibration needs labeled images (labeled_entries, read_images)")
    # No pneumonia image is TooFewPositives' refusal below, which names how many are needed.
    if len(images) and images.labels.all():
        raise SiteWorkflowError(
            f"{folder / CLASSES[0]}: no readable image; a site calibration measures "
            "specificity on the site's normal images too: add some"
        )
    scores = score(site_model.model, images.images)
    try:
        return calibrate_site(
            images.labels,
            scores,
            site=site,
            model=site_model.model_reference(),
            folder=str(folder.resolve()),
            target=target,
            confidence=confidence,
        )
    except statistics.TooFewPositives as error:
        raise SiteWorkflowError(f"{folder / CLASSES[1]}: {error}") from error


def kept_versions(models: Path, site: str, written: int) -> list[int]:
    return [version for version in site_versions(models, site) if version != written]


def written_sentence(point: OperatingPoint, kept: list[int]) -> str:
    """`site NAME v2 written (v1 kept)`: a re-calibration adds a version, never replaces one."""
    sentence = f"site {point.site} v{point.version} written"
    if kept:
        sentence += f" ({', '.join(f'v{version}' for version in kept)} kept)"
    return sentence


def point_summary(point: OperatingPoint) -> str:
    """The chosen threshold and what it measured on the calibration images, in one line."""
    calibration = point.calibration
    if calibration is None:
        return f"threshold {point.threshold:.4f}"
    sensitivity, specificity = calibration.sensitivity, calibration.specificity
    return (
        f"threshold {point.threshold:.4f} ({point.rule}); on the calibration images "
        f"({calibration.positives} pneumonia, {calibration.negatives} normal): sensitivity "
        f"{sensitivity.value:.3f} [{sensitivity.low:.3f}, {sensitivity.high:.3f}], specificity "
        f"{specificity.value:.3f} [{specificity.low:.3f}, {specificity.high:.3f}] "
        f"(exact {calibration.confidence:.0%} intervals; in-sample: these images chose it)"
    )


def point_row(point: OperatingPoint, path: Path, model_sha256: str | None) -> dict[str, Any]:
    """One stored site point as `site list` shows it; `model_sha256` is the current model
    file's (None: there is none), to say whether the point applies to it."""
    calibration = point.calibration
    named = point.model.sha256 or ""
    row: dict[str, Any] = {
        "site": point.site,
        "version": point.version,
        "created": calibration.created if calibration else None,
        "threshold": point.threshold,
        "target_sensitivity": calibration.target_sensitivity if calibration else None,
        "confidence": calibration.confidence if calibration else None,
        "positives": calibration.positives if calibration else None,
        "negatives": calibration.negatives if calibration else None,
        "sensitivity": calibration.sensitivity.value if calibration else None,
        "specificity": calibration.specificity.value if calibration else None,
        "model_sha256": named[:SHA256_SHOWN],
        "current_model": bool(model_sha256) and named == model_sha256,
        "path": str(path),
    }
    if point.serving_model:
        row["serving_model"] = point.serving_model
    return row
