import os
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from pneumonia.tracking import (
    ERROR_TAG,
    ERROR_TRACEBACK_ARTIFACT,
    EXPERIMENT_KIND_TAG,
    NOTE_TAG,
    content_hash,
    flatten,
    run_name,
    stage_run,
    store_locations,
)

from helpers import write_params


@pytest.fixture
def config(tmp_path, monkeypatch):
    from pneumonia.config import load_config

    project = tmp_path / "project"
    (project / ".dvc").mkdir(parents=True)
    # These tests are about the project's own store, which MLFLOW_TRACKING_URI (set per test by
    # conftest.py's isolated_mlflow) would override.
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("DVC_EXP_NAME", "tidy-otter")
    return load_config(write_params(project, {}))


def test_stage_run_logs_to_the_project_store_with_provenance(config):
    data = config.workspace / "table.csv"
    pd.DataFrame({"a": [1, 2]}).to_csv(data, index=False)
    with stage_run("split", config, {"split": {"seed": 7, "val_fraction": 0.2}}) as run:
        run.log_hashes("input", [data])
        run.log_metrics({"images_train": 10})
        run.log_json({"ok": True}, "report.json")
    tracking_uri, artifact_root = store_locations(config.project_root)
    assert (config.project_root / "mlruns" / "mlflow.db").is_file()
    client = mlflow.MlflowClient(tracking_uri)
    stored = client.get_run(run.run_id)
    assert stored.info.run_name == "split@tidy-otter"
    assert stored.data.tags["mlflow.note.content"].startswith("The split stage")
    assert stored.info.artifact_uri.startswith(artifact_root)
    assert stored.data.params == {"split.seed": "7", "split.val_fraction": "0.2"}
    assert stored.data.metrics == {"images_train": 10.0}
    tags = stored.data.tags
    assert tags["stage"] == "split"
    assert tags["DVC_EXP_NAME"] == "tidy-otter"
    assert tags["input.table.csv"] == content_hash(data)
    assert {"git_commit", "git_dirty"} <= tags.keys()
    assert [a.path for a in client.list_artifacts(run.run_id)] == ["report.json"]


def test_failed_stage_marks_the_run_failed(config):
    with pytest.raises(RuntimeError), stage_run("download", config, {}) as run:
        raise RuntimeError("boom")
    client = mlflow.MlflowClient(store_locations(config.project_root)[0])
    stored = client.get_run(run.run_id)
    assert stored.info.status == "FAILED"
    assert stored.data.tags[ERROR_TAG] == "RuntimeError: boom"


def test_a_failing_stage_leaves_its_error_on_its_run(config, capsys, tmp_path):
    """The download stage's own code, on a source that is not there: run_stage prints one line
    and exits 2; the run is FAILED with the error as a tag, at the top of its description, and
    the traceback as an artifact."""
    from pneumonia.config import load_config
    from pneumonia.data.download import run_download
    from pneumonia.errors import run_stage

    missing = load_config(write_params(config.project_root, {"download.source": "no/such/folder"}))

    def main() -> None:
        with stage_run("download", missing, {"download": missing.params["download"]}) as run:
            started.append(run.run_id)
            run_download(missing)

    started: list[str] = []
    with pytest.raises(SystemExit) as exited:
        run_stage(main)
    assert exited.value.code == 2
    printed = capsys.readouterr().err.splitlines()[-1]  # after MLflow's store set-up lines
    assert printed.startswith("error: download.source='no/such/folder'")
    client = mlflow.MlflowClient(store_locations(config.project_root)[0])
    stored = client.get_run(started[0])
    assert stored.info.status == "FAILED"
    assert stored.info.run_name == "download@tidy-otter"
    error = stored.data.tags[ERROR_TAG]
    assert error.startswith("DownloadError: download.source='no/such/folder'")
    assert error.split(": ", 1)[1] in printed
    assert stored.data.tags[NOTE_TAG].startswith(f"FAILED: {error}")
    traceback_file = client.download_artifacts(started[0], ERROR_TRACEBACK_ARTIFACT, str(tmp_path))
    text = Path(traceback_file).read_text()
    assert text.startswith("Traceback") and "run_download" in text and "DownloadError" in text
    # The experiment says what it holds.
    experiment = client.get_experiment(stored.info.experiment_id)
    assert "one run per DVC stage" in experiment.tags[NOTE_TAG]
    # MLflow 3's UI opens it on the runs of a model, not on GenAI traces.
    assert experiment.tags[EXPERIMENT_KIND_TAG] == "custom_model_development"


