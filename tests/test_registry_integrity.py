"""What evaluate records in the registry, and what predict checks there, on a real MLflow store:
an experiment that is not the workspace's re-tags nothing of the workspace's and moves none of
its aliases; the same Keras file evaluated under another threshold rule keeps each rule's
threshold; a served model whose settings.json was edited after registration is refused.

The publishing functions are called directly, in a real stage run, on a tiny trained model and
real val and test arrays (no training, no `dvc`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest

from pneumonia.config import load_config
from pneumonia.contracts import registry_tags
from pneumonia.contracts.files import file_sha256
from pneumonia.contracts.model_card import read_model_card, write_model_card
from pneumonia.evaluation.publishing import (
    describe_models,
    dvc_experiment,
    publish_evaluation,
    registered_summary,
)
from pneumonia.evaluation.report import score_and_measure
from pneumonia.inference.classifier import PredictionError
from pneumonia.inference.loading import SETTINGS_ARTIFACT, check_served_model, load_classifier
from pneumonia.promotion import PromotionError, promote
from pneumonia.registry import ModelNotInStoreError, require_logged_model
from pneumonia.tracking import stage_run

from helpers import blob_pixels, split_index, write_params
from helpers.site_inputs import write_tiny_site_reference

KERAS, SERVED = "pneumonia-cnn", "pneumonia-classifier"
OPERATING_POINT_TAGS = (
    registry_tags.THRESHOLD,
    registry_tags.THRESHOLD_RULE,
    registry_tags.VAL_ROC_AUC,
    registry_tags.VAL_SENSITIVITY,
    registry_tags.VAL_SPECIFICITY,
    registry_tags.EVALUATE_RUN_ID,
)


def split_of(count: int, seed: int) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    labels = (np.arange(count) % 2).astype(np.uint8)
    images = np.stack(
        [blob_pixels(seed * 1000 + index, bool(label)) for index, label in enumerate(labels)]
    )[..., None]
    names = [f"s{seed}-{index}.png" for index in range(count)]
    return images, labels, split_index(names, labels)


@pytest.fixture
def project(tiny_model, tmp_path):
    """A project folder holding the tiny model with a model card that names its real registered
    Keras version (as train leaves it), and val and test splits."""
    root = tmp_path / "project"
    params = write_params(root, {"evaluate.bootstrap": 100, "evaluate.gradcam_examples": 0})
    config = load_config(params)
    config.paths.models.mkdir(parents=True)
    shutil.copyfile(tiny_model["model_path"], config.paths.model)
    model = keras.saving.load_model(config.paths.model, compile=False)
    experiment = mlflow.create_experiment("pneumonia", (tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment, run_name="train") as train:
        info = mlflow.keras.log_model(
            model, name="model", registered_model_name=KERAS, pip_requirements=["keras"]
        )
    card = read_model_card(tiny_model["folder"] / "model.json").model_copy(
        update={
            "mlflow": {
                "registered_model": KERAS,
                "version": str(info.registered_model_version),
                "model_id": info.model_id,
                "run_id": train.info.run_id,
                "model_uri": info.model_uri,
            }
        }
    )
    write_model_card(config.paths.models / "model.json", card)
    # Evaluate writes the model's site reference before it publishes (the served model logs it).
    write_tiny_site_reference(config.paths.model, config.paths.site_reference, 0.5)
    # Train logs the card beside the model: predict of the Keras URI reads it there.
    mlflow.MlflowClient().log_artifact(train.info.run_id, str(config.paths.models / "model.json"))
    splits = {"val": split_of(24, 1), "test": split_of(24, 2)}
    return {"params": params, "model": model, "card": card, "splits": splits, "root": root}


def evaluate(project, monkeypatch, rule: str, environment: dict[str, str] | None = None):
    """What the evaluate stage records, under `rule` and with the DVC variables given (none:
    `dvc repro`)."""
    for name in ("DVC_EXP_NAME", "DVC_ROOT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in (environment or {}).items():
        monkeypatch.setenv(name, value)
    config = load_config(project["params"], {"evaluate.threshold": rule})
    settings = config.evaluate
    with stage_run("evaluate", config, {"evaluate": {"threshold": rule}}) as run:
        report, _ = score_and_measure(project["model"], project["splits"], settings)
        indexes = {name: split[2] for name, split in project["splits"].items()}
        example = project["splits"]["val"][0][0]
        point = publish_evaluation(
            run, settings, config.paths, project["card"], report, indexes, example
        )
        describe_models(settings, point, f"card of the {rule} evaluation")
    return point, report


def tags_of(name: str, version: str) -> dict[str, str]:
    return dict(mlflow.MlflowClient().get_model_version(name, version).tags)


def alias_version(name: str, alias: str) -> str:
    return str(mlflow.MlflowClient().get_model_version_by_alias(name, alias).version)


def test_experiments_leave_the_workspace_registry_alone_and_each_rule_keeps_its_threshold(
    project, monkeypatch
):
    client = mlflow.MlflowClient()
    keras_version = project["card"].registry().version

    # `dvc repro`: the Keras version and the served one are @candidate, with the operating point.
    first, _ = evaluate(project, monkeypatch, "youden")
    tags = tags_of(KERAS, keras_version)
    assert tags[registry_tags.THRESHOLD] == registry_tags.format_figure(first.threshold)
    assert tags[registry_tags.THRESHOLD_RULE] == "youden"
    assert tags["threshold.youden"] == tags[registry_tags.THRESHOLD]
    assert alias_version(KERAS, "candidate") == keras_version
    assert alias_version(SERVED, "candidate") == first.serving_model["version"]
    assert first.serving_model["alias"] == "candidate"
    assert registry_tags.DVC_EXPERIMENT not in first.serving_model
    settings = load_config(project["params"]).evaluate
    served_name = f"{SERVED} v{first.serving_model['version']}"
    summary = registered_summary(settings, first)
    assert summary == f"; {KERAS} v{keras_version} and {served_name} are @candidate"
    # The tags are the metrics the evaluate run logged under the names promote reads.
    run = client.get_run(tags[registry_tags.EVALUATE_RUN_ID])
    for tag, metric in registry_tags.LOGGED_METRIC.items():
        assert float(tags[tag]) == run.data.metrics[metric], tag
    # So promote trusts what evaluate recorded (figures, run, val set).
    assert promote(SERVED, "candidate").promoted

    # The same Keras file under another rule, in the workspace: each rule keeps its threshold,
    # and the headline tags are the workspace's latest evaluation.
    second, _ = evaluate(project, monkeypatch, "sensitivity:0.9")
    assert second.threshold != first.threshold
    tags = tags_of(KERAS, keras_version)
    assert tags["threshold.youden"] == registry_tags.format_figure(first.threshold)
    assert tags["threshold.sensitivity:0.9"] == registry_tags.format_figure(second.threshold)
    assert tags[registry_tags.THRESHOLD] == registry_tags.format_figure(second.threshold)
    assert alias_version(SERVED, "candidate") == second.serving_model["version"]
    workspace_tags = tags
    workspace_description = client.get_model_version(KERAS, keras_version).description
    assert workspace_description == "card of the sensitivity:0.9 evaluation"

    # A queued experiment (DVC runs it in a temporary copy; only DVC_EXP_NAME matters): its
    # served version is registered with its own operating point, under exp-<name>; nothing of
    # the workspace's changes.
    elsewhere = {"DVC_EXP_NAME": "queued/otter.1", "DVC_ROOT": str(project["root"] / "elsewhere")}
    queued, _ = evaluate(project, monkeypatch, "0.3", elsewhere)
    assert queued.threshold == 0.3
    assert tags_of(KERAS, keras_version) == workspace_tags
    assert client.get_model_version(KERAS, keras_version).description == workspace_description
    assert alias_version(KERAS, "candidate") == keras_version
    assert alias_version(SERVED, "candidate") == second.serving_model["version"]
    served = queued.serving_model
    assert served["alias"] == "exp-queued-otter-1" and served["dvc_experiment"] == "queued/otter.1"
    assert alias_version(SERVED, "exp-queued-otter-1") == served["version"]
    experiment_tags = tags_of(SERVED, served["version"])
    assert experiment_tags[registry_tags.THRESHOLD] == "0.3"
    assert experiment_tags[registry_tags.THRESHOLD_RULE] == "0.3"
    assert experiment_tags[registry_tags.DVC_EXPERIMENT] == "queued/otter.1"
    assert experiment_tags[registry_tags.SOURCE_MODEL_VERSION] == keras_version
    assert "left as they were" in registered_summary(
        load_config(project["params"]).evaluate, queued
    )

    # promote refuses the experiment's version, naming the experiment and both ways out; with
    # --allow-experiment it is compared with the champion as any other (--force is not enough).
    with pytest.raises(
        PromotionError,
        match=r"registered by DVC experiment 'queued/otter\.1'.*"
        r"--allow-experiment.*dvc exp apply queued/otter\.1",
    ):
        promote(SERVED, "exp-queued-otter-1", force=True)
    decision = promote(SERVED, "exp-queued-otter-1", allow_experiment=True)
    assert decision.champion == first.serving_model["version"]

    # predict of the Keras version applies the workspace's threshold, not the experiment's.
    classifier = load_classifier(f"models:/{KERAS}/{keras_version}")
    assert classifier.threshold == second.threshold
    assert classifier.operating_point == "val (sensitivity:0.9)"  # its threshold_rule tag
    queued_model = load_classifier(f"models:/{SERVED}@exp-queued-otter-1")
    assert queued_model.threshold == 0.3
    # Each served version names its operating point and carries the model's site reference.
    assert queued_model.operating_point == queued.name == "val (0.3)"
    served_model = load_classifier(f"models:/{SERVED}@candidate")
    assert served_model.operating_point == "val (sensitivity:0.9)"
    assert served_model.reference is not None and queued_model.reference is not None

    # `dvc exp run` in the workspace (DVC_ROOT is the workspace) is a throwaway experiment too:
    # it moves no workspace alias and leaves the Keras version's tags alone.
    here = {"DVC_EXP_NAME": "in-place", "DVC_ROOT": str(project["root"])}
    in_place, _ = evaluate(project, monkeypatch, "youden", here)
    assert in_place.serving_model["alias"] == "exp-in-place"
    assert alias_version(SERVED, "candidate") == second.serving_model["version"]
    assert tags_of(KERAS, keras_version) == workspace_tags
    assert tags_of(SERVED, in_place.serving_model["version"])["dvc_experiment"] == "in-place"
    # Its summary says what happened, claiming no temporary copy.
    summary = registered_summary(settings, in_place)
    assert summary.startswith(
        f"; experiment in-place: {SERVED} v{in_place.serving_model['version']} is @exp-in-place"
    )
    assert "@candidate" in summary and "left as they were" in summary
    assert "temp" not in summary and "applied" not in summary


def test_any_dvc_experiment_is_an_experiment_wherever_it_runs(tmp_path):
    assert dvc_experiment({}) is None
    assert dvc_experiment({"DVC_EXP_NAME": ""}) is None
    assert dvc_experiment({"DVC_EXP_NAME": "x", "DVC_ROOT": str(tmp_path)}) == "x"
    assert dvc_experiment({"DVC_EXP_NAME": "x", "DVC_ROOT": "/elsewhere"}) == "x"


def served_settings_file(version: str) -> Path:
    """The served model version's settings.json where the (local) artifact store keeps it."""
    client = mlflow.MlflowClient()
    # The registry's version record names its logged model by source (models:/<model id>).
    model_id = client.get_model_version(SERVED, version).source.removeprefix("models:/")
    location = mlflow.get_logged_model(model_id).artifact_location
    return Path(location.removeprefix("file://")) / SETTINGS_ARTIFACT


