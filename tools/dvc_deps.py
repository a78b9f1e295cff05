"""Derive each DVC stage's code deps from its imports, and write them into dvc.yaml.

DVC re-runs a stage only when one of its listed deps changes, so a module a stage imports but
dvc.yaml does not list can change without the stage re-running, and one it lists but never runs
re-runs it for nothing. This reads every `python stages/<name>.py` stage's import closure with
`ast` (nothing is imported or run) and rewrites only the code entries (`stages/...`, `src/...`)
of each stage's `deps:` in dvc.yaml, keeping its data deps, their order and every comment. A
folder is listed where the stage runs every Python file under it.

    python tools/dvc_deps.py            # rewrite dvc.yaml's code deps
    python tools/dvc_deps.py --check    # exit 1, naming the stages, when dvc.yaml is stale

tests/test_dvc_graph.py fails, saying to run this, when dvc.yaml differs from what it derives.
Only the standard library and PyYAML.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
# The stages derived here: the ones that run a script of stages/ with the project's Python.
STAGE_COMMAND = re.compile(r"python\s+(stages/[\w-]+\.py)")
# DVC's templating: ${paths.reports} is params.yaml's paths.reports.
INTERPOLATION = re.compile(r"\$\{\s*([\w.-]+)\s*\}")
# Only deps under these folders can cover code; data deps are checked by DVC itself.
CODE_FOLDERS = ("src", "stages")


def load_yaml(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as stream:
        return yaml.safe_load(stream)


def interpolate(text: str, params: Mapping[str, Any]) -> str:
    """Expand ${a.b} from params.yaml as DVC does, so the test compares the paths DVC sees."""

    def lookup(match: re.Match[str]) -> str:
        value: Any = params
        for key in match.group(1).split("."):
            if not isinstance(value, Mapping) or key not in value:
                raise KeyError(f"dvc.yaml uses ${{{match.group(1)}}}, which params.yaml lacks")
            value = value[key]
        return str(value)

    return INTERPOLATION.sub(lookup, text)


def entry_path(entry: str | Mapping[str, Any], params: Mapping[str, Any]) -> PurePosixPath:
    """The path of one deps/outs/metrics entry: a plain string, or a single-key mapping from the
    path to its options (`- reports/x.json: {cache: false}`)."""
    if isinstance(entry, Mapping):
        if len(entry) != 1:
            raise ValueError(f"expected a single path with its options, got {entry!r}")
        (path,) = entry
    else:
        path = entry
    # PurePosixPath drops a trailing slash and a leading ./, so equal paths compare equal.
    return PurePosixPath(interpolate(str(path), params))


def entry_paths(
    entries: Iterable[str | Mapping[str, Any]] | None, params: Mapping[str, Any]
) -> list[PurePosixPath]:
    return [entry_path(entry, params) for entry in entries or ()]


def script_stages(dvc: Mapping[str, Any]) -> dict[str, PurePosixPath]:
    """Stage name -> the stages/<name>.py script its cmd runs."""
    scripts = {}
    for name, stage in dvc.get("stages", {}).items():
        command = stage.get("cmd")
        match = STAGE_COMMAND.fullmatch(command.strip()) if isinstance(command, str) else None
        if match:
            scripts[name] = PurePosixPath(match.group(1))
    return scripts


def code_dependencies(stage: Mapping[str, Any], params: Mapping[str, Any]) -> list[PurePosixPath]:
    return [
        path
        for path in entry_paths(stage.get("deps"), params)
        if path.parts and path.parts[0] in CODE_FOLDERS
    ]


def is_covered(file: PurePosixPath, dependencies: Iterable[PurePosixPath]) -> bool:
    """A file dep covers itself, a folder dep everything under it (DVC hashes the whole folder)."""
    # is_relative_to is true for the path itself too, so this also matches a file dep exactly.
    return any(file.is_relative_to(dependency) for dependency in dependencies)


def find_in_folder(folder: Path, name: str) -> Path | None:
    """Where `name` imports from in `folder`, in Python's order: a package's __init__.py, a module
    file, or a namespace package (a folder without __init__.py, returned as the folder)."""
    package = folder / name
    if (package / "__init__.py").is_file():
        return package / "__init__.py"
    if (folder / f"{name}.py").is_file():
        return folder / f"{name}.py"
    if package.is_dir():
        return package
    return None


def find_module(name: str, search_roots: Sequence[Path]) -> Path | None:
    """The file (or namespace folder) a dotted module name loads from, or None when it is not
    project code: a third-party or standard-library module, or a project module that is gone."""
    top, *rest = name.split(".")
    for root in search_roots:
        location = find_in_folder(root, top)
        # A top-level namespace folder is more likely a stray data folder than code: Python itself
        # prefers any regular package on sys.path over it.
        if location is None or location.is_dir():
            continue
        for part in rest:
            if location.name == "__init__.py":
                location = find_in_folder(location.parent, part)
            elif location.is_dir():
                location = find_in_folder(location, part)
            else:
                return None  # a plain module has no submodules
            if location is None:
                return None
        return location
    return None


def is_project_module(name: str, search_roots: Sequence[Path]) -> bool:
    return find_module(name.split(".")[0], search_roots) is not None


def module_name(file: Path, search_roots: Sequence[Path]) -> tuple[str, bool]:
    """The dotted name a file is imported as, and whether it is a package's __init__.py (the two
    facts that relative imports are resolved against)."""
    for root in search_roots:
        if file.is_relative_to(root):
            parts = list(file.relative_to(root).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            return ".".join(parts), is_package
    raise ValueError(f"{file} is under none of {[str(root) for root in search_roots]}")


def absolute_module(node: ast.ImportFrom, importer: str, importer_is_package: bool) -> str:
    """The absolute name of `from <node.module> import ...`, relative imports included."""
    if node.level == 0:
        return node.module or ""
    package = importer.split(".") if importer_is_package else importer.split(".")[:-1]
    if node.level - 1 >= len(package):
        # Python raises here too ("attempted relative import beyond top-level package").
        raise ValueError(f"{importer}: relative import at line {node.lineno} leaves its package")
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + (node.module.split(".") if node.module else []))


# Cached: the stages share most of their modules, and each parse is the bulk of the test's time.
@cache
def imported_modules(file: Path, search_roots: tuple[Path, ...]) -> tuple[tuple[str, int], ...]:
    """Every module a file imports, with the line: module level and inside functions alike, since
    a lazy import still runs whenever its function does. `from a import b` names a.b too when b
    is a submodule rather than an attribute."""
    importer, importer_is_package = module_name(file, search_roots)
    tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
    modules = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = absolute_module(node, importer, importer_is_package)
            modules.append((base, node.lineno))
            for alias in node.names:
                submodule = f"{base}.{alias.name}" if base else alias.name
                if alias.name != "*" and find_module(submodule, search_roots) is not None:
                    modules.append((submodule, node.lineno))
    return tuple(modules)


def module_files(name: str, search_roots: Sequence[Path]) -> list[Path] | None:
    """The files importing `name` runs: its own and every enclosing package's __init__.py (a, a.b,
    a.b.c). None when some part of it resolves to no project file."""
    parts = name.split(".")
    files = []
    for length in range(1, len(parts) + 1):
        location = find_module(".".join(parts[:length]), search_roots)
        if location is None:
            return None
        if location.is_file():  # a namespace package runs no file
            files.append(location)
    return files


def import_closure(script: Path, source_folder: Path) -> tuple[set[Path], list[str]]:
    """The project files `python <script>` runs: the script, every project module it imports,
    directly or through other modules, and their packages' __init__.py files. Also the imports of
    project modules that match no file, which a stale import after a move looks like.

    Project modules live in `source_folder` (src/) or next to the script (Python puts the script's
    folder first on sys.path, which is how `import _bootstrap` works)."""
    search_roots = (source_folder.resolve(), script.parent.resolve())
    project_root = Path(os.path.commonpath(search_roots))  # to name files in messages
    executed: set[Path] = set()
    unresolved: list[str] = []
    pending = [script.resolve()]
    while pending:
        file = pending.pop()
        if file in executed:
            continue
        executed.add(file)
        for module, line in imported_modules(file, search_roots):
            files = module_files(module, search_roots)
            if files is not None:
                pending.extend(files)
            elif is_project_module(module, search_roots):
                location = file.relative_to(project_root).as_posix()
                unresolved.append(f"{module} (imported at {location}:{line})")
    return executed, unresolved


def python_files(folder: Path) -> set[Path]:
    return {file for file in folder.rglob("*.py") if "__pycache__" not in file.parts}


def as_dependencies(files: Iterable[Path], repo_root: Path) -> list[str]:
    """The dvc.yaml code entries that cover exactly `files`: the stage script and stages/ helpers
    first, then src/ in path order, a folder in place of its files where every Python file under
    it is among them."""
    remaining = {file.resolve() for file in files}
    entries: list[str] = []

    def walk(folder: Path) -> None:
        inside = python_files(folder)
        if inside and inside <= remaining:
            entries.append(folder.relative_to(repo_root).as_posix())
            remaining.difference_update(inside)
            return
        for child in sorted(folder.iterdir()):
            if child.is_dir() and child.name != "__pycache__":
                walk(child)
            elif child in remaining:
                entries.append(child.relative_to(repo_root).as_posix())
                remaining.discard(child)

    scripts = sorted(
        (file for file in remaining if file.parent == repo_root / "stages"),
        key=lambda file: (file.name.startswith("_"), file.name),
    )
    entries += [file.relative_to(repo_root).as_posix() for file in scripts]
    remaining.difference_update(scripts)
    for package in sorted((repo_root / "src").iterdir()):
        if package.is_dir() and any(file.is_relative_to(package) for file in remaining):
            walk(package)
    if remaining:  # outside stages/ and src/: a module the script's folder holds, say
        raise ValueError(f"code outside stages/ and src/: {sorted(map(str, remaining))}")
    return entries


def derived_dependencies(repo_root: Path = REPO_ROOT) -> dict[str, list[str]]:
    """Stage -> the code entries its deps should list, for every `python stages/<name>.py` stage;
    raises ValueError naming an import that matches no file (a stale import after a move)."""
    repo_root = repo_root.resolve()
    derived = {}
    for stage, script in script_stages(load_yaml(repo_root / "dvc.yaml")).items():
        files, unresolved = import_closure(repo_root / script, repo_root / "src")
        if unresolved:
            raise ValueError(f"{stage}: imports that match no file: {sorted(unresolved)}")
        derived[stage] = as_dependencies(files, repo_root)
    return derived


def listed_dependencies(repo_root: Path = REPO_ROOT) -> dict[str, list[str]]:
    """Stage -> the code entries its deps list now, in order."""
    dvc = load_yaml(repo_root / "dvc.yaml")
    params = load_yaml(repo_root / "params.yaml")
    return {
        stage: [str(path) for path in code_dependencies(dvc["stages"][stage], params)]
        for stage in script_stages(dvc)
    }


STAGE_LINE = re.compile(r"^  ([\w.-]+):\s*(#.*)?$")
DEPS_LINE = re.compile(r"^    deps:\s*(#.*)?$")
CODE_ENTRY = re.compile(rf"^      - (?:{'|'.join(CODE_FOLDERS)})/\S*\s*(#.*)?$")


def rewrite(text: str, derived: Mapping[str, Sequence[str]]) -> str:
    """dvc.yaml's text with each derived stage's code entries replaced, where the first of them
    stood (or first in its deps), everything else, comments included, as it was."""
    lines = text.splitlines(keepends=True)
    output: list[str] = []
    stage = None
    index = 0
    while index < len(lines):
        line = lines[index]
        match = STAGE_LINE.match(line)
        if match:
            stage = match.group(1)
        output.append(line)
        index += 1
        if not (DEPS_LINE.match(line) and stage in derived):
            continue
        block = []
        while index < len(lines) and (
            lines[index].startswith("      ") or not lines[index].strip()
        ):
            block.append(lines[index])
            index += 1
        trailing_blank = []
        while block and not block[-1].strip():
            trailing_blank.insert(0, block.pop())
        code_rows = [row for row, entry in enumerate(block) if CODE_ENTRY.match(entry)]
        kept = [entry for entry in block if not CODE_ENTRY.match(entry)]
        position = code_rows[0] if code_rows else 0
        new_entries = [f"      - {entry}\n" for entry in derived[stage]]
        output += kept[:position] + new_entries + kept[position:] + trailing_blank
    return "".join(output)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only say whether dvc.yaml is stale")
    arguments = parser.parse_args(argv)
    path = REPO_ROOT / "dvc.yaml"
    derived = derived_dependencies()
    stale = [stage for stage, entries in listed_dependencies().items() if entries != derived[stage]]
    if not stale:
        print("dvc.yaml: every stage's code deps are what its imports say")
        return 0
    if arguments.check:
        print(f"dvc.yaml is stale for: {', '.join(stale)}; run python tools/dvc_deps.py")
        return 1
    path.write_text(rewrite(path.read_text(encoding="utf-8"), derived), encoding="utf-8")
    print(f"dvc.yaml: code deps rewritten for {', '.join(stale)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
