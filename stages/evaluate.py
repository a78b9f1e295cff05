"""DVC stage `evaluate`: choose the operating threshold on val, measure the model on the official
test split (once, at that threshold and at 0.5) with patient-bootstrap confidence intervals,
write the DVC metrics and plots, log them to MLflow against the trained model, log and register
the served model, and mark both registered versions with the `evaluate.alias` alias."""

import _bootstrap  # noqa: F401  (this tree's src/ before any installed pneumonia)

from pneumonia.console import quiet_console, start_tensorflow

quiet_console()  # before anything imports TensorFlow, which reads its log level once

import mlflow

from pneumonia.config import load_config
from pneumonia.contracts.arrays import load_split
from pneumonia.contracts.files import write_json
from pneumonia.contracts.metrics_report import AT_THRESHOLD, THRESHOLD, VALUE, headline_metrics
from pneumonia.contracts.model_card import card_registry
from pneumonia.contracts.operating_point import write_operating_point
from pneumonia.errors import run_stage
from pneumonia.evaluation.model_card import model_card_markdown
from pneumonia.evaluation.outputs import write_figures, write_gradcam_panels, write_tables
from pneumonia.evaluation.publishing import (
    artifact_paths,
    describe_models,
    publish_evaluation,
    run_tags,
)
from pneumonia.evaluation.report import (
    check_model_input,
    curve_tables,
    predictions_table,
    score_and_measure,
)
from pneumonia.imaging.transforms import input_limits
from pneumonia.inference.loading import load_carded_model
from pneumonia.tracking import stage_run


def main() -> None:
    start_tensorflow()
    config = load_config()
    paths, settings = config.paths, config.evaluate
    carded = load_carded_model(paths.model, missing="run the train stage first (dvc repro)")
    card, model = carded.card, carded.model
    splits = {}
    for name in ("val", "test"):
        images, labels, index = load_split(paths.processed_split(name), mmap=False)
        check_model_input(model, images, paths.model, paths.processed_split(name))
        splits[name] = (images, labels, index)
    params = {"evaluate": config.params["evaluate"], "model_version": card_registry(card).version}
    with stage_run("evaluate", config, params) as run:
        run.log_hashes(
            "input",
            [paths.model, paths.processed_split("val"), paths.processed_split("test")],
        )
        mlflow.set_tags(run_tags(card))
        report, test_scores = score_and_measure(model, splits, settings)
        threshold = report[THRESHOLD][VALUE]
        test_images, test_labels, test_index = splits["test"]
        tables = curve_tables(test_labels, test_scores, settings.calibration_bins)
        tables["predictions"] = predictions_table(test_index, test_labels, test_scores, threshold)
        write_tables(tables, paths)
        at_threshold = report["test"][AT_THRESHOLD]
        write_figures(at_threshold, tables, float(test_labels.mean()), paths.evaluate_plots)
        report["gradcam_examples"] = write_gradcam_panels(
            model,
            test_images,
            test_index,
            test_scores,
            test_labels,
            threshold,
            settings.gradcam_examples,
            paths.gradcam_panels,
        )
        write_json(paths.metrics_detail, report)
        write_json(paths.metrics, headline_metrics(report))

        indexes = {name: index for name, (_, _, index) in splits.items()}
        point = publish_evaluation(
            run,
            settings,
            paths,
            card,
            report,
            indexes,
            splits["val"][0][0],
            limits=input_limits(config.preprocess),
        )
        write_operating_point(paths.threshold, point)
        card_markdown = model_card_markdown(report, card, served=point.serving_model)
        paths.model_card_markdown.write_text(card_markdown)
        describe_models(settings, point, card_markdown)
        for path, folder in artifact_paths(paths):
            run.log_artifact(path, folder)
        summary = (
            f"evaluate: threshold {threshold:.4f} ({settings.threshold}, chosen on val); test "
            + ", ".join(
                f"{name} {at_threshold[name]['value']:.3f} [{at_threshold[name]['ci_low']:.3f}, "
                f"{at_threshold[name]['ci_high']:.3f}]"
                for name in ("roc_auc", "accuracy", "sensitivity", "specificity")
            )
            + f"; {point.model['registered_model']} v{point.model['version']} and "
            f"{settings.serving_model_name} v{point.serving_model['version']} are @{settings.alias}"
        )
        run.describe(f"{summary}\n\n{card_markdown}")
    print(summary)


if __name__ == "__main__":
    run_stage(main)
