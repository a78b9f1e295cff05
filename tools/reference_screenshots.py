"""The README's screenshots of the reference run, retaken by tools/reference_docs.py: MLflow's UI
on the project's store (the runs, the trials, the curves, the model card, Grad-CAM, the
registry) and the clone's DVC plots page, through Debian's headless Chromium driven by
Playwright (`pip install playwright`; its own browser download is not needed).

The reference run's MLflow runs are found by the clone's commit (the stages' `git_commit` tag):
its latest top-level train and evaluate runs, and train's trials by its Optuna study. The UI is
started on a port of its own with its job runner off and one worker, and stopped at the end.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
BROWSER = Path("/usr/bin/chromium")
PLOTS_TEMPLATE = REPO_ROOT / "docs" / "plots" / "offline_template.html"
VIEWPORT = {"width": 1500, "height": 900}
# The metric columns the runs screenshot adds, the ones the README's Runs path names, and the
# default columns it takes off to make room for them (each a toggle in the Columns menu).
RUN_COLUMNS = ("test/roc_auc", "test/sensitivity", "test/specificity", "val/roc_auc")
HIDDEN_COLUMNS = ("Dataset", "Source")
# The train run's per-epoch charts the curves screenshot keeps (a regular expression: the UI's
# chart search takes one).
CURVES = "^(val_auc|loss)$"
GRADCAM = "evaluation/gradcam/true_positive.png"
# The Columns menu's tree (MLflow 3's design system, `du-bois-light`).
TREE_NODE, TREE_TITLE = ".du-bois-light-tree-treenode", ".du-bois-light-tree-title"
TREE_CHECKBOX = ".du-bois-light-tree-checkbox"
SERVED_MODEL = "pneumonia-classifier"
# How long a page may take to show its Shot.ready (MLflow's UI polls, so the network never
# idles), and the UI to start.
LOAD_SECONDS = 60
UI_START_SECONDS = 120


@dataclass(frozen=True)
class ReferenceRuns:
    commit: str
    experiment_id: str
    train_id: str
    train_name: str
    evaluate_id: str
    evaluate_name: str
    study: str


def reference_runs(store: str, clone: Path) -> ReferenceRuns:
    """The clone's latest train and evaluate runs in the store: finished, of its commit (tag
    `git_commit`) and named `<stage>@<commit>` as under `dvc repro` (a `dvc exp run` of the same
    commit names its runs after the experiment)."""
    from mlflow import MlflowClient

    result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True)
    if result.returncode != 0:
        raise ValueError(f"{clone} is not a git clone: pass the clone quality.py --keep kept")
    commit = result.stdout.strip()
    params = yaml.safe_load((clone / "params.yaml").read_text(encoding="utf-8"))
    client = MlflowClient(tracking_uri=store)
    experiment = client.get_experiment_by_name(params["mlflow"]["experiment"])
    if experiment is None:
        raise ValueError(f"{store} has no experiment {params['mlflow']['experiment']!r}")
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.git_commit = '{commit}'",
        order_by=["attributes.start_time DESC"],
    )
    found: dict[str, Any] = {}
    for run in runs:
        stage = run.data.tags.get("stage")
        if run.info.run_name == f"{stage}@{commit[:7]}" and run.info.status == "FINISHED":
            found.setdefault(stage, run)
    missing = [stage for stage in ("train", "evaluate") if stage not in found]
    if missing:
        raise ValueError(
            f"{store} has no finished {' or '.join(missing)} run of commit {commit[:7]} (the "
            "clone's HEAD): pass the store the reference run logged to (--store)"
        )
    train, evaluate = found["train"], found["evaluate"]
    return ReferenceRuns(
        commit=commit,
        experiment_id=experiment.experiment_id,
        train_id=train.info.run_id,
        train_name=train.info.run_name,
        evaluate_id=evaluate.info.run_id,
        evaluate_name=evaluate.info.run_name,
        study=train.data.tags.get("optuna_study", ""),
    )


def start_ui(store: str, port: int, log_path: Path) -> subprocess.Popen:
    """`mlflow ui` on the store, in a session of its own (its workers are its children), once
    it answers /health; its output goes to log_path."""
    health = f"http://127.0.0.1:{port}/health"
    try:  # another server there would answer for this one
        with urllib.request.urlopen(health, timeout=2):
            raise ValueError(f"port {port} is taken by a running server; pass another --port")
    except OSError:
        pass
    environment = dict(os.environ)
    environment.update(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_DISABLE_TELEMETRY="true")
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store]
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [*command, "--workers", "1", "--port", str(port)],
            cwd=REPO_ROOT,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + UI_START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-400:]
            raise ValueError(f"mlflow ui on port {port} exited ({tail!r}); try another --port")
        try:
            with urllib.request.urlopen(health, timeout=2):
                return process
        except OSError:
            time.sleep(1)
    stop_ui(process)
    raise ValueError(f"mlflow ui did not answer on port {port} in {UI_START_SECONDS} s")


def stop_ui(process: subprocess.Popen) -> None:
    """End the UI's own session (the process this module started and its workers)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def plots_page(clone: Path, revisions: Sequence[str] | None, folder: Path) -> Path:
    """The clone's DVC plots page, written to `folder` (not into the clone): `dvc plots diff`
    of the revisions, or `dvc plots show` of its workspace (the reference run's outputs), in
    this checkout's page template (PLOTS_TEMPLATE), so the page is the one the docs describe
    even when the clone is of an older commit."""
    command = ["plots", "diff", *revisions] if revisions else ["plots", "show"]
    template = ["--html-template", str(PLOTS_TEMPLATE)] if PLOTS_TEMPLATE.is_file() else []
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *command, *template, "-o", str(folder)],
        cwd=clone,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise ValueError(
            f"`dvc {' '.join(command)}` in {clone} failed: {result.stderr.strip()[-300:]}"
        )
    return folder / "index.html"