def test_an_experiment_kind_or_description_set_by_the_user_stays(config):
    from pneumonia.tracking import configure

    tracking_uri, _ = store_locations(config.project_root)
    client = mlflow.MlflowClient(tracking_uri)
    experiment_id = configure(config)
    client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, "genai_development")
    client.set_experiment_tag(experiment_id, NOTE_TAG, "my notes")
    assert configure(config) == experiment_id
    tags = client.get_experiment(experiment_id).tags
    assert (tags[EXPERIMENT_KIND_TAG], tags[NOTE_TAG]) == ("genai_development", "my notes")


@pytest.mark.parametrize(("preset", "expected"), [(None, "True"), ("false", "False")])
def test_mlflow_telemetry_is_off_unless_the_user_turns_it_on(preset, expected):
    """Set by importing the package, before MLflow starts its telemetry client; a user's own
    MLFLOW_DISABLE_TELEMETRY wins."""
    import subprocess
    import sys

    environment = {k: v for k, v in os.environ.items() if k != "MLFLOW_DISABLE_TELEMETRY"}
    if preset is not None:
        environment["MLFLOW_DISABLE_TELEMETRY"] = preset
    probe = (
        "import pneumonia.tracking\n"
        "from mlflow.environment_variables import MLFLOW_DISABLE_TELEMETRY\n"
        "print(MLFLOW_DISABLE_TELEMETRY.get())"
    )
    shown = subprocess.run(
        [sys.executable, "-c", probe], env=environment, capture_output=True, text=True, check=True
    )
    assert shown.stdout.strip() == expected


def test_run_names_carry_the_stage_and_the_experiment_or_commit(tmp_path):
    import subprocess

    assert run_name("train", tmp_path, {"DVC_EXP_NAME": "q7-depth5"}) == "train@q7-depth5"
    assert run_name("evaluate", tmp_path, {}) == "evaluate@workspace"  # not a git repository
    environment = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    for command in (["init", "-q"], ["commit", "-q", "--allow-empty", "-m", "x"]):
        subprocess.run(["git", *command], cwd=tmp_path, env=environment, check=True)
    commit = subprocess.run(
        ["git", "rev-parse", "--short=7", "HEAD"], cwd=tmp_path, capture_output=True, text=True
    ).stdout.strip()
    assert run_name("train", tmp_path, {}) == f"train@{commit}"
    assert run_name("train", tmp_path, {"DVC_EXP_NAME": "x"}) == "train@x"  # the experiment first


def test_content_hash_of_folder_depends_on_names_and_bytes(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.txt").write_text("1")
    first = content_hash(tmp_path / "a")
    (tmp_path / "a" / "x.txt").write_text("2")
    assert content_hash(tmp_path / "a") != first
    with pytest.raises(FileNotFoundError, match="run the upstream stage"):
        content_hash(tmp_path / "missing")


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}


def test_runs_a_killed_stage_left_running_are_closed_by_the_next_stage(config):
    """A stage killed mid-run (SIGKILL: no finally, no atexit) leaves its run and its nested
    trial run RUNNING; the next stage's run ends them as KILLED, and leaves a live process's
    run alone. The dead process is a real one that has exited (tests/test_liveness.py has the
    other cases: PID namespaces, heartbeats, a real SIGKILL)."""
    import json
    import subprocess
    import sys

    from pneumonia.tracking import ProcessIdentity, configure

    code = (
        "import json, pneumonia.tracking as t; "
        "print(json.dumps(t.ProcessIdentity.current().tags()))"
    )
    exited = subprocess.run(
        [sys.executable, "-c", code], text=True, capture_output=True, check=True
    )
    dead = json.loads(exited.stdout)
    experiment_id = configure(config)
    client = mlflow.MlflowClient()
    killed = client.create_run(experiment_id, tags=dead, run_name="train")
    trial = client.create_run(
        experiment_id, tags={"mlflow.parentRunId": killed.info.run_id}, run_name="trial-0"
    )
    alive = client.create_run(experiment_id, tags=ProcessIdentity.current().tags())
    with stage_run("train", config, {}):
        pass
    status = {
        run_id: client.get_run(run_id).info.status
        for run_id in (killed.info.run_id, trial.info.run_id, alive.info.run_id)
    }
    assert status[killed.info.run_id] == "KILLED" and status[trial.info.run_id] == "KILLED"
    assert status[alive.info.run_id] == "RUNNING"
    assert (
        "ended without closing the run"
        in client.get_run(killed.info.run_id).data.tags["ended_because"]
    )
