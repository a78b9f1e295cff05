"""A study's record in the train run: its summary, trials table and plots, and the summary the
model card shows."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import mlflow
import optuna
from optuna.trial import TrialState

from pneumonia.config import TuningConfig
from pneumonia.model.tuning.records import OWNER_ATTRIBUTE, trial_number
from pneumonia.tracking import StageRun


def study_summary(study: optuna.Study) -> dict[str, Any]:
    states = [trial.state.name for trial in study.trials]
    best = study.best_trial
    return {
        "study_name": study.study_name,
        "trials": len(states),
        "complete": states.count("COMPLETE"),
        "pruned": states.count("PRUNED"),
        "failed": states.count("FAIL"),
        "best_trial": trial_number(best.number),
        "best_val_auc": best.value,
        "best_params": best.params,
    }


def card_tuning(summary: dict[str, Any] | None, tuning: TuningConfig) -> dict[str, Any] | None:
    """The study summary for the model card: a fresh study's random name is left out (it is the
    train run's `optuna_study` tag), so the same trials give the same card."""
    if summary is None or tuning.study_name:
        return summary
    return {key: value for key, value in summary.items() if key != "study_name"}


def study_plots(study: optuna.Study, folder: Path) -> list[Path]:
    """Optuna's optimisation-history and param-importance figures, as PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    plots = {"optimization_history": optuna_plots.plot_optimization_history}
    if sum(trial.state == TrialState.COMPLETE for trial in study.trials) >= 2:
        plots["param_importances"] = optuna_plots.plot_param_importances
    for name, plot in plots.items():
        try:
            axes = plot(study)
        except (RuntimeError, ValueError) as error:  # e.g. every trial had the same params
            print(f"train: skipped the {name} plot: {error}")
            continue
        path = folder / f"{name}.png"
        axes.figure.savefig(path, dpi=100, bbox_inches="tight")
        plt.close(axes.figure)
        written.append(path)
    return written


def log_study(
    run: StageRun, study: optuna.Study | None, trials_table: Path
) -> dict[str, Any] | None:
    """The study's trials table (a header only without tuning), summary, plots and counts in the
    train run; returns the summary."""
    if study is None:
        trials_table.write_text("trial,number,state,value\n")
        return None
    mlflow.set_tag("optuna_study", study.study_name)
    summary = study_summary(study)
    run.log_json(summary, "tuning/study_summary.json")
    # The owner's pid and boot are for the orphan check, not for the table.
    table = study.trials_dataframe().drop(
        columns=[f"system_attrs_{OWNER_ATTRIBUTE}"], errors="ignore"
    )
    # `trial` as the console and MLflow count (1-based); `number` is Optuna's own.
    table.insert(0, "trial", [trial_number(number) for number in table["number"]])
    table.to_csv(trials_table, index=False)
    with tempfile.TemporaryDirectory() as scratch:
        for plot in study_plots(study, Path(scratch)):
            run.log_artifact(plot, "tuning")
    mlflow.log_metrics(
        {
            "tuning_best_val_auc": summary["best_val_auc"],
            "tuning_trials_complete": summary["complete"],
            "tuning_trials_pruned": summary["pruned"],
        }
    )
    return summary
