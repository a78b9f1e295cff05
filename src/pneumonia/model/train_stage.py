"""The train stage's steps, in order (run_train_stage): tune the network or take the best trial of
a study that tuning workers ran, refit the chosen configuration, check it under acquisition
shifts, save it, log and register it, write the model card and the tables, describe the run and
the registered version. Reads the train and val splits only; test is evaluate's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlflow
import optuna
import pandas as pd

from pneumonia.config import Config, Hyperparameters
from pneumonia.contracts import registry_tags
from pneumonia.contracts.files import file_sha256, write_json
from pneumonia.contracts.model_card import (
    RegistryRecord,
    build_model_card,
    selection,
    write_model_card,
)
from pneumonia.imaging.transforms import model_input_settings
from pneumonia.model.backbones import weights_record
from pneumonia.model.network import save_model
from pneumonia.model.robustness import check_model
from pneumonia.model.scoring import score
from pneumonia.model.training import (
    FINAL_VAL_ROC_AUC,
    TIMING_FIGURES,
    FinalFit,
    final_fit_figures,
    fit_ensemble,
    history_table,
    members_table,
    refuse_swa_it_cannot_recompute,
)
from pneumonia.model.training_setup import TrainingSetup, start_training_run
from pneumonia.model.tuning import (
    card_tuning,
    hyperparameters_from,
    log_study,
    study_for_training,
    trial_number,
)
from pneumonia.registry import (
    LoggedModel,
    describe_model,
    log_and_register,
    registered_version_of_file,
    tag_version,
)
from pneumonia.tracking import StageRun

MODEL_DESCRIPTION = (
    "The network trained by the train stage (Keras: the project's CNN or a pretrained "
    "backbone, train.model.architecture; raw uint8 grayscale pixels in, the "
    "probability of pneumonia out). The evaluate stage puts each version's model card "
    "in its description. Research use only, not a medical device."
)


@dataclass(frozen=True)
class Chosen:
    """The configuration the final fit uses and the study it came from (None: the fixed params)."""

    hyperparameters: Hyperparameters
    study: optuna.Study | None
    tuning_summary: dict[str, Any] | None


@dataclass(frozen=True)
class Registration:
    logged: LoggedModel
    run_id: str  # the run that logged it: this one, or the earlier run of the same file
    new: bool  # False: the same file was registered before, and nothing was registered now


def run_train_stage(run: StageRun, config: Config, setup: TrainingSetup) -> str:
    """Every step of the train stage inside its open run; returns the summary line."""
    refuse_swa_it_cannot_recompute(config.preprocess.image.size, config.train)
    config.paths.train_reports.mkdir(parents=True, exist_ok=True)
    start_training_run(run, config)
    chosen = choose_hyperparameters(run, config, setup)
    final, metrics = refit_and_check(run, config, setup, chosen)
    save_model(final.model, config.paths.model)  # identical weights, identical bytes
    run.log_hashes("output", [config.paths.model])
    history_table(final.histories[0]).to_csv(config.paths.history_table, index=False)
    registration = register(run, config, final, setup, metrics)
    write_card_and_summary(run, config, setup, chosen, metrics, registration)
    summary = summary_line(config, final, metrics, registration.logged)
    describe(run, config, chosen, summary, registration)
    return summary


def choose_hyperparameters(run: StageRun, config: Config, setup: TrainingSetup) -> Chosen:
    """Tune now, take a workers' study's best trial, or keep the fixed params; logs the study
    and the chosen values."""
    settings = config.train
    hyperparameters = settings.hyperparameters
    study = study_for_training(
        settings,
        setup.train,
        setup.val,
        run.run_id,
        config.project_root,
        study_prefix=run.name,
        weights=setup.weights,
    )
    tuning_summary = log_study(run, study, config.paths.trials_table)
    if study is not None:
        hyperparameters = hyperparameters_from(study.best_trial.params, hyperparameters)
    mlflow.log_params({f"chosen.{k}": v for k, v in hyperparameters.flat().items()})
    return Chosen(hyperparameters, study, tuning_summary)


def refit_and_check(
    run: StageRun, config: Config, setup: TrainingSetup, chosen: Chosen
) -> tuple[FinalFit, dict[str, Any]]:
    """The final fit (one network or the ensemble), its members table, and its figures with the
    acquisition-shift check's."""
    paths, settings = config.paths, config.train
    refits = (
        "the fixed hyperparameters"
        if chosen.study is None
        else f"trial {trial_number(chosen.study.best_trial.number)}"
    )
    final = fit_ensemble(
        chosen.hyperparameters,
        setup.train,
        setup.val,
        settings,
        run.run_id,
        setup.weights,
        refits=refits,
    )
    pd.DataFrame(members_table(final.histories, settings.seed)).to_csv(
        paths.members_table, index=False
    )
    metrics = final_fit_figures(final, setup.train, setup.val)
    # Val images under acquisition shifts (model/robustness.py): a val signal that the
    # clean, nearly saturated val AUC does not give. Val only; test stays evaluate's.
    shift = check_model(
        lambda images: score(final.model, images),
        paths.split_csv("val"),
        paths.images,
        config.preprocess,
        settings.seed,
    )
    metrics.update({key: round(value, 6) for key, value in shift.summary.items()})
    shift.table.to_csv(paths.val_shift_table, index=False)
    return final, metrics


