"""`pneumonia export`: a trained model as ONNX or a TensorFlow SavedModel, with its input spec,
golden arrays and a reference preprocessing, for runtimes without this project."""

from __future__ import annotations

import argparse
from pathlib import Path

from pneumonia.cli._common import command, model_to_load, params_option, stdout_may_close
from pneumonia.console import start_tensorflow

# Kept here as well as in export.formats: `pneumonia --help` must not import TensorFlow.
EXPORT_FORMATS = ("onnx", "savedmodel")

DESCRIPTION = """\
Export a trained model for runtimes without this project: ONNX (onnxruntime, TensorRT, ...) or
a TensorFlow SavedModel (TF Serving). --out must be a new or empty folder: nothing is ever
overwritten. It gets:

  model.onnx | savedmodel/1/     the model: input `image` uint8 (N, S, S, 1), output `score`
                                 float32 (N, 1); normalisation is inside the model
  input_spec.json                the input, the preprocessing steps with their parameters, and
                                 what the score means (with the model's threshold)
  golden/                        synthetic images (no patient's), their model inputs and the
                                 model's scores, to check a port against
  reference_preprocessing.py     the preprocessing in NumPy and OpenCV only
  README.md                      the files, and an example

The score is not a calibrated probability and is comparable only within one model version.
The input spec and what was written (paths, sizes, seconds) go to stdout."""


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = command(
        commands,
        "export",
        "the model as ONNX or a SavedModel, with its input spec and golden arrays",
        DESCRIPTION,
        "  pneumonia export --format onnx --out exports/onnx\n"
        "  pneumonia export --format savedmodel --model models:/pneumonia-classifier@champion "
        "--out serving/pneumonia",
    )
    parser.add_argument(
        "--format",
        required=True,
        choices=EXPORT_FORMATS,
        help="onnx: one model.onnx file; savedmodel: a SavedModel in savedmodel/1/",
    )
    parser.add_argument(
        "--model",
        help="a .keras file with model.json and threshold.json beside it, or an MLflow model "
        "URI (models:/pneumonia-classifier@champion, models:/pneumonia-cnn/3, runs:/<id>/...); "
        "default: model.keras with its threshold.json in paths.models of --params",
    )
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="DIR",
        help="the folder to write: it must not exist yet, or be empty",
    )
    params_option(parser)
    parser.set_defaults(handler=run)
    return parser


def run(arguments: argparse.Namespace) -> None:
    start_tensorflow()
    from pneumonia.config import project_paths
    from pneumonia.errors import format_bytes
    from pneumonia.export.formats import check_output_folder, export_classifier
    from pneumonia.inference.loading import load_classifier

    # Before the model loads: a refused --out costs no seconds.
    check_output_folder(arguments.out)
    paths = project_paths(arguments.params) if arguments.params.is_file() else None
    model = model_to_load(
        arguments.model, paths.model if paths is not None else None, arguments.params
    )
    classifier = load_classifier(model, models_folder=paths.models if paths is not None else None)
    result = export_classifier(classifier, arguments.format, arguments.out)
    with stdout_may_close():
        print(f"export: {classifier.source} as {result.format}")
        for line in result.spec.summary():
            print(f"  {line}")
        print(f"wrote {arguments.out} ({format_bytes(result.bytes)}, {result.seconds:.1f} s):")
        print(f"  {result.model_path}  {format_bytes(result.model_bytes)}  (the model)")
        for path in result.files:
            if result.model_path not in (path, *path.parents):
                print(f"  {path}  {format_bytes(path.stat().st_size)}")
