"""The site stage's files besides its metrics: the new-site table (one row per k and confidence),
the plot's table (one row per k), a PNG figure for MLflow, and the model card's "Site readiness
(site-calibrated)" section, which the stage appends to evaluate's card."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on CI or servers

import matplotlib.pyplot as plt
import pandas as pd

from pneumonia.site import protocol, statistics

SECTION_TITLE = "## Site readiness (site-calibrated)"
CALIBRATION_COLUMNS = (
    "k",
    "confidence",
    "guarantee",
    "draws",
    "calibrated",
    "refused",
    "positives_needed",
    "calibration_positives_mean",
    "site_sensitivity_mean",
    "site_sensitivity_sd",
    "site_specificity_mean",
    "site_specificity_sd",
    "target_held",
    "site_threshold_mean",
    "site_threshold_sd",
    "val_threshold_sensitivity_mean",
    "val_threshold_sensitivity_sd",
    "val_threshold_specificity_mean",
    "val_threshold_specificity_sd",
    "val_threshold_target_held",
    "note",
)
PLOT_FIGURES = (
    "site_sensitivity",
    "site_specificity",
    "val_threshold_sensitivity",
    "val_threshold_specificity",
)


def calibration_table(table: dict[str, Any]) -> pd.DataFrame:
    """reports/site/calibration.csv: every row of the protocol, then each skipped k with why."""
    rows = [{**row, "note": ""} for row in table["rows"]]
    rows += [
        {"k": skip["k"], "draws": 0, "note": f"skipped: {skip['reason']}"}
        for skip in table["skipped"]
    ]
    frame = pd.DataFrame(rows, columns=list(CALIBRATION_COLUMNS))
    # Counts stay integers beside a skipped k's empty cells (not 200.0).
    counts = ["k", "draws", "calibrated", "refused", "positives_needed"]
    return frame.astype(dict.fromkeys(counts, "Int64"))


def plot_table(table: dict[str, Any]) -> pd.DataFrame:
    """reports/site/by_k.csv, the DVC plot's data: per k, the means at the confidence
    protocol.plotted_rows picks (named in `confidence`)."""
    rows = [
        {
            "k": row["k"],
            "confidence": row["confidence"],
            **{name: row[f"{name}_mean"] for name in PLOT_FIGURES},
        }
        for row in protocol.plotted_rows(table)
    ]
    frame = pd.DataFrame(rows, columns=["k", "confidence", *PLOT_FIGURES])
    # A point Vega cannot place (a held-out part without one class) is left out, not drawn at 0.
    return frame.dropna().sort_values("k").reset_index(drop=True)


def calibration_figure(table: dict[str, Any], path: Path) -> Path:
    """Held-out sensitivity and specificity against k: site-calibrated (mean +- sd, one series
    per confidence) beside the val-chosen threshold on the same held-out patients."""
    figure, axes = plt.subplots(1, 2, figsize=(9, 4), sharex=True)
    rows = pd.DataFrame(table["rows"], columns=list(CALIBRATION_COLUMNS[:-1]))
    rows = rows[rows["calibrated"] > 0]
    for axis, figure_name in zip(axes, ("sensitivity", "specificity"), strict=True):
        for confidence, group in rows.groupby("confidence", sort=False):
            axis.errorbar(
                group["k"],
                group[f"site_{figure_name}_mean"].astype(float),
                yerr=group[f"site_{figure_name}_sd"].astype(float).fillna(0.0),
                marker="o",
                capsize=3,
                label=f"{protocol.LABEL}, confidence {confidence:g}",
            )
        val_rows = rows.drop_duplicates("k")
        axis.plot(
            val_rows["k"],
            val_rows[f"val_threshold_{figure_name}_mean"].astype(float),
            linestyle="--",
            marker="s",
            color="grey",
            label="val-chosen threshold",
        )
        if figure_name == "sensitivity":
            axis.axhline(protocol.TARGET, linestyle=":", color="red", label="target")
        axis.set(
            xlabel="k labeled test patients used to choose the threshold",
            ylabel=f"held-out {figure_name}",
            ylim=(0, 1.02),
            xscale="log",
        )
        axis.minorticks_off()  # the log axis' minor labels (3x10^1, ...) would crowd the k
        axis.set_xticks(list(protocol.K_VALUES), [str(k) for k in protocol.K_VALUES])
        axis.legend(loc="lower right", fontsize=7)
    figure.suptitle(
        f"Test split as a new site ({table['draws']} draws per k): {protocol.LABEL} vs val "
        "threshold",
        fontsize=9,
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def _figure(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _spread(row: dict[str, Any], name: str) -> str:
    mean, sd = row[f"{name}_mean"], row[f"{name}_sd"]
    return _figure(mean) if sd is None else f"{_figure(mean)} ± {_figure(sd)}"


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def check_lines(test: dict[str, Any], control: dict[str, Any], alarms: dict[str, Any]) -> list[str]:
    """The card's check lines: test whole, held-out val whole, and the false alarms."""

    def said(check: dict[str, Any]) -> str:
        return check.get("sentence") or f"not checked: {check['skipped']}."

    if alarms.get("skipped"):
        alarm_line = f"- False alarms: not measured: {alarms['skipped']}."
    else:
        alarm_line = (
            f"- False alarms: {alarms['false_alarms']} of {alarms['draws']} draws of about "
            f"{alarms['images_target']} held-out val images (whole patients; "
            f"{alarms['images_mean']:.0f} on average) flagged at p < {alarms['significance']:g}: "
            f"a rate of {_figure(alarms['false_alarm_rate'])}, to be at most about 5% (the "
            "draws share one control part, so no interval is given: the rate is that of this "
            "split of val)."
        )
    return [
        "### The site check",
        "",
        f"- Test, whole and unlabeled: {said(test)}",
        f"- Held-out val (the control part of val's patients, never in the reference): "
        f"{said(control)}",
        alarm_line,
        "",
    ]


