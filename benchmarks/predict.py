"""Prediction latency and throughput on CPU: the library in-process, the `pneumonia predict` CLI
and the served model over HTTP, against in-process Keras on preprocessed arrays, in one run.

    python benchmarks/predict.py [--model models/model.keras] [--images DIR] [--count 128]
        [--repeats 50] [--cli-repeats 5] [--batch-size 32]

Model: `--model` (a .keras file with model.json and threshold.json beside it), by default
models/model.keras when `dvc repro` has made it, else a freshly built, untrained model of
params.yaml's fixed architecture at preprocess.image.size with threshold 0.5 (speed does not
depend on the weights). Images: `--count` files sampled (seeded) from `--images`, by default
data/raw/images/test, else ../shared/data/chest_xray/test, else synthetic 1024x1024 JPEGs.

What is timed, per image unless said otherwise:

- baseline: `model.predict` on arrays already preprocessed (decode and resize not included);
- library: `pneumonia.inference.prediction.predict_paths` on the files (decode, preprocess, score);
- CLI: `pneumonia predict` as a subprocess, so Python, TensorFlow and model start-up included;
- served: `mlflow models serve --env-manager local` of the served pyfunc, registered into a
  temporary MLflow store; one HTTP request per image (latency) or per batch (throughput), with
  base64 JSON encoding and decoding included.

Single-image latency is p50/p95 over `--repeats` calls (`--cli-repeats` for the CLI) after a
warm-up; throughput is images/s over all `--count` images in batches of `--batch-size`, the
median of three passes (one for the CLI). A reference row shows the bare model call the library
makes (`predict_on_batch`), so the cost of decoding and preprocessing can be read off.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

# CPU figures: hide any GPU from this process and from the CLI and server it starts.
os.environ["CUDA_VISIBLE_DEVICES"] = ""
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import keras
import mlflow
import numpy as np
from PIL import Image

from pneumonia.config import find_project_root, load_config, project_paths
from pneumonia.contracts.model_card import ModelCard, write_model_card
from pneumonia.contracts.operating_point import OperatingPoint, write_operating_point
from pneumonia.contracts.paths import MODEL_CARD_FILE, THRESHOLD_FILE
from pneumonia.imaging.transforms import model_input_settings, preprocess_file
from pneumonia.inference.loading import load_model_file
from pneumonia.inference.prediction import expand_inputs, predict_paths
from pneumonia.inference.serving import log_serving_model
from pneumonia.model.network import build_model

PROJECT_ROOT = find_project_root(Path(__file__).resolve().parent)
SERVED_NAME, SERVED_ALIAS = "pneumonia-classifier-benchmark", "benchmark"


def percentiles(seconds: list[float]) -> tuple[float, float]:
    """p50 and p95 in milliseconds."""
    values = np.asarray(seconds) * 1000
    return float(np.percentile(values, 50)), float(np.percentile(values, 95))


def time_calls(call: Callable[[int], object], repeats: int, warmup: int = 2) -> list[float]:
    for index in range(warmup):
        call(index)
    timings = []
    for index in range(repeats):
        started = time.perf_counter()
        call(index)
        timings.append(time.perf_counter() - started)
    return timings


def choose_images(folder: Path | None, count: int, scratch: Path) -> tuple[list[Path], str]:
    candidates = [folder] if folder else []
    candidates += [
        project_paths(PROJECT_ROOT / "params.yaml").images / "test",
        PROJECT_ROOT.parent / "shared/data/chest_xray/test",
    ]
    for candidate in candidates:
        if candidate.is_dir():
            files = [path for path, error in expand_inputs([candidate]) if error is None]
            if files:
                picks = np.random.default_rng(0).choice(len(files), min(count, len(files)), False)
                chosen = [files[index] for index in sorted(picks)]
                return chosen, f"{len(chosen)} files from {candidate}"
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        path = scratch / "images" / f"synthetic{index}.jpeg"
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 255, size=(1024, 1024), dtype=np.uint8)
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths, f"{count} synthetic 1024x1024 JPEGs"


def prepare_model(model: Path | None, scratch: Path) -> tuple[Path, str]:
    """A .keras file with model.json and threshold.json beside it."""
    default = project_paths(PROJECT_ROOT / "params.yaml").model
    chosen = model or (default if default.is_file() else None)
    if chosen is not None:
        return chosen, f"trained model {chosen}"
    config = load_config(PROJECT_ROOT / "params.yaml")
    folder = scratch / "models"
    folder.mkdir(parents=True)
    size = config.preprocess.image.size
    # Untrained: random weights cost the same to run as pretrained ones.
    untrained = config.train.model.model_copy(update={"weights": "none"})
    build_model(size, untrained).save(folder / "model.keras")
    card = ModelCard(preprocess=model_input_settings(config.preprocess))  # no registry record
    write_model_card(folder / MODEL_CARD_FILE, card)
    write_operating_point(folder / THRESHOLD_FILE, OperatingPoint(threshold=0.5))
    return folder / "model.keras", f"untrained model of params.yaml's architecture at {size}px"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def child_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra or {})
    return env


def register_served_model(model_path: Path, store: Path) -> str:
    """Log and register the served pyfunc into a scratch store; returns its tracking URI."""
    uri = f"sqlite:///{store / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("benchmark", (store / "artifacts").as_uri())
    classifier = load_model_file(model_path)
    with mlflow.start_run(experiment_id=experiment):
        logged = log_serving_model(
            model_path,
            classifier.threshold,
            model_input_settings(classifier.preprocess),
            SERVED_NAME,
            source={"model": str(model_path)},
        )
    mlflow.MlflowClient().set_registered_model_alias(SERVED_NAME, SERVED_ALIAS, logged.version)
    return uri


def post(url: str, images: list[bytes]) -> dict:
    payload = {
        "dataframe_split": {
            "columns": ["image"],
            "data": [[base64.b64encode(image).decode("ascii")] for image in images],
        }
    }
    request = urllib.request.Request(
        url, json.dumps(payload).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def serve(tracking_uri: str, log_path: Path) -> tuple[subprocess.Popen, str, float]:
    port = free_port()
    command = [
        sys.executable,
        *("-m", "mlflow", "models", "serve", "-m", f"models:/{SERVED_NAME}@{SERVED_ALIAS}"),
        *("--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)),
    ]
    started = time.perf_counter()
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command,
            env=child_environment({"MLFLOW_TRACKING_URI": tracking_uri}),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the CLI starts uvicorn as a child; stop both together
        )
    url = f"http://127.0.0.1:{port}"
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited:\n{log_path.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2):
                return process, url, time.perf_counter() - started
        except OSError:
            if time.perf_counter() - started > 300:
                stop(process)
                raise RuntimeError(f"the server did not start:\n{log_path.read_text()}") from None
            time.sleep(0.25)


def stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def measure(
    single: Callable[[int], object],
    batch: Callable[[], object],
    images: int,
    repeats: int,
    batch_repeats: int = 3,
) -> tuple[float, float, float]:
    """(p50 ms, p95 ms) of one-image calls, and the median images/s of the batch call."""
    latency = time_calls(single, repeats, warmup=1 if repeats < 10 else 2)
    rates = []
    for _ in range(batch_repeats):
        started = time.perf_counter()
        batch()
        rates.append(images / (time.perf_counter() - started))
    return (*percentiles(latency), float(np.median(rates)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--images", type=Path)
    parser.add_argument("--count", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--cli-repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    arguments = parser.parse_args()
    repeats, batch = arguments.repeats, arguments.batch_size
    results: dict[str, tuple[float, float, float]] = {}
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        model_path, model_note = prepare_model(arguments.model, scratch)
        paths, images_note = choose_images(arguments.images, arguments.count, scratch)
        count = len(paths)
        classifier = load_model_file(model_path)

        def one_path(index: int) -> list[Path]:
            return [paths[index % count]]

        pixels = [preprocess_file(path, classifier.preprocess) for path in paths]
        arrays = np.stack(pixels)[..., None]
        results["baseline: keras model.predict, preprocessed arrays"] = measure(
            lambda i: classifier.model.predict(arrays[i % count][None], verbose=0),
            lambda: classifier.model.predict(arrays, batch_size=batch, verbose=0),
            count,
            repeats,
        )
        # For reference: the model call the library makes, without decode and preprocess.
        results["reference: keras predict_on_batch, preprocessed"] = measure(
            lambda i: classifier.model.predict_on_batch(arrays[i % count][None]),
            lambda: [
                classifier.model.predict_on_batch(arrays[start : start + batch])
                for start in range(0, count, batch)
            ],
            count,
            repeats,
        )
        results["library: predict_paths on files, in-process"] = measure(
            lambda i: list(predict_paths(classifier, one_path(i))),
            lambda: list(predict_paths(classifier, paths, batch)),
            count,
            repeats,
        )

        cli = shutil.which("pneumonia", path=str(Path(sys.executable).parent)) or "pneumonia"
        command = [cli, "predict", "--model", str(model_path), "--batch-size", str(batch)]

        def run_cli(inputs: list[Path]) -> None:
            arguments = [*command, *map(str, inputs)]
            subprocess.run(arguments, env=child_environment(), check=True, capture_output=True)

        results["CLI: pneumonia predict, start-up included"] = measure(
            lambda i: run_cli(one_path(i)),
            lambda: run_cli(paths),
            count,
            arguments.cli_repeats,
            batch_repeats=1,
        )

        tracking_uri = register_served_model(model_path, scratch / "mlruns")
        process, url, startup = serve(tracking_uri, scratch / "server.log")
        try:
            encoded = [path.read_bytes() for path in paths]
            invocations = f"{url}/invocations"

            def post_batches() -> None:
                for start in range(0, count, batch):
                    post(invocations, encoded[start : start + batch])

            results["served: mlflow models serve, HTTP + base64"] = measure(
                lambda i: post(invocations, [encoded[i % count]]), post_batches, count, repeats
            )
        finally:
            stop(process)

    print(f"model: {model_note}; images: {images_note}; CPU only ({os.cpu_count()} cores)")
    print(
        f"keras {keras.__version__}, mlflow {mlflow.__version__}; latency over {repeats} calls "
        f"({arguments.cli_repeats} for the CLI), throughput over {count} images in batches of "
        f"{batch} (median of 3 passes, 1 for the CLI); served model start-up {startup:.1f} s"
    )
    base_p50, _, base_rate = next(iter(results.values()))
    print(f"{'':<52}{'p50 ms':>9}{'p95 ms':>9}{'images/s':>10}   p50, rate vs baseline")
    for name, (p50, p95, rate) in results.items():
        ratios = f"{p50 / base_p50:6.2f}x {rate / base_rate:6.2f}x"
        print(f"{name:<52}{p50:9.1f}{p95:9.1f}{rate:10.1f}   {ratios}")


if __name__ == "__main__":
    main()
