"""docs/parameters.md is written by tools/parameters_doc.py from the schema (descriptions, bounds),
params.yaml (the defaults) and SEARCH_SPACE: the page cannot drift from what is validated, and
every param of the schema says what it does."""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Iterator
from pathlib import Path

import yaml
from pydantic import BaseModel

from pneumonia.config.fields import Section
from pneumonia.config.schema import Params

REPO_ROOT = Path(__file__).resolve().parents[1]


def load_tool():
    spec = importlib.util.spec_from_file_location(
        "parameters_doc", REPO_ROOT / "tools" / "parameters_doc.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


parameters_doc = load_tool()


def schema_fields(model: type[BaseModel], prefix: str) -> Iterator[tuple[str, object, bool]]:
    """(dotted key, FieldInfo or section class, is a section) for every key under `model`."""
    for name, info in model.model_fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if isinstance(info.annotation, type) and issubclass(info.annotation, Section):
            yield key, info.annotation, True
            yield from schema_fields(info.annotation, key)
        else:
            yield key, info, False


def leaf_keys(values: dict, prefix: str = "") -> Iterator[str]:
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else name
        if isinstance(value, dict):
            yield from leaf_keys(value, key)
        else:
            yield key


def test_docs_parameters_md_is_what_the_tool_writes():
    written = (REPO_ROOT / "docs" / "parameters.md").read_text(encoding="utf-8")
    assert written == parameters_doc.render(REPO_ROOT), (
        "docs/parameters.md is stale (the schema, params.yaml or SEARCH_SPACE changed); run "
        "`python tools/parameters_doc.py`"
    )


def test_every_param_and_section_of_the_schema_is_described():
    undescribed = []
    for key, item, is_section in schema_fields(Params, ""):
        text = (item.__doc__ if is_section else item.description) or ""
        if not text.strip():
            undescribed.append(key)
    assert not undescribed, (
        "give each param a Field(description=...) and each section a docstring (they are "
        f"docs/parameters.md's text): {undescribed}"
    )


def test_the_page_has_a_row_per_key_of_params_yaml_with_its_default():
    page = parameters_doc.render(REPO_ROOT)
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text(encoding="utf-8"))
    rows = {line.split(" | ")[0].strip("| `"): line for line in page.splitlines() if "| `" in line}
    assert set(rows) == set(leaf_keys(params))
    assert "| `train.model.depth` | integer | in [1, 7] | `5` |" in rows["train.model.depth"]
    assert "`[0.0001, 0.003]`" in rows["train.tuning.search_space.learning_rate"]
    assert "drawn on a log scale" in rows["train.tuning.search_space.learning_rate"]
    assert rows["train.tuning.search_space.rho"].count("rmsprop only") == 1


def test_check_fails_on_a_stale_page_naming_the_fix_and_a_run_rewrites_it(
    tmp_path, monkeypatch, capsys
):
    (tmp_path / "docs").mkdir()
    shutil.copy(REPO_ROOT / "docs" / "parameters.md", tmp_path / "docs" / "parameters.md")
    params = (REPO_ROOT / "params.yaml").read_text(encoding="utf-8")
    changed = params.replace("\n  epochs: 8\n", "\n  epochs: 11\n", 1)
    assert changed != params, "params.yaml's train.epochs line is not `  epochs: 8`"
    (tmp_path / "params.yaml").write_text(changed, encoding="utf-8")
    monkeypatch.setattr(parameters_doc, "REPO_ROOT", tmp_path)

    assert parameters_doc.main(["--check"]) == 1
    assert "run python tools/parameters_doc.py" in capsys.readouterr().out
    assert parameters_doc.main([]) == 0
    page = (tmp_path / "docs" / "parameters.md").read_text(encoding="utf-8")
    assert "| `train.epochs` | integer | >= 1 | `11` |" in page
    assert parameters_doc.main(["--check"]) == 0
