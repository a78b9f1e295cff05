"""The new-site protocol (site.protocol) on synthetic arrays: patient-disjoint draws, labels read
from the calibration part only and figures from the held-out part only, refusals counted, the
fallback confidences apart, seeded reproducibility, k too large skipped, and the check's
false-alarm rate on control draws (about the nominal 5% from the same distribution, high for a
shifted one). The site stage's own files (deployment.outputs) from the same figures."""

from __future__ import annotations

import numpy as np
import pytest

from pneumonia.contracts.labels import is_positive
from pneumonia.deployment import outputs
from pneumonia.site import protocol, statistics
from pneumonia.site.check import check_site
from pneumonia.site.reference import build_site_reference, group_numbers

WIDTH = 16


def labeled_split(patients: int = 300, seed: int = 0, pneumonia_share: float = 0.5):
    """Patients of one or two images, each patient one class; pneumonia scores higher."""
    rng = np.random.default_rng(seed)
    per_patient = rng.integers(1, 3, patients)
    patient_ids = np.repeat([f"patient-{number}" for number in range(patients)], per_patient)
    patient_labels = rng.random(patients) < pneumonia_share
    labels = np.repeat(patient_labels, per_patient)
    scores = np.where(labels, rng.beta(5, 1, len(labels)), rng.beta(1.5, 2, len(labels)))
    return labels, scores, patient_ids


def synthetic_reference(images: int = 400, seed: int = 1):
    """A site reference of `images` val images of images/2 patients, features N(0, I)."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(images, WIDTH)).astype(np.float32)
    scores = rng.random(images)
    patients = np.repeat(np.arange(images // 2), 2)
    reference = build_site_reference(
        features,
        scores,
        patients,
        model_sha256="0" * 64,
        feature_layers=["pool"],
        threshold=0.5,
        seed=42,
    )
    return reference


def test_each_draw_takes_k_whole_patients():
    _, _, patients = labeled_split()
    groups = group_numbers(patients)
    for mask in protocol.patient_draws(patients, 40, draws=20, seed=3):
        drawn = np.unique(groups[mask])
        held_out = np.unique(groups[~mask])
        assert len(drawn) == 40
        # Patient-disjoint: no patient on both sides, every patient on one.
        assert not set(drawn) & set(held_out)
        assert len(drawn) + len(held_out) == groups.max() + 1
    with pytest.raises(ValueError, match="k = 500"):
        next(protocol.patient_draws(patients, 500, draws=1, seed=0))


def brute_force_threshold(labels: np.ndarray, scores: np.ndarray, confidence: float):
    """The rule as written: walk down the positives' scores, the first whose bound holds."""
    positive_scores = np.sort(scores[labels])[::-1]
    for threshold in dict.fromkeys(positive_scores.tolist()):
        caught = int((positive_scores >= threshold).sum())
        bound = statistics.sensitivity_lower_bound(caught, len(positive_scores), confidence)
        if bound >= protocol.TARGET:
            return threshold
    return None


def test_the_bisected_threshold_is_the_one_the_rule_walks_to():
    rng = np.random.default_rng(2)
    for _ in range(40):
        count = int(rng.integers(5, 160))
        labels = rng.random(count) < rng.uniform(0.2, 0.9)
        scores = np.round(rng.random(count), int(rng.integers(1, 4)))  # ties included
        for confidence in (protocol.CONFIDENCE, *protocol.FALLBACK_CONFIDENCES):
            expected = brute_force_threshold(labels, scores, confidence)
            if labels.sum() < statistics.positives_needed(protocol.TARGET, confidence):
                expected = None
            assert protocol.site_threshold(labels, scores, confidence) == expected


