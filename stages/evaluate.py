"""DVC stage `evaluate`: choose the operating threshold on val, measure the model on the official
test split (once, at that threshold and at 0.5) with patient-bootstrap confidence intervals,
write the DVC metrics and plots, log them to MLflow against the trained model, log and register
the served model (image bytes in, probability and label at the chosen threshold out), and mark
both registered versions with the `evaluate.alias` alias."""

import os
import time

import _bootstrap  # noqa: F401  (this tree's src/ before any installed pneumonia)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter out

import mlflow

from pneumonia.cli import run_stage
from pneumonia.config import load_config
from pneumonia.evaluation import (
    check_model_input,
    curve_tables,
    evaluation_report,
    flat_metrics,
    load_trained_model,
    predict_scores,
    predictions_table,
    read_model_card,
    write_figures,
    write_gradcam_panels,
)
from pneumonia.files import write_json
from pneumonia.metrics import choose_threshold
from pneumonia.preprocess import load_split
from pneumonia.registry import tag_version
from pneumonia.serving import encode_png, log_serving_model
from pneumonia.tracking import stage_run


def main() -> None:
    config = load_config()
    paths, settings = config.paths, config.evaluate
    card = read_model_card(paths.model_card)
    model = load_trained_model(paths.model)
    splits = {}
    for name in ("val", "test"):
        directory = paths.processed_split(name)
        images, labels, index = load_split(directory, mmap=False)
        check_model_input(model, images, paths.model, directory / "images.npy")
        splits[name] = (images, labels, index)
    reports = paths.evaluate_reports
    params = {"evaluate": config.params["evaluate"], "model_version": card["mlflow"]["version"]}
    with stage_run("evaluate", config, params) as run:
        run.log_hashes(
            "input",
            [paths.model, paths.processed_split("val"), paths.processed_split("test")],
        )
        model_info = card["mlflow"]
        mlflow.set_tags(
            {
                "train_run_id": model_info["run_id"],
                "model_id": model_info.get("model_id", ""),
                "registered_model": model_info["registered_model"],
                "registered_model_version": model_info["version"],
            }
        )
        started = time.perf_counter()
        scored = {}
        for name, (images, labels, index) in splits.items():
            scored[name] = (labels, predict_scores(model, images), index["patient_id"].to_numpy())
        threshold = choose_threshold(scored["val"][0], scored["val"][1], settings.threshold)
        report = evaluation_report(settings, threshold, scored["val"], scored["test"])
        report["seconds"] = round(time.perf_counter() - started, 1)

        test_labels, test_scores, _ = scored["test"]
        tables = curve_tables(test_labels, test_scores, settings.calibration_bins)
        tables["predictions"] = predictions_table(
            splits["test"][2], test_labels, test_scores, threshold
        )
        reports.mkdir(parents=True, exist_ok=True)
        for name, table in tables.items():
            table.to_csv(reports / f"{name}.csv", index=False)

        at_threshold = report["test"]["at_threshold"]
        write_figures(at_threshold, tables, float(test_labels.mean()), reports / "plots")
        report["gradcam_examples"] = write_gradcam_panels(
            model,
            splits["test"][0],
            splits["test"][2],
            test_scores,
            test_labels,
            threshold,
            settings.gradcam_examples,
            reports / "gradcam",
        )

        write_json(paths.metrics, report)
        val_at_threshold = report["val"]["at_threshold"]
        operating_point = {
            "threshold": threshold,
            "rule": str(settings.threshold),
            "chosen_on": "val",
            "val_sensitivity": val_at_threshold["sensitivity"]["value"],
            "val_specificity": val_at_threshold["specificity"]["value"],
            "model": {
                key: model_info.get(key) for key in ("registered_model", "version", "model_id")
            },
            "evaluate_run_id": run.run_id,
        }

        val_dataset = run.log_dataset(
            splits["val"][2], paths.processed_split("val"), "val", "validation"
        )
        test_dataset = run.log_dataset(
            splits["test"][2], paths.processed_split("test"), "test", "test"
        )
        model_id = model_info.get("model_id") or None
        mlflow.log_metrics(
            flat_metrics(report["val"]["at_threshold"], "val"),
            model_id=model_id,
            dataset=val_dataset,
        )
        test_metrics = {
            **flat_metrics(at_threshold, "test"),
            **flat_metrics(report["test"]["at_0_5"], "test_at_0.5"),
        }
        mlflow.log_metrics(test_metrics, model_id=model_id, dataset=test_dataset)

        # What `pneumonia promote` compares (val only) and `pneumonia predict` reads (threshold).
        version_tags = {
            "threshold": threshold,
            "threshold_rule": str(settings.threshold),
            "val_roc_auc": val_at_threshold["roc_auc"]["value"],
            "val_sensitivity": operating_point["val_sensitivity"],
            "val_specificity": operating_point["val_specificity"],
            "val_dataset_digest": val_dataset.digest,
            "evaluate_run_id": run.run_id,
        }
        tag_version(
            model_info["registered_model"], model_info["version"], settings.alias, version_tags
        )
        # The served model: image bytes in, probability and label at this threshold out.
        served = log_serving_model(
            paths.model,
            threshold,
            card["preprocess"],
            settings.serving_model_name,
            source=operating_point["model"],
            example_image=encode_png(splits["val"][0][0]),
        )
        tag_version(
            settings.serving_model_name,
            served.version,
            settings.alias,
            {
                **version_tags,
                "source_model": model_info["registered_model"],
                "source_model_version": model_info["version"],
                "source_model_id": model_info.get("model_id") or "",
            },
        )
        operating_point["serving_model"] = {
            "registered_model": settings.serving_model_name,
            "version": served.version,
            "model_id": served.model_id,
        }
        write_json(paths.threshold, operating_point)
        for path in (paths.metrics, paths.threshold, reports):
            run.log_artifact(path, "evaluation" if path == reports else None)
    test = report["test"]["at_threshold"]
    print(
        f"evaluate: threshold {threshold:.4f} ({settings.threshold}, chosen on val); test "
        + ", ".join(
            f"{name} {test[name]['value']:.3f} [{test[name]['ci_low']:.3f}, "
            f"{test[name]['ci_high']:.3f}]"
            for name in ("roc_auc", "accuracy", "sensitivity", "specificity")
        )
        + f"; {model_info['registered_model']} v{model_info['version']} and "
        f"{settings.serving_model_name} v{served.version} are @{settings.alias}"
    )


if __name__ == "__main__":
    run_stage(main)
