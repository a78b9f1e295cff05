"""Model quality of the default pipeline: a fresh clone of a commit, `dvc repro` on the local copy
of the dataset, the test metrics with their patient-bootstrap 95% intervals, the wall time and
where it went (a stage time profile read from the times of the log's lines).

    python benchmarks/quality.py [--source ../shared/data/chest_xray] [--set key=value ...]
    python benchmarks/quality.py --seeds 3 --json quality-seeds.json   # train.seed 42, 43, 44
    python benchmarks/quality.py --rev 28e4e62 --keep                   # an older commit
    python benchmarks/quality.py --val-only --seeds 3 --set train.ensemble=2   # judging a lever

Each run (one per seed, one after the other) clones the commit named by --rev (default HEAD)
into its own temporary folder, links the dataset folder to data/chest_xray there and sets
`download.source: data/chest_xray`, so the clone's dvc.lock records a relative path as the
committed one does (--no-link-source writes the absolute path instead). With --seeds N the runs
use the params' train.seed + 0, 1, ..., N - 1 (after any --set), and a seed table ends the output:
each run's test figures with their intervals, then the mean, the sample sd and the range over
the runs.

With --val-only the runs stop after the train stage (`dvc repro train`): evaluate, which reads
test, never runs, and the table holds train's val figures only (clean val ROC AUC and the
acquisition-shift check's means), with their mean and sd over the seeds: what a lever is judged
on (docs/experiments.md, round 6).

Nothing here chooses anything: the pipeline picks the threshold on val and reads test once, in
evaluate; this script only reports. The runs are logged to this project's MLflow store.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from pneumonia.config import project_paths
from pneumonia.console import quiet_console
from pneumonia.contracts.metrics_report import (
    AT_0_5,
    AT_THRESHOLD,
    HEADLINE_METRICS,
    HIGH,
    LOW,
    THRESHOLD,
    figure_key,
    flat_figures,
    read_detail,
    read_headline,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BUDGET_SECONDS = 30 * 60
# (metric, goal) from the model-quality issue, on the official test split at the val threshold.
GOALS = {"roc_auc": 0.975, "accuracy": 0.93, "sensitivity": 0.96, "specificity": 0.88}
# Kermany et al. 2018 (Cell), ImageNet transfer learning, same test split.
BOUNDS = (None, LOW, HIGH)
KERMANY = {"roc_auc": 0.968, "accuracy": 0.928, "sensitivity": 0.932, "specificity": 0.901}
# Where a linked dataset lives in the clone; the repository's .gitignore ignores it.
LINKED_SOURCE = "data/chest_xray"

# The seed table: the test metrics (with their intervals), then figures without one.
SEED_METRICS = ("roc_auc", "sensitivity", "specificity", "accuracy")
VAL_ROC_AUC, WALL_SECONDS = "val_roc_auc", "wall_seconds"
SUMMARY_COLUMNS = (
    *(figure_key("test", name) for name in SEED_METRICS),
    VAL_ROC_AUC,
    THRESHOLD,
    WALL_SECONDS,
)

# The log lines the profile reads. DVC's own (dvc/stage/run.py, dvc/stage/__init__.py,
# dvc/stage/cache.py): a stage that runs, or one that is skipped, which ends the one before it.
STAGE_RUNS = re.compile(r"^Running stage '(?P<name>[^']+)':")
STAGE_BOUNDARY = re.compile(r"^(Running stage|Stage) '[^']+'")
# Steps that print a header and a summary line, timed from one to the other (the first line
# matching the start, then the first after it matching the end): train's (model/tuning.py,
# model/training.py, model/robustness.py) and evaluate's bootstrap (evaluation/report.py).
SPANS = (
    ("tuning", re.compile(r"^tuning: \d+ trial"), re.compile(r"^final fit: ")),
    (
        "final fit",
        re.compile(r"^final fit: \d+ member\(s\), up to"),
        re.compile(r"^final fit: \d+ member\(s\) in "),
    ),
    ("shift check", re.compile(r"^shift check: \d+ val images"), re.compile(r"^shift check: val")),
    ("bootstrap", re.compile(r"^bootstrap: started"), re.compile(r"^bootstrap: \d+ patient")),
    # Train's end: saving the model, its MLflow logging and registration.
    ("save, log, register", re.compile(r"^shift check: val"), re.compile(r"^train: val ROC AUC")),
)
# A tuning trial's closing line: `trial 2/4: val_auc 0.9729 (epoch 2) in 00:49`, `... pruned in`.
TRIAL = re.compile(r"^(?P<name>trial \d+/\d+): .* in (?P<duration>\d+(?::\d\d){1,2})$")
# The stage's command echoed by DVC; the line after it is the stage's own first output.
COMMAND = re.compile(r"^> ")
# A step with no header off a terminal (pneumonia.progress's default summary, at no indent:
# `scoring val: 624 images in 00:12`, `Grad-CAM panels: 4 panels in 00:09`, `preprocess train:
# ...`): timed by the duration it reports, the only start it gives.
SUMMARY_ONLY = re.compile(
    r"^(?P<name>[A-Za-z][^:]*): \d+ [\w-]+ in (?P<duration>\d+(?::\d\d){1,2})$"
)


def override(params: dict, assignment: str) -> None:
    key, _, text = assignment.partition("=")
    *parents, leaf = key.split(".")
    section = params
    for parent in parents:
        section = section[parent]
    section[leaf] = yaml.safe_load(text)


def parse_duration(text: str) -> float:
    """Seconds in pneumonia.progress.duration's format: `00:42`, `12:03`, `1:02:03`."""
    seconds = 0
    for part in text.split(":"):
        seconds = seconds * 60 + int(part)
    return float(seconds)


