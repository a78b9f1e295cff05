"""dvc.yaml must not go stale: its deps and outs are checked against the code itself.

DVC re-runs a stage only when one of its listed deps changes. A module that a stage imports but
dvc.yaml does not list is code that can change without the stage re-running, so the pipeline
reports stale results as fresh. tools/dvc_deps.py derives each stage's code deps from its
imports and writes them; these tests fail when dvc.yaml differs from what it derives (saying to
run it), and check each stage's outs against pneumonia.contracts.paths.

Only the standard library and PyYAML: the imports are read with `ast`, which runs nothing, so
each test takes a fraction of a second and none loads TensorFlow.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import fields
from itertools import pairwise
from pathlib import Path, PurePosixPath

REPO_ROOT = Path(__file__).resolve().parents[1]


def load_tool():
    spec = importlib.util.spec_from_file_location("dvc_deps", REPO_ROOT / "tools" / "dvc_deps.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


dvc_deps = load_tool()
PACKAGE = "pneumonia"
# What the train stage must not depend on: plots and reports (evaluation) and the file I/O of the
# data stages (data). Editing either must not re-run a 15-30 minute training.
TRAIN_FORBIDDEN_FOLDERS = (
    PurePosixPath("src/pneumonia/evaluation"),
    PurePosixPath("src/pneumonia/data"),
    # Evaluate's side of the contracts: editing it must not re-run training either.
    PurePosixPath("src/pneumonia/contracts/operating_point.py"),
)


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
        importer, _ = dvc_deps.module_name(file, search_roots)
        edges = graph.setdefault(_unit(importer), {})
        for module, line in dvc_deps.imported_modules(file, search_roots):
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


def test_every_stage_depends_on_exactly_the_code_it_imports() -> None:
    derived = dvc_deps.derived_dependencies(REPO_ROOT)
    assert derived, "no dvc.yaml stage runs `python stages/<name>.py`: nothing would be checked"
    listed = dvc_deps.listed_dependencies(REPO_ROOT)
    report = []
    for stage, entries in derived.items():
        missing = [entry for entry in entries if entry not in listed[stage]]
        extra = [entry for entry in listed[stage] if entry not in entries]
        if missing or extra or entries != listed[stage]:
            report.append(f"  {stage}: missing {missing}, not run {extra}")
    assert not report, (
        "dvc.yaml's code deps differ from what the stages import; run `python tools/dvc_deps.py`:\n"
        + "\n".join(report)
    )


def test_the_tool_rewrites_only_code_entries_and_keeps_comments_and_data_deps() -> None:
    text = (REPO_ROOT / "dvc.yaml").read_text(encoding="utf-8")
    derived = dvc_deps.derived_dependencies(REPO_ROOT)
    train = derived["train"]
    # A stale train stage: its first code entry gone, a file it never runs added at the end.
    stale = text.replace(f"      - {train[0]}\n", "", 1).replace(
        f"      - {train[-1]}\n", f"      - {train[-1]}\n      - src/pneumonia/gone.py\n", 1
    )
    assert stale != text
    assert dvc_deps.rewrite(stale, derived) == dvc_deps.rewrite(text, derived) == text


def test_train_does_not_depend_on_evaluation_or_the_data_stages() -> None:
    dvc = dvc_deps.load_yaml(REPO_ROOT / "dvc.yaml")
    params = dvc_deps.load_yaml(REPO_ROOT / "params.yaml")
    script = dvc_deps.script_stages(dvc)["train"]
    files, _ = dvc_deps.import_closure(REPO_ROOT / script, REPO_ROOT / "src")
    relative = (PurePosixPath(file.relative_to(REPO_ROOT).as_posix()) for file in files)
    imported = sorted(
        str(file)
        for file in relative
        if any(file.is_relative_to(folder) for folder in TRAIN_FORBIDDEN_FOLDERS)
    )
    # A dep on a folder above them (src/pneumonia) would re-run train on their edits just the same.
    listed = sorted(
        str(dependency)
        for dependency in dvc_deps.code_dependencies(dvc["stages"]["train"], params)
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

    dvc = dvc_deps.load_yaml(REPO_ROOT / "dvc.yaml")
    params = dvc_deps.load_yaml(REPO_ROOT / "params.yaml")
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
            paths.site_reference,
            paths.evaluate_reports,
            paths.evaluate_tables,
            paths.metrics,
        },
        "site": {
            paths.model_card_markdown,
            paths.site_metrics,
            paths.site_calibration_table,
            paths.site_plot_table,
            paths.site_check,
            paths.site_figure,
        },
    }
    for stage, paths_written in expected.items():
        declared = dvc_deps.entry_paths(
            dvc["stages"][stage].get("outs"), params
        ) + dvc_deps.entry_paths(dvc["stages"][stage].get("metrics"), params)
        declared_set = {str(path) for path in declared}
        written = {path.as_posix() for path in paths_written}
        assert len(declared) == len(declared_set), f"{stage}: dvc.yaml lists an out twice"
        assert declared_set == written, (
            f"{stage}: dvc.yaml's outs + metrics differ from what the code writes; "
            f"only in dvc.yaml: {sorted(declared_set - written)}, "
            f"missing from dvc.yaml: {sorted(written - declared_set)}"
        )


def test_train_reruns_on_exactly_the_preprocess_params_the_model_input_depends_on() -> None:
    """Train depends on `preprocess.image` whole, and that sub-section holds exactly the image
    spec (contracts.image_spec, what the model card records): a key outside it would leave a
    model trained on other pixels "up to date"; a stage knob inside it (workers, sample_grid)
    would re-train for nothing."""
    from pneumonia.config import ImageInput
    from pneumonia.contracts.image_spec import IMAGE_SPEC_KEYS, ImageSpec

    dvc = dvc_deps.load_yaml(REPO_ROOT / "dvc.yaml")
    listed = [
        entry
        for entry in dvc["stages"]["train"]["params"]
        if isinstance(entry, str) and entry.split(".")[0] == "preprocess"
    ]
    assert listed == ["preprocess.image"], listed
    record = {key: f"value of {key}" for key in IMAGE_SPEC_KEYS}
    section = ImageSpec.section_of(record)
    assert sorted(section) == sorted(ImageInput.model_fields), section
    assert sorted(section.values()) == sorted(record.values())
