"""Liveness that cannot kill a live run (tracking.close_orphaned_runs, tuning.fail_orphaned_trials):
a run or trial is orphaned only on proof, its process gone on this machine in this PID namespace
or its heartbeat stopped past the grace period; never on a hostname and a pid, a missing MLflow
run id or a run that has just ended."""

from __future__ import annotations

import dataclasses
import json
import re
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import mlflow
import optuna
import pytest

from pneumonia.config import load_config
from pneumonia.tracking import (
    ENDED_BECAUSE_TAG,
    HEARTBEAT_TAG,
    PROCESS_HOST_TAG,
    PROCESS_ID_TAG,
    PROCESS_NAMESPACE_TAG,
    RUN_GRACE_SECONDS,
    ProcessIdentity,
    RunHeartbeat,
    close_orphaned_runs,
    configure,
    heartbeat_value,
    orphan_reason,
    stage_run,
    utc_now,
)

from helpers import PROJECT_ROOT, tool_environment, write_params, write_tiny_project

HERE = ProcessIdentity.current()
# This process's pid under another start time: the process that had it is gone, the pid reused.
REUSED = dataclasses.replace(HERE, start_time=str(int(HERE.start_time or 0) - 1))
# The same process seen from another machine (or as another machine's): nothing to check here.
ELSEWHERE = dataclasses.replace(HERE, boot_id="another-boot")


@pytest.fixture
def config(tmp_path):
    project = tmp_path / "project"
    (project / ".dvc").mkdir(parents=True)
    return load_config(write_params(project, {}))


def beat(seconds_ago: float) -> dict[str, str]:
    return {HEARTBEAT_TAG: heartbeat_value(utc_now() - timedelta(seconds=seconds_ago))}


# --- The rule, on tags ---------------------------------------------------------------------


def test_a_process_is_proven_gone_only_on_this_machine_and_in_this_namespace():
    assert HERE.is_local() and not HERE.is_gone()
    assert REUSED.is_local() and REUSED.is_gone()
    for unknown in (
        ELSEWHERE,
        dataclasses.replace(REUSED, pid_namespace="pid:[1]"),  # another container, same host
        dataclasses.replace(REUSED, boot_id=""),  # no /proc where it ran
    ):
        assert not unknown.is_local() and not unknown.is_gone()


def test_orphan_reason_needs_proof():
    grace = RUN_GRACE_SECONDS
    assert orphan_reason({**REUSED.tags(), **beat(0)}).startswith(f"process {HERE.pid} on ")
    # Alive here: never orphaned, whatever its heartbeat says.
    assert orphan_reason({**HERE.tags(), **beat(10 * grace)}) is None
    # Elsewhere: its heartbeat decides.
    assert orphan_reason({**ELSEWHERE.tags(), **beat(grace - 30)}) is None
    stale = orphan_reason({**ELSEWHERE.tags(), **beat(grace + 30)})
    assert re.fullmatch(
        rf"no heartbeat for 33\d s \(grace period {grace} s\): process {HERE.pid} on "
        rf"{re.escape(HERE.host)} is gone or cut off from the store",
        stale,
    )
    # From before the process tags: a hostname and a pid prove nothing.
    assert orphan_reason({PROCESS_HOST_TAG: HERE.host, PROCESS_ID_TAG: "4194303"}) is None
    assert orphan_reason({}) is None
    assert orphan_reason({**ELSEWHERE.tags(), HEARTBEAT_TAG: "not a time"}) is None


# --- On a real store -----------------------------------------------------------------------------


def test_the_next_stage_closes_only_the_runs_proven_orphaned(config):
    experiment_id = configure(config)
    client = mlflow.MlflowClient()

    def running(tags: dict[str, str]) -> str:
        return client.create_run(experiment_id, tags=tags).info.run_id

    gone = running({**REUSED.tags(), **beat(0)})
    gone_trial = running({"mlflow.parentRunId": gone})
    silent = running({**ELSEWHERE.tags(), **beat(RUN_GRACE_SECONDS + 60)})
    kept = {
        "alive here": running({**HERE.tags(), **beat(RUN_GRACE_SECONDS + 60)}),
        "alive elsewhere": running({**ELSEWHERE.tags(), **beat(5)}),
        "legacy": running({PROCESS_HOST_TAG: HERE.host, PROCESS_ID_TAG: "4194303"}),
    }
    with stage_run("split", config, {}):
        pass
    for run_id in (gone, gone_trial, silent):
        assert client.get_run(run_id).info.status == "KILLED"
    tags = {run_id: client.get_run(run_id).data.tags for run_id in (gone, gone_trial, silent)}
    assert "ended without closing the run" in tags[gone][ENDED_BECAUSE_TAG]
    assert tags[gone_trial][ENDED_BECAUSE_TAG] == f"its parent run {gone} was killed"
    assert tags[silent][ENDED_BECAUSE_TAG].startswith("no heartbeat for ")
    for name, run_id in kept.items():
        assert client.get_run(run_id).info.status == "RUNNING", name


