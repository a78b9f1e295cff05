"""Where runs go, and what is said when they cannot go there (tracking.use_project_store): one rule
for store locations (relative to the project root, never to a DVC temp workspace), a copied
project logging into its own store, an unreachable tracking server failing fast in one line, and
no password in any message, tag, artifact or printed traceback."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import mlflow
import pytest

from pneumonia.config import load_config
from pneumonia.tracking import (
    ERROR_TAG,
    ERROR_TRACEBACK_ARTIFACT,
    NOTE_TAG,
    StoreLocationError,
    TrackingUnreachable,
    check_reachable,
    install_redacting_excepthook,
    relocate_copied_store,
    resolve_store_uri,
    stage_run,
    store_locations,
)

from helpers import PROJECT_ROOT, pipeline_project, run_command, tool_environment, write_params

PASSWORD = "s3cret-" + "pw"  # built, so no source line a traceback quotes holds it


def project_config(root: Path, workspace: Path | None = None):
    """A project at `root` (a .dvc folder marks it), its params in `workspace` (default: the
    root; a DVC temp workspace under it, say)."""
    (root / ".dvc").mkdir(parents=True, exist_ok=True)
    return load_config(write_params(workspace or root, {}))


# --- One rule for store locations -------------------------------------------------------------


def test_relative_store_uris_resolve_against_the_project_root(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    resolved = resolve_store_uri("sqlite:///mlruns/mlflow.db", root)
    assert resolved == f"sqlite:///{root}/mlruns/mlflow.db"
    assert (root / "mlruns").is_dir()  # SQLite does not make the folder
    assert resolve_store_uri("sqlite:///db/m.db?timeout=30", root) == (
        f"sqlite:///{root}/db/m.db?timeout=30"
    )
    assert resolve_store_uri("file:runs/store", root) == (root / "runs/store").as_uri()
    assert resolve_store_uri("./runs/store", root) == (root / "runs/store").as_uri()
    assert resolve_store_uri("mlruns", root) == (root / "mlruns").as_uri()
    for unchanged in (
        "sqlite:////srv/shared/mlflow.db",
        "sqlite:///:memory:",
        "file:///srv/mlruns",
        "http://bob:pw@tracking.example:5000",
        "postgresql://bob@db.example/mlflow",
        "databricks",
    ):
        assert resolve_store_uri(unchanged, root) == unchanged
    with pytest.raises(StoreLocationError, match=r"'mlruns' is read as a host.*file:///absolute"):
        resolve_store_uri("file://mlruns", root)


def test_a_relative_tracking_uri_in_a_dvc_temp_workspace_logs_to_the_project_store(
    tmp_path, monkeypatch
):
    """What `dvc exp run --temp` does: the stage runs in <project>/.dvc/tmp/exps/<name>/, which DVC
    deletes afterwards. The relative URI names the project's store, not the temp one."""
    root = tmp_path / "project"
    workspace = root / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    config = project_config(root, workspace)
    monkeypatch.chdir(workspace)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlruns/mlflow.db")
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "sqlite:///mlruns/mlflow.db")
    table = workspace / "table.csv"
    table.write_text("a\n1\n")
    with stage_run("split", config, {}) as run:
        run.log_artifact(table)
    project_store, artifact_root = store_locations(root)
    assert mlflow.get_tracking_uri() == project_store
    assert mlflow.get_registry_uri() == project_store
    stored = mlflow.MlflowClient(project_store).get_run(run.run_id)
    assert stored.info.artifact_uri.startswith(artifact_root)
    logged = list((root / "mlruns" / "artifacts").rglob("table.csv"))
    assert len(logged) == 1 and logged[0].read_text() == "a\n1\n"
    assert not (workspace / "mlruns").exists()


@pytest.mark.slow
def test_dvc_exp_run_temp_with_a_relative_tracking_uri_keeps_its_runs(tmp_path):
    """The issue's reproduction: `MLFLOW_TRACKING_URI=sqlite:///mlruns/mlflow.db dvc exp run
    --temp`. Only the stages it needs (validate, download): their runs and artifacts are in the
    project's store once DVC has deleted the temp workspace."""
    repo, env = pipeline_project(tmp_path, lambda params: None)
    env = {**env, "MLFLOW_TRACKING_URI": "sqlite:///mlruns/mlflow.db"}
    run_command(["dvc", "exp", "run", "--temp", "-n", "kept-runs", "download"], repo, env)
    assert not list((repo / ".dvc" / "tmp" / "exps").glob("*/mlruns"))
    tracking_uri, artifact_root = store_locations(repo)
    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("pneumonia")
    (download,) = client.search_runs([experiment.experiment_id], "tags.stage = 'download'")
    assert download.data.tags["DVC_EXP_NAME"] == "kept-runs"
    assert download.info.artifact_uri.startswith(artifact_root)
    names = {artifact.path for artifact in client.list_artifacts(download.info.run_id)}
    assert "manifest.csv" in names
    assert list((repo / "mlruns" / "artifacts").rglob("manifest.csv"))


