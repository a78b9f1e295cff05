"""models/model.json, the model card: train writes it beside model.keras; evaluate, predict and
shift-check read it for the model's image spec (its `preprocess` section) and registry record
(the served model records the same spec in its own settings).

Schema versions (SCHEMA_VERSION, `upgrade`):
- 0: written before cards were versioned, no `schema_version` key;
- 1: the same keys, plus `schema_version: 1`;
- 2: plus `input_spec` (contracts.input_spec, its own version inside): the input, the
  preprocessing steps with their params and the output, as every export writes it beside the
  model; its threshold is null here (evaluate chooses it: threshold.json, and the spec of the
  model card Markdown and of every export state it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pneumonia.contracts.files import read_json_object, write_json
from pneumonia.contracts.image_spec import ImageSpec
from pneumonia.contracts.input_spec import input_spec_of
from pneumonia.contracts.model_reference import MODEL_KEYS
from pneumonia.contracts.versioning import SCHEMA_VERSION_KEY, current_form, validated
from pneumonia.errors import PipelineError

SCHEMA_VERSION = 2
# The sections a reader relies on.
PREPROCESS = "preprocess"
REGISTRY = "mlflow"
# What each train.weight_averaging.method keeps of a member's final fit.
KEPT_WEIGHTS = {
    "none": "its best epoch by val ROC AUC",
    "ema": "its best epoch, by val ROC AUC, of the weights' moving average (EMA)",
    "swa": "the mean of its last {swa_epochs} epochs' weights (SWA), batch norm statistics "
    "recomputed on train",
}
FIX = "re-run the train stage"


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


class ModelCard(BaseModel):
    """The card. Only `preprocess` is required of a card read back (predict needs nothing else);
    readers that need the registry section ask for it (`registry`). `preprocess` stays a mapping
    here: imaging.transforms.config_from_settings checks it, naming the file."""

    model_config = ConfigDict(frozen=True, extra="allow", populate_by_name=True)

    schema_version: int = SCHEMA_VERSION
    input: dict[str, Any] | None = None
    output: str | None = None
    preprocess: Any
    input_spec: dict[str, Any] | None = None
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    # The architecture and its starting weights (file name and sha256 for pretrained ones).
    weights: dict[str, Any] | None = None
    selection: str | None = None
    ensemble_members: int | None = None
    validation: dict[str, Any] = Field(default_factory=dict)
    tuning: dict[str, Any] | None = None
    mlflow: dict[str, Any] | None = None

    @property
    def image_spec(self) -> ImageSpec:
        """The preprocess section as the typed spec (a card train wrote always holds one)."""
        return ImageSpec.of(self.preprocess)

    def registry(self, path: Path | str = "model.json") -> RegistryRecord:
        """The registry section, every key present, else a ModelCardError naming `path`."""
        section = self.mlflow
        names = list(RegistryRecord.__dataclass_fields__)
        missing = [name for name in names if not isinstance(section, dict) or name not in section]
        if missing:
            raise ModelCardError(
                f"{path}: the {REGISTRY} section lacks {', '.join(missing)}; {FIX}"
            )
        return RegistryRecord(**{name: str(section[name] or "") for name in names})

    def registered_model(self) -> dict[str, Any]:
        """The registry's name, version and id of the carded model (values may be None)."""
        record = self.mlflow or {}
        return {key: record.get(key) for key in MODEL_KEYS}

    def as_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def selection(method: str, swa_epochs: int) -> str:
    """The card's account of how the model was chosen and which weights it holds."""
    kept = KEPT_WEIGHTS[method].format(swa_epochs=swa_epochs)
    return (
        "Optuna on val ROC AUC; final fit of train.ensemble members (their scores averaged), "
        f"each member keeping {kept}"
    )


def build_model_card(
    *,
    image_size: int,
    preprocess: ImageSpec | dict[str, Any],
    hyperparameters: dict[str, Any],
    weights: dict[str, Any] | None = None,
    selected: str,
    ensemble_members: int,
    validation: dict[str, float],
    tuning: dict[str, Any] | None,
    registry: RegistryRecord,
) -> ModelCard:
    """What a user of models/model.keras needs: input contract, choices, provenance."""
    spec = preprocess.as_json() if isinstance(preprocess, ImageSpec) else dict(preprocess)
    return ModelCard(
        input={
            "shape": [image_size, image_size, 1],
            "dtype": "uint8",
            "note": "raw pixels after preprocess; normalisation is inside the model",
        },
        output="score of PNEUMONIA from 0 to 1 (sigmoid; not a calibrated probability)",
        preprocess=spec,
        input_spec=input_spec_of(
            ImageSpec.of(spec), threshold=None, operating_point=None
        ).as_json(),
        hyperparameters=hyperparameters,
        weights=weights,
        selection=selected,
        ensemble_members=ensemble_members,
        validation=validation,
        tuning=tuning,
        mlflow={name: getattr(registry, name) for name in RegistryRecord.__dataclass_fields__},
    )


def upgrade(raw: dict[str, Any]) -> dict[str, Any]:
    """A card of one version in the next one: 0 -> 1 adds the key only; 1 -> 2 adds the input
    spec of its preprocess section (left out when that section cannot give one: the card's
    readers name what is wrong with it)."""
    version = raw.get(SCHEMA_VERSION_KEY, 0)
    upgraded = {**raw, SCHEMA_VERSION_KEY: version + 1}
    if version == 1 and "input_spec" not in raw:
        try:
            spec = ImageSpec.of(raw[PREPROCESS])
        except (KeyError, TypeError, ValueError):
            return upgraded
        upgraded["input_spec"] = input_spec_of(spec, threshold=None, operating_point=None).as_json()
    return upgraded


def write_model_card(path: Path, card: ModelCard) -> None:
    write_json(path, card.as_json())


def read_model_card(path: Path, *, require_registry: bool = True) -> ModelCard:
    """The card, upgraded to SCHEMA_VERSION and checked for the sections readers use."""
    raw = read_json_object(
        path,
        ModelCardError,
        missing="it holds the preprocess settings of the model beside it: run the train stage "
        "(dvc repro)",
        fix=FIX,
    )
    raw = current_form(raw, path, current=SCHEMA_VERSION, upgrade=upgrade, error=ModelCardError)
    required = (PREPROCESS, REGISTRY) if require_registry else (PREPROCESS,)
    missing = [section for section in required if section not in raw]
    if missing:
        raise ModelCardError(f"{path}: no {', '.join(missing)} section; {FIX}")
    card = validated(ModelCard, raw, path, ModelCardError, FIX)
    if require_registry:
        card.registry(path)
    return card


def card_registry(card: ModelCard, path: Path | str = "model.json") -> RegistryRecord:
    """The card's registry section, every key present (ModelCard.registry)."""
    return card.registry(path)


def card_preprocess(card: ModelCard) -> Any:
    """The preprocess settings the model was trained with (imaging.transforms validates them)."""
    return card.preprocess
