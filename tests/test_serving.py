"""The served model: logged and registered into a real (temporary) MLflow store, loaded back by
URI, loaded in a fresh process from its own copy of the code, and served over real HTTP by
`mlflow models serve`."""

import base64
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest

from pneumonia.cli import main
from pneumonia.config import DEFAULT_MAX_PIXELS
from pneumonia.contracts.files import file_sha256
from pneumonia.contracts.operating_point import OperatingPointError
from pneumonia.contracts.registry_tags import OperatingPointTags
from pneumonia.contracts.site_reference import SiteReferenceError, read_site_reference
from pneumonia.inference.classifier import Prediction, PredictionError
from pneumonia.inference.loading import load_classifier, load_model_file
from pneumonia.inference.prediction import predict_paths
from pneumonia.inference.serving import (
    INPUT_COLUMN,
    guard_scoring_server_json,
    image_file_bytes,
    log_serving_model,
    serving_frame,
    tensor_padding,
)
from pneumonia.registry import LoggedModel, tag_version
from pneumonia.site.points import store_site_point

from helpers import (
    TINY_PREPROCESS,
    blank_sixteen_bit_png,
    chest_like_pixels,
    image_bytes,
    mlflow_store,
    served_model,
)
from helpers.site_inputs import (
    tiny_site_point,
    write_chart_png,
    write_photo_jpeg,
    write_tiny_site_reference,
)

KERAS_NAME, SERVING_NAME, ALIAS = "pneumonia-cnn", "pneumonia-classifier", "candidate"
SERVED_URI = f"models:/{SERVING_NAME}@{ALIAS}"
# The served model's byte limit (its settings.json); the pixel limit keeps its default.
SERVED_MAX_FILE_BYTES = 1_000_000
# What the served version's answers name as their operating point (evaluate's OperatingPoint.name).
SERVED_POINT = "val (youden)"
OUTPUT_COLUMNS = [
    "score",
    "label",
    "threshold",
    "operating_point",
    "ood_score",
    "flag",
    "modality",
    "view",
    "error",
]


@pytest.fixture(scope="module")
def logged_models(tiny_model, tmp_path_factory):
    """What train and evaluate leave in the registry, for the tiny model: the Keras flavor with
    its model card (train run) and the served pyfunc (evaluate run), both tagged and @candidate.
    One store for the module: logging a model costs seconds."""
    store = tmp_path_factory.mktemp("mlflow-store")
    threshold = tiny_model["threshold"]
    # The model's site reference, as evaluate writes it beside the model file.
    reference = write_tiny_site_reference(
        tiny_model["model_path"], store / "site_reference.npz", threshold
    )
    tags = OperatingPointTags(threshold=threshold, val_roc_auc=0.9, val_sensitivity=0.8).tags()
    # Module-scoped, so set up outside any test's isolated_mlflow: the block keeps MLflow
    # pointed at this store only while it logs.
    with mlflow_store(f"sqlite:///{store / 'mlflow.db'}") as uri:
        experiment = mlflow.create_experiment(
            "pneumonia", artifact_location=(store / "artifacts").as_uri()
        )
        model = keras.saving.load_model(tiny_model["model_path"], compile=False)
        with mlflow.start_run(experiment_id=experiment, run_name="train") as train:
            # As train logs it, less the signature and requirements inference (seconds of a
            # subprocess); the end-to-end test covers train's own logging.
            info = mlflow.keras.log_model(
                model, name="model", registered_model_name=KERAS_NAME, pip_requirements=["keras"]
            )
            keras_model = LoggedModel(
                info.model_id, info.model_uri, str(info.registered_model_version)
            )
            mlflow.log_artifact(str(tiny_model["folder"] / "model.json"))
        tag_version(KERAS_NAME, keras_model.version, ALIAS, tags)
        with mlflow.start_run(experiment_id=experiment, run_name="evaluate"):
            served = log_serving_model(
                tiny_model["model_path"],
                threshold,
                TINY_PREPROCESS,
                SERVING_NAME,
                source={"registered_model": KERAS_NAME, "version": keras_model.version},
                example_image=tiny_model["images"][0].read_bytes(),
                limits={"max_file_bytes": SERVED_MAX_FILE_BYTES},
                operating_point=SERVED_POINT,
                site_reference=reference,
            )
        tag_version(SERVING_NAME, served.version, ALIAS, tags)
        # The model file scored here, with the reference the served model carries.
        local = replace(
            load_model_file(tiny_model["model_path"]),
            operating_point=SERVED_POINT,
            reference=read_site_reference(reference, tiny_model["model_path"]),
        )
        return {
            "uri": uri,
            "train_run_id": train.info.run_id,
            "keras": keras_model,
            "served": served,
            "reference": reference,
            "local": list(predict_paths(local, tiny_model["images"])),
        }


