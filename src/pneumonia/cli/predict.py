"""`pneumonia predict`: the model's score, the label at a named operating point and an
out-of-distribution flag for X-ray files and folders."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pneumonia.cli._common import (
    _positive_int,
    _probability,
    command,
    model_to_load,
    stdout_may_close,
)
from pneumonia.console import start_tensorflow
from pneumonia.contracts.image_files import SUFFIX_TEXT

if TYPE_CHECKING:  # imported when the command runs: `pneumonia --help` loads no TensorFlow
    from pneumonia.inference.classifier import Classifier
    from pneumonia.inference.prediction import ScoredFeatures


DESCRIPTION = """\
Score chest X-rays (JPEG, PNG or DICOM) with a trained model. One line per image on stdout:
path, score, label, threshold, operating_point, ood_score, flag, modality, view, error. An
image that cannot be read gets an error line on stderr naming it, and the others are still
scored. Exit status: 0 all scored, 1 some
failed, 2 nothing could run (no model, bad option).

What the columns mean:
  score            the network's output. It ranks images, but is not a probability, and is
                   comparable only between images scored by one model version: every
                   re-training moves it.
  label            the call at the threshold of the operating point the row names
                   (operating_point): `val (<rule>)`, chosen on the model's validation images;
                   `site NAME vN`, chosen on a site's own labeled cases (--site); or
                   `--threshold override`. A threshold chosen (calibrated) on val does not carry
                   to a site whose images differ: its sensitivity and specificity there are
                   unknown until the site calibrates its own (pneumonia site calibrate).
  ood_score, flag  how far the image is from the model's validation images in the model's
                   feature space (over 1: farther than almost every val image is from the
                   others). Such rows are flagged `out-of-distribution`: far from anything the
                   model was checked on (a screenshot, a photo, another kind of X-ray), so their
                   label means little. No ood_score for a model without a site reference.
                   `flag` also names a DICOM file's warnings (`view LL, not PA/AP`, `view not
                   recorded`, `modality not recorded`), its reasons joined by `; `.
  modality, view   a DICOM file's Modality and ViewPosition (empty for JPEG and PNG): the only
                   values of its header an output shows, never the patient's.

With 50 or more images scored and no --site, the run's images are compared with the model's
validation images once at the end; a shifted batch gets one warning on stderr, with the fix."""


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = command(
        commands,
        "predict",
        "score, label at an operating point and out-of-distribution flag for X-ray files",
        DESCRIPTION,
        "  pneumonia predict xrays/ scan.jpeg --format csv > predictions.csv\n"
        "  pneumonia predict xrays/ --site st-marys\n"
        "  pneumonia predict xrays/ --model models:/pneumonia-classifier@champion --gradcam maps/",
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="IMAGE_OR_DIR",
        help=f"image files (JPEG, PNG or DICOM), or folders searched recursively for {SUFFIX_TEXT} "
        "and suffix-less DICOM files",
    )
    parser.add_argument(
        "--model",
        help="a .keras file with model.json and threshold.json beside it, or an MLflow model "
        "URI (models:/pneumonia-classifier@champion, models:/pneumonia-cnn/3, runs:/<id>/...); "
        "default: model.keras with its threshold.json in paths.models of --params",
    )
    point = parser.add_mutually_exclusive_group()
    point.add_argument(
        "--threshold",
        type=_probability,
        help="override the operating threshold chosen by evaluate (a score in [0, 1]); rows "
        "name it `--threshold override`",
    )
    point.add_argument(
        "--site",
        metavar="NAME",
        help="use the operating point `pneumonia site calibrate` chose on a site's own labeled "
        "cases: NAME (its newest version) or NAME@v<n>, read from sites/ beside the model file "
        "(for an MLflow URI, from paths.models/sites of --params); refused when it was chosen "
        "for another model file",
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

    from pneumonia.config import project_sections
    from pneumonia.contracts.paths import SITE_REFERENCE_FILE
    from pneumonia.imaging.transforms import with_limits
    from pneumonia.inference.loading import load_classifier
    from pneumonia.inference.prediction import check_output_folder
    from pneumonia.inference.site_use import batch_site_check, collector, shift_warning

    # The project's model (paths.models) and input limits (preprocess), read once; outside a
    # project, the limits the model's preprocess settings come with.
    paths, limits = (
        project_sections(arguments.params) if arguments.params.is_file() else (None, None)
    )
    model = model_to_load(
        arguments.model, paths.model if paths is not None else None, arguments.params
    )
    if arguments.gradcam is not None:
        check_output_folder(arguments.inputs, arguments.gradcam)  # before the model loads
    classifier = load_classifier(
        model,
        arguments.threshold,
        site=arguments.site,
        models_folder=paths.models if paths is not None else None,
    )
    if limits is not None:
        classifier = replace(classifier, preprocess=with_limits(classifier.preprocess, limits))
    # A site's own operating point (--site, or a version served for one site) answers the shift
    # already: no batch check then.
    checked = classifier.reference is not None and not classifier.at_site_point
    collected = collector(classifier) if checked else None
    predicted, failed, flagged = write_predictions(classifier, arguments, collected)
    if classifier.reference is None:  # said once, after the rows
        print(
            f"predict: {classifier.source} has no site reference ({SITE_REFERENCE_FILE}, written "
            "by the evaluate stage): the rows carry no ood_score and no out-of-distribution "
            "flag; re-run the evaluate stage (dvc repro) for one",
            file=sys.stderr,
        )
    print(
        f"predict: {predicted} image(s) scored, {failed} failed, {flagged} flagged "
        f"out-of-distribution; model {classifier.source}, threshold "
        f"{classifier.threshold:.4f} ({classifier.operating_point})",
        file=sys.stderr,
    )
    check = batch_site_check(classifier, collected) if collected is not None else None
    if check is not None and check.shifted:
        print(shift_warning(check, len(collected)), file=sys.stderr)
    if failed:
        sys.exit(1)


def write_predictions(
    classifier: Classifier, arguments: argparse.Namespace, collected: ScoredFeatures | None
) -> tuple[int, int, int]:
    """One row per image on stdout (JSON lines or CSV), an error line per failed image on
    stderr; returns (scored, failed, flagged out-of-distribution)."""
    from pneumonia.inference.prediction import OUTPUT_COLUMNS, predict_paths

    columns = [*OUTPUT_COLUMNS, *(["gradcam"] if arguments.gradcam else [])]
    writer = None
    predicted = failed = flagged = 0
    with stdout_may_close():
        if arguments.format == "csv":
            writer = csv.DictWriter(sys.stdout, fieldnames=columns, lineterminator="\n")
            writer.writeheader()
        for prediction in predict_paths(
            classifier, arguments.inputs, arguments.batch_size, arguments.gradcam, collected
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
                flagged += prediction.out_of_distribution
            else:
                failed += 1
                print(f"error: {prediction.error}", file=sys.stderr)
    return predicted, failed, flagged
