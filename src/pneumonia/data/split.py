"""Split stage logic: patient-level, class-stratified train/val split; the official test untouched.

Images are grouped by patient and by content (byte-identical files under different names), so
no child and no image can sit on both sides of a split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pneumonia.config import SplitConfig
from pneumonia.contracts.labels import CLASSES
from pneumonia.errors import PipelineError


class LeakageError(PipelineError, ValueError):
    """A patient or an identical image appears in more than one split."""


class SplitError(PipelineError, ValueError):
    """The data cannot be split as asked (too few patients, empty manifest...)."""


@dataclass
class SplitResult:
    splits: dict[str, pd.DataFrame]  # train, val, test
    report: dict[str, Any]


def group_ids(frame: pd.DataFrame) -> pd.Series:
    """Connected components of images linked by a shared patient id or a shared sha256."""
    parent = list(range(len(frame)))

    def find(node: int) -> int:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for column in ("patient_id", "sha256"):
        first_seen: dict[str, int] = {}
        for position, value in enumerate(frame[column]):
            if value in first_seen:
                parent[find(position)] = find(first_seen[value])
            else:
                first_seen[value] = position
    roots = [find(position) for position in range(len(frame))]
    # Name each group after its smallest patient id so the ids are stable across runs.
    names: dict[int, str] = {}
    for root, patient in sorted(zip(roots, frame["patient_id"], strict=True), key=lambda x: x[1]):
        names.setdefault(root, patient)
    return pd.Series([names[root] for root in roots], index=frame.index, name="group")


def choose_val_groups(groups: pd.DataFrame, val_fraction: float, seed: int) -> set[str]:
    """Per class, shuffled groups go to val while that brings val closer to its share of images.

    `groups` has one row per group: group, label (majority class), images.
    """
    rng = np.random.default_rng(seed)
    chosen: set[str] = set()
    for label in CLASSES:
        of_class = groups[groups["label"] == label].sort_values("group")
        if len(of_class) < 2:
            raise SplitError(
                f"split: class {label} has {len(of_class)} patient group(s) in train+val; at "
                "least 2 are needed to put patients in both train and val"
            )
        target = val_fraction * of_class["images"].sum()
        order = rng.permutation(len(of_class))
        taken = 0
        for row in of_class.iloc[order].itertuples():
            if abs(taken + row.images - target) < abs(taken - target):
                chosen.add(row.group)
                taken += row.images
        if taken == 0 or taken == of_class["images"].sum():
            raise SplitError(
                f"split: split.val_fraction={val_fraction} leaves class {label} with no patients "
                f"in {'val' if taken == 0 else 'train'}; change split.val_fraction"
            )
    return chosen


def majority_label(labels: pd.Series) -> str:
    counts = labels.value_counts()
    # Ties go to the later class name (PNEUMONIA): deterministic, and rare.
    return max(counts.index, key=lambda label: (counts[label], label))


def check_no_leakage(splits: dict[str, pd.DataFrame]) -> None:
    """Raise LeakageError if any patient id or sha256 appears in two splits."""
    for column in ("patient_id", "sha256"):
        owner: dict[str, str] = {}
        clashes: list[str] = []
        for name, frame in splits.items():
            for value in frame[column].unique():
                if value in owner and owner[value] != name:
                    clashes.append(f"{value} ({owner[value]} and {name})")
                owner.setdefault(value, name)
        if clashes:
            raise LeakageError(
                f"split: {len(clashes)} {column} value(s) appear in more than one split, e.g. "
                f"{'; '.join(clashes[:5])}"
            )


def split_manifest(manifest: pd.DataFrame, config: SplitConfig) -> SplitResult:
    """Official test stays test; official train+val are re-split by patient group."""
    if manifest.empty:
        raise SplitError("split: the manifest holds no images; re-run the download stage")
    test = manifest[manifest["source_split"] == "test"].copy()
    pool = manifest[manifest["source_split"] != "test"].copy()
    if test.empty or pool.empty:
        raise SplitError(
            f"split: need official test and train images, found {len(test)} test and "
            f"{len(pool)} train/val"
        )
    # Test is the yardstick and is never changed; a train image identical to a test image goes.
    in_test = pool["sha256"].isin(set(test["sha256"]))
    dropped = pool[in_test]
    pool = pool[~in_test].copy()

    pool["group"] = group_ids(pool)
    test["group"] = group_ids(test)
    groups = pool.groupby("group").agg(label=("label", majority_label), images=("path", "size"))
    mixed = pool.groupby("group")["label"].nunique()
    val_groups = choose_val_groups(groups.reset_index(), config.val_fraction, config.seed)

    splits = {
        "train": pool[~pool["group"].isin(val_groups)],
        "val": pool[pool["group"].isin(val_groups)],
        "test": test,
    }
    splits = {name: frame.sort_values("path", ignore_index=True) for name, frame in splits.items()}
    check_no_leakage(splits)
    report = {
        "counts": {
            name: {label: int((frame["label"] == label).sum()) for label in CLASSES}
            for name, frame in splits.items()
        },
        "patients": {name: int(frame["patient_id"].nunique()) for name, frame in splits.items()},
        "groups": {name: int(frame["group"].nunique()) for name, frame in splits.items()},
        "dropped_identical_to_test": sorted(dropped["path"]),
        "mixed_label_groups": int((mixed > 1).sum()),
    }
    return SplitResult(splits, report)


def summarize(report: dict[str, Any]) -> dict[str, float]:
    summary: dict[str, float] = {
        "dropped_identical_to_test": len(report["dropped_identical_to_test"]),
        "mixed_label_groups": report["mixed_label_groups"],
    }
    for name, labels in report["counts"].items():
        summary[f"images_{name}"] = sum(labels.values())
        summary[f"patients_{name}"] = report["patients"][name]
        for label, count in labels.items():
            summary[f"images_{name}_{label}"] = count
    for name in ("train", "val", "test"):
        total = summary[f"images_{name}"]
        summary[f"pneumonia_share_{name}"] = (
            round(summary[f"images_{name}_PNEUMONIA"] / total, 4) if total else 0.0
        )
    return summary
