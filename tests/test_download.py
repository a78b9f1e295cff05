import io
import os
import shutil
import time
import zipfile
from pathlib import Path

import pytest
import yaml

from pneumonia.config import load_config
from pneumonia.data.download import DownloadError, copy_limited, extract_member, run_download
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


def make_config(workspace: Path, source: str, max_file_bytes: int | None = None):
    """A config for a throwaway workspace, from the tests' params with the source (and the
    file-size limit) overridden."""
    params = fixture_params()
    params["download"]["source"] = source
    params["download"]["workers"] = 2
    if max_file_bytes is not None:
        params["preprocess"]["limits"]["max_file_bytes"] = max_file_bytes
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
    result = run_download(config)
    assert len(result.manifest) == EXPECTED_IMAGES
    # The report names the source as params.yaml does, not this machine's absolute path, so a
    # committed data_quality.json is the same on every machine.
    assert result.quality["source"] == "incoming"


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
    params["preprocess"]["limits"].update(max_pixels=20_000, max_file_bytes=100_000)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = run_download(load_config(tmp_path / "params.yaml"))
    reasons = {entry["path"]: entry["reason"] for entry in result.quality["bad_files"]}
    assert reasons.keys() == {bitmap, wide}
    assert reasons[bitmap].startswith("unsupported format BMP")
    assert reasons[wide].startswith("400x100 is 40,000 pixels, over preprocess.limits.max_pixels")
    # A file over the size limit is not even read: the walk skips it, counted.
    assert result.quality["skipped"]["too_large"] == 1
    assert result.quality["skipped_examples"]["too_large"] == [f"chest_xray/{heavy}"]
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


# --- The walk stays inside the source; zip members stay inside the layout and under the limit --


def test_link_loops_in_a_folder_end_quickly_and_are_counted(kaggle_folder, tmp_path):
    """Two links back up the tree and a chain of links that never ends: the old walk followed
    them until it was killed; now each is skipped and counted, and a pipe is never opened."""
    tree = kaggle_folder / "chest_xray"
    (tree / "train/back_to_tree").symlink_to("..")
    (tree / "test/NORMAL/back_to_top").symlink_to("../../..")
    (tree / "test/chain_a.jpeg").symlink_to("chain_b.jpeg")
    (tree / "test/chain_b.jpeg").symlink_to("chain_a.jpeg")
    os.mkfifo(tree / "train/NORMAL/IM-0900-0001.jpeg")
    config = make_config(tmp_path / "project", str(kaggle_folder))
    started = time.perf_counter()
    result = run_download(config)
    assert time.perf_counter() - started < 30
    assert len(result.manifest) == EXPECTED_IMAGES
    skipped, examples = result.quality["skipped"], result.quality["skipped_examples"]
    assert skipped["link_loop"] == 4
    assert set(examples["link_loop"]) == {
        "chest_xray/train/back_to_tree",
        "chest_xray/test/NORMAL/back_to_top",
        "chest_xray/test/chain_a.jpeg",
        "chest_xray/test/chain_b.jpeg",
    }
    assert skipped["not_regular_file"] == 1
    assert result.summary["skipped_link_loop"] == 4


def test_links_out_of_the_source_are_skipped_and_counted(kaggle_folder, tmp_path):
    outside = tmp_path / "outside"
    secret = write_image(outside / "secret.jpeg", seed=90)
    write_image(outside / "tree/train/NORMAL/IM-0901-0001.jpeg", seed=91)
    tree = kaggle_folder / "chest_xray"
    (tree / "train/NORMAL/IM-0902-0001.jpeg").symlink_to(secret)
    (tree / "extra").symlink_to(outside / "tree", target_is_directory=True)
    config = make_config(tmp_path / "project", str(kaggle_folder))
    result = run_download(config)
    assert len(result.manifest) == EXPECTED_IMAGES
    assert not result.manifest["path"].str.contains("IM-090").any()
    assert result.quality["skipped"]["link_outside_source"] == 2
    assert sorted(result.quality["skipped_examples"]["link_outside_source"]) == [
        "chest_xray/extra",
        "chest_xray/train/NORMAL/IM-0902-0001.jpeg",
    ]
    assert not list(config.paths.images.rglob("IM-090*"))


def test_links_inside_the_source_are_used(kaggle_folder, tmp_path):
    """A dataset copy made of links works: a link to a file, a link to a folder, and the source
    itself given through a link, as long as every target resolves inside the source."""
    spare = write_image(kaggle_folder / "spare/IM-0903-0001.jpeg", seed=92)
    write_image(kaggle_folder / "spare_pneumonia/person90_virus_1.jpeg", seed=93)
    tree = kaggle_folder / "chest_xray"
    (tree / "train/NORMAL/IM-0903-0001.jpeg").symlink_to("../../../spare/IM-0903-0001.jpeg")
    shutil.rmtree(tree / "val/PNEUMONIA")
    (tree / "val/PNEUMONIA").symlink_to("../../spare_pneumonia", target_is_directory=True)
    # A second link to the same folder is walked once only: repeats are counted, never multiplied.
    (tree / "val/zz_again").symlink_to("../../spare_pneumonia", target_is_directory=True)
    through_link = tmp_path / "dataset_link"
    through_link.symlink_to(kaggle_folder, target_is_directory=True)
    config = make_config(tmp_path / "project", str(through_link))
    result = run_download(config)
    paths = set(result.manifest["path"])
    assert {"train/NORMAL/IM-0903-0001.jpeg", "val/PNEUMONIA/person90_virus_1.jpeg"} <= paths
    assert os.path.samefile(config.paths.images / "train/NORMAL/IM-0903-0001.jpeg", spare)
    skipped = {reason for reason in result.quality["skipped"] if reason.startswith("link_")}
    assert skipped == {"link_duplicate"}
    assert result.quality["skipped_examples"]["link_duplicate"] == ["chest_xray/val/zz_again"]