@pytest.fixture
def registry(logged_models, monkeypatch):
    """logged_models, with this test's MLflow pointed at their store."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", logged_models["uri"])
    return logged_models


def frame_of(*blobs) -> pd.DataFrame:
    return pd.DataFrame({INPUT_COLUMN: list(blobs)})


def test_served_model_answers_image_bytes_and_flags_undecodable_rows(tiny_model, registry):
    served = mlflow.pyfunc.load_model(SERVED_URI)
    assert served.metadata.get_input_schema().input_types()[0].name == "binary"
    files = tiny_model["images"][:3]
    answer = served.predict(frame_of(*(path.read_bytes() for path in files), b"\x89PNG broken"))
    assert list(answer.columns) == OUTPUT_COLUMNS
    local = registry["local"][:3]
    np.testing.assert_allclose(
        answer["score"][:3].astype(float), [p.score for p in local], rtol=1e-5
    )
    assert answer["label"][:3].tolist() == [p.label for p in local]
    assert (answer["threshold"] == tiny_model["threshold"]).all()
    assert (answer["operating_point"] == SERVED_POINT).all()
    # The out-of-distribution scores against the reference logged beside the settings.
    np.testing.assert_allclose(
        answer["ood_score"][:3].astype(float), [p.ood_score for p in local], rtol=1e-4
    )
    assert answer["flag"][:3].tolist() == [p.flag for p in local]
    assert answer["error"][:3].isna().all()
    assert answer["score"][3] is None and answer["label"][3] is None
    assert answer["ood_score"][3] is None and answer["flag"][3] is None
    assert answer["operating_point"][3] == SERVED_POINT
    assert answer["error"][3].startswith("row 3: ")


def test_served_model_flags_a_chart_screenshot_and_a_photo(tiny_model, registry, tmp_path):
    served = mlflow.pyfunc.load_model(SERVED_URI)
    chart = write_chart_png(tmp_path / "chart.png").read_bytes()
    photo = write_photo_jpeg(tmp_path / "photo.jpeg").read_bytes()
    answer = served.predict(frame_of(chart, photo))
    assert answer["error"].isna().all()
    assert answer["flag"].tolist() == ["out-of-distribution"] * 2
    assert (answer["ood_score"] > 1).all()
    assert answer["label"].isin(["NORMAL", "PNEUMONIA"]).all()  # flagged, and still called


def test_a_reference_of_another_model_file_is_not_logged(tiny_model, tmp_path):
    other = tmp_path / "other.keras"
    keras.saving.load_model(tiny_model["model_path"]).save(other)  # same weights, other bytes
    reference = write_tiny_site_reference(other, tmp_path / "site_reference.npz", 0.5)
    with mlflow.start_run(), pytest.raises(SiteReferenceError, match="was written for a model"):
        log_serving_model(
            tiny_model["model_path"],
            0.5,
            TINY_PREPROCESS,
            SERVING_NAME,
            source={"registered_model": KERAS_NAME, "version": "1"},
            site_reference=reference,
        )


def test_served_model_answers_refused_images_with_error_rows(tiny_model, registry):
    """Formats other than JPEG and PNG, bytes over the limit logged in settings.json, pixels
    over the limit (from the header) and images that cannot be a chest X-ray: one error row
    each, and the good image of the same request is still scored."""
    served = mlflow.pyfunc.load_model(SERVED_URI)
    preprocess = served.unwrap_python_model().classifier.preprocess
    assert preprocess.limits.max_file_bytes == SERVED_MAX_FILE_BYTES
    assert preprocess.limits.max_pixels == DEFAULT_MAX_PIXELS
    pixels = chest_like_pixels(0, 64, 64)
    refused = {
        **{name: image_bytes(pixels, name) for name in ("BMP", "GIF", "TIFF", "EPS")},
        "not a chest X-ray: 1x1": image_bytes(np.full((1, 1), 128, np.uint8), "PNG"),
        "not a chest X-ray: nearly constant": image_bytes(np.zeros((480, 640), np.uint8), "PNG"),
        "1,000,001 bytes is over preprocess.limits.max_file_bytes (1,000,000)": bytes(1_000_001),
        "13000x13000 is 169,000,000 pixels": blank_sixteen_bit_png(13000, 13000),
    }
    good = tiny_model["images"][0].read_bytes()
    answer = served.predict(frame_of(good, *refused.values()))
    assert answer["error"][0] is None
    assert answer["score"][0] == pytest.approx(registry["local"][0].score, rel=1e-5)
    for row, reason in enumerate(refused, start=1):
        error = answer["error"][row]
        if reason in ("BMP", "GIF", "TIFF", "EPS"):
            reason = f"unsupported format {reason}; only JPEG, PNG and DICOM are accepted"
        assert error.startswith(f"row {row}: {reason}"), error
        assert answer["score"][row] is None and answer["label"][row] is None


def test_predict_loads_the_served_and_the_keras_model_from_the_registry(tiny_model, registry):
    expected = [prediction.score for prediction in registry["local"]]
    for uri in (
        SERVED_URI,
        f"models:/{KERAS_NAME}/{registry['keras'].version}",
        f"models:/{KERAS_NAME}@{ALIAS}",
        registry["keras"].model_uri,  # models:/<model id>: threshold from the run's version
    ):
        classifier = load_classifier(uri)
        assert classifier.threshold == pytest.approx(tiny_model["threshold"]), uri
        assert classifier.preprocess.image.size == TINY_PREPROCESS["image_size"]
        predictions = list(predict_paths(classifier, tiny_model["images"]))
        scores = [prediction.score for prediction in predictions]
        np.testing.assert_allclose(scores, expected, rtol=1e-5, err_msg=uri)
        # The served pyfunc carries its reference; the Keras flavor (logged by train) has none.
        has_reference = uri == SERVED_URI
        assert (classifier.reference is not None) == has_reference, uri
        assert all((p.ood_score is not None) == has_reference for p in predictions), uri
    # The operating point each names: the served settings', the Keras version's rule tag (none).
    assert load_classifier(SERVED_URI).operating_point == SERVED_POINT
    assert load_classifier(f"models:/{KERAS_NAME}@{ALIAS}").operating_point == "val"
    overridden = load_classifier(SERVED_URI, threshold=0.2)
    assert overridden.threshold == 0.2 and overridden.operating_point == "--threshold override"
    with pytest.raises(PredictionError, match="models:/no-such-model/1: cannot load"):
        load_classifier("models:/no-such-model/1")


def test_a_site_point_applies_to_the_registered_models_of_its_model_file(
    tiny_model, registry, tmp_path
):
    """`--site` with a registry URI: the site points stored in the project's paths.models; the
    served pyfunc is matched by the sha256 of the file it wraps, the Keras flavor (a re-saved
    copy) by its model id."""
    models = tmp_path / "models"
    keras_uri = f"models:/{KERAS_NAME}@{ALIAS}"
    own = tiny_site_point(tiny_model["model_path"], 0.9, model_id=registry["keras"].model_id)
    point, _ = store_site_point(models, own)
    for uri in (SERVED_URI, keras_uri):
        classifier = load_classifier(uri, site="st-marys", models_folder=models)
        assert classifier.threshold == point.threshold, uri
        assert classifier.operating_point == "site st-marys v1", uri
    assert load_classifier(SERVED_URI, site="st-marys", models_folder=models).reference
    with pytest.raises(PredictionError, match=r"paths\.models/sites of the project's params"):
        load_classifier(SERVED_URI, site="st-marys")
    other = tiny_site_point(
        tiny_model["model_path"], 0.9, site="elsewhere", model_id="m-other", sha256="ab" * 32
    )
    _, other_path = store_site_point(models, other)
    sha256 = file_sha256(tiny_model["model_path"])
    with pytest.raises(OperatingPointError) as refused:
        load_classifier(SERVED_URI, site="elsewhere", models_folder=models)
    assert str(refused.value).startswith(
        f"site point {other_path} was chosen for a model file with sha256 ababababab"
    )
    assert f"{SERVED_URI} has sha256 {sha256[:12]}..." in str(refused.value)
    with pytest.raises(OperatingPointError) as refused:
        load_classifier(keras_uri, site="elsewhere", models_folder=models)
    assert "was chosen for model id m-other" in str(refused.value)
    assert f"is model id {registry['keras'].model_id}" in str(refused.value)


def test_cli_predicts_with_a_registry_uri(tiny_model, registry, capsys):
    main(["predict", str(tiny_model["images"][1]), "--model", SERVED_URI])  # exit 0: returns
    out, err = capsys.readouterr()
    assert f"model {SERVED_URI}" in err
    row = json.loads(out)
    assert row["score"] == pytest.approx(registry["local"][1].score, rel=1e-5)
    assert row["operating_point"] == SERVED_POINT
    assert row["ood_score"] == pytest.approx(registry["local"][1].ood_score, rel=1e-4)


def test_failed_rows_serialise_as_null_not_nan(registry):
    frame = serving_frame(registry["local"][:1])
    assert frame["score"].dtype == np.float64 and frame["ood_score"].dtype == np.float64
    failed = Prediction("row 1", None, None, 0.5, "val", error="row 1: not an image")
    # A model without a site reference: scored, with no out-of-distribution score.
    unreferenced = Prediction("row 2", 0.7, "PNEUMONIA", 0.5, "val")
    predictions = [*registry["local"][:1], failed, unreferenced]
    records = serving_frame(predictions).to_dict(orient="records")
    assert records[1] == {
        "score": None,
        "label": None,
        "threshold": 0.5,
        "operating_point": "val",
        "ood_score": None,
        "flag": None,
        "modality": None,
        "view": None,
        "error": "row 1: not an image",
    }
    assert records[2]["ood_score"] is None and records[2]["score"] == 0.7
    assert records[0]["error"] is None
    json.dumps(records, allow_nan=False)


def test_image_file_bytes_decodes_base64_text_and_leaves_files_alone(tiny_model):
    for path in tiny_model["images"][:2]:  # a JPEG and a PNG
        data = path.read_bytes()
        assert image_file_bytes(data) is data
        text = base64.b64encode(data)
        assert image_file_bytes(text) == data
        assert image_file_bytes(base64.encodebytes(data)) == data  # MIME line breaks
        assert image_file_bytes(b"{'b64': '" + text + b"'}") == data  # a TF Serving object
    for value in (b"", b"plain text", b"abc", b"{'b64': 'abc'}", b"\x00\x01binary"):
        assert image_file_bytes(value) == value  # answered as not an image


def tensor_format_payloads(text: str) -> dict[str, dict]:
    """MLflow's `instances` and `inputs` formats for one base64 image."""
    return {
        "instances records": {"instances": [{INPUT_COLUMN: text}]},
        "instances values": {"instances": [text]},
        "inputs columns": {"inputs": {INPUT_COLUMN: [text]}},
        "inputs values": {"inputs": [text]},
        "instances b64 object": {"instances": [{INPUT_COLUMN: {"b64": text}}]},
        "inputs b64 object": {"inputs": {INPUT_COLUMN: [{"b64": text}]}},
    }


