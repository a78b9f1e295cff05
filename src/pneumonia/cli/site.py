"""`pneumonia site`: a new hospital's images against the model's validation images (`check`),
the site's own operating point chosen on a few labeled cases (`calibrate`), and the stored
points (`list`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pneumonia.cli._common import command, params_option, stdout_may_close
from pneumonia.console import start_tensorflow
from pneumonia.contracts.image_files import SUFFIX_TEXT

if TYPE_CHECKING:
    from pneumonia.contracts.operating_point import OperatingPoint

SCORE_NOTE = (
    "A score is the network's output: comparable only within one model version, and its "
    "calibration on val does not carry to a shifted site."
)
MODEL_HELP = (
    "a .keras file with model.json and site_reference.npz beside it (default: "
    "paths.models/model.keras of --params); MLflow model URIs are not supported here"
)


def _open_fraction(text: str) -> float:
    """A target or confidence: strictly between 0 and 1 (1 would need infinitely many cases)."""
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text}")
    return value


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = command(
        commands,
        "site",
        "check a new site's images against val, choose and list its operating points",
        "Deploying at a new site: `site check` tells whether the site's images differ from the "
        "model's validation images (a two-sample test in the model's feature space) and lists "
        "the most atypical ones; `site calibrate` chooses the site's own threshold on its "
        "labeled images, with an exact sensitivity guarantee, and stores it beside the model "
        "as a new version; `site list` shows the stored points, which `pneumonia predict "
        f"--site NAME` uses. {SCORE_NOTE}",
        "  pneumonia site check new-site/ --json\n"
        "  pneumonia site calibrate labeled-site/ --name st-marys\n"
        "  pneumonia site list",
    )
    actions = parser.add_subparsers(
        title="site commands",
        dest="site_command",
        required=True,
        metavar="ACTION",
        help="check, calibrate or list; `pneumonia site ACTION --help` for its options",
    )
    add_check(actions)
    add_calibrate(actions)
    add_list(actions)
    return parser


def add_check(actions: argparse._SubParsersAction) -> None:
    parser = command(
        actions,
        "check",
        "do a site's unlabeled images differ from the model's validation images?",
        f"Score the images (files, or folders searched recursively for {SUFFIX_TEXT}) and "
        "compare their pooled features with the model's val reference (site_reference.npz, "
        "written by evaluate): an MMD test whose null splits val's reference images by "
        "patient (p-value; shifted when p < 0.05, the reference's significance), a "
        "cross-fitted classifier's ROC AUC as the effect size "
        "(0.5: indistinguishable), the share called pneumonia here against val's, and the most "
        "atypical images by their out-of-distribution score (over 1: flagged). Unreadable "
        "images are skipped and named on stderr. Exit status: 0 shifted or not, 2 nothing "
        "could run.",
        "  pneumonia site check new-site/ scan.jpeg --json",
    )
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="IMAGE_OR_DIR",
        help=f"image files (JPEG, PNG or DICOM), or folders searched recursively for {SUFFIX_TEXT} "
        "and suffix-less DICOM files",
    )
    parser.add_argument("--model", type=Path, help=MODEL_HELP)
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object: shifted, p_value, n_images, classifier_auc (the effect "
        "size), positive_share, reference_positive_share, atypical, skipped, ...",
    )
    params_option(parser)
    parser.set_defaults(handler=run_check)


def add_calibrate(actions: argparse._SubParsersAction) -> None:
    parser = command(
        actions,
        "calibrate",
        "choose a site's threshold on its labeled images",
        "Score FOLDER/NORMAL and FOLDER/PNEUMONIA (searched recursively) and choose the highest "
        "threshold whose sensitivity on these pneumonia images has a one-sided exact "
        "(Clopper-Pearson) lower bound of at least --sensitivity at --confidence. Refused, "
        "naming how many pneumonia images the guarantee needs, when there are too few. The "
        "point is stored beside the model as paths.models/sites/NAME/v<n>.json: a "
        "re-calibration adds a version and never overwrites one. Logged to MLflow as a run "
        "`site-calibrate@NAME`; when the model is a registered one, the served model at the "
        f"site's threshold is registered too, aliased site-NAME. {SCORE_NOTE}",
        "  pneumonia site calibrate labeled-site/ --name st-marys --sensitivity 0.95",
    )
    parser.add_argument(
        "folder", type=Path, metavar="FOLDER", help="holds the site's NORMAL/ and PNEUMONIA/"
    )
    parser.add_argument(
        "--name",
        required=True,
        help="the site's name: 1-64 letters, digits, '_' or '-' (names its folder and "
        "its registry alias)",
    )
    parser.add_argument(
        "--sensitivity",
        type=_open_fraction,
        default=0.95,
        help="the sensitivity the site's threshold guarantees (default: %(default)s)",
    )
    parser.add_argument(
        "--confidence",
        type=_open_fraction,
        default=0.95,
        help="the confidence of that guarantee (default: %(default)s)",
    )
    parser.add_argument(
        "--model",
        type=Path,
        help="a .keras file with model.json beside it; its points are stored in its folder "
        "(default: paths.models/model.keras of --params); MLflow model URIs are not supported "
        "here",
    )
    params_option(parser)
    parser.set_defaults(handler=run_calibrate)


def add_list(actions: argparse._SubParsersAction) -> None:
    parser = command(
        actions,
        "list",
        "the stored site operating points",
        "Every site point stored beside the model (paths.models/sites), by site and version: "
        "when it was made, its threshold, target and confidence, its calibration counts, the "
        "sensitivity and specificity it measured, and whether it was chosen for the current "
        "model file (a point for another file is refused by predict --site).",
        "  pneumonia site list --json",
    )
    parser.add_argument(
        "--model",
        type=Path,
        help="the model file whose folder holds the points (default: paths.models/model.keras "
        "of --params)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON array")
    params_option(parser)
    parser.set_defaults(handler=run_list)


def default_model(arguments: argparse.Namespace) -> Path:
    """--model, else the pipeline's model of --params."""
    from pneumonia.config import project_paths
    from pneumonia.deployment.workflow import SiteWorkflowError

    if arguments.model is not None:
        return arguments.model
    if not arguments.params.is_file():
        raise SiteWorkflowError(
            f"no --model given and no {arguments.params} here to find the pipeline's model: run "
            "from the project root (after dvc repro), or pass --model with a .keras file"
        )
    return project_paths(arguments.params).model