def profile(lines: list[tuple[float, str]]) -> list[tuple[str, float]]:
    """Where a `dvc repro` log's wall time went: one row per stage that ran (from its
    `Running stage` line to the next stage's line, or to the last line: the caller adds an empty
    line at the end of the process), each followed by its steps as indented rows in the order
    they ended (see SPANS and SUMMARY_ONLY).

    `lines`: (time.perf_counter() when the line was read, the line without its newline).
    """
    starts = [index for index, (_, text) in enumerate(lines) if STAGE_BOUNDARY.match(text)]
    rows: list[tuple[str, float]] = []
    for position, start in enumerate(starts):
        match = STAGE_RUNS.match(lines[start][1])
        if match is None:  # a stage DVC skipped
            continue
        end = starts[position + 1] if position + 1 < len(starts) else len(lines) - 1
        stage = lines[start : end + 1]
        rows.append((match["name"], stage[-1][0] - stage[0][0]))
        steps: list[tuple[int, str, float]] = []
        for name, opens, closes in SPANS:
            first = next((i for i, (_, text) in enumerate(stage) if opens.match(text)), None)
            if first is None:
                continue
            last = next(
                (i for i in range(first + 1, len(stage)) if closes.match(stage[i][1])), None
            )
            if last is not None:
                steps.append((last, name, stage[last][0] - stage[first][0]))
        for index, (_, text) in enumerate(stage):
            summary = SUMMARY_ONLY.match(text) or TRIAL.match(text)
            if summary is not None:
                steps.append((index, summary["name"], parse_duration(summary["duration"])))
        # Start-up: Python, the imports (TensorFlow's take seconds) and loading, up to the
        # stage's first line of its own.
        first = next((i for i in range(1, len(stage) - 1) if not COMMAND.match(stage[i][1])), None)
        if first is not None and first + 1 < len(stage):
            steps.append((-1, "start-up", stage[first][0] - stage[0][0]))
        rows += [(f"  {name}", seconds) for _, name, seconds in sorted(steps)]
    return rows


def mean_profile(profiles: list[list[tuple[str, float]]]) -> list[tuple[str, float]]:
    """The runs' profiles averaged row by row (a step is told apart by its stage), in the order
    the rows first appear; a row some runs lack is averaged over the runs that have it."""
    totals: dict[tuple[str, str], list[float]] = {}
    for rows in profiles:
        stage = ""
        for label, seconds in rows:
            if not label.startswith(" "):
                stage = label
            totals.setdefault((stage, label), []).append(seconds)
    return [(label, statistics.fmean(values)) for (_, label), values in totals.items()]


