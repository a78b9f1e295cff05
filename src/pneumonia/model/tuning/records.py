"""What a study and its trials record in the Optuna storage for other processes (tune workers,
a later train stage, optuna-dashboard) to read, and the error the tuning modules raise."""

from __future__ import annotations

from pneumonia.errors import PipelineError
from pneumonia.model.training import MONITOR

# The trial's user attribute that names its MLflow run.
MLFLOW_RUN_ATTRIBUTE = "mlflow_run_id"
# The trial's system attribute naming the process that runs it (tracking.ProcessIdentity), so
# another train stage can prove it gone (fail_orphaned_trials). Not in the trials table.
OWNER_ATTRIBUTE = "process"
# The study's user attribute marking a fresh study (train.tuning.study_name ""): named by this
# code, run by one train stage, never reopened.
FRESH_STUDY_ATTRIBUTE = "fresh_study"
# The study's user attribute naming the train.model.architecture its trials train: a CNN's and a
# backbone's trials have different hyperparameters, so one study must not hold both.
ARCHITECTURE_ATTRIBUTE = "architecture"
# The objective's name in optuna-dashboard (it is the val ROC AUC, as Keras measures it).
OBJECTIVE_NAMES = [MONITOR]


def trial_number(optuna_number: int) -> int:
    """A trial as a person counts it (1-based: the console, MLflow run names, train.json, the
    model card). Optuna's own 0-based number stays in the `optuna_trial` tag and the trials
    table's `number` column, as optuna-dashboard shows it."""
    return optuna_number + 1


class TuningError(PipelineError, RuntimeError):
    """The study produced no usable trial."""
