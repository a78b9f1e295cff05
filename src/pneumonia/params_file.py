"""Reading params.yaml (and `-S`-style override values) as YAML that cannot hurt the reader.

PyYAML's `safe_load` builds no objects but the plain ones, yet it still accepts what DVC refuses
(a key given twice: the last one silently wins) and what exhausts the reader: a few KB of nested
anchors and aliases (`&a [*b, *b, ...]`) expand to billions of values as soon as anything walks
them (validation, a deep copy, an error message that quotes them). Here the file is read as bytes
with a size cap, decoded as UTF-8 (a Latin-1 byte is named with its line), composed into YAML
nodes, and the node graph is checked before any Python object is built: duplicate keys, nesting
depth, and the number of values it expands to (each alias counted as a copy of its anchor).
Aliases themselves stay allowed: a bounded reuse such as one search range written once is harmless.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pneumonia.errors import PipelineError

# The project's params.yaml is about 7 KB, some 300 YAML values (keys included), 5 levels deep.
MAX_FILE_BYTES = 1_000_000
MAX_VALUES = 10_000
MAX_DEPTH = 20
# Longest excerpt of a YAML error that is quoted back (PyYAML's own snippet is shorter).
MAX_ERROR_CHARS = 300
_MERGE_TAG = "tag:yaml.org,2002:merge"


class ParamsFileError(PipelineError, ValueError):
    """The file is not UTF-8 YAML that may be read safely; the message names the file and line."""


def read_yaml_file(path: Path) -> Any:
    """The YAML document in `path`: at most MAX_FILE_BYTES, UTF-8, checked by `load_yaml`."""
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise ParamsFileError(f"{path}: cannot be read ({error.strerror or error})") from None
    if len(data) > MAX_FILE_BYTES:
        raise ParamsFileError(
            f"{path}: larger than {MAX_FILE_BYTES} bytes; a params file is a few KB"
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
        raise ParamsFileError(
            f"{path}: byte {error.start} (line {line}, column {column}) is "
            f"0x{data[error.start]:02x}, not UTF-8; save the file as UTF-8 (an editor's "
            "'Latin-1' or 'Windows-1252' encoding writes such bytes)"
        ) from None
    return load_yaml(text, str(path))


def load_yaml(text: str, source: str) -> Any:
    """The YAML document in `text` as plain Python values (None for an empty document).

    Refused, naming `source` and the line: invalid YAML, a key given twice in one mapping,
    nesting deeper than MAX_DEPTH, and a document that expands (through aliases) to more than
    MAX_VALUES values, or an alias that refers to itself.
    """
    try:
        # The reader checks every character here: a control character is a ReaderError.
        loader = _BoundedLoader(text)
    except yaml.YAMLError as error:
        raise ParamsFileError(f"{source}: not valid YAML ({_yaml_problem(error)})") from None
    loader.name = source  # what PyYAML's messages call the document
    try:
        try:
            node = loader.get_single_node()
        except _TooDeep as deep:
            raise ParamsFileError(
                f"{source}: line {deep.line}: nested deeper than {MAX_DEPTH} levels"
            ) from None
        if node is None:
            return None
        _NodeCheck(source).size(node, (), 1)
        return loader.construct_document(node)
    except yaml.YAMLError as error:
        raise ParamsFileError(f"{source}: not valid YAML ({_yaml_problem(error)})") from None
    finally:
        loader.dispose()


class _TooDeep(Exception):
    def __init__(self, line: int):
        super().__init__(line)
        self.line = line


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader whose composer stops at MAX_DEPTH levels: PyYAML composes recursively, so a
    file of 100,000 `[` would otherwise end in a RecursionError after seconds of scanning."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH + 1:
                raise _TooDeep(self.peek_event().start_mark.line + 1)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _yaml_problem(error: yaml.YAMLError) -> str:
    """`line 3, column 5: found undefined alias 'c'`: PyYAML's own text without the quoted
    snippet (a line of the file, with a caret under it, that reads badly on one line)."""
    mark = getattr(error, "problem_mark", None)
    problem = getattr(error, "problem", None)
    if mark is None or problem is None:
        return _excerpt(str(error))
    context = getattr(error, "context", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}"
    return _excerpt(f"{where}: {problem}" + (f" ({context})" if context else ""))


def _excerpt(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_ERROR_CHARS else f"{text[:MAX_ERROR_CHARS]}... [truncated]"


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(part if len(part) <= 60 else f"{part[:60]}..." for part in path) or "(top)"


class _NodeCheck:
    """One walk of the composed node graph. An alias is the very node of its anchor, so a node
    met again is not walked again: its size and height are remembered, and the walk stays
    linear in the file's size whatever the aliases multiply."""

    def __init__(self, source: str):
        self.source = source
        self.known: dict[int, tuple[int, int]] = {}  # id(node) -> (values, levels below)
        self.open: set[int] = set()  # nodes being walked: one met again is a recursive alias

    def size(self, node: yaml.Node, path: tuple[str, ...], depth: int) -> int:
        identity = id(node)
        if identity in self.open:
            raise ParamsFileError(
                f"{self.source}: line {_line(node)}: an alias at '{_dotted(path)}' refers to "
                "the value that holds it; YAML values must not contain themselves"
            )
        if identity in self.known:
            values, height = self.known[identity]
        else:
            self.open.add(identity)
            values, height = self._walk(node, path, depth)
            self.open.discard(identity)
            self.known[identity] = (values, height)
        if depth + height > MAX_DEPTH:
            raise ParamsFileError(
                f"{self.source}: line {_line(node)}: '{_dotted(path)}' is nested deeper than "
                f"{MAX_DEPTH} levels"
            )
        self._bound(values, node, path)
        return values

    def _walk(self, node: yaml.Node, path: tuple[str, ...], depth: int) -> tuple[int, int]:
        if depth > MAX_DEPTH:
            raise ParamsFileError(
                f"{self.source}: line {_line(node)}: '{_dotted(path)}' is nested deeper than "
                f"{MAX_DEPTH} levels"
            )
        values, height = 1, 0
        if isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                values += self.size(item, (*path, str(index)), depth + 1)
                height = max(height, self.known[id(item)][1] + 1)
                self._bound(values, node, path)
        elif isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], int] = {}
            for key, value in node.value:
                name = key.value if isinstance(key, yaml.ScalarNode) else "?"
                if isinstance(key, yaml.ScalarNode) and key.tag != _MERGE_TAG:
                    identity = (key.tag, key.value)
                    if identity in first:
                        raise ParamsFileError(
                            f"{self.source}: line {_line(key)}: duplicate key "
                            f"'{_dotted((*path, name))}' (first at line {first[identity]}); keep "
                            "one (DVC refuses a file with a key given twice)"
                        )
                    first[identity] = _line(key)
                for part in (key, value):
                    values += self.size(part, (*path, name), depth + 1)
                    height = max(height, self.known[id(part)][1] + 1)
                self._bound(values, node, path)
        return values, height

    def _bound(self, values: int, node: yaml.Node, path: tuple[str, ...]) -> None:
        if values > MAX_VALUES:
            raise ParamsFileError(
                f"{self.source}: line {_line(node)}: '{_dotted(path)}' expands to more than "
                f"{MAX_VALUES} values through aliases (*name); a params file holds a few hundred, "
                "so write the values out instead of repeating anchors"
            )
