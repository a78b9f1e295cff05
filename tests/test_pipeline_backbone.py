"""End to end with a Keras Applications backbone: the real `dvc repro` in a copy of the repo
with `train.model.architecture: mobilenetv3small` (random weights, 32 px, both fine-tuning
phases), then evaluate's Grad-CAM and served model, predict, `mlflow models serve` over HTTP, and
promote on what it made. Ensembles of backbones are test_backbones.py's, to keep this short.
Kaggle is replaced only at the kagglehub call."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import urllib.request

import keras
import mlflow
import pandas as pd
import pytest

from pneumonia.contracts.metrics_report import read_headline
from pneumonia.inference.loading import load_classifier
from pneumonia.inference.serving import INPUT_COLUMN
from pneumonia.model.network import ensemble_members

from helpers import (
    pipeline_project,
    run_command,
    served_model,
)

pytestmark = pytest.mark.slow
ARCHITECTURE = "mobilenetv3small"


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    base = tmp_path_factory.mktemp("e2e-backbone")

    def configure(params):
        params["preprocess"]["image"]["size"] = 32
        params["preprocess"]["workers"] = 2
        train = params["train"]
        train.update(epochs=1, batch_size=8, ensemble=1)
        train["weight_averaging"].update(method="none")  # swa is for the CNN only
        train["model"].update(architecture=ARCHITECTURE, weights="none")
        train["fine_tuning"].update(warmup_epochs=1, unfreeze="all")
        train["tuning"].update(n_trials=0)

    repo, env = pipeline_project(base, configure)
    run_command(["dvc", "repro"], repo, env)
    return {"repo": repo, "env": env, "base": base}


def test_repro_trains_and_evaluates_a_backbone(pipeline):
    repo = pipeline["repo"]
    card = json.loads((repo / "models" / "model.json").read_text())
    assert card["weights"] == {
        "architecture": ARCHITECTURE,
        "setting": "none",
        "file": None,
        "sha256": None,
    }
    chosen = card["hyperparameters"]
    assert chosen["model.architecture"] == ARCHITECTURE and "model.depth" not in chosen
    assert chosen["fine_tuning.warmup_epochs"] == 1
    # A warm-up epoch and a fine-tuning epoch, numbered on.
    members = pd.read_csv(repo / "reports" / "train" / "members.csv")
    assert members["epochs_run"].tolist() == [2]
    history = pd.read_csv(repo / "reports" / "train" / "history.csv")
    assert history["epoch"].tolist() == [1, 2]
    model = keras.saving.load_model(repo / "models" / "model.keras", safe_mode=True)
    assert ensemble_members(model) == [model]
    assert any(layer.name.startswith(ARCHITECTURE) for layer in model.layers)
    # The acquisition-shift check and evaluate (Grad-CAM panels included) ran on it.
    shift = pd.read_csv(repo / "reports" / "train" / "val_shift.csv")
    assert shift["roc_auc"].between(0, 1).all()
    headline = read_headline(repo / "reports" / "metrics.json")
    assert 0 <= headline["roc_auc"] <= 1
    panels = list((repo / "reports" / "evaluate").rglob("*.png"))
    assert any("positive" in path.name or "negative" in path.name for path in panels), panels


def test_predict_serve_and_promote_a_backbone(pipeline):
    repo, env = pipeline["repo"], pipeline["env"]
    command = ["pneumonia", "predict", "data/raw/images/test", "--format", "csv"]
    result = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    rows = pd.read_csv(io.StringIO(result.stdout))
    rows["path"] = rows["path"].str.removeprefix("data/raw/images/")
    evaluated = pd.read_csv(repo / "reports" / "tables" / "predictions.csv")
    merged = evaluated.merge(rows, on="path", suffixes=("_evaluate", "_predict"))
    assert len(merged) == len(evaluated)
    # predict's `score` is the network output evaluate's table calls `probability`.
    assert (merged["score"] - merged["probability"]).abs().max() < 2e-6

    # The served pyfunc from the registry, in this process and over HTTP.
    uri = f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    served = "models:/pneumonia-classifier@candidate"
    classifier = load_classifier(served)
    image = repo / "data" / "raw" / "images" / merged["path"].iloc[0]
    expected = merged["score"].iloc[0]
    payload = {
        "dataframe_split": {
            "columns": [INPUT_COLUMN],
            "data": [[base64.b64encode(image.read_bytes()).decode("ascii")]],
        }
    }
    server_env = {**env, "MLFLOW_TRACKING_URI": uri}
    with served_model(served, server_env, pipeline["base"] / "server.log") as url:
        request = urllib.request.Request(
            f"{url}/invocations", json.dumps(payload).encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.loads(response.read())["predictions"][0]
    assert answer["error"] is None
    assert answer["score"] == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert answer["threshold"] == pytest.approx(classifier.threshold)

    promoted = run_command(["pneumonia", "promote"], repo, env)
    assert promoted.stdout.startswith("promoted: pneumonia-classifier v1 (@candidate)")
