"""What the pipeline may delete or overwrite: only folders and files it lays out itself.

The download stage deletes and re-creates `paths.images`, and DVC deletes every stage's outputs
before it runs the stage (`paths.split`, `paths.processed`, `<reports>/samples`,
`<reports>/evaluate`, the manifest, the reports' files, the model). A path set to one of the
project's own folders (`paths.images: mlruns`) would lose the MLflow store, the studies, the git
repository or the code. So load_config refuses, naming the key, every output path that is, holds
or is inside a protected location (`output_problems`), and the download stage checks the folder
again right before it deletes it (`ensure_deletable`), in case validation was bypassed.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pneumonia.contracts.paths import Paths
from pneumonia.errors import PipelineError

# At the project root: what no output may be, hold or be inside, whether or not git tracks it
# (mlruns/ and studies/ are git-ignored; .git is not a tracked file).
PROTECTED = {
    ".git": "the git repository",
    ".dvc": "DVC's own folder (config, cache)",
    "mlruns": "the MLflow store",
    "studies": "the Optuna studies",
    "src": "the project's code",
    "stages": "the stage scripts",
    "tests": "the tests",
    "docs": "the documentation",
    "benchmarks": "the benchmarks",
    "tools": "the development tools",
    "params.yaml": "the params file",
    "dvc.yaml": "the pipeline definition",
    "dvc.lock": "DVC's record of the pipeline's runs",
}
_GIT_TIMEOUT_SECONDS = 10
_MAX_LOCK_BYTES = 10_000_000
_LOCK_PATH = re.compile(r"-\s+path:\s*(.+?)\s*")


class ProtectedPathError(PipelineError, ValueError):
    """An output path would delete or overwrite something the pipeline did not lay out."""


@dataclass(frozen=True)
class Output:
    """A path the pipeline deletes or rewrites, and the params.yaml key that names it."""

    key: str  # paths.<name>
    path: Path
    kind: str  # folder: deleted as a whole | file: overwritten | parent: written into
    how: str  # who deletes or writes it, for messages


def pipeline_outputs(paths: Paths) -> list[Output]:
    """Every path of `paths` the pipeline deletes or rewrites, as dvc.yaml declares them."""
    dvc = "DVC deletes it before the stage runs"
    folders = [
        Output("paths.images", paths.images, "folder", "the download stage deletes it"),
        Output("paths.split", paths.split, "folder", dvc),
        Output("paths.processed", paths.processed, "folder", dvc),
        Output("paths.reports", paths.samples, "folder", f"{dvc} ({paths.samples.name}/)"),
        *(
            Output("paths.reports", folder, "folder", f"{dvc} ({folder.name}/)")
            for folder in (paths.evaluate_reports, paths.evaluate_tables)
        ),
    ]
    files = [
        ("paths.manifest", paths.manifest),
        ("paths.data_quality", paths.data_quality),
        *(
            ("paths.reports", path)
            for path in (
                paths.params_check,
                *(paths.stage_summary(stage) for stage in ("download", "split", "preprocess")),
                paths.stage_summary("train"),
                paths.metrics,
                paths.model_card_markdown,
                paths.site_metrics,
                paths.site_check,
                paths.site_calibration_table,
                paths.site_plot_table,
                paths.site_figure,
                paths.history_table,
                paths.trials_table,
                paths.val_shift_table,
                paths.members_table,
            )
        ),
        *(
            ("paths.models", path)
            for path in (paths.model, paths.model_card, paths.threshold, paths.site_reference)
        ),
    ]
    parents = [
        Output("paths.reports", paths.reports, "parent", "the stages write their reports there"),
        Output("paths.models", paths.models, "parent", "train and evaluate write there"),
    ]
    overwritten = [Output(key, path, "file", "the pipeline overwrites it") for key, path in files]
    return [*folders, *overwritten, *parents]


def tracked_files(root: Path) -> frozenset[str] | None:
    """The files git tracks under `root`, '/'-separated and relative to it; None when git cannot
    say (no repository above `root`, no git, an error), and callers rely on PROTECTED alone."""
    if not any((folder / ".git").exists() for folder in (root, *root.parents)):
        return None  # no subprocess for a folder outside any repository (most tests)
    try:
        result = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z"],
            capture_output=True,
            timeout=_GIT_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    return frozenset(filter(None, os.fsdecode(result.stdout).split("\0")))


def recorded_outputs(root: Path) -> frozenset[str]:
    """The outputs dvc.lock records, in the workspace and in git's HEAD (the committed reference
    run's reports are tracked by git and are the pipeline's own to rewrite; while `dvc repro`
    runs, DVC rewrites the workspace's lock stage by stage, so an output that moved from one
    stage to another is recorded only in HEAD's until its new stage has run); empty when there is
    no readable dvc.lock."""
    texts = []
    try:
        with (root / "dvc.lock").open("rb") as handle:
            texts.append(handle.read(_MAX_LOCK_BYTES + 1))
    except OSError:
        pass
    texts.append(_committed_lock(root))
    outputs: set[str] = set()
    for data in texts:
        if len(data) <= _MAX_LOCK_BYTES:
            outputs |= _lock_outputs(data)
    return frozenset(outputs)


def _committed_lock(root: Path) -> bytes:
    """dvc.lock as git's HEAD holds it; empty when git cannot say."""
    try:
        result = subprocess.run(
            ["git", "-C", str(root), "show", "HEAD:./dvc.lock"],
            capture_output=True,
            timeout=_GIT_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return b""
    return result.stdout[: _MAX_LOCK_BYTES + 1] if result.returncode == 0 else b""


def _lock_outputs(data: bytes) -> set[str]:
    """The `outs:` paths of a dvc.lock.

    Read as text, not YAML: PyYAML takes half a second over the lock file of this project, and
    every stage loads the config. DVC writes each output as a `- path: <path>` item under an
    `outs:` key, at that key's indentation."""
    outputs, outs_indent = set(), None
    for line in data.decode("utf-8", "replace").splitlines():
        stripped = line.lstrip()
        indent = len(line) - len(stripped)
        if outs_indent is not None and stripped:
            if indent < outs_indent or (indent == outs_indent and not stripped.startswith("-")):
                outs_indent = None
            else:
                item = _LOCK_PATH.fullmatch(stripped)
                if item:
                    outputs.add(
                        PurePosixPath(os.path.normpath(item.group(1).strip("'\""))).as_posix()
                    )
                continue
        if stripped.rstrip() == "outs:":
            outs_indent = indent
    return outputs


def _forms(path: Path) -> set[str]:
    """The path as written (normalised) and as the filesystem resolves it (through links), as
    absolute strings: compared as text, the checks of every output stay under milliseconds."""
    return {os.path.normpath(os.path.abspath(path)), os.path.realpath(path)}


def _relation(output: set[str], protected: set[str]) -> str | None:
    """`is`, `holds` or `is inside` when the two paths (their _forms) overlap, else None."""
    for first in output:
        for second in protected:
            if first == second:
                return "is"
            if second.startswith(first.rstrip(os.sep) + os.sep):
                return "holds"
            if first.startswith(second.rstrip(os.sep) + os.sep):
                return "is inside"
    return None


def _relative_forms(path: Path, root: Path) -> set[str]:
    """The path relative to root, '/'-separated, in each of its forms that lies inside root."""
    forms = set()
    for form in _forms(path):
        for base in _forms(root):
            if form.startswith(base.rstrip(os.sep) + os.sep):
                forms.add(PurePosixPath(Path(os.path.relpath(form, base))).as_posix())
    return forms


def output_problems(
    paths: Paths,
    root: Path,
    extra: Iterable[tuple[Path, str]] = (),
    tracked: frozenset[str] | None = None,
) -> list[str]:
    """Why each output path of `paths` would delete or overwrite what is not the pipeline's: one
    line per problem, naming the key. `root` is the folder of params.yaml; `extra` adds
    protected locations of this configuration (the local dataset source, a SQLite study);
    `tracked` is what git tracks under root (tracked_files, looked up when not given)."""
    tracked = tracked_files(root) if tracked is None else tracked
    recorded = recorded_outputs(root) if tracked else frozenset()
    protected = [(root / name, f"{name} ({meaning})") for name, meaning in PROTECTED.items()]
    protected_forms = [(_forms(location), meaning) for location, meaning in (*protected, *extra)]
    root_forms = _forms(root)
    problems = []
    for output in pipeline_outputs(paths):
        shown = os.path.relpath(output.path, root)
        if _forms(output.path) & root_forms:
            problems.append(f"'{output.key}' ({shown}) is the project root; {output.how}")
            continue
        output_forms = _forms(output.path)
        for location_forms, meaning in protected_forms:
            relation = _relation(output_forms, location_forms)
            # A folder written into (reports/) may hold what it leaves alone: its deleted
            # subfolders and overwritten files are checked as outputs of their own.
            if relation and not (relation == "holds" and output.kind == "parent"):
                problems.append(f"'{output.key}' ({shown}) {relation} {meaning}; {output.how}")
                break
        else:
            if tracked and output.kind != "parent":
                problems.extend(_tracked_problems(output, shown, root, tracked, recorded))
    # Several keys may trip over one location; each line once, in order.
    return list(dict.fromkeys(problems))


def _tracked_problems(
    output: Output, shown: str, root: Path, tracked: frozenset[str], recorded: frozenset[str]
) -> list[str]:
    for relative in _relative_forms(output.path, root):
        if output.kind == "file":
            if relative in tracked and relative not in recorded:
                return [f"'{output.key}' ({shown}) is {relative}, a file git tracks; {output.how}"]
        else:
            prefix = f"{relative}/"
            held = sorted(name for name in tracked if name.startswith(prefix))
            if held:
                return [
                    f"'{output.key}' ({shown}) holds {len(held)} file(s) git tracks (such as "
                    f"{held[0]}); {output.how}"
                ]
    return []


def ensure_deletable(
    folder: Path, root: Path, key: str, unexpected: Callable[[Path], str | None]
) -> None:
    """Refuse to delete `folder` unless it is the pipeline's own: strictly inside the project
    root `root`, clear of every PROTECTED location, holding no file git tracks, and holding only
    what the pipeline lays out there (`unexpected(folder)` names the first entry that is not,
    else returns None). Called right before the delete, whatever load_config checked."""
    shown = os.path.relpath(folder, root)
    fix = (
        f"the pipeline deletes and re-creates '{key}', so point it at a folder of its own "
        "(such as data/raw/images) or move what is there away"
    )
    if not folder.is_dir():
        raise ProtectedPathError(
            f"{key} ({shown}) is a file, not a folder the pipeline laid out; {fix}"
        )
    resolved, base = folder.resolve(), root.resolve()
    if resolved == base or base not in resolved.parents:
        raise ProtectedPathError(f"{key} ({shown}) is not inside the project {base}; {fix}")
    for name, meaning in PROTECTED.items():
        relation = _relation(_forms(folder), _forms(root / name))
        if relation:
            raise ProtectedPathError(f"{key} ({shown}) {relation} {name} ({meaning}); {fix}")
    tracked = tracked_files(root)
    if tracked:
        for relative in _relative_forms(folder, root):
            held = next((name for name in tracked if name.startswith(f"{relative}/")), None)
            if held:
                raise ProtectedPathError(f"{key} ({shown}) holds {held}, which git tracks; {fix}")
    entry = unexpected(folder)
    if entry:
        raise ProtectedPathError(
            f"{key} ({shown}) holds {entry}, which the pipeline did not lay out; {fix}"
        )
