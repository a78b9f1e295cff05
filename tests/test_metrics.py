"""Metric functions against hand-computed cases, the threshold rules, and the patient bootstrap."""

import numpy as np
import pytest

from pneumonia.config import ThresholdRule
from pneumonia.metrics import (
    binary_metrics,
    bootstrap_intervals,
    bootstrap_weights,
    calibration_bins,
    choose_threshold,
    expected_calibration_error,
    resampled_metrics,
)

# scikit-learn's documentation example: ROC AUC 0.75, average precision 0.8333.
LABELS = np.array([0, 0, 1, 1])
SCORES = np.array([0.1, 0.4, 0.35, 0.8])


def test_metrics_at_a_threshold_by_hand():
    metrics = binary_metrics(LABELS, SCORES, threshold=0.5)
    # Called positive: only 0.8 (a pneumonia). TP 1, FP 0, TN 2, FN 1.
    assert (metrics["true_positive"], metrics["false_positive"]) == (1, 0)
    assert (metrics["true_negative"], metrics["false_negative"]) == (2, 1)
    assert metrics["accuracy"] == pytest.approx(0.75)
    assert metrics["sensitivity"] == pytest.approx(0.5)
    assert metrics["specificity"] == pytest.approx(1.0)
    assert metrics["precision"] == pytest.approx(1.0)
    assert metrics["f1"] == pytest.approx(2 / 3)
    assert metrics["roc_auc"] == pytest.approx(0.75)
    assert metrics["pr_auc"] == pytest.approx(0.8333333)
    assert metrics["brier"] == pytest.approx((0.01 + 0.16 + 0.4225 + 0.04) / 4)


def test_threshold_is_inclusive():
    metrics = binary_metrics(LABELS, SCORES, threshold=0.35)
    assert metrics["true_positive"] == 2 and metrics["false_positive"] == 1


def test_expected_calibration_error_by_hand():
    # Ten bins: one image each, gaps 0.1, 0.4, 0.65, 0.2.
    assert expected_calibration_error(LABELS, SCORES, bins=10) == pytest.approx(1.35 / 4)
    # Two bins: [0.1, 0.4, 0.35] predict 0.2833 for a share of 1/3; [0.8] predicts 0.8 for 1.
    assert expected_calibration_error(LABELS, SCORES, bins=2) == pytest.approx(
        (3 * abs(1 / 3 - 0.85 / 3) + 0.2) / 4
    )
    table = calibration_bins(LABELS, np.array([0.0, 0.5, 0.999, 1.0]), bins=2)
    assert table["count"].tolist() == [1, 3]  # a score of exactly 1 lands in the last bin


def test_undefined_rates_are_nan_not_zero():
    metrics = binary_metrics(np.array([1, 1]), np.array([0.2, 0.3]), threshold=0.5)
    assert np.isnan(metrics["specificity"]) and np.isnan(metrics["roc_auc"])
    assert np.isnan(metrics["precision"])  # nothing called positive
    assert metrics["sensitivity"] == 0


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        # ROC points from the top: 0.8 -> (fpr 0, tpr .5), 0.4 -> (.5, .5), 0.35 -> (.5, 1).
        # Youden J is 0.5 at both 0.8 and 0.35; ties go to the higher threshold.
        (ThresholdRule(kind="youden"), 0.8),
        (ThresholdRule(kind="sensitivity", value=1.0), 0.35),
        (ThresholdRule(kind="sensitivity", value=0.5), 0.8),
        (ThresholdRule(kind="sensitivity", value=0.6), 0.35),
        (ThresholdRule(kind="fixed", value=0.3), 0.3),
    ],
)
def test_threshold_rules_by_hand(rule, expected):
    assert choose_threshold(LABELS, SCORES, rule) == pytest.approx(expected)


def test_sensitivity_rule_reaches_its_target_with_the_best_specificity():
    rng = np.random.default_rng(3)
    labels = (rng.random(300) < 0.7).astype(int)
    scores = np.clip(0.35 * labels + 0.65 * rng.random(300), 0, 1)
    threshold = choose_threshold(labels, scores, ThresholdRule(kind="sensitivity", value=0.95))
    reached = binary_metrics(labels, scores, threshold)
    assert reached["sensitivity"] >= 0.95
    higher = np.min(scores[scores > threshold])
    assert binary_metrics(labels, scores, higher)["sensitivity"] < 0.95


