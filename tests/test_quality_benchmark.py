"""benchmarks/quality.py's pure parts: the stage time profile read from a `dvc repro` log's line
times, and the seed table's summary over runs (mean, sample sd, range). No pipeline runs here."""

import importlib.util
from pathlib import Path

import pytest

from pneumonia.contracts.metrics_report import HIGH, LOW, THRESHOLD, figure_key

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def load_quality():
    spec = importlib.util.spec_from_file_location(
        "quality_benchmark", PROJECT_ROOT / "benchmarks" / "quality.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


quality = load_quality()

# A `dvc repro` log as the pipeline writes it off a terminal (the wording of dvc, train and
# evaluate), each line with the time it was read; the empty last line is the process's exit.
LOG = [
    (0.0, "Running stage 'validate':"),
    (0.5, "> python stages/validate.py"),
    (2.0, "validate: params.yaml OK"),
    (3.0, "Updating lock file 'dvc.lock'"),
    (4.0, "Stage 'download' didn't change, skipping"),
    (5.0, "Running stage 'train':"),
    (6.0, "> python stages/train.py"),
    (10.0, "tuning: 4 trial(s) of 2 epoch(s) on val_auc, study train-3f2a, at most 15:00"),
    (11.0, "trial 1/4: optimizer adam, learning_rate 0.001"),
    (40.0, "trial 1/4: val_auc 0.9512 (epoch 2) in 00:29"),
    (70.0, "final fit: 1 member(s), up to 8 epoch(s) each, early stopping on val_auc after 8"),
    (71.0, "  epoch 1/8: 10/100 batches (10%), 00:30 elapsed, ETA 04:30, loss 0.5012"),
    (190.0, "final fit: 1 member(s) in 02:00"),
    (191.0, "shift check: 900 val images under 8 acquisition shifts"),
    (200.0, "  rendering: 7200 images in 00:09"),  # indented: part of the shift check
    (221.0, "shift check: val AUC 0.9500 on average under the shifts (lowest 0.9000) in 00:30"),
    (230.0, "train: val ROC AUC 0.9601"),
    (240.0, "Running stage 'evaluate':"),
    (242.0, "scoring val: 100/900 images (11%), 00:31 elapsed, ETA 04:00"),
    (262.0, "scoring val: 900 images in 00:12"),
    (270.0, "scoring test: 624 images in 00:08"),
    (271.0, "bootstrap: started"),
    (301.5, "bootstrap: 2000 patient resamples for val and test in 00:30"),
    (320.0, "Grad-CAM panels: 4 panels in 1:01:02"),
    (330.0, "evaluate: threshold 0.5594 (youden, chosen on val); test roc_auc 0.940"),
    (335.0, "Updating lock file 'dvc.lock'"),
    (336.0, "Use `dvc push` to send your updates to remote storage."),
    (340.0, ""),
]


def test_profile_times_each_stage_that_ran_and_its_steps():
    assert quality.profile(LOG) == [
        ("validate", 4.0),  # to the skipped stage's line
        ("  start-up", 2.0),  # to the stage's first line of its own, after DVC's "> command"
        ("train", 235.0),
        ("  start-up", 5.0),
        ("  trial 1/4", 29.0),  # the duration its closing line reports
        ("  tuning", 60.0),  # from its header to the final fit's
        ("  final fit", 120.0),
        ("  shift check", 30.0),
        ("  save, log, register", 9.0),
        ("evaluate", 100.0),  # to the process's exit
        ("  start-up", 2.0),
        ("  scoring val", 12.0),  # no header: the duration its summary reports
        ("  scoring test", 8.0),
        ("  bootstrap", 30.5),
        ("  Grad-CAM panels", 3662.0),
    ]


def test_profile_leaves_out_a_step_that_never_ended():
    cut = LOG[:12]  # train fails during the final fit
    assert quality.profile([*cut, (200.0, "")]) == [
        ("validate", 4.0),
        ("  start-up", 2.0),
        ("train", 195.0),
        ("  start-up", 5.0),
        ("  trial 1/4", 29.0),
        ("  tuning", 60.0),
    ]


def test_mean_profile_averages_rows_by_stage_over_the_runs_that_have_them():
    first = [("train", 100.0), ("  tuning", 40.0), ("evaluate", 10.0), ("  bootstrap", 4.0)]
    second = [("train", 200.0), ("evaluate", 30.0), ("  bootstrap", 6.0)]
    assert quality.mean_profile([first, second]) == [
        ("train", 150.0),
        ("  tuning", 40.0),
        ("evaluate", 20.0),
        ("  bootstrap", 5.0),
    ]


def row(seed, roc_auc, sensitivity, threshold, seconds):
    """A run's row as quality.py builds it from metrics.json (bounds at value -/+ 0.02)."""
    headline = {THRESHOLD: threshold}
    figures = {"roc_auc": roc_auc, "sensitivity": sensitivity, "specificity": 0.5, "accuracy": 0.8}
    for name, value in figures.items():
        headline[figure_key("test", name)] = value
        headline[figure_key("test", name, LOW)] = value - 0.02
        headline[figure_key("test", name, HIGH)] = value + 0.02
    return quality.seed_row(seed, headline, val_roc_auc=0.95, seconds=seconds)


def test_seed_summary_mean_sample_sd_and_range():
    rows = [
        row(42, roc_auc=0.90, sensitivity=0.99, threshold=0.5, seconds=600.0),
        row(43, roc_auc=0.93, sensitivity=0.96, threshold=0.6, seconds=660.0),
        row(44, roc_auc=0.96, sensitivity=0.90, threshold=0.4, seconds=720.0),
    ]
    summary = quality.seed_summary(rows)
    auc = summary[figure_key("test", "roc_auc")]
    assert auc["mean"] == pytest.approx(0.93, abs=1e-12)
    assert auc["sd"] == pytest.approx(0.03, abs=1e-12)  # ddof=1: sqrt(0.0018 / 2)
    assert (auc["min"], auc["max"]) == (0.90, 0.96)
    sensitivity = summary[figure_key("test", "sensitivity")]
    assert sensitivity["mean"] == pytest.approx(0.95, abs=1e-12)
    # deviations 0.04, 0.01, -0.05: sqrt((0.0016 + 0.0001 + 0.0025) / 2) = sqrt(0.0021)
    assert sensitivity["sd"] == pytest.approx(0.0021**0.5, abs=1e-12)
    assert summary[THRESHOLD]["sd"] == pytest.approx(0.1, abs=1e-12)
    assert summary[quality.WALL_SECONDS] == {"mean": 660.0, "sd": 60.0, "min": 600.0, "max": 720.0}
    assert summary[figure_key("test", "specificity")]["sd"] == 0.0

    table = quality.seed_table(rows, summary)
    assert len(table) == 1 + 3 + 3  # header, a row per run, mean / sd / range
    assert table[1].split()[:4] == ["42", "0.9000", "[0.880,", "0.920]"]
    assert table[-1].split()[:3] == ["range", "0.9000-0.9600", "0.9000-0.9900"]
    assert table[-1].split()[-1] == "10.0-12.0"  # wall minutes


def test_seed_summary_of_one_run_has_no_sd():
    summary = quality.seed_summary([row(42, 0.94, 0.98, 0.56, 900.0)])
    auc = summary[figure_key("test", "roc_auc")]
    assert auc == {"mean": 0.94, "sd": None, "min": 0.94, "max": 0.94}
    with pytest.raises(ValueError, match="at least one"):
        quality.seed_summary([])


def test_the_val_only_table_has_each_run_then_mean_sd_and_range():
    first = {"val_roc_auc": 0.995, "val_shift_balanced_accuracy_mean": 0.91}
    second = {"val_roc_auc": 0.997, "val_shift_balanced_accuracy_mean": 0.93}
    rows = [
        quality.val_row(42, {**first, "val_shift_auc_mean": 0.990}, 300.0),
        quality.val_row(43, {**second, "val_shift_auc_mean": 0.992}, 360.0),
    ]
    assert rows[0] == {
        "seed": 42,
        "val_roc_auc": 0.995,
        "val_shift_balanced_accuracy_mean": 0.91,
        "val_shift_auc_mean": 0.990,
        "wall_seconds": 300.0,
    }
    lines = quality.val_table(rows)
    assert [line.split()[0] for line in lines[1:]] == ["42", "43", "mean", "sd", "range"]
    assert lines[3].split()[1:] == ["0.9960", "0.9200", "0.9910", "5.5"]
    assert lines[4].split()[2] == "0.0141"  # the sample sd of 0.91 and 0.93
    assert lines[5].split()[1] == "0.9950-0.9970"
