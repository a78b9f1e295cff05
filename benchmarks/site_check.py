"""Time and peak memory of a site check (site.check.check_site) of N images, against scoring the
same images (the one model pass a check needs anyway), in one run.

    python benchmarks/site_check.py [--model models/model.keras] [--params params.yaml]
        [--images 624] [--repeats 3]

With `--model` (a .keras file with the evaluate stage's site_reference.npz beside it), the real
reference and the model's features of the processed test split (`--params`' paths, this
project's params.yaml by default; its first `--images` images, all 624 by default). Without, an
untrained model of params.yaml's fixed architecture scores `--images` random images, and the
check compares synthetic features of that model's width: a reference built from 782 val-like
images of 391 patients (the default val split's size) against `--images` shifted ones. The
statistics' cost depends on the counts and the width, not on the weights.

What is timed (median of `--repeats` runs, after one warm-up):

- baseline: the model's features and scores of the images (site.features, batches of 32);
- site check: check_site on those features (the two-sample MMD test with its null drawn from
  patient splits of the reference, the cross-fitted classifier two-sample AUC, the
  out-of-distribution scores), and each of its three parts.

Peak memory is tracemalloc's peak over one run of each (Python and NumPy allocations; not
TensorFlow's own allocator, so the baseline's is a lower bound), and the process's maximum
resident set size at the end (resource.getrusage).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics as stats
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

# CPU figures: hide any GPU, as benchmarks/predict.py does.
os.environ["CUDA_VISIBLE_DEVICES"] = ""
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

from pneumonia.config import find_project_root, load_config
from pneumonia.contracts.arrays import load_split
from pneumonia.contracts.paths import SITE_REFERENCE_FILE
from pneumonia.contracts.site_reference import SiteReference, read_site_reference
from pneumonia.model.network import build_model
from pneumonia.site import statistics
from pneumonia.site.check import OutOfDistribution, check_site, two_sample_test
from pneumonia.site.features import features_and_score_model, features_and_scores
from pneumonia.site.reference import build_site_reference

PROJECT_ROOT = find_project_root(Path(__file__).resolve().parent)
# The default pipeline's val split: 782 images (of 426 patients; two each here).
SYNTHETIC_VAL_IMAGES = 782


def timed(call: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(median seconds over `repeats` runs after a warm-up, tracemalloc peak MB of one run)."""
    call()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    tracemalloc.start()
    call()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return stats.median(seconds), peak / 1e6


def real_inputs(
    model_path: Path, params: Path, count: int
) -> tuple[keras.Model, np.ndarray, SiteReference, str]:
    reference_path = model_path.with_name(SITE_REFERENCE_FILE)
    reference = read_site_reference(reference_path, model_path)
    config = load_config(params)
    images, _, _ = load_split(config.paths.processed_split("test"), mmap=False)
    model = keras.saving.load_model(model_path, compile=False)
    chosen = images[:count]
    return model, chosen, reference, f"{model_path} on {len(chosen)} processed test images"


def synthetic_inputs(count: int) -> tuple[keras.Model, np.ndarray, SiteReference, str]:
    config = load_config(PROJECT_ROOT / "params.yaml")
    size = config.preprocess.image.size
    # Untrained: random weights cost the same to run as trained ones.
    model = build_model(size, config.train.model.model_copy(update={"weights": "none"}))
    width = int(features_and_score_model(model).outputs[0].shape[-1])
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(count, size, size, 1), dtype=np.uint8)
    features = rng.normal(size=(SYNTHETIC_VAL_IMAGES, width)).astype(np.float32)
    reference = build_site_reference(
        features,
        rng.random(len(features)),
        np.arange(len(features)) // 2,
        model_sha256="0" * 64,
        feature_layers=["pool"],
        threshold=0.5,
        seed=0,
    )
    note = f"untrained model at {size}px, {count} random images, synthetic features ({width} wide)"
    return model, images, reference, note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--params", type=Path, default=PROJECT_ROOT / "params.yaml")
    parser.add_argument("--images", type=int, default=624)
    parser.add_argument("--repeats", type=int, default=3)
    arguments = parser.parse_args()
    if arguments.images < 10 or arguments.repeats < 1:
        sys.exit("--images must be >= 10 (a check's minimum) and --repeats >= 1")
    if arguments.model is not None:
        model, images, reference, note = real_inputs(
            arguments.model, arguments.params, arguments.images
        )
    else:
        model, images, reference, note = synthetic_inputs(arguments.images)
    combined = features_and_score_model(model)
    features, scores = features_and_scores(model, images, combined=combined)
    if arguments.model is None:  # shifted synthetic features: a check that finds something
        features = np.random.default_rng(1).normal(0.2, 1.0, features.shape).astype(np.float32)
    record = reference.record
    detector = OutOfDistribution(reference)
    standardized = detector.standardize(features)
    rows = {
        "baseline: features and scores (one model pass)": lambda: features_and_scores(
            model, images, combined=combined
        ),
        "site check: check_site, whole": lambda: check_site(reference, features, scores),
        "  part: MMD test, null drawn by patients": lambda: two_sample_test(
            reference, detector
        ).test(standardized, record.null_draws, record.seed),
        "  part: classifier two-sample AUC": lambda: statistics.classifier_two_sample_auc(
            detector.standardized_reference, standardized, seed=record.seed
        ),
        "  part: out-of-distribution scores": lambda: detector.scores(features),
    }
    results = {name: timed(call, arguments.repeats) for name, call in rows.items()}
    check = check_site(reference, features, scores)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux
    print(f"{note}; reference {len(reference.reference_features)} images; CPU only")
    print(
        f"keras {keras.__version__}; {os.cpu_count()} cores; median of {arguments.repeats} "
        f"runs; check result: p = {check.p_value:.3g}, classifier AUC {check.classifier_auc:.2f}"
    )
    base_seconds, _ = next(iter(results.values()))
    print(f"{'':<50}{'seconds':>9}{'peak MB':>9}   time vs baseline")
    for name, (seconds, peak) in results.items():
        print(f"{name:<50}{seconds:9.3f}{peak:9.1f}   {seconds / base_seconds:6.2f}x")
    print(f"process maximum resident set size: {peak_rss:.0f} MB")


if __name__ == "__main__":
    main()
