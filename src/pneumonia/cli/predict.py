"""`pneumonia predict`: probability of pneumonia and label for X-ray files and folders."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from pneumonia.cli._common import _positive_int, _probability, command, stdout_may_close
from pneumonia.console import start_tensorflow


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = command(
        commands,
        "predict",
        "probability of pneumonia and label for X-ray files and folders",
        "Score chest X-rays with a trained model. One line per image on stdout (path, "
        "probability, label, threshold, error); an image that cannot be read gets an error line "
        "on stderr naming it, and the others are still scored. Exit status: 0 all scored, 1 some "
        "failed, 2 nothing could run (no model, bad option).",
        "  pneumonia predict xrays/ scan.jpeg --format csv > predictions.csv\n"
        "  pneumonia predict xrays/ --model models:/pneumonia-classifier@champion --gradcam maps/",
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="IMAGE_OR_DIR",
        help="image files, or folders searched recursively for .jpeg/.jpg/.png",
    )
    parser.add_argument(
        "--model",
        help="a .keras file with model.json and threshold.json beside it, or an MLflow model "
        "URI (models:/pneumonia-classifier@champion, models:/pneumonia-cnn/3, runs:/<id>/...); "
        "default: model.keras with its threshold.json in paths.models of --params",
    )
    parser.add_argument(
        "--threshold",
        type=_probability,
        help="override the operating threshold chosen by evaluate (a probability in [0, 1])",
    )
    parser.add_argument(
        "--format",
        choices=("json", "csv"),
        default="json",
        help="JSON lines, or CSV with a header row (default: %(default)s)",
    )
    parser.add_argument(
        "--gradcam",
        type=Path,
        metavar="DIR",
        help="write a Grad-CAM overlay PNG per image into DIR",
    )
    # Its own --params help: here the file also gives the input limits, and is optional.
    parser.add_argument(
        "--params",
        type=Path,
        default=Path("params.yaml"),
        help="the project's params.yaml, for the default model and the input limits "
        "(preprocess.limits.max_pixels, preprocess.limits.max_file_bytes; the defaults without it) "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--batch-size",
        type=_positive_int,
        default=32,
        help="images scored together; more is faster, up to memory (default: %(default)s)",
    )
    parser.set_defaults(handler=run)
    return parser


def run(arguments: argparse.Namespace) -> None:
    # stdout carries the predictions, stderr the per-file errors: neither gets library noise.
    start_tensorflow()
    from dataclasses import replace

    from pneumonia.config import find_project_root, project_sections
    from pneumonia.imaging.transforms import with_limits
    from pneumonia.inference.classifier import PredictionError
    from pneumonia.inference.loading import is_mlflow_uri, load_classifier
    from pneumonia.inference.prediction import OUTPUT_COLUMNS, check_output_folder, predict_paths
    from pneumonia.tracking import use_project_store

    # The project's model (paths.models) and input limits (preprocess), read once; outside a
    # project, the limits the model's preprocess settings come with.
    paths, limits = (
        project_sections(arguments.params) if arguments.params.is_file() else (None, None)
    )
    model = arguments.model
    if model is None:
        if paths is None:
            raise PredictionError(
                f"no --model given and no {arguments.params} here to find the pipeline's model: "
                "run from the project root (after dvc repro), or pass --model with a .keras file "
                "or an MLflow model URI"
            )
        model = paths.model
    elif is_mlflow_uri(model):
        use_project_store(find_project_root(Path.cwd()))
    if arguments.gradcam is not None:
        check_output_folder(arguments.inputs, arguments.gradcam)  # before the model loads
    classifier = load_classifier(model, arguments.threshold)
    if limits is not None:
        classifier = replace(classifier, preprocess=with_limits(classifier.preprocess, limits))
    columns = [*OUTPUT_COLUMNS, *(["gradcam"] if arguments.gradcam else [])]
    writer = None
    predicted = failed = 0
    with stdout_may_close():
        if arguments.format == "csv":
            writer = csv.DictWriter(sys.stdout, fieldnames=columns, lineterminator="\n")
            writer.writeheader()
        for prediction in predict_paths(
            classifier, arguments.inputs, arguments.batch_size, arguments.gradcam
        ):
            values = prediction.row()
            row = {column: values.get(column) for column in columns}
            if writer is not None:
                writer.writerow({key: "" if value is None else value for key, value in row.items()})
            else:
                print(json.dumps(row))
            sys.stdout.flush()  # a consumer of a long run sees each batch as it is scored
            if prediction.ok:
                predicted += 1
            else:
                failed += 1
                print(f"error: {prediction.error}", file=sys.stderr)
    print(
        f"predict: {predicted} image(s) scored, {failed} failed; model {classifier.source}, "
        f"threshold {classifier.threshold:.4f}",
        file=sys.stderr,
    )
    if failed:
        sys.exit(1)
