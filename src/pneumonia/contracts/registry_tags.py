"""Tags on registered model versions: evaluate sets them, promote and predict read them. Also the
rules for the names evaluate and promote give the registry (aliases, the promotion lock) and for
the figures they write into tags."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict

THRESHOLD = "threshold"
THRESHOLD_RULE = "threshold_rule"
VAL_ROC_AUC = "val_roc_auc"
VAL_SENSITIVITY = "val_sensitivity"
VAL_SPECIFICITY = "val_specificity"
# Val figures of two versions compare only when measured on the same val images.
VAL_DATASET_DIGEST = "val_dataset_digest"
EVALUATE_RUN_ID = "evaluate_run_id"
# On the Keras model's versions: the sha256 of models/model.keras, so a retrain that gives the
# same file registers nothing new. (The operating point's and the served settings' model
# reference hold the same fact under its own key, model_reference.REFERENCE_SHA256.)
MODEL_FILE_SHA256_TAG = "model_sha256"
# ... and its LoggedModel id, which the registry's version records leave out.
MODEL_ID = "model_id"
# On the served model's versions: the Keras model version it wraps.
SOURCE_MODEL = "source_model"
SOURCE_MODEL_VERSION = "source_model_version"
SOURCE_MODEL_ID = "source_model_id"
# On the served model's versions: the sha256 of its settings.json (threshold, preprocess settings,
# input limits) as the store held it right after registration. Loading refuses a served model
# whose settings.json differs: its threshold would no longer be the one the registry records.
SETTINGS_SHA256 = "settings_sha256"
# On versions evaluate registered inside a DVC experiment (any `dvc exp run`: in the workspace,
# queued or --temp): the experiment's name (DVC_EXP_NAME). promote refuses them unless told.
DVC_EXPERIMENT = "dvc_experiment"
# On the Keras model's versions, one per threshold rule evaluated on it: the threshold that rule
# chose, so evaluating the same file under another rule records its operating point without
# replacing the first one's (`threshold.youden`, `threshold.sensitivity:0.9`).
RULE_THRESHOLD_PREFIX = "threshold."

# The tags that hold figures (format_figure, parse_figure).
FIGURE_TAGS = (THRESHOLD, VAL_ROC_AUC, VAL_SENSITIVITY, VAL_SPECIFICITY)
# What promotion compares, in this order (the first that differs decides).
COMPARED = (VAL_ROC_AUC, VAL_SENSITIVITY, VAL_SPECIFICITY)
# The evaluate run's logged metric behind each compared tag: evaluation.report.flat_metrics names
# the val section's metrics `val/<metric>`. Promotion refuses a tag that disagrees with it.
LOGGED_METRIC = {
    VAL_ROC_AUC: "val/roc_auc",
    VAL_SENSITIVITY: "val/sensitivity",
    VAL_SPECIFICITY: "val/specificity",
}

# Figures in tags are probabilities or rates, written by `format_figure` (Python's shortest
# repr of the float); read back only when they are plain decimals: no sign, no `_`, no `inf`/
# `nan`, an exponent only for small values (`1e-05`).
_FIGURE = re.compile(r"[0-9]+(?:\.[0-9]+)?(?:[eE]-[0-9]+)?")

# MLflow's alias rule (letters, digits, `_`, `-`; at most 255) and the names it reserves, which
# read as a version (`v3`) or as `latest`; this project also wants a letter or `_` first.
_ALIAS = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_RESERVED_ALIAS = re.compile(r"(?i)v\d+|latest")
MAX_ALIAS_LENGTH = 255
ALIAS_RULE = (
    "must be a name of letters, digits, '_' and '-' starting with a letter or '_', at most "
    f"{MAX_ALIAS_LENGTH} characters, not v<digits> or latest, such as candidate"
)
# The prefix of the alias an experiment's served model gets (experiment_alias).
EXPERIMENT_ALIAS_PREFIX = "exp-"

# The registered model that is the promotion lock of `<name>` while a promote holds it.
PROMOTION_LOCK_SUFFIX = ".promotion-lock"
LOCK_TOKEN = "lock_token"
LOCK_HOLDER = "lock_holder"
LOCK_SINCE = "lock_since"


def _shown(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def check_alias(value: str) -> str:
    """`value` if MLflow takes it as an alias and it cannot be read as a version; else a
    ValueError with the rule (params.yaml's evaluate.alias and promote's --from/--to)."""
    if (
        not isinstance(value, str)
        or len(value) > MAX_ALIAS_LENGTH
        or not _ALIAS.fullmatch(value)
        or _RESERVED_ALIAS.fullmatch(value)
    ):
        raise ValueError(f"{ALIAS_RULE}, got {_shown(value)}")
    return value


def experiment_alias(experiment: str) -> str:
    """The alias of the served model a DVC experiment registered: `exp-<name>`, with characters
    an alias cannot hold replaced by `-` (DVC names may hold `/` and `.`)."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", experiment).strip("-") or "unnamed"
    return check_alias(f"{EXPERIMENT_ALIAS_PREFIX}{name}"[:MAX_ALIAS_LENGTH])