def table_lines(table: dict[str, Any]) -> list[str]:
    """The new-site table in Markdown, with what its rows mean and the k skipped."""
    lines = [
        "### A threshold re-chosen on k labeled patients of the site",
        "",
        f"{table['draws']} seeded draws per k of k test patients (of {table['patients']}): the "
        "threshold chosen on their labels alone, every figure measured on the other test patients "
        f"only, beside the val-chosen threshold {_figure(table['val_threshold'], 4)} on the same "
        "patients. Mean ± sd over the draws calibrated; *target held*: the share of them whose "
        f"held-out sensitivity reached {protocol.TARGET:g}.",
        "",
        "| k | confidence | calibrated / refused | sensitivity | specificity | target held | "
        "val threshold: sensitivity | specificity |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in table["rows"]:
        lines.append(
            f"| {row['k']} | {row['confidence']:g} | {row['calibrated']} / {row['refused']} | "
            f"{_spread(row, 'site_sensitivity')} | {_spread(row, 'site_specificity')} | "
            f"{_share(row['target_held'])} | {_spread(row, 'val_threshold_sensitivity')} | "
            f"{_spread(row, 'val_threshold_specificity')} |"
        )
    if not table["rows"]:
        lines.append("| - | - | - | - | - | - | - | - |")
    lines += [
        "",
        f"Rows at confidence {' or '.join(f'{c:g}' for c in protocol.FALLBACK_CONFIDENCES)} are "
        f"there because draws of that k held too few pneumonia images for {protocol.CONFIDENCE:g} "
        f"(it needs {statistics.positives_needed(protocol.TARGET, protocol.CONFIDENCE)}, all "
        "of them caught): "
        f"they are a lower confidence on the same draws, not the {protocol.CONFIDENCE:g} "
        "guarantee.",
    ]
    if table["skipped"]:
        lines += [
            "",
            *(f"- Skipped: k = {skip['k']} ({skip['reason']})." for skip in table["skipped"]),
        ]
    return [*lines, ""]


MEANING = (
    "### What the guarantee means, and what it does not fix",
    "",
    f"- It means: with {protocol.CONFIDENCE:.0%} confidence over the draw of calibration cases, "
    f"the site's sensitivity is at least {protocol.TARGET:g}: the highest threshold whose "
    "one-sided exact (Clopper-Pearson) lower bound on sensitivity, over the calibration pneumonia "
    "images, reaches the target. The bound counts images, and one patient's images are alike, "
    "so *target held* measures how often it held on patients it never saw.",
    "- With too few pneumonia cases it refuses, naming how many the guarantee needs.",
    "- It does not fix the ranking: a site threshold only moves along the model's own ROC curve, "
    "so the specificity left at the target is what the ranking allows. A better one needs a "
    "better model (more varied training data, transfer learning), not a threshold.",
    "- It does not follow a site that changes (scanner, protocol, population): re-check and "
    "re-calibrate then (`pneumonia site check PATH`, `pneumonia site calibrate FOLDER --name "
    "NAME`, `pneumonia predict --site NAME`).",
    "",
)


def card_section(
    table: dict[str, Any],
    test: dict[str, Any],
    control: dict[str, Any],
    alarms: dict[str, Any],
) -> str:
    """The model card's site section, from the site stage's figures."""
    lines = [
        SECTION_TITLE,
        "",
        "Written by the site stage (reports/site/check.json and calibration.csv): the official "
        "test split treated as a new site, with the settings of docs/experiments.md (round 5), "
        "none chosen on test. Every figure here is site-calibrated or a site check's, beside the "
        "val-only headline above, which it leaves as it is; none of them chose anything.",
        "",
        *check_lines(test, control, alarms),
        *table_lines(table),
        *MEANING,
    ]
    return "\n".join(lines)


def final_card(evaluate_card: str, section: str) -> str:
    """reports/model_card.md: evaluate's card, then the site section."""
    return f"{evaluate_card.rstrip()}\n\n{section}"
