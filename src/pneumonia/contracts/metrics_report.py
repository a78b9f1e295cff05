"""reports/metrics.json, evaluate's headline figures, and the detail report beside it.

metrics.json is what `dvc metrics show` and `dvc exp show` print, so it is flat and narrow (six
keys, 100 columns): test ROC AUC, sensitivity, specificity and accuracy at the threshold chosen on
val, that threshold, and val's ROC AUC. Their confidence intervals, val's other figures and
everything else evaluate measured (precision, F1, PR AUC, calibration, confusion counts, test at
0.5, split sizes, bootstrap settings) are in reports/evaluate/metrics_detail.json, nested;
flat_figures gives the figures with their intervals as one flat mapping (the model card, the
quality benchmark). The key names are defined here only: evaluate writes them, the model card,
benchmarks and tests read them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from pneumonia.contracts.files import read_json_object, write_json
from pneumonia.errors import PipelineError

# The headline: these metrics on these splits, at the threshold chosen on val.
HEADLINE_SPLITS = ("test", "val")
HEADLINE_METRICS = ("roc_auc", "sensitivity", "specificity", "accuracy")
THRESHOLD = "threshold"
# Suffixes of the confidence interval's bounds.
LOW, HIGH = "low", "high"

# The detail report's sections (evaluation/report.py writes them).
AT_THRESHOLD = "at_threshold"  # measured at the threshold chosen on val
AT_0_5 = "at_0_5"  # test at 0.5, for comparison
VALUE, CI_LOW, CI_HIGH = "value", "ci_low", "ci_high"
# The threshold section: the rule that chose it (and VALUE).
RULE = "rule"
# The detail report's figures that are confusion counts and bootstrap settings.
CONFUSION = "confusion"
BOOTSTRAP = "bootstrap"


class MetricsReportError(PipelineError, ValueError):
    """metrics.json is missing or is not the headline this code writes."""


def figure_key(split: str, metric: str, bound: str | None = None) -> str:
    """`test_roc_auc`, or `test_roc_auc_low` / `test_roc_auc_high` for an interval bound."""
    if split not in HEADLINE_SPLITS or metric not in HEADLINE_METRICS:
        raise ValueError(f"not a headline figure: {split} {metric}")
    if bound not in (None, LOW, HIGH):
        raise ValueError(f"bound must be None, {LOW!r} or {HIGH!r}, got {bound!r}")
    return f"{split}_{metric}" + (f"_{bound}" if bound else "")


FLAT_FIGURE_KEYS = (
    THRESHOLD,
    *(
        figure_key(split, metric, bound)
        for split in HEADLINE_SPLITS
        for metric in HEADLINE_METRICS
        for bound in (None, LOW, HIGH)
    ),
)
# metrics.json: the test figures under the metrics' own names (the file is the test result),
# the threshold, and val's ROC AUC.
VAL_ROC_AUC = "val_roc_auc"
HEADLINE_KEYS = (*HEADLINE_METRICS, THRESHOLD, VAL_ROC_AUC)


def flat_figures(detail: dict[str, Any]) -> dict[str, float]:
    """The threshold and every headline metric on test and val with its interval bounds, flat
    (`test_roc_auc`, `test_roc_auc_low`, ...), from the detail report (evaluation.report)."""
    figures = {THRESHOLD: float(chosen_threshold(detail))}
    for split in HEADLINE_SPLITS:
        for metric in HEADLINE_METRICS:
            figure = measured(detail, split, metric)
            figures[figure_key(split, metric)] = float(figure.value)
            figures[figure_key(split, metric, LOW)] = float(figure.low)
            figures[figure_key(split, metric, HIGH)] = float(figure.high)
    return figures


def headline_metrics(detail: dict[str, Any]) -> dict[str, float]:
    """metrics.json's six figures, from the detail report (evaluation.report)."""
    return {
        **{metric: float(measured(detail, "test", metric).value) for metric in HEADLINE_METRICS},
        THRESHOLD: float(chosen_threshold(detail)),
        VAL_ROC_AUC: float(measured(detail, "val", "roc_auc").value),
    }


def write_headline(path: Path, headline: dict[str, float]) -> None:
    """metrics.json: the flat figures of headline_metrics. It carries no schema_version: DVC
    shows every key of it as a metric; its key set (HEADLINE_KEYS) is its version, and
    read_headline refuses a file that lacks one."""
    write_json(path, headline)


def read_headline(path: Path) -> dict[str, float]:
    """metrics.json, checked: every headline key, each a number."""
    data = read_json_object(
        path,
        MetricsReportError,
        missing="the evaluate stage writes it (dvc repro)",
        fix="re-run the evaluate stage",
    )
    missing = [key for key in HEADLINE_KEYS if key not in data]
    if missing:
        raise MetricsReportError(
            f"{path}: lacks {', '.join(missing)} (written by an older version?); re-run the "
            "evaluate stage (dvc repro -f -s evaluate)"
        )
    headline = {}
    for key in HEADLINE_KEYS:
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise MetricsReportError(f"{path}: {key} is {value!r}, not a number")
        headline[key] = float(value)
    return headline


def read_detail(path: Path) -> dict[str, Any]:
    """reports/evaluate/metrics_detail.json, every section evaluate measured."""
    return read_json_object(
        path,
        MetricsReportError,
        missing="the evaluate stage writes it (dvc repro)",
        fix="re-run the evaluate stage",
    )


class Figure(BaseModel):
    """A measured figure with its confidence interval (NaN where the bootstrap left a bound
    undefined)."""

    model_config = ConfigDict(frozen=True)

    value: float
    low: float
    high: float


def measured(detail: dict[str, Any], split: str, metric: str, at: str = AT_THRESHOLD) -> Figure:
    """One figure of the detail report: `metric` on `split`, at the chosen threshold (or AT_0_5)."""
    figure = detail[split][at][metric]
    return Figure(value=figure[VALUE], low=figure[CI_LOW], high=figure[CI_HIGH])


def flat_figure(figures: dict[str, float], split: str, metric: str) -> Figure:
    """One figure of flat_figures, with its interval."""
    return Figure(
        value=figures[figure_key(split, metric)],
        low=figures[figure_key(split, metric, LOW)],
        high=figures[figure_key(split, metric, HIGH)],
    )


def chosen_threshold(detail: dict[str, Any]) -> float:
    """The threshold chosen on val, as the detail report records it."""
    return detail[THRESHOLD][VALUE]


def threshold_rule(detail: dict[str, Any]) -> str:
    """evaluate.threshold as written (youden, sensitivity:0.9, 0.5) that chose it."""
    return str(detail[THRESHOLD][RULE])


def at_threshold(detail: dict[str, Any], split: str, at: str = AT_THRESHOLD) -> dict[str, Any]:
    """A split's section of the detail report at the chosen threshold (or AT_0_5)."""
    return detail[split][at]