def register(
    run: StageRun, config: Config, final: FinalFit, setup: TrainingSetup, metrics: dict[str, Any]
) -> Registration:
    """Log and register the saved model, unless the same file is registered already; then log
    the final figures against the logged model."""
    name = config.train.registered_model_name
    # A retrain that gives the same file registers nothing new (and leaves evaluate valid).
    model_sha256 = file_sha256(config.paths.model)
    registered = registered_version_of_file(name, model_sha256)
    if registered is None:
        logged = log_and_register(
            final.model,
            setup.val.images[:1],
            name,
            # swa's model is the fit's end (the mean of its last epochs), not its best epoch;
            # a backbone's epochs are numbered on from its warm-up.
            step=len(final.histories[0].epoch)
            if config.train.weight_averaging.method == "swa"
            else metrics["best_epoch"],
        )
        tag_version(
            name,
            logged.version,
            None,
            {
                registry_tags.MODEL_FILE_SHA256_TAG: model_sha256,
                registry_tags.MODEL_ID: logged.model_id,
            },
        )
        registration = Registration(logged, run.run_id, new=True)
    else:
        logged, registered_run = registered
        print(f"train: the same model file as version {logged.version}; registered nothing")
        registration = Registration(logged, registered_run, new=False)
    mlflow.log_metrics(metrics, model_id=logged.model_id or None)
    return registration


def write_card_and_summary(
    run: StageRun,
    config: Config,
    setup: TrainingSetup,
    chosen: Chosen,
    metrics: dict[str, Any],
    registration: Registration,
) -> None:
    """models/model.json, the stage summary, and the train artifacts in the run."""
    settings, logged = config.train, registration.logged
    card = build_model_card(
        image_size=config.preprocess.image.size,
        preprocess=model_input_settings(config.preprocess),
        hyperparameters=chosen.hyperparameters.flat(),
        weights=weights_record(settings.model, setup.weights),
        selected=selection(settings.weight_averaging.method, settings.weight_averaging.swa_epochs),
        ensemble_members=settings.ensemble,
        # Timings and a fresh study's random name stay in MLflow: the card, which evaluate
        # depends on, must not change when the model does not.
        validation={k: v for k, v in metrics.items() if k not in TIMING_FIGURES},
        tuning=card_tuning(chosen.tuning_summary, settings.tuning),
        registry=RegistryRecord(
            run_id=registration.run_id,
            registered_model=settings.registered_model_name,
            version=logged.version,
            model_id=logged.model_id,
            model_uri=logged.model_uri,
        ),
    )
    write_model_card(config.paths.model_card, card)
    write_json(config.paths.stage_summary("train"), metrics)
    for path in config.paths.train_artifacts:
        run.log_artifact(path)


def summary_line(
    config: Config, final: FinalFit, metrics: dict[str, Any], logged: LoggedModel
) -> str:
    averaging = config.train.weight_averaging
    # swa's model is no epoch's: the mean of the last epochs' weights.
    kept = (
        f"the mean of the last {averaging.swa_epochs} epochs' weights (swa)"
        if averaging.method == "swa"
        else f"best epoch {metrics['best_epoch']}"
    )
    return (
        f"train: val ROC AUC {metrics[FINAL_VAL_ROC_AUC]:.4f} ({len(final.histories)} "
        f"member(s), {kept}); registered "
        f"{config.train.registered_model_name} version {logged.version} ({logged.model_uri})"
    )


def describe(
    run: StageRun, config: Config, chosen: Chosen, summary: str, registration: Registration
) -> None:
    """The run's description, and the registered model's (and a new version's)."""
    study = chosen.study
    run.describe(
        f"{summary}\n\nStudy: "
        + (f"{study.study_name}, {summary_counts(chosen.tuning_summary)}" if study else "none")
        + f"\nHyperparameters: {chosen.hyperparameters.flat()}"
    )
    describe_model(
        config.train.registered_model_name,
        MODEL_DESCRIPTION,
        version=registration.logged.version if registration.new else None,
        version_description=f"{summary}. Not yet evaluated (run the evaluate stage).",
    )


def summary_counts(summary: dict | None) -> str:
    if not summary:
        return "no trials"
    return (
        f"{summary['trials']} trial(s): {summary['complete']} complete, {summary['pruned']} "
        f"pruned, {summary['failed']} failed; best trial {summary['best_trial']} "
        f"(val AUC {summary['best_val_auc']:.4f})"
    )
