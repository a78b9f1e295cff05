"""Pneumonia detection on pediatric chest X-rays: a reproducible DVC + MLflow + Optuna pipeline."""

import os

__version__ = "0.1.0"

# MLflow 3 sends usage telemetry from `import mlflow` on; this project's stages and commands
# send nothing anywhere (DVC's analytics are off in .dvc/config too). Set before any module of
# the package imports mlflow; `MLFLOW_DISABLE_TELEMETRY=false` in the environment opts back in.
TELEMETRY_VARIABLE = "MLFLOW_DISABLE_TELEMETRY"
os.environ.setdefault(TELEMETRY_VARIABLE, "true")
