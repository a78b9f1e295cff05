"""Scale-out tuning. Fast checks in-process on SQLite; then the real thing: `pneumonia tune-worker`
processes on one Optuna study in a throwaway PostgreSQL, logging to a real `mlflow server`
backed by another database of that PostgreSQL, one worker killed mid-trial, and the train stage
refitting the shared study's best trial."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import mlflow
import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from pneumonia.cli import main
from pneumonia.config import ConfigError, load_config, parse_override
from pneumonia.model.tuning import (
    MLFLOW_RUN_ATTRIBUTE,
    TuningError,
    fail_stale_trials,
    fixed_trial_params,
    hyperparameters_from,
    load_tuned_study,
    loggable_train_params,
    make_storage,
    redact_url,
)
from pneumonia.model.workers import run_worker

import helpers
from helpers import PROJECT_ROOT, MlflowServer, write_tiny_project

PNEUMONIA = Path(sys.executable).parent / "pneumonia"
STUDY = "shared"
TRIALS_PER_WORKER = 2
# Seconds: short, so a killed worker's trial is stale soon.
HEARTBEAT = {"train.tuning.heartbeat_interval": 1, "train.tuning.grace_period": 2}


# --- In-process, on SQLite ------------------------------------------------------------------


def test_overrides_are_read_as_yaml_and_validated(tmp_path):
    assert parse_override("train.tuning.n_trials=8") == ("train.tuning.n_trials", 8)
    assert parse_override("train.tuning.study_name=big-run") == (
        "train.tuning.study_name",
        "big-run",
    )
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override("train.tuning.n_trials")
    params = write_tiny_project(tmp_path, {})
    config = load_config(params, {"train.tuning.grace_period": 300, "train.tuning.n_trials": 1})
    assert (config.train.tuning.grace_period, config.train.tuning.n_trials) == (300, 1)
    with pytest.raises(ConfigError, match=r"unknown key .train\.tuning\.n_trails.; did you mean"):
        load_config(params, {"train.tuning.n_trails": 1})
    with pytest.raises(ConfigError, match=r"'train\.tuning\.grace_period' \(10\) must be at least"):
        load_config(params, {"train.tuning.heartbeat_interval": 6, "train.tuning.grace_period": 10})


def test_storage_passwords_are_not_logged():
    url = "postgresql://optuna:s3cret@db.example:5432/optuna"
    assert redact_url(url) == "postgresql://optuna:***@db.example:5432/optuna"
    assert redact_url("sqlite:///studies/optuna.db") == "sqlite:///studies/optuna.db"
    logged = loggable_train_params({"seed": 1, "tuning": {"storage": url, "n_trials": 2}})
    assert logged == {"seed": 1, "tuning": {"storage": redact_url(url), "n_trials": 2}}


def test_worker_needs_a_shared_study_name(tmp_path, capsys):
    params = write_tiny_project(tmp_path, {})
    with pytest.raises(ConfigError, match=r"'train\.tuning\.study_name' is empty"):
        run_worker(load_config(params), n_trials=1, study_trials=None)
    with pytest.raises(SystemExit) as exit_info:
        main(["tune-worker", "--params", str(params), "--n-trials", "0", "--study", "s"])
    assert exit_info.value.code == 2
    assert "--n-trials must be >= 1" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # ask/tell by hand
def test_refit_needs_the_named_study_with_a_complete_trial(tmp_path):
    params = write_tiny_project(tmp_path, {"train.tuning.storage": "sqlite:///studies/s.db"})
    config = load_config(params, {"train.tuning.study_name": "never-tuned"})
    with pytest.raises(TuningError, match="'never-tuned': no such study in sqlite:///"):
        load_tuned_study(config.train.tuning, config.project_root)

    config = load_config(params, {"train.tuning.study_name": "tuned"})
    tuning = config.train.tuning
    study = optuna.create_study(
        storage=make_storage(tuning, config.project_root), study_name="tuned", direction="maximize"
    )
    study.tell(study.ask(), state=TrialState.FAIL)
    with pytest.raises(TuningError, match="study tuned: no trial completed"):
        load_tuned_study(tuning, config.project_root)
    best = {**fixed_trial_params(config.train.hyperparameters, tuning.search_space), "dropout": 0.4}
    distributions = {
        name: FloatDistribution(0.0, 1.0)
        if isinstance(value, float)
        else CategoricalDistribution([value])
        for name, value in best.items()
    }
    study.add_trial(optuna.create_trial(params=best, distributions=distributions, value=0.9))
    loaded = load_tuned_study(tuning, config.project_root)
    assert loaded.best_trial.params == best
    chosen = hyperparameters_from(loaded.best_trial.params, config.train.hyperparameters)
    assert chosen.model.dropout == 0.4


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")  # ask/tell by hand
def test_stale_trial_is_failed_its_runs_ended_and_its_params_queued_again(tmp_path):
    # What a worker killed mid-trial leaves: its runs RUNNING and a trial whose heartbeat stopped.
    # The runs are in this test's own store (conftest.py's isolated_mlflow).
    client = mlflow.MlflowClient()
    experiment = client.create_experiment("stale")
    parent = client.create_run(experiment, run_name="tune-worker").info.run_id
    child = client.create_run(experiment, tags={"mlflow.parentRunId": parent}).info.run_id
    params = write_tiny_project(tmp_path, {"train.tuning.storage": "sqlite:///s.db", **HEARTBEAT})
    config = load_config(params)
    storage = make_storage(config.train.tuning, config.project_root)
    study = optuna.create_study(storage=storage, study_name="stale", direction="maximize")
    trial = study.ask({"dropout": FloatDistribution(0.1, 0.5)})
    trial.set_user_attr(MLFLOW_RUN_ATTRIBUTE, child)
    storage.record_heartbeat(trial._trial_id)
    fail_stale_trials(study)
    assert study.trials[0].state == TrialState.RUNNING  # still inside the grace period
    time.sleep(config.train.tuning.grace_period + 1)
    fail_stale_trials(study)

    failed, retry = study.trials
    assert failed.state == TrialState.FAIL
    assert retry.state == TrialState.WAITING
    assert retry.params == failed.params
    assert retry.system_attrs["failed_trial"] == failed.number
    assert client.get_run(child).info.status == "FAILED"
    assert client.get_run(child).data.tags["trial_state"] == "FAIL"
    assert client.get_run(parent).info.status == "FAILED"


def test_missing_postgresql_is_reported_with_the_fix(tmp_path, monkeypatch):
    # The reason the PostgreSQL tests give when they skip.
    monkeypatch.setenv("PATH", str(tmp_path))
    # find_binaries reads the name in its own module, not the package's re-export.
    monkeypatch.setattr(helpers.services, "DEBIAN_BINARIES", tmp_path / "postgresql")
    with pytest.raises(helpers.PostgresUnavailable, match="apt-get install -y postgresql"):
        helpers.find_binaries()


# --- For real: worker processes, PostgreSQL, an MLflow tracking server ---------------------
# All slow: each starts PostgreSQL, an `mlflow server` and worker or stage subprocesses.


@pytest.fixture(scope="module")
def tracking_server(postgres, tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow-server")
    database = postgres.create_database(f"mlflow_{uuid.uuid4().hex[:8]}")
    server = MlflowServer(database, folder / "artifacts", folder / "server.log").start()
    yield server
    server.stop()


def start_worker(
    params: Path, storage: str, tracking_uri: str, log: Path, *arguments: str
) -> subprocess.Popen:
    command = [str(PNEUMONIA), "tune-worker", "--params", str(params), "--storage", storage]
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    environment["MLFLOW_TRACKING_URI"] = tracking_uri
    with log.open("w") as output:
        return subprocess.Popen(
            [*command, "--study", STUDY, *arguments],
            cwd=params.parent,
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
        )


def wait_for(process: subprocess.Popen, log: Path, timeout: float = 600) -> str:
    process.wait(timeout=timeout)
    output = log.read_text()
    if process.returncode != 0:
        raise AssertionError(f"{' '.join(process.args)} failed ({process.returncode}):\n{output}")
    return output


def runs_of_study(tracking_uri: str) -> tuple[list, list]:
    """(tune-worker runs, trial runs) tagged with the study, on the tracking server."""
    client = mlflow.MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("pneumonia")
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.optuna_study = '{STUDY}'"
    )
    workers = [run for run in runs if run.data.tags["stage"] == "tune-worker"]
    workers = [run for run in workers if "optuna_trial" not in run.data.tags]
    trials = [run for run in runs if "optuna_trial" in run.data.tags]
    return workers, trials


@pytest.fixture(scope="module")
def shared_study(postgres, tracking_server, tmp_path_factory):
    """Two worker processes started together on one study, TRIALS_PER_WORKER trials each."""
    root = tmp_path_factory.mktemp("two-workers")
    params = write_tiny_project(root / "project", {})
    storage = postgres.create_database("optuna_two_workers")
    logs = [root / f"worker-{index}.log" for index in range(2)]
    workers = [
        start_worker(params, storage, tracking_server.url, log, "--n-trials", "2") for log in logs
    ]
    outputs = [wait_for(worker, log) for worker, log in zip(workers, logs, strict=True)]
    study = optuna.load_study(study_name=STUDY, storage=storage)
    return {"root": root, "storage": storage, "study": study, "outputs": outputs}


@pytest.mark.slow
def test_two_worker_processes_share_one_study(shared_study):
    study = shared_study["study"]
    assert len(study.trials) == 2 * TRIALS_PER_WORKER
    assert {trial.state for trial in study.trials} == {TrialState.COMPLETE}
    # Each worker seeds its sampler differently: no configuration is drawn twice.
    assert len({tuple(sorted(trial.params.items())) for trial in study.trials}) == 4
    # Only the worker that created the study queued the fixed hyperparameters.
    config = load_config(shared_study["root"] / "project" / "params.yaml").train
    fixed = fixed_trial_params(config.hyperparameters, config.tuning.search_space)
    assert [trial.params for trial in study.trials].count(fixed) == 1
    for output in shared_study["outputs"]:
        assert f"study {STUDY}: this worker ran 2 trial(s) (2 complete)" in output


@pytest.mark.slow
def test_every_trial_is_one_nested_run_on_the_tracking_server(shared_study, tracking_server):
    workers, trials = runs_of_study(tracking_server.url)
    assert len(workers) == 2
    assert len({run.data.tags["worker_pid"] for run in workers}) == 2
    assert {run.info.status for run in workers} == {"FINISHED"}
    study = shared_study["study"]
    numbers = sorted(int(run.data.tags["optuna_trial"]) for run in trials)
    assert numbers == [trial.number for trial in study.trials]  # each trial exactly once
    by_number = {int(run.data.tags["optuna_trial"]): run for run in trials}
    parents = [run.data.tags["mlflow.parentRunId"] for run in trials]
    assert sorted(parents.count(run.info.run_id) for run in workers) == [2, 2]
    for trial in study.trials:
        run = by_number[trial.number]
        assert trial.user_attrs[MLFLOW_RUN_ATTRIBUTE] == run.info.run_id
        assert run.info.status == "FINISHED"
        assert run.data.tags["trial_state"] == "COMPLETE"
        assert run.data.metrics["best_val_auc"] == pytest.approx(trial.value)
        assert run.data.params["optimizer.name"] == trial.params["optimizer"]


@pytest.mark.slow
def test_train_stage_refits_the_best_trial_of_the_shared_study(shared_study, tracking_server):
    refit = {
        "train.tuning.n_trials": 0,
        "train.tuning.storage": shared_study["storage"],
        "train.tuning.study_name": STUDY,
    }
    project = write_tiny_project(shared_study["root"] / "refit", refit).parent
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    environment["MLFLOW_TRACKING_URI"] = tracking_server.url
    result = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "stages" / "train.py")],
        cwd=project,
        env=environment,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr

    study = optuna.load_study(study_name=STUDY, storage=shared_study["storage"])
    assert len(study.trials) == 2 * TRIALS_PER_WORKER  # the refit ran no trial
    card = json.loads((project / "models" / "model.json").read_text())
    config = load_config(project / "params.yaml")
    chosen = hyperparameters_from(study.best_trial.params, config.train.hyperparameters)
    assert card["hyperparameters"] == chosen.flat()
    assert card["tuning"]["study_name"] == STUDY
    assert card["tuning"]["best_trial"] == study.best_trial.number + 1  # 1-based, as printed
    train_run = mlflow.MlflowClient(tracking_server.url).get_run(card["mlflow"]["run_id"])
    assert train_run.data.tags["optuna_study"] == STUDY
    assert train_run.info.artifact_uri.startswith("mlflow-artifacts:")  # the server's store


@pytest.mark.slow
def test_a_killed_worker_does_not_block_the_study(postgres, tracking_server, tmp_path):
    params = write_tiny_project(tmp_path / "project", HEARTBEAT)
    storage = postgres.create_database("optuna_killed_worker")
    # Many epochs, so its one trial is still running when it is killed.
    doomed = start_worker(
        params,
        storage,
        tracking_server.url,
        tmp_path / "doomed.log",
        "--n-trials",
        "1",
        "-S",
        "train.tuning.epochs=500",
    )
    try:
        running = wait_for_running_trial(storage, doomed, tmp_path / "doomed.log")
    finally:
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.wait()
    # Past the grace period, the next worker's first trial finds it stale.
    time.sleep(HEARTBEAT["train.tuning.grace_period"] + 1)
    survivor = start_worker(
        params, storage, tracking_server.url, tmp_path / "survivor.log", "--study-trials", "2"
    )
    wait_for(survivor, tmp_path / "survivor.log")

    study = optuna.load_study(study_name=STUDY, storage=storage)
    states = [trial.state for trial in study.trials]
    assert states.count(TrialState.COMPLETE) == 2
    killed = study.trials[running.number]
    assert killed.state == TrialState.FAIL
    # Its configuration was queued again and evaluated.
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1
    assert retries[0].params == killed.params
    assert retries[0].state == TrialState.COMPLETE

    client = mlflow.MlflowClient(tracking_server.url)
    killed_run = client.get_run(running.user_attrs[MLFLOW_RUN_ATTRIBUTE])
    assert killed_run.info.status == "FAILED"
    assert killed_run.data.tags["trial_state"] == "FAIL"
    doomed_worker = client.get_run(killed_run.data.tags["mlflow.parentRunId"])
    # Ended by whichever finds it first: the survivor's stage run (its process is gone on this
    # host: KILLED) or the stale trial's callback (FAILED).
    assert doomed_worker.info.status in ("KILLED", "FAILED")
    for trial in study.trials:
        if trial.state == TrialState.COMPLETE:
            run = client.get_run(trial.user_attrs[MLFLOW_RUN_ATTRIBUTE])
            assert run.info.status == "FINISHED"
            assert run.data.tags["optuna_trial"] == str(trial.number)


def wait_for_running_trial(storage: str, worker: subprocess.Popen, log: Path, timeout=300):
    """The worker's trial once it is RUNNING and has its MLflow run."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise AssertionError(f"the worker exited before its trial ran:\n{log.read_text()}")
        try:
            study = optuna.load_study(study_name=STUDY, storage=storage)
        except KeyError:  # not created yet
            study = None
        if study is not None:
            for trial in study.get_trials(states=(TrialState.RUNNING,)):
                if MLFLOW_RUN_ATTRIBUTE in trial.user_attrs:
                    return trial
        time.sleep(0.5)
    raise AssertionError(f"no trial started in {timeout} s:\n{log.read_text()}")


