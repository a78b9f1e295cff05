"""The typed, versioned records of pneumonia.contracts: each written by its one writer and read
back by its one reader; an old file (no schema_version) read through the record's upgrade; a
newer or malformed file refused in one line naming the file."""

import json

import pytest

from pneumonia.contracts.image_spec import IMAGE_SPEC_KEYS, ImageSpec
from pneumonia.contracts.metrics_report import Figure, figure_key, flat_figure
from pneumonia.contracts.model_card import SCHEMA_VERSION as CARD_VERSION
from pneumonia.contracts.model_card import (
    ModelCard,
    ModelCardError,
    RegistryRecord,
    build_model_card,
    read_model_card,
    selection,
    write_model_card,
)
from pneumonia.contracts.model_reference import ModelReference
from pneumonia.contracts.operating_point import (
    SCHEMA_VERSION as POINT_VERSION,
)
from pneumonia.contracts.operating_point import (
    OperatingPoint,
    OperatingPointError,
    read_operating_point,
    write_operating_point,
)
from pneumonia.contracts.registry_tags import (
    MODEL_FILE_SHA256_TAG,
    OperatingPointTags,
    ServedVersionTags,
)
from pneumonia.contracts.served_settings import (
    SCHEMA_VERSION as SETTINGS_VERSION,
)
from pneumonia.contracts.served_settings import (
    ServedSettings,
    ServedSettingsError,
    read_served_settings,
    write_served_settings,
)
from pneumonia.errors import PipelineError

SPEC = ImageSpec(
    image_size=32, resize="letterbox", clahe=True, clahe_clip_limit=2.0, clahe_tile_grid=4
)
RECORD = RegistryRecord("run-1", "pneumonia-cnn", "3", "m-abc", "models:/m-abc")
REFERENCE = ModelReference(registered_model="pneumonia-cnn", version="3", model_id="m-abc")


def card() -> ModelCard:
    return build_model_card(
        image_size=32,
        preprocess=SPEC,
        hyperparameters={"model.depth": 2},
        selected=selection("swa", 3),
        ensemble_members=1,
        validation={"val_auc": 0.9},
        tuning=None,
        registry=RECORD,
    )


@pytest.mark.parametrize(
    ("method", "kept"),
    [
        ("none", "each member keeping its best epoch by val ROC AUC"),
        ("ema", "its best epoch, by val ROC AUC, of the weights' moving average"),
        ("swa", "each member keeping the mean of its last 3 epochs' weights (SWA)"),
    ],
)
def test_the_card_names_the_weights_each_member_keeps(method, kept):
    said = selection(method, 3)
    assert kept in said
    # swa's model is no epoch's: the card must not say it keeps a best one.
    assert ("best epoch" in said) == (method != "swa")


def test_the_model_card_round_trips_with_its_schema_version(tmp_path):
    path = tmp_path / "model.json"
    write_model_card(path, card())
    written = json.loads(path.read_text())
    assert written["schema_version"] == CARD_VERSION == 2
    # The keys readers of before know keep their names.
    assert {"input", "output", "preprocess", "hyperparameters", "weights", "selection"} <= set(
        written
    )
    assert written["mlflow"]["model_uri"] == "models:/m-abc"
    read = read_model_card(path)
    assert read == card()
    assert read.registry(path) == RECORD
    assert read.image_spec == SPEC and tuple(SPEC.as_json()) == IMAGE_SPEC_KEYS
    # Version 2's input spec: the preprocessing in full, the threshold left to evaluate.
    assert written["input_spec"]["image_spec"] == SPEC.as_json()
    assert written["input_spec"]["output"]["threshold"] is None
    # A version 1 card (before the input spec) reads with the spec of its preprocess section.
    older = {key: value for key, value in written.items() if key != "input_spec"}
    path.write_text(json.dumps({**older, "schema_version": 1}))
    assert read_model_card(path) == card()


def test_the_operating_point_round_trips_with_its_model_reference_and_site(tmp_path):
    path = tmp_path / "threshold.json"
    point = OperatingPoint(
        threshold=0.42, model=REFERENCE.model_copy(update={"sha256": "ab" * 32}), rule="youden"
    )
    write_operating_point(path, point)
    written = json.loads(path.read_text())
    assert written["schema_version"] == POINT_VERSION == 2
    assert written["model"]["sha256"] == "ab" * 32
    # No site and no served model: the keys are not written (as before the site existed).
    assert not {"site", "serving_model", "version", "calibration"} & set(written)
    assert read_operating_point(path) == point
    sited = point.model_copy(update={"site": "hospital-b"})
    write_operating_point(path, sited)
    assert read_operating_point(path).site == "hospital-b"


def test_the_served_settings_round_trip(tmp_path):
    path = tmp_path / "settings.json"
    settings = ServedSettings(
        threshold=0.3,
        preprocess=SPEC.as_json(),
        limits={"max_pixels": 10, "max_file_bytes": 20},
        positive_class="PNEUMONIA",
        source=REFERENCE,
    )
    write_served_settings(path, settings)
    written = json.loads(path.read_text())
    assert written["schema_version"] == SETTINGS_VERSION == 2
    assert written["operating_point"] == "val"
    assert read_served_settings(path) == settings
    site = settings.model_copy(update={"operating_point": "site st-marys v2"})
    write_served_settings(path, site)
    assert read_served_settings(path).operating_point == "site st-marys v2"
    # A version 1 file (before the settings named their operating point): evaluate's, on val.
    raw = {key: value for key, value in written.items() if key != "operating_point"}
    path.write_text(json.dumps({**raw, "schema_version": 1}))
    assert read_served_settings(path) == settings


