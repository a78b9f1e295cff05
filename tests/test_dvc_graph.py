"""dvc.yaml must not go stale: its deps and outs are checked against the code itself.

DVC re-runs a stage only when one of its listed deps changes. A module that a stage imports but
dvc.yaml does not list is code that can change without the stage re-running, so the pipeline
reports stale results as fresh. These tests derive each stage's code deps from its imports and
each stage's outs from pneumonia.contracts.paths, and fail on any drift, naming what to fix.

Only the standard library and PyYAML: the imports are read with `ast`, which runs nothing, so
each test takes a fraction of a second and none loads TensorFlow.
"""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields
from functools import cache
from itertools import pairwise
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "pneumonia"
# The stages this module checks: the ones that run a script of stages/ with the project's Python.
STAGE_COMMAND = re.compile(r"python\s+(stages/[\w-]+\.py)")
# DVC's templating: ${paths.reports} is params.yaml's paths.reports.
INTERPOLATION = re.compile(r"\$\{\s*([\w.-]+)\s*\}")
# Only deps under these folders can cover code; data deps are checked by DVC itself.
CODE_FOLDERS = ("src", "stages")
# What the train stage must not depend on: plots and reports (evaluation) and the file I/O of the
# data stages (data). Editing either must not re-run a 15-30 minute training.
TRAIN_FORBIDDEN_FOLDERS = (
    PurePosixPath("src/pneumonia/evaluation"),
    PurePosixPath("src/pneumonia/data"),
    # Evaluate's side of the contracts: editing it must not re-run training either.
    PurePosixPath("src/pneumonia/contracts/operating_point.py"),
)


def _load_yaml(path: Path) -> dict[str, Any]:
    with path.open(encoding="utf-8") as stream:
        return yaml.safe_load(stream)


def _interpolate(text: str, params: Mapping[str, Any]) -> str:
    """Expand ${a.b} from params.yaml as DVC does, so the test compares the paths DVC sees."""

    def lookup(match: re.Match[str]) -> str:
        value: Any = params
        for key in match.group(1).split("."):
            if not isinstance(value, Mapping) or key not in value:
                raise KeyError(f"dvc.yaml uses ${{{match.group(1)}}}, which params.yaml lacks")
            value = value[key]
        return str(value)

    return INTERPOLATION.sub(lookup, text)


def _entry_path(entry: str | Mapping[str, Any], params: Mapping[str, Any]) -> PurePosixPath:
    """The path of one deps/outs/metrics entry: a plain string, or a single-key mapping from the
    path to its options (`- reports/x.json: {cache: false}`)."""
    if isinstance(entry, Mapping):
        if len(entry) != 1:
            raise ValueError(f"expected a single path with its options, got {entry!r}")
        (path,) = entry
    else:
        path = entry
    # PurePosixPath drops a trailing slash and a leading ./, so equal paths compare equal.
    return PurePosixPath(_interpolate(str(path), params))


def _entry_paths(
    entries: Iterable[str | Mapping[str, Any]] | None, params: Mapping[str, Any]
) -> list[PurePosixPath]:
    return [_entry_path(entry, params) for entry in entries or ()]


def _script_stages(dvc: Mapping[str, Any]) -> dict[str, PurePosixPath]:
    """Stage name -> the stages/<name>.py script its cmd runs."""
    scripts = {}
    for name, stage in dvc.get("stages", {}).items():
        command = stage.get("cmd")
        match = STAGE_COMMAND.fullmatch(command.strip()) if isinstance(command, str) else None
        if match:
            scripts[name] = PurePosixPath(match.group(1))
    return scripts


def _code_dependencies(stage: Mapping[str, Any], params: Mapping[str, Any]) -> list[PurePosixPath]:
    return [
        path
        for path in _entry_paths(stage.get("deps"), params)
        if path.parts and path.parts[0] in CODE_FOLDERS
    ]


def _is_covered(file: PurePosixPath, dependencies: Iterable[PurePosixPath]) -> bool:
    """A file dep covers itself, a folder dep everything under it (DVC hashes the whole folder)."""
    # is_relative_to is true for the path itself too, so this also matches a file dep exactly.
    return any(file.is_relative_to(dependency) for dependency in dependencies)


def _find_in_folder(folder: Path, name: str) -> Path | None:
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


