"""Small real inputs: chest-like image files in every format, Kaggle-layout folders with the real
archive's quirks, the shared sample images, and the tiny trained model's pixels.
"""

from __future__ import annotations

import io
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from helpers.paths import SHARED_DATASET

# A few patients per split and class, named like the real dataset (one has two images).
PATIENT_FILES = {
    ("train", "NORMAL"): [
        "IM-0115-0001.jpeg",
        "IM-0117-0001.jpeg",
        "IM-0119-0001.jpeg",
        "IM-0122-0001.jpeg",
        "NORMAL2-IM-0115-0001.jpeg",
        "NORMAL2-IM-0117-0001.jpeg",
        "NORMAL2-IM-0120-0001.jpeg",
        "IM-0125-0001.jpeg",
    ],
    ("train", "PNEUMONIA"): [
        "person1_bacteria_1.jpeg",
        "person1_bacteria_2.jpeg",
        "person2_virus_3.jpeg",
        "person3_bacteria_4.jpeg",
        "person4_virus_5.jpeg",
        "person5_bacteria_6.jpeg",
        "person6_bacteria_7.jpeg",
        "person7_virus_8.jpeg",
        "person8_bacteria_9.jpeg",
    ],
    ("test", "NORMAL"): ["IM-0001-0001.jpeg", "IM-0003-0001.jpeg", "NORMAL2-IM-0007-0001.jpeg"],
    ("test", "PNEUMONIA"): [
        "person1_virus_6.jpeg",
        "person3_bacteria_10.jpeg",
        "person9_virus_1.jpeg",
    ],
    ("val", "NORMAL"): ["NORMAL2-IM-1427-0001.jpeg"],
    ("val", "PNEUMONIA"): ["person1946_bacteria_4874.jpeg"],
}


def chest_like_pixels(seed: int, width: int, height: int) -> np.ndarray:
    """A grey gradient with noise: decodes like an X-ray, differs per seed."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(40, 200, width, dtype=np.float32)[None, :]
    noise = rng.normal(0, 25, size=(height, width)).astype(np.float32)
    return np.clip(ramp + noise, 0, 255).astype(np.uint8)


def write_image(path: Path, seed: int, mode: str = "L", size: tuple[int, int] = (96, 80)) -> Path:
    """Write a small real image in the given Pillow mode; format from the extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    gray = chest_like_pixels(seed, *size)
    image = Image.fromarray(gray)
    if mode == "I;16":
        image = Image.fromarray(gray.astype(np.uint16) * 257)
    elif mode != "L":
        image = image.convert(mode)
    suffix = path.suffix.lower()
    image.save(
        path,
        format="PNG" if suffix == ".png" else "JPEG",
        **({} if suffix == ".png" else {"quality": 90}),
    )
    return path


def truncated_jpeg_bytes(seed: int = 0) -> bytes:
    """The first half of a real JPEG: what an interrupted download leaves."""
    buffer = io.BytesIO()
    Image.fromarray(chest_like_pixels(seed, 120, 100)).save(buffer, format="JPEG")
    data = buffer.getvalue()
    return data[: len(data) // 2]


def image_bytes(pixels: np.ndarray, image_format: str) -> bytes:
    """Grey pixels encoded in any format Pillow writes (MPO: two frames, as cameras write)."""
    image = Image.fromarray(pixels)
    buffer = io.BytesIO()
    if image_format == "MPO":
        image.save(buffer, format="MPO", save_all=True, append_images=[image])
    else:
        image.save(buffer, format=image_format)
    return buffer.getvalue()


# Formats Pillow decodes that the project refuses (the README promises JPEG or PNG).
REFUSED_FORMATS = ("BMP", "GIF", "TIFF", "WEBP", "EPS", "PPM", "ICO", "PCX", "SGI")


def blank_sixteen_bit_png(width: int, height: int) -> bytes:
    """A valid all-zero 16-bit grey PNG of any size, written row by row: 13000x13000 is a
    0.3 MB file (338 MB once decoded) made in about a second without holding the image."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        checksum = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", checksum)

    compressor = zlib.compressobj(9)
    row = bytes(1 + 2 * width)  # filter byte 0, then big-endian zeros
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


def build_kaggle_tree(root: Path, source_images: dict | None = None) -> Path:
    """A Kaggle-layout tree under root: <split>/<CLASS>/<file>, synthetic or copied images."""
    seed = 0
    for (split, label), names in PATIENT_FILES.items():
        for position, name in enumerate(names):
            seed += 1
            target = root / split / label / name
            if source_images:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source_images[(split, label)][position], target)
            else:
                write_image(target, seed)
    return root


def add_archive_quirks(top: Path, tree: Path) -> None:
    """What the real Kaggle archive adds: a nested duplicate tree, __MACOSX, .DS_Store."""
    shutil.copytree(tree, tree / "chest_xray")
    for path in sorted(tree.rglob("*.jpeg"))[:6]:
        relative = path.relative_to(top)
        apple = top / "__MACOSX" / relative.parent / f"._{path.name}"
        apple.parent.mkdir(parents=True, exist_ok=True)
        apple.write_bytes(b"\x00\x05\x16\x07AppleDouble")
    (tree / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (tree / "train" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")


def sample_shared_images() -> dict | None:
    """Distinct real images for each name of PATIENT_FILES from ../shared; None when absent."""
    if not SHARED_DATASET.is_dir():
        return None
    sample = {}
    for (split, label), names in PATIENT_FILES.items():
        files = sorted(
            (SHARED_DATASET / ("test" if split == "test" else "train") / label).glob("*.jpeg")
        )
        # val takes its images from the end of train/ so no file is used twice.
        sample[(split, label)] = files[-len(names) :] if split == "val" else files[: len(names)]
    return sample


TINY_SIDE = 32
TINY_PREPROCESS = {
    "image_size": TINY_SIDE,
    "resize": "letterbox",
    "clahe": False,
    "clahe_clip_limit": 2.0,
    "clahe_tile_grid": 8,
}


def preprocess_config(size: int, workers: int = 1, sample_grid: int = 4):
    """A preprocess section for unit tests: letterbox, no CLAHE (4 tiles when a test turns it
    on), the default input limits."""
    from pneumonia.config import DEFAULT_LIMITS, ImageInput, PreprocessConfig

    image = ImageInput(
        size=size, resize="letterbox", clahe=False, clahe_clip_limit=2.0, clahe_tile_grid=4
    )
    return PreprocessConfig(
        image=image, limits=DEFAULT_LIMITS, workers=workers, sample_grid=sample_grid
    )


def blob_pixels(
    seed: int, positive: bool, size: tuple[int, int] = (TINY_SIDE, TINY_SIDE)
) -> np.ndarray:
    """Dark noise; a "pneumonia" image carries a bright square somewhere (width, height)."""
    rng = np.random.default_rng(seed)
    width, height = size
    pixels = rng.integers(0, 90, size=(height, width)).astype(np.uint8)
    if positive:
        side = max(4, min(width, height) // 4)
        row, column = rng.integers(1, height - side - 1), rng.integers(1, width - side - 1)
        pixels[row : row + side, column : column + side] = 230
    return pixels
