"""DVC stage `train`: tune the CNN with Optuna on val AUC (or take the best trial of a study that
tuning workers ran), refit the best configuration, save, log and register the model. Reads the
train and val splits only; test is evaluate's."""

import os
import tempfile
from pathlib import Path

import _bootstrap  # noqa: F401  (this tree's src/ before any installed pneumonia)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter out

import mlflow
import pandas as pd
from sklearn.metrics import roc_auc_score

from pneumonia.cli import run_stage
from pneumonia.config import load_config
from pneumonia.evaluation import predict_scores
from pneumonia.files import write_json
from pneumonia.registry import log_and_register, model_card
from pneumonia.robustness import check_model
from pneumonia.tracking import stage_run
from pneumonia.training import (
    MONITOR,
    best_epoch,
    configure_runtime,
    fit_ensemble,
    load_training_splits,
    members_table,
)
from pneumonia.tuning import (
    hyperparameters_from,
    load_tuned_study,
    loggable_train_params,
    run_study,
    study_plots,
    study_summary,
)


def main() -> None:
    config = load_config()
    paths, settings = config.paths, config.train
    train, val = load_training_splits(config)
    params = {
        "train": loggable_train_params(config.params["train"]),
        "preprocess.image_size": train.images.shape[1],
    }
    paths.train_reports.mkdir(parents=True, exist_ok=True)
    with stage_run("train", config, params) as run:
        mlflow.set_tags(configure_runtime(settings.seed, settings.mixed_precision))
        run.log_hashes("input", [paths.processed_split("train"), paths.processed_split("val")])
        hyperparameters, summary = settings.fixed, None
        trials_file = paths.train_reports / "trials.csv"
        trials_file.write_text("number,state,value\n")  # stays so when tuning is off
        study = None
        if settings.tuning.n_trials > 0:
            study = run_study(settings, train, val, run.run_id, config.project_root)
        elif settings.tuning.study_name:
            # Tuning workers (`pneumonia tune-worker`) ran the trials; refit their best.
            study = load_tuned_study(settings.tuning, config.project_root)
        if study is not None:
            mlflow.set_tag("optuna_study", study.study_name)
            summary = study_summary(study)
            hyperparameters = hyperparameters_from(study.best_trial.params, settings.fixed)
            run.log_json(summary, "tuning/study_summary.json")
            study.trials_dataframe().to_csv(trials_file, index=False)
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
        mlflow.log_params({f"chosen.{k}": v for k, v in hyperparameters.flat().items()})

        final = fit_ensemble(hyperparameters, train, val, settings, run.run_id)
        model, history = final.model, final.histories[0]
        epoch, val_auc = best_epoch(history)
        epochs_run = sum(len(member.history[MONITOR]) for member in final.histories)
        members = pd.DataFrame(members_table(final.histories, settings.seed))
        members.to_csv(paths.train_reports / "members.csv", index=False)
        metrics = {
            # best_val_auc / best_epoch: member 0's best epoch (Keras' AUC, as early stopping
            # saw it); val_auc: the saved model (the members' average when ensemble > 1).
            "best_val_auc": val_auc,
            "best_epoch": epoch,
            "val_auc": float(roc_auc_score(val.labels, predict_scores(model, val.images))),
            "ensemble_members": len(final.histories),
            "epochs_run": epochs_run,
            "final_fit_seconds": round(final.seconds, 1),
            "train_images_per_second": round(len(train.images) * epochs_run / final.seconds, 1),
        }

        # Val images under acquisition shifts (robustness.py): a val signal that the clean,
        # nearly saturated val AUC does not give. Val only; test stays evaluate's.
        shift = check_model(
            lambda images: predict_scores(model, images),
            paths.split_csv("val"),
            paths.images,
            config.preprocess,
            settings.seed,
        )
        metrics.update({key: round(value, 6) for key, value in shift.summary.items()})
        shift.table.to_csv(paths.train_reports / "val_shift.csv", index=False)

        paths.models.mkdir(parents=True, exist_ok=True)
        model.save(paths.model)
        run.log_hashes("output", [paths.model])
        frame = pd.DataFrame(history.history)
        frame.insert(0, "epoch", range(len(frame)))
        frame.to_csv(paths.train_reports / "history.csv", index=False)
        logged = log_and_register(model, val.images[:1], settings.registered_model_name, step=epoch)
        mlflow.log_metrics(metrics, model_id=logged.model_id)
        card = model_card(config, hyperparameters, metrics, summary, run.run_id, logged)
        write_json(paths.model_card, card)
        write_json(paths.stage_summary("train"), metrics)
        run.log_artifact(paths.model_card)
        run.log_artifact(paths.train_reports / "history.csv")
        run.log_artifact(trials_file)
        run.log_artifact(paths.train_reports / "val_shift.csv")
        run.log_artifact(paths.train_reports / "members.csv")
    print(
        f"train: val AUC {metrics['val_auc']:.4f} ({len(final.histories)} member(s)); registered "
        f"{settings.registered_model_name} version {logged.version} ({logged.model_uri})"
    )


if __name__ == "__main__":
    run_stage(main)
