"""Tuning throughput with 1 and 2 `pneumonia tune-worker` processes on one study, same run.

    python benchmarks/tune_scaling.py [--trials 6] [--image-size 32] [--images 192] [--epochs 2]
                                      [--storage postgresql://...] [--tracking-uri http://...]

Starts a throwaway PostgreSQL on loopback (tests/helpers/services.py; as the `postgres` user when
run as root) unless --storage names a database, and an `mlflow server` on it unless
--tracking-uri names one, exactly as the README's "Scaling out" sets them up. The data is
synthetic (tiny toy X-rays written as the preprocess stage writes them), so it needs neither the
dataset nor `dvc repro`.

Both configurations run the same number of trials on a fresh study each: 1 worker runs them
all, then 2 workers started together run half each. It prints trials per minute two ways: over
the wall time from starting the workers to the last one exiting (start-up included: each worker
imports TensorFlow and loads the arrays), and over the tuning span in the study (first trial
start to last trial end), and the ratio of 2 workers to 1. Workers on one machine share its
cores: the ratio shows what a second process buys here, not what a second machine would.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import optuna
from optuna.trial import TrialState

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import PROJECT_ROOT, MlflowServer, PostgresCluster, write_tiny_project

PNEUMONIA = Path(sys.executable).parent / "pneumonia"


def run_workers(
    params: Path, storage: str, tracking_uri: str, workers: int, trials: int, logs: Path
) -> tuple[float, optuna.Study]:
    """Start `workers` processes on a fresh study, `trials` in all; (wall seconds, study)."""
    study_name = f"scaling-{workers}w-{uuid.uuid4().hex[:6]}"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    environment["MLFLOW_TRACKING_URI"] = tracking_uri
    shares = [trials // workers + (index < trials % workers) for index in range(workers)]
    started = time.perf_counter()
    processes = []
    for index, share in enumerate(shares):
        log = (logs / f"{study_name}-{index}.log").open("w")
        command = [str(PNEUMONIA), "tune-worker", "--params", str(params)]
        command += ["--storage", storage, "--study", study_name, "--n-trials", str(share)]
        processes.append(
            (
                subprocess.Popen(
                    command, cwd=params.parent, env=environment, stdout=log, stderr=log
                ),
                log,
            )
        )
    for process, log in processes:
        process.wait()
        log.close()
        if process.returncode != 0:
            tail = Path(log.name).read_text()[-3000:]
            raise SystemExit(f"a worker failed ({process.returncode}):\n{tail}")
    wall = time.perf_counter() - started
    return wall, optuna.load_study(study_name=study_name, storage=storage)


def tuning_span(study: optuna.Study) -> float:
    """Seconds from the first trial's start to the last trial's end."""
    trials = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    first = min(trial.datetime_start for trial in trials)
    last = max(trial.datetime_complete for trial in trials)
    return (last - first).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=6, help="trials per configuration")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--images", type=int, default=192, help="train images (val: half)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per trial")
    parser.add_argument("--storage", help="a PostgreSQL database URL for the studies")
    parser.add_argument("--tracking-uri", help="an MLflow tracking server")
    arguments = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    cluster = server = None
    with tempfile.TemporaryDirectory(prefix="tune-scaling-") as scratch:
        folder = Path(scratch)
        try:
            storage = arguments.storage
            if storage is None or arguments.tracking_uri is None:
                cluster = PostgresCluster().start()
            storage = storage or cluster.create_database("optuna")
            tracking_uri = arguments.tracking_uri
            if tracking_uri is None:
                backend = cluster.create_database("mlflow")
                server = MlflowServer(backend, folder / "artifacts", folder / "mlflow.log")
                tracking_uri = server.start().url
            changes = {
                "preprocess.image.size": arguments.image_size,
                "train.tuning.epochs": arguments.epochs,
                # Two blocks of 3x3 convolutions need at least 4 px; deeper for larger images.
                "train.model.depth": 3 if arguments.image_size >= 32 else 2,
            }
            params = write_tiny_project(
                folder / "project",
                changes,
                images=arguments.images,
                # The project as configured, without the tests' speed overrides.
                base_params=PROJECT_ROOT / "params.yaml",
            )
            print(
                f"tune_scaling: {arguments.trials} trials per configuration, "
                f"{arguments.image_size} px, {arguments.images} train images, "
                f"{arguments.epochs} epochs per trial, {os.cpu_count()} CPU cores"
            )
            print(
                f"{'workers':>7} {'trials':>6} {'wall s':>7} {'trials/min':>10} "
                f"{'tuning s':>8} {'trials/min':>10}"
            )
            rates = {}
            for workers in (1, 2):
                wall, study = run_workers(
                    params, storage, tracking_uri, workers, arguments.trials, folder
                )
                finished = len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)))
                span = tuning_span(study)
                rates[workers] = (finished / wall * 60, finished / span * 60)
                print(
                    f"{workers:>7} {finished:>6} {wall:>7.1f} {rates[workers][0]:>10.2f} "
                    f"{span:>8.1f} {rates[workers][1]:>10.2f}"
                )
            print(
                f"ratio 2 workers / 1 worker: {rates[2][0] / rates[1][0]:.2f}x (wall), "
                f"{rates[2][1] / rates[1][1]:.2f}x (tuning span)"
            )
        finally:
            if server is not None:
                server.stop()
            if cluster is not None:
                cluster.stop()


if __name__ == "__main__":
    main()
