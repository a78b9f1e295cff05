"""The served model: an MLflow pyfunc that takes raw encoded X-ray images and answers with the
network's score, the label at its operating point (the threshold evaluate chose on val, or a
site's, for a version registered for one site by `pneumonia site calibrate`) and how far each
image is from the model's val images.

Contract (the model's signature):

- input: one `binary` column `image` holding the encoded JPEG or PNG file, as it is on disk.
  Over HTTP the image is base64 in JSON, in any of MLflow's formats:
  `{"dataframe_split": {"columns": ["image"], "data": [["<base64>"]]}}`,
  `{"dataframe_records": [{"image": "<base64>"}]}`, `{"instances": [{"image": "<base64>"}]}`,
  `{"instances": ["<base64>"]}`, `{"inputs": {"image": ["<base64>"]}}` or `{"inputs":
  ["<base64>"]}`; TF Serving's `{"b64": "<base64>"}` objects are read too. The scoring server
  decodes base64 only for the two dataframe formats; for the others it hands the model the text
  itself, which `image_file_bytes` decodes (a JPEG or PNG file starts with a byte that is never
  base64 text, so raw bytes and base64 cannot be mistaken for each other).
- output: one row per image with `score` (double: the network's output, which ranks images and
  is comparable only between images scored by one model version; not a calibrated probability),
  `label` (`NORMAL` or `PNEUMONIA`, the call at the threshold), `threshold` (double),
  `operating_point` (string: what the threshold is, `val (youden)` or `site NAME vN`; a
  calibration on val does not carry to a shifted site), `ood_score` (double: the distance to the
  model's val images in its feature space, over 1 farther than almost every val image is from
  the others; null for a version logged without a site reference), `flag` (string:
  `out-of-distribution` when `ood_score` is over 1: such an image is unlike anything the
  threshold was chosen on, so its call means little) and `error` (string). An image that cannot
  be decoded does not fail the request: its row has `error` set (`row <i>: not an image ...`)
  and null score and label, so the other images of a batch are still answered. So does an image
  over the input limits (`limits` in settings.json: bytes, checked before decoding, and pixels,
  read from the header), in a format other than JPEG or PNG, or one that cannot be a chest X-ray
  (`row <i>: not a chest X-ray: ...`: under 32 pixels on its short side, or nearly constant).
  Text that is not valid base64 is rejected by the scoring server itself (HTTP 400) before the
  model runs in the dataframe formats, and answered as an error row (not an image) in the
  others.
- a body the scoring server's JSON parser cannot read (nesting deeper than Python's recursion
  limit, a number over Python's 4,300-digit limit) is answered with HTTP 400 and one line
  (`guard_scoring_server_json`), not a bare 500.

Memory: the scoring server, not this model, holds several copies of a request (the body, the
parsed JSON, a pandas frame of the base64 text, which pandas 3 copies into its own string
storage, and the decoded bytes). Parsing the body once instead of twice (the same guard) brings
the peak for an 80 MB body of images from about 6.7 to 5.4 times the body; the model's own
predict adds under 5 MB. Bound the body in
front of the server (a reverse proxy's body limit: docs/using-the-model.md, Input limits). In the
`instances` and `inputs` formats MLflow also makes a NumPy bytes array of the column, every row
padded to the longest: send one large image per request there, or use `dataframe_split`.

The model folder is self-contained: the Keras model file, a JSON with the threshold, its
operating point's name and the preprocess settings, the model's site reference (its val
features, contracts.site_reference; absent in versions logged before it existed), and this
package's source (`code_paths`), which MLflow puts first on
`sys.path` when it loads the model, so serving runs the same preprocessing code as training did.
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
import re
import shutil
import sys
import tempfile
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, DataType, Schema
from PIL import Image

from pneumonia.console import without_registry_chatter
from pneumonia.contracts.files import file_sha256
from pneumonia.contracts.labels import POSITIVE_CLASS
from pneumonia.contracts.model_reference import ModelReference
from pneumonia.contracts.served_settings import (
    SETTINGS_FILE,
    VAL_OPERATING_POINT,
    ServedSettings,
    read_served_settings,
    write_served_settings,
)
from pneumonia.contracts.site_reference import read_site_reference
from pneumonia.imaging.transforms import config_from_settings, input_limits
from pneumonia.inference.classifier import Classifier, Prediction, PredictionError
from pneumonia.inference.loading import check_served_model, load_keras_model
from pneumonia.inference.prediction import OUTPUT_COLUMNS, classify
from pneumonia.registry import LoggedModel

SERVING_ARTIFACT = "serving_model"
INPUT_COLUMN = "image"
# predict's columns without the path: a request's answers come in its rows' order.
SERVING_OUTPUT_COLUMNS = tuple(column for column in OUTPUT_COLUMNS if column != "path")
# The site reference among the pyfunc's artifacts (MLflow keeps it under artifacts/<file name>).
REFERENCE_ARTIFACT = "site_reference"
# Base64 text as MLflow's dataframe formats accept it (base64.decodebytes: line breaks allowed).
BASE64_TEXT = re.compile(rb"[A-Za-z0-9+/\r\n]+={0,2}\s*")
# A TF Serving `{"b64": "<base64>"}` object as the scoring server hands it over for a binary
# column in the `instances` and `inputs` formats: NumPy's bytes of the parsed dict's str().
B64_OBJECT = re.compile(rb"\{'b64': '([A-Za-z0-9+/=\r\n]*)'\}")
# The first byte of a JPEG (FF D8) and of a PNG (89 PNG) file: neither is a base64 character.
IMAGE_FIRST_BYTES = (0xFF, 0x89)
# What the served model imports (pneumonia.inference and its imports), pinned to the versions it
# was logged with; `--env-manager local` uses the current environment instead.
SERVING_REQUIREMENTS = (
    "mlflow",
    "pydantic",
    "tensorflow",
    "keras",
    "numpy",
    "pandas",
    "pillow",
    "opencv-python-headless",
    "pyyaml",
)

MODEL_CODE = """\
# Written by pneumonia.inference.serving.log_serving_model: the model's entry point.
from pneumonia.console import start_tensorflow

