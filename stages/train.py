"""DVC stage `train`: tune the network (the CNN or a pretrained backbone) with Optuna on val AUC
(or take the best trial of a study that tuning workers ran), refit the best configuration, save,
log and register the model (pneumonia.model.train_stage). Reads the train and val splits only;
test is evaluate's."""

import _bootstrap  # noqa: F401  (this tree's src/ before any installed pneumonia)

from pneumonia.console import quiet_console, start_tensorflow

quiet_console()  # before anything imports TensorFlow, which reads its log level once

from pneumonia.config import load_config
from pneumonia.errors import run_stage
from pneumonia.model.train_stage import run_train_stage
from pneumonia.model.training_setup import prepare_training
from pneumonia.tracking import stage_run


def main() -> None:
    start_tensorflow()
    config = load_config()
    setup = prepare_training(config, "train")  # the device line first, then weights and data
    with stage_run("train", config, setup.run_params(config)) as run:
        summary = run_train_stage(run, config, setup)
    print(summary)


if __name__ == "__main__":
    run_stage(main)