def test_thresholds_come_from_the_calibration_part_and_figures_from_the_rest():
    labels, scores, patients = labeled_split(seed=4)

    def draws_of(labels: np.ndarray) -> protocol.DrawFigures:
        return protocol.calibrate_draws(labels, scores, patients, 0.7, 150, draws=10, seed=5)[0]

    figures = draws_of(labels)
    assert figures.confidence == protocol.CONFIDENCE and figures.calibrated.all()
    masks = list(protocol.patient_draws(patients, 150, draws=10, seed=5))
    for number, mask in enumerate(masks):
        threshold = protocol.site_threshold(labels[mask], scores[mask], protocol.CONFIDENCE)
        assert figures.thresholds[number] == threshold
        expected = protocol.rates(labels[~mask], is_positive(scores[~mask], threshold))
        assert (figures.sensitivity[number], figures.specificity[number]) == expected
        val = protocol.rates(labels[~mask], is_positive(scores[~mask], 0.7))
        assert (figures.val_sensitivity[number], figures.val_specificity[number]) == val
    # The held-out labels change, the threshold does not; the drawn labels change, it does.
    flipped = labels.copy()
    flipped[~masks[0]] = ~flipped[~masks[0]]
    again = draws_of(flipped)
    assert again.thresholds[0] == figures.thresholds[0]
    assert again.sensitivity[0] != figures.sensitivity[0]
    moved = labels.copy()
    moved[masks[0] & labels] = False  # the drawn pneumonia images relabelled normal
    assert np.isnan(draws_of(moved).thresholds[0])


def test_refusals_are_counted_and_lower_confidences_reported_apart():
    # Few pneumonia patients: 25 patients hold too few pneumonia images for 0.95 (59 needed).
    labels, scores, patients = labeled_split(patients=300, pneumonia_share=0.3, seed=6)
    table = protocol.new_site_table(labels, scores, patients, 0.7, k_values=(25, 200), draws=8)
    rows = {(row["k"], row["confidence"]): row for row in table["rows"]}
    confidences = (protocol.CONFIDENCE, *protocol.FALLBACK_CONFIDENCES)
    assert {(25, confidence) for confidence in confidences} <= set(rows)
    assert (200, protocol.CONFIDENCE) in rows
    small = rows[(25, protocol.CONFIDENCE)]
    assert small["refused"] == small["draws"] == 8 and small["calibrated"] == 0
    assert small["site_sensitivity_mean"] is None
    assert "not the 0.95 guarantee" in rows[(25, 0.5)]["guarantee"]
    masks = protocol.patient_draws(patients, 25, draws=8, seed=0)
    positives = [int(labels[mask].sum()) for mask in masks]
    needed = statistics.positives_needed(protocol.TARGET, 0.5)
    assert rows[(25, 0.5)]["refused"] == sum(count < needed for count in positives)
    big = rows[(200, protocol.CONFIDENCE)]
    assert big["calibrated"] == 8 and 0 <= big["target_held"] <= 1
    assert 0 < big["site_specificity_mean"] < 1 and big["val_threshold_specificity_mean"] > 0


def test_the_table_is_seeded_and_skips_k_too_large_for_the_split():
    labels, scores, patients = labeled_split(patients=120, seed=7)
    first = protocol.new_site_table(labels, scores, patients, 0.7, draws=6, seed=11)
    assert first == protocol.new_site_table(labels, scores, patients, 0.7, draws=6, seed=11)
    other = protocol.new_site_table(labels, scores, patients, 0.7, draws=6, seed=12)
    assert other["rows"] != first["rows"]
    # 120 patients: k = 100 and 200 would leave fewer than 25 held out.
    assert [skip["k"] for skip in first["skipped"]] == [100, 200]
    assert {row["k"] for row in first["rows"]} == {25, 50}
    assert "120 patient(s)" in first["skipped"][0]["reason"]
    metrics = protocol.headline(first, {"skipped": "x"}, {"skipped": "y"})
    assert set(metrics) >= {"test_shift_p_value", "control_false_alarm_rate", "site_specificity"}
    assert all(value is None for value in metrics.values())


