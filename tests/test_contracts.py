"""What stages hand each other: written by one side, read back by the other, refused when off."""

import json

import numpy as np
import pandas as pd
import pytest

from pneumonia.contracts.labels import binary_labels, class_names, is_positive, label_for
from pneumonia.contracts.model_card import (
    ModelCardError,
    RegistryRecord,
    build_model_card,
    card_preprocess,
    card_registry,
    read_model_card,
    selection,
    write_model_card,
)
from pneumonia.contracts.operating_point import (
    OperatingPoint,
    OperatingPointError,
    check_same_model,
    read_operating_point,
    write_operating_point,
)

RECORD = RegistryRecord("run-1", "pneumonia-cnn", "3", "m-abc", "models:/m-abc")


def card() -> dict:
    return build_model_card(
        image_size=32,
        preprocess={
            "image_size": 32,
            "resize": "letterbox",
            "clahe": False,
            "clahe_clip_limit": 2.0,
            "clahe_tile_grid": 8,
        },
        hyperparameters={"model.depth": 2},
        selected=selection("none", 3),
        ensemble_members=1,
        validation={"val_auc": 0.9},
        tuning=None,
        registry=RECORD,
    )


def test_the_call_rule_is_at_or_above_the_threshold():
    scores = np.array([0.2, 0.5, 0.7])
    np.testing.assert_array_equal(is_positive(scores, 0.5), [False, True, True])
    assert label_for(0.5, 0.5) == "PNEUMONIA" and label_for(0.49, 0.5) == "NORMAL"
    np.testing.assert_array_equal(class_names(np.array([0, 1])), ["NORMAL", "PNEUMONIA"])
    np.testing.assert_array_equal(binary_labels(pd.Series(["PNEUMONIA", "NORMAL"])), [1, 0])


def test_model_card_round_trips_and_names_a_missing_registry_key(tmp_path):
    path = tmp_path / "model.json"
    write_model_card(path, card())
    read = read_model_card(path)
    assert card_registry(read, path) == RECORD
    assert RECORD.model == {
        "registered_model": "pneumonia-cnn",
        "version": "3",
        "model_id": "m-abc",
    }
    assert card_preprocess(read)["image_size"] == 32
    broken = card().model_copy(update={"mlflow": {**card().mlflow}})
    del broken.mlflow["run_id"]
    write_model_card(path, broken)
    with pytest.raises(ModelCardError, match=r"model\.json: the mlflow section lacks run_id"):
        read_model_card(path)
    # Readers that need only the preprocess settings (predict) accept it.
    assert read_model_card(path, require_registry=False).preprocess["resize"] == "letterbox"


def test_operating_point_round_trips_and_belongs_to_its_model(tmp_path):
    path = tmp_path / "threshold.json"
    point = OperatingPoint(threshold=0.42, model=RECORD.model, rule="youden")
    write_operating_point(path, point)
    assert json.loads(path.read_text())["chosen_on"] == "val"
    assert read_operating_point(path) == point
    check_same_model(card(), point, tmp_path / "model.json", path)
    older = OperatingPoint(threshold=0.42, model={**RECORD.model, "version": "2"})
    with pytest.raises(OperatingPointError, match=r"chosen for model version 2 but .* version 3"):
        check_same_model(card(), older, tmp_path / "model.json", path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"threshold": "high"}', "no numeric 'threshold'"),
        ('{"threshold": NaN}', "no numeric 'threshold'"),
        ("[0.5]", "expected a JSON object"),
        ("{not json", "not valid JSON"),
    ],
)
def test_a_malformed_operating_point_is_refused_naming_the_file(tmp_path, content, message):
    path = tmp_path / "threshold.json"
    path.write_text(content)
    with pytest.raises(OperatingPointError, match=message):
        read_operating_point(path)