# Bodies the scoring server's JSON parser cannot read: deeper than Python's recursion limit, and
# an integer over its 4,300-digit limit.
UNREADABLE_BODIES = {
    "nested too deeply": b"[" * 100_000 + b"]" * 100_000,
    "Exceeds the limit (4300 digits)": b'{"inputs": [' + b"1" * 100_000 + b"]}",
}


def test_the_scoring_server_answers_every_format_and_refuses_unreadable_json(tiny_model, registry):
    """MLflow's own request handling (scoring_server.invocations, what /invocations runs), in
    this process: the tensor formats are decoded like the dataframe ones, and a body its JSON
    parser cannot read is a 400 with one line."""
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server

    served = mlflow.pyfunc.load_model(SERVED_URI)  # load_context puts the guard in place
    assert guard_scoring_server_json()
    schema = served.metadata.get_input_schema()
    expected = registry["local"][1].score
    text = encoded(tiny_model["images"][1].read_bytes())
    for name, payload in tensor_format_payloads(text).items():
        answer = scoring_server.invocations(
            json.dumps(payload).encode(), "application/json", served, schema
        )
        assert answer.status == 200, (name, answer.response)
        (row,) = strict_json(answer.response)["predictions"]
        assert row["error"] is None, (name, row)
        assert row["score"] == pytest.approx(expected, rel=1e-5), name
    for reason, body in UNREADABLE_BODIES.items():
        with pytest.raises(MlflowException) as raised:
            scoring_server.invocations(body, "application/json", served, schema)
        assert raised.value.get_http_status_code() == 400
        assert raised.value.message.startswith("the request body is refused: ")
        assert reason in raised.value.message and len(raised.value.message) < 300