def test_a_served_model_whose_settings_were_edited_is_refused(project, monkeypatch, tmp_path):
    point, _ = evaluate(project, monkeypatch, "youden")
    version = point.serving_model["version"]
    uri = f"models:/{SERVED}@candidate"
    settings = served_settings_file(version)
    recorded = tags_of(SERVED, version)[registry_tags.SETTINGS_SHA256]
    assert file_sha256(settings) == recorded
    assert load_classifier(uri).threshold == point.threshold  # untouched: loads

    # The threshold edited to 0 in the artifact folder: every image would be PNEUMONIA.
    values = json.loads(settings.read_text())
    values["threshold"] = 0.0
    settings.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
    with pytest.raises(PredictionError) as refused:
        load_classifier(uri)
    message = str(refused.value)
    assert message.startswith(f"{uri}: {SERVED} v{version}: its settings.json has sha256 ")
    assert "re-register it with the evaluate stage" in message
    # A version registered before the hash was recorded: the threshold tag still catches it.
    mlflow.MlflowClient().delete_model_version_tag(SERVED, version, registry_tags.SETTINGS_SHA256)
    with pytest.raises(PredictionError, match=r"settings.json threshold is 0.0 but the registry"):
        load_classifier(f"models:/{SERVED}/{version}")
    # The served model's own load (inference.serving calls check_served_model) finds the
    # version from the model folder's MLmodel, as `mlflow models serve -m models:/...` has it.
    folder = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "copy")))
    with pytest.raises(PredictionError, match=r"settings\.json threshold is 0\.0"):
        check_served_model(folder / SETTINGS_ARTIFACT)
    # ... which MLflow's own load of the folder runs (load_context), as the server does.
    with pytest.raises(PredictionError, match=r"settings\.json threshold is 0\.0"):
        mlflow.pyfunc.load_model(str(folder))
    # --threshold does not make an edited model acceptable either: its files are not the
    # registered ones.
    with pytest.raises(PredictionError, match="changed after registration"):
        load_classifier(uri, threshold=0.5)


def test_a_card_whose_logged_model_is_not_in_the_store_is_refused_naming_the_fix(project, tmp_path):
    card_path = project["root"] / "models" / "model.json"
    model_id = project["card"].registry().model_id
    require_logged_model(model_id, card_path)  # train's store holds it
    # mlruns/ deleted, or MLFLOW_TRACKING_URI moved, since train ran: DVC sees nothing stale,
    # and MLflow would fail on a foreign key once evaluate logged against the model.
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'fresh.db'}")
    with pytest.raises(ModelNotInStoreError, match=r"dvc repro -f train") as caught:
        require_logged_model(model_id, card_path)
    said = str(caught.value)
    assert str(card_path) in said and model_id in said and "fresh.db" in said
    require_logged_model("", card_path)  # a card that names no logged model: nothing to check
