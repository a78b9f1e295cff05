"""The `pneumonia` command: check-params, predict, promote, shift-check and tune-worker."""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from pneumonia import __version__
from pneumonia.console import quiet_console, start_tensorflow
from pneumonia.errors import run_stage

DESCRIPTION = """\
Tell pneumonia from normal on pediatric chest X-rays with the model this project's pipeline
trains (dvc repro), and manage it: score images, check the model under acquisition shifts,
promote a registered version, run tuning workers, validate params.yaml.

Run `pneumonia COMMAND --help` for a command's options and an example."""

EPILOG = """\
examples:
  pneumonia predict xrays/                  # score every .jpeg/.jpg/.png under xrays/
  pneumonia predict scan.jpeg --format csv  # one CSV row per image
  pneumonia check-params                    # is params.yaml valid?
  pneumonia shift-check                     # val AUC under simulated acquisition shifts
  pneumonia promote                         # candidate -> champion if at least as good on val

Run from the project root (where params.yaml is). Progress and errors go to stderr, results
to stdout. Exit status: 0 done, 1 some images failed (predict), 2 nothing could run."""


def _check_params(arguments: argparse.Namespace) -> None:
    from pneumonia.config import load_config

    config = load_config(arguments.params)
    sections = {
        "download": config.download,
        "split": config.split,
        "preprocess": config.preprocess,
        "train": config.train,
        "evaluate": config.evaluate,
        "mlflow": config.mlflow,
    }
    with _stdout_may_close():
        print(
            json.dumps(
                {name: value.model_dump(mode="json") for name, value in sections.items()},
                indent=2,
            ),
            flush=True,
        )
    print(f"{arguments.params}: OK (project root {config.project_root})", file=sys.stderr)


@contextlib.contextmanager
def _stdout_may_close() -> Iterator[None]:
    """Writing to a stdout whose reader has gone (`pneumonia predict DIR | head -1`) stops the
    command quietly with status 0, as command-line tools do, instead of a BrokenPipeError."""
    try:
        yield
    except BrokenPipeError:
        # Python flushes stdout again at exit; point it at /dev/null so that flush succeeds.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        raise SystemExit(0) from None


def _tune_worker(arguments: argparse.Namespace) -> None:
    start_tensorflow()
    from pneumonia.config import load_config, parse_override
    from pneumonia.model.workers import run_worker

    overrides = dict(parse_override(text) for text in arguments.overrides)
    if arguments.storage is not None:
        overrides["train.tuning.storage"] = arguments.storage
    if arguments.study is not None:
        overrides["train.tuning.study_name"] = arguments.study
    config = load_config(arguments.params, overrides)
    result = run_worker(config, arguments.n_trials, arguments.study_trials)
    print(result.describe())


def _predict(arguments: argparse.Namespace) -> None:
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
    with _stdout_may_close():
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


def _promote(arguments: argparse.Namespace) -> None:
    from pneumonia.config import find_project_root, load_config
    from pneumonia.promotion import promote
    from pneumonia.tracking import use_project_store

    name = arguments.name
    if name is None:
        name = load_config(arguments.params).evaluate.serving_model_name
    use_project_store(find_project_root(arguments.params.resolve().parent))
    decision = promote(name, arguments.source_alias, arguments.target_alias, arguments.force)
    with _stdout_may_close():
        print(decision.summary(), flush=True)


def _shift_check(arguments: argparse.Namespace) -> None:
    start_tensorflow()
    from pneumonia.config import load_config
    from pneumonia.inference.loading import load_carded_model
    from pneumonia.model.network import average_ensemble, ensemble_members
    from pneumonia.model.robustness import ShiftCheckError, check_model
    from pneumonia.model.scoring import score

    config = load_config(arguments.params)
    model_path = arguments.model or config.paths.model
    # The model's own preprocess settings (its card), not params.yaml's, which may have moved on.
    carded = load_carded_model(model_path)
    model, preprocess = carded.model, carded.preprocess
    if arguments.members is not None:
        # The first k members of an ensemble: what a smaller train.ensemble would have given,
        # since member i depends only on seed + i.
        members = ensemble_members(model)
        if arguments.members > len(members):
            raise ShiftCheckError(
                f"{model_path}: --members {arguments.members}, but the model has {len(members)}"
            )
        model = average_ensemble(members[: arguments.members])
    report = check_model(
        lambda images: score(model, images),
        config.paths.split_csv("val"),
        config.paths.images,
        preprocess,
        config.train.seed,
    )
    with _stdout_may_close():
        if arguments.format == "csv":
            report.table.to_csv(sys.stdout, index=False)
        else:
            print(
                json.dumps(
                    {
                        "model": str(model_path),
                        "members": len(ensemble_members(model)),
                        "threshold": report.threshold,
                        "summary": report.summary,
                        "conditions": report.table.to_dict(orient="records"),
                    },
                    indent=2,
                )
            )
        sys.stdout.flush()


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


PARAMS_HELP = "the project's params.yaml (default: %(default)s)"


def _params_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help=PARAMS_HELP)