def close_assistant(page: Any) -> None:
    """Close MLflow's assistant panel, which takes a third of the width when open."""
    close = page.query_selector("button[aria-label=Close]")
    if close is not None and close.is_visible():
        close.click()
        page.wait_for_timeout(500)


def add_run_columns(page: Any) -> None:
    """Tick RUN_COLUMNS in the runs table's Columns menu (the table shows no metric by default)
    and untick HIDDEN_COLUMNS: its search narrows the tree, then the checkbox of the node whose
    title is the column, whole, is clicked."""
    page.get_by_role("button", name="Columns").click()
    menu = page.locator("[data-component-type=popover]")
    for column in (*HIDDEN_COLUMNS, *RUN_COLUMNS):
        page.get_by_placeholder("Search columns").fill(column)
        page.wait_for_timeout(700)
        title = page.locator(TREE_TITLE, has_text=re.compile(f"^{re.escape(column)}$"))
        menu.locator(TREE_NODE, has=title).locator(TREE_CHECKBOX).first.click()
        page.wait_for_timeout(500)
    page.keyboard.press("Escape")
    page.wait_for_timeout(1500)


def expand_train(page: Any, train_name: str) -> None:
    """Open the train run's nested runs (its trials) with the button before its name."""
    row = page.locator("[role=row]", has_text=train_name).first
    row.locator("[col-id='attributes.`Run Name`'] button").first.click()
    page.wait_for_selector("text=trial-1", timeout=LOAD_SECONDS * 1000)


def search_charts(page: Any) -> None:
    page.get_by_placeholder("Search metric charts").fill(CURVES)
    page.wait_for_timeout(1500)


def show_more(page: Any) -> None:
    """Unfold the description (the model card) past its first lines."""
    page.get_by_text("Show more", exact=True).first.click()
    page.wait_for_timeout(1000)


@dataclass(frozen=True)
class Shot:
    file: str
    route: str  # a URL, or a route of MLflow's UI after `#`
    ready: str  # a Playwright selector that shows once the page has drawn
    prepare: Callable[[Any], None] | None = None
    height: int = VIEWPORT["height"]
    width: int = VIEWPORT["width"]


