"""Promotion in the model registry: move the `champion` alias to the `candidate` version when the
candidate is at least as good on **val**, the split the threshold was chosen on.

Test is measured once per evaluation, to report it; choosing between models on test would turn
it into a second validation set and its figures would no longer be unbiased. So the comparison
reads only the version tags that the evaluate stage sets: `val_roc_auc` first (threshold-free,
what training selected on), then `val_sensitivity` (a missed pneumonia costs more than a false
alarm), then `val_specificity`, compared in that order (lexicographically). The candidate wins
ties: with equal val figures the newer model is promoted.

Val figures of two versions are comparable only when they were measured on the same val images;
evaluate records the val set's digest (`val_dataset_digest`), and promotion refuses when the two
digests differ, unless forced.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from pneumonia.contracts import registry_tags
from pneumonia.errors import PipelineError

COMPARED_TAGS = registry_tags.COMPARED
DATASET_TAG = registry_tags.VAL_DATASET_DIGEST


class PromotionError(PipelineError, ValueError):
    """An alias or the tags promotion compares are missing; the message says which and why."""


@dataclass(frozen=True)
class Decision:
    name: str
    source_alias: str
    target_alias: str
    candidate: str  # version
    champion: str | None  # version the target alias pointed at before, if any
    promoted: bool
    reason: str

    def summary(self) -> str:
        candidate = f"{self.name} v{self.candidate} (@{self.source_alias})"
        if self.promoted:
            head = f"promoted: {candidate} is now @{self.target_alias}"
        else:
            head = f"kept: @{self.target_alias} stays on v{self.champion}; {candidate} not promoted"
        return f"{head}. {self.reason}"


def version_by_alias(client: mlflow.MlflowClient, name: str, alias: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def val_scores(version: ModelVersion) -> tuple[float, ...]:
    """The compared val figures of a version, from the tags evaluate set on it."""
    scores = []
    for tag in COMPARED_TAGS:
        text = version.tags.get(tag)
        try:
            value = float(text) if text is not None else math.nan
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise PromotionError(
                f"{version.name} v{version.version}: tag '{tag}' is missing or not a finite "
                f"number ({text!r}); the evaluate stage sets it (dvc repro)"
            )
        scores.append(value)
    return tuple(scores)


def _describe(scores: tuple[float, ...]) -> str:
    return ", ".join(f"{tag} {value:.4f}" for tag, value in zip(COMPARED_TAGS, scores, strict=True))


def compare(candidate: tuple[float, ...], champion: tuple[float, ...]) -> tuple[bool, str]:
    """(candidate at least as good, why): the first compared figure that differs decides."""
    for tag, new, old in zip(COMPARED_TAGS, candidate, champion, strict=True):
        if new != old:
            better = new > old
            relation = "higher" if better else "lower"
            return better, f"its {tag} is {relation} ({new:.4f} vs {old:.4f})"
    return True, "its val figures equal the champion's (ties go to the candidate)"


def promote(
    name: str,
    source_alias: str = "candidate",
    target_alias: str = "champion",
    force: bool = False,
) -> Decision:
    """Compare the `source_alias` version with the `target_alias` version on val and move
    `target_alias` when the source is at least as good (always with `force`)."""
    if source_alias == target_alias:
        raise PromotionError(f"--from and --to are both '{source_alias}'")
    client = mlflow.MlflowClient()
    try:
        client.get_registered_model(name)
    except MlflowException as error:
        raise PromotionError(
            f"registered model '{name}' not found in {mlflow.get_tracking_uri()}; the evaluate "
            "stage registers it (dvc repro), or set MLFLOW_TRACKING_URI"
        ) from error
    candidate = version_by_alias(client, name, source_alias)
    if candidate is None:
        raise PromotionError(
            f"{name} has no version with alias '{source_alias}'; the evaluate stage sets it"
        )
    champion = version_by_alias(client, name, target_alias)
    candidate_scores = val_scores(candidate)
    if not candidate.tags.get(DATASET_TAG):
        raise PromotionError(
            f"{name} v{candidate.version}: tag '{DATASET_TAG}' is missing, so nothing says which "
            "val images its figures come from; the evaluate stage sets it (dvc repro)"
        )

    def decision(promoted: bool, reason: str) -> Decision:
        return Decision(
            name,
            source_alias,
            target_alias,
            str(candidate.version),
            str(champion.version) if champion is not None else None,
            promoted,
            reason,
        )

    if champion is not None and champion.version == candidate.version:
        return decision(False, f"v{candidate.version} already holds both aliases; nothing to do")

    if champion is None:
        promoted, reason = True, f"there was no @{target_alias}; {_describe(candidate_scores)}"
    else:
        champion_scores = val_scores(champion)
        ours, theirs = candidate.tags.get(DATASET_TAG), champion.tags.get(DATASET_TAG)
        if ours != theirs and not force:
            measured = f"{DATASET_TAG} {ours} vs {theirs or 'missing'}"
            return decision(
                False,
                f"the two versions were not evaluated on the same val set ({measured}), so "
                "their val figures are not comparable; --force promotes anyway",
            )
        promoted, reason = compare(candidate_scores, champion_scores)
        reason = (
            f"Candidate v{candidate.version} vs {target_alias} v{champion.version} on val: {reason}"
        )
        if not promoted and force:
            promoted, reason = True, f"{reason}; promoted anyway (--force)"
    if promoted:
        client.set_registered_model_alias(name, target_alias, candidate.version)
        client.set_model_version_tag(
            name,
            candidate.version,
            f"{target_alias}_since",
            datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        if champion is not None:
            client.set_model_version_tag(
                name, candidate.version, f"replaced_{target_alias}", champion.version
            )
    return decision(promoted, reason)
