"""The `pneumonia` command: check-params, predict, promote, shift-check and tune-worker."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

from pneumonia import __version__
from pneumonia.errors import run_stage


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
    print(
        json.dumps(
            {name: value.model_dump(mode="json") for name, value in sections.items()}, indent=2
        )
    )
    print(f"{arguments.params}: OK (project root {config.project_root})", file=sys.stderr)


def _tune_worker(arguments: argparse.Namespace) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
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


def _quiet_libraries() -> None:
    # Keep TensorFlow's C++ start-up chatter and MLflow's download bars off the terminal: stdout
    # carries the predictions, stderr the per-file errors.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def _predict(arguments: argparse.Namespace) -> None:
    _quiet_libraries()
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
    if arguments.format == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
    predicted = failed = 0
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
    print(decision.summary())


def _shift_check(arguments: argparse.Namespace) -> None:
    _quiet_libraries()
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pneumonia", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check-params", help="validate params.yaml and print it resolved")
    check.add_argument("--params", type=Path, default=Path("params.yaml"))
    check.set_defaults(handler=_check_params)

    worker = commands.add_parser(
        "tune-worker",
        help="join a shared Optuna study and run trials (start any number, on any machines)",
        description=(
            "Run Optuna trials on the shared study named by train.tuning.study_name in "
            "train.tuning.storage, on this machine's processed train and val arrays. Each "
            "trial is a nested MLflow run under this worker's `tune-worker` run; set "
            "MLFLOW_TRACKING_URI to log to a shared tracking server. The train stage then "
            "refits the study's best trial (train.tuning.n_trials: 0 with the study name)."
        ),
    )
    worker.add_argument("--params", type=Path, default=Path("params.yaml"))
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

    predict = commands.add_parser(
        "predict",
        help="probability of pneumonia and label for X-ray files and folders",
        description="Score chest X-rays with a trained model. One line per image on stdout "
        "(path, probability, label, threshold, error); an image that cannot be read gets an "
        "error line on stderr naming it, and the others are still scored. Exit status: 0 all "
        "scored, 1 some failed, 2 nothing could run (no model, bad option).",
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
        help="override the operating threshold chosen by evaluate",
    )
    predict.add_argument("--format", choices=("json", "csv"), default="json")
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
        "(default: ./params.yaml)",
    )
    predict.add_argument("--batch-size", type=_positive_int, default=32)
    predict.set_defaults(handler=_predict)

    promote = commands.add_parser(
        "promote",
        help="move the champion alias to the candidate if it is at least as good on val",
        description="Compare the candidate's val figures (val_roc_auc, then val_sensitivity, "
        "then val_specificity; tags set by evaluate) with the champion's and move the champion "
        "alias only if the candidate is at least as good. Test figures are never read.",
    )
    promote.add_argument(
        "--name", help="registered model (default: evaluate.serving_model_name in params.yaml)"
    )
    promote.add_argument("--from", dest="source_alias", default="candidate")
    promote.add_argument("--to", dest="target_alias", default="champion")
    promote.add_argument(
        "--force", action="store_true", help="promote even if the candidate is worse"
    )
    promote.add_argument("--params", type=Path, default=Path("params.yaml"))
    promote.set_defaults(handler=_promote)

    shift = commands.add_parser(
        "shift-check",
        help="val ROC AUC and calls under simulated acquisition shifts (val only)",
        description="Re-render the val images under fixed exposure, contrast, blur, noise, "
        "resolution and field-of-view changes, preprocess them as the model's card says, and "
        "report ROC AUC, sensitivity, specificity and balanced accuracy at the Youden threshold "
        "of the clean val images. The train stage records the same figures "
        "in reports/train.json; this command checks any saved model. Test is never read.",
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
    shift.add_argument("--format", choices=("json", "csv"), default="json")
    shift.add_argument("--params", type=Path, default=Path("params.yaml"))
    shift.set_defaults(handler=_shift_check)
    return parser


def main(argv: list[str] | None = None) -> None:
    arguments = build_parser().parse_args(argv)
    run_stage(lambda: arguments.handler(arguments))


if __name__ == "__main__":
    main()