def _command(
    commands: argparse._SubParsersAction, name: str, summary: str, description: str, example: str
) -> argparse.ArgumentParser:
    """A subcommand with its one-line summary (in `pneumonia --help`), a description and an
    example (in `pneumonia NAME --help`)."""
    return commands.add_parser(
        name,
        help=summary,
        description=description,
        epilog=f"example:\n{example}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pneumonia",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(
        title="commands", dest="command", required=True, metavar="COMMAND"
    )

    predict = _command(
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
    predict.add_argument(
        "inputs",
        nargs="+",
        metavar="IMAGE_OR_DIR",
        help="image files, or folders searched recursively for .jpeg/.jpg/.png",
    )
    predict.add_argument(
        "--model",
        help="a .keras file with model.json and threshold.json beside it, or an MLflow model "
        "URI (models:/pneumonia-classifier@champion, models:/pneumonia-cnn/3, runs:/<id>/...); "
        "default: model.keras with its threshold.json in paths.models of --params",
    )
    predict.add_argument(
        "--threshold",
        type=_probability,
        help="override the operating threshold chosen by evaluate (a probability in [0, 1])",
    )
    predict.add_argument(
        "--format",
        choices=("json", "csv"),
        default="json",
        help="JSON lines, or CSV with a header row (default: %(default)s)",
    )
    predict.add_argument(
        "--gradcam",
        type=Path,
        metavar="DIR",
        help="write a Grad-CAM overlay PNG per image into DIR",
    )
    predict.add_argument(
        "--params",
        type=Path,
        default=Path("params.yaml"),
        help="the project's params.yaml, for the default model and the input limits "
        "(preprocess.max_pixels, preprocess.max_file_bytes; the defaults without it) "
        "(default: %(default)s)",
    )
    predict.add_argument(
        "--batch-size",
        type=_positive_int,
        default=32,
        help="images scored together; more is faster, up to memory (default: %(default)s)",
    )
    predict.set_defaults(handler=_predict)

    shift = _command(
        commands,
        "shift-check",
        "val ROC AUC and calls under simulated acquisition shifts (val only)",
        "Re-render the val images under fixed exposure, contrast, blur, noise, resolution and "
        "field-of-view changes, preprocess them as the model's card says, and report ROC AUC, "
        "sensitivity, specificity and balanced accuracy at the Youden threshold of the clean val "
        "images. The train stage records the same figures in reports/train.json; this command "
        "checks any saved model. Test is never read.",
        "  pneumonia shift-check --format csv\n"
        "  pneumonia shift-check --model other/model.keras --members 1",
    )
    shift.add_argument(
        "--model",
        type=Path,
        help="a .keras file with its model.json beside it (default: paths.models/model.keras)",
    )
    shift.add_argument(
        "--members",
        type=_positive_int,
        metavar="K",
        help="check the average of an ensemble's first K members only",
    )
    shift.add_argument(
        "--format",
        choices=("json", "csv"),
        default="json",
        help="one JSON document with a summary, or a CSV table of the conditions "
        "(default: %(default)s)",
    )
    _params_option(shift)
    shift.set_defaults(handler=_shift_check)

    promote = _command(
        commands,
        "promote",
        "move the champion alias to the candidate if it is at least as good on val",
        "Compare the candidate's val figures (val_roc_auc, then val_sensitivity, then "
        "val_specificity; tags set by evaluate) with the champion's and move the champion alias "
        "only if the candidate is at least as good. Test figures are never read.",
        "  pneumonia promote\n  pneumonia promote --name pneumonia-cnn --force",
    )
    promote.add_argument(
        "--name", help="registered model (default: evaluate.serving_model_name in params.yaml)"
    )
    promote.add_argument(
        "--from",
        dest="source_alias",
        default="candidate",
        metavar="ALIAS",
        help="the alias of the version to promote (default: %(default)s)",
    )
    promote.add_argument(
        "--to",
        dest="target_alias",
        default="champion",
        metavar="ALIAS",
        help="the alias to move to it (default: %(default)s)",
    )
    promote.add_argument(
        "--force", action="store_true", help="promote even if the candidate is worse"
    )
    _params_option(promote)
    promote.set_defaults(handler=_promote)

    check = _command(
        commands,
        "check-params",
        "validate params.yaml and print it resolved",
        "Validate params.yaml against the pipeline's schema and print every section with its "
        "defaults filled in, as JSON. A bad value is one error line naming the key and the fix.",
        "  pneumonia check-params --params experiments/params.yaml",
    )
    _params_option(check)
    check.set_defaults(handler=_check_params)

    worker = _command(
        commands,
        "tune-worker",
        "join a shared Optuna study and run trials (start any number, on any machines)",
        "Run Optuna trials on the shared study named by train.tuning.study_name in "
        "train.tuning.storage, on this machine's processed train and val arrays. Each trial is "
        "a nested MLflow run under this worker's `tune-worker@...` run; set MLFLOW_TRACKING_URI to "
        "log to a shared tracking server. The train stage then refits the study's best trial "
        "(train.tuning.n_trials: 0 with the study name).",
        "  pneumonia tune-worker --storage postgresql://user@host/optuna --study cnn-1 \\\n"
        "      --study-trials 40",
    )
    _params_option(worker)
    worker.add_argument(
        "--storage",
        help="Optuna RDB URL, e.g. postgresql://user@host/optuna (train.tuning.storage)",
    )
    worker.add_argument("--study", help="the study's name (train.tuning.study_name)")
    worker.add_argument(
        "--n-trials",
        type=int,
        help="most trials this worker runs (default: train.tuning.n_trials, or no limit with "
        "--study-trials)",
    )
    worker.add_argument(
        "--study-trials",
        type=int,
        help="stop once the study holds this many complete or pruned trials, from all workers",
    )
    worker.add_argument(
        "-S",
        "--set-param",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a param like `dvc exp run -S`, e.g. -S train.tuning.timeout=0 (repeatable)",
    )
    worker.set_defaults(handler=_tune_worker)
    return parser


def main(argv: list[str] | None = None) -> None:
    quiet_console()
    arguments = build_parser().parse_args(argv)
    run_stage(lambda: arguments.handler(arguments))


if __name__ == "__main__":
    main()