def _find_module(name: str, search_roots: Sequence[Path]) -> Path | None:
    """The file (or namespace folder) a dotted module name loads from, or None when it is not
    project code: a third-party or standard-library module, or a project module that is gone."""
    top, *rest = name.split(".")
    for root in search_roots:
        location = _find_in_folder(root, top)
        # A top-level namespace folder is more likely a stray data folder than code: Python itself
        # prefers any regular package on sys.path over it.
        if location is None or location.is_dir():
            continue
        for part in rest:
            if location.name == "__init__.py":
                location = _find_in_folder(location.parent, part)
            elif location.is_dir():
                location = _find_in_folder(location, part)
            else:
                return None  # a plain module has no submodules
            if location is None:
                return None
        return location
    return None


def _is_project_module(name: str, search_roots: Sequence[Path]) -> bool:
    return _find_module(name.split(".")[0], search_roots) is not None


def _module_name(file: Path, search_roots: Sequence[Path]) -> tuple[str, bool]:
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


def _absolute_module(node: ast.ImportFrom, importer: str, importer_is_package: bool) -> str:
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
def _imported_modules(file: Path, search_roots: tuple[Path, ...]) -> tuple[tuple[str, int], ...]:
    """Every module a file imports, with the line: module level and inside functions alike, since
    a lazy import still runs whenever its function does. `from a import b` names a.b too when b
    is a submodule rather than an attribute."""
    importer, importer_is_package = _module_name(file, search_roots)
    tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
    modules = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute_module(node, importer, importer_is_package)
            modules.append((base, node.lineno))
            for alias in node.names:
                submodule = f"{base}.{alias.name}" if base else alias.name
                if alias.name != "*" and _find_module(submodule, search_roots) is not None:
                    modules.append((submodule, node.lineno))
    return tuple(modules)


def _module_files(name: str, search_roots: Sequence[Path]) -> list[Path] | None:
    """The files importing `name` runs: its own and every enclosing package's __init__.py (a, a.b,
    a.b.c). None when some part of it resolves to no project file."""
    parts = name.split(".")
    files = []
    for length in range(1, len(parts) + 1):
        location = _find_module(".".join(parts[:length]), search_roots)
        if location is None:
            return None
        if location.is_file():  # a namespace package runs no file
            files.append(location)
    return files


def _import_closure(script: Path, source_folder: Path) -> tuple[set[Path], list[str]]:
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
        for module, line in _imported_modules(file, search_roots):
            files = _module_files(module, search_roots)
            if files is not None:
                pending.extend(files)
            elif _is_project_module(module, search_roots):
                location = file.relative_to(project_root).as_posix()
                unresolved.append(f"{module} (imported at {location}:{line})")
    return executed, unresolved


def _unit(module: str) -> str:
    """The unit a module of the package belongs to: its subpackage (pneumonia.model.training ->
    model), its own name for a top-level module (pneumonia.config -> config), and __init__ for
    the package's own __init__.py."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _unit_graph(source_folder: Path, package: str) -> dict[str, dict[str, str]]:
    """Unit -> {unit it imports: one import that makes the edge, as `file:line imports module`},
    over every module of the package, imports inside functions included."""
    search_roots = (source_folder.resolve(),)
    graph: dict[str, dict[str, str]] = {}
    for file in sorted((source_folder / package).resolve().rglob("*.py")):
        importer, _ = _module_name(file, search_roots)
        edges = graph.setdefault(_unit(importer), {})
        for module, line in _imported_modules(file, search_roots):
            if module != package and not module.startswith(f"{package}."):
                continue
            target = _unit(module)
            if target != _unit(importer) and target not in edges:
                location = file.relative_to(source_folder.resolve().parent).as_posix()
                edges[target] = f"{location}:{line} imports {module}"
    return graph


def _find_cycle(graph: Mapping[str, Mapping[str, str]]) -> list[str] | None:
    """One cycle of the graph as [a, b, ..., a], or None: a depth-first search, in sorted order so
    a failure reads the same on every run."""
    finished: set[str] = set()
    path: list[str] = []

    def visit(unit: str) -> list[str] | None:
        if unit in path:
            return [*path[path.index(unit) :], unit]
        if unit in finished:
            return None
        path.append(unit)
        for target in sorted(graph.get(unit, {})):
            cycle = visit(target)
            if cycle:
                return cycle
        path.pop()
        finished.add(unit)
        return None

    for unit in sorted(graph):
        cycle = visit(unit)
        if cycle:
            return cycle
    return None


def _missing_code_dependencies(repo_root: Path) -> dict[str, list[str]]:
    """Stage -> the project files its script runs that dvc.yaml's deps do not cover (and imports
    that match no file), for every `python stages/<name>.py` stage of repo_root's dvc.yaml."""
    repo_root = repo_root.resolve()
    dvc = _load_yaml(repo_root / "dvc.yaml")
    params = _load_yaml(repo_root / "params.yaml")
    scripts = _script_stages(dvc)
    assert scripts, "no dvc.yaml stage runs `python stages/<name>.py`: nothing would be checked"
    missing = {}
    for stage, script in scripts.items():
        files, unresolved = _import_closure(repo_root / script, repo_root / "src")
        dependencies = _code_dependencies(dvc["stages"][stage], params)
        relative = (PurePosixPath(file.relative_to(repo_root).as_posix()) for file in files)
        problems = sorted(str(file) for file in relative if not _is_covered(file, dependencies))
        problems += [f"unresolved import: {module}" for module in sorted(unresolved)]
        if problems:
            missing[stage] = problems
    return missing