start_tensorflow()  # before the model imports TensorFlow: no start-up noise in the server's log

import mlflow

from pneumonia.inference.serving import PneumoniaServingModel

mlflow.models.set_model(PneumoniaServingModel())
"""


class PneumoniaServingModel(mlflow.pyfunc.PythonModel):
    """Encoded image bytes in, score, label and out-of-distribution score out (see the module
    docstring)."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        settings_path = Path(context.artifacts["settings"])
        settings = read_served_settings(settings_path)
        # The operating point must be the one the registry recorded (settings_sha256, threshold).
        check_served_model(settings_path)
        keras_path = Path(context.artifacts["keras_model"])
        # The threshold belongs to the weights it was chosen for (versions logged before the
        # hash was recorded carry none; their files were logged together all the same).
        named = settings.source.sha256
        if named and file_sha256(keras_path) != named:
            raise PredictionError(
                f"{keras_path}: not the model file this served model's threshold was chosen for "
                f"(sha256 {named[:12]}...); re-register it with the evaluate stage"
            )
        model = load_keras_model(keras_path)
        reference = None
        if REFERENCE_ARTIFACT in context.artifacts:
            # Refused unless written for the very Keras file served beside it.
            reference = read_site_reference(
                Path(context.artifacts[REFERENCE_ARTIFACT]), model_path=keras_path
            )
        self.classifier = Classifier(
            model,
            settings.threshold,
            # Logged before the limits existed: the defaults (DEFAULT_MAX_PIXELS, ...).
            config_from_settings(settings.preprocess, settings_path, settings.limits),
            source=f"served model ({settings_path.parent})",
            operating_point=settings.operating_point,
            reference=reference,
        )
        # Trace the prediction function now, not inside the first request (and not in two
        # request threads at once).
        size = self.classifier.preprocess.image.size
        self.classifier.scores(np.zeros((1, size, size, 1), np.uint8))
        guard_scoring_server_json()

    # pd.DataFrame is a hint MLflow does not derive a schema from: the schema (a binary column)
    # is the signature given when the model is logged.
    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        """A DataFrame with an `image` column of bytes -> the output columns, one row each."""
        frame = pd.DataFrame(model_input)
        if INPUT_COLUMN not in frame.columns:
            raise ValueError(
                f"the served model needs a column '{INPUT_COLUMN}' of encoded image bytes; "
                f"got columns {list(frame.columns)}"
            )
        sources, failed = [], {}
        for row, value in enumerate(frame[INPUT_COLUMN]):
            if isinstance(value, (bytes, bytearray, memoryview)):
                sources.append((f"row {row}", image_file_bytes(bytes(value))))
            else:
                failed[row] = f"row {row}: expected encoded image bytes, got {type(value).__name__}"
        answered = iter(classify(self.classifier, sources))
        predictions = [
            Prediction.failure(f"row {row}", failed[row], self.classifier)
            if row in failed
            else next(answered)
            for row in range(len(frame))
        ]
        return serving_frame(predictions)


