import pandas as pd
import pytest

from pneumonia.config import SplitConfig
from pneumonia.data.patients import patient_key
from pneumonia.data.split import (
    LeakageError,
    SplitError,
    check_no_leakage,
    group_ids,
    split_manifest,
)


def manifest_rows(source_split, label, names, sha_prefix):
    rows = []
    for position, name in enumerate(names):
        rows.append(
            {
                "path": f"{source_split}/{label}/{name}",
                "label": label,
                "source_split": source_split,
                "patient_id": patient_key(source_split, name)[0],
                "sha256": f"{sha_prefix}{position:04d}",
            }
        )
    return rows


def synthetic_manifest(normal_patients=40, pneumonia_patients=120, images_per_patient=2):
    rows = []
    for patient in range(normal_patients):
        names = [f"IM-{patient:04d}-{i:04d}.jpeg" for i in range(1, images_per_patient + 1)]
        rows += manifest_rows("train", "NORMAL", names, f"n{patient}-")
    for patient in range(pneumonia_patients):
        names = [f"person{patient}_bacteria_{i}.jpeg" for i in range(images_per_patient)]
        rows += manifest_rows("train", "PNEUMONIA", names, f"p{patient}-")
    rows += manifest_rows("val", "PNEUMONIA", ["person5_virus_99.jpeg"], "v")
    rows += manifest_rows("test", "NORMAL", [f"IM-{i:04d}-0001.jpeg" for i in range(10)], "tn")
    rows += manifest_rows("test", "PNEUMONIA", [f"person{i}_virus_1.jpeg" for i in range(10)], "tp")
    return pd.DataFrame(rows)


def test_split_is_patient_level_stratified_and_keeps_official_test():
    manifest = synthetic_manifest()
    result = split_manifest(manifest, SplitConfig(val_fraction=0.2, seed=1))
    train, val, test = (result.splits[name] for name in ("train", "val", "test"))
    assert set(test["path"]) == set(manifest.loc[manifest["source_split"] == "test", "path"])
    assert len(train) + len(val) + len(test) == len(manifest)
    assert not set(train["patient_id"]) & set(val["patient_id"])
    # The official val image of person5 stays with the rest of person5's images.
    person5 = pd.concat([train, val])
    person5 = person5[person5["patient_id"] == "trainval:person5"]
    assert len(person5) == 3 and person5["path"].isin(val["path"]).nunique() == 1
    for label in ("NORMAL", "PNEUMONIA"):
        total = (train["label"] == label).sum() + (val["label"] == label).sum()
        assert (val["label"] == label).sum() / total == pytest.approx(0.2, abs=0.03)


def test_same_seed_same_split_other_seed_other_split():
    manifest = synthetic_manifest()
    first = split_manifest(manifest, SplitConfig(val_fraction=0.2, seed=1)).splits["val"]
    again = split_manifest(manifest, SplitConfig(val_fraction=0.2, seed=1)).splits["val"]
    other = split_manifest(manifest, SplitConfig(val_fraction=0.2, seed=2)).splits["val"]
    assert first.equals(again)
    assert set(first["path"]) != set(other["path"])


def test_byte_identical_images_of_different_patients_stay_together():
    frame = pd.DataFrame(
        {
            "patient_id": [
                "trainval:person1",
                "trainval:person2",
                "trainval:person3",
                "trainval:person1",
            ],
            "sha256": ["a", "b", "a", "c"],
        }
    )
    groups = group_ids(frame)
    assert groups.tolist() == [
        "trainval:person1",
        "trainval:person2",
        "trainval:person1",
        "trainval:person1",
    ]


def test_duplicates_never_cross_the_split():
    manifest = synthetic_manifest()
    # person7 and person8 share an image byte for byte; person9 shares one with person7.
    manifest.loc[manifest["path"] == "train/PNEUMONIA/person8_bacteria_0.jpeg", "sha256"] = (
        "p7-0000"
    )
    manifest.loc[manifest["path"] == "train/PNEUMONIA/person9_bacteria_1.jpeg", "sha256"] = (
        "p7-0001"
    )
    for seed in range(10):
        splits = split_manifest(manifest, SplitConfig(val_fraction=0.3, seed=seed)).splits
        owners = {
            name
            for name in ("train", "val")
            for patient in ("person7", "person8", "person9")
            if (splits[name]["patient_id"] == f"trainval:{patient}").any()
        }
        assert len(owners) == 1


def test_train_image_identical_to_a_test_image_is_dropped_and_reported():
    manifest = synthetic_manifest()
    manifest.loc[manifest["path"] == "train/NORMAL/IM-0003-0001.jpeg", "sha256"] = "tn0002"
    result = split_manifest(manifest, SplitConfig(val_fraction=0.2, seed=0))
    assert result.report["dropped_identical_to_test"] == ["train/NORMAL/IM-0003-0001.jpeg"]
    assert len(result.splits["test"]) == 20


def test_leakage_check_fails_loudly():
    frame = pd.DataFrame({"path": ["a", "b"], "patient_id": ["p1", "p1"], "sha256": ["x", "y"]})
    with pytest.raises(LeakageError, match=r"patient_id.*p1 \(train and val\)"):
        check_no_leakage({"train": frame.iloc[:1], "val": frame.iloc[1:]})
    frame = pd.DataFrame({"path": ["a", "b"], "patient_id": ["p1", "p2"], "sha256": ["x", "x"]})
    with pytest.raises(LeakageError, match="sha256"):
        check_no_leakage({"train": frame.iloc[:1], "test": frame.iloc[1:]})


def test_too_few_patients_is_a_clear_error():
    manifest = synthetic_manifest(normal_patients=1)
    with pytest.raises(SplitError, match="class NORMAL has 1 patient group"):
        split_manifest(manifest, SplitConfig(val_fraction=0.2, seed=0))


def test_fraction_too_small_for_any_patient_is_a_clear_error():
    manifest = synthetic_manifest(normal_patients=3, images_per_patient=5)
    with pytest.raises(SplitError, match=r"split\.val_fraction"):
        split_manifest(manifest, SplitConfig(val_fraction=0.01, seed=0))
