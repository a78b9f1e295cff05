"""Every artifact path of the pipeline, built from params.yaml's `paths` section.

Stages, the CLI and the tests take paths from here; dvc.yaml spells the same paths for DVC, and a
test checks the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# The preprocess settings and counts, beside the processed split folders (contracts.arrays).
META_FILE = "meta.json"
# File names in `paths.models`: the model, train's model card, evaluate's operating point.
MODEL_FILE = "model.keras"
MODEL_CARD_FILE = "model.json"
THRESHOLD_FILE = "threshold.json"
# Beside them, evaluate's site reference (contracts.site_reference): what a site check compares
# a new site's images against.
SITE_REFERENCE_FILE = "site_reference.npz"
# The tables the evaluate stage writes (the DVC plots' data), in `paths.reports`/tables: an
# output of their own that DVC caches, so `dvc plots diff` finds another revision's curves. The
# rest of evaluate's outputs (the Grad-CAM panels are images of patients) stay out of the cache.
EVALUATE_TABLES = ("roc", "precision_recall", "calibration", "predictions")
# Evaluate's nested report (in `paths.reports`/evaluate) and its Markdown model card (in
# `paths.reports`).
METRICS_DETAIL_FILE = "metrics_detail.json"
MODEL_CARD_MARKDOWN_FILE = "model_card.md"
# The site stage's reports, in `paths.reports`.
SITE_REPORTS_FOLDER = "site"


@dataclass(frozen=True)
class Paths:
    images: Path
    manifest: Path
    data_quality: Path
    split: Path
    processed: Path
    reports: Path
    models: Path

    def split_csv(self, split: str) -> Path:
        return self.split / f"{split}.csv"

    def processed_split(self, split: str) -> Path:
        return self.processed / split

    @property
    def processed_meta(self) -> Path:
        return self.processed / META_FILE

    @property
    def params_check(self) -> Path:
        """The validate stage's output: the same for every valid params.yaml."""
        return self.reports / "params_check.json"

    def stage_summary(self, stage: str) -> Path:
        """reports/<stage>.json: the stage's DVC metrics."""
        return self.reports / f"{stage}.json"

    @property
    def samples(self) -> Path:
        return self.reports / "samples"

    def sample_grid(self, split: str) -> Path:
        return self.samples / f"{split}.png"

    @property
    def model(self) -> Path:
        return self.models / MODEL_FILE

    @property
    def model_card(self) -> Path:
        return self.models / MODEL_CARD_FILE

    @property
    def threshold(self) -> Path:
        return self.models / THRESHOLD_FILE

    @property
    def site_reference(self) -> Path:
        return self.models / SITE_REFERENCE_FILE

    @property
    def train_reports(self) -> Path:
        return self.reports / "train"

    @property
    def trials_table(self) -> Path:
        return self.train_reports / "trials.csv"

    @property
    def history_table(self) -> Path:
        return self.train_reports / "history.csv"

    @property
    def val_shift_table(self) -> Path:
        return self.train_reports / "val_shift.csv"

    @property
    def members_table(self) -> Path:
        return self.train_reports / "members.csv"

    @property
    def train_artifacts(self) -> list[Path]:
        """What the train run keeps as artifacts besides the model."""
        return [
            self.model_card,
            self.history_table,
            self.trials_table,
            self.val_shift_table,
            self.members_table,
        ]

    @property
    def metrics(self) -> Path:
        return self.reports / "metrics.json"

    @property
    def metrics_detail(self) -> Path:
        """Everything evaluate measured, nested (contracts.metrics_report); metrics.json holds
        the headline only."""
        return self.evaluate_reports / METRICS_DETAIL_FILE

    @property
    def model_card_markdown(self) -> Path:
        """The model card a person reads, beside metrics.json: evaluate's card
        (evaluate_card_markdown) with the site stage's section after it."""
        return self.reports / MODEL_CARD_MARKDOWN_FILE

    @property
    def evaluate_card_markdown(self) -> Path:
        """Evaluate's model card (evaluation.model_card), also the registered versions'
        description; the site stage writes the final one from it."""
        return self.evaluate_reports / MODEL_CARD_MARKDOWN_FILE

    @property
    def site_reports(self) -> Path:
        """The site stage's reports (deployment.stage): the test split treated as a new site."""
        return self.reports / SITE_REPORTS_FOLDER

    @property
    def site_metrics(self) -> Path:
        """The site stage's few figures (the check, its false alarms, the new-site figures at
        k = 100): a report, read by name (`dvc metrics show reports/site/metrics.json`). Not a
        DVC metrics file: DVC prints every metrics file in one table (and `dvc exp show`
        prefixes names two files share), which then no longer fits 100 columns."""
        return self.site_reports / "metrics.json"

    @property
    def site_calibration_table(self) -> Path:
        return self.site_reports / "calibration.csv"

    @property
    def site_plot_table(self) -> Path:
        """One row per k, the DVC plot's data (cached, so `dvc plots diff` finds another
        revision's)."""
        return self.site_reports / "by_k.csv"

    @property
    def site_check(self) -> Path:
        return self.site_reports / "check.json"

    @property
    def site_figure(self) -> Path:
        return self.site_reports / "calibration.png"

    @property
    def evaluate_reports(self) -> Path:
        return self.reports / "evaluate"

    @property
    def evaluate_tables(self) -> Path:
        return self.reports / "tables"

    def evaluate_table(self, name: str) -> Path:
        if name not in EVALUATE_TABLES:
            raise ValueError(
                f"unknown evaluate table {name!r}; known: {', '.join(EVALUATE_TABLES)}"
            )
        return self.evaluate_tables / f"{name}.csv"

    @property
    def evaluate_plots(self) -> Path:
        return self.evaluate_reports / "plots"

    @property
    def gradcam_panels(self) -> Path:
        return self.evaluate_reports / "gradcam"
