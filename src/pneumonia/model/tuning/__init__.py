"""Hyperparameter search with Optuna: seeded TPE, a pruner fed val AUC each epoch, every trial a
nested MLflow run. The objective is val ROC AUC; the test split is never read here.

One module per concern: search_space (the tuned parameters, declared once), storage (the study
database), orphans (trials a dead process left RUNNING), study (create, join, run, load),
objective (one trial), reporting (the study in the train run and the model card), records (the
attribute names other processes read). The names below are those the stages, the CLI and the
tests import from here."""

from pneumonia.model.tuning.objective import make_objective
from pneumonia.model.tuning.orphans import (
    RequeueStaleTrial,
    end_lost_runs,
    fail_orphaned_trials,
    fail_stale_trials,
)
from pneumonia.model.tuning.records import (
    ARCHITECTURE_ATTRIBUTE,
    FRESH_STUDY_ATTRIBUTE,
    MLFLOW_RUN_ATTRIBUTE,
    OBJECTIVE_NAMES,
    OWNER_ATTRIBUTE,
    TuningError,
    trial_number,
)
from pneumonia.model.tuning.reporting import card_tuning, log_study, study_plots, study_summary
from pneumonia.model.tuning.search_space import (
    SEARCH_SPACE,
    Parameter,
    fixed_trial_params,
    hyperparameters_from,
    suggest,
)
from pneumonia.model.tuning.storage import (
    SCHEMA_ATTEMPTS,
    loggable_train_params,
    make_storage,
    resolve_storage,
)
from pneumonia.model.tuning.study import (
    check_study_architecture,
    create_study,
    fresh_study_name,
    load_tuned_study,
    make_pruner,
    require_complete_trial,
    run_study,
    study_for_training,
)

# Imported from here by model/workers.py before redaction.py held it.
from pneumonia.redaction import redact_url

__all__ = [
    "ARCHITECTURE_ATTRIBUTE",
    "FRESH_STUDY_ATTRIBUTE",
    "MLFLOW_RUN_ATTRIBUTE",
    "OBJECTIVE_NAMES",
    "OWNER_ATTRIBUTE",
    "SCHEMA_ATTEMPTS",
    "SEARCH_SPACE",
    "Parameter",
    "RequeueStaleTrial",
    "TuningError",
    "card_tuning",
    "check_study_architecture",
    "create_study",
    "end_lost_runs",
    "fail_orphaned_trials",
    "fail_stale_trials",
    "fixed_trial_params",
    "fresh_study_name",
    "hyperparameters_from",
    "load_tuned_study",
    "log_study",
    "loggable_train_params",
    "make_objective",
    "make_pruner",
    "make_storage",
    "redact_url",
    "require_complete_trial",
    "resolve_storage",
    "run_study",
    "study_for_training",
    "study_plots",
    "study_summary",
    "suggest",
    "trial_number",
]