def image_file_bytes(value: bytes) -> bytes:
    """The image file a request's value holds: `value` itself (what the dataframe formats, once
    the scoring server has decoded their base64, and local callers give), or the base64 text of
    the `instances` and `inputs` formats (plain or as a `{"b64": ...}` object) decoded. Anything
    else is returned as it is, and is answered as not an image."""
    if not value or value[0] in IMAGE_FIRST_BYTES:
        return value
    text = value
    if wrapped := B64_OBJECT.fullmatch(value):
        text = wrapped.group(1)
    if not BASE64_TEXT.fullmatch(text):
        return value
    try:
        return base64.decodebytes(text)  # as the scoring server decodes the dataframe formats
    except binascii.Error:
        return value


# In the `instances` and `inputs` formats MLflow makes a NumPy bytes array of the column, every
# row padded to the longest: one large image among many small ones would take rows x longest.
MAX_PADDED_BYTES = 256_000_000
PADDING_FACTOR = 4


def tensor_padding(parsed: Any) -> tuple[int, int]:
    """(bytes MLflow's padded array would take, bytes of text the rows hold) for a parsed body in
    the `instances` or `inputs` format; (0, 0) for the dataframe formats, which it does not pad."""
    if not isinstance(parsed, dict):
        return 0, 0
    rows = parsed.get("instances", parsed.get("inputs"))
    if isinstance(rows, dict):
        rows = rows.get(INPUT_COLUMN)
    if not isinstance(rows, list) or not rows:
        return 0, 0
    lengths = []
    for row in rows:
        value = row.get(INPUT_COLUMN, row) if isinstance(row, dict) else row
        if isinstance(value, dict):  # a {"b64": ...} object, padded as its str()
            value = str(value)
        lengths.append(len(value) if isinstance(value, (str, bytes)) else 0)
    return len(lengths) * max(lengths), sum(lengths)


def guard_scoring_server_json() -> bool:
    """In the process of `mlflow models serve` (whose scoring server module is then loaded): a
    body that its JSON parser cannot read is answered with HTTP 400 and one line instead of a
    bare 500, and the body is parsed once instead of twice.

    The scoring server parses the body before any model code runs and turns only
    JSONDecodeError and UnicodeDecodeError into a 400; Python's parser raises RecursionError for
    nesting deeper than the recursion limit and ValueError for an integer over 4,300 digits
    (sys.get_int_max_str_digits), which ended as "Internal Server Error". Its `_parse_json_data`
    also parses the body twice (once to look for an LLM payload, once for the data), holding both
    copies. This wraps `_parse_json_data`: the body is parsed once by the server's own
    `_decode_json_input`, with those two errors refused, and the parsed dict is handed to the
    original, which takes a dict as it is. An MLflow without these functions is left as it is.
    Returns whether the guard is in place."""
    server = sys.modules.get("mlflow.pyfunc.scoring_server")
    parse = getattr(server, "_parse_json_data", None)
    decode = getattr(server, "_decode_json_input", None)
    if parse is None or decode is None:
        return False
    if getattr(parse, "guards_unreadable_json", False):
        return True
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import BAD_REQUEST

    @functools.wraps(parse)
    def parse_once(data: Any, metadata: Any, input_schema: Any) -> Any:
        try:
            parsed = decode(data)
        except MlflowException:
            raise
        except RecursionError:
            reason = "its JSON is nested too deeply"
        except ValueError as error:
            # Only the error's first clause: it names the limit, never the body.
            reason = f"its JSON cannot be read ({str(error).split(':')[0][:200]})"
        else:
            padded, held = tensor_padding(parsed)
            if padded <= max(MAX_PADDED_BYTES, PADDING_FACTOR * held):
                return parse(parsed, metadata, input_schema)
            reason = (
                f"its {padded / 1e6:.0f} MB once MLflow pads every image to the longest, for "
                f"{held / 1e6:.1f} MB of images (the instances and inputs formats); send images "
                "of one size per request, or use dataframe_split"
            )
        raise MlflowException(
            f"the request body is refused: {reason}. Send "
            f'{{"dataframe_split": {{"columns": ["{INPUT_COLUMN}"], "data": [["<base64>"]]}}}}',
            error_code=BAD_REQUEST,
        )

    parse_once.guards_unreadable_json = True  # type: ignore[attr-defined]
    server._parse_json_data = parse_once  # type: ignore[union-attr]
    return True


def serving_frame(predictions: list[Prediction]) -> pd.DataFrame:
    """The output columns. A failed image has None (JSON null) as score, and an image of a model
    without a site reference as ood_score, so such a column is float64 only without gaps."""

    def numbers(values: list[float | None]) -> pd.Series:
        has_gaps = any(value is None for value in values)
        return pd.Series(values, dtype=object if has_gaps else np.float64)

    def texts(values: list[str | None]) -> pd.Series:
        # object, not pandas' string dtype, so a missing value is None (JSON null), not NaN.
        return pd.Series(values, dtype=object)

    return pd.DataFrame(
        {
            "score": numbers([prediction.score for prediction in predictions]),
            "label": texts([prediction.label for prediction in predictions]),
            "threshold": [prediction.threshold for prediction in predictions],
            "operating_point": texts([prediction.operating_point for prediction in predictions]),
            "ood_score": numbers([prediction.ood_score for prediction in predictions]),
            "flag": texts([prediction.flag for prediction in predictions]),
            "modality": texts([prediction.modality for prediction in predictions]),
            "view": texts([prediction.view for prediction in predictions]),
            "error": texts([prediction.error for prediction in predictions]),
        },
        columns=list(SERVING_OUTPUT_COLUMNS),
    )


