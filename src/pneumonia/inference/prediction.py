"""Applying a trained model to new chest X-rays: decode and preprocess images with the training
code, score them in batches (with each image's out-of-distribution score against the model's site
reference), and optionally explain each call with a Grad-CAM overlay.

Used by `pneumonia predict` (files and folders) and by the served MLflow model (image bytes).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pneumonia.config import PreprocessConfig
from pneumonia.contracts.image_files import SUFFIX_TEXT, is_image_name
from pneumonia.contracts.labels import label_for
from pneumonia.imaging.decode import ImageDecodeError
from pneumonia.imaging.dicom import DicomInfo
from pneumonia.imaging.transforms import preprocess_source
from pneumonia.inference.classifier import FLAG_SEPARATOR, Classifier, Prediction, PredictionError
from pneumonia.inference.gradcam import annotated_overlay, gradcam_heatmaps
from pneumonia.site.check import OutOfDistribution

DEFAULT_BATCH_SIZE = 32
OUTPUT_COLUMNS = (
    "path",
    "score",
    "label",
    "threshold",
    "operating_point",
    "ood_score",
    "flag",
    "modality",
    "view",
    "error",
)


def _folder_entries(folder: Path) -> list[tuple[Path, str | None]]:
    """A folder's images (contracts.image_files: .jpeg/.jpg/.png/.dcm/.dicom, and suffix-less
    DICOM files), recursively and sorted; hidden files and `__MACOSX`
    left out. Links to folders are not followed (no loop can hang the walk) and, like a broken or
    looping link to a file, get an error entry rather than vanishing."""
    entries: list[tuple[Path, str | None]] = []
    for directory, folders, names in os.walk(folder):
        here = Path(directory)
        folders[:] = sorted(name for name in folders if name != "__MACOSX")
        for name in folders:
            if (here / name).is_symlink():
                entries.append(
                    (
                        here / name,
                        f"{here / name}: a link to a folder, not followed; pass its target",
                    )
                )
        for name in sorted(names):
            candidate = here / name
            if not is_image_name(candidate):
                continue
            if candidate.is_file():
                entries.append((candidate, None))
            else:
                entries.append((candidate, f"{candidate}: a broken or looping link"))
    return sorted(entries, key=lambda entry: str(entry[0]))


def expand_inputs(inputs: Iterable[str | Path]) -> list[tuple[Path, str | None]]:
    """Files as given (whatever their extension: a named file is meant to be predicted), folders
    searched recursively for images (contracts.image_files) in any case, sorted. Returns (path,
    error) pairs: a missing path, a broken link or a folder without images is an error entry,
    reported like an image that failed."""
    entries: list[tuple[Path, str | None]] = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            found = _folder_entries(path)
            if not found:
                entries.append((path, f"{path}: folder holds no {SUFFIX_TEXT} file"))
            entries.extend(found)
        elif path.is_file():
            entries.append((path, None))
        elif path.is_symlink():
            entries.append((path, f"{path}: a broken or looping link"))
        else:
            entries.append((path, f"{path}: file not found"))
    return entries


def check_output_folder(inputs: Iterable[str | Path], folder: Path) -> None:
    """The Grad-CAM folder must not hold any input, nor lie inside an input folder: overlays
    would overwrite inputs, or be read as X-rays on the next run. Checked before any scoring."""
    target = folder.resolve()
    for given in inputs:
        path = Path(given).resolve()
        inside_input = path.is_dir() and (target == path or path in target.parents)
        holds_input = target == path or target in path.parents
        if inside_input or holds_input:
            raise PredictionError(
                f"--gradcam {folder}: the overlays would be written where inputs are read "
                f"({given}); choose a folder outside the inputs"
            )
    if target.exists() and not target.is_dir():
        raise PredictionError(f"--gradcam {folder}: exists and is not a folder")


# --- Scoring --------------------------------------------------------------------------------


class GradcamWriter:
    """Writes one overlay PNG per image into a folder, with unique names (`<stem>.png`, then
    `<stem>-1.png`, ... when two inputs share a name)."""

    def __init__(self, folder: Path):
        self.folder = folder
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise PredictionError(
                f"--gradcam {folder}: cannot create the folder ({error.strerror or error})"
            ) from error
        self._used: set[str] = set()

    def target(self, name: str) -> Path:
        stem, number = Path(name).stem or "image", 0
        candidate = f"{stem}.png"
        while candidate in self._used:
            number += 1
            candidate = f"{stem}-{number}.png"
        self._used.add(candidate)
        return self.folder / candidate

    def write(
        self,
        name: str,
        image: np.ndarray,
        heatmap: np.ndarray,
        score: float,
        threshold: float,
        operating_point: str,
    ) -> Path:
        """The annotated overlay (gradcam.annotated_overlay) of one image, as `<stem>.png`."""
        path = self.target(name)
        label = label_for(score, threshold)
        annotated = annotated_overlay(
            image[..., 0], heatmap, score, label, threshold, operating_point
        )
        Image.fromarray(annotated).save(path)
        return path


class ScoredFeatures:
    """A uniform random sample of at most `capacity` of the images a predict run scored (their
    pooled features as float32, and scores), kept for one site check at the end
    (inference.site_use), and the count of all: memory stays bounded however many images a run
    scores (2,000 images of a 2,048-feature backbone: 16 MB). Reservoir sampling, seeded."""

    def __init__(self, capacity: int, seed: int = 0) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.features: np.ndarray | None = None
        self.scores = np.zeros(0)
        self.count = 0
        self._generator = np.random.default_rng(seed)

    def add(self, features: np.ndarray, scores: np.ndarray) -> None:
        features = np.asarray(features, dtype=np.float32)
        scores = np.asarray(scores, dtype=np.float64)
        if self.features is None:
            self.features = np.zeros((0, features.shape[1]), np.float32)
        room = max(0, self.capacity - len(self.features))
        self.features = np.concatenate([self.features, features[:room]])
        self.scores = np.concatenate([self.scores, scores[:room]])
        # Algorithm R for the rest: the i-th image seen replaces a kept one with chance
        # capacity / i, so every image seen is equally likely to be kept.
        for offset in range(room, len(features)):
            seen = self.count + offset + 1
            slot = int(self._generator.integers(seen))
            if slot < self.capacity:
                self.features[slot], self.scores[slot] = features[offset], scores[offset]
        self.count += len(features)

    def __len__(self) -> int:
        return self.count

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The kept sample's features and scores."""
        if self.features is None:
            return np.zeros((0, 0), np.float32), np.zeros(0)
        return self.features, self.scores


