"""The export of a trained model: time and size of each format, and the parity of its scores with
the Keras model's on real X-rays (the README's and the closing note's figures).

    python benchmarks/export.py [--model models/model.keras] [--count 100]
                                [--images ../shared/data/chest_xray/test]

Loads the model as `pneumonia export` does (its card and threshold beside it), exports it as
ONNX and as a SavedModel into a temporary folder, then scores the first --count images (sorted)
with Keras, onnxruntime and the loaded SavedModel, and prints the maximum absolute difference.
Needs the export extra (onnxruntime).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from pneumonia.console import quiet_console


def main() -> None:
    quiet_console()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="models/model.keras", help="a .keras file or model URI")
    parser.add_argument("--images", type=Path, default=Path("../shared/data/chest_xray/test"))
    parser.add_argument("--count", type=int, default=100, help="images scored for the parity")
    arguments = parser.parse_args()

    import numpy as np

    from pneumonia.errors import format_bytes
    from pneumonia.export.formats import EXPORT_FORMATS, export_classifier, golden_scores
    from pneumonia.inference.loading import load_classifier
    from pneumonia.inference.prediction import decode_sources, expand_inputs

    classifier = load_classifier(arguments.model)
    entries = [path for path, error in expand_inputs([arguments.images]) if error is None]
    chosen = entries[: arguments.count]
    batch = decode_sources(classifier.preprocess, [(str(path), path) for path in chosen])
    images = batch.images
    started = time.perf_counter()
    keras_scores = classifier.scores(images).astype(np.float32)
    keras_seconds = time.perf_counter() - started
    print(
        f"model {classifier.source}: {len(images)} images of {arguments.images} scored by Keras "
        f"in {keras_seconds:.2f} s"
    )
    print(f"{'format':<11} {'export s':>8} {'model':>9} {'all files':>10} {'max |diff|':>11}")
    with tempfile.TemporaryDirectory() as scratch:
        for export_format in EXPORT_FORMATS:
            result = export_classifier(classifier, export_format, Path(scratch) / export_format)
            exported = golden_scores(result.model_path, images)
            difference = float(np.abs(exported - keras_scores).max())
            print(
                f"{export_format:<11} {result.seconds:>8.2f} "
                f"{format_bytes(result.model_bytes):>9} {format_bytes(result.bytes):>10} "
                f"{difference:>11.2e}"
            )


if __name__ == "__main__":
    main()