def serving_signature() -> ModelSignature:
    return ModelSignature(
        inputs=Schema([ColSpec(DataType.binary, INPUT_COLUMN)]),
        outputs=Schema(
            [
                ColSpec(DataType.double, "score", required=False),
                ColSpec(DataType.string, "label", required=False),
                ColSpec(DataType.double, "threshold"),
                ColSpec(DataType.string, "operating_point"),
                ColSpec(DataType.double, "ood_score", required=False),
                ColSpec(DataType.string, "flag", required=False),
                ColSpec(DataType.string, "modality", required=False),
                ColSpec(DataType.string, "view", required=False),
                ColSpec(DataType.string, "error", required=False),
            ]
        ),
    )


def serving_requirements() -> list[str]:
    requirements = []
    for name in SERVING_REQUIREMENTS:
        try:
            requirements.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            requirements.append(name)
    return requirements


def encode_png(pixels: np.ndarray) -> bytes:
    """A grey (H, W) or (H, W, 1) uint8 array as PNG bytes (the input example)."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8).reshape(pixels.shape[:2])).save(
        buffer, format="PNG"
    )
    return buffer.getvalue()


def log_serving_model(
    model_path: Path,
    threshold: float,
    preprocess_settings: dict[str, Any],
    registered_name: str,
    source: dict[str, Any],
    example_image: bytes | None = None,
    limits: dict[str, int] | None = None,
    *,
    operating_point: str = VAL_OPERATING_POINT,
    site_reference: Path | None = None,
) -> LoggedModel:
    """Log the served pyfunc to the active run and register it as a new version of
    `registered_name`. `source` (the Keras model's registry name, version and id) is recorded in
    the settings JSON, and so are the input `limits` (max_pixels, max_file_bytes: params.yaml's
    preprocess section; the defaults when None), so serving needs no params.yaml.
    `example_image` becomes the input example (shown as a ready request in the MLflow UI); MLflow
    checks it by running the model once. `operating_point` is the name every answer gives its
    threshold (OperatingPoint.name: evaluate's `val (<rule>)`, or `site NAME vN` for a version
    served for one site); `site_reference` (contracts.site_reference, written for this very
    model file) is logged beside the settings, for the answers' out-of-distribution scores."""
    if mlflow.active_run() is None:
        raise RuntimeError("log_serving_model needs an active MLflow run")
    artifacts = {"keras_model": str(model_path)}
    if site_reference is not None:
        # Checked now, not when a server first loads it.
        read_site_reference(site_reference, model_path=model_path)
        artifacts[REFERENCE_ARTIFACT] = str(site_reference)
    # Validated (and defaulted) before logging.
    config = config_from_settings(dict(preprocess_settings), "preprocess settings", limits)
    settings = ServedSettings(
        threshold=float(threshold),
        operating_point=operating_point,
        preprocess=dict(preprocess_settings),
        limits=input_limits(config),
        positive_class=POSITIVE_CLASS,
        source=ModelReference(**source),
    )
    # The whole `pneumonia` package (this file is pneumonia/inference/serving.py).
    package = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        settings_path = folder / SETTINGS_FILE
        write_served_settings(settings_path, settings)
        code = folder / "code" / package.name
        shutil.copytree(package, code, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        # Models from code, not a pickled object: loading runs this file, which imports the
        # class from the copied package; nothing is unpickled.
        entry = folder / "served_model.py"
        entry.write_text(MODEL_CODE)
        example = None
        if example_image is not None:
            example = pd.DataFrame({INPUT_COLUMN: [example_image]})
        with warnings.catch_warnings(), without_registry_chatter():
            warnings.simplefilter("ignore", UserWarning)  # MLflow's notes on pip requirements
            info = mlflow.pyfunc.log_model(
                name=SERVING_ARTIFACT,
                python_model=str(entry),
                artifacts={**artifacts, "settings": str(settings_path)},
                code_paths=[str(code)],
                signature=serving_signature(),
                input_example=example,
                pip_requirements=serving_requirements(),
                registered_model_name=registered_name,
            )
    return LoggedModel(info.model_id, info.model_uri, str(info.registered_model_version))
