"""Reference preprocessing of an exported pneumonia model: a decoded 8-bit grey image to the
model's input, bit-identical to the project's own (pneumonia.imaging.transforms).

Standalone on purpose: it imports only NumPy and OpenCV, so it can sit beside an export and be
read by whoever ports it to another language. Its steps and parameters are input_spec.json's
`preprocessing` list; decoding (the `decode` step: EXIF orientation, 16-bit scaling, colour to
grey, DICOM windowing) is the caller's, as input_spec.json describes it.

    import json, cv2, numpy as np
    spec = json.load(open("input_spec.json"))
    grey = cv2.imread("xray.png", cv2.IMREAD_GRAYSCALE)  # 8-bit grey PNG: no conversion
    tensor = preprocess(grey, spec)[None, :, :, None]      # (1, S, S, 1) uint8, the model input
"""

from __future__ import annotations

import cv2
import numpy as np


def _steps(spec: dict | list) -> dict:
    """The preprocessing steps by name, from input_spec.json (a dict) or its `preprocessing`."""
    steps = spec["preprocessing"] if isinstance(spec, dict) else spec
    return {step["step"]: step["params"] for step in steps}


def _resize(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    return cv2.resize(pixels, (width, height), interpolation=cv2.INTER_AREA)


def resize(grey: np.ndarray, size: int, mode: str) -> tuple[np.ndarray, int, int]:
    """The resized content and its (top, left) in the size x size frame."""
    height, width = grey.shape
    if mode == "stretch":
        return _resize(grey, size, size), 0, 0
    if mode == "letterbox":
        # Python's round() rounds half to even: a port must too, or a side may differ by one.
        scale = size / max(width, height)
        new_width = min(size, max(1, round(width * scale)))
        new_height = min(size, max(1, round(height * scale)))
        content = _resize(grey, new_width, new_height)
        return content, (size - new_height) // 2, (size - new_width) // 2
    if mode == "crop":
        side = min(width, height)
        top, left = (height - side) // 2, (width - side) // 2
        return _resize(grey[top : top + side, left : left + side], size, size), 0, 0
    raise ValueError(f"resize mode must be letterbox, stretch or crop, got {mode!r}")


def preprocess(grey: np.ndarray, spec: dict | list) -> np.ndarray:
    """(H, W) uint8 grey -> (S, S) uint8, the model's input for one image (add the batch and
    channel axes: [None, :, :, None])."""
    if grey.dtype != np.uint8 or grey.ndim != 2:
        raise ValueError(f"expected an (H, W) uint8 grey image, got {grey.dtype} {grey.shape}")
    steps = _steps(spec)
    sizing, contrast = steps["resize"], steps["clahe"]
    size = int(sizing["size"])
    content, top, left = resize(grey, size, sizing["mode"])
    if contrast["enabled"]:
        # On the content only: the bars would otherwise count in each tile's histogram.
        across, down = contrast["tile_grid"]
        clahe = cv2.createCLAHE(
            clipLimit=float(contrast["clip_limit"]), tileGridSize=(int(across), int(down))
        )
        content = clahe.apply(np.ascontiguousarray(content))
    frame = np.full((size, size), sizing.get("bar_value", 0), dtype=np.uint8)
    frame[top : top + content.shape[0], left : left + content.shape[1]] = content
    return frame