def test_a_tiny_split_skips_every_k_and_the_check():
    labels, scores, patients = labeled_split(patients=6, seed=8)
    table = protocol.new_site_table(labels, scores, patients, 0.5, draws=3)
    assert table["rows"] == [] and len(table["skipped"]) == len(protocol.K_VALUES)
    reference = synthetic_reference()
    check = protocol.whole_check(reference, np.zeros((len(labels), WIDTH)), scores)
    assert "needs at least" in check["skipped"]
    card = outputs.card_section(table, check, check, {"skipped": "few", "draws": 0})
    assert outputs.SECTION_TITLE in card and "Skipped: k = 25" in card
    assert outputs.plot_table(table).empty
    assert list(outputs.calibration_table(table)["draws"]) == [0] * len(protocol.K_VALUES)


def test_the_control_p_value_is_the_site_checks():
    reference = synthetic_reference()
    tester = protocol.ControlTester(reference)
    for size, shift in ((60, 0.0), (60, 0.3), (61, 0.0)):  # a size seen before, and a new one
        batch = reference.control_features[:size] + shift
        checked = check_site(reference, batch, reference.control_scores[:size])
        assert tester.p_value(batch) == checked.p_value


def test_the_false_alarm_rate_is_near_nominal_and_a_shift_is_flagged():
    # Draws from one control part share its images, so their false alarms go together: the
    # rate is near 5% on average over references, not in each. Twelve references of 900
    # val-like images (a control part of about 300), ten draws each.
    rates, shifted_rates = [], []
    for seed in range(12):
        reference = synthetic_reference(images=900, seed=seed)
        same = protocol.control_false_alarms(reference, draws=10, images=60, seed=0)
        assert same["draws"] == 10 and len(same["p_values"]) == 10
        assert 60 <= same["images_mean"] < 62  # whole patients of two images
        rates.append(same["false_alarm_rate"])
        if seed < 2:
            shifted = protocol.control_false_alarms(
                reference, features=reference.control_features + 0.5, draws=10, images=60
            )
            shifted_rates.append(shifted["false_alarm_rate"])
    # Nominal 5%: a tolerant bound (twice it), that a check flagging far more often still
    # fails, as a shift of half a standard deviation must.
    assert np.mean(rates) <= 0.1, rates
    assert min(shifted_rates) >= 0.9, shifted_rates
    few = protocol.control_false_alarms(synthetic_reference(), draws=3, images=10_000)
    assert "control part holds" in few["skipped"]


def test_the_reports_say_site_calibrated_and_keep_the_evaluate_card_first(tmp_path):
    labels, scores, patients = labeled_split(seed=9)
    table = protocol.new_site_table(labels, scores, patients, 0.7, k_values=(50, 100), draws=5)
    reference = synthetic_reference()
    features, scores = reference.control_features, reference.control_scores
    test = protocol.whole_check(reference, features + 1.0, scores)
    control = protocol.whole_check(reference, features, scores)
    alarms = protocol.control_false_alarms(reference, draws=5, images=60)
    section = outputs.card_section(table, test, control, alarms)
    card = outputs.final_card("# Model card\n\nevaluate's text\n", section)
    assert card.startswith("# Model card\n\nevaluate's text\n\n## Site readiness (site-calibrated)")
    assert test["sentence"] in card and "False alarms:" in card
    assert "| 100 | 0.95 |" in card and "does not fix the ranking" in card
    frame = outputs.calibration_table(table)
    assert list(frame.columns) == list(outputs.CALIBRATION_COLUMNS)
    plotted = outputs.plot_table(table)
    assert plotted["k"].tolist() == [50, 100]
    assert set(plotted["confidence"]) <= {protocol.CONFIDENCE, *protocol.FALLBACK_CONFIDENCES}
    figure = outputs.calibration_figure(table, tmp_path / "figure.png")
    assert figure.stat().st_size > 0


