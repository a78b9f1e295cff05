"""Real inputs for the site workflow at inference: the tiny model's site reference (built as
evaluate builds one, from images of the tiny model's own kind it never trained on) and images of
other kinds that a chest X-ray model must not answer as if they were X-rays: a rendered chart and
a natural-looking photo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from helpers.images import TINY_SIDE, blob_pixels

# The tiny model's "val": blob images (its kind) of seeds it was not trained on, two a patient.
VAL_IMAGES = 160
VAL_FIRST_SEED = 5000


def tiny_val_pixels(count: int = VAL_IMAGES, first_seed: int = VAL_FIRST_SEED) -> np.ndarray:
    """(count, S, S, 1) uint8 blob images, half of them "pneumonia" (a bright square)."""
    return np.stack([blob_pixels(first_seed + index, index % 2 == 1) for index in range(count)])[
        ..., None
    ]


def write_tiny_site_reference(model_path: Path, target: Path, threshold: float) -> Path:
    """The tiny model's site reference (contracts.site_reference) at `target`, from its pooled
    features and scores of tiny_val_pixels, for the model file at `model_path`."""
    import keras

    from pneumonia.contracts.files import file_sha256
    from pneumonia.contracts.site_reference import write_site_reference
    from pneumonia.site.features import feature_layer_names, features_and_scores
    from pneumonia.site.reference import build_site_reference

    model = keras.saving.load_model(model_path, compile=False)
    features, scores = features_and_scores(model, tiny_val_pixels())
    reference = build_site_reference(
        features,
        scores,
        # One image a patient: a patient of two images, one of each class, would make every
        # pseudo-site of the check's null exactly half pneumonia, a null tighter than any draw.
        np.arange(VAL_IMAGES),
        labels=np.arange(VAL_IMAGES) % 2,
        model_sha256=file_sha256(model_path),
        feature_layers=feature_layer_names(model),
        threshold=threshold,
        seed=0,
    )
    write_site_reference(target, reference)
    return target


def tiny_site_point(
    model_path: Path,
    target: float,
    seed: int = 7000,
    site: str = "st-marys",
    model_id: str = "m-tiny",
    sha256: str | None = None,
):
    """A site's operating point (site.calibration.calibrate_site) chosen on 160 labeled cases of
    the tiny model's kind, for the model file at `model_path` (or the file `sha256` names)."""
    import keras

    from pneumonia.contracts.files import file_sha256
    from pneumonia.contracts.model_reference import ModelReference
    from pneumonia.site.calibration import calibrate_site
    from pneumonia.site.features import features_and_scores

    model = keras.saving.load_model(model_path, compile=False)
    _, scores = features_and_scores(model, tiny_val_pixels(160, first_seed=seed))
    labels = np.arange(160) % 2 == 1
    reference = ModelReference(model_id=model_id, sha256=sha256 or file_sha256(model_path))
    return calibrate_site(
        labels, scores, site=site, model=reference, folder="cases", target=target, confidence=0.9
    )


def write_chart_png(path: Path) -> Path:
    """A chart as a screenshot shows one: two lines, axes with labels, a legend, a title, on a
    white background (matplotlib, rendered off-screen)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(figsize=(6, 4), dpi=100)
    epochs = np.linspace(0, 10, 100)
    axes.plot(epochs, np.exp(-epochs / 3), label="training loss")
    axes.plot(epochs, np.exp(-epochs / 4) + 0.05 * np.sin(epochs), label="validation loss")
    axes.set_xlabel("epoch")
    axes.set_ylabel("loss")
    axes.set_title("Training curves")
    axes.legend()
    figure.savefig(path, facecolor="white")
    plt.close(figure)
    return path


def write_photo_jpeg(path: Path, seed: int = 0) -> Path:
    """A natural-looking RGB photo: a sky of smooth colour gradients over a green field, a sun
    and a house, with sensor noise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = 300, 400
    rows, columns = np.mgrid[0:height, 0:width]
    down, across = rows / height, columns / width
    image = np.stack([110 + 90 * down, 150 + 60 * across, 235 - 60 * down], axis=-1)
    horizon = int(height * 0.62)
    field = image[horizon:]
    field[:] = np.stack(
        [60 + 30 * across[horizon:], 120 + 40 * down[horizon:], 50 + 0 * down[horizon:]], -1
    )
    sun = (rows - 0.22 * height) ** 2 + (columns - 0.75 * width) ** 2 < 35**2
    image[sun] = (250, 225, 110)
    image[150:horizon, 60:160] = (170, 70, 50)  # a house's wall
    roof = (rows < 150) & (rows > 100) & (np.abs(columns - 110) < (rows - 100) * 1.1)
    image[roof] = (90, 50, 40)
    image += np.random.default_rng(seed).normal(0, 6, image.shape)
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), "RGB").save(path, quality=92)
    return path


def write_blob_images(folder: Path, count: int, first_seed: int) -> list[Path]:
    """`count` PNG files of the tiny model's own kind (unshifted)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"blob{index:03d}.png"
        Image.fromarray(blob_pixels(first_seed + index, index % 2 == 1)).save(path)
        paths.append(path)
    return paths


def write_shifted_images(folder: Path, count: int, first_seed: int) -> list[Path]:
    """`count` PNG files of another kind: brighter, smooth grey ramps with noise, like another
    scanner's exposure, still decodable chest-X-ray-sized greys."""
    from helpers.images import chest_like_pixels

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"other{index:03d}.png"
        Image.fromarray(chest_like_pixels(first_seed + index, TINY_SIDE + 8, TINY_SIDE + 8)).save(
            path
        )
        paths.append(path)
    return paths
