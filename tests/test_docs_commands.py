"""The README's promises that a file can hold: the install and test commands (and .ci/run) use
the lock file, the lock file pins every dependency within pyproject's bounds, every
`dvc exp run -S` example parses as DVC parses it, and the committed dvc.lock is a run of the
committed code."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from dvc.utils.hydra import apply_overrides
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from helpers import PROJECT_ROOT

# The standard library's TOML reader, from Python 3.11 (the lock file's Python).
tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11+")
LOCK_FILE = PROJECT_ROOT / "requirements.lock"
DOCUMENTS = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]
CODE_FOLDERS = ("src/", "stages/")


def shell_blocks(path: Path) -> list[str]:
    """The commands of a Markdown file's ```bash blocks, continuation lines joined."""
    commands = []
    for block in re.findall(r"```(?:bash|sh|console)\n(.*?)```", path.read_text(), re.DOTALL):
        commands += block.replace("\\\n", " ").splitlines()
    return commands


def readme_command(marker: str) -> str:
    (command,) = [line for line in shell_blocks(PROJECT_ROOT / "README.md") if marker in line]
    return command.strip()


def test_ci_runs_the_readmes_test_command_and_both_install_from_the_lock_file():
    test_command = readme_command("&& pytest")
    ci_lines = (PROJECT_ROOT / ".ci" / "run").read_text().splitlines()
    assert ci_lines[-1].strip() == test_command
    for command in (test_command, readme_command("&& dvc repro")):
        assert "pip install -c requirements.lock -e " in command, command


def locked_versions() -> dict[str, str]:
    versions = {}
    for line in LOCK_FILE.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            versions[canonicalize_name(name)] = version.strip()
    return versions


def test_the_lock_file_pins_every_dependency_within_pyprojects_bounds():
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    # What the README's commands install: the package and its test extra (scale included).
    wanted = [*project["dependencies"], *extras["test"], *extras["scale"]]
    locked = locked_versions()
    problems = []
    for text in wanted:
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        if name == "pneumonia":
            continue
        if name not in locked:
            problems.append(f"{requirement.name}: not in requirements.lock")
        elif not requirement.specifier.contains(locked[name], prereleases=True):
            problems.append(f"{requirement.name}=={locked[name]} outside {requirement.specifier}")
    assert not problems, problems


def set_param_examples() -> list[tuple[str, list[str]]]:
    """Every `dvc exp run` command of the README and docs with its `-S` values, as the shell
    hands them to DVC."""
    examples = []
    for document in DOCUMENTS:
        for number, line in enumerate(shell_blocks(document), start=1):
            if "dvc exp run" not in line:
                continue
            words = shlex.split(line, comments=True)
            values = [words[index + 1] for index, word in enumerate(words) if word == "-S"]
            values = [value for value in values if value != "KEY=VALUE"]  # a placeholder
            if values:
                examples.append(pytest.param(line.strip(), values, id=f"{document.name}-{number}"))
    return examples


@pytest.mark.parametrize(("command", "values"), set_param_examples())
def test_every_set_param_example_parses_as_dvc_parses_it(tmp_path, command, values):
    params = tmp_path / "params.yaml"
    shutil.copy(PROJECT_ROOT / "params.yaml", params)
    apply_overrides(params, values)  # DVC's own `-S` code: Hydra's grammar, known keys only
    applied = yaml.safe_load(params.read_text())
    for value in values:
        key, expected = value.lstrip("+").split("=", 1)
        found = applied
        for part in key.split("."):
            found = found[part]
        if expected.startswith("'") and expected.endswith("'"):
            assert found == expected[1:-1], command  # a quoted value arrives as written


def test_examples_were_found():
    commands = [example.values[0] for example in set_param_examples()]
    assert any("download.source='~/data/chest_xray'" in command for command in commands)
    assert any("evaluate.threshold=sensitivity:0.95" in command for command in commands)


def dvc_md5(path: str) -> str:
    """What DVC 3 records for a dependency: a file's md5, or for a folder the md5 of the JSON
    list of its files' md5 and relative path, plus `.dir` (dvc_data's Tree.digest). A folder's
    files are its git-tracked ones, what a clone holds."""
    target = PROJECT_ROOT / path
    if target.is_file():
        return hashlib.md5(target.read_bytes()).hexdigest()
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--", path],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    entries = sorted(
        (
            {
                "md5": hashlib.md5((PROJECT_ROOT / name).read_bytes()).hexdigest(),
                "relpath": Path(name).relative_to(path).as_posix(),
            }
            for name in listed
            if name
        ),
        key=lambda entry: entry["relpath"],
    )
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"


def test_the_committed_dvc_lock_is_a_run_of_the_committed_code():
    """Every code dependency dvc.yaml names is recorded in dvc.lock at its current content, so
    the committed reference outputs are what this code produces (regenerate them with
    `python benchmarks/quality.py --keep` and copy the clone's dvc.lock and reports back)."""
    declared = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
    recorded = yaml.safe_load((PROJECT_ROOT / "dvc.lock").read_text())["stages"]
    stale = []
    for stage, definition in declared.items():
        hashes = {dep["path"]: dep.get("md5") for dep in recorded.get(stage, {}).get("deps", [])}
        for path in definition.get("deps", []):
            if not path.startswith(CODE_FOLDERS):
                continue
            if hashes.get(path) != dvc_md5(path):
                stale.append(f"{stage}: {path}")
    assert not stale, "dvc.lock records other code than the committed files:\n" + "\n".join(stale)
