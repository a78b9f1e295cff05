"""End to end: the real `dvc repro` in a copy of the repo, on a tiny dataset in the Kaggle archive's
layout (real images from ../shared when present). Kaggle is replaced only at the kagglehub call.
Then the README's DVC commands on what it made: experiments, params and metrics diffs, a push to
a local-directory remote and pulls back.

One `dvc repro` serves the module (the `pipeline` fixture) and its tests only read it. A test that
changes the repository (commits, experiments, params, registry aliases) works on its own copy of
the reproduced one (`pipeline_copy`), so the tests pass in any order.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from pneumonia.contracts.files import file_sha256
from pneumonia.contracts.metrics_report import read_headline
from pneumonia.inference.loading import load_classifier
from pneumonia.inference.prediction import predict_paths
from pneumonia.model.network import ensemble_members
from pneumonia.model.robustness import SHIFTS

from helpers import (
    PATIENT_FILES,
    PROJECT_ROOT,
    pipeline_project,
    run_command,
)

run = run_command

pytestmark = pytest.mark.slow
STAGES = ("download", "split", "preprocess", "train", "evaluate", "site")
TRIALS = 2
IMAGES = sum(len(names) for names in PATIENT_FILES.values())


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """A repo copy with tiny params, a fake Kaggle download, and one `dvc repro` done."""
    base = tmp_path_factory.mktemp("e2e")

    def configure(params):
        assert params["download"]["source"] == "kaggle"
        params["preprocess"]["image"]["size"] = 32
        params["preprocess"]["workers"] = 2
        train = params["train"]
        train.update(epochs=2, batch_size=8, ensemble=2)  # the whole pipeline on an ensemble
        train["weight_averaging"].update(swa_epochs=2)  # the default's swa, over both epochs
        train["model"].update(depth=2, base_filters=4)
        train["tuning"].update(n_trials=TRIALS, epochs=2)
        train["tuning"]["search_space"].update(base_filters=[4, 8], batch_size=[8])

    repo, env = pipeline_project(base, configure)
    first = run(["dvc", "repro"], repo, env)
    return {"repo": repo, "env": env, "base": base, "first": first}


@pytest.fixture
def pipeline_copy(pipeline, tmp_path):
    """This test's own copy of the reproduced repository: git history, DVC cache, outputs, the
    MLflow store. Under a second to make, where a second `dvc repro` would take minutes.

    The copied MLflow store still records the original's absolute artifact paths; the first
    stage that opens it in the copy moves them to the copy's own `mlruns/artifacts`
    (tracking.relocate_copied_store), so nothing logged in the copy lands in the original."""
    repo = tmp_path / "repo"
    # symlinks=True: the image links point at the fake Kaggle download by absolute path.
    shutil.copytree(pipeline["repo"], repo, symlinks=True)
    # Its own log: a stage that reaches kagglehub in the copy must not add to the original's.
    env = {**pipeline["env"], "FAKE_KAGGLEHUB_LOG": str(tmp_path / "kaggle-calls.log")}
    return {"repo": repo, "env": env, "base": tmp_path}


def all_runs(repo: Path):
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=["pneumonia"], order_by=["start_time ASC"])


def runs_by_stage(repo: Path):
    """Top-level runs only (Optuna trials are nested under train)."""
    runs = all_runs(repo)
    if "tags.mlflow.parentRunId" not in runs:
        return runs
    return runs[runs["tags.mlflow.parentRunId"].isna()].reset_index(drop=True)


def test_repro_writes_every_output(pipeline):
    repo = pipeline["repo"]
    manifest = (repo / "data/raw/manifest.csv").read_text().splitlines()
    assert len(manifest) == IMAGES + 1  # each image once despite the nested duplicate tree
    for split in ("train", "val", "test"):
        assert (repo / f"data/split/{split}.csv").is_file()
        assert (repo / f"data/processed/{split}/images.npy").is_file()
        assert (repo / f"reports/samples/{split}.png").is_file()
    calls = (pipeline["base"] / "kaggle-calls.log").read_text().split()
    assert calls == ["paultimothymooney/chest-xray-pneumonia/versions/2"]


def test_one_mlflow_run_per_stage_with_params_metrics_and_chained_hashes(pipeline):
    runs = runs_by_stage(pipeline["repo"])
    assert runs["tags.stage"].tolist() == list(STAGES)
    # `dvc repro` outside an experiment: runs are named after the stage and the commit.
    commit = run(["git", "rev-parse", "--short=7", "HEAD"], pipeline["repo"], pipeline["env"])
    assert runs["tags.mlflow.runName"].tolist() == [
        f"{stage}@{commit.stdout.strip()}" for stage in STAGES
    ]
    assert (runs["status"] == "FINISHED").all()
    assert all(runs["tags.mlflow.note.content"].str.len() > 0)
    by_stage = {row["tags.stage"]: row for _, row in runs.iterrows()}
    download, split, preprocess, train, evaluate, site = (by_stage[name] for name in STAGES)
    assert download["params.download.source"] == "kaggle"
    assert download["metrics.images_usable"] == IMAGES
    assert download["metrics.skipped_duplicate_tree"] == IMAGES
    assert download["metrics.skipped_macos_metadata"] > 0
    assert split["params.split.val_fraction"] == "0.15"
    assert (
        split["metrics.images_train"] + split["metrics.images_val"] + split["metrics.images_test"]
        == IMAGES
    )
    assert preprocess["params.preprocess.image.size"] == "32"
    assert preprocess["metrics.images_per_second"] > 0
    # A downstream run names the exact upstream data it read.
    manifest_tag = "data/raw/manifest.csv"
    assert download[f"tags.output.{manifest_tag}"] == split[f"tags.input.{manifest_tag}"]
    for name in ("train", "val", "test"):
        tag = f"data/split/{name}.csv"
        assert split[f"tags.output.{tag}"] == preprocess[f"tags.input.{tag}"]
    # Train reads the processed train and val arrays, never test.
    assert {
        key for key in train.index if key.startswith("tags.input.") and pd.notna(train[key])
    } == {
        "tags.input.data/processed/train",
        "tags.input.data/processed/val",
    }
    assert train["params.train.tuning.n_trials"] == str(TRIALS)
    # Evaluate reads the model, val (for the threshold) and test.
    assert {
        key for key in evaluate.index if key.startswith("tags.input.") and pd.notna(evaluate[key])
    } == {
        "tags.input.models/model.keras",
        "tags.input.data/processed/val",
        "tags.input.data/processed/test",
    }
    assert evaluate["tags.input.models/model.keras"] == train["tags.output.models/model.keras"]
    # Site reads the model, evaluate's operating point and site reference, and test.
    assert {key for key in site.index if key.startswith("tags.input.") and pd.notna(site[key])} == {
        "tags.input.models/model.keras",
        "tags.input.models/threshold.json",
        "tags.input.models/site_reference.npz",
        "tags.input.data/processed/test",
    }
    assert site["tags.input.models/model.keras"] == train["tags.output.models/model.keras"]
    assert set(runs["tags.git_commit"]) == {
        run(["git", "rev-parse", "HEAD"], pipeline["repo"], pipeline["env"]).stdout.strip()
    }


def test_second_repro_changes_nothing(pipeline):
    repo, env = pipeline["repo"], pipeline["env"]
    again = run(["dvc", "repro"], repo, env)
    assert "Data and pipelines are up to date" in again.stdout
    status = run(["dvc", "status"], repo, env)
    assert "up to date" in status.stdout
    assert len(runs_by_stage(repo)) == len(STAGES)


def test_a_repro_leaves_no_output_for_git_add_to_pick_up(pipeline):
    """Each output is git-ignored or one the project commits on purpose (the reference run's
    dvc.lock and reports, DVC's .gitignore files; the copy starts without them): none is left
    for a `git add -A` to commit by mistake."""
    repo, env = pipeline["repo"], pipeline["env"]
    listed = subprocess.run(
        ["git", "ls-files"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=False
    )
    if listed.returncode != 0:
        pytest.skip(f"{PROJECT_ROOT} is not a git checkout: no committed files to compare with")
    committed = set(listed.stdout.splitlines())
    status = run(["git", "status", "--porcelain", "--untracked-files=all"], repo, env).stdout
    untracked = [line[3:] for line in status.splitlines() if line.startswith("??")]
    assert untracked, "the copy starts without the reference files, so the run writes some"
    assert [path for path in untracked if path not in committed] == []


def test_temp_experiment_logs_to_the_project_store(pipeline_copy):
    repo, env = pipeline_copy["repo"], pipeline_copy["env"]
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "first repro"], repo, env)
    # Up to preprocess only: a temp workspace lacks the `cache: false` outputs (the image links,
    # train's and evaluate's tables), so DVC would re-run download, train and evaluate too.
    command = ["dvc", "exp", "run", "--temp", "-n", "small-grid", "-S", "preprocess.sample_grid=4"]
    command.append("preprocess")
    run(command, repo, env)
    runs = runs_by_stage(repo)
    preprocess_runs = runs[runs["tags.stage"] == "preprocess"]
    experiment = preprocess_runs[preprocess_runs["params.preprocess.sample_grid"] == "4"]
    assert len(experiment) == 1
    assert experiment["tags.mlflow.runName"].iloc[0] == "preprocess@small-grid"
    assert experiment["tags.DVC_EXP_NAME"].iloc[0] == "small-grid"
    assert experiment["tags.DVC_EXP_BASELINE_REV"].iloc[0]
    # The temp workspace is gone; its params change shows up through DVC's own tools.
    shown = run(["dvc", "exp", "show", "--no-pager", "--csv"], repo, env).stdout
    assert "small-grid" in shown


def test_train_logs_trials_as_nested_runs_and_registers_the_model(pipeline):
    repo = pipeline["repo"]
    runs = all_runs(repo)
    parent = runs[(runs["tags.stage"] == "train") & runs["tags.mlflow.parentRunId"].isna()]
    assert len(parent) == 1
    parent_id = parent["run_id"].iloc[0]
    trials = runs[runs["tags.mlflow.parentRunId"] == parent_id]
    assert len(trials) == TRIALS
    assert set(trials["tags.trial_state"]) <= {"COMPLETE", "PRUNED"}
    # Trials counted from 1 in the names and the `trial` tag; Optuna's own number beside it.
    numbers = sorted(int(number) for number in trials["tags.trial"])
    assert numbers == list(range(1, TRIALS + 1))
    assert sorted(trials["tags.mlflow.runName"]) == sorted(f"trial-{n}" for n in numbers)
    for trial, optuna_number in zip(trials["tags.trial"], trials["tags.optuna_trial"], strict=True):
        assert int(trial) == int(optuna_number) + 1
    table = pd.read_csv(repo / "reports" / "train" / "trials.csv")
    assert list(table.columns[:2]) == ["trial", "number"]
    assert (table["trial"] == table["number"] + 1).all()
    client = mlflow.MlflowClient()
    for run_id, state in zip(trials["run_id"], trials["tags.trial_state"], strict=True):
        assert client.get_run(run_id).data.params["optimizer.name"] in {"adam", "rmsprop"}
        for metric in ("loss", "val_loss", "accuracy", "val_accuracy", "auc", "val_auc"):
            steps = [m.step for m in client.get_metric_history(run_id, metric)]
            assert steps == ([1, 2] if state == "COMPLETE" else steps[:1]), (metric, steps)
    assert parent["tags.device"].iloc[0] in {"CPU", "GPU"}
    assert parent["metrics.best_val_auc"].iloc[0] >= 0
    # The saved model's exact val AUC has its own key, the same in train.json and the run;
    # Keras' per-epoch val_auc keeps only its epochs, in order.
    summary = json.loads((repo / "reports" / "train.json").read_text())
    assert parent["metrics.val_roc_auc"].iloc[0] == pytest.approx(summary["val_roc_auc"])
    assert "val_auc" not in summary
    steps = [m.step for m in client.get_metric_history(parent_id, "val_auc")]
    assert steps == sorted(steps) and len(steps) == len(set(steps))
    # The fresh study is named after the train run, its objective after the metric.
    study_name = parent["tags.optuna_study"].iloc[0]
    assert study_name.startswith(parent["tags.mlflow.runName"].iloc[0] + "-")

    card = json.loads((repo / "models" / "model.json").read_text())
    assert card["mlflow"]["version"] == "1"
    assert card["preprocess"]["image_size"] == 32
    history = (repo / "reports" / "train" / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,") and history[1].startswith("1,")
    # Two members with consecutive seeds; member 1's curves under its own prefix.
    members = pd.read_csv(repo / "reports" / "train" / "members.csv")
    assert members["seed"].tolist() == [42, 43] and members["epochs_run"].tolist() == [2, 2]
    steps = [m.step for m in client.get_metric_history(parent_id, "member2/val_auc")]
    assert steps == [1, 2]  # epochs as the console counts them
    assert len(ensemble_members(keras.saving.load_model(repo / "models" / "model.keras"))) == 2
    # The acquisition-shift check ran on the raw val images: one row per condition, summary
    # figures in the DVC metrics and on the MLflow run.
    shift = pd.read_csv(repo / "reports" / "train" / "val_shift.csv")
    assert list(shift["condition"]) == ["none", *SHIFTS]
    assert shift["roc_auc"].between(0, 1).all()
    summary = json.loads((repo / "reports" / "train.json").read_text())
    assert summary["val_shift_auc_min"] == pytest.approx(shift["roc_auc"].iloc[1:].min(), abs=1e-6)
    assert parent["metrics.val_shift_auc_mean"].iloc[0] == pytest.approx(
        summary["val_shift_auc_mean"], abs=1e-6
    )

    info = mlflow.models.get_model_info("models:/pneumonia-cnn/1")
    assert info.signature.inputs.to_dict()[0]["tensor-spec"]["dtype"] == "uint8"
    assert info.saved_input_example_info is not None
    images = np.load(repo / "data" / "processed" / "val" / "images.npy")
    model = mlflow.keras.load_model("models:/pneumonia-cnn/1")
    predictions = model.predict(images, verbose=0)
    assert predictions.shape == (len(images), 1)
    local = keras.saving.load_model(repo / "models" / "model.keras")
    np.testing.assert_allclose(local.predict(images, verbose=0), predictions, rtol=1e-5)


def test_evaluate_logs_test_metrics_with_intervals_against_the_logged_model(pipeline, tmp_path):
    repo, env = pipeline["repo"], pipeline["env"]
    report = json.loads((repo / "reports" / "evaluate" / "metrics_detail.json").read_text())
    assert report["threshold"]["chosen_on"] == "val"
    test = report["test"]["at_threshold"]
    headline = read_headline(repo / "reports" / "metrics.json")
    assert headline["roc_auc"] == test["roc_auc"]["value"]
    assert report["test"]["images"] == len(PATIENT_FILES[("test", "NORMAL")]) + len(
        PATIENT_FILES[("test", "PNEUMONIA")]
    )
    for name in ("accuracy", "sensitivity", "specificity", "roc_auc", "brier", "ece"):
        assert test[name]["ci_low"] <= test[name]["value"] <= test[name]["ci_high"]
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo, env).stdout)
    metrics = next(iter(shown.values()))["data"]["reports/metrics.json"]["data"]
    assert metrics == headline
    # The model card quotes the same figures: evaluate's, then the site stage's section.
    card_text = (repo / "reports" / "evaluate" / "model_card.md").read_text()
    assert f"ROC AUC {headline['roc_auc']:.3f}" in card_text
    final_card = (repo / "reports" / "model_card.md").read_text()
    assert final_card.startswith(card_text.rstrip() + "\n\n## Site readiness (site-calibrated)")
    operating_point = json.loads((repo / "models" / "threshold.json").read_text())
    assert operating_point["threshold"] == report["threshold"]["value"]
    # It names the model file it was chosen for by content.
    assert operating_point["model"]["sha256"] == file_sha256(repo / "models" / "model.keras")
    for name in ("roc", "precision_recall", "calibration", "predictions"):
        assert (repo / "reports" / "tables" / f"{name}.csv").is_file()
    rendered = run(["dvc", "plots", "show", "-o", str(tmp_path / "plots")], repo, env)
    assert "index.html" in rendered.stdout
    html = (tmp_path / "plots" / "index.html").read_text()
    for title in ("Test ROC", "Test confusion matrix", "ROC AUC per epoch"):
        assert title in html, title
    # Vega draws the test curves; their PNG versions go to MLflow only (checked below).
    assert "roc.png" not in html
    # A Grad-CAM panel for every outcome the tiny model produced (which ones occur depends on
    # its scores), and none for the others; images of patients, so on disk and in MLflow but
    # not in the DVC plots.
    outcomes = set(pd.read_csv(repo / "reports" / "tables" / "predictions.csv")["outcome"])
    assert outcomes
    panels = repo / "reports" / "evaluate" / "gradcam"
    for outcome in ("true_positive", "false_positive", "true_negative", "false_negative"):
        assert (panels / f"{outcome}.png").is_file() == (outcome in outcomes), outcome
        assert f"{outcome}.png" not in html

    runs = runs_by_stage(repo)
    train = runs[runs["tags.stage"] == "train"].iloc[0]
    evaluate = runs[runs["tags.stage"] == "evaluate"].iloc[0]
    assert evaluate["tags.train_run_id"] == train["run_id"]
    # The train run's params are on the evaluate run too, for side-by-side comparison.
    for key in (
        "params.train.epochs",
        "params.preprocess.image.size",
        "params.chosen.model.dropout",
    ):
        assert evaluate[key] == train[key], key
    assert evaluate["metrics.test/roc_auc"] == pytest.approx(test["roc_auc"]["value"])
    assert evaluate["metrics.test/roc_auc_low"] == pytest.approx(test["roc_auc"]["ci_low"])
    assert "metrics.test_at_0.5/accuracy" in evaluate
    assert evaluate["tags.mlflow.note.content"].count("## Known limitations") == 1
    client = mlflow.MlflowClient()
    logged = client.get_run(evaluate["run_id"])
    contexts = {
        dataset.dataset.name: {tag.value for tag in dataset.tags}
        for dataset in logged.inputs.dataset_inputs
    }
    assert contexts == {"val": {"validation"}, "test": {"test"}}
    listed = client.list_artifacts(evaluate["run_id"], "evaluation/plots")
    artifacts = {item.path for item in listed}
    assert "evaluation/plots/roc.png" in artifacts
    # The test metrics are attached to the logged model, on the test dataset.
    card = json.loads((repo / "models" / "model.json").read_text())
    model = mlflow.get_logged_model(card["mlflow"]["model_id"])
    on_model = {m.key: m for m in model.metrics if m.run_id == evaluate["run_id"]}
    assert on_model["test/roc_auc"].value == pytest.approx(test["roc_auc"]["value"])
    assert on_model["test/roc_auc"].dataset_name == "test"
    version = client.get_model_version_by_alias("pneumonia-cnn", "candidate")
    assert str(version.version) == card["mlflow"]["version"]
    assert float(version.tags["threshold"]) == pytest.approx(operating_point["threshold"])
    # The served model of the same weights and threshold, registered and @candidate too; its
    # tags carry val figures only (what promotion compares), never test's.
    served = client.get_model_version_by_alias("pneumonia-classifier", "candidate")
    assert operating_point["serving_model"]["version"] == str(served.version)
    assert served.run_id == evaluate["run_id"]
    assert served.tags["source_model_version"] == card["mlflow"]["version"]
    assert float(served.tags["threshold"]) == pytest.approx(operating_point["threshold"])
    assert {"val_roc_auc", "val_sensitivity", "val_specificity", "val_dataset_digest"} <= set(
        served.tags
    )
    assert not [key for key in served.tags if "test" in key]
    # Both versions are described by the model card; the registered models have a summary.
    assert version.description == served.description == card_text
    for name in ("pneumonia-cnn", "pneumonia-classifier"):
        assert "Research use only" in client.get_registered_model(name).description
    assert "Kermany" in client.get_experiment_by_name("pneumonia").tags["mlflow.note.content"]


def test_site_stage_treats_the_tiny_test_split_as_a_new_site(pipeline):
    """The site stage on the tiny split: too few test images for a check and too few patients
    for any k, each said as skipped; the metrics keys all there (unmeasured ones null, which
    `dvc metrics show` leaves out); the val-only headline untouched."""
    repo, env = pipeline["repo"], pipeline["env"]
    metrics = json.loads((repo / "reports" / "site" / "metrics.json").read_text())
    assert set(metrics) == {
        "test_shift_p_value",
        "test_classifier_auc",
        "control_false_alarm_rate",
        "site_sensitivity",
        "site_specificity",
        "target_held",
        "calibrated_draws",
        "refused_draws",
        "val_threshold_sensitivity",
        "val_threshold_specificity",
    }
    counts = {"calibrated_draws", "refused_draws"}
    assert all(
        value is None or 0 <= value <= 1 for key, value in metrics.items() if key not in counts
    ), metrics
    detail = json.loads((repo / "reports" / "site" / "check.json").read_text())
    test_images = len(PATIENT_FILES[("test", "NORMAL")]) + len(PATIENT_FILES[("test", "PNEUMONIA")])
    assert detail["label"] == "site-calibrated"
    assert detail["new_site"]["images"] == test_images
    measured_k = {row["k"] for row in detail["new_site"]["rows"]}
    skipped_k = {skip["k"] for skip in detail["new_site"]["skipped"]}
    assert measured_k | skipped_k == {25, 50, 100, 200} and not measured_k & skipped_k
    if test_images < 10:
        assert "needs at least 10" in detail["test"]["skipped"]
        assert metrics["test_shift_p_value"] is None
    table = pd.read_csv(repo / "reports" / "site" / "calibration.csv")
    assert table["note"].fillna("").str.startswith("skipped").sum() == len(skipped_k)
    assert (repo / "reports" / "site" / "by_k.csv").is_file()
    assert (repo / "reports" / "site" / "calibration.png").is_file()
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo, env).stdout)
    data = next(iter(shown.values()))["data"]
    assert "reports/metrics.json" in data  # the headline, as evaluate wrote it
    runs = runs_by_stage(repo)
    site = runs[runs["tags.stage"] == "site"].iloc[0]
    assert site["status"] == "FINISHED"
    assert site["tags.mlflow.note.content"].startswith("site: test split p ")
    artifacts = {item.path for item in mlflow.MlflowClient().list_artifacts(site["run_id"])}
    assert {"model_card.md", "site"} <= artifacts


def test_predict_and_promote_in_the_project(pipeline_copy):
    """`pneumonia predict` on the raw test images agrees with what evaluate measured on the
    preprocessed arrays; a bad file fails alone; promotion moves @champion (in a copy: the
    original's registry keeps @champion unset)."""
    repo, env = pipeline_copy["repo"], pipeline_copy["env"]
    bad = pipeline_copy["base"] / "not-an-image.jpeg"
    bad.write_text("text")
    command = ["pneumonia", "predict", "data/raw/images/test", str(bad), "--format", "csv"]
    result = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True)
    assert result.returncode == 1, result.stderr
    assert f"error: {bad}: not an image" in result.stderr
    rows = pd.read_csv(io.StringIO(result.stdout))
    scored = rows[rows["error"].isna()].copy()
    scored["path"] = scored["path"].str.removeprefix("data/raw/images/")
    evaluated = pd.read_csv(repo / "reports" / "tables" / "predictions.csv")
    merged = evaluated.merge(scored, on="path", suffixes=("_evaluate", "_predict"))
    assert len(merged) == len(evaluated) == len(scored)
    # predict's `score` is the network output evaluate's table calls `probability`.
    np.testing.assert_allclose(merged["score"], merged["probability"], atol=2e-6)
    assert (merged["label"] == merged["predicted"]).all()

    # The Keras flavor from the registry: the threshold comes from its version tag, the
    # preprocess settings from the train run's model card.
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}")
    classifier = load_classifier("models:/pneumonia-cnn@candidate")
    assert classifier.threshold == pytest.approx(scored["threshold"].iloc[0])
    first = repo / "data" / "raw" / "images" / merged["path"].iloc[0]
    assert next(predict_paths(classifier, [first])).score == pytest.approx(
        merged["score"].iloc[0], rel=1e-5
    )

    promoted = run(["pneumonia", "promote"], repo, env)
    assert promoted.stdout.startswith("promoted: pneumonia-classifier v1 (@candidate)")
    champion = mlflow.MlflowClient().get_model_version_by_alias("pneumonia-classifier", "champion")
    assert str(champion.version) == "1"


