"""The served model: an MLflow pyfunc that takes raw encoded X-ray images and answers with the
probability of pneumonia and the label at the threshold evaluate chose on val.

Contract (the model's signature):

- input: one `binary` column `image` holding the encoded JPEG or PNG file, as it is on disk.
  Over HTTP the scoring server expects binary columns base64-encoded in JSON, for example
  `{"dataframe_split": {"columns": ["image"], "data": [["<base64>"]]}}`, and decodes them before
  the model sees them.
- output: one row per image with `probability` (double), `label` (`NORMAL` or `PNEUMONIA`),
  `threshold` (double) and `error` (string). An image that cannot be decoded does not fail the
  request: its row has `error` set (`row <i>: not an image ...`) and null probability and label,
  so the other images of a batch are still answered. So does an image over the input limits
  (`limits` in settings.json: bytes, checked before decoding, and pixels, read from the header),
  in a format other than JPEG or PNG, or one that cannot be a chest X-ray (`row <i>: not a chest
  X-ray: ...`: under 32 pixels on its short side, or nearly constant). Text that is not valid
  base64 is rejected by the scoring server itself (HTTP 400) before the model runs.

The model folder is self-contained: the Keras model file, a JSON with the threshold and the
preprocess settings, and this package's source (`code_paths`), which MLflow puts first on
`sys.path` when it loads the model, so serving runs the same preprocessing code as training did.
"""

from __future__ import annotations

import io
import json
import shutil
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

from pneumonia.contracts.files import file_sha256
from pneumonia.contracts.labels import POSITIVE_CLASS
from pneumonia.contracts.operating_point import MODEL_SHA256
from pneumonia.imaging.transforms import config_from_settings, input_limits
from pneumonia.inference.classifier import Classifier, Prediction, PredictionError
from pneumonia.inference.loading import load_keras_model
from pneumonia.inference.prediction import classify
from pneumonia.registry import LoggedModel

SERVING_ARTIFACT = "serving_model"
INPUT_COLUMN = "image"
SERVING_OUTPUT_COLUMNS = ("probability", "label", "threshold", "error")
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
    """Encoded image bytes in, probability and label out (see the module docstring)."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        settings_path = Path(context.artifacts["settings"])
        settings = json.loads(settings_path.read_text())
        keras_path = Path(context.artifacts["keras_model"])
        # The threshold belongs to the weights it was chosen for (versions logged before the
        # hash was recorded carry none; their files were logged together all the same).
        named = (settings.get("source") or {}).get(MODEL_SHA256)
        if named and file_sha256(keras_path) != named:
            raise PredictionError(
                f"{keras_path}: not the model file this served model's threshold was chosen for "
                f"(sha256 {named[:12]}...); re-register it with the evaluate stage"
            )
        model = load_keras_model(keras_path)
        self.classifier = Classifier(
            model,
            float(settings["threshold"]),
            # Logged before the limits existed: the defaults (DEFAULT_MAX_PIXELS, ...).
            config_from_settings(settings["preprocess"], settings_path, settings.get("limits")),
            source=f"served model ({settings_path.parent})",
        )
        # Trace the prediction function now, not inside the first request (and not in two
        # request threads at once).
        size = self.classifier.preprocess.image_size
        self.classifier.probabilities(np.zeros((1, size, size, 1), np.uint8))

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
                sources.append((f"row {row}", bytes(value)))
            else:
                failed[row] = f"row {row}: expected encoded image bytes, got {type(value).__name__}"
        answered = iter(classify(self.classifier, sources))
        threshold = self.classifier.threshold
        predictions = [
            Prediction(f"row {row}", None, None, threshold, failed[row])
            if row in failed
            else next(answered)
            for row in range(len(frame))
        ]
        return serving_frame(predictions)


def serving_frame(predictions: list[Prediction]) -> pd.DataFrame:
    """The output columns. A failed image has None (JSON null) as probability, so the column is
    float64 only when every image was scored."""
    probabilities = [prediction.probability for prediction in predictions]
    has_gaps = any(value is None for value in probabilities)
    return pd.DataFrame(
        {
            "probability": pd.Series(probabilities, dtype=object if has_gaps else np.float64),
            # object, not pandas' string dtype, so a missing value is None (JSON null), not NaN.
            "label": pd.Series([prediction.label for prediction in predictions], dtype=object),
            "threshold": [prediction.threshold for prediction in predictions],
            "error": pd.Series([prediction.error for prediction in predictions], dtype=object),
        },
        columns=list(SERVING_OUTPUT_COLUMNS),
    )


def serving_signature() -> ModelSignature:
    return ModelSignature(
        inputs=Schema([ColSpec(DataType.binary, INPUT_COLUMN)]),
        outputs=Schema(
            [
                ColSpec(DataType.double, "probability", required=False),
                ColSpec(DataType.string, "label", required=False),
                ColSpec(DataType.double, "threshold"),
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
) -> LoggedModel:
    """Log the served pyfunc to the active run and register it as a new version of
    `registered_name`. `source` (the Keras model's registry name, version and id) is recorded in
    the settings JSON, and so are the input `limits` (max_pixels, max_file_bytes: params.yaml's
    preprocess section; the defaults when None), so serving needs no params.yaml.
    `example_image` becomes the input example (shown as a ready request in the MLflow UI); MLflow
    checks it by running the model once."""
    if mlflow.active_run() is None:
        raise RuntimeError("log_serving_model needs an active MLflow run")
    # Validated (and defaulted) before logging.
    config = config_from_settings(dict(preprocess_settings), "preprocess settings", limits)
    settings = {
        "threshold": float(threshold),
        "preprocess": dict(preprocess_settings),
        "limits": input_limits(config),
        "positive_class": POSITIVE_CLASS,
        "source": dict(source),
    }
    # The whole `pneumonia` package (this file is pneumonia/inference/serving.py).
    package = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        settings_path = folder / "settings.json"
        settings_path.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
        code = folder / "code" / package.name
        shutil.copytree(package, code, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        # Models from code, not a pickled object: loading runs this file, which imports the
        # class from the copied package; nothing is unpickled.
        entry = folder / "served_model.py"
        entry.write_text(MODEL_CODE)
        example = None
        if example_image is not None:
            example = pd.DataFrame({INPUT_COLUMN: [example_image]})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # MLflow's notes on pip requirements
            info = mlflow.pyfunc.log_model(
                name=SERVING_ARTIFACT,
                python_model=str(entry),
                artifacts={"keras_model": str(model_path), "settings": str(settings_path)},
                code_paths=[str(code)],
                signature=serving_signature(),
                input_example=example,
                pip_requirements=serving_requirements(),
                registered_model_name=registered_name,
            )
    return LoggedModel(info.model_id, info.model_uri, str(info.registered_model_version))
