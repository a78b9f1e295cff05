"""`pneumonia check-params`: validate params.yaml and print it resolved."""

from __future__ import annotations

import argparse
import json
import sys

from pneumonia.cli._common import command, params_option, stdout_may_close


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = command(
        commands,
        "check-params",
        "validate params.yaml and print it resolved",
        "Validate params.yaml against the pipeline's schema and print every section with its "
        "defaults filled in, as JSON. A bad value is one error line naming the key and the fix.",
        "  pneumonia check-params --params experiments/params.yaml",
    )
    params_option(parser)
    parser.set_defaults(handler=run)
    return parser


def run(arguments: argparse.Namespace) -> None:
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
    with stdout_may_close():
        print(
            json.dumps(
                {name: value.model_dump(mode="json") for name, value in sections.items()},
                indent=2,
            ),
            flush=True,
        )
    print(f"{arguments.params}: OK (project root {config.project_root})", file=sys.stderr)