# --- A copied or moved project logs into its own store ------------------------------------------


def log_note(config, text: str) -> str:
    note = config.workspace / "note.txt"
    note.write_text(text)
    with stage_run("split", config, {}) as run:
        run.log_artifact(note)
    return run.run_id


def test_a_copied_project_logs_into_its_own_store_and_reads_its_own_copies(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # the projects' own stores
    original = project_config(tmp_path / "original")
    first = log_note(original, "before the copy")
    shutil.copytree(tmp_path / "original", tmp_path / "copy")
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "original").rglob("*"))

    copy = project_config(tmp_path / "copy")
    second = log_note(copy, "in the copy")
    assert "was copied or moved here" in capsys.readouterr().err
    after = sorted(p.relative_to(tmp_path) for p in (tmp_path / "original").rglob("*"))
    assert after == before  # nothing of the original was touched
    copy_store, copy_artifacts = store_locations(tmp_path / "copy")
    client = mlflow.MlflowClient(copy_store)
    for run_id in (first, second):
        assert client.get_run(run_id).info.artifact_uri.startswith(copy_artifacts)
    assert [p.read_text() for p in (tmp_path / "copy").rglob("note.txt") if "artifacts" in p.parts]
    # The copy stands alone: with the original gone, its old run's artifact still reads.
    shutil.rmtree(tmp_path / "original")
    downloaded = client.download_artifacts(first, "note.txt", str(tmp_path))
    assert Path(downloaded).read_text() == "before the copy"
    log_note(copy, "again")  # a second stage finds nothing to re-point
    assert "copied or moved" not in capsys.readouterr().err