def profile_table(rows: list[tuple[str, float]], title: str) -> list[str]:
    """The profile as printed: seconds, minutes and, for a stage, its share of all stages."""
    total = sum(seconds for label, seconds in rows if not label.startswith(" "))
    lines = [title, f"{'stage / step':<24} {'seconds':>8} {'min':>6} {'share':>6}"]
    for label, seconds in rows:
        share = "" if label.startswith(" ") or not total else f"{seconds / total:.0%}"
        lines.append(f"{label:<24} {seconds:>8.1f} {seconds / 60:>6.1f} {share:>6}".rstrip())
    return lines


def seed_row(seed: int, headline: dict[str, float], val_roc_auc: float, seconds: float) -> dict:
    """One run's row of the seed table: metrics.json's test figures with their bounds, train's
    final val ROC AUC, the threshold (chosen on val) and the wall time of the whole repro."""
    row: dict[str, Any] = {"seed": seed}
    for name in SEED_METRICS:
        for bound in BOUNDS:
            row[figure_key("test", name, bound)] = headline[figure_key("test", name, bound)]
    row.update({VAL_ROC_AUC: val_roc_auc, THRESHOLD: headline[THRESHOLD], WALL_SECONDS: seconds})
    return row


def seed_summary(rows: list[dict]) -> dict[str, dict[str, float | None]]:
    """Mean, sample sd (ddof=1; None for a single run) and range of each summary column over the
    runs: the spread that comes from the seed alone, to set beside the bootstrap intervals."""
    if not rows:
        raise ValueError("seed_summary needs at least one run's row")
    summary: dict[str, dict[str, float | None]] = {}
    for column in SUMMARY_COLUMNS:
        values = [float(row[column]) for row in rows]
        summary[column] = {
            "mean": statistics.fmean(values),
            "sd": statistics.stdev(values) if len(values) >= 2 else None,
            "min": min(values),
            "max": max(values),
        }
    return summary


def seed_table(rows: list[dict], summary: dict[str, dict[str, float | None]]) -> list[str]:
    """The seed table as printed: a row per run, then mean, sd and range under each column."""
    lines = [
        f"{'seed':>5}  "
        + " ".join(f"{name + ' [95% CI]':<22}" for name in SEED_METRICS)
        + f" {'val AUC':>13} {'threshold':>13} {'wall min':>9}"
    ]
    for row in rows:
        cells = []
        for name in SEED_METRICS:
            value, low, high = (row[figure_key("test", name, bound)] for bound in BOUNDS)
            cells.append(f"{value:.4f} [{low:.3f}, {high:.3f}]")
        lines.append(
            f"{row['seed']:>5}  "
            + " ".join(f"{cell:<22}" for cell in cells)
            + f" {row[VAL_ROC_AUC]:>13.4f} {row[THRESHOLD]:>13.4f} {row[WALL_SECONDS] / 60:>9.1f}"
        )

    def cell(column: str, statistic: str) -> str:
        figures = summary[column]
        if statistic == "range":
            return f"{figures['min']:.4f}-{figures['max']:.4f}"
        value = figures[statistic]
        return "-" if value is None else f"{value:.4f}"

    for statistic in ("mean", "sd", "range"):
        metrics = " ".join(
            f"{cell(figure_key('test', name), statistic):<22}" for name in SEED_METRICS
        )
        wall = summary[WALL_SECONDS]
        if statistic == "range":
            wall_cell = f"{wall['min'] / 60:.1f}-{wall['max'] / 60:.1f}"
        else:
            wall_cell = "-" if wall[statistic] is None else f"{wall[statistic] / 60:.1f}"
        lines.append(
            f"{statistic:>5}  {metrics} {cell(VAL_ROC_AUC, statistic):>13} "
            f"{cell(THRESHOLD, statistic):>13} {wall_cell:>9}"
        )
    return lines


