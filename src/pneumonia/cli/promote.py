"""`pneumonia promote`: move the champion alias to the candidate if it is at least as good."""

from __future__ import annotations

import argparse

from pneumonia.cli._common import command, params_option, stdout_may_close


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = command(
        commands,
        "promote",
        "move the champion alias to the candidate if it is at least as good on val",
        "Compare the candidate's val figures (val_roc_auc, then val_sensitivity, then "
        "val_specificity; tags set by evaluate) with the champion's and move the champion alias "
        "only if the candidate is at least as good. Test figures are never read. Figures "
        "outside [0, 1] or that differ from the evaluate run's logged metrics are refused; "
        "promotes of one model run one at a time (a lock in the registry).",
        "  pneumonia promote\n  pneumonia promote --name pneumonia-cnn --force",
    )
    parser.add_argument(
        "--name", help="registered model (default: evaluate.serving_model_name in params.yaml)"
    )
    parser.add_argument(
        "--from",
        dest="source_alias",
        metavar="ALIAS",
        help="the alias of the version to promote (default: evaluate.alias in params.yaml)",
    )
    parser.add_argument(
        "--to",
        dest="target_alias",
        default="champion",
        metavar="ALIAS",
        help="the alias to move to it (default: %(default)s)",
    )
    parser.add_argument(
        "--force", action="store_true", help="promote even if the candidate is worse"
    )
    parser.add_argument(
        "--allow-experiment",
        action="store_true",
        help="promote a version a DVC experiment registered (refused without it; --force does "
        "not imply it)",
    )
    params_option(parser)
    parser.set_defaults(handler=run)
    return parser


def run(arguments: argparse.Namespace) -> None:
    from pneumonia.config import find_project_root, load_config
    from pneumonia.promotion import promote
    from pneumonia.tracking import use_project_store

    name, source_alias = arguments.name, arguments.source_alias
    # The names evaluate registers under: params.yaml's (evaluate.serving_model_name and
    # evaluate.alias), unless both are given.
    if name is None or source_alias is None:
        evaluate = load_config(arguments.params).evaluate
        name = evaluate.serving_model_name if name is None else name
        source_alias = evaluate.alias if source_alias is None else source_alias
    use_project_store(find_project_root(arguments.params.resolve().parent))
    decision = promote(
        name,
        source_alias,
        arguments.target_alias,
        arguments.force,
        allow_experiment=arguments.allow_experiment,
    )
    with stdout_may_close():
        print(decision.summary(), flush=True)
