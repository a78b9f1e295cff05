import os
import shutil
from pathlib import Path

import pytest
import yaml

from pneumonia.config import load_config
from pneumonia.data.download import DownloadError, run_download
from pneumonia.data.layout import LayoutError

from helpers import (
    PATIENT_FILES,
    chest_like_pixels,
    fixture_params,
    image_bytes,
    truncated_jpeg_bytes,
    write_image,
)

EXPECTED_IMAGES = sum(len(names) for names in PATIENT_FILES.values())


def make_config(workspace: Path, source: str):
    """A config for a throwaway workspace, from the tests' params with one override."""
    params = fixture_params()
    params["download"]["source"] = source
    params["download"]["workers"] = 2
    workspace.mkdir(parents=True, exist_ok=True)
    (workspace / "dvc.yaml").write_text("stages: {}\n")
    (workspace / "params.yaml").write_text(yaml.safe_dump(params))
    return load_config(workspace / "params.yaml")


def test_folder_with_archive_quirks_gives_each_image_once_as_links(kaggle_folder, tmp_path):
    config = make_config(tmp_path / "project", str(kaggle_folder))
    result = run_download(config)
    manifest = result.manifest
    assert len(manifest) == EXPECTED_IMAGES
    assert manifest["path"].is_unique
    assert set(manifest.columns) >= {
        "path",
        "label",
        "source_split",
        "patient_id",
        "sha256",
        "width",
        "height",
        "mode",
    }
    quality = result.quality
    assert quality["skipped"]["duplicate_tree"] == EXPECTED_IMAGES
    assert quality["skipped"]["macos_metadata"] == 6
    assert quality["skipped"]["system_file"] == 2
    assert quality["bad_files"] == []
    # Not a second copy: the layout is made of links to the source files.
    linked = config.paths.images / "train/NORMAL/IM-0115-0001.jpeg"
    source = kaggle_folder / "chest_xray/train/NORMAL/IM-0115-0001.jpeg"
    assert os.path.samefile(linked, source)
    assert quality["materialized"] == {"hardlink": EXPECTED_IMAGES}
    assert result.summary["images_val_NORMAL"] == 1


def test_relative_source_resolves_against_the_project_root(kaggle_folder, tmp_path):
    project = tmp_path / "project"
    shutil.move(kaggle_folder, project / "incoming")
    config = make_config(project, "incoming")
    assert len(run_download(config).manifest) == EXPECTED_IMAGES


def test_zip_source_is_extracted_once(kaggle_zip, tmp_path):
    config = make_config(tmp_path / "project", str(kaggle_zip))
    result = run_download(config)
    assert len(result.manifest) == EXPECTED_IMAGES
    assert result.quality["materialized"] == {"extract": EXPECTED_IMAGES}
    assert result.quality["source_kind"] == "zip"


def test_bad_files_are_excluded_listed_and_counted(kaggle_folder, tmp_path):
    tree = kaggle_folder / "chest_xray"
    (tree / "train/NORMAL/IM-0199-0001.jpeg").write_bytes(b"")
    (tree / "train/PNEUMONIA/person99_virus_1.jpeg").write_bytes(truncated_jpeg_bytes())
    (tree / "test/NORMAL/IM-0099-0001.jpeg").write_text("404 page")
    config = make_config(tmp_path / "project", str(kaggle_folder))
    result = run_download(config)
    reasons = {entry["path"]: entry["reason"] for entry in result.quality["bad_files"]}
    assert reasons.keys() == {
        "train/NORMAL/IM-0199-0001.jpeg",
        "train/PNEUMONIA/person99_virus_1.jpeg",
        "test/NORMAL/IM-0099-0001.jpeg",
    }
    assert reasons["train/NORMAL/IM-0199-0001.jpeg"] == "empty file"
    assert "truncated" in reasons["train/PNEUMONIA/person99_virus_1.jpeg"]
    assert len(result.manifest) == EXPECTED_IMAGES
    assert result.summary["bad_files"] == 3
    assert not (config.paths.images / "test/NORMAL/IM-0099-0001.jpeg").exists()