def test_every_stage_depends_on_the_code_it_imports() -> None:
    missing = _missing_code_dependencies(REPO_ROOT)
    report = "\n".join(
        f"  {stage}:\n" + "\n".join(f"    - {file}" for file in files)
        for stage, files in missing.items()
    )
    assert not missing, (
        "dvc.yaml stages run code their deps do not list; add each file (or its folder) to the "
        f"stage's deps:\n{report}"
    )


def test_train_does_not_depend_on_evaluation_or_the_data_stages() -> None:
    dvc = _load_yaml(REPO_ROOT / "dvc.yaml")
    params = _load_yaml(REPO_ROOT / "params.yaml")
    script = _script_stages(dvc)["train"]
    files, _ = _import_closure(REPO_ROOT / script, REPO_ROOT / "src")
    relative = (PurePosixPath(file.relative_to(REPO_ROOT).as_posix()) for file in files)
    imported = sorted(
        str(file)
        for file in relative
        if any(file.is_relative_to(folder) for folder in TRAIN_FORBIDDEN_FOLDERS)
    )
    # A dep on a folder above them (src/pneumonia) would re-run train on their edits just the same.
    listed = sorted(
        str(dependency)
        for dependency in _code_dependencies(dvc["stages"]["train"], params)
        if any(
            dependency.is_relative_to(folder) or folder.is_relative_to(dependency)
            for folder in TRAIN_FORBIDDEN_FOLDERS
        )
    )
    forbidden = " or ".join(f"{folder}/" for folder in TRAIN_FORBIDDEN_FOLDERS)
    problems = [f"{script} runs {file}" for file in imported]
    problems += [f"dvc.yaml's train deps list {dependency}" for dependency in listed]
    assert not problems, f"train must not depend on {forbidden}:\n" + "\n".join(
        f"  - {problem}" for problem in problems
    )


def test_subpackages_depend_one_way() -> None:
    graph = _unit_graph(REPO_ROOT / "src", PACKAGE)
    assert len(graph) > 1, f"found no units under src/{PACKAGE}"
    cycle = _find_cycle(graph) or []
    edges = "\n".join(
        f"  {importer} -> {target}: {graph[importer][target]}"
        for importer, target in pairwise(cycle)
    )
    assert not cycle, (
        f"the units of src/{PACKAGE} import each other in a cycle, {' -> '.join(cycle)}:\n{edges}"
    )


def test_dvc_outputs_are_the_paths_the_code_writes() -> None:
    # Imported here, not at the top, so a broken package during a move fails this test alone
    # rather than the collection of the import-graph tests. It loads numpy and pandas, no TF.
    from pneumonia.contracts.paths import Paths

    dvc = _load_yaml(REPO_ROOT / "dvc.yaml")
    params = _load_yaml(REPO_ROOT / "params.yaml")
    # Built from the YAML strings directly: pneumonia.config would resolve them against a project
    # root, and dvc.yaml spells them relative to the repository root.
    paths = Paths(**{field.name: Path(params["paths"][field.name]) for field in fields(Paths)})
    expected = {
        "train": {
            paths.model,
            paths.model_card,
            paths.trials_table,
            paths.history_table,
            paths.val_shift_table,
            paths.members_table,
            paths.stage_summary("train"),
        },
        "evaluate": {
            paths.threshold,
            paths.evaluate_reports,
            paths.metrics,
            paths.model_card_markdown,
        },
    }
    for stage, paths_written in expected.items():
        declared = _entry_paths(dvc["stages"][stage].get("outs"), params) + _entry_paths(
            dvc["stages"][stage].get("metrics"), params
        )
        declared_set = {str(path) for path in declared}
        written = {path.as_posix() for path in paths_written}
        assert len(declared) == len(declared_set), f"{stage}: dvc.yaml lists an out twice"
        assert declared_set == written, (
            f"{stage}: dvc.yaml's outs + metrics differ from what the code writes; "
            f"only in dvc.yaml: {sorted(declared_set - written)}, "
            f"missing from dvc.yaml: {sorted(written - declared_set)}"
        )
