"""A trained model exported for runtimes without this project: ONNX (onnxruntime, TensorRT, ...)
or a TensorFlow SavedModel (TF Serving), with what a user needs beside it.

The folder `pneumonia export` writes (nothing in it is ever overwritten):

    out/model.onnx                   (onnx)        input "image", output "score"
    out/savedmodel/1/                (savedmodel)  TF Serving's numbered version folder;
                                                   signature serving_default, same names
    out/input_spec.json              the input, its preprocessing and what the output means
    out/golden/                      synthetic images, their inputs and the model's scores
    out/reference_preprocessing.py   the preprocessing in NumPy and OpenCV
    out/README.md                    these files, and an onnxruntime example

An ensemble (model.network.average_ensemble) is one Keras model, so it exports as one graph.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from pneumonia.contracts.files import write_text
from pneumonia.contracts.image_spec import ImageSpec
from pneumonia.contracts.input_spec import (
    INPUT_NAME,
    OUTPUT_NAME,
    InputSpec,
    input_spec_of,
    write_input_spec,
)
from pneumonia.errors import PipelineError
from pneumonia.export import reference_preprocessing
from pneumonia.export.golden import GOLDEN_FOLDER, golden_image_name, write_golden
from pneumonia.imaging.transforms import config_from_settings
from pneumonia.inference.classifier import Classifier

EXPORT_FORMATS = ("onnx", "savedmodel")
ONNX_FILE = "model.onnx"
SAVEDMODEL_FOLDER = "savedmodel"
# TF Serving serves the highest numbered folder under a model's base path.
SAVEDMODEL_VERSION = "1"
INPUT_SPEC_FILE = "input_spec.json"
REFERENCE_FILE = "reference_preprocessing.py"
README_FILE = "README.md"
# The name the ONNX graph gives its batch axis (tf2onnx leaves an `unk__NNN`).
BATCH_AXIS = "batch"
# Where the input spec's JSON is also kept inside model.onnx (metadata_props), so the graph
# alone still says how to feed it.
ONNX_SPEC_KEY = "input_spec"


class ExportError(PipelineError, ValueError):
    """The export cannot be written: a bad format, or an output folder that is not empty."""


@dataclass(frozen=True)
class ExportResult:
    format: str
    out: Path  # the export folder
    model_path: Path  # model.onnx, or the SavedModel's version folder
    files: list[Path]  # every file written, under the output folder
    seconds: float
    bytes: int  # of every file written
    spec: InputSpec

    @property
    def model_bytes(self) -> int:
        if self.model_path.is_file():
            return self.model_path.stat().st_size
        return sum(path.stat().st_size for path in self.model_path.rglob("*") if path.is_file())


def check_output_folder(out: Path) -> None:
    """Refuse an output that exists and is not an empty folder: an export never overwrites."""
    if out.is_dir():
        if any(out.iterdir()):
            raise ExportError(
                f"{out}: not empty; nothing is overwritten: pass a new or empty --out folder"
            )
    elif out.exists() or out.is_symlink():
        raise ExportError(f"{out}: exists and is not a folder; pass a new or empty --out folder")


def export_model(
    model: keras.Model,
    image_spec: ImageSpec,
    *,
    threshold: float | None,
    operating_point: str | None,
    export_format: str,
    out: Path,
) -> ExportResult:
    """Export `model` (uint8 (N, S, S, 1) in, float32 (N, 1) out) as `export_format` into the new
    folder `out`, with its input spec, golden arrays, reference preprocessing and README. The
    folder is built beside `out` and renamed into place once complete: a failed export leaves
    nothing at `out`."""
    if export_format not in EXPORT_FORMATS:
        raise ExportError(
            f"export format must be one of {', '.join(EXPORT_FORMATS)}, got {export_format!r}"
        )
    size = image_spec.image_size
    if tuple(model.input_shape[1:]) != (size, size, 1):
        raise ExportError(
            f"the model takes {tuple(model.input_shape[1:])} but its image spec gives "
            f"({size}, {size}, 1)"
        )
    out = Path(out).resolve()  # `.` has no name to build a sibling folder from
    if out == Path.cwd() or out in Path.cwd().parents:
        raise ExportError(f"{out}: the current folder or one above it; pass a new folder")
    check_output_folder(out)
    started = time.perf_counter()
    spec = input_spec_of(image_spec, threshold=threshold, operating_point=operating_point)
    config = config_from_settings(image_spec.as_json(), "the model's image spec")
    out.parent.mkdir(parents=True, exist_ok=True)
    # A new folder of its own beside `out` (never one that might be someone else's).
    building = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        if export_format == "onnx":
            model_path = Path(ONNX_FILE)
            write_onnx(model, building / model_path, spec)
        else:
            model_path = Path(SAVEDMODEL_FOLDER, SAVEDMODEL_VERSION)
            write_savedmodel(model, building / model_path)
        write_input_spec(building / INPUT_SPEC_FILE, spec)
        golden = write_golden(model, config, building)
        check_parity(building / model_path, golden.inputs, golden.scores)
        shutil.copyfile(reference_preprocessing.__file__, building / REFERENCE_FILE)
        write_text(building / README_FILE, readme(export_format, spec))
        check_output_folder(out)  # again: another export may have made it meanwhile
        # A folder renames over an empty one (POSIX), never over a non-empty one.
        os.replace(building, out)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    files = sorted(path for path in out.rglob("*") if path.is_file())
    return ExportResult(
        format=export_format,
        out=out,
        model_path=out / model_path,
        files=files,
        seconds=time.perf_counter() - started,
        bytes=sum(path.stat().st_size for path in files),
        spec=spec,
    )


def export_classifier(classifier: Classifier, export_format: str, out: Path) -> ExportResult:
    """export_model for a loaded classifier (inference.loading.load_classifier): its model, its
    preprocessing and its operating point."""
    return export_model(
        classifier.model,
        ImageSpec.of(classifier.preprocess.image),
        threshold=classifier.threshold,
        operating_point=classifier.operating_point,
        export_format=export_format,
        out=out,
    )


def _input_signature(model: keras.Model) -> list:
    import tensorflow as tf

    # Named and typed explicitly, whatever the model's own input layer is called.
    return [tf.TensorSpec((None, *model.input_shape[1:]), tf.uint8, name=INPUT_NAME)]


@contextlib.contextmanager
def _quiet_tf2onnx() -> Iterator[None]:
    # tf2onnx's transpose optimizer fails on the scalar bias of MobileNetV3's hard-swish
    # (`max(numpy_val.shape)` of a 0-d array) and logs the traceback as a warning; it then
    # keeps the graph unoptimised at that node, which is still exact (parity 0, tests/
    # test_export.py), so the traceback is noise to whoever runs `pneumonia export`.
    logger = logging.getLogger("tf2onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def write_onnx(model: keras.Model, path: Path, spec: InputSpec) -> None:
    """Keras's own ONNX export (tf2onnx on the traced call, uint8 input kept), then the graph's
    output and batch axis named, and the input spec kept in its metadata."""
    import onnx

    with _quiet_tf2onnx(), warnings.catch_warnings():
        # Keras's tf2onnx shim probes `np.object`, which NumPy 2 warns about on every export.
        warnings.filterwarnings("ignore", "In the future `np.object`", FutureWarning)
        model.export(
            str(path), format="onnx", verbose=False, input_signature=_input_signature(model)
        )
    graph_model = onnx.load(str(path))
    graph = graph_model.graph
    old_name = graph.output[0].name  # tf2onnx's `Identity:0`
    for node in graph.node:
        node.output[:] = [OUTPUT_NAME if name == old_name else name for name in node.output]
        node.input[:] = [OUTPUT_NAME if name == old_name else name for name in node.input]
    graph.output[0].name = OUTPUT_NAME
    for value in (*graph.input, *graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = BATCH_AXIS
    entry = graph_model.metadata_props.add()
    entry.key, entry.value = ONNX_SPEC_KEY, json.dumps(spec.as_json(), sort_keys=True)
    onnx.checker.check_model(graph_model)
    onnx.save(graph_model, str(path))


def write_savedmodel(model: keras.Model, folder: Path) -> None:
    """A SavedModel whose serving_default signature takes `image` (uint8) and returns `score`
    (float32 (N, 1)): Keras's ExportArchive, with the output named as the ONNX graph's."""
    archive = keras.export.ExportArchive()
    archive.track(model)

    def serve(image):
        return {OUTPUT_NAME: model(image, training=False)}

    archive.add_endpoint("serve", serve, input_signature=_input_signature(model))
    archive.write_out(str(folder), verbose=False)


def readme(export_format: str, spec: InputSpec) -> str:
    """The export's README.md: what each file is, and how to score an image."""
    size = spec.image_spec.image_size
    first_golden = golden_image_name(0)
    model_line = (
        f"- `{ONNX_FILE}`: the model (ONNX); input `{INPUT_NAME}` uint8 ({BATCH_AXIS}, {size}, "
        f"{size}, 1), output `{OUTPUT_NAME}` float32 ({BATCH_AXIS}, 1)."
        if export_format == "onnx"
        else f"- `{SAVEDMODEL_FOLDER}/{SAVEDMODEL_VERSION}/`: the model (TensorFlow SavedModel, "
        f"TF Serving's version folder); signature `serving_default`, input `{INPUT_NAME}` "
        f"uint8 (N, {size}, {size}, 1), output `{OUTPUT_NAME}` float32 (N, 1)."
    )
    threshold = spec.output.threshold
    label = (
        f"{spec.output.label_rule}, threshold {threshold!r} ({spec.output.operating_point})"
        if threshold is not None
        else "no threshold recorded: choose one on your own labeled images"
    )
    if export_format == "onnx":
        example_imports = ", onnxruntime"
        example_score = (
            f'session = onnxruntime.InferenceSession("{ONNX_FILE}", '
            'providers=["CPUExecutionProvider"])\n'
            f'score = float(session.run(["{OUTPUT_NAME}"], {{"{INPUT_NAME}": image}})[0][0, 0])'
        )
    else:
        example_imports = ", tensorflow as tf"
        example_score = (
            f'serving = tf.saved_model.load("{SAVEDMODEL_FOLDER}/{SAVEDMODEL_VERSION}")'
            '.signatures["serving_default"]\n'
            f'score = float(serving({INPUT_NAME}=tf.constant(image))["{OUTPUT_NAME}"][0, 0])'
        )
    return f"""\
# Pneumonia classifier export

A chest X-ray model: one grey image in, a score out ({spec.output.meaning}).
Label: {label}.

{model_line}
- `{INPUT_SPEC_FILE}`: the input tensor, the preprocessing steps with their parameters, and
  what the output means (schema version {spec.schema_version}).
- `{REFERENCE_FILE}`: the preprocessing in NumPy and OpenCV (the decode step is yours:
  see `input_spec.json`).
- `{GOLDEN_FOLDER}/`: synthetic images (no patient's), `inputs.npy` (their model inputs,
  exactly) and `scores.npy` (this model's scores, to 1e-5): check a port against them.

```python
import json, cv2, numpy as np{example_imports}
from reference_preprocessing import preprocess

spec = json.load(open("input_spec.json"))
grey = cv2.imread("{GOLDEN_FOLDER}/{first_golden}", cv2.IMREAD_GRAYSCALE)
image = preprocess(grey, spec)[None, :, :, None]  # (1, {size}, {size}, 1) uint8
{example_score}
threshold = spec["output"]["threshold"]  # null: no operating point recorded
print(score, "" if threshold is None else "PNEUMONIA" if score >= threshold else "NORMAL")
```
"""


