"""The golden arrays written beside every export: a few synthetic images, the model input the
project makes of them and the exported model's scores, so a port can check its decoding and
preprocessing (inputs.npy, bit for bit) and its runtime (scores.npy, to 1e-5) against ours.

No patient image travels with an export: the images are drawn here, chest-like (a body, two
darker lung fields, a bright spine, some patchy opacities, noise) so that the scores vary, and
of different sizes and aspect ratios so that the letterbox bars and offsets are exercised.
They are PNG: lossless, so every decoder gives the same grey pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from PIL import Image

from pneumonia.config import PreprocessConfig
from pneumonia.contracts.files import write_json
from pneumonia.imaging.transforms import preprocess_file
from pneumonia.model.scoring import score

GOLDEN_FOLDER = "golden"
IMAGES_FOLDER = "images"
INDEX_FILE = "index.json"
INPUTS_FILE = "inputs.npy"
SCORES_FILE = "scores.npy"
# (width, height): portrait, landscape, square, and one narrow enough for wide bars.
GOLDEN_SIZES = (
    (320, 256),
    (256, 320),
    (300, 300),
    (400, 288),
    (240, 330),
    (512, 384),
    (180, 420),
    (97, 61),
)


@dataclass(frozen=True)
class GoldenArrays:
    """What write_golden wrote, relative to the export folder."""

    images: list[str]
    inputs: np.ndarray  # (N, S, S, 1) uint8
    scores: np.ndarray  # (N,) float32


def chest_like_image(seed: int, width: int, height: int) -> np.ndarray:
    """A synthetic (height, width) uint8 grey image shaped like a frontal chest X-ray."""
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[0:height, 0:width].astype(np.float32)
    y, x = rows / max(height - 1, 1), columns / max(width - 1, 1)  # 0..1 across the image

    def ellipse(centre_x: float, centre_y: float, radius_x: float, radius_y: float) -> np.ndarray:
        distance = ((x - centre_x) / radius_x) ** 2 + ((y - centre_y) / radius_y) ** 2
        return np.clip(1.0 - distance, 0.0, 1.0) ** 0.5  # soft-edged

    pixels = 20.0 + 150.0 * ellipse(0.5, 0.55, 0.48, 0.55)  # the body
    spread = rng.uniform(0.17, 0.21)
    for side in (-1, 1):  # the lungs, darker than the soft tissue around them
        pixels -= 100.0 * ellipse(0.5 + side * spread, 0.5, 0.15, rng.uniform(0.3, 0.36))
    pixels += 70.0 * np.exp(-(((x - 0.5) / 0.035) ** 2)) * (y > 0.1)  # the spine
    for _ in range(rng.integers(0, 5)):  # patchy opacities, the more the higher the score
        centre_x = 0.5 + rng.choice((-1, 1)) * rng.uniform(0.12, 0.26)
        pixels += rng.uniform(40, 90) * ellipse(
            centre_x, rng.uniform(0.3, 0.75), rng.uniform(0.04, 0.1), rng.uniform(0.04, 0.1)
        )
    pixels += rng.normal(0.0, 6.0, size=pixels.shape)
    return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


def golden_image_name(index: int) -> str:
    """The index-th golden image's path under golden/ (index.json lists them all)."""
    width, height = GOLDEN_SIZES[index]
    return f"{IMAGES_FOLDER}/golden_{index}_{width}x{height}.png"


def write_golden(
    model: keras.Model, config: PreprocessConfig, out: Path, seed: int = 0
) -> GoldenArrays:
    """The golden images (PNG), their model inputs and the model's scores, under out/golden/;
    the inputs come from the project's own decoding and preprocessing of the written files."""
    folder = out / GOLDEN_FOLDER
    (folder / IMAGES_FOLDER).mkdir(parents=True, exist_ok=True)
    names = []
    for index, (width, height) in enumerate(GOLDEN_SIZES):
        name = golden_image_name(index)
        Image.fromarray(chest_like_image(seed + index, width, height)).save(folder / name)
        names.append(name)
    inputs = np.stack([preprocess_file(folder / name, config) for name in names])[..., None]
    scores = score(model, inputs).astype(np.float32).reshape(-1)
    np.save(folder / INPUTS_FILE, inputs)
    np.save(folder / SCORES_FILE, scores)
    write_json(
        folder / INDEX_FILE,
        {
            "images": names,
            "inputs": INPUTS_FILE,
            "scores": SCORES_FILE,
            "note": "synthetic images, no patient's: inputs[i] is images[i] preprocessed as "
            "input_spec.json says (exactly), scores[i] the model's output for inputs[i] (to 1e-5)",
        },
    )
    return GoldenArrays(names, inputs, scores)