def jpeg_bytes(tmp_path: Path, seed: int) -> bytes:
    return write_image(tmp_path / f"member-{seed}.jpeg", seed=seed).read_bytes()


def test_zip_members_named_outside_the_layout_are_rejected_and_counted(kaggle_zip, tmp_path):
    image = jpeg_bytes(tmp_path, seed=94)
    unsafe = {
        "../evil.jpeg": "zip_parent_name",
        "chest_xray/train/NORMAL/../../../../evil2.jpeg": "zip_parent_name",
        "/abs.jpeg": "zip_absolute_name",
        "C:/train/NORMAL/IM-0904-0001.jpeg": "zip_absolute_name",
        "train\\NORMAL\\x.jpeg": "zip_backslash_name",
    }
    with zipfile.ZipFile(kaggle_zip, "a") as archive:
        for name in unsafe:
            archive.writestr(name, image)
    with zipfile.ZipFile(kaggle_zip) as archive:  # stored as given, not cleaned on the way in
        assert set(unsafe) <= set(archive.namelist())
    project = tmp_path / "project"
    config = make_config(project, str(kaggle_zip))
    result = run_download(config)
    assert len(result.manifest) == EXPECTED_IMAGES
    skipped, examples = result.quality["skipped"], result.quality["skipped_examples"]
    assert skipped["zip_parent_name"] == 2
    assert skipped["zip_absolute_name"] == 2
    assert skipped["zip_backslash_name"] == 1
    for name, reason in unsafe.items():
        assert name in examples[reason]
    assert not list(tmp_path.rglob("evil*.jpeg")) and not list(project.rglob("x.jpeg"))


def test_zip_member_over_the_limit_is_skipped_and_not_left_on_disk(kaggle_zip, tmp_path):
    """300 KB of zeros compresses to a few hundred bytes: the limit is on what comes out."""
    bomb = "chest_xray/train/NORMAL/IM-0905-0001.jpeg"
    with zipfile.ZipFile(kaggle_zip, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(bomb, bytes(300_000))
        assert archive.getinfo(bomb).compress_size < 2_000
    config = make_config(tmp_path / "project", str(kaggle_zip), max_file_bytes=32_000)
    result = run_download(config)
    assert len(result.manifest) == EXPECTED_IMAGES
    assert result.quality["skipped"]["too_large"] == 1
    assert result.quality["skipped_examples"]["too_large"] == [bomb]
    assert not (config.paths.images / "train/NORMAL/IM-0905-0001.jpeg").exists()


def test_extraction_counts_the_bytes_and_stops_at_the_limit(tmp_path):
    """The declared size is checked first but not trusted: the copy itself stops at the limit,
    having written no more than it, and extraction leaves no partial file."""
    archive_path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive_path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros.jpeg", bytes(300_000))
    with zipfile.ZipFile(archive_path) as archive:
        member = archive.getinfo("zeros.jpeg")
        written = io.BytesIO()
        with archive.open(member) as reader:
            assert not copy_limited(reader, written, 4_096)
        assert len(written.getvalue()) <= 4_096
        destination = tmp_path / "out/zeros.jpeg"
        destination.parent.mkdir()
        assert extract_member(archive, member, destination, 4_096) == "too_large"
        assert not destination.exists()
        assert extract_member(archive, member, destination, 300_000) is None
        assert destination.stat().st_size == 300_000


def test_trailing_data_is_kept_and_reported_and_oversized_files_are_skipped(
    kaggle_folder, tmp_path
):
    tree = kaggle_folder / "chest_xray"
    padded = write_image(tree / "train/NORMAL/IM-0906-0001.jpeg", seed=95)
    padded.write_bytes(padded.read_bytes() + bytes(10_000))
    png = write_image(tree / "train/PNEUMONIA/person91_virus_1.png", seed=96)
    png.write_bytes(png.read_bytes() + b"appended")
    huge = write_image(tree / "test/NORMAL/IM-0907-0001.jpeg", seed=97)
    huge.write_bytes(huge.read_bytes() + bytes(100_000))
    config = make_config(tmp_path / "project", str(kaggle_folder), max_file_bytes=60_000)
    result = run_download(config)
    paths = set(result.manifest["path"])
    assert {"train/NORMAL/IM-0906-0001.jpeg", "train/PNEUMONIA/person91_virus_1.png"} <= paths
    assert "test/NORMAL/IM-0907-0001.jpeg" not in paths
    assert result.quality["skipped"]["too_large"] == 1
    trailing = result.quality["trailing_data"]
    assert trailing["images"] == 2
    assert trailing["bytes"] == 10_000 + len(b"appended")
    assert trailing["examples"][0] == {"path": "train/NORMAL/IM-0906-0001.jpeg", "bytes": 10_000}
    assert result.summary["trailing_data_images"] == 2