@pytest.mark.parametrize(
    ("storage", "kind"),
    [
        # Nothing listens on a fresh loopback port: the server is unreachable.
        (f"postgresql://bob:s3cret@127.0.0.1:{helpers.free_port()}/optuna", "OperationalError"),
        ("postgresql://bob:s3cret@db.example:notaport/optuna", "ValueError"),
        ("nosuchdb://bob:s3cret@db.example/optuna", "NoSuchModuleError"),
    ],
    # Fixed names: the free port differs between pytest-xdist workers, which must collect alike.
    ids=["unreachable", "bad-port", "unknown-driver"],
)
def test_an_unusable_study_database_is_one_line_without_the_password(tmp_path, storage, kind):
    params = write_tiny_project(tmp_path, {"train.tuning.storage": storage})
    config = load_config(params)
    with pytest.raises(TuningError) as error:
        make_storage(config.train.tuning, config.project_root)
    message = str(error.value)
    assert "s3cret" not in message and "bob:***@" in message
    assert f"cannot open the study database ({kind}" in message
    assert redact_url(storage) in message


@pytest.mark.slow
def test_a_train_stage_killed_mid_trial_leaves_nothing_running_once_the_next_starts(tmp_path):
    """SIGKILL the real train stage during its first trial; the next train stage (a fresh study,
    as by default) ends the dead stage's train and trial runs and fails its trial."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    environment["MLFLOW_TRACKING_URI"] = store
    long_trial = {"train.tuning.n_trials": 1, "train.tuning.epochs": 200}
    project = write_tiny_project(tmp_path / "project", long_trial).parent
    stage = [sys.executable, str(PROJECT_ROOT / "stages" / "train.py")]
    doomed = subprocess.Popen(
        stage, cwd=project, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    client = mlflow.MlflowClient(store)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and doomed.poll() is None:
            time.sleep(1)
            experiment = (
                client.get_experiment_by_name("pneumonia")
                if Path(tmp_path / "mlflow.db").exists()
                else None
            )
            trials = (
                []
                if experiment is None
                else client.search_runs([experiment.experiment_id], "tags.optuna_trial = '0'")
            )
            if trials:
                time.sleep(2)  # into its first epochs
                break
        assert trials and doomed.poll() is None, "the first trial never started"
    finally:
        doomed.send_signal(signal.SIGKILL)
        doomed.wait(timeout=30)
    (trial_run,) = trials
    assert client.get_run(trial_run.info.run_id).info.status == "RUNNING"  # as SIGKILL left it

    write_tiny_project(project, {"train.tuning.n_trials": 1, "train.tuning.epochs": 1})
    result = subprocess.run(stage, cwd=project, env=environment, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "closed 2 run(s) a killed process left RUNNING" in result.stdout
    assert "failed 1 trial(s) a killed run left RUNNING" in result.stdout
    experiment_id = client.get_experiment_by_name("pneumonia").experiment_id
    assert client.search_runs([experiment_id], "attributes.status = 'RUNNING'") == []
    killed = client.get_run(trial_run.info.run_id)
    assert killed.info.status == "KILLED"
    assert killed.data.tags["ended_because"].startswith("its parent run")
    storage = f"sqlite:///{project / 'studies' / 'optuna.db'}"
    states = {
        summary.study_name: [
            trial.state
            for trial in optuna.load_study(study_name=summary.study_name, storage=storage).trials
        ]
        for summary in optuna.get_all_study_summaries(storage)
    }
    assert sorted(states.values()) == [[TrialState.COMPLETE], [TrialState.FAIL]]