def test_files_over_the_limits_or_in_other_formats_are_bad_files(kaggle_folder, tmp_path):
    tree = kaggle_folder / "chest_xray"
    bitmap = "train/NORMAL/IM-0199-0001.jpeg"
    heavy = "train/PNEUMONIA/person99_virus_1.jpeg"
    wide = "test/NORMAL/IM-0099-0001.jpeg"
    (tree / bitmap).write_bytes(image_bytes(chest_like_pixels(1, 96, 80), "BMP"))
    write_image(tree / heavy, seed=2, size=(600, 500))  # about 250 KB, 300,000 pixels
    (tree / wide).write_bytes(image_bytes(chest_like_pixels(3, 400, 100), "JPEG"))
    assert (tree / heavy).stat().st_size > 100_000 > (tree / wide).stat().st_size
    params = fixture_params()
    params["download"].update(source=str(kaggle_folder), workers=2)
    params["preprocess"].update(max_pixels=20_000, max_file_bytes=100_000)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = run_download(load_config(tmp_path / "params.yaml"))
    reasons = {entry["path"]: entry["reason"] for entry in result.quality["bad_files"]}
    assert reasons.keys() == {bitmap, heavy, wide}
    assert reasons[bitmap].startswith("unsupported format BMP")
    assert "bytes is over preprocess.max_file_bytes (100,000)" in reasons[heavy]
    assert reasons[wide].startswith("400x100 is 40,000 pixels, over preprocess.max_pixels")
    assert len(result.manifest) == EXPECTED_IMAGES


def test_nothing_usable_is_fatal(tmp_path):
    source = tmp_path / "broken"
    for split in ("train", "test"):
        for label in ("NORMAL", "PNEUMONIA"):
            (source / split / label).mkdir(parents=True)
            (source / split / label / "IM-0001-0001.jpeg").write_bytes(b"")
    config = make_config(tmp_path / "project", str(source))
    with pytest.raises(LayoutError, match="none of the 4 images could be decoded"):
        run_download(config)


def test_missing_class_after_bad_files_is_fatal(kaggle_folder, tmp_path):
    for path in (kaggle_folder / "chest_xray/test/NORMAL").iterdir():
        path.write_bytes(b"")
    config = make_config(tmp_path / "project", str(kaggle_folder))
    with pytest.raises(LayoutError, match=r"usable images.*missing test/NORMAL"):
        run_download(config)


def test_missing_source_names_the_param(tmp_path):
    config = make_config(tmp_path / "project", "no/such/folder")
    with pytest.raises(DownloadError, match=r"download.source='no/such/folder'.*does not exist"):
        run_download(config)


def test_file_that_is_not_a_zip(tmp_path):
    (tmp_path / "data.tar").write_bytes(b"not a zip")
    config = make_config(tmp_path / "project", str(tmp_path / "data.tar"))
    with pytest.raises(DownloadError, match="not a zip archive"):
        run_download(config)


def test_kaggle_source_downloads_the_pinned_version(kaggle_folder, tmp_path, monkeypatch):
    import kagglehub

    asked = []

    def fake_download(handle, *args, **kwargs):
        asked.append(handle)
        return str(kaggle_folder)

    monkeypatch.setattr(kagglehub, "dataset_download", fake_download)
    config = make_config(tmp_path / "project", "kaggle")
    result = run_download(config)
    assert asked == ["paultimothymooney/chest-xray-pneumonia/versions/2"]
    assert result.quality["source_kind"] == "kaggle"
    assert len(result.manifest) == EXPECTED_IMAGES


def test_kaggle_without_network_says_how_to_use_a_local_copy(tmp_path, monkeypatch):
    import kagglehub

    def offline(handle, *args, **kwargs):
        raise ConnectionError("Failed to resolve 'api.kaggle.com'")

    monkeypatch.setattr(kagglehub, "dataset_download", offline)
    config = make_config(tmp_path / "project", "kaggle")
    with pytest.raises(DownloadError) as error:
        run_download(config)
    assert "api.kaggle.com" in str(error.value)
    assert "download.source=/path/to/chest_xray" in str(error.value)


def test_a_link_at_the_images_path_is_replaced_not_followed(kaggle_folder, tmp_path):
    """download deletes and re-lays paths.images; where that path is a link (to a folder inside
    the project), the link goes and what it points at stays."""
    project = tmp_path / "project"
    kept = project / "kept"
    kept.mkdir(parents=True)
    (kept / "notes.txt").write_text("mine")
    config = make_config(project, str(kaggle_folder))
    config.paths.images.parent.mkdir(parents=True)
    config.paths.images.symlink_to(kept)
    run_download(config)
    assert (kept / "notes.txt").read_text() == "mine"
    assert not config.paths.images.is_symlink() and config.paths.images.is_dir()
