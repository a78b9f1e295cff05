"""DVC stage `site`, after evaluate: the official test split treated as a new site. The site check
on the unlabeled test split and on held-out val (its false-alarm rate over repeated draws), and
the threshold re-chosen on draws of k labeled test patients, measured on the others, beside the
val-chosen threshold; all of it labeled site-calibrated, beside the val-only headline (which it
leaves alone). Writes reports/site/ and the final reports/model_card.md, and logs a `site` MLflow
run. The steps: pneumonia.deployment.stage."""

import _bootstrap  # noqa: F401  (this tree's src/ before any installed pneumonia)

from pneumonia.console import quiet_console, start_tensorflow

quiet_console()  # before anything imports TensorFlow, which reads its log level once

from pneumonia.config import load_config
from pneumonia.deployment.stage import load_site_inputs, run_params, run_site_stage
from pneumonia.errors import run_stage
from pneumonia.tracking import stage_run


def main() -> None:
    start_tensorflow()
    config = load_config()
    inputs = load_site_inputs(config)  # the model, its reference and operating point, and test
    with stage_run("site", config, run_params(inputs)) as run:
        summary = run_site_stage(run, config, inputs)
    print(summary)


if __name__ == "__main__":
    run_stage(main)