@dataclass(frozen=True)
class DecodedSources:
    """What decode_sources made of a batch of sources: the decoded images (N, S, S, 1) uint8,
    their positions in the sources, an error by position for each that failed, and a DICOM
    file's modality, view and warnings by position."""

    images: np.ndarray
    positions: list[int]
    errors: dict[int, str]
    dicom: dict[int, DicomInfo]


def decode_sources(
    preprocess: PreprocessConfig, sources: Sequence[tuple[str, Path | bytes]]
) -> DecodedSources:
    """Each source (a file, or encoded bytes) decoded, JPEG, PNG or DICOM alike, and
    preprocessed by the training code. Used by predict, the served model and the site commands."""
    pixels, decoded, errors, dicom = [], [], {}, {}
    for position, (name, source) in enumerate(sources):
        try:
            # Inference refuses what cannot be a chest X-ray rather than answer it confidently.
            array, info = preprocess_source(
                source if isinstance(source, Path) else bytes(source),
                preprocess,
                name=name,
                check_xray=True,
            )
        except ImageDecodeError as error:
            errors[position] = str(error)
            continue
        pixels.append(array[..., None])
        decoded.append(position)
        if info is not None:
            dicom[position] = info
    size = preprocess.image.size
    images = np.stack(pixels) if pixels else np.zeros((0, size, size, 1), np.uint8)
    return DecodedSources(images, decoded, errors, dicom)


