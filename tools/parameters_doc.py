"""Write docs/parameters.md from the params.yaml schema: a table per section with each key's type,
the bounds its field declares, its value in the committed params.yaml (the default) and its
description.

    python tools/parameters_doc.py            # rewrite docs/parameters.md
    python tools/parameters_doc.py --check    # exit 1, saying what to run, when it is stale

The facts come from where they are declared: descriptions and bounds from the pydantic schema
(src/pneumonia/config/: a field's `description`, its ge/gt/le/lt, min/max length and pattern, a
Literal's choices, a PairWithin's range; a section's docstring heads its table), the defaults
from params.yaml, and for the search space the log scale and condition of each parameter from
SEARCH_SPACE (src/pneumonia/model/tuning/search_space.py). The prose that is not about one param
is HEADER and FOOTER below. tests/test_parameters_doc.py fails, saying to run this, when
docs/parameters.md differs from what it writes.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel
from pydantic.fields import FieldInfo

from pneumonia.config import fields, schema
from pneumonia.config.messages import bounds_text

REPO_ROOT = Path(__file__).resolve().parents[1]

DOCUMENT = Path("docs/parameters.md")
TOOL = "python tools/parameters_doc.py"

HEADER = f"""\
# Parameters (`params.yaml`)

Part of the [README](../README.md): every key of `params.yaml`, its type and bounds, its value in
the committed `params.yaml` (the default) and what it does.

This page is written by `{TOOL}` from the schema (`src/pneumonia/config/`:
each field's description and bounds, each section's docstring), `params.yaml` and the search
space's table (`SEARCH_SPACE`); to change it, change those and run the tool
(`tests/test_parameters_doc.py` fails while the page is stale).
"""

FOOTER = """\
## Validation

Every path under `paths` (and a SQLite `train.tuning.storage`) must stay inside the project:
relative to the folder of `params.yaml`, with no `..`, `~` or absolute path, and not through a
symbolic link out; the pipeline writes and deletes there, so anything else is refused at load.

Every param is validated before any work, against one schema (`src/pneumonia/config/`,
pydantic): types are strict (`true` is not 1, `"5"` is not 5), choices and bounds are checked,
and so are the checks that span fields (`train.model.depth`, or a backbone's minimum, against
`preprocess.image.size`, `train.model.weights` against the architecture,
`grace_period` against `heartbeat_interval`, the two registered names). An unknown key or section
is refused with a did-you-mean:

```
$ pneumonia check-params     # with `thresold: youden` under evaluate
error: params.yaml: 'evaluate.threshold' is missing; unknown key 'evaluate.thresold'; did you
mean 'threshold'? (known: threshold, bootstrap, confidence, seed, calibration_bins, ...)
```

A key of an older `params.yaml` that has moved is named with its new place: `preprocess.image_size`
is now `preprocess.image.size` (and `resize`, `clahe*` are under `preprocess.image`),
`preprocess.max_pixels` and `max_file_bytes` are under `preprocess.limits`.

`pneumonia check-params` validates `params.yaml` and prints it resolved; the `validate` stage does
the same inside `dvc repro` and `dvc exp run`, so `dvc exp run -S +evalute.threshold=0.3` fails
instead of changing nothing. The file is read as UTF-8 with duplicate keys refused and YAML
aliases bounded, and paths the pipeline deletes or rewrites are kept off the project's own
folders ([safety.md](safety.md)). The YAML names are the Python names: `train.model.depth` in
`params.yaml` is `config.train.model.depth` in the code.
"""

SEARCH_SPACE_SECTION = "train.tuning.search_space"
# What a validator of the schema lets through, for the validators whose rule has no metadata.
VALIDATOR_WORDS = {
    fields.inside_project: "a path inside the project",
    fields.printable: "no control characters",
    fields._registered_model_name: "letters, digits, `.`, `_`, `-`",
}
# Types the schema parses from params.yaml's text in a validator of their own.
PARSED_TYPES = {schema.ThresholdRule: "text or number"}
SCALAR_NAMES = {bool: "bool", int: "integer", float: "number", str: "text"}


def is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, fields.Section)


def unwrap(annotation: Any, metadata: Sequence[Any] = ()) -> tuple[Any, list[Any]]:
    """A type without its Annotated layers, and the metadata those held (a Field's own
    constraints included)."""
    collected = list(metadata)
    while typing.get_origin(annotation) is Annotated:
        annotation, *extra = typing.get_args(annotation)
        collected = extra + collected
    flat: list[Any] = []
    for item in collected:
        flat.extend(item.metadata if isinstance(item, FieldInfo) else [item])
    return annotation, flat


def constraints(metadata: Sequence[Any]) -> list[str]:
    """The bounds that metadata declares, in words."""
    words = []
    bounds = bounds_text(metadata)
    if bounds:
        words.append(bounds)
    for item in metadata:
        minimum, maximum = getattr(item, "min_length", None), getattr(item, "max_length", None)
        pattern = getattr(item, "pattern", None)
        if minimum == 1:
            words.append("not empty")
        elif minimum:
            words.append(f"at least {minimum} long")
        if maximum:
            words.append(f"at most {maximum} characters")
        if pattern:
            words.append(f"matches `{pattern}`")
        if isinstance(item, AfterValidator):
            if isinstance(item.func, fields.PairWithin):
                within = item.func
                words.append(f"low <= high, in [{within.lowest}, {within.highest}]")
            elif item.func in VALIDATOR_WORDS:
                words.append(VALIDATOR_WORDS[item.func])
    return words


def describe_type(annotation: Any, metadata: Sequence[Any] = ()) -> tuple[str, str]:
    """(type, allowed) of a field: `integer`, `in [1, 7]`; `choice`, `` `adam`, `rmsprop` ``."""
    annotation, metadata = unwrap(annotation, metadata)
    allowed = constraints(metadata)
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        kind = "choice"
        allowed.insert(0, ", ".join(f"`{choice}`" for choice in arguments))
    elif origin in (typing.Union, types.UnionType):
        kind = " or ".join(union_part(part) for part in arguments)
    elif origin is tuple and len(arguments) == 2 and arguments[1] is not Ellipsis:
        kind = "[low, high]"
    elif origin is tuple:
        item_kind, item_allowed = describe_type(arguments[0])
        kind = "list" if item_kind == "choice" else f"list of {item_kind}"
        each = "each one of" if item_kind == "choice" else "each"
        allowed.insert(0, f"{each} {item_allowed}" if item_allowed else "")
    elif annotation in PARSED_TYPES:
        kind = PARSED_TYPES[annotation]
    else:
        kind = SCALAR_NAMES[annotation]
    return kind, "; ".join(word for word in allowed if word)


def union_part(annotation: Any) -> str:
    """One alternative of a union in words: its choices, or its type and bounds."""
    kind, allowed = describe_type(annotation)
    return allowed if kind == "choice" else " ".join(filter(None, (kind, allowed)))


def yaml_text(value: Any) -> str:
    """A params.yaml value as one would write it there."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, list):
        return f"[{', '.join(yaml_text(item) for item in value)}]"
    return repr(value)


