"""DVC stage `train`: tune the network (the CNN or a pretrained backbone) with Optuna on val AUC
(or take the best trial of a study that tuning workers ran), refit the best configuration, save,
log and register the model. Reads the train and val splits only; test is evaluate's."""

import _bootstrap  # noqa: F401  (this tree's src/ before any installed pneumonia)

from pneumonia.console import quiet_console, start_tensorflow

quiet_console()  # before anything imports TensorFlow, which reads its log level once

import mlflow
import pandas as pd

from pneumonia.config import load_config
from pneumonia.contracts import registry_tags
from pneumonia.contracts.files import file_sha256, write_json
from pneumonia.contracts.model_card import RegistryRecord, build_model_card, write_model_card
from pneumonia.errors import run_stage
from pneumonia.imaging.transforms import model_input_settings
from pneumonia.model.backbones import resolve_weights, weights_params, weights_record
from pneumonia.model.network import save_model
from pneumonia.model.robustness import check_model
from pneumonia.model.scoring import score
from pneumonia.model.training import (
    FINAL_VAL_ROC_AUC,
    TIMING_FIGURES,
    configure_runtime,
    final_fit_figures,
    fit_ensemble,
    history_table,
    load_training_splits,
    members_table,
)
from pneumonia.model.tuning import (
    card_tuning,
    hyperparameters_from,
    log_study,
    loggable_train_params,
    study_for_training,
)
from pneumonia.registry import (
    describe_model,
    log_and_register,
    registered_version_of_file,
    tag_version,
)
from pneumonia.tracking import stage_run


def main() -> None:
    start_tensorflow()
    config = load_config()
    paths, settings = config.paths, config.train
    # A backbone's weights first: without network or cache it fails here, before reading data.
    weights = resolve_weights(settings.model, config.project_root)
    train, val = load_training_splits(config)
    params = {
        "train": loggable_train_params(config.params["train"]),
        "preprocess.image_size": train.images.shape[1],
        **weights_params(weights),
    }
    paths.train_reports.mkdir(parents=True, exist_ok=True)
    with stage_run("train", config, params) as run:
        mlflow.set_tags(configure_runtime(settings.seed, settings.mixed_precision))
        run.log_hashes("input", [paths.processed_split("train"), paths.processed_split("val")])
        hyperparameters = settings.hyperparameters
        study = study_for_training(
            settings,
            train,
            val,
            run.run_id,
            config.project_root,
            study_prefix=run.name,
            weights=weights,
        )
        tuning_summary = log_study(run, study, paths.trials_table)
        if study is not None:
            hyperparameters = hyperparameters_from(study.best_trial.params, hyperparameters)
        mlflow.log_params({f"chosen.{k}": v for k, v in hyperparameters.flat().items()})

        final = fit_ensemble(hyperparameters, train, val, settings, run.run_id, weights)
        model = final.model
        pd.DataFrame(members_table(final.histories, settings.seed)).to_csv(
            paths.members_table, index=False
        )
        metrics = final_fit_figures(final, train, val)
        # Val images under acquisition shifts (model/robustness.py): a val signal that the
        # clean, nearly saturated val AUC does not give. Val only; test stays evaluate's.
        shift = check_model(
            lambda images: score(model, images),
            paths.split_csv("val"),
            paths.images,
            config.preprocess,
            settings.seed,
        )
        metrics.update({key: round(value, 6) for key, value in shift.summary.items()})
        shift.table.to_csv(paths.val_shift_table, index=False)

        save_model(model, paths.model)  # identical weights, identical bytes
        run.log_hashes("output", [paths.model])
        history_table(final.histories[0]).to_csv(paths.history_table, index=False)
        # A retrain that gives the same file registers nothing new (and leaves evaluate valid).
        model_sha256 = file_sha256(paths.model)
        registered = registered_version_of_file(settings.registered_model_name, model_sha256)
        if registered is None:
            logged = log_and_register(
                model, val.images[:1], settings.registered_model_name, step=metrics["best_epoch"]
            )
            tag_version(
                settings.registered_model_name,
                logged.version,
                None,
                {registry_tags.MODEL_SHA256: model_sha256, registry_tags.MODEL_ID: logged.model_id},
            )
            registered_run = run.run_id
        else:
            logged, registered_run = registered
            print(f"train: the same model file as version {logged.version}; registered nothing")
        mlflow.log_metrics(metrics, model_id=logged.model_id or None)
        card = build_model_card(
            image_size=config.preprocess.image_size,
            preprocess=model_input_settings(config.preprocess),
            hyperparameters=hyperparameters.flat(),
            weights=weights_record(settings.model, weights),
            ensemble_members=settings.ensemble,
            # Timings and a fresh study's random name stay in MLflow: the card, which evaluate
            # depends on, must not change when the model does not.
            validation={k: v for k, v in metrics.items() if k not in TIMING_FIGURES},
            tuning=card_tuning(tuning_summary, settings.tuning),
            registry=RegistryRecord(
                run_id=registered_run,
                registered_model=settings.registered_model_name,
                version=logged.version,
                model_id=logged.model_id,
                model_uri=logged.model_uri,
            ),
        )
        write_model_card(paths.model_card, card)
        write_json(paths.stage_summary("train"), metrics)
        for path in paths.train_artifacts:
            run.log_artifact(path)
        summary = (
            f"train: val ROC AUC {metrics[FINAL_VAL_ROC_AUC]:.4f} ({len(final.histories)} "
            f"member(s), best epoch {metrics['best_epoch'] + 1}); registered "
            f"{settings.registered_model_name} version {logged.version} ({logged.model_uri})"
        )
        run.describe(
            f"{summary}\n\nStudy: "
            + (f"{study.study_name}, {summary_counts(tuning_summary)}" if study else "none")
            + f"\nHyperparameters: {hyperparameters.flat()}"
        )
        describe_model(
            settings.registered_model_name,
            "The network trained by the train stage (Keras: the project's CNN or a pretrained "
            "backbone, train.model.architecture; raw uint8 grayscale pixels in, the "
            "probability of pneumonia out). The evaluate stage puts each version's model card "
            "in its description. Research use only, not a medical device.",
            version=logged.version if registered is None else None,
            version_description=f"{summary}. Not yet evaluated (run the evaluate stage).",
        )
    print(summary)


def summary_counts(summary: dict | None) -> str:
    if not summary:
        return "no trials"
    return (
        f"{summary['trials']} trial(s): {summary['complete']} complete, {summary['pruned']} "
        f"pruned, {summary['failed']} failed; best trial {summary['best_trial']} "
        f"(val AUC {summary['best_val_auc']:.4f})"
    )


if __name__ == "__main__":
    run_stage(main)
