"""MLflow tracking shared by every stage: one run per stage execution, in one local store.

Where runs go (`use_project_store`), one rule for every store location:

- By default, a SQLite database under ``<project>/mlruns/`` with artifacts beside it
  (``mlruns/artifacts``), resolved from the project root, so ``dvc exp run --temp`` and
  ``--queue`` (which run in ``<project>/.dvc/tmp/exps/...``, deleted afterwards) log to the same
  place.
- ``MLFLOW_TRACKING_URI`` (and ``MLFLOW_REGISTRY_URI``) override it. A relative SQLite URI
  (``sqlite:///mlruns/mlflow.db``), a relative ``file:`` URI or a bare relative path is relative
  to the project root too, never to the working folder; a SQLite store keeps its artifacts in
  ``artifacts/`` beside its database. A tracking server (``http://host:5000``) chooses where its
  artifacts go; one that does not answer within ``REACHABLE_TIMEOUT_SECONDS`` fails the stage
  with one line (`TrackingUnreachable`), instead of MLflow's minutes of retries.
- MLflow records an experiment's artifact location as an absolute path, so a project copied or
  moved with its store would log into the original's folder. A local store whose experiments
  point at an ``artifacts/`` folder beside another database is re-pointed at its own
  (`relocate_copied_store`).

Which runs are orphaned (`close_orphaned_runs`): only on positive evidence. Each stage run
records its process (`ProcessIdentity`: boot id, PID namespace, pid, and the pid's start time)
and a heartbeat tag that a daemon thread refreshes every ``RUN_HEARTBEAT_SECONDS``
(`RunHeartbeat`). A RUNNING run is ended as KILLED when its process, on this machine (same boot
id) and in this PID namespace, is gone (no such pid, or another process under that pid), or when
its heartbeat is older than ``RUN_GRACE_SECONDS``. Runs from before these tags (a hostname and a
pid only) are left alone: a hostname and a pid prove nothing across containers, PID namespaces
or machines. A live stage whose run was closed all the same (its heartbeat stalled past the
grace period: a suspended process, an outage of the tracking server) restores it on its next
heartbeat. Heartbeats are compared with this machine's clock: hosts that share a tracking server
need clocks within a few minutes of each other (NTP).

Passwords in store URIs never reach a message, tag, artifact or printed traceback
(`pneumonia.redaction`).

The package, one module per concern: `locations` (the rule for store URIs, the project's store,
a copied store re-pointed), `reachability` (a server that does not answer, in one line), `store`
(MLflow pointed at the store this process logs to), `liveness` (process identity, heartbeat,
orphaned runs), `provenance` (content hashes, git state, run names) and `stage` (the stage run,
its experiment, description and recorded failure). Every name is importable from here.
"""

from __future__ import annotations

from pneumonia.tracking.liveness import (
    ENDED_BECAUSE_TAG,
    HEARTBEAT_TAG,
    PROCESS_BOOT_TAG,
    PROCESS_HOST_TAG,
    PROCESS_ID_TAG,
    PROCESS_NAMESPACE_TAG,
    PROCESS_START_TAG,
    RUN_GRACE_SECONDS,
    RUN_HEARTBEAT_SECONDS,
    ProcessIdentity,
    RunHeartbeat,
    close_orphaned_runs,
    heartbeat_value,
    orphan_reason,
    utc_now,
)
from pneumonia.tracking.locations import (
    ARTIFACT_LOCATION_COLUMNS,
    ARTIFACTS_DIR,
    DATABASE_NAME,
    NAMED_STORES,
    REGISTRY_URI_VARIABLE,
    STORE_DIR,
    TRACKING_URI_VARIABLE,
    StoreLocationError,
    artifact_root,
    relocate_copied_store,
    resolve_sqlite_url,
    resolve_store_uri,
    sqlite_database,
    store_locations,
)
from pneumonia.tracking.provenance import (
    DVC_ENVIRONMENT_TAGS,
    NO_GIT_LABEL,
    content_hash,
    git_state,
    run_label,
    run_name,
)
from pneumonia.tracking.reachability import (
    DATABASE_PORTS,
    REACHABLE_TIMEOUT_SECONDS,
    TrackingUnreachable,
    check_reachable,
)
from pneumonia.tracking.stage import (
    ERROR_TAG,
    ERROR_TRACEBACK_ARTIFACT,
    EXPERIMENT_DESCRIPTION,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    MAX_EXPERIMENT_TAG_CHARS,
    MAX_RUN_TAG_CHARS,
    NOTE_TAG,
    StageRun,
    clip,
    configure,
    flatten,
    record_failure,
    stage_run,
)
from pneumonia.tracking.store import (
    install_redacting_excepthook,
    use_project_store,
)

__all__ = [
    "ARTIFACTS_DIR",
    "ARTIFACT_LOCATION_COLUMNS",
    "DATABASE_NAME",
    "DATABASE_PORTS",
    "DVC_ENVIRONMENT_TAGS",
    "ENDED_BECAUSE_TAG",
    "ERROR_TAG",
    "ERROR_TRACEBACK_ARTIFACT",
    "EXPERIMENT_DESCRIPTION",
    "EXPERIMENT_KIND",
    "EXPERIMENT_KIND_TAG",
    "HEARTBEAT_TAG",
    "MAX_EXPERIMENT_TAG_CHARS",
    "MAX_RUN_TAG_CHARS",
    "NAMED_STORES",
    "NOTE_TAG",
    "NO_GIT_LABEL",
    "PROCESS_BOOT_TAG",
    "PROCESS_HOST_TAG",
    "PROCESS_ID_TAG",
    "PROCESS_NAMESPACE_TAG",
    "PROCESS_START_TAG",
    "REACHABLE_TIMEOUT_SECONDS",
    "REGISTRY_URI_VARIABLE",
    "RUN_GRACE_SECONDS",
    "RUN_HEARTBEAT_SECONDS",
    "STORE_DIR",
    "TRACKING_URI_VARIABLE",
    "ProcessIdentity",
    "RunHeartbeat",
    "StageRun",
    "StoreLocationError",
    "TrackingUnreachable",
    "artifact_root",
    "check_reachable",
    "clip",
    "close_orphaned_runs",
    "configure",
    "content_hash",
    "flatten",
    "git_state",
    "heartbeat_value",
    "install_redacting_excepthook",
    "orphan_reason",
    "record_failure",
    "relocate_copied_store",
    "resolve_sqlite_url",
    "resolve_store_uri",
    "run_label",
    "run_name",
    "sqlite_database",
    "stage_run",
    "store_locations",
    "use_project_store",
    "utc_now",
]
