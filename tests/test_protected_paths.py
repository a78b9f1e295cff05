"""Output paths may only be folders and files the pipeline lays out itself (issue 23, item 1).

`paths.images: mlruns` used to pass check-params, and `dvc repro download` deleted the MLflow
store; `paths.images: studies` deleted every study; `paths.images: .git` under
`python stages/download.py` deleted the git repository. load_config now refuses each, naming the
key, and the download stage checks the folder again right before it deletes it.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import yaml

from pneumonia.config import ConfigError, load_config
from pneumonia.data.download import run_download
from pneumonia.data.layout import unexpected_entry
from pneumonia.protected import ProtectedPathError, ensure_deletable, output_problems

from helpers import (
    PROJECT_ROOT,
    pipeline_project,
    run_command,
    tool_environment,
    write_image,
    write_params,
)


def git(repo, *arguments):
    subprocess.run(
        ["git", "-C", str(repo), *arguments],
        check=True,
        capture_output=True,
        env=tool_environment(),
    )


def git_project(folder, changes=None, tracked=()):
    """params.yaml in a real git repository whose `tracked` files (written here) are committed."""
    params = write_params(folder, changes or {})
    git(folder, "init", "-q", "-b", "main")
    for relative in tracked:
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_text("tracked\n")
    git(folder, "add", "-A")
    git(folder, "commit", "-qm", "baseline")
    return params


@pytest.mark.parametrize(
    "folder",
    [
        "mlruns",
        "studies",
        ".git",
        ".dvc",
        "src",
        "stages",
        "tests",
        "docs",
        "benchmarks",
        "tools",
        "src/pneumonia",  # inside one
        "mlruns/../studies",
    ],
)
def test_images_at_a_protected_folder_is_refused_at_load(tmp_path, folder):
    with pytest.raises(
        ConfigError, match=r"'paths\.images' \(.*\) (is|is inside) .*download stage"
    ):
        load_config(write_params(tmp_path, {"paths.images": folder}))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"paths.split": "mlruns"}, r"'paths\.split' \(mlruns\) is mlruns \(the MLflow store\)"),
        ({"paths.processed": "studies/arrays"}, r"'paths\.processed' .* is inside studies"),
        ({"paths.manifest": "dvc.lock"}, r"'paths\.manifest' \(dvc\.lock\) is dvc\.lock"),
        ({"paths.data_quality": "params.yaml"}, r"'paths\.data_quality' .* is params\.yaml"),
        ({"paths.reports": "docs"}, r"'paths\.reports' \(docs/samples\) is inside docs"),
        ({"paths.models": "src/models"}, r"'paths\.models' .* is inside src"),
        ({"paths.manifest": "mlruns/mlflow.db"}, r"'paths\.manifest' .* is inside mlruns"),
    ],
)
def test_every_output_path_is_kept_off_protected_locations(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write_params(tmp_path, changes))


def test_a_folder_that_holds_a_protected_one_is_refused(tmp_path):
    # `data` holds the SQLite study named by train.tuning.storage; DVC would delete it with
    # paths.processed.
    changes = {"paths.processed": "data", "train.tuning.storage": "sqlite:///data/optuna.db"}
    with pytest.raises(ConfigError, match=r"'paths\.processed' \(data\) holds the Optuna study"):
        load_config(write_params(tmp_path, changes))


@pytest.mark.parametrize(
    ("source", "images"),
    [
        ("data/chest_xray", "data/chest_xray"),
        ("data/chest_xray", "data/chest_xray/layout"),
        ("sources/chest_xray", "sources"),
        ("sources/chest_xray.zip", "sources"),
    ],
)
def test_the_local_dataset_source_is_protected(tmp_path, source, images):
    changes = {"download.source": source, "paths.images": images}
    with pytest.raises(ConfigError, match=r"'paths\.images' .* the dataset \('download\.source'"):
        load_config(write_params(tmp_path, changes))


def test_a_link_to_a_protected_folder_is_refused(tmp_path):
    params = write_params(tmp_path, {"paths.images": "data/images"})
    (tmp_path / "mlruns").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "images").symlink_to(tmp_path / "mlruns")
    with pytest.raises(ConfigError, match=r"'paths\.images' \(data/images\) is mlruns"):
        load_config(params)


def test_a_link_to_the_project_root_is_refused(tmp_path):
    params = write_params(tmp_path, {"paths.split": "data/here"})
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "here").symlink_to(tmp_path)
    with pytest.raises(ConfigError, match=r"'paths\.split' \(data/here\) is the project root"):
        load_config(params)


def test_a_folder_holding_tracked_files_is_refused(tmp_path):
    params = git_project(tmp_path, {"paths.images": "notes"}, tracked=["notes/plan.md"])
    with pytest.raises(ConfigError, match=r"'paths\.images' \(notes\) holds 1 file\(s\) git"):
        load_config(params)


def test_a_tracked_file_is_only_overwritten_when_dvc_lock_records_it(tmp_path):
    lock = {"schema": "2.0", "stages": {"download": {"outs": [{"path": "reports/quality.json"}]}}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    tracked = ["README.md", "reports/quality.json"]
    params = git_project(tmp_path, {"paths.data_quality": "reports/quality.json"}, tracked)
    load_config(params)  # the committed reference run's report: the pipeline's own
    overrides = {"paths.manifest": "README.md"}
    with pytest.raises(ConfigError, match=r"'paths\.manifest' \(README\.md\) is README\.md, a fi"):
        load_config(params, overrides)


def test_the_projects_own_outputs_pass_against_its_git_tree():
    config = load_config(PROJECT_ROOT / "params.yaml")
    assert output_problems(config.paths, config.workspace) == []


# --- The check right before deleting, whatever load_config said --------------------------


def downloaded_config(kaggle_folder, tmp_path):
    config = load_config(
        write_params(tmp_path / "project", {"download.source": str(kaggle_folder)})
    )
    run_download(config)
    return config


def with_images(config, folder):
    """The config with paths.images changed behind validation's back."""
    return dataclasses.replace(config, paths=dataclasses.replace(config.paths, images=folder))


