"""The study database: its URL resolved like every store location, opened with heartbeats, and
its password kept out of messages and logged params."""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError, ProgrammingError

from pneumonia.config import TuningConfig
from pneumonia.model.tuning.orphans import RequeueStaleTrial
from pneumonia.model.tuning.records import TuningError
from pneumonia.redaction import redact_url
from pneumonia.tracking import resolve_sqlite_url

SCHEMA_ATTEMPTS = 5


def resolve_storage(url: str, project_root: Path) -> str:
    """A relative sqlite path is relative to the project root (shared by DVC temp workspaces):
    the rule of every store location (tracking.resolve_store_uri)."""
    return resolve_sqlite_url(url, project_root)


def _without_password(text: str, url: str) -> str:
    """An error message with the storage password, if any, masked."""
    try:
        password = make_url(url).password
    except (ArgumentError, ValueError):
        password = None
    return text.replace(str(password), "***") if password else text


def loggable_train_params(train_params: dict[str, Any]) -> dict[str, Any]:
    """params.yaml's train section with the storage password masked, to log to MLflow."""
    tuning = train_params.get("tuning", {})
    if not isinstance(tuning.get("storage"), str):
        return train_params
    return {**train_params, "tuning": {**tuning, "storage": redact_url(tuning["storage"])}}


def make_storage(tuning: TuningConfig, project_root: Path) -> optuna.storages.RDBStorage:
    url = resolve_storage(tuning.storage, project_root)
    # Workers starting together on an empty database all create Optuna's tables; PostgreSQL lets
    # one win and the others fail on a duplicate type or table. Those find the tables on a retry.
    attempt = 1
    while True:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url,
                    # A worker that dies mid-trial leaves a RUNNING trial; the heartbeat fails it.
                    heartbeat_interval=tuning.heartbeat_interval,
                    grace_period=tuning.grace_period,
                    heartbeat_stale_trial_callback=RequeueStaleTrial(),
                )
        except (IntegrityError, ProgrammingError):
            if attempt == SCHEMA_ATTEMPTS:
                raise
            time.sleep(0.5 * attempt)
            attempt += 1
        except (ArgumentError, ValueError, OperationalError, ImportError) as error:
            detail = _without_password(str(error).strip().splitlines()[0], url)
            raise TuningError(
                f"train.tuning.storage {redact_url(url)}: cannot open the study database "
                f"({type(error).__name__}: {detail}); check the URL and that the database "
                "server is running and reachable"
            ) from None
