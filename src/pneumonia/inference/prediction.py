"""Applying a trained model to new chest X-rays: decode and preprocess images with the training
code, score them in batches, and optionally explain each call with a Grad-CAM overlay.

Used by `pneumonia predict` (files and folders) and by the served MLflow model (image bytes).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from pneumonia.contracts.labels import label_for
from pneumonia.imaging.decode import ImageDecodeError
from pneumonia.imaging.transforms import preprocess_bytes, preprocess_file
from pneumonia.inference.classifier import Classifier, Prediction, PredictionError
from pneumonia.inference.gradcam import annotated_overlay, gradcam_heatmaps

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
DEFAULT_BATCH_SIZE = 32
OUTPUT_COLUMNS = ("path", "probability", "label", "threshold", "error")


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _folder_entries(folder: Path) -> list[tuple[Path, str | None]]:
    """A folder's .jpeg/.jpg/.png files, recursively and sorted; hidden files and `__MACOSX`
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
            if not _is_image_name(candidate):
                continue
            if candidate.is_file():
                entries.append((candidate, None))
            else:
                entries.append((candidate, f"{candidate}: a broken or looping link"))
    return sorted(entries, key=lambda entry: str(entry[0]))


def expand_inputs(inputs: Iterable[str | Path]) -> list[tuple[Path, str | None]]:
    """Files as given (whatever their extension: a named file is meant to be predicted), folders
    searched recursively for .jpeg/.jpg/.png in any case, sorted. Returns (path, error) pairs: a
    missing path, a broken link or a folder without images is an error entry, reported like an
    image that failed."""
    entries: list[tuple[Path, str | None]] = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            found = _folder_entries(path)
            if not found:
                entries.append((path, f"{path}: folder holds no .jpeg, .jpg or .png file"))
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
        probability: float,
        threshold: float,
    ) -> Path:
        """The annotated overlay (gradcam.annotated_overlay) of one image, as `<stem>.png`."""
        path = self.target(name)
        label = label_for(probability, threshold)
        annotated = annotated_overlay(image[..., 0], heatmap, probability, label, threshold)
        Image.fromarray(annotated).save(path)
        return path


def classify(
    classifier: Classifier,
    sources: Sequence[tuple[str, Path | bytes]],
    gradcam: GradcamWriter | None = None,
) -> list[Prediction]:
    """Score one batch of images given as files or encoded bytes, named for the output.

    Each image is decoded and preprocessed by the training code (`preprocess_file` /
    `preprocess_bytes`); one that cannot be decoded, is over the input limits or cannot be a
    chest X-ray gets an error and the others are still scored, in one model call.
    """
    pixels, decoded, errors = [], [], {}
    for position, (name, source) in enumerate(sources):
        try:
            # Inference refuses what cannot be a chest X-ray rather than answer it confidently.
            if isinstance(source, Path):
                array = preprocess_file(source, classifier.preprocess, check_xray=True)
            else:
                array = preprocess_bytes(
                    bytes(source), classifier.preprocess, name=name, check_xray=True
                )
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
            written = gradcam.write(
                sources[position][0],
                images[row],
                heatmaps[row],
                float(scores[position]),
                classifier.threshold,
            )
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
    inputs = list(inputs)
    gradcam = None
    if gradcam_dir is not None:
        check_output_folder(inputs, gradcam_dir)
        gradcam = GradcamWriter(gradcam_dir)
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