@pytest.mark.parametrize("name", ["mlruns", "studies", ".git", "src"])
def test_download_refuses_to_delete_a_protected_folder_even_unvalidated(
    kaggle_folder, tmp_path, name
):
    config = downloaded_config(kaggle_folder, tmp_path)
    victim = config.workspace / name
    victim.mkdir()
    (victim / "keep.db").write_bytes(b"precious")
    with pytest.raises(ProtectedPathError, match=rf"paths\.images \({name}\) is {name}"):
        run_download(with_images(config, victim))
    assert (victim / "keep.db").read_bytes() == b"precious"


def test_download_refuses_a_folder_it_did_not_lay_out(kaggle_folder, tmp_path):
    config = downloaded_config(kaggle_folder, tmp_path)
    (config.paths.images / "train" / "notes.txt").write_text("mine")
    with pytest.raises(ProtectedPathError, match=r"holds train/notes\.txt, which the pipeline"):
        run_download(config)
    assert (config.paths.images / "train" / "notes.txt").read_text() == "mine"


def test_download_refuses_a_folder_holding_a_tracked_file(kaggle_folder, tmp_path):
    config = downloaded_config(kaggle_folder, tmp_path)
    git(config.workspace, "init", "-q", "-b", "main")
    image = next((config.paths.images / "test" / "NORMAL").iterdir())
    git(config.workspace, "add", "-f", str(image))
    with pytest.raises(ProtectedPathError, match=r"which git tracks"):
        run_download(config)
    assert image.exists()


def test_download_refuses_a_plain_file_at_the_images_path(kaggle_folder, tmp_path):
    config = downloaded_config(kaggle_folder, tmp_path)
    target = config.workspace / "data" / "notes.md"
    target.write_text("mine")
    with pytest.raises(ProtectedPathError, match=r"is a file, not a folder"):
        run_download(with_images(config, target))
    assert target.read_text() == "mine"


def test_download_replaces_its_own_layout(kaggle_folder, tmp_path):
    """A second download deletes and re-creates the layout the first made (and the operating
    system's .DS_Store in it)."""
    config = downloaded_config(kaggle_folder, tmp_path)
    (config.paths.images / "train" / ".DS_Store").write_bytes(b"\0")
    stale = config.paths.images / "train" / "NORMAL" / "stale.jpeg"
    write_image(stale, 3)
    result = run_download(config)
    assert not stale.exists() and not (config.paths.images / "train" / ".DS_Store").exists()
    assert len(result.manifest) > 0


@pytest.mark.parametrize(
    ("entry", "found"),
    [
        ("mlflow.db", "mlflow.db"),
        ("train/NORMAL/deep/x.jpeg", "train/NORMAL/deep/"),
        ("train/OTHER/x.jpeg", "train/OTHER/"),
        ("train/NORMAL/x.txt", "train/NORMAL/x.txt"),
        (".git/HEAD", ".git/"),
    ],
)
def test_unexpected_entries_are_named(tmp_path, entry, found):
    (tmp_path / "train" / "NORMAL").mkdir(parents=True)
    write_image(tmp_path / "train" / "NORMAL" / "a.jpeg", 1)
    (tmp_path / entry).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / entry).write_bytes(b"x")
    assert unexpected_entry(tmp_path) == found


def test_ensure_deletable_refuses_the_project_root_and_outside(tmp_path):
    (tmp_path / "project").mkdir()
    for folder in (tmp_path / "project", tmp_path):
        with pytest.raises(ProtectedPathError, match="is not inside the project"):
            ensure_deletable(folder, tmp_path / "project", "paths.images", unexpected_entry)


# --- The reproductions of the issue, with the real tools ------------------------------------


@pytest.mark.slow  # a repository copy and a real `dvc repro download`
def test_dvc_repro_with_images_at_mlruns_keeps_the_store(tmp_path):
    def configure(params):
        params["paths"]["images"] = "mlruns"

    repo, env = pipeline_project(tmp_path, configure)
    (repo / "mlruns" / "mlflow.db").write_bytes(b"the store")
    result = subprocess.run(
        ["dvc", "repro", "download"], cwd=repo, env=env, capture_output=True, text=True
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "'paths.images' (mlruns) is mlruns (the MLflow store)" in output
    assert "Traceback" not in output
    assert (repo / "mlruns" / "mlflow.db").read_bytes() == b"the store"
    assert (repo / "mlruns" / ".gitignore").is_file()


@pytest.mark.slow  # a repository copy and a real `python stages/download.py`
@pytest.mark.parametrize("folder", [".git", "studies"])
def test_download_stage_with_images_at_a_protected_folder_exits_2(tmp_path, folder):
    def configure(params):
        params["paths"]["images"] = folder

    repo, env = pipeline_project(tmp_path, configure)
    (repo / "studies").mkdir(exist_ok=True)
    (repo / "studies" / "optuna.db").write_bytes(b"studies")
    before = sorted(path.name for path in (repo / folder).iterdir())
    result = subprocess.run(
        [sys.executable, "stages/download.py"], cwd=repo, env=env, capture_output=True, text=True
    )
    assert result.returncode == 2, result.stderr
    assert f"'paths.images' ({folder}) is {folder}" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(path.name for path in (repo / folder).iterdir()) == before
    run_command(["git", "status", "--short"], repo, env)  # the repository still works