def row_flag(ood_score: float | None, dicom: DicomInfo | None) -> str | None:
    """A row's `flag`: out-of-distribution, then a DICOM file's warnings; None when nothing."""
    reasons = [] if ood_score is None else [OutOfDistribution.flag(ood_score)]
    reasons += [] if dicom is None else list(dicom.warnings)
    present = [reason for reason in reasons if reason]
    return FLAG_SEPARATOR.join(present) if present else None


def classify(
    classifier: Classifier,
    sources: Sequence[tuple[str, Path | bytes]],
    gradcam: GradcamWriter | None = None,
    collected: ScoredFeatures | None = None,
) -> list[Prediction]:
    """Score one batch of images given as files or encoded bytes, named for the output.

    Each image is decoded and preprocessed by the training code (`preprocess_source`, DICOM
    included); one that cannot be decoded, is over the input limits or cannot be a
    chest X-ray gets an error and the others are still scored, in one model call that gives
    their features too (the out-of-distribution score; kept in `collected` when given).
    """
    batch = decode_sources(classifier.preprocess, sources)
    images, decoded, errors = batch.images, batch.positions, batch.errors
    features, batch_scores = classifier.features_and_scores(images)
    ood = classifier.out_of_distribution(features)
    if collected is not None and features is not None and decoded:
        collected.add(features, batch_scores)
    row_of = {position: row for row, position in enumerate(decoded)}
    overlays: dict[int, str] = {}
    if gradcam is not None and decoded:
        heatmaps, _ = gradcam_heatmaps(classifier.model, images, classifier.threshold)
        for row, position in enumerate(decoded):
            written = gradcam.write(
                sources[position][0],
                images[row],
                heatmaps[row],
                float(batch_scores[row]),
                classifier.threshold,
                classifier.operating_point,
            )
            overlays[position] = str(written)
    results = []
    for position, (name, _) in enumerate(sources):
        if position in errors:
            results.append(Prediction.failure(name, errors[position], classifier))
            continue
        row = row_of[position]
        value = float(batch_scores[row])
        ood_score = None if ood is None else float(ood[row])
        dicom = batch.dicom.get(position)
        results.append(
            Prediction(
                name,
                value,
                label_for(value, classifier.threshold),
                classifier.threshold,
                classifier.operating_point,
                ood_score=ood_score,
                flag=row_flag(ood_score, dicom),
                modality=None if dicom is None else dicom.modality,
                view=None if dicom is None else dicom.view,
                gradcam=overlays.get(position),
            )
        )
    return results


def predict_paths(
    classifier: Classifier,
    inputs: Iterable[str | Path],
    batch_size: int = DEFAULT_BATCH_SIZE,
    gradcam_dir: Path | None = None,
    collected: ScoredFeatures | None = None,
) -> Iterator[Prediction]:
    """Predictions for files and folders, in input order, batch by batch (streams for large
    folders); the scored images' features are kept in `collected` when given."""
    if batch_size < 1:
        raise PredictionError(f"batch size must be >= 1, got {batch_size}")
    inputs = list(inputs)
    gradcam = None
    if gradcam_dir is not None:
        check_output_folder(inputs, gradcam_dir)
        gradcam = GradcamWriter(gradcam_dir)
    batch: list[tuple[str, Path]] = []
    for path, error in expand_inputs(inputs):
        if error is not None:
            yield from classify(classifier, batch, gradcam, collected)
            batch = []
            yield Prediction.failure(str(path), error, classifier)
            continue
        batch.append((str(path), path))
        if len(batch) == batch_size:
            yield from classify(classifier, batch, gradcam, collected)
            batch = []
    yield from classify(classifier, batch, gradcam, collected)