def test_registry_tags_round_trip_and_name_distinct_hashes():
    tags = OperatingPointTags(
        threshold=0.25,
        threshold_rule="youden",
        val_roc_auc=0.9,
        val_sensitivity=0.8,
        val_specificity=0.7,
        val_dataset_digest="d1",
        evaluate_run_id="r1",
    )
    written = tags.tags()
    assert written["threshold"] == "0.25" and written["val_roc_auc"] == "0.9"
    assert OperatingPointTags.from_tags(written) == tags
    # A figure that is not a plain decimal in [0, 1] reads as absent.
    assert OperatingPointTags.from_tags({**written, "threshold": "1_0"}).threshold is None
    served = ServedVersionTags(
        source_model="pneumonia-cnn", source_model_version="3", source_model_id="m-abc"
    )
    assert "dvc_experiment" not in served.tags()
    # The registry tag of the model file's hash and the reference's key are different names.
    assert MODEL_FILE_SHA256_TAG == "model_sha256" and "sha256" in ModelReference.model_fields


def test_a_headline_figure_is_a_value_with_its_interval():
    headline = {
        figure_key("test", "roc_auc"): 0.9,
        figure_key("test", "roc_auc", "low"): 0.85,
        figure_key("test", "roc_auc", "high"): 0.95,
    }
    assert flat_figure(headline, "test", "roc_auc") == Figure(value=0.9, low=0.85, high=0.95)


def test_files_written_before_schema_versions_are_read_through_the_upgrade(tmp_path):
    """Written by the code before records were versioned: literal dicts, once, here."""
    old_card = {
        "input": {"shape": [32, 32, 1], "dtype": "uint8", "note": "raw pixels"},
        "output": "probability of PNEUMONIA (sigmoid)",
        "preprocess": SPEC.as_json(),
        "hyperparameters": {"model.depth": 2},
        "weights": None,
        "selection": "Optuna on val ROC AUC",
        "ensemble_members": 1,
        "validation": {"val_auc": 0.9},
        "tuning": None,
        "mlflow": {
            "run_id": "run-1",
            "registered_model": "pneumonia-cnn",
            "version": "3",
            "model_id": "m-abc",
            "model_uri": "models:/m-abc",
        },
    }
    old_point = {
        "threshold": 0.42,
        "rule": "youden",
        "chosen_on": "val",
        "val_sensitivity": 0.8,
        "val_specificity": None,
        "model": {**REFERENCE.as_json(), "sha256": "cd" * 32},
        "evaluate_run_id": "r1",
    }
    old_settings = {
        "threshold": 0.42,
        "preprocess": SPEC.as_json(),
        "positive_class": "PNEUMONIA",
        "source": {"registered_model": "pneumonia-cnn", "version": "3"},
    }
    for name, data in (("model", old_card), ("threshold", old_point), ("settings", old_settings)):
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
    card_read = read_model_card(tmp_path / "model.json")
    assert card_read.schema_version == CARD_VERSION and card_read.registry() == RECORD
    point = read_operating_point(tmp_path / "threshold.json")
    assert point.schema_version == POINT_VERSION and point.site is None
    assert point.model.sha256 == "cd" * 32 and point.val_specificity is None
    settings = read_served_settings(tmp_path / "settings.json")
    assert settings.schema_version == SETTINGS_VERSION and settings.limits is None
    assert settings.source.version == "3" and settings.operating_point == "val"


@pytest.mark.parametrize(
    ("name", "reader", "error", "minimal"),
    [
        ("model.json", read_model_card, ModelCardError, {"preprocess": {}, "mlflow": {}}),
        ("threshold.json", read_operating_point, OperatingPointError, {"threshold": 0.5}),
        ("settings.json", read_served_settings, ServedSettingsError, {"threshold": 0.5}),
    ],
)
def test_a_newer_or_malformed_file_is_refused_in_one_line_naming_it(
    tmp_path, name, reader, error, minimal
):
    path = tmp_path / name
    path.write_text(json.dumps({**minimal, "preprocess": {}, "schema_version": 99}))
    with pytest.raises(error, match=r"schema_version 99 is newer than this code reads") as caught:
        reader(path)
    assert str(path) in str(caught.value) and "update the pneumonia package" in str(caught.value)
    assert isinstance(caught.value, PipelineError) and len(str(caught.value).splitlines()) == 1
    path.write_text(json.dumps({**minimal, "preprocess": {}, "schema_version": "one"}))
    with pytest.raises(error, match="not a version number"):
        reader(path)
    path.write_text("{not json")
    with pytest.raises(error, match=r"not valid JSON") as caught:
        reader(path)
    assert str(caught.value).startswith(str(path))


def test_a_field_of_the_wrong_type_names_the_file_and_the_key(tmp_path):
    path = tmp_path / "threshold.json"
    path.write_text(json.dumps({"threshold": 0.5, "model": {"version": ["3"]}}))
    with pytest.raises(OperatingPointError, match=r"threshold\.json: model\.version: ") as caught:
        read_operating_point(path)
    assert len(str(caught.value).splitlines()) == 1
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"threshold": "high", "preprocess": {}}))
    with pytest.raises(ServedSettingsError, match=r"settings\.json: threshold: "):
        read_served_settings(path)