def write_site_project(root):
    """A project with what the site stage reads: an untrained model of the tiny architecture
    (the stage's figures do not need a good one), its operating point and site reference (from
    300 val-like images of 150 patients), a processed test split of 330 images of 220 patients,
    and evaluate's card."""
    import keras

    from pneumonia.config import load_config
    from pneumonia.contracts.arrays import write_split
    from pneumonia.contracts.files import file_sha256
    from pneumonia.contracts.model_reference import ModelReference
    from pneumonia.contracts.operating_point import OperatingPoint, write_operating_point
    from pneumonia.contracts.site_reference import write_site_reference
    from pneumonia.model.network import build_model
    from pneumonia.site.features import features_and_scores

    from helpers import split_index, tiny_project_arrays, write_tiny_project

    config = load_config(write_tiny_project(root, {}, images=8))
    paths, size = config.paths, config.preprocess.image.size
    keras.utils.set_random_seed(0)
    model = build_model(size, config.train.model)
    paths.models.mkdir(parents=True, exist_ok=True)
    model.save(paths.model)
    sha256 = file_sha256(paths.model)
    val_images, _ = tiny_project_arrays(300, size, seed=1)
    features, scores = features_and_scores(model, val_images)
    threshold = float(np.median(scores))
    reference = build_site_reference(
        features,
        scores,
        np.repeat(np.arange(150), 2),
        model_sha256=sha256,
        feature_layers=["pool"],
        threshold=threshold,
        seed=42,
    )
    write_site_reference(paths.site_reference, reference)
    point = OperatingPoint(threshold=threshold, model=ModelReference(sha256=sha256))
    write_operating_point(paths.threshold, point)
    images, labels = tiny_project_arrays(330, size, seed=2)
    test = paths.processed_split("test")
    test.mkdir(parents=True, exist_ok=True)
    np.save(test / "images.npy", images, allow_pickle=False)
    frame = split_index([f"test-{index}.png" for index in range(330)], labels)
    # 110 patients of one image, 110 of two.
    frame["patient_id"] = [
        f"patient-{min(index, 110 + (index - 110) // 2)}" for index in range(330)
    ]
    write_split(test, frame, labels)
    paths.evaluate_card_markdown.parent.mkdir(parents=True, exist_ok=True)
    paths.evaluate_card_markdown.write_text("# Model card\n\nevaluate's card\n")
    return config


@pytest.mark.slow
def test_the_site_stage_writes_its_reports_the_final_card_and_an_mlflow_run(tmp_path):
    import json

    import mlflow

    from pneumonia.deployment.stage import load_site_inputs, run_params, run_site_stage
    from pneumonia.tracking import stage_run

    config = write_site_project(tmp_path / "project")
    paths = config.paths
    inputs = load_site_inputs(config)
    with stage_run("site", config, run_params(inputs)) as run:
        summary = run_site_stage(run, config, inputs)
    assert summary.startswith("site: test split p ")
    metrics = json.loads(paths.site_metrics.read_text())
    assert set(metrics) == {
        "test_shift_p_value",
        "test_classifier_auc",
        "control_false_alarm_rate",
        "site_sensitivity",
        "site_specificity",
        "target_held",
        "calibrated_draws",
        "refused_draws",
        "val_threshold_sensitivity",
        "val_threshold_specificity",
    }
    # 220 test patients: k = 200 is skipped, 100 is measured.
    counts = {"calibrated_draws", "refused_draws"}
    assert all(isinstance(metrics[key], int) for key in counts), metrics
    assert all(isinstance(value, float) for key, value in metrics.items() if key not in counts)
    detail = json.loads(paths.site_check.read_text())
    assert [skip["k"] for skip in detail["new_site"]["skipped"]] == [200]
    assert detail["test"]["n_images"] == 330 and detail["false_alarms"]["draws"] == 200
    table = paths.site_calibration_table.read_text()
    assert "skipped: 220 patient(s)" in table
    assert paths.site_plot_table.read_text().startswith("k,confidence,site_sensitivity")
    card = paths.model_card_markdown.read_text()
    assert card.startswith("# Model card\n\nevaluate's card\n\n## Site readiness (site-calibrated)")
    assert not paths.metrics.exists()  # the val-only headline is evaluate's, never written here
    logged = mlflow.get_run(run.run_id)
    assert logged.data.tags["stage"] == "site"
    assert logged.data.metrics["site/site_specificity"] == pytest.approx(
        metrics["site_specificity"]
    )
    artifacts = {item.path for item in mlflow.MlflowClient().list_artifacts(run.run_id, "site")}
    assert "site/calibration.png" in artifacts and "site/metrics.json" in artifacts
