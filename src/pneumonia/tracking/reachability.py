"""Reachability: a store URI whose server (or database) does not answer fails the stage at once,
in one line, instead of after MLflow's minutes of retries."""

from __future__ import annotations

import socket
from urllib.parse import urlparse

from pneumonia.errors import PipelineError
from pneumonia.redaction import redact_text, redact_url
from pneumonia.tracking.locations import REGISTRY_URI_VARIABLE, STORE_DIR, TRACKING_URI_VARIABLE

# How long a tracking or registry server (or a database behind a store URI) may take to answer
# the reachability probe at stage start, in seconds: to connect, and again to answer.
REACHABLE_TIMEOUT_SECONDS = 10.0
# Database backends a store URI may name, and their default ports (the reachability probe).
DATABASE_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}


class TrackingUnreachable(PipelineError, ConnectionError):
    """The tracking or registry server (or the database a store URI names) does not answer."""


def _probe_cause(error: BaseException, timeout: float) -> str:
    import requests

    if isinstance(error, requests.exceptions.Timeout | TimeoutError | socket.timeout):
        return f"no answer within {timeout:g} s"
    text = str(error)
    for fragment, cause in (
        ("Connection refused", "connection refused"),
        ("Name or service not known", "unknown host"),
        ("nodename nor servname", "unknown host"),
        ("No route to host", "no route to host"),
        ("Network is unreachable", "network unreachable"),
    ):
        if fragment in text:
            return cause
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    return f"{type(error).__name__}: {text.splitlines()[0][:200] if text else ''}".strip()


def check_reachable(
    uri: str, timeout: float = REACHABLE_TIMEOUT_SECONDS, variable: str = TRACKING_URI_VARIABLE
) -> None:
    """Raise TrackingUnreachable, in one line naming the URI (password masked) and the fix,
    when the server an `http(s)://` store URI names gives no HTTP answer (any status counts)
    within `timeout` seconds to connect and again to answer, or when the database server a
    `postgresql://` / `mysql://` / `mssql://` URI names takes no connection. Other URIs (local
    files, SQLite, Databricks) are not probed."""
    scheme = urlparse(uri).scheme.lower()
    what = "model registry" if variable == REGISTRY_URI_VARIABLE else "tracking"
    try:
        if scheme in ("http", "https"):
            import requests
            from mlflow.environment_variables import (
                MLFLOW_TRACKING_INSECURE_TLS,
                MLFLOW_TRACKING_SERVER_CERT_PATH,
            )

            verify: bool | str = not MLFLOW_TRACKING_INSECURE_TLS.get()
            if verify and MLFLOW_TRACKING_SERVER_CERT_PATH.get():
                verify = MLFLOW_TRACKING_SERVER_CERT_PATH.get()
            requests.get(
                f"{uri.rstrip('/')}/health",
                timeout=(timeout, timeout),
                verify=verify,
                allow_redirects=False,
            ).close()
            return
        backend = scheme.split("+")[0]
        if backend not in DATABASE_PORTS:
            return
        from sqlalchemy.engine import make_url

        try:
            parsed = make_url(uri)
        except Exception:  # a URL SQLAlchemy cannot read: MLflow's own error says why
            return
        if not parsed.host:  # a Unix socket
            return
        port = parsed.port or DATABASE_PORTS[backend]
        socket.create_connection((parsed.host, port), timeout=timeout).close()
    except OSError as error:  # requests' errors are OSErrors too
        cause = redact_text(_probe_cause(error, timeout), uri)
        raise TrackingUnreachable(
            f"{variable} {redact_url(uri)}: the {what} server is unreachable ({cause}); start "
            f"it or correct {variable}, or unset {variable} to log to the project's own store "
            f"({STORE_DIR}/)"
        ) from None
