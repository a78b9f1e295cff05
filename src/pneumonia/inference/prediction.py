"""Applying a trained model to new chest X-rays: decode and preprocess images with the training
code, score them in batches, and optionally explain each call with a Grad-CAM overlay.

Used by `pneumonia predict` (files and folders) and by the served MLflow model (image bytes).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from pneumonia.contracts.labels import label_for
from pneumonia.imaging.decode import ImageDecodeError
from pneumonia.imaging.transforms import preprocess_bytes, preprocess_file
from pneumonia.inference.classifier import Classifier, Prediction, PredictionError
from pneumonia.inference.gradcam import gradcam_heatmaps, overlay

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
DEFAULT_BATCH_SIZE = 32
OUTPUT_COLUMNS = ("path", "probability", "label", "threshold", "error")


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def expand_inputs(inputs: Iterable[str | Path]) -> list[tuple[Path, str | None]]:
    """Files as given (whatever their extension: a named file is meant to be predicted), folders
    searched recursively for .jpeg/.jpg/.png in any case, sorted. Hidden files and macOS
    `__MACOSX` folders are left out of folders. Returns (path, error) pairs: a missing path or a
    folder without images is an error entry, reported like an image that failed."""
    entries: list[tuple[Path, str | None]] = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            found = sorted(
                candidate
                for candidate in path.rglob("*")
                if candidate.is_file()
                and _is_image_name(candidate)
                and "__MACOSX" not in candidate.relative_to(path).parts
            )
            if not found:
                entries.append((path, f"{path}: folder holds no .jpeg, .jpg or .png file"))
            entries.extend((candidate, None) for candidate in found)
        elif path.is_file():
            entries.append((path, None))
        else:
            entries.append((path, f"{path}: file not found"))
    return entries


# --- Scoring --------------------------------------------------------------------------------


class GradcamWriter:
    """Writes one overlay PNG per image into a folder, with unique names (`<stem>.png`, then
    `<stem>-1.png`, ... when two inputs share a name)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self._used: set[str] = set()

    def target(self, name: str) -> Path:
        stem, number = Path(name).stem or "image", 0
        candidate = f"{stem}.png"
        while candidate in self._used:
            number += 1
            candidate = f"{stem}-{number}.png"
        self._used.add(candidate)
        return self.folder / candidate

    def write(self, name: str, image: np.ndarray, heatmap: np.ndarray) -> Path:
        path = self.target(name)
        Image.fromarray(overlay(image[..., 0], heatmap)).save(path)
        return path


def classify(
    classifier: Classifier,
    sources: Sequence[tuple[str, Path | bytes]],
    gradcam: GradcamWriter | None = None,
) -> list[Prediction]:
    """Score one batch of images given as files or encoded bytes, named for the output.

    Each image is decoded and preprocessed by the training code (`preprocess_file` /
    `preprocess_bytes`); one that cannot be decoded gets an error and the others are still
    scored, in one model call.
    """
    pixels, decoded, errors = [], [], {}
    for position, (name, source) in enumerate(sources):
        try:
            if isinstance(source, Path):
                array = preprocess_file(source, classifier.preprocess)
            else:
                array = preprocess_bytes(bytes(source), classifier.preprocess, name=name)
        except ImageDecodeError as error:
            errors[position] = str(error)
            continue
        pixels.append(array[..., None])
        decoded.append(position)
    images = np.stack(pixels) if pixels else np.zeros((0, 1, 1, 1), np.uint8)
    scores = dict(zip(decoded, classifier.probabilities(images), strict=True))
    overlays: dict[int, str] = {}
    if gradcam is not None and decoded:
        heatmaps, _ = gradcam_heatmaps(classifier.model, images, classifier.threshold)
        for row, position in enumerate(decoded):
            written = gradcam.write(sources[position][0], images[row], heatmaps[row])
            overlays[position] = str(written)
    results = []
    for position, (name, _) in enumerate(sources):
        if position in errors:
            results.append(Prediction(name, None, None, classifier.threshold, errors[position]))
            continue
        probability = float(scores[position])
        results.append(
            Prediction(
                name,
                probability,
                label_for(probability, classifier.threshold),
                classifier.threshold,
                gradcam=overlays.get(position),
            )
        )
    return results


def predict_paths(
    classifier: Classifier,
    inputs: Iterable[str | Path],
    batch_size: int = DEFAULT_BATCH_SIZE,
    gradcam_dir: Path | None = None,
) -> Iterator[Prediction]:
    """Predictions for files and folders, in input order, batch by batch (streams for large
    folders)."""
    if batch_size < 1:
        raise PredictionError(f"batch size must be >= 1, got {batch_size}")
    gradcam = GradcamWriter(gradcam_dir) if gradcam_dir is not None else None
    batch: list[tuple[str, Path]] = []
    for path, error in expand_inputs(inputs):
        if error is not None:
            yield from classify(classifier, batch, gradcam)
            batch = []
            yield Prediction(str(path), None, None, classifier.threshold, error)
            continue
        batch.append((str(path), path))
        if len(batch) == batch_size:
            yield from classify(classifier, batch, gradcam)
            batch = []
    yield from classify(classifier, batch, gradcam)