def rule_threshold_tag(rule: str) -> str:
    """The Keras version's tag holding the threshold that `rule` (evaluate.threshold as
    written, e.g. youden, sensitivity:0.9, 0.5) chose on it."""
    return f"{RULE_THRESHOLD_PREFIX}{rule}"


def promotion_lock_name(name: str) -> str:
    return f"{name}{PROMOTION_LOCK_SUFFIX}"


def format_figure(value: float) -> str:
    """A figure as evaluate writes it into a tag: the float's shortest exact repr."""
    return repr(float(value))


def parse_figure(text: str | None) -> float | None:
    """The figure a tag holds, or None unless it is a plain decimal in [0, 1]. `float` alone
    would read `1_0` as 10 and take `97`, `1e308`, `inf`."""
    if text is None or not _FIGURE.fullmatch(text):
        return None
    value = float(text)
    return value if math.isfinite(value) and 0.0 <= value <= 1.0 else None


class OperatingPointTags(BaseModel):
    """The tags evaluate sets on both registered versions (the Keras model's and the served
    one's): what promote compares (val only) and predict reads (threshold). `tags()` writes them,
    figures as format_figure writes them; `from_tags` reads them back, a figure that is not a
    plain decimal in [0, 1] (parse_figure) as None, so each reader names the tag in its own
    words."""

    model_config = ConfigDict(frozen=True)

    threshold: float | None = None
    threshold_rule: str | None = None
    val_roc_auc: float | None = None
    val_sensitivity: float | None = None
    val_specificity: float | None = None
    val_dataset_digest: str | None = None
    evaluate_run_id: str | None = None

    def tags(self) -> dict[str, str]:
        """The tags of the fields that are set (evaluate sets them all)."""
        texts = {
            THRESHOLD_RULE: self.threshold_rule,
            VAL_DATASET_DIGEST: self.val_dataset_digest,
            EVALUATE_RUN_ID: self.evaluate_run_id,
        }
        figures = {name: getattr(self, name) for name in FIGURE_TAGS}
        return {
            **{name: format_figure(value) for name, value in figures.items() if value is not None},
            **{name: text for name, text in texts.items() if text is not None},
        }

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> OperatingPointTags:
        figures = {name: parse_figure(tags.get(name)) for name in FIGURE_TAGS}
        texts = {name: tags.get(name) for name in (THRESHOLD_RULE, VAL_DATASET_DIGEST)}
        return cls(**figures, **texts, evaluate_run_id=tags.get(EVALUATE_RUN_ID))

    def figure(self, name: str) -> float | None:
        """One of FIGURE_TAGS, read back."""
        return getattr(self, name)


class ServedVersionTags(BaseModel):
    """The tags evaluate adds on the served model's versions: the Keras version it wraps, the
    sha256 of its settings.json, and the DVC experiment that registered it (if not the
    workspace's)."""

    model_config = ConfigDict(frozen=True)

    source_model: str
    source_model_version: str
    source_model_id: str
    settings_sha256: str | None = None
    dvc_experiment: str | None = None

    def tags(self) -> dict[str, str]:
        values = {
            SOURCE_MODEL: self.source_model,
            SOURCE_MODEL_VERSION: self.source_model_version,
            SOURCE_MODEL_ID: self.source_model_id,
            SETTINGS_SHA256: self.settings_sha256,
        }
        if self.dvc_experiment:
            values[DVC_EXPERIMENT] = self.dvc_experiment
        return values

    @classmethod
    def recorded_settings_sha256(cls, tags: Mapping[str, str]) -> str | None:
        """The settings.json sha256 a served version records (None before it was recorded)."""
        return tags.get(SETTINGS_SHA256)