# The val figures of train.json a --val-only run reports (docs/experiments.md, round 6).
VAL_FIGURES = (VAL_ROC_AUC, "val_shift_balanced_accuracy_mean", "val_shift_auc_mean")


def val_row(seed: int, train: dict[str, Any], seconds: float) -> dict[str, Any]:
    """One --val-only run's row: train.json's val figures and the wall time of its repro."""
    return {
        "seed": seed,
        **{name: float(train[name]) for name in VAL_FIGURES},
        WALL_SECONDS: seconds,
    }


def val_table(rows: list[dict[str, Any]]) -> list[str]:
    """The --val-only table: a row per run, then mean, sample sd and range of each column."""
    columns = (*VAL_FIGURES, WALL_SECONDS)
    names = ("val ROC AUC", "shift bal. acc.", "shift AUC", "wall min")
    lines = [f"{'seed':>5}  " + " ".join(f"{name:>16}" for name in names)]

    def shown(column: str, value: float) -> str:
        return f"{value / 60:.1f}" if column == WALL_SECONDS else f"{value:.4f}"

    for row in rows:
        cells = " ".join(f"{shown(column, row[column]):>16}" for column in columns)
        lines.append(f"{row['seed']:>5}  {cells}")
    for statistic in ("mean", "sd", "range"):
        cells = []
        for column in columns:
            values = [float(row[column]) for row in rows]
            if statistic == "mean":
                cell = shown(column, statistics.fmean(values))
            elif statistic == "sd":
                cell = shown(column, statistics.stdev(values)) if len(values) >= 2 else "-"
            else:
                cell = f"{shown(column, min(values))}-{shown(column, max(values))}"
            cells.append(f"{cell:>16}")
        lines.append(f"{statistic:>5}  " + " ".join(cells))
    return lines


def resolve_commit(rev: str) -> str:
    """The full hash of `rev` in this checkout (HEAD: this checkout's commit)."""
    result = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        sys.exit(
            f"error: --rev {rev}: not a commit of {PROJECT_ROOT}; pass a commit, branch or tag"
        )
    return result.stdout.strip()


def link_source(clone: Path, source: Path) -> str:
    """Link the dataset folder into the clone and return the relative download.source for it,
    making sure git ignores the link (a commit from before the .gitignore rule gets it in the
    clone's .git/info/exclude, which changes no tracked file)."""
    link = clone / LINKED_SOURCE
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(source, target_is_directory=True)
    ignored = subprocess.run(["git", "check-ignore", "--quiet", LINKED_SOURCE], cwd=clone)
    if ignored.returncode != 0:
        with (clone / ".git" / "info" / "exclude").open("a") as exclude:
            exclude.write(f"/{LINKED_SOURCE}\n")
        print(f"note: this commit's .gitignore misses {LINKED_SOURCE}; excluded in the clone")
    return LINKED_SOURCE


def repro(
    clone: Path, log_path: Path, environment: dict[str, str], targets: list[str] | None = None
) -> tuple[int, list]:
    """`dvc repro [targets]` in the clone, its output written to log_path as it comes; returns the
    exit status and every line with the time it was read (then an empty line at the exit)."""
    lines: list[tuple[float, str]] = []
    with (
        log_path.open("w") as log,
        subprocess.Popen(
            ["dvc", "repro", *(targets or [])],
            cwd=clone,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
        ) as process,
    ):
        for line in process.stdout:  # type: ignore[union-attr]  (stdout=PIPE)
            lines.append((time.perf_counter(), line.rstrip("\r\n")))
            log.write(line)
            log.flush()
        returncode = process.wait()
    lines.append((time.perf_counter(), ""))
    return returncode, lines