def report_skipped(command_name: str, skipped: list[str]) -> None:
    for line in skipped:
        print(f"error: {line}", file=sys.stderr)
    if skipped:
        print(f"{command_name}: {len(skipped)} image(s) skipped", file=sys.stderr)


def run_check(arguments: argparse.Namespace) -> None:
    start_tensorflow()
    from pneumonia.config import project_sections
    from pneumonia.deployment import workflow

    limits = project_sections(arguments.params)[1] if arguments.params.is_file() else None
    site_model = workflow.load_site_model(default_model(arguments), limits)
    reference = site_model.reference()  # a missing or foreign one fails before any image is read
    images = workflow.unlabeled_site_images(arguments.inputs, site_model.preprocess)
    report_skipped("site check", images.skipped)
    check = workflow.run_check(site_model, images, reference)
    with stdout_may_close():
        if arguments.json:
            document = {
                **check.as_json(),
                "skipped": len(images.skipped),
                "model": str(site_model.path),
            }
            print(json.dumps(document, indent=2))
        else:
            print(check.sentence())
            print("most atypical images (out-of-distribution score; over 1 is flagged):")
            for image in check.atypical:
                print(f"  {image['ood_score']:8.2f}  {image['path']}  (score {image['score']:.4f})")
        sys.stdout.flush()


