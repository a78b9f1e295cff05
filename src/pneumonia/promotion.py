"""Promotion in the model registry: move the `champion` alias to the `candidate` version when the
candidate is at least as good on **val**, the split the threshold was chosen on.

Test is measured once per evaluation, to report it; choosing between models on test would turn
it into a second validation set and its figures would no longer be unbiased. So the comparison
reads only the version tags that the evaluate stage sets: `val_roc_auc` first (threshold-free,
what training selected on), then `val_sensitivity` (a missed pneumonia costs more than a false
alarm), then `val_specificity`, compared in that order (lexicographically). The candidate wins
ties: with equal val figures the newer model is promoted.

A tag is trusted only when it is a plain decimal in [0, 1] and equals the metric its evaluate run
(the `evaluate_run_id` tag) logged, and only when that run was measured on the val set the
`val_dataset_digest` tag names. Val figures of two versions are comparable only when they were
measured on the same val images: promotion refuses when the two digests differ, unless forced.

Two promotes of one registered model run one after the other, each holding the model's
promotion lock (pneumonia.promotion_lock) while it reads both aliases, decides and moves the
target alias, then re-reads the alias to confirm. So a promote that waited compares with the
champion the other one left.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime, timezone

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from pneumonia.contracts import registry_tags
from pneumonia.promotion_lock import (
    LOCK_WAIT_SECONDS,
    PromotionError,
    call_registry,
    promotion_lock,
    registry_failure,
    store_label,
)

__all__ = ["Decision", "PromotionError", "compare", "promote", "promotion_lock"]

COMPARED_TAGS = registry_tags.COMPARED
DATASET_TAG = registry_tags.VAL_DATASET_DIGEST


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
        elif self.champion is None:
            head = f"kept: {candidate} not promoted"
        else:
            head = f"kept: @{self.target_alias} stays on v{self.champion}; {candidate} not promoted"
        return f"{head}. {self.reason}"


def version_by_alias(client: mlflow.MlflowClient, name: str, alias: str) -> ModelVersion | None:
    try:
        return call_registry(client.get_model_version_by_alias, name, alias)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise registry_failure(error, f"reading alias '{alias}' of {name}") from error


def _label(version: ModelVersion, alias: str | None = None) -> str:
    return f"{version.name} v{version.version}" + (f" (@{alias})" if alias else "")


def val_scores(version: ModelVersion, alias: str | None = None) -> tuple[float, ...]:
    """The compared val figures of a version, from the tags evaluate set on it: each a plain
    decimal in [0, 1], else a PromotionError naming the version, the tag and its value."""
    scores = []
    recorded = registry_tags.OperatingPointTags.from_tags(version.tags)
    for tag in COMPARED_TAGS:
        text = version.tags.get(tag)
        value = recorded.figure(tag)
        if value is None:
            problem = "is missing" if text is None else f"is {text!r}, not a decimal in [0, 1]"
            raise PromotionError(
                f"{_label(version, alias)}: tag '{tag}' {problem}; the evaluate stage sets it "
                "(dvc repro)"
            )
        scores.append(value)
    return tuple(scores)


def check_measured(
    client: mlflow.MlflowClient, version: ModelVersion, scores: tuple[float, ...], alias: str
) -> None:
    """The tags must be what their evaluate run measured: the run named by `evaluate_run_id`
    logged each compared figure as a metric with the same value, and took the val set the
    `val_dataset_digest` tag names as an input. A tag edited by hand (or by anything but
    evaluate) is refused."""
    label = _label(version, alias)
    run_id = version.tags.get(registry_tags.EVALUATE_RUN_ID)
    if not run_id:
        raise PromotionError(
            f"{label}: tag '{registry_tags.EVALUATE_RUN_ID}' is missing, so nothing ties its val "
            "figures to a measurement; the evaluate stage sets it (dvc repro)"
        )
    try:
        run = call_registry(client.get_run, run_id)
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise registry_failure(error, f"reading evaluate run {run_id}") from error
        raise PromotionError(
            f"{label}: its evaluate run {run_id} ({registry_tags.EVALUATE_RUN_ID}) is not in "
            f"{store_label()}, so its val figures cannot be checked; re-run the evaluate stage"
        ) from error
    logged = run.data.metrics
    for tag, value in zip(COMPARED_TAGS, scores, strict=True):
        metric = registry_tags.LOGGED_METRIC[tag]
        measured = logged.get(metric)
        if measured is None or not math.isclose(value, measured, rel_tol=1e-9, abs_tol=1e-12):
            found = "logged no such metric" if measured is None else f"logged {measured!r}"
            raise PromotionError(
                f"{label}: tag '{tag}' is {version.tags.get(tag)} but its evaluate run {run_id} "
                f"{found} as '{metric}'; the tag was not set by that evaluation: re-run the "
                "evaluate stage (dvc repro), or fix the tag"
            )
    digest = version.tags.get(DATASET_TAG)
    inputs = run.inputs.dataset_inputs if run.inputs is not None else []
    digests = {entry.dataset.digest for entry in inputs}
    if digest and digest not in digests:
        raise PromotionError(
            f"{label}: tag '{DATASET_TAG}' is {digest} but its evaluate run {run_id} took no "
            f"val set with that digest (it took {', '.join(sorted(digests)) or 'none'}); re-run "
            "the evaluate stage (dvc repro), or fix the tag"
        )


def trusted_scores(
    client: mlflow.MlflowClient, version: ModelVersion, alias: str
) -> tuple[float, ...]:
    scores = val_scores(version, alias)
    check_measured(client, version, scores, alias)
    return scores


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


def _check_alias(alias: str, option: str) -> str:
    try:
        return registry_tags.check_alias(alias)
    except ValueError as error:
        raise PromotionError(f"{option} alias: {error}") from None


def promote(
    name: str,
    source_alias: str,
    target_alias: str = "champion",
    force: bool = False,
    wait_seconds: float = LOCK_WAIT_SECONDS,
    allow_experiment: bool = False,
) -> Decision:
    """Compare the `source_alias` version (the alias evaluate sets: params.yaml's evaluate.alias,
    which `pneumonia promote` passes unless --from names another) with the `target_alias`
    version on val and move `target_alias` when the source is at least as good (always with
    `force`, which also replaces a champion whose figures cannot be compared). A version a DVC
    experiment registered is refused unless `allow_experiment` (`force` does not imply it)."""
    _check_alias(source_alias, "--from")
    _check_alias(target_alias, "--to")
    if source_alias == target_alias:
        raise PromotionError(f"--from and --to are both '{source_alias}'")
    client = mlflow.MlflowClient()
    try:
        call_registry(client.get_registered_model, name)
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise registry_failure(error, f"reading registered model '{name}'") from error
        raise PromotionError(
            f"registered model '{name}' not found in {store_label()}; the evaluate stage "
            "registers it (dvc repro), or set MLFLOW_TRACKING_URI"
        ) from error
    before = version_by_alias(client, name, target_alias)
    with promotion_lock(client, name, wait_seconds):
        decision = _decide_and_move(
            client, name, source_alias, target_alias, force, allow_experiment
        )
    seen = before.version if before is not None else None
    if decision.champion != (str(seen) if seen is not None else None):
        moved = (
            f"@{target_alias} moved from {f'v{seen}' if seen else 'nowhere'} to "
            f"v{decision.champion} while this promote waited for another one; compared with v"
            f"{decision.champion}. "
        )
        return replace(decision, reason=moved + decision.reason)
    return decision


def _decide_and_move(
    client: mlflow.MlflowClient,
    name: str,
    source_alias: str,
    target_alias: str,
    force: bool,
    allow_experiment: bool,
) -> Decision:
    """Under the promotion lock: read both aliases, decide, move the target alias, confirm."""
    candidate = version_by_alias(client, name, source_alias)
    if candidate is None:
        raise PromotionError(
            f"{name} has no version with alias '{source_alias}'; the evaluate stage sets it"
        )
    experiment = candidate.tags.get(registry_tags.DVC_EXPERIMENT)
    if experiment and not allow_experiment:
        raise PromotionError(
            f"{name} v{candidate.version} (@{source_alias}) was registered by DVC experiment "
            f"'{experiment}', not by the workspace's pipeline; --allow-experiment promotes it, "
            f"or make it the workspace's: dvc exp apply {experiment} && dvc repro -f -s evaluate"
        )
    champion = version_by_alias(client, name, target_alias)
    candidate_scores = trusted_scores(client, candidate, source_alias)
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
        try:
            champion_scores = trusted_scores(client, champion, target_alias)
        except PromotionError as error:
            if not force:
                raise PromotionError(
                    f"{error}. The candidate cannot be compared with this {target_alias}; "
                    f"--force replaces it without comparing"
                ) from None
            champion_scores = None
            promoted = True
            reason = (
                f"@{target_alias} v{champion.version} has no figures to compare ({error}); "
                "promoted without comparing (--force)"
            )
        if champion_scores is not None:
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
                f"Candidate v{candidate.version} vs {target_alias} v{champion.version} on val: "
                f"{reason}"
            )
            if not promoted and force:
                promoted, reason = True, f"{reason}; promoted anyway (--force)"
    if promoted:
        _move(client, name, target_alias, candidate, champion)
    return decision(promoted, reason)


def _move(
    client: mlflow.MlflowClient,
    name: str,
    target_alias: str,
    candidate: ModelVersion,
    champion: ModelVersion | None,
) -> None:
    """Point the alias at the candidate, then re-read it: an alias moved by something that
    does not take the lock (evaluate, the MLflow UI) in between is reported, not hidden."""
    try:
        call_registry(client.set_registered_model_alias, name, target_alias, candidate.version)
        call_registry(
            client.set_model_version_tag,
            name,
            candidate.version,
            f"{target_alias}_since",
            datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        if champion is not None:
            call_registry(
                client.set_model_version_tag,
                name,
                candidate.version,
                f"replaced_{target_alias}",
                champion.version,
            )
    except MlflowException as error:
        raise registry_failure(error, f"moving @{target_alias} of {name}") from error
    now = version_by_alias(client, name, target_alias)
    if now is None or str(now.version) != str(candidate.version):
        raise PromotionError(
            f"lost: @{target_alias} of {name} was moved to "
            f"{f'v{now.version}' if now is not None else 'no version'} by something that does not "
            f"take the promotion lock while v{candidate.version} was being promoted; check the "
            "registry and promote again"
        )
