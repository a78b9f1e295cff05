"""The site workflow's statistics (pneumonia.site.statistics) and its records: the two-sample
test holds its level on samples of one distribution and finds a shift, the classifier AUC reads
0.5 and 1, the out-of-distribution score's unit, the exact sensitivity bound and the threshold
it chooses, the site reference archive and the versioned site points."""

import json

import numpy as np
import pytest

from pneumonia.contracts.model_reference import ModelReference
from pneumonia.contracts.operating_point import OperatingPointError, read_operating_point
from pneumonia.contracts.site_reference import (
    SiteReferenceError,
    read_site_reference,
    write_site_reference,
)
from pneumonia.site import statistics
from pneumonia.site.calibration import calibrate_site
from pneumonia.site.check import OUT_OF_DISTRIBUTION, OutOfDistribution, check_site
from pneumonia.site.points import (
    all_site_points,
    read_site_point,
    site_versions,
    store_site_point,
)
from pneumonia.site.reference import build_site_reference, group_numbers, split_reference

WIDTH = 16


def gaussian(rows: int, seed: int, shift: float = 0.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(shift, 1.0, size=(rows, WIDTH))


def clustered(patients: int, seed: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Images of patients: 1-4 near copies of each patient's own point."""
    generator = np.random.default_rng(seed)
    sizes = generator.integers(1, 5, patients)
    centres = generator.normal(shift, 1.0, size=(patients, WIDTH))
    groups = np.repeat(np.arange(patients), sizes)
    return centres[groups] + generator.normal(0, 0.1, size=(len(groups), WIDTH)), groups


def test_the_patient_split_mmd_test_holds_its_level_on_images_clustered_by_patient():
    reference, groups = clustered(120, 0)
    test = statistics.PatientSplitMMDTest(reference, groups)
    p_values = []
    for seed in range(1, 41):
        sample, _ = clustered(30, seed)
        p_values.append(test.test(sample[:60], 200, seed).p_value)
    # A sample of 60 images holds ~24 patients' near copies: drawn by patients, the null
    # carries that (a permutation test over images would flag most of these); 40 draws.
    assert sum(p < 0.05 for p in p_values) <= 5
    assert min(p_values) >= 1 / 201


def test_the_patient_split_mmd_test_finds_a_shift_and_the_classifier_auc_reads_it():
    reference, groups = clustered(120, 0)
    shifted, _ = clustered(40, 2, shift=1.0)
    test = statistics.PatientSplitMMDTest(reference, groups)
    assert test.test(shifted, 200).p_value < 0.01
    assert statistics.classifier_two_sample_auc(reference, shifted) > 0.9
    assert 0.35 < statistics.classifier_two_sample_auc(gaussian(200, 0), gaussian(60, 2)) < 0.65
    # A sample larger than half the reference is cut to half of it.
    assert len(test.usable(np.r_[shifted, shifted, shifted], 0)) == test.largest_sample


def test_bad_feature_arrays_are_refused_by_name():
    test = statistics.PatientSplitMMDTest(gaussian(10, 0), np.arange(10))
    with pytest.raises(ValueError, match="site features: holds NaN"):
        test.test(np.full((5, WIDTH), np.nan))
    with pytest.raises(ValueError, match="differ in width"):
        test.test(gaussian(5, 1)[:, :3])


def test_the_out_of_distribution_unit_is_the_references_own_quantile():
    reference = gaussian(300, 0)
    unit = statistics.typical_distance(reference, None, 5, 0.99)
    own = statistics.kth_neighbour_distances(reference, reference, 5, leave_one_out=True)
    assert np.mean(own > unit) == pytest.approx(0.01, abs=0.005)
    # A far row is farther than the unit; the reference's own rows are not their neighbours.
    far = statistics.kth_neighbour_distances(reference, reference[:1] + 50.0, 5)
    assert far[0] > 10 * unit


def test_on_images_clustered_by_patient_the_unit_and_the_auc_read_new_patients_right():
    reference, groups = clustered(300, 0)
    unit = statistics.typical_distance(reference, groups, 5, 0.99)
    new_patients, new_groups = clustered(300, 1)
    flagged = statistics.kth_neighbour_distances(reference, new_patients, 5) > unit
    # Leaving out each image's own patient: about 1% of new patients' images, not several.
    assert flagged.mean() < 0.03
    # Grouped folds: the classifier cannot tell new patients from the reference.
    auc = statistics.classifier_two_sample_auc(
        reference, new_patients, reference_groups=groups, sample_groups=new_groups
    )
    assert 0.4 < auc < 0.6


@pytest.mark.parametrize(
    ("target", "confidence", "needed"), [(0.95, 0.95, 59), (0.95, 0.80, 32), (0.95, 0.5, 14)]
)
def test_the_positives_a_guarantee_needs(target, confidence, needed):
    assert statistics.positives_needed(target, confidence) == needed
    assert statistics.sensitivity_lower_bound(needed, needed, confidence) >= target
    assert statistics.sensitivity_lower_bound(needed - 1, needed - 1, confidence) < target


def test_the_guaranteed_threshold_is_the_highest_whose_bound_meets_the_target():
    generator = np.random.default_rng(3)
    labels = np.r_[np.ones(200, bool), np.zeros(100, bool)]
    scores = np.r_[generator.uniform(0.2, 1.0, 200), generator.uniform(0.0, 0.5, 100)]
    chosen = statistics.guaranteed_threshold(labels, scores, 0.95, 0.95)
    assert chosen.lower_bound >= 0.95 and chosen.detected == int(
        (scores[labels] >= chosen.threshold).sum()
    )
    # The next positive score up would miss one more and fail the bound.
    higher = np.sort(scores[labels])[np.sort(scores[labels]) > chosen.threshold]
    if len(higher):
        caught = int((scores[labels] >= higher[0]).sum())
        assert statistics.sensitivity_lower_bound(caught, 200, 0.95) < 0.95


def test_the_guarantee_holds_at_its_confidence_on_independent_positives():
    # Positive scores uniform on [0, 1]: at threshold t the true sensitivity is 1 - t.
    generator = np.random.default_rng(11)
    held = []
    for _ in range(400):
        labels = np.r_[np.ones(80, bool), np.zeros(20, bool)]
        scores = np.r_[generator.random(80), generator.random(20)]
        chosen = statistics.guaranteed_threshold(labels, scores, 0.95, 0.95)
        held.append(1.0 - chosen.threshold >= 0.95)
    # At least 95% of calibrations meet the target (400 draws: allow sampling error).
    assert np.mean(held) >= 0.93


def test_too_few_positives_are_refused_naming_the_count_needed():
    labels = np.r_[np.ones(20, bool), np.zeros(20, bool)]
    with pytest.raises(statistics.TooFewPositives, match=r"20 pneumonia image.*needs at least 59"):
        statistics.guaranteed_threshold(labels, np.linspace(0, 1, 40), 0.95, 0.95)


def reference_for(tmp_path, sha256="ab" * 32):
    features = np.r_[gaussian(180, 0), gaussian(180, 1)]
    patients = np.repeat([f"p{index}" for index in range(180)], 2)
    scores = np.random.default_rng(0).uniform(size=360)
    return build_site_reference(
        features,
        scores,
        patients,
        labels=np.arange(360) % 3 == 0,
        model_sha256=sha256,
        feature_layers=["pool"],
        threshold=0.5,
        seed=42,
    )


def test_the_reference_splits_val_by_patient_and_class_and_round_trips(tmp_path):
    patients = np.array(["b", "a", "b", "c", "a", "d"])
    assert group_numbers(patients).tolist() == [0, 1, 0, 2, 1, 3]
    parts = split_reference(patients, 42)
    for patient in set(patients):
        assert len(set(parts[patients == patient])) == 1
    # Big pneumonia patients and small normal ones: each part gets val's share of pneumonia.
    patients = np.r_[np.repeat(np.arange(30), 4), np.arange(30, 120)].astype(str)
    labels = np.r_[np.ones(120, int), np.zeros(90, int)][: len(patients)]
    parts = split_reference(patients, 7, labels)
    shares = [labels[parts == part].mean() for part in range(2)]
    assert max(shares) - min(shares) < 0.05
    reference = reference_for(tmp_path)
    assert not set(reference.reference_groups) & set(reference.control_groups)
    assert len(reference.reference_features) == 2 * len(reference.control_features)
    path = tmp_path / "site_reference.npz"
    write_site_reference(path, reference)
    read = read_site_reference(path)
    assert read.record == reference.record
    np.testing.assert_array_equal(read.control_features, reference.control_features)


def test_a_reference_for_another_model_file_or_a_damaged_one_is_refused(tmp_path):
    path = tmp_path / "site_reference.npz"
    write_site_reference(path, reference_for(tmp_path))
    model = tmp_path / "model.keras"
    model.write_bytes(b"other weights")
    with pytest.raises(SiteReferenceError, match="was written for a model file with sha256 abab"):
        read_site_reference(path, model)
    path.write_bytes(b"not an archive")
    with pytest.raises(SiteReferenceError, match="not a site reference archive"):
        read_site_reference(path)


def test_the_check_flags_a_shifted_site_and_lists_its_most_atypical_images(tmp_path):
    reference = reference_for(tmp_path)
    same = check_site(reference, gaussian(100, 7), np.full(100, 0.2))
    assert not same.shifted and same.positive_share == 0.0
    features = gaussian(100, 8, shift=0.8)
    features[3] += 40.0
    moved = check_site(reference, features, np.full(100, 0.9), [f"x{i}.png" for i in range(100)])
    assert moved.shifted and moved.p_value < 0.01 and moved.classifier_auc > 0.9
    assert moved.atypical[0]["path"] == "x3.png" and moved.out_of_distribution >= 1
    assert json.loads(json.dumps(moved.as_json()))["shifted"] is True
    assert "differ from" in moved.sentence()
    detector = OutOfDistribution(reference)
    assert detector.flag(float(detector.scores(features[3:4])[0])) == OUT_OF_DISTRIBUTION


def test_site_points_are_versioned_never_overwritten_and_tied_to_their_model(tmp_path):
    generator = np.random.default_rng(1)
    labels = np.r_[np.ones(80, bool), np.zeros(40, bool)]
    scores = np.r_[generator.uniform(0.4, 1.0, 80), generator.uniform(0.0, 0.6, 40)]
    model = ModelReference(sha256="cd" * 32)
    first = calibrate_site(labels, scores, site="st-marys", model=model, folder="cases/")
    stored, path = store_site_point(tmp_path, first)
    assert stored.version == 1 and path.name == "v1.json"
    again, path2 = store_site_point(tmp_path, first)
    assert again.version == 2 and path.read_text() != path2.read_text()
    assert site_versions(tmp_path, "st-marys") == [1, 2]
    assert read_site_point(tmp_path, "st-marys")[0].version == 2
    assert read_site_point(tmp_path, "st-marys@v1")[0] == stored
    point = read_operating_point(path)
    assert point.name == "site st-marys v1" and point.calibration.positives == 80
    assert point.calibration.sensitivity_lower_bound >= 0.95
    assert [p.version for p, _ in all_site_points(tmp_path)] == [1, 2]
    with pytest.raises(OperatingPointError, match="no operating point for site 'other'"):
        read_site_point(tmp_path, "other")
    with pytest.raises(OperatingPointError, match="site name"):
        read_site_point(tmp_path, "../escape")


def test_a_damaged_point_file_is_named_and_the_others_still_listed(tmp_path):
    labels = np.r_[np.ones(80, bool), np.zeros(40, bool)]
    scores = np.linspace(0, 1, 120)
    point = calibrate_site(labels, scores, site="west", model=ModelReference(), folder="cases/")
    store_site_point(tmp_path, point)
    _, broken = store_site_point(tmp_path, point)
    broken.write_text("{not json")
    problems: list[str] = []
    found = all_site_points(tmp_path, problems)
    assert [p.version for p, _ in found] == [1]
    assert len(problems) == 1 and "v2.json" in problems[0]
    with pytest.raises(OperatingPointError):
        all_site_points(tmp_path)