# The largest difference from the Keras model's scores an export may show on the golden inputs.
PARITY_TOLERANCE = 1e-5


def check_parity(model_path: Path, inputs: np.ndarray, expected: np.ndarray) -> None:
    """Refuse an export whose scores on the golden inputs differ from the Keras model's by more
    than PARITY_TOLERANCE: scored by the exported file itself (onnxruntime for ONNX, skipped
    where the export extra is not installed; TensorFlow for the SavedModel)."""
    if model_path.suffix == ".onnx":
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return
    difference = float(np.abs(golden_scores(model_path, inputs) - expected).max())
    if difference > PARITY_TOLERANCE:
        raise ExportError(
            f"{model_path.name}: its scores on the golden images differ from the Keras model's "
            f"by up to {difference:.2e} (over {PARITY_TOLERANCE:g}); nothing was written"
        )


def golden_scores(model_path: Path, inputs: np.ndarray) -> np.ndarray:
    """The exported model's scores for (N, S, S, 1) uint8 inputs, (N,) float32, by the runtime
    its format is for: onnxruntime for model.onnx, TensorFlow for a SavedModel folder."""
    if model_path.suffix == ".onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        return session.run([OUTPUT_NAME], {INPUT_NAME: inputs})[0].reshape(-1)
    import tensorflow as tf

    serving = tf.saved_model.load(str(model_path)).signatures["serving_default"]
    return serving(**{INPUT_NAME: tf.constant(inputs)})[OUTPUT_NAME].numpy().reshape(-1)