def print_report(clone: Path, seconds: float) -> tuple[dict[str, float], float]:
    """The run's table (one line per test metric with its 95% interval); returns the run's flat
    figures (metrics_report.flat_figures: the headline with its intervals) and train's final
    val ROC AUC."""
    # Imported here, not at the top: it loads TensorFlow, which the seed and profile functions
    # (and their unit test) do not need.
    from pneumonia.model.training import FINAL_VAL_ROC_AUC

    paths = project_paths(clone / "params.yaml")
    report = read_detail(paths.metrics_detail)
    headline = flat_figures(report)
    if read_headline(paths.metrics)[THRESHOLD] != headline[THRESHOLD]:
        raise SystemExit(f"{paths.metrics} and {paths.metrics_detail} are of different runs")
    train = json.loads(paths.stage_summary("train").read_text())
    test = report["test"][AT_THRESHOLD]
    threshold = report[THRESHOLD]
    print(
        f"\nthreshold {headline[THRESHOLD]:.4f} ({threshold['rule']}, chosen on val); "
        f"val ROC AUC {train[FINAL_VAL_ROC_AUC]:.4f} ({train['ensemble_members']} member(s)), val "
        f"balanced accuracy under acquisition shifts "
        f"{train['val_shift_balanced_accuracy_mean']:.4f}; "
        f"test: {report['test']['images']} images, "
        f"{report['test']['patients']} patients; {report['bootstrap']['resamples']} "
        "patient-bootstrap resamples"
    )
    print(f"{'metric':<12} {'test':>7}  {'95% CI':<17} {'goal':>6} {'met':>4} {'Kermany':>8}")
    for name in ("roc_auc", "accuracy", "sensitivity", "specificity", "precision", "f1"):
        if name in HEADLINE_METRICS:  # the headline's figures
            value, low, high = (headline[figure_key("test", name, bound)] for bound in BOUNDS)
        else:
            value, low, high = (test[name][key] for key in ("value", "ci_low", "ci_high"))
        goal = GOALS.get(name)
        met = "" if goal is None else ("yes" if value >= goal else "no")
        print(
            f"{name:<12} {value:>7.4f}  [{low:.4f}, {high:.4f}]"
            f" {goal if goal else '':>6} {met:>4} {KERMANY.get(name, ''):>8}"
        )
    for name in ("pr_auc", "brier", "ece"):
        value = test[name]
        print(f"{name:<12} {value['value']:>7.4f}  [{value['ci_low']:.4f}, {value['ci_high']:.4f}]")
    print(f"confusion at the threshold: {test['confusion']}")
    half = report["test"][AT_0_5]
    print("at 0.5 instead: " + ", ".join(f"{name} {half[name]['value']:.4f}" for name in GOALS))
    print(
        f"wall time {seconds / 60:.1f} min for the whole dvc repro "
        f"({seconds / BUDGET_SECONDS:.2f}x the 30-minute budget)"
    )
    return headline, float(train[FINAL_VAL_ROC_AUC])