def test_a_stage_run_records_its_process_and_a_heartbeat_it_stops_at_the_end(config):
    import threading

    with stage_run("split", config, {}) as run:
        beating = [t for t in threading.enumerate() if t.name.startswith("mlflow-heartbeat-")]
        assert len(beating) == 1 and beating[0].daemon
    tags = mlflow.MlflowClient().get_run(run.run_id).data.tags
    assert ProcessIdentity.from_tags(tags) == HERE
    assert orphan_reason(tags) is None
    assert not beating[0].is_alive()


def test_the_heartbeat_refreshes_and_restores_a_run_closed_while_alive(config, capsys):
    """Another machine saw the heartbeat stall (a suspended process, a store outage) and closed
    the run; the live stage restores it on its next beat, and the false tags go."""
    experiment_id = configure(config)
    client = mlflow.MlflowClient()
    old_beat = beat(3600)
    run_id = client.create_run(experiment_id, tags={**HERE.tags(), **old_beat}).info.run_id
    child = client.create_run(experiment_id, tags={"mlflow.parentRunId": run_id}).info.run_id
    # What close_orphaned_runs on another machine does.
    client.set_tag(run_id, ENDED_BECAUSE_TAG, "no heartbeat for 3600 s")
    client.set_terminated(run_id, status="KILLED")
    client.set_tag(child, ENDED_BECAUSE_TAG, f"its parent run {run_id} was killed")
    client.set_terminated(child, status="KILLED")
    heartbeat = RunHeartbeat(run_id, mlflow.get_tracking_uri(), interval=0.2).start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and client.get_run(run_id).info.status != "RUNNING":
            time.sleep(0.2)
    finally:
        heartbeat.stop()
    restored = client.get_run(run_id)
    assert restored.info.status == "RUNNING"
    assert ENDED_BECAUSE_TAG not in restored.data.tags
    assert ENDED_BECAUSE_TAG not in client.get_run(child).data.tags
    assert restored.data.tags[HEARTBEAT_TAG] > old_beat[HEARTBEAT_TAG]  # beating again
    assert "had been closed by another process while alive" in capsys.readouterr().err


# --- Real processes ------------------------------------------------------------------------------

# A stage's run that waits for a line on stdin before it ends: a live stage, for as long as the
# test needs one.
WAITING_STAGE = """
import sys
from pneumonia.config import load_config
from pneumonia.tracking import stage_run
config = load_config(sys.argv[1])
with stage_run("split", config, {}) as run:
    print(run.run_id, flush=True)
    sys.stdin.readline()
"""


