"""End to end with DICOM: the real `dvc repro` in a copy of the repo on a local source in the
Kaggle layout whose test split and part of train are DICOM files (real X-rays from ../shared
where present, written as MONOCHROME2, MONOCHROME1 16-bit and RGB DICOM) carrying patient data,
plus a CT file the download stage must refuse. Then `pneumonia predict` on the DICOM files,
`mlflow models serve` answering DICOM bytes, `pneumonia export` and onnxruntime on the export,
the docs' onnxruntime example, and a search of every output, log and the MLflow store for the
patient data."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import onnxruntime
import pandas as pd
import pytest
from PIL import Image

from pneumonia.imaging.decode import load_grayscale
from pneumonia.imaging.transforms import config_from_settings, preprocess_file
from pneumonia.inference.serving import INPUT_COLUMN

from helpers import PATIENT_FILES, build_kaggle_tree, pipeline_project, run_command, served_model
from helpers.dicom_files import PHI_STRINGS, dicom_from_grey, dicom_from_rgb, write_dicom
from helpers.images import sample_shared_images
from helpers.paths import PROJECT_ROOT

pytestmark = pytest.mark.slow
KINDS = ("monochrome2", "monochrome1", "rgb")
CT_FILE = "train/NORMAL/IM-0999-0001.dcm"


def as_dicom(image: Path, kind: str) -> Path:
    """The image replaced by a DICOM of it (same stem, .dcm) of the given kind."""
    target = image.with_suffix(".dcm")
    if kind == "rgb":
        dicom_from_rgb(target, np.asarray(Image.open(image).convert("RGB")))
    else:
        dicom_from_grey(target, np.asarray(load_grayscale(image)), kind)
    image.unlink()
    return target


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    base = tmp_path_factory.mktemp("e2e-dicom")
    source = build_kaggle_tree(base / "source" / "chest_xray", sample_shared_images())
    converted = 0
    for (split, label), names in PATIENT_FILES.items():
        for position, name in enumerate(names):
            # Every test image, every other train and val image.
            if split == "test" or position % 2 == 0:
                as_dicom(source / split / label / name, KINDS[converted % len(KINDS)])
                converted += 1
    write_dicom(source / CT_FILE, np.full((64, 64), 40, np.uint8), modality="CT")

    def configure(params):
        params["download"]["source"] = str(source)
        params["preprocess"]["image"]["size"] = 32
        params["preprocess"]["workers"] = 2
        train = params["train"]
        train.update(epochs=1, batch_size=8, ensemble=2)
        train["weight_averaging"].update(swa_epochs=1)
        train["model"].update(depth=2, base_filters=4)
        train["tuning"].update(n_trials=0)

    repo, env = pipeline_project(base, configure)
    repro = run_command(["dvc", "repro"], repo, env)
    return {"repo": repo, "env": env, "base": base, "logs": [repro.stdout, repro.stderr]}


def test_the_stages_read_dicom_and_refuse_the_ct(pipeline):
    repo = pipeline["repo"]
    quality = json.loads((repo / "reports" / "data_quality.json").read_text())
    reasons = {entry["path"]: entry["reason"] for entry in quality["bad_files"]}
    assert reasons == {CT_FILE: "modality CT is not a radiograph; only CR, DX, DR are read"}
    manifest = pd.read_csv(repo / "data" / "raw" / "manifest.csv")
    assert manifest["path"].str.endswith(".dcm").sum() >= 6
    assert (manifest[manifest["path"].str.endswith(".dcm")]["mode"] == "DICOM").all()


def test_predict_serve_export_and_onnxruntime_agree_on_dicom(pipeline):
    repo, env, logs = pipeline["repo"], pipeline["env"], pipeline["logs"]
    command = ["pneumonia", "predict", "data/raw/images/test", "--format", "csv"]
    result = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    logs += [result.stdout, result.stderr]
    rows = pd.read_csv(io.StringIO(result.stdout))
    assert rows["path"].str.endswith(".dcm").all() and len(rows) == 6
    assert set(rows["modality"]) == {"DX"} and set(rows["view"]) == {"PA"}
    rows["path"] = rows["path"].str.removeprefix("data/raw/images/")
    evaluated = pd.read_csv(repo / "reports" / "tables" / "predictions.csv")
    merged = evaluated.merge(rows, on="path", suffixes=("_evaluate", "_predict"))
    assert len(merged) == len(evaluated) == 6
    assert (merged["score"] - merged["probability"]).abs().max() < 2e-6

    # The served model takes DICOM bytes in the same field as JPEG and PNG, over HTTP.
    first = repo / "data" / "raw" / "images" / merged["path"].iloc[0]
    payload = {
        "dataframe_split": {
            "columns": [INPUT_COLUMN],
            "data": [[base64.b64encode(first.read_bytes()).decode("ascii")]],
        }
    }
    uri = f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}"
    server_log = pipeline["base"] / "server.log"
    served = "models:/pneumonia-classifier@candidate"
    with served_model(served, {**env, "MLFLOW_TRACKING_URI": uri}, server_log) as url:
        request = urllib.request.Request(
            f"{url}/invocations", json.dumps(payload).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.loads(response.read())["predictions"][0]
    assert answer["error"] is None and (answer["modality"], answer["view"]) == ("DX", "PA")
    assert answer["score"] == pytest.approx(merged["score"].iloc[0], rel=1e-5, abs=1e-6)
    logs.append(server_log.read_text())

    # The export, scored by onnxruntime on the DICOM files as the pipeline preprocesses them.
    export = pipeline["base"] / "exported"
    exported = run_command(
        ["pneumonia", "export", "--format", "onnx", "--out", str(export)], repo, env
    )
    logs += [exported.stdout, exported.stderr]
    assert "input   image: uint8 (N, 32, 32, 1)" in exported.stdout
    spec = json.loads((export / "input_spec.json").read_text())
    settings = config_from_settings(spec["image_spec"], "input_spec.json")
    paths = [repo / "data" / "raw" / "images" / path for path in merged["path"]]
    inputs = np.stack([preprocess_file(path, settings) for path in paths])[..., None]
    session = onnxruntime.InferenceSession(
        str(export / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    scores = session.run(["score"], {"image": inputs})[0][:, 0]
    np.testing.assert_allclose(scores, merged["score"], atol=1e-5)
    assert spec["output"]["threshold"] == pytest.approx(merged["threshold"].iloc[0])

    # The docs' onnxruntime example runs as written, from the export folder.
    document = (PROJECT_ROOT / "docs" / "using-the-model.md").read_text()
    example = re.search(r"<!-- onnxruntime-example -->\n```python\n(.*?)```", document, re.S)
    ran = subprocess.run(
        [sys.executable, "-c", example.group(1)], cwd=export, capture_output=True, text=True
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.count("NORMAL") + ran.stdout.count("PNEUMONIA") == 8

    # Evaluate logged both formats of the model it evaluated.
    mlflow.set_tracking_uri(uri)
    evaluate = mlflow.search_runs(
        experiment_names=["pneumonia"], filter_string="tags.stage = 'evaluate'"
    )
    run_id = evaluate["run_id"].iloc[0]
    logged = {
        entry.path
        for folder in ("export/onnx", "export/savedmodel/savedmodel/1")
        for entry in mlflow.MlflowClient().list_artifacts(run_id, folder)
    }
    assert {"export/onnx/model.onnx", "export/onnx/input_spec.json"} <= logged
    assert "export/savedmodel/savedmodel/1/saved_model.pb" in logged

    # No patient data anywhere: outputs, logs, reports, models and the MLflow store.
    searched = [text.encode() for text in logs]
    for folder in ("reports", "models", "mlruns"):
        searched += [path.read_bytes() for path in (repo / folder).rglob("*") if path.is_file()]
    searched += [(repo / "dvc.lock").read_bytes()]
    searched += [path.read_bytes() for path in export.rglob("*") if path.is_file()]
    for secret in PHI_STRINGS:
        leaks = [index for index, data in enumerate(searched) if secret.encode() in data]
        assert not leaks, f"{secret!r} found in {len(leaks)} outputs"