def test_tensor_padding_counts_what_mlflow_would_pad_to_the_longest_row():
    big, small = "A" * 1000, "B" * 10
    assert tensor_padding({"instances": [big, small, small]}) == (3000, 1020)
    assert tensor_padding({"instances": [{INPUT_COLUMN: big}, {INPUT_COLUMN: small}]}) == (
        2000,
        1010,
    )
    assert tensor_padding({"inputs": {INPUT_COLUMN: [small, small]}}) == (20, 20)
    b64_object = {"b64": small}
    assert tensor_padding({"inputs": [b64_object]}) == (len(str(b64_object)),) * 2
    # The dataframe formats are not padded.
    assert tensor_padding({"dataframe_split": {"data": [[big], [small]]}}) == (0, 0)


def test_a_body_that_mlflow_would_pad_past_the_bound_is_refused(tiny_model, registry):
    """One large image among many small ones, in the instances format: MLflow's bytes array
    would hold rows x the longest; refused with a 400 before it is built."""
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server

    from pneumonia.inference import serving

    served = mlflow.pyfunc.load_model(SERVED_URI)
    schema = served.metadata.get_input_schema()
    rows = ["A" * 2_000_000, *(["QUJD"] * 200)]  # 2 MB of text padded to 402 MB
    with pytest.raises(MlflowException) as raised:
        scoring_server.invocations(
            json.dumps({"instances": rows}).encode(), "application/json", served, schema
        )
    assert raised.value.get_http_status_code() == 400
    assert "pads every image to the longest" in raised.value.message
    assert serving.MAX_PADDED_BYTES < 402_000_000


