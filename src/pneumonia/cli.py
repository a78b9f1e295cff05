"""The `pneumonia` command, and the error handling every stage entry point shares."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from pneumonia import __version__
from pneumonia.errors import PipelineError


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage; a user-fixable error prints one clear line and exits 2, not a traceback."""
    try:
        main()
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def _check_params(arguments: argparse.Namespace) -> None:
    from pneumonia.config import load_config

    config = load_config(arguments.params)
    sections = {
        "download": config.download,
        "split": config.split,
        "preprocess": config.preprocess,
        "train": config.train,
        "mlflow": config.tracking,
    }
    print(json.dumps({name: asdict(value) for name, value in sections.items()}, indent=2))
    print(f"{arguments.params}: OK (project root {config.project_root})", file=sys.stderr)


def _tune_worker(arguments: argparse.Namespace) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
    from pneumonia.config import load_config, parse_override
    from pneumonia.workers import run_worker

    overrides = dict(parse_override(text) for text in arguments.overrides)
    if arguments.storage is not None:
        overrides["train.tuning.storage"] = arguments.storage
    if arguments.study is not None:
        overrides["train.tuning.study_name"] = arguments.study
    config = load_config(arguments.params, overrides)
    result = run_worker(config, arguments.n_trials, arguments.study_trials)
    print(result.describe())


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
    return parser


def main(argv: list[str] | None = None) -> None:
    arguments = build_parser().parse_args(argv)
    run_stage(lambda: arguments.handler(arguments))


if __name__ == "__main__":
    main()
