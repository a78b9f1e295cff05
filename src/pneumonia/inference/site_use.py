"""What predict takes from the site workflow (pneumonia.site): the site reference beside a model
file, a site's operating point (`--site NAME`, refused for any other model file) and the one
check at the end of a large run whose images may come from a shifted site."""

from __future__ import annotations

from pathlib import Path

from pneumonia.contracts.files import file_sha256
from pneumonia.contracts.operating_point import OperatingPoint, OperatingPointError
from pneumonia.contracts.paths import SITE_REFERENCE_FILE
from pneumonia.contracts.served_settings import SETTINGS_ARTIFACT, read_served_settings
from pneumonia.contracts.site_reference import SiteReference, read_site_reference
from pneumonia.inference.classifier import Classifier, PredictionError
from pneumonia.inference.prediction import ScoredFeatures
from pneumonia.site.check import SiteCheck, check_site
from pneumonia.site.points import read_site_point

# A site's operating point and its file, when `--site` names one.
SitePoint = tuple[OperatingPoint, Path] | None

# A predict run that scores at least this many images, with no site operating point, is
# checked once against the model's val images: fewer say little about a population.
BATCH_CHECK_MINIMUM = 50
# The check's time and memory grow with the images checked (kernel blocks, null samples of the
# same size): a larger run is checked on a uniform sample of this many of its images, kept as
# they are scored (prediction.ScoredFeatures; about 5 s on 2 CPU cores).
BATCH_CHECK_AT_MOST = 2000


def reference_beside(model_path: Path) -> SiteReference | None:
    """The site reference evaluate wrote beside a model file, refused
    (contracts.site_reference.SiteReferenceError) if it was written for another file; None
    when there is none (a model evaluated before references were written)."""
    path = model_path.with_name(SITE_REFERENCE_FILE)
    if not path.exists():
        return None
    return read_site_reference(path, model_path)


def calibrate_hint(site: str, model: str) -> str:
    return f"pneumonia site calibrate FOLDER --name {site} --model {model}"


def check_site_point_sha256(
    point: OperatingPoint, point_path: Path, sha256: str, model: str
) -> None:
    """A site's threshold applies to the weights it was chosen on, named by content."""
    named = point.model.sha256
    if named != sha256:
        chosen_for = f"sha256 {named[:12]}..." if named else "no model file (no sha256)"
        raise OperatingPointError(
            f"site point {point_path} was chosen for a model file with {chosen_for}, but "
            f"{model} has sha256 {sha256[:12]}...; calibrate the site for this model: "
            f"{calibrate_hint(point.site or 'NAME', model)}"
        )


def check_site_point_model_id(
    point: OperatingPoint, point_path: Path, model_id: str, uri: str
) -> None:
    """The registry's Keras flavor is a re-saved copy of the file (other bytes, the same
    weights): its logged model id is what names those weights there."""
    named = point.model.model_id
    if not model_id or named != model_id:
        raise OperatingPointError(
            f"site point {point_path} was chosen for model id {named or '(none)'}, but {uri} is "
            f"model id {model_id or '(none)'}; calibrate the site for this model: "
            f"{calibrate_hint(point.site or 'NAME', uri)}"
        )


def site_point_for_file(model_path: Path, site: str) -> tuple[OperatingPoint, Path]:
    """The point `site` (NAME or NAME@v<n>) names among the site points beside a model file
    (<folder>/sites/), refused unless it was chosen for this very file."""
    point, path = read_site_point(model_path.parent, site)
    check_site_point_sha256(point, path, file_sha256(model_path), str(model_path))
    return point, path


def site_point_for_uri(site: str | None, models_folder: Path | None, uri: str) -> SitePoint:
    """The point `site` names among those in `models_folder`/sites (the project's paths.models),
    for an MLflow model URI; None without `site`."""
    if site is None:
        return None
    if models_folder is None:
        raise PredictionError(
            f"--site {site} with {uri}: the site points are read from paths.models/sites of the "
            "project's params.yaml; run from the project root, or pass --params"
        )
    return read_site_point(models_folder, site)


def served_model_sha256(folder: Path) -> str:
    """The sha256 of the Keras file a served model folder wraps: what its settings.json
    records, else (a version logged before the hash was recorded) the file's own."""
    settings_path = folder / SETTINGS_ARTIFACT
    if settings_path.is_file():
        named = read_served_settings(settings_path).source.sha256
        if named:
            return named
    files = sorted(settings_path.parent.glob("*.keras"))
    if len(files) != 1:
        raise PredictionError(
            f"{folder}: expected one .keras file among the served model's artifacts, found "
            f"{len(files)}; re-register it with the evaluate stage (dvc repro)"
        )
    return file_sha256(files[0])


def batch_site_check(classifier: Classifier, collected: ScoredFeatures) -> SiteCheck | None:
    """The site check of a run's scored images (their kept sample: at most
    BATCH_CHECK_AT_MOST, drawn uniformly) against the model's val reference, when the run
    scored at least BATCH_CHECK_MINIMUM of them and the model has a reference."""
    if classifier.reference is None or len(collected) < BATCH_CHECK_MINIMUM:
        return None
    features, scores = collected.arrays()
    return check_site(classifier.reference, features, scores)


def collector(classifier: Classifier) -> ScoredFeatures:
    """What a predict run keeps for its batch check: a sample of BATCH_CHECK_AT_MOST images,
    drawn with the reference's seed."""
    seed = classifier.reference.record.seed if classifier.reference is not None else 0
    return ScoredFeatures(BATCH_CHECK_AT_MOST, seed)


def shift_warning(check: SiteCheck, scored: int) -> str:
    """One stderr paragraph for a run whose images differ from the model's val images."""
    checked = (
        f"{check.n_images} images (drawn from the {scored} scored)"
        if check.n_images < scored
        else f"the {check.n_images} images"
    )
    return (
        f"warning: {checked} differ from the model's validation images (MMD test p = "
        f"{check.p_value:.3g}; a classifier tells them apart with ROC AUC "
        f"{check.classifier_auc:.2f}, 0.5 = indistinguishable). The threshold chosen on val may "
        "not hold here: its sensitivity and specificity were measured on other images. Label a "
        "few cases of this site into NORMAL/ and PNEUMONIA/, run `pneumonia site calibrate "
        "FOLDER --name NAME`, then predict with `--site NAME`."
    )