def served_environment(registry) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = registry["uri"]
    # `mlflow models serve` starts `uvicorn` by name: the one of this environment.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.mark.slow
def test_served_model_runs_its_own_copy_of_the_code(tiny_model, registry, tmp_path):
    """Loaded in a fresh process, the model imports the package from its folder (code_paths),
    not from wherever `pneumonia` happens to be installed."""
    script = (
        "import sys, mlflow, pandas as pd\n"
        f"model = mlflow.pyfunc.load_model({SERVED_URI!r})\n"
        "import pneumonia.inference.serving\n"
        "print(pneumonia.inference.serving.__file__)\n"
        f"image = open({str(tiny_model['images'][1])!r}, 'rb').read()\n"
        "print(model.predict(pd.DataFrame({'image': [image]}))['score'][0])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=served_environment(registry),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    module_file, score = result.stdout.split()[-2:]
    model_folder = Path(mlflow.artifacts.download_artifacts(registry["served"].model_uri))
    copied = model_folder / "code" / "pneumonia" / "inference" / "serving.py"
    assert Path(module_file).resolve() == copied.resolve()
    assert float(score) == pytest.approx(registry["local"][1].score, rel=1e-5)


def post(url: str, payload: dict) -> tuple[int, str]:
    request = urllib.request.Request(
        url, json.dumps(payload).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.fixture
def server(registry, tmp_path):
    """`mlflow models serve` of the registry alias on a free loopback port; always stopped."""
    with served_model(SERVED_URI, served_environment(registry), tmp_path / "server.log") as url:
        yield url


def encoded(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.slow
def test_served_over_http_answers_like_the_local_model(tiny_model, registry, server):
    images = [path.read_bytes() for path in tiny_model["images"][:2]]
    payload = {
        "dataframe_split": {
            "columns": [INPUT_COLUMN],
            "data": [[encoded(images[0])], [encoded(b"plain text")], [encoded(images[1])]],
        }
    }
    status, body = post(f"{server}/invocations", payload)
    assert status == 200, body
    answers = strict_json(body)["predictions"]
    local = registry["local"]
    for answer, expected in zip([answers[0], answers[2]], local[:2], strict=True):
        assert answer["score"] == pytest.approx(expected.score, rel=1e-5)
        assert answer["label"] == expected.label
        assert answer["threshold"] == pytest.approx(tiny_model["threshold"])
        assert answer["error"] is None
        assert answer["operating_point"] == SERVED_POINT
        assert answer["ood_score"] == pytest.approx(expected.ood_score, rel=1e-4)
        called = answer["score"] >= answer["threshold"]
        assert answer["label"] == ("PNEUMONIA" if called else "NORMAL")
    assert answers[1]["score"] is None and answers[1]["label"] is None
    assert answers[1]["error"] == "row 1: not an image (neither JPEG, PNG nor DICOM)"

    records = {"dataframe_records": [{INPUT_COLUMN: encoded(images[1])}]}
    status, body = post(f"{server}/invocations", records)
    assert status == 200, body
    assert strict_json(body)["predictions"][0]["score"] == pytest.approx(local[1].score, rel=1e-5)
    # BMP and EPS bytes over HTTP: error rows, and Pillow's EPS plugin (Ghostscript) is never
    # reached.
    pixels = chest_like_pixels(7, 64, 64)
    refused = {
        "dataframe_split": {
            "columns": [INPUT_COLUMN],
            "data": [[encoded(image_bytes(pixels, kind))] for kind in ("BMP", "EPS")],
        }
    }
    status, body = post(f"{server}/invocations", refused)
    assert status == 200, body
    errors = [answer["error"] for answer in strict_json(body)["predictions"]]
    assert errors[0] == "row 0: unsupported format BMP; only JPEG, PNG and DICOM are accepted", (
        errors
    )
    assert errors[1].startswith("row 1: ") and "EPS" in errors[1], errors
    # Text that is not base64 never reaches the model: the scoring server answers 400.
    status, body = post(f"{server}/invocations", {"dataframe_records": [{INPUT_COLUMN: "abc"}]})
    assert status == 400 and "image" in body


@pytest.mark.slow
def test_served_over_http_decodes_tensor_formats_and_refuses_unreadable_json(
    tiny_model, registry, server
):
    text = encoded(tiny_model["images"][1].read_bytes())
    expected = registry["local"][1].score
    for name, payload in tensor_format_payloads(text).items():
        status, body = post(f"{server}/invocations", payload)
        assert status == 200, (name, body)
        (row,) = strict_json(body)["predictions"]
        assert row["error"] is None, (name, row)
        assert row["score"] == pytest.approx(expected, rel=1e-5), name
    # Text that is not base64, in a tensor format: an error row, the other image answered.
    status, body = post(f"{server}/invocations", {"inputs": {INPUT_COLUMN: ["abc!", text]}})
    assert status == 200, body
    rows = strict_json(body)["predictions"]
    assert rows[0]["error"] == "row 0: not an image (neither JPEG, PNG nor DICOM)"
    assert rows[1]["score"] == pytest.approx(expected, rel=1e-5)
    for reason, data in UNREADABLE_BODIES.items():
        request = urllib.request.Request(
            f"{server}/invocations", data, {"Content-Type": "application/json"}
        )
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(request, timeout=60)
        answer = raised.value.read().decode()
        assert raised.value.code == 400, answer
        message = json.loads(answer)["message"]
        assert message.startswith("the request body is refused: ") and reason in message
    # The server is still up and answering.
    status, body = post(f"{server}/invocations", tensor_format_payloads(text)["inputs values"])
    assert status == 200, body
