"""DVC stage `evaluate`: choose the operating threshold on val, measure the model on the official
test split (once, at that threshold and at 0.5) with patient-bootstrap confidence intervals,
write the DVC metrics and plots, log them to MLflow against the trained model, log and register
the served model, and mark both registered versions with the `evaluate.alias` alias (in any DVC
experiment, `dvc exp run`: only the served version, with the alias `exp-<name>`; see
pneumonia.evaluation.publishing). The steps: pneumonia.evaluation.evaluate_stage."""

import _bootstrap  # noqa: F401  (this tree's src/ before any installed pneumonia)

from pneumonia.console import quiet_console, start_tensorflow

quiet_console()  # before anything imports TensorFlow, which reads its log level once

from pneumonia.config import load_config
from pneumonia.errors import run_stage
from pneumonia.evaluation.evaluate_stage import load_evaluation_inputs, run_evaluate_stage
from pneumonia.tracking import stage_run


def main() -> None:
    start_tensorflow()
    config = load_config()
    inputs = load_evaluation_inputs(config)  # the model and the val and test arrays it accepts
    with stage_run("evaluate", config, inputs.run_params(config)) as run:
        summary = run_evaluate_stage(run, config, inputs)
    print(summary)


if __name__ == "__main__":
    run_stage(main)
