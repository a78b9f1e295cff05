"""The registry calls promotion makes, and its lock.

Registry calls are tried again while the store says it is temporarily unavailable, and a store
that does not answer is one line naming the masked URI and the fix. Two promotes of one
registered model run one after the other: each holds the model's promotion lock (a registered
model `<name>.promotion-lock`, created only if absent, which the registry does atomically on a
database or a tracking server) while it reads both aliases, decides and moves the target alias.
"""

from __future__ import annotations

import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, TypeVar

import mlflow
from mlflow.exceptions import MlflowException

from pneumonia.contracts import registry_tags
from pneumonia.errors import PipelineError
from pneumonia.redaction import redact_text, redact_url, tracking_urls
from pneumonia.tracking import ProcessIdentity

# How long a promote waits for another one to release the lock (a promote takes about a second).
LOCK_WAIT_SECONDS = 60.0
# Tries of one registry call the store reports temporarily unavailable (about 15 s in all).
RETRIES = 12
T = TypeVar("T")


class PromotionError(PipelineError, ValueError):
    """An alias or the tags promotion compares are missing or untrustworthy, or the registry
    cannot be read; the message says which and why."""


def store_label() -> str:
    return redact_url(mlflow.get_tracking_uri())


def registry_failure(error: Exception, doing: str) -> PromotionError:
    """The registry did not answer (a server down or unreachable, a database that cannot be
    opened): one line with the masked URI and the fix, never "not found"."""
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    detail = redact_text(text, mlflow.get_tracking_uri(), *tracking_urls())
    return PromotionError(
        f"the model registry at {store_label()} is unreachable or failed while {doing} ({detail}); "
        "start the tracking server, or point MLFLOW_TRACKING_URI at a reachable one"
    )


def call_registry(method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A registry call, tried again while the store says it is temporarily unavailable (SQLite
    answers "database is locked" at once, without waiting, when two processes' transactions
    cross: concurrent promotes do that)."""
    for attempt in range(RETRIES):
        try:
            return method(*args, **kwargs)
        except MlflowException as error:
            if error.error_code != "TEMPORARILY_UNAVAILABLE" or attempt == RETRIES - 1:
                raise
        time.sleep(min(2.0, 0.05 * 2**attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")  # the loop returns or raises


@contextmanager
def promotion_lock(
    client: mlflow.MlflowClient, name: str, wait_seconds: float = LOCK_WAIT_SECONDS
) -> Iterator[None]:
    """Hold `name`'s promotion lock: the registered model `<name>.promotion-lock`, which the
    registry creates only if it is absent (RESOURCE_ALREADY_EXISTS otherwise, atomically on a
    database-backed store or a tracking server). Tagged with a token of this holder, re-read to
    confirm, and deleted on the way out only while it still holds that token."""
    lock = registry_tags.promotion_lock_name(name)
    token = uuid.uuid4().hex
    holder = f"pneumonia promote, process {os.getpid()} on {socket.gethostname()}"
    deadline = time.monotonic() + wait_seconds
    while True:
        # Waiting promotes poll by reading: only a lock that looks free is tried, so they do not
        # keep writing while the holder works.
        tags = _lock_tags(client, lock)
        if tags and ProcessIdentity.from_tags(tags).is_gone():
            # Its holder was killed (SIGKILL, out of memory) before it could delete the lock:
            # proven on this machine only (tracking.ProcessIdentity), never by a guess.
            _break_lock(client, lock, tags)
            tags = _lock_tags(client, lock)
        if not tags and _try_lock(client, lock, name, token, holder):
            break
        if time.monotonic() > deadline:
            tags = _lock_tags(client, lock)
            raise PromotionError(
                f"another promote of {name} has held the promotion lock for over "
                f"{wait_seconds:.0f} s ({tags.get(registry_tags.LOCK_HOLDER, 'holder unknown')}, "
                f"since {tags.get(registry_tags.LOCK_SINCE, 'unknown')}); if no promote is "
                f"running (one was killed), delete the registered model '{lock}' (MLflow UI, "
                "Models) and promote again"
            )
        time.sleep(0.05 + random.random() * 0.1)  # jitter: waiting promotes do not collide
    try:
        yield
    finally:
        try:
            if _lock_tags(client, lock).get(registry_tags.LOCK_TOKEN) == token:
                call_registry(client.delete_registered_model, lock)
        except (MlflowException, PipelineError) as problem:
            # The promote's own outcome (or error) is what to report; the next promote finds
            # the lock and, this process being gone by then, breaks it.
            print(f"promote: could not release the promotion lock {lock}: {problem}")


def _break_lock(client: mlflow.MlflowClient, lock: str, tags: dict[str, str]) -> None:
    """Delete a lock whose holder is proven gone, only while it still holds that holder's token
    (another waiter may have broken it and taken it already)."""
    if _lock_tags(client, lock).get(registry_tags.LOCK_TOKEN) != tags.get(registry_tags.LOCK_TOKEN):
        return
    try:
        call_registry(client.delete_registered_model, lock)
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise registry_failure(error, f"breaking the promotion lock {lock}") from error
    print(
        f"promote: broke the promotion lock {lock}: its holder "
        f"({tags.get(registry_tags.LOCK_HOLDER, 'unknown')}) is gone"
    )


def _try_lock(client: mlflow.MlflowClient, lock: str, name: str, token: str, holder: str) -> bool:
    """Create the lock registered model with this holder's token; False when it exists."""
    try:
        call_registry(
            client.create_registered_model,
            lock,
            tags={
                registry_tags.LOCK_TOKEN: token,
                registry_tags.LOCK_HOLDER: holder,
                registry_tags.LOCK_SINCE: datetime.now(timezone.utc).isoformat(),
                **ProcessIdentity.current().tags(),
            },
            description=f"Held by {holder} while it promotes {name}; deleted when it ends.",
        )
    except MlflowException as error:
        if error.error_code == "RESOURCE_ALREADY_EXISTS":
            return False
        raise registry_failure(error, f"taking the promotion lock of {name}") from error
    # Re-read: the lock is ours only if it holds our token.
    return _lock_tags(client, lock).get(registry_tags.LOCK_TOKEN) == token


def _lock_tags(client: mlflow.MlflowClient, lock: str) -> dict[str, str]:
    try:
        return dict(call_registry(client.get_registered_model, lock).tags)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise registry_failure(error, f"reading the promotion lock {lock}") from error
