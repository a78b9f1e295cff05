"""`pneumonia shift-check`: val ROC AUC and calls under simulated acquisition shifts."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pneumonia.cli._common import _positive_int, command, params_option, stdout_may_close
from pneumonia.console import start_tensorflow


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = command(
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
    parser.add_argument(
        "--model",
        type=Path,
        help="a .keras file with its model.json beside it (default: paths.models/model.keras)",
    )
    parser.add_argument(
        "--members",
        type=_positive_int,
        metavar="K",
        help="check the average of an ensemble's first K members only",
    )
    parser.add_argument(
        "--format",
        choices=("json", "csv"),
        default="json",
        help="one JSON document with a summary, or a CSV table of the conditions "
        "(default: %(default)s)",
    )
    params_option(parser)
    parser.set_defaults(handler=run)
    return parser


def run(arguments: argparse.Namespace) -> None:
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
    with stdout_may_close():
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
