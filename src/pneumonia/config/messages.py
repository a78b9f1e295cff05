"""How a failed validation is told: one line per problem, each naming its dotted key.

The schema's models raise pydantic errors; this module turns them into the text a user reads:
a value echoed at most MAX_SHOWN characters long, a field's whole range from its metadata, a
did-you-mean for an unknown key, at most MAX_PROBLEMS problems listed.
"""

from __future__ import annotations

import difflib
import re
import reprlib
from collections.abc import Iterable
from typing import Any

import annotated_types
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from pneumonia.errors import PipelineError

# Longest echo of a given value in an error message, and most problems listed in one message.
MAX_SHOWN = 200
MAX_PROBLEMS = 20

_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxstring, _SHOWN.maxother, _SHOWN.maxlong = 3, 120, 120, 60
_SHOWN.maxdict = _SHOWN.maxlist = _SHOWN.maxtuple = _SHOWN.maxset = 6


class ConfigError(PipelineError, ValueError):
    """A param in params.yaml is missing or out of range; the message names its key."""


class FieldError(ValueError):
    """A cross-field check's failure, naming the (dotted) key it blames, relative to the model
    that raised it."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def shown(value: Any) -> str:
    """repr(value) for a message, at most MAX_SHOWN characters: reprlib abbreviates long text and
    big or nested values without building their whole repr, then the result is cut."""
    text = _SHOWN.repr(value)
    return text if len(text) <= MAX_SHOWN else f"{text[:MAX_SHOWN]}...[truncated]"


def _field(root: type[BaseModel], location: tuple) -> tuple[FieldInfo | None, type | None]:
    """The FieldInfo at a validation error's location, and the model that holds (or would hold,
    for an unknown key) the last key."""
    model: type[BaseModel] | None = root
    holder: type[BaseModel] | None = root
    info = None
    for part in location:
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return None, model
        holder, info = model, model.model_fields[part]
        annotation = info.annotation
        nested = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        model = annotation if nested else None
    return info, holder


def bounds_text(metadata: Iterable[Any]) -> str | None:
    """`in [1, 7]`, `in (0, 1)`, `>= 0` ...: the range a field's ge/gt/le/lt metadata allow (None
    when it has none); the messages and docs/parameters.md both say a range this way."""
    low = high = None
    for item in metadata:
        if isinstance(item, annotated_types.Ge):
            low = f"[{item.ge}"
        elif isinstance(item, annotated_types.Gt):
            low = f"({item.gt}"
        elif isinstance(item, annotated_types.Le):
            high = f"{item.le}]"
        elif isinstance(item, annotated_types.Lt):
            high = f"{item.lt})"
    if low and high:
        return f"in {low}, {high}"
    if low:
        return f"{'>=' if low[0] == '[' else '>'} {low[1:]}"
    if high:
        return f"{'<=' if high[-1] == ']' else '<'} {high[:-1]}"
    return None


def _bounds(info: FieldInfo | None, context: dict[str, Any]) -> str:
    """A field's whole range, from its metadata (else the one bound the error names)."""
    named = [
        annotated_types.Ge(context["ge"]) if "ge" in context else None,
        annotated_types.Gt(context["gt"]) if "gt" in context else None,
        annotated_types.Le(context["le"]) if "le" in context else None,
        annotated_types.Lt(context["lt"]) if "lt" in context else None,
    ]
    return (bounds_text(info.metadata) if info is not None else None) or bounds_text(named) or ""


# Keys an older params.yaml has that now live elsewhere: the error names the new place.
MOVED_KEYS = {
    "preprocess." + "image_size": "preprocess.image.size",
    **{
        f"preprocess.{key}": f"preprocess.image.{key}"
        for key in ("resize", "clahe", "clahe_clip_limit", "clahe_tile_grid")
    },
    **{f"preprocess.{key}": f"preprocess.limits.{key}" for key in ("max_pixels", "max_file_bytes")},
}


def _did_you_mean(key: str, model: type[BaseModel] | None) -> str:
    if model is None:
        return ""
    known = list(model.model_fields)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"{hint} (known: {', '.join(known)})"


def _describe(error: dict[str, Any], root: type[BaseModel], prefix: str) -> str:
    location = tuple(error["loc"])
    kind, given = error["type"], error.get("input")
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, FieldError):
        location = (*location, *cause.key.split("."))
    # An unknown key is echoed too: a long one is cut like any value.
    key = ".".join(
        str(part) if len(str(part)) <= 60 else f"{str(part)[:60]}..."
        for part in (*([prefix] if prefix else []), *location)
    )
    info, holder = _field(root, location)
    if kind == "extra_forbidden":
        if key in MOVED_KEYS:
            return f"'{key}' has moved to '{MOVED_KEYS[key]}' (see docs/parameters.md)"
        return f"unknown key '{key}'{_did_you_mean(str(location[-1]), holder)}"
    if kind == "missing":
        return f"'{key}' is missing"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return f"'{key}' must be {_bounds(info, error['ctx'])}, got {shown(given)}"
    if kind == "literal_error":
        expected = re.findall(r"'([^']*)'", error["ctx"]["expected"])
        # YAML 1.1 reads on/off/yes/no unquoted as booleans.
        quote = (
            "; quote it in YAML, as YAML reads it as a boolean" if isinstance(given, bool) else ""
        )
        return f"'{key}' must be one of {', '.join(expected)}, got {shown(given)}{quote}"
    if kind in ("int_type", "int_from_float"):
        return f"'{key}' must be an integer, got {shown(given)} ({type(given).__name__})"
    if kind == "float_type":
        return f"'{key}' must be a number, got {shown(given)} ({type(given).__name__})"
    if kind == "finite_number":
        return f"'{key}' must be a finite number, got {shown(given)}"
    if kind == "bool_type":
        return f"'{key}' must be true or false, got {shown(given)}"
    if kind == "string_type":
        return f"'{key}' must be text, got {shown(given)} ({type(given).__name__})"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"'{key}' must be a mapping of keys, got {shown(given)}"
    if kind in ("tuple_type", "too_short", "too_long"):
        return f"'{key}' must be a list ({error['msg'].lower()}), got {shown(given)}"
    if kind == "string_too_short":
        return f"'{key}' must not be empty"
    if kind == "string_too_long":
        limit = error["ctx"]["max_length"]
        return f"'{key}' must be at most {limit} characters, got {len(given)}"
    if kind == "string_pattern_mismatch":
        return f"'{key}' must look like owner/name, got {shown(given)}"
    if kind == "value_error" and cause is not None:
        return f"'{key}' {cause}"
    return f"'{key}': {error['msg']}, got {shown(given)}"


def describe_errors(error: ValidationError, root: type[BaseModel], prefix: str = "") -> str:
    """One line per problem, each naming its dotted key."""
    errors = error.errors()
    # A list whose item failed also fails as a whole (too short after validation): report the
    # item only.
    held = {tuple(item["loc"])[:length] for item in errors for length in range(len(item["loc"]))}
    errors = [item for item in errors if tuple(item["loc"]) not in held]
    lines = list(dict.fromkeys(_describe(item, root, prefix) for item in errors))
    more = len(lines) - MAX_PROBLEMS
    if more > 0:
        lines = [*lines[:MAX_PROBLEMS], f"and {more} more problem(s)"]
    return "params.yaml: " + "; ".join(lines)