def mlflow_shots(runs: ReferenceRuns) -> list[Shot]:
    experiment = f"/experiments/{runs.experiment_id}"

    def runs_filtered(expression: str) -> str:
        return f"{experiment}/runs?searchFilter={urllib.parse.quote(expression)}"

    commit_filter = f"tags.git_commit = '{runs.commit}'"
    study_filter = f"tags.optuna_study = '{runs.study}'"
    return [
        Shot(
            "mlflow_runs.png",
            runs_filtered(commit_filter),
            f"text={runs.train_name}",
            add_run_columns,
        ),
        Shot(
            "mlflow_trials.png",
            runs_filtered(study_filter),
            f"text={runs.train_name}",
            lambda page: expand_train(page, runs.train_name),
            height=560,
        ),
        Shot(
            "mlflow_curves.png",
            f"{experiment}/runs/{runs.train_id}/model-metrics",
            "text=Model metrics",
            search_charts,
            height=640,
        ),
        Shot(
            "mlflow_model_card.png",
            f"{experiment}/runs/{runs.evaluate_id}",
            f"text={runs.evaluate_name}",
            show_more,
            height=1300,
        ),
        Shot(
            "mlflow_gradcam.png",
            f"{experiment}/runs/{runs.evaluate_id}/artifacts/{GRADCAM}",
            f"text={GRADCAM}",
            height=720,
        ),
        Shot("mlflow_registry.png", f"/models/{SERVED_MODEL}", "text=Version 1"),
    ]


def take(page: Any, shot: Shot, base: str, images: Path) -> None:
    """One screenshot; a page that does not draw is a ValueError naming the shot."""
    from playwright.sync_api import Error

    url = shot.route if "://" in shot.route else f"{base}#{shot.route}"
    try:
        page.set_viewport_size({"width": shot.width, "height": shot.height})
        page.goto(url, wait_until="load")
        page.wait_for_selector(shot.ready, timeout=LOAD_SECONDS * 1000)
        page.wait_for_timeout(1500)  # the charts and images draw after their text
        close_assistant(page)
        if shot.prepare is not None:
            shot.prepare(page)
        page.mouse.move(0, shot.height - 1)  # no chart toolbar or tooltip under the pointer
        page.wait_for_timeout(500)
        page.screenshot(path=str(images / shot.file))
    except Error as error:
        first_line = str(error).splitlines()[0]
        raise ValueError(f"{shot.file}: {url} did not draw ({first_line})") from None
    print(f"{images / shot.file}: {url}")


def take_all(
    clone: Path,
    images: Path,
    *,
    store: str,
    port: int,
    plots_revisions: Sequence[str] | None = None,
) -> int:
    """Every screenshot into `images`; 0, or 1 with a one-line error."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("error: the screenshots need playwright: pip install -e '.[docs]'", file=sys.stderr)
        return 1
    if not BROWSER.is_file():
        print(f"error: {BROWSER} is missing: apt-get install -y chromium", file=sys.stderr)
        return 1
    images.mkdir(parents=True, exist_ok=True)
    process = None
    try:
        runs = reference_runs(store, clone)
        with tempfile.TemporaryDirectory(prefix="reference-docs-plots-") as folder:
            page_file = plots_page(clone, plots_revisions, Path(folder) / "plots")
            process = start_ui(store, port, Path(folder) / "mlflow-ui.log")
            shots = [
                Shot(
                    "dvc_plots.png",
                    page_file.as_uri(),
                    ".vega-embed canvas",
                    height=1320,
                    width=1300,
                ),
                *mlflow_shots(runs),
            ]
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=str(BROWSER), args=["--no-sandbox"]
                )
                page = browser.new_context(viewport=VIEWPORT).new_page()
                for shot in shots:
                    take(page, shot, f"http://127.0.0.1:{port}/", images)
                browser.close()
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        if process is not None:
            stop_ui(process)
    print(json.dumps({"images": str(images), "runs": runs.__dict__}, indent=2))
    return 0