def run_calibrate(arguments: argparse.Namespace) -> None:
    start_tensorflow()
    from pneumonia.config import load_config
    from pneumonia.deployment import publishing, workflow
    from pneumonia.imaging.transforms import input_limits
    from pneumonia.site.points import check_site_name, store_serving, store_site_point

    site = check_site_name(arguments.name)
    if not arguments.params.is_file():
        raise workflow.SiteWorkflowError(
            f"{arguments.params}: not found; calibrate logs to the project's MLflow experiment: "
            "run from the project root, or pass --params"
        )
    config = load_config(arguments.params)
    # The folder first: a wrong one is told at once, before the model loads.
    entries, labels = workflow.labeled_entries(arguments.folder)
    site_model = workflow.load_site_model(arguments.model or config.paths.model, config.preprocess)
    images = workflow.read_images(entries, site_model.preprocess, labels)
    report_skipped("site calibrate", images.skipped)
    point = workflow.calibrate(
        site_model,
        images,
        site=site,
        folder=arguments.folder,
        target=arguments.sensitivity,
        confidence=arguments.confidence,
    )
    models = site_model.path.parent
    with publishing.calibration_run(config, site) as run:
        registers = publishing.registers_a_served_version(site_model)
        if registers and site_model.reference_path.is_file():
            site_model.reference()  # one written for another model file: refused, none stored
        # Stored before the served version, so that it names the version the point really got.
        stored, path = store_site_point(models, point)
        publishing.log_calibration(stored, site_model.path)
        publishing.log_point_file(path)
        if registers:
            served = publishing.register_site_model(
                stored,
                site_model,
                config.evaluate.serving_model_name,
                input_limits(site_model.preprocess),
            )
            publishing.log_point_file(store_serving(path, served))
            stored = stored.model_copy(update={"serving_model": served})
        publishing.describe_run(stored, workflow.point_summary(stored))
    print_calibrated(stored, path, models, run.info.run_id)


def print_calibrated(point: OperatingPoint, path: Path, models: Path, run_id: str) -> None:
    from pneumonia.deployment import workflow

    kept = workflow.kept_versions(models, point.site, point.version)
    print(workflow.written_sentence(point, kept))
    print(f"  {path}")
    print(f"  {workflow.point_summary(point)}")
    served = point.serving_model
    if served:
        print(
            f"  served: models:/{served['registered_model']}@{served['alias']} "
            f"(version {served['version']})"
        )
    print(f"  MLflow run {run_id}; use it with: pneumonia predict IMAGES --site {point.site}")


def run_list(arguments: argparse.Namespace) -> None:
    from pneumonia.contracts.files import file_sha256
    from pneumonia.deployment import workflow
    from pneumonia.site import points
    from pneumonia.site.points import all_site_points

    model_path = default_model(arguments)
    current = file_sha256(model_path) if model_path.is_file() else None
    problems: list[str] = []
    rows = [
        workflow.point_row(point, path, current)
        for point, path in all_site_points(model_path.parent, problems)
    ]
    for problem in problems:  # a damaged point file is named, and the others still listed
        print(f"error: {problem}", file=sys.stderr)
    with stdout_may_close():
        if arguments.json:
            print(json.dumps(rows, indent=2))
        elif not rows:
            print(f"no site operating points in {points.sites_folder(model_path.parent)}")
        else:
            print_table(rows)
        sys.stdout.flush()
    if problems:
        print(f"site list: {len(problems)} point file(s) could not be read", file=sys.stderr)
        sys.exit(1)


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        "site", "version", "created", "threshold", "target", "confidence", "positives",
        "sensitivity", "specificity", "model sha256", "current model",
    )  # fmt: skip
    table = [header]
    for row in rows:
        table.append(
            (
                str(row["site"]),
                f"v{row['version']}",
                str(row["created"]),
                f"{row['threshold']:.4f}",
                f"{row['target_sensitivity']:g}",
                f"{row['confidence']:g}",
                str(row["positives"]),
                f"{row['sensitivity']:.3f}",
                f"{row['specificity']:.3f}",
                row["model_sha256"],
                "yes" if row["current_model"] else "no (another model file)",
            )
        )
    widths = [max(len(line[column]) for line in table) for column in range(len(header))]
    for line in table:
        cells = (cell.ljust(width) for cell, width in zip(line, widths, strict=True))
        print("  ".join(cells).rstrip())