def test_changing_a_param_shows_in_params_and_metrics_diff(pipeline_copy):
    """The DVC way to compare variants: edit a param, repro, diff against the last commit."""
    repo, env = pipeline_copy["repo"], pipeline_copy["env"]
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "evaluated", "--allow-empty"], repo, env)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["evaluate"]["threshold"] = 0.01  # everything called pneumonia
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    rerun = run(["dvc", "repro"], repo, env)
    assert "Running stage 'evaluate'" in rerun.stdout
    assert "Running stage 'train'" not in rerun.stdout
    params_diff = json.loads(run(["dvc", "params", "diff", "--json"], repo, env).stdout)
    assert params_diff["params.yaml"]["evaluate.threshold"] == {"old": "youden", "new": 0.01}
    metrics_diff = json.loads(run(["dvc", "metrics", "diff", "--json"], repo, env).stdout)
    changed = metrics_diff["reports/metrics.json"]
    assert changed["threshold"]["new"] == 0.01
    # At 0.01 every test image is called pneumonia (the tiny model's scores are not that low).
    assert read_headline(repo / "reports" / "metrics.json")["sensitivity"] == 1.0
    # `dvc plots diff` draws both revisions: the committed one's tables come from the cache.
    plots = json.loads(run(["dvc", "plots", "diff", "HEAD", "--json"], repo, env).stdout)
    assert not plots.get("errors"), plots.get("errors")
    for title in ("Training AUC", "Test ROC (threshold chosen on val)", "Test confusion"):
        (plot,) = [entries for name, entries in plots["data"].items() if name.startswith(title)]
        revisions = {value["rev"] for value in plot[0]["content"]["data"]["values"]}
        assert revisions == {"workspace", "HEAD"}, (title, revisions)