def test_threshold_selection_needs_both_classes():
    with pytest.raises(ValueError, match="only PNEUMONIA"):
        choose_threshold(
            np.ones(3, dtype=int), np.array([0.1, 0.2, 0.3]), ThresholdRule(kind="youden")
        )


@pytest.mark.parametrize(
    ("labels", "scores", "message"),
    [
        (np.array([0, 2]), np.array([0.1, 0.2]), "labels must be 0"),
        (np.array([0, 1]), np.array([0.1, np.nan]), "probabilities"),
        (np.array([0, 1]), np.array([0.1, 1.2]), "probabilities"),
        (np.array([0, 1, 1]), np.array([0.1, 0.2]), "must be 1-D and match"),
    ],
)
def test_bad_inputs_are_rejected(labels, scores, message):
    with pytest.raises(ValueError, match=message):
        choose_threshold(labels, scores, ThresholdRule(kind="youden"))


def test_bootstrap_draws_whole_patients():
    groups = np.array(["a", "a", "b", "c", "c", "c"])
    weights = bootstrap_weights(groups, resamples=200, seed=0)
    assert weights.shape == (200, 6)
    # Every image of a patient is repeated exactly as often as the patient was drawn.
    assert (weights[:, 0] == weights[:, 1]).all()
    assert (weights[:, 3] == weights[:, 4]).all() and (weights[:, 4] == weights[:, 5]).all()
    # Three patients drawn per resample.
    assert (weights[:, [0, 2, 3]].sum(axis=1) == 3).all()
    np.testing.assert_array_equal(weights, bootstrap_weights(groups, 200, seed=0))


def test_patient_bootstrap_interval_by_hand():
    # Patient A: three images, all right. Patient B: one image, wrong. Resampling two patients
    # gives accuracy 1 (AA, p=1/4), 3/4 (AB or BA, p=1/2) or 0 (BB, p=1/4); an image-level
    # bootstrap would also give 1/2, 1/4, ...
    labels = np.array([1, 1, 1, 0])
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    patients = np.array(["A", "A", "A", "B"])
    weights = bootstrap_weights(patients, resamples=4000, seed=1)
    accuracy = resampled_metrics(labels, scores, 0.5, weights)["accuracy"]
    values, counts = np.unique(np.round(accuracy, 6), return_counts=True)
    assert values.tolist() == [0.0, 0.75, 1.0]
    np.testing.assert_allclose(counts / counts.sum(), [0.25, 0.5, 0.25], atol=0.03)
    intervals, undefined = bootstrap_intervals(labels, scores, patients, 0.5, 4000, seed=1)
    assert intervals["accuracy"].value == pytest.approx(0.75)
    assert (intervals["accuracy"].low, intervals["accuracy"].high) == (0.0, 1.0)
    # Resamples without B have no normal image: specificity is undefined there, and counted.
    assert undefined["specificity"] == pytest.approx(1000, abs=120)


def test_resampled_metrics_match_scikit_learn_with_weights():
    """The vectorised bootstrap computes the same numbers as scikit-learn, ties included."""
    rng = np.random.default_rng(0)
    labels = (rng.random(300) < 0.6).astype(int)
    scores = np.clip(0.3 * labels + 0.7 * rng.random(300), 0, 1).round(2)  # many ties
    weights = bootstrap_weights(rng.integers(0, 150, 300).astype(str), resamples=25, seed=2)
    vectorised = resampled_metrics(labels, scores, 0.55, weights, bins=7)
    for row in range(len(weights)):
        reference = binary_metrics(labels, scores, 0.55, bins=7, weights=weights[row])
        for name, value in reference.items():
            assert vectorised[name][row] == pytest.approx(value, nan_ok=True), name


def test_intervals_contain_the_estimate_and_narrow_with_more_patients():
    rng = np.random.default_rng(5)

    def width(patients: int) -> float:
        labels = (rng.random(patients * 2) < 0.6).astype(int)
        scores = np.clip(0.3 * labels + 0.7 * rng.random(len(labels)), 0, 1)
        groups = np.repeat(np.arange(patients), 2)
        intervals, _ = bootstrap_intervals(labels, scores, groups, 0.5, 500, seed=0)
        auc = intervals["roc_auc"]
        assert auc.low <= auc.value <= auc.high
        return auc.high - auc.low

    assert width(1000) < width(50)