def start_waiting_stage(config, prefix: list[str] | None = None) -> tuple[subprocess.Popen, str]:
    environment = tool_environment(MLFLOW_TRACKING_URI=mlflow.get_tracking_uri())
    params = str(config.workspace / "params.yaml")
    process = subprocess.Popen(
        [*(prefix or []), sys.executable, "-c", WAITING_STAGE, params],
        cwd=config.workspace,
        env=environment,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run_id = process.stdout.readline().strip()
    if not run_id:
        process.kill()
        raise AssertionError(f"the stage did not start: {process.communicate()[1][-3000:]}")
    return process, run_id


def unshare_works() -> str | None:
    """Why `unshare --pid --fork --mount-proc` cannot run here, or None."""
    try:
        result = subprocess.run(
            ["unshare", "--pid", "--fork", "--mount-proc", "true"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except FileNotFoundError:
        return "no unshare program"
    return None if result.returncode == 0 else f"unshare failed: {result.stderr.strip()}"


@pytest.mark.slow
def test_a_run_in_another_pid_namespace_with_this_hostname_is_not_killed(config):
    """`unshare --pid --fork --mount-proc python stages/split.py`: same host name, same machine,
    its pid means nothing here. The old check (hostname + kill(pid, 0)) marked it KILLED."""
    reason = unshare_works()
    if reason:
        pytest.skip(reason)
    experiment_id = configure(config)
    client = mlflow.MlflowClient()
    # Under a shell (pid 1 there), so the stage's pid is a small number that names no process
    # here, or another one: what the old check took for a dead stage.
    namespaced = ["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", '"$@"; exit $?', "sh"]
    process, run_id = start_waiting_stage(config, namespaced)
    try:
        tags = client.get_run(run_id).data.tags
        assert tags[PROCESS_HOST_TAG] == HERE.host
        assert tags[PROCESS_NAMESPACE_TAG] != HERE.pid_namespace
        assert int(tags[PROCESS_ID_TAG]) < 10 and tags[PROCESS_ID_TAG] != str(process.pid)
        assert close_orphaned_runs(experiment_id) == []
        assert client.get_run(run_id).info.status == "RUNNING"
    finally:
        process.communicate("done\n", timeout=60)
    assert process.returncode == 0
    finished = client.get_run(run_id)
    assert finished.info.status == "FINISHED"
    assert ENDED_BECAUSE_TAG not in finished.data.tags


@pytest.mark.slow
def test_a_sigkilled_stage_run_is_closed(config):
    experiment_id = configure(config)
    process, run_id = start_waiting_stage(config)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    client = mlflow.MlflowClient()
    assert client.get_run(run_id).info.status == "RUNNING"  # as SIGKILL left it
    assert close_orphaned_runs(experiment_id) == [run_id]
    closed = client.get_run(run_id)
    assert closed.info.status == "KILLED"
    assert closed.data.tags[ENDED_BECAUSE_TAG] == (
        f"process {process.pid} on {HERE.host} ended without closing the run (killed)"
    )


# Another experiment's train stage, in its trials: one just asked (the reproduction: no
# heartbeat, no MLflow run id yet), one as the objective runs it (its owner recorded, a
# heartbeat). It tells both once the test says so.
OTHER_EXPERIMENT = """
import json, sys
import optuna
from pneumonia.config import load_config
from pneumonia.model.tuning import FRESH_STUDY_ATTRIBUTE, OWNER_ATTRIBUTE, make_storage
from pneumonia.tracking import ProcessIdentity
config = load_config(sys.argv[1])
storage = make_storage(config.train.tuning, config.project_root)
study = optuna.create_study(
    storage=storage, study_name="train@other-exp-0badc0de", direction="maximize"
)
study.set_user_attr(FRESH_STUDY_ATTRIBUTE, True)
asked, running = study.ask(), study.ask()
storage.set_trial_system_attr(
    running._trial_id, OWNER_ATTRIBUTE, ProcessIdentity.current().as_dict()
)
storage.record_heartbeat(running._trial_id)
print("asked", flush=True)
sys.stdin.readline()
study.tell(asked, 0.5)
study.tell(running, 0.6)
print(json.dumps([trial.state.name for trial in study.trials]))
"""


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_live_trial_of_another_experiment_survives_the_orphan_check_and_a_train_stage(tmp_path):
    """The issue's reproduction of `dvc queue start -j 2` failing a live trial (then
    `UpdateFinishedTrialError` in its owner): another process holds RUNNING trials of a fresh
    study in studies/optuna.db while the orphan check runs, and then a whole train stage."""
    from pneumonia.model.tuning import fail_orphaned_trials, make_storage

    store = mlflow.get_tracking_uri()
    params = write_tiny_project(
        tmp_path / "project", {"train.tuning.n_trials": 1, "train.tuning.epochs": 1}
    )
    config = load_config(params)
    environment = tool_environment(MLFLOW_TRACKING_URI=store)
    other = subprocess.Popen(
        [sys.executable, "-c", OTHER_EXPERIMENT, str(params)],
        cwd=params.parent,
        env=environment,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert other.stdout.readline().strip() == "asked", other.stderr.read()
        storage = make_storage(config.train.tuning, config.project_root)
        assert fail_orphaned_trials(storage, config.train.registered_model_name) == []
        train = subprocess.run(
            [sys.executable, str(PROJECT_ROOT / "stages" / "train.py")],
            cwd=params.parent,
            env=environment,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert train.returncode == 0, train.stdout + train.stderr
        assert "a killed run left RUNNING" not in train.stdout
    finally:
        told, errors = other.communicate("go\n", timeout=120)
    assert other.returncode == 0, errors
    assert json.loads(told) == ["COMPLETE", "COMPLETE"]


@pytest.mark.filterwarnings("ignore:optuna.visualization.matplotlib")
def test_the_trials_table_leaves_out_the_owner(tmp_path):
    """The owner identity is for the orphan check; the trials table (a DVC output) stays as it
    was."""
    from pneumonia.model.tuning import OWNER_ATTRIBUTE, log_study
    from pneumonia.tracking import StageRun

    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    study._storage.set_trial_system_attr(trial._trial_id, OWNER_ATTRIBUTE, HERE.as_dict())
    study.tell(trial, 0.5)
    table = tmp_path / "trials.csv"
    mlflow.set_experiment("trials-table")
    config = load_config(write_params(tmp_path / "project", {}))
    with mlflow.start_run() as run:
        log_study(StageRun(config, run), study, table)
    header = Path(table).read_text().splitlines()[0]
    assert "state" in header and OWNER_ATTRIBUTE not in header
