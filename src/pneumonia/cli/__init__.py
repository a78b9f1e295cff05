"""The `pneumonia` command: check-params, export, predict, promote, shift-check, site and
tune-worker.

One module per command, each with its `add_parser(commands)` and its handler; `main` is the
console script (`pneumonia = "pneumonia.cli:main"`) and `python -m pneumonia.cli` runs it too."""

from __future__ import annotations

import argparse

from pneumonia import __version__
from pneumonia.cli import check_params, export, predict, promote, shift_check, site, tune_worker
from pneumonia.console import quiet_console
from pneumonia.errors import run_stage

DESCRIPTION = """\
Tell pneumonia from normal on pediatric chest X-rays with the model this project's pipeline
trains (dvc repro), and manage it: score images, check the model under acquisition shifts,
check a new site's images and choose its own operating point, promote a registered version,
export it for other runtimes (ONNX, SavedModel), run tuning workers, validate params.yaml.

Run `pneumonia COMMAND --help` for a command's options and an example."""

EPILOG = """\
examples:
  pneumonia predict xrays/                  # score every JPEG, PNG and DICOM under xrays/
  pneumonia predict scan.jpeg --format csv  # one CSV row per image
  pneumonia check-params                    # is params.yaml valid?
  pneumonia shift-check                     # val AUC under simulated acquisition shifts
  pneumonia site check new-site/            # do a site's images differ from val's?
  pneumonia site calibrate cases/ --name A  # the site's threshold, on its labeled images
  pneumonia promote                         # candidate -> champion if at least as good on val
  pneumonia export --format onnx --out DIR  # the model as ONNX, with its input spec

Run from the project root (where params.yaml is). Progress and errors go to stderr, results
to stdout. Exit status: 0 done, 1 some images failed (predict), 2 nothing could run."""

# In the order `pneumonia --help` lists them.
COMMANDS = (predict, shift_check, site, promote, export, check_params, tune_worker)


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
    for module in COMMANDS:
        module.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> None:
    quiet_console()
    arguments = build_parser().parse_args(argv)
    run_stage(lambda: arguments.handler(arguments))
