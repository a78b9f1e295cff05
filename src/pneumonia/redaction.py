"""Secrets kept out of every message, tag and log line: passwords in store URLs.

An MLflow tracking URI (``http://user:secret@host:5000``, ``postgresql://user:secret@host/db``)
and an Optuna storage URL can carry a password. Everything the pipeline prints, raises or logs
about a store goes through :func:`redact_url`, and text that may quote a URL (an exception's
message, a traceback) through :func:`redact_text`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

MASK = "***"
# `scheme://user:password@` anywhere in a text: the password part is masked.
_USER_PASSWORD = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)[^@\s]*@")
# MLflow also reads a password from the environment (basic auth against a tracking server).
PASSWORD_VARIABLES = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


def redact_url(url: str) -> str:
    """The URL with any password masked, fit to log or print. A URL SQLAlchemy cannot parse is
    masked by pattern, so a typo never prints the password either."""
    if "://" not in url:
        return url
    if url.startswith(("http://", "https://")):
        return _USER_PASSWORD.sub(rf"\1{MASK}@", url)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        return _USER_PASSWORD.sub(rf"\1{MASK}@", url)


def _passwords(urls: Iterable[str]) -> list[str]:
    found = []
    for url in urls:
        for match in _USER_PASSWORD.finditer(url):
            password = url[match.end(1) : match.end() - 1]
            if password:
                found.append(password)
    found += [os.environ[name] for name in PASSWORD_VARIABLES if os.environ.get(name)]
    # Longest first, so a password that holds another is masked whole.
    return sorted(set(found), key=len, reverse=True)


def redact_text(text: str, *urls: str) -> str:
    """`text` with every `scheme://user:password@` masked, and every password of `urls` (and of
    MLflow's password variables) masked wherever it appears, also URL-quoted or alone."""
    from urllib.parse import quote, unquote

    text = _USER_PASSWORD.sub(rf"\1{MASK}@", text)
    for password in _passwords(urls):
        for form in {password, unquote(password), quote(unquote(password), safe="")}:
            if len(form) >= 3:  # masking "a" would garble the text, not protect anything
                text = text.replace(form, MASK)
    return text


def tracking_urls() -> tuple[str, ...]:
    """The store URLs this process may quote in a message: MLFLOW_TRACKING_URI and MLflow's
    registry URI, when set."""
    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    return tuple(os.environ[name] for name in names if os.environ.get(name))
