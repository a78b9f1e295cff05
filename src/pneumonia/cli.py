"""The `pneumonia` command, and the error handling every stage entry point shares."""

from __future__ import annotations

import argparse
import json
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pneumonia", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check-params", help="validate params.yaml and print it resolved")
    check.add_argument("--params", type=Path, default=Path("params.yaml"))
    check.set_defaults(handler=_check_params)
    return parser


def main(argv: list[str] | None = None) -> None:
    arguments = build_parser().parse_args(argv)
    run_stage(lambda: arguments.handler(arguments))


if __name__ == "__main__":
    main()