def test_a_store_database_copied_without_its_artifacts_keeps_pointing_at_them(
    tmp_path, monkeypatch
):
    """Only mlflow.db copied: the old runs' artifacts are still in the original, so they keep
    pointing there; new runs log beside the copied database."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    original = project_config(tmp_path / "original")
    first = log_note(original, "old")
    (tmp_path / "copy" / "mlruns").mkdir(parents=True)
    shutil.copy2(tmp_path / "original/mlruns/mlflow.db", tmp_path / "copy/mlruns/mlflow.db")
    copy = project_config(tmp_path / "copy")
    second = log_note(copy, "new")
    client = mlflow.MlflowClient(store_locations(tmp_path / "copy")[0])
    assert client.get_run(first).info.artifact_uri.startswith(
        store_locations(tmp_path / "original")[1]
    )
    assert client.get_run(second).info.artifact_uri.startswith(
        store_locations(tmp_path / "copy")[1]
    )


def test_an_artifact_root_that_is_not_a_project_store_is_left_alone(tmp_path):
    """A database shared with a server's artifact root elsewhere (`mlflow server
    --default-artifact-root /srv/artifacts`): not a copied project store, so not re-pointed."""
    database = tmp_path / "db" / "mlflow.db"
    database.parent.mkdir()
    root = tmp_path / "srv" / "artifacts"
    client = mlflow.MlflowClient(f"sqlite:///{database}")
    experiment = client.create_experiment("shared", artifact_location=root.as_uri())
    assert relocate_copied_store(database) == {}
    assert client.get_experiment(experiment).artifact_location == root.as_uri()


# --- An unreachable tracking server: one line, within seconds ---------------------------------


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed as the block ends: nothing listens there


def test_a_closed_port_is_unreachable_at_once_with_the_password_masked():
    uri = f"http://bob:{PASSWORD}@127.0.0.1:{closed_port()}"
    started = time.monotonic()
    with pytest.raises(TrackingUnreachable) as error:
        check_reachable(uri)
    assert time.monotonic() - started < 5
    message = str(error.value)
    assert PASSWORD not in message and "http://bob:***@127.0.0.1:" in message
    assert "connection refused" in message and "unset MLFLOW_TRACKING_URI" in message
    with pytest.raises(TrackingUnreachable, match="connection refused"):
        check_reachable(f"postgresql://bob:{PASSWORD}@127.0.0.1:{closed_port()}/mlflow")


def test_a_server_that_never_answers_times_out():
    with socket.socket() as silent:  # accepts connections (the backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        started = time.monotonic()
        with pytest.raises(TrackingUnreachable, match=r"no answer within 1 s"):
            check_reachable(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=1)
        assert time.monotonic() - started < 5


def test_any_http_answer_is_reachable():
    class NotFound(BaseHTTPRequestHandler):
        def do_GET(self):  # http.server calls it by this name
            self.send_error(404)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        check_reachable(f"http://127.0.0.1:{server.server_address[1]}", timeout=2)
    finally:
        server.shutdown()
        server.server_close()


def test_a_stage_with_an_unreachable_server_fails_in_one_line(tmp_path, monkeypatch, capsys):
    from pneumonia.errors import run_stage

    config = project_config(tmp_path / "project")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://bob:{PASSWORD}@127.0.0.1:{closed_port()}")

    def main() -> None:
        with stage_run("split", config, {}):
            raise AssertionError("the stage must not start")

    with pytest.raises(SystemExit) as exited:
        run_stage(main)
    assert exited.value.code == 2
    printed = capsys.readouterr()
    lines = printed.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: MLFLOW_TRACKING_URI http://bob:***@")
    assert PASSWORD not in printed.out + printed.err


@pytest.mark.slow
def test_the_split_stage_against_an_unreachable_server_exits_2_within_seconds(tmp_path):
    """The issue's reproduction: `MLFLOW_TRACKING_URI=http://127.0.0.1:9 python stages/split.py`
    printed nothing for 247 s, then 117 lines."""
    project = tmp_path / "project"
    project_config(project)
    uri = f"http://bob:{PASSWORD}@127.0.0.1:{closed_port()}"
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "stages" / "split.py")],
        cwd=project,
        env=tool_environment(MLFLOW_TRACKING_URI=uri),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert time.monotonic() - started < 60
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [
        line for line in result.stderr.strip().splitlines() if line.startswith("error: ")
    ]
    assert "the tracking server is unreachable (connection refused)" in result.stderr
    assert PASSWORD not in result.stdout + result.stderr


# --- No password in what tracking records or prints ---------------------------------------------


def test_a_failed_stage_records_its_error_without_the_password(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)  # MLflow's basic-auth variable
    config = project_config(tmp_path / "project")
    message = f"POST http://bob:{PASSWORD}@tracking.example/api failed; password was {PASSWORD}"
    with pytest.raises(RuntimeError), stage_run("train", config, {}) as run:
        raise RuntimeError(message)
    client = mlflow.MlflowClient()
    tags = client.get_run(run.run_id).data.tags
    traceback_file = client.download_artifacts(run.run_id, ERROR_TRACEBACK_ARTIFACT, str(tmp_path))
    recorded = [tags[ERROR_TAG], tags[NOTE_TAG], Path(traceback_file).read_text()]
    for text in recorded:
        assert PASSWORD not in text
        assert "http://bob:***@tracking.example/api" in text


def test_an_uncaught_traceback_is_printed_without_the_password(monkeypatch, capsys):
    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://bob:{PASSWORD}@tracking.example:5000")
    install_redacting_excepthook()
    try:
        raise ConnectionError(f"lost {PASSWORD} at http://bob:{PASSWORD}@tracking.example:5000")
    except ConnectionError as error:
        sys.excepthook(type(error), error, error.__traceback__)
    printed = capsys.readouterr().err
    assert printed.startswith("Traceback (most recent call last):")
    assert "ConnectionError: lost *** at http://bob:***@tracking.example:5000" in printed
    assert PASSWORD not in printed


# --- MLflow's store set-up lines ---------------------------------------------------------------


@pytest.mark.slow
def test_creating_a_store_prints_nothing(tmp_path):
    """The data stages printed MLflow's `Creating initial MLflow database tables...` and
    `Updating database tables` lines (they never called console.quiet_console)."""
    project = tmp_path / "project"
    project_config(project)
    code = (
        "from pathlib import Path; import mlflow\n"
        "from pneumonia.tracking import use_project_store\n"
        "use_project_store(Path('.').resolve()); mlflow.search_experiments()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=project,
        env=tool_environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (project / "mlruns" / "mlflow.db").is_file()
    assert result.stdout + result.stderr == ""