def test_a_workspace_experiment_moves_no_alias_and_promote_refuses_it(pipeline_copy):
    """`dvc exp run` in the workspace (the README's sens95 example) registers its served model
    under `exp-<name>` only: @candidate stays on the pipeline's version, and promote refuses the
    experiment's version unless told."""
    repo, env = pipeline_copy["repo"], pipeline_copy["env"]
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "evaluated", "--allow-empty"], repo, env)
    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    before = client.get_model_version_by_alias("pneumonia-classifier", "candidate").version
    rule = "evaluate.threshold=sensitivity:0.95"
    result = run(["dvc", "exp", "run", "-n", "sens95", "-S", rule], repo, env)
    assert "Running stage 'evaluate'" in result.stdout
    assert "experiment sens95: pneumonia-classifier" in result.stdout
    assert client.get_model_version_by_alias("pneumonia-classifier", "candidate").version == before
    served = client.get_model_version_by_alias("pneumonia-classifier", "exp-sens95")
    assert served.version != before and served.tags["dvc_experiment"] == "sens95"
    refused = subprocess.run(
        ["pneumonia", "promote", "--from", "exp-sens95"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "registered by DVC experiment 'sens95'" in refused.stderr
    allowed = run(["pneumonia", "promote", "--from", "exp-sens95", "--allow-experiment"], repo, env)
    assert allowed.stdout.startswith(f"promoted: pneumonia-classifier v{served.version}")


def test_a_mistyped_section_fails_the_experiment_naming_the_key(pipeline_copy):
    """`-S +evalute...` adds a section no stage reads; the validate stage refuses it."""
    repo, env = pipeline_copy["repo"], pipeline_copy["env"]
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "evaluated", "--allow-empty"], repo, env)
    result = subprocess.run(
        ["dvc", "exp", "run", "-S", "+evalute.threshold=0.3"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "unknown key 'evalute'; did you mean 'evaluate'?" in output
    assert "Running stage 'train'" not in output


def test_a_retrain_that_gives_the_same_model_changes_nothing_downstream(pipeline_copy):
    """Identical CPU runs write a byte-identical model file and card, so a forced retrain
    registers no new version and leaves evaluate up to date."""
    repo, env = pipeline_copy["repo"], pipeline_copy["env"]
    model = repo / "models" / "model.keras"
    card = repo / "models" / "model.json"
    before = (file_sha256(model), json.loads(card.read_text()))
    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}")
    versions = len(client.search_model_versions("name = 'pneumonia-cnn'"))
    rerun = run(["dvc", "repro", "--force", "--single-item", "train"], repo, env)
    assert "registered nothing" in rerun.stdout

    def leaves(value, prefix=""):
        if isinstance(value, dict):
            for key, inner in value.items():
                yield from leaves(inner, f"{prefix}{key}.")
        else:
            yield prefix, json.dumps(value)

    after = (file_sha256(model), json.loads(card.read_text()))
    changed = sorted(set(leaves(after[1])) ^ set(leaves(before[1])), key=str)
    assert after[0] == before[0] and not changed, changed
    assert len(client.search_model_versions("name = 'pneumonia-cnn'")) == versions
    status = run(["dvc", "status", "evaluate"], repo, env)
    assert "changed" not in status.stdout, status.stdout


# What push/pull carries: the cached outputs of dvc.yaml (the image links, the reports and
# model.json are `cache: false`, so DVC leaves them to the stages and git).
CACHED_OUTPUTS = (
    "data/raw/manifest.csv",
    "data/split",
    "data/processed",
    "reports/samples",
    "models/model.keras",
)


def file_hashes(root: Path, outputs: tuple[str, ...]) -> dict[str, str]:
    hashes = {}
    for output in outputs:
        path = root / output
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            hashes[file.relative_to(root).as_posix()] = hashlib.sha256(
                file.read_bytes()
            ).hexdigest()
    return hashes


def test_push_to_a_local_remote_and_pull_back(pipeline_copy):
    """The README's remote commands: push, a clone pulls only what a tuning worker reads, and
    the workspace with its outputs and cache deleted pulls every cached output back
    byte-identical."""
    repo, env, remote = (
        pipeline_copy["repo"],
        pipeline_copy["env"],
        pipeline_copy["base"] / "remote",
    )
    produced = file_hashes(repo, CACHED_OUTPUTS)
    assert "models/model.keras" in produced
    assert any(name.startswith("data/processed/train/") for name in produced)

    run(["dvc", "remote", "add", "-d", "backup", str(remote)], repo, env)
    run(["dvc", "push"], repo, env)
    assert any(path.is_file() for path in (remote / "files" / "md5").rglob("*"))
    assert "in sync" in run(["dvc", "status", "--cloud"], repo, env).stdout
    run(["git", "add", "dvc.lock", ".dvc/config"], repo, env)
    run(["git", "commit", "-qm", "pipeline outputs pushed"], repo, env)

    # A tuning worker's machine: a clone pulls only what tune-worker reads.
    clone = pipeline_copy["base"] / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], pipeline_copy["base"], env)
    run(["dvc", "pull", "preprocess"], clone, env)
    assert file_hashes(clone, ("data/processed",)) == file_hashes(repo, ("data/processed",))
    assert not (clone / "models" / "model.keras").exists()

    # The same workspace with its outputs and its cache gone.
    for output in CACHED_OUTPUTS:
        path = repo / output
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    shutil.rmtree(repo / ".dvc" / "cache")
    assert "deleted" in run(["dvc", "status"], repo, env).stdout
    run(["dvc", "pull"], repo, env)
    assert file_hashes(repo, CACHED_OUTPUTS) == produced
    assert "Data and pipelines are up to date" in run(["dvc", "status"], repo, env).stdout
    assert "Data and pipelines are up to date" in run(["dvc", "repro"], repo, env).stdout
