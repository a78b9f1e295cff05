"""Tags on registered model versions: evaluate sets them, promote and predict read them."""

from __future__ import annotations

THRESHOLD = "threshold"
THRESHOLD_RULE = "threshold_rule"
VAL_ROC_AUC = "val_roc_auc"
VAL_SENSITIVITY = "val_sensitivity"
VAL_SPECIFICITY = "val_specificity"
# Val figures of two versions compare only when measured on the same val images.
VAL_DATASET_DIGEST = "val_dataset_digest"
EVALUATE_RUN_ID = "evaluate_run_id"
# On the Keras model's versions: the sha256 of models/model.keras, so a retrain that gives the
# same file registers nothing new.
MODEL_SHA256 = "model_sha256"
# ... and its LoggedModel id, which the registry's version records leave out.
MODEL_ID = "model_id"
# On the served model's versions: the Keras model version it wraps.
SOURCE_MODEL = "source_model"
SOURCE_MODEL_VERSION = "source_model_version"
SOURCE_MODEL_ID = "source_model_id"

# What promotion compares, in this order (the first that differs decides).
COMPARED = (VAL_ROC_AUC, VAL_SENSITIVITY, VAL_SPECIFICITY)