def search_space_words() -> dict[str, tuple[str, str]]:
    """Search-space key -> what SEARCH_SPACE says of it, before and after its description: its
    condition, then its log scale and the hyperparameter a trial sets."""
    # Imported here: pneumonia.model.tuning loads TensorFlow (seconds), and only this needs it.
    from pneumonia.model.tuning.search_space import SEARCH_SPACE

    return {
        parameter.name: (
            f"{parameter.only.description}: " if parameter.only else "",
            ("; drawn on a log scale" if parameter.log else "")
            + f"; a trial sets `train.{parameter.path}`",
        )
        for parameter in SEARCH_SPACE
    }


def cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def section_lines(
    model: type[BaseModel],
    prefix: str,
    values: Mapping[str, Any],
    depth: int,
    searched: Mapping[str, tuple[str, str]],
) -> Iterator[str]:
    """The heading, docstring and table of one section, then its subsections."""
    yield f"{'#' * (depth + 1)} `{prefix}`"
    yield ""
    yield cell(inspect.cleandoc(model.__doc__ or ""))
    yield ""
    yield "| key | type | allowed | default | meaning |"
    yield "| --- | --- | --- | --- | --- |"
    subsections = []
    for name, info in model.model_fields.items():
        if is_section(info.annotation):
            subsections.append((name, info.annotation))
            continue
        kind, allowed = describe_type(info.annotation, info.metadata)
        meaning = info.description or ""
        if prefix == SEARCH_SPACE_SECTION and name in searched:
            before, after = searched[name]
            meaning = f"{before}{meaning}{after}"
        default = yaml_text(values[name])
        yield (
            f"| `{prefix}.{name}` | {cell(kind)} | {cell(allowed)} | `{cell(default)}` | "
            f"{cell(meaning)} |"
        )
    for name, annotation in subsections:
        yield ""
        yield from section_lines(annotation, f"{prefix}.{name}", values[name], depth + 1, searched)


def render(repo_root: Path = REPO_ROOT) -> str:
    """docs/parameters.md as the schema and params.yaml say it should read."""
    with (repo_root / "params.yaml").open(encoding="utf-8") as stream:
        params = yaml.safe_load(stream)
    searched = search_space_words()
    sections = list(schema.Params.model_fields.items())
    contents = ", ".join(f"[`{name}`](#{name})" for name, _ in sections)
    lines = [HEADER, f"Sections: {contents}, and [validation](#validation).", ""]
    for name, info in sections:
        lines += [*section_lines(info.annotation, name, params[name], 1, searched), ""]
    return "\n".join(lines) + FOOTER


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say whether the page is stale")
    arguments = parser.parse_args(argv)
    path = REPO_ROOT / DOCUMENT
    expected = render(REPO_ROOT)
    if path.is_file() and path.read_text(encoding="utf-8") == expected:
        print(f"{DOCUMENT}: up to date with the schema and params.yaml")
        return 0
    if arguments.check:
        print(f"{DOCUMENT} is stale (the schema or params.yaml changed); run {TOOL}")
        return 1
    path.write_text(expected, encoding="utf-8")
    print(f"{DOCUMENT}: rewritten from the schema and params.yaml")
    return 0


if __name__ == "__main__":
    sys.exit(main())