def main() -> None:
    quiet_console()  # before TensorFlow is imported (print_report reads train's keys)
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", default="../shared/data/chest_xray", help="dataset folder")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="a params.yaml override"
    )
    parser.add_argument(
        "--seeds", type=int, default=1, metavar="N", help="runs, with train.seed + 0 .. N - 1"
    )
    parser.add_argument("--rev", default="HEAD", help="the commit to clone (default HEAD)")
    parser.add_argument(
        "--link-source",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"link the source to {LINKED_SOURCE} in the clone (default) so dvc.lock records a "
        "relative path; --no-link-source writes the absolute path into params.yaml",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the seed table here")
    parser.add_argument("--keep", action="store_true", help="keep every clone for inspection")
    parser.add_argument(
        "--val-only",
        action="store_true",
        help="stop after the train stage (evaluate, which reads test, does not run) and report "
        "train's val figures: for judging a lever",
    )
    arguments = parser.parse_args()
    if arguments.seeds < 1:
        parser.error("--seeds must be at least 1")
    source = (PROJECT_ROOT / arguments.source).resolve()
    if not source.is_dir():
        sys.exit(f"error: {source} is not a folder in the Kaggle layout; pass --source")
    commit = resolve_commit(arguments.rev)

    environment = dict(os.environ)
    # `dvc` and the stages' `python` from this interpreter's environment, activated or not.
    environment["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environment['PATH']}"
    # Each line reaches the log when it is written, so its time is the step's.
    environment["PYTHONUNBUFFERED"] = "1"
    store = PROJECT_ROOT / "mlruns"
    store.mkdir(exist_ok=True)
    environment.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{store / 'mlflow.db'}")

    rows: list[dict] = []
    val_rows: list[dict] = []
    profiles: list[list[tuple[str, float]]] = []
    for run in range(arguments.seeds):
        workdir = Path(tempfile.mkdtemp(prefix="pneumonia-quality-"))
        clone = workdir / "repo"
        subprocess.run(["git", "clone", "--quiet", str(PROJECT_ROOT), str(clone)], check=True)
        subprocess.run(["git", "checkout", "--quiet", commit], cwd=clone, check=True)
        params_file = clone / "params.yaml"
        params = yaml.safe_load(params_file.read_text())
        for assignment in arguments.set:
            override(params, assignment)
        seed = params["train"]["seed"] + run
        params["train"]["seed"] = seed
        params["download"]["source"] = (
            link_source(clone, source) if arguments.link_source else str(source)
        )
        params_file.write_text(yaml.safe_dump(params, sort_keys=False))

        log_path = workdir / "repro.log"
        if run:
            print()
        print(
            f"run {run + 1}/{arguments.seeds}: commit {commit[:7]}, "
            f"train.seed {seed}; dvc repro in {clone} (log: {log_path})",
            flush=True,
        )
        started = time.perf_counter()
        targets = ["train"] if arguments.val_only else None
        returncode, lines = repro(clone, log_path, environment, targets)
        seconds = time.perf_counter() - started
        if returncode != 0:
            sys.exit(f"error: dvc repro failed after {seconds:.0f} s; see {log_path}")

        if arguments.val_only:
            train = json.loads(
                project_paths(clone / "params.yaml").stage_summary("train").read_text()
            )
            val_rows.append(val_row(seed, train, seconds))
            print("\n".join(val_table(val_rows[-1:])[:2]))
            if arguments.json:
                arguments.json.write_text(
                    json.dumps({"commit": commit, "set": arguments.set, "runs": val_rows}, indent=2)
                    + "\n"
                )
            if arguments.keep:
                print(f"kept: {clone} (log: {log_path})")
            else:
                subprocess.run(["rm", "-rf", str(workdir)], check=False)
            continue
        headline, val_roc_auc = print_report(clone, seconds)
        rows.append(seed_row(seed, headline, val_roc_auc, seconds))
        profiles.append(profile(lines))
        print()
        print("\n".join(profile_table(profiles[-1], "stage time profile (from the log's lines)")))
        if arguments.json:
            runs = [
                {**row, "profile": [list(entry) for entry in rows_profile]}
                for row, rows_profile in zip(rows, profiles, strict=True)
            ]
            document = {
                "rev": arguments.rev,
                "commit": commit,
                "set": arguments.set,
                "source": arguments.source,  # as given: no absolute path in a committed file
                "runs": runs,
                "summary": seed_summary(rows),
                "profile_mean": [list(entry) for entry in mean_profile(profiles)],
            }
            arguments.json.write_text(json.dumps(document, indent=2) + "\n")
        if arguments.keep:
            print(f"kept: {clone} (log: {log_path})")
        else:
            subprocess.run(["rm", "-rf", str(workdir)], check=False)

    if len(val_rows) >= 2:
        print(f"\n{len(val_rows)} runs of commit {commit[:7]} up to train (val figures only):")
        print("\n".join(val_table(val_rows)))
    if len(rows) >= 2:
        seeds = f"{rows[0]['seed']}-{rows[-1]['seed']}"
        print(f"\n{len(rows)} runs of commit {commit[:7]}, train.seed {seeds}; test at the val")
        print("threshold; summary rows over the runs, beside each run's patient-bootstrap interval")
        print("\n".join(seed_table(rows, seed_summary(rows))))
        print()
        title = f"stage time profile, mean over {len(profiles)} runs"
        print("\n".join(profile_table(mean_profile(profiles), title)))
    if arguments.json:
        print(f"seed table: {arguments.json}")


if __name__ == "__main__":
    main()
