"""`pneumonia tune-worker`: join a shared Optuna study and run trials."""

from __future__ import annotations

import argparse

from pneumonia.cli._common import command, params_option
from pneumonia.console import start_tensorflow


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = command(
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
    params_option(parser)
    parser.add_argument(
        "--storage",
        help="Optuna RDB URL, e.g. postgresql://user@host/optuna (train.tuning.storage)",
    )
    parser.add_argument("--study", help="the study's name (train.tuning.study_name)")
    parser.add_argument(
        "--n-trials",
        type=int,
        help="most trials this worker runs (default: train.tuning.n_trials, or no limit with "
        "--study-trials)",
    )
    parser.add_argument(
        "--study-trials",
        type=int,
        help="stop once the study holds this many complete or pruned trials, from all workers",
    )
    parser.add_argument(
        "-S",
        "--set-param",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a param like `dvc exp run -S`, e.g. -S train.tuning.timeout=0 (repeatable)",
    )
    parser.set_defaults(handler=run)
    return parser


def run(arguments: argparse.Namespace) -> None:
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
