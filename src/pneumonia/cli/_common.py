"""What the `pneumonia` commands share: the subcommand layout, the --params option, the
argument types and a stdout whose reader may go away."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

PARAMS_HELP = "the project's params.yaml (default: %(default)s)"


def command(
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


def params_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help=PARAMS_HELP)


# argparse names a type in its errors ("argument --batch-size: invalid _positive_int value: 'x'"),
# so these keep the names that the messages have always shown.
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


@contextlib.contextmanager
def stdout_may_close() -> Iterator[None]:
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


def model_to_load(model: str | None, models_path: Path | None, params: Path) -> str | Path:
    """The model predict and export load: --model as given (an MLflow URI points the store at
    the project's, from the working folder up), else the pipeline's model file in paths.models
    of params.yaml (`models_path`; None when there is no params.yaml here)."""
    from pneumonia.config import find_project_root
    from pneumonia.inference.classifier import PredictionError
    from pneumonia.inference.loading import is_mlflow_uri
    from pneumonia.tracking import use_project_store

    if model is None:
        if models_path is None:
            raise PredictionError(
                f"no --model given and no {params} here to find the pipeline's model: "
                "run from the project root (after dvc repro), or pass --model with a .keras file "
                "or an MLflow model URI"
            )
        return models_path
    if is_mlflow_uri(model):
        use_project_store(find_project_root(Path.cwd()))
    return model
