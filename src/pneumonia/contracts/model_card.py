"""models/model.json, the model card: train writes it beside model.keras; evaluate, predict and
shift-check read it for the model's preprocess settings and registry record (the served model
records the same settings in its own artifacts)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from pneumonia.contracts.files import read_json_object, write_json
from pneumonia.errors import PipelineError

# The sections a reader relies on.
PREPROCESS = "preprocess"
REGISTRY = "mlflow"
# Keys of the registry section that name the Keras model version.
MODEL_KEYS = ("registered_model", "version", "model_id")


class ModelCardError(PipelineError, ValueError):
    """The model card is missing or malformed; the message names the file and the fix."""


@dataclass(frozen=True)
class RegistryRecord:
    """The card's registry section: the train run and the registered Keras model version."""

    run_id: str
    registered_model: str
    version: str
    model_id: str
    model_uri: str

    @property
    def model(self) -> dict[str, str]:
        """MODEL_KEYS: what an operating point and the served model record of the model."""
        return {key: getattr(self, key) for key in MODEL_KEYS}


def build_model_card(
    *,
    image_size: int,
    preprocess: dict[str, Any],
    hyperparameters: dict[str, Any],
    weights: dict[str, Any] | None = None,
    ensemble_members: int,
    validation: dict[str, float],
    tuning: dict[str, Any] | None,
    registry: RegistryRecord,
) -> dict[str, Any]:
    """What a user of models/model.keras needs: input contract, choices, provenance."""
    return {
        "input": {
            "shape": [image_size, image_size, 1],
            "dtype": "uint8",
            "note": "raw pixels after preprocess; normalisation is inside the model",
        },
        "output": "probability of PNEUMONIA (sigmoid)",
        PREPROCESS: preprocess,
        "hyperparameters": hyperparameters,
        # The architecture and its starting weights (file name and sha256 for pretrained ones).
        "weights": weights,
        "selection": (
            "Optuna on val ROC AUC; final fit (train.ensemble members, averaged) early-stopped "
            "on val ROC AUC"
        ),
        "ensemble_members": ensemble_members,
        "validation": validation,
        "tuning": tuning,
        REGISTRY: asdict(registry),
    }


def write_model_card(path: Path, card: dict[str, Any]) -> None:
    write_json(path, card)


def read_model_card(path: Path, *, require_registry: bool = True) -> dict[str, Any]:
    """The card as a dict, checked for the sections readers use."""
    card = read_json_object(
        path,
        ModelCardError,
        missing="it holds the preprocess settings of the model beside it: run the train stage "
        "(dvc repro)",
        fix="re-run the train stage",
    )
    required = (PREPROCESS, REGISTRY) if require_registry else (PREPROCESS,)
    missing = [section for section in required if section not in card]
    if missing:
        raise ModelCardError(f"{path}: no {', '.join(missing)} section; re-run the train stage")
    if require_registry:
        card_registry(card, path)
    return card


def card_registry(card: dict[str, Any], path: Path | str = "model.json") -> RegistryRecord:
    """The card's registry section, every key present."""
    section = card.get(REGISTRY)
    names = [field.name for field in fields(RegistryRecord)]
    missing = [name for name in names if not isinstance(section, dict) or name not in section]
    if missing:
        raise ModelCardError(
            f"{path}: the {REGISTRY} section lacks {', '.join(missing)}; re-run the train stage"
        )
    return RegistryRecord(**{name: str(section[name] or "") for name in names})


def card_preprocess(card: dict[str, Any]) -> Any:
    """The preprocess settings the model was trained with (imaging.transforms validates them)."""
    return card.get(PREPROCESS)


def registered_model(card: dict[str, Any]) -> dict[str, Any]:
    """The registry's name, version and id of the carded Keras model (values may be None)."""
    record = card.get(REGISTRY) or {}
    return {key: record.get(key) for key in MODEL_KEYS}
