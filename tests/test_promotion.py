"""`pneumonia promote`: the champion alias moves to the candidate only when its val figures are at
least as good; test figures are never read. Runs against a real (temporary) MLflow registry."""

import mlflow
import pytest

from pneumonia.cli import main
from pneumonia.promotion import PromotionError, compare, promote

from helpers import write_params

NAME = "pneumonia-classifier"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store for the module (creating one costs seconds of schema migrations)."""
    return f"sqlite:///{tmp_path_factory.mktemp('registry') / 'mlflow.db'}"


@pytest.fixture
def registry(store, monkeypatch):
    """A fresh registered model named NAME, deleted after the test."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    mlflow.set_tracking_uri(store)
    client = mlflow.MlflowClient()
    client.create_registered_model(NAME)
    yield client
    client.delete_registered_model(NAME)


def add_version(client, auc, sensitivity, specificity, alias=None, **extra_tags):
    """A registered version tagged as evaluate tags it (the model files do not matter here)."""
    version = client.create_model_version(NAME, source="file:///nowhere/model").version
    tags = {
        "val_roc_auc": auc,
        "val_sensitivity": sensitivity,
        "val_specificity": specificity,
        "val_dataset_digest": "val-1",
        **extra_tags,
    }
    for key, value in tags.items():
        client.set_model_version_tag(NAME, version, key, str(value))
    if alias:
        client.set_registered_model_alias(NAME, alias, version)
    return str(version)


def champion(client):
    return str(client.get_model_version_by_alias(NAME, "champion").version)


def test_first_candidate_becomes_champion(registry):
    version = add_version(registry, 0.9, 0.9, 0.8, alias="candidate")
    decision = promote(NAME)
    assert decision.promoted and decision.champion is None
    assert champion(registry) == version
    assert "champion_since" in registry.get_model_version(NAME, version).tags
    assert decision.summary().startswith(
        f"promoted: {NAME} v{version} (@candidate) is now @champion"
    )


def test_better_val_auc_is_promoted_and_worse_is_not(registry):
    old = add_version(registry, 0.90, 0.9, 0.8, alias="champion")
    better = add_version(registry, 0.93, 0.7, 0.7, alias="candidate")
    decision = promote(NAME)
    assert decision.promoted and champion(registry) == better
    assert "val_roc_auc is higher (0.9300 vs 0.9000)" in decision.reason
    assert registry.get_model_version(NAME, better).tags["replaced_champion"] == old

    worse = add_version(registry, 0.92, 0.99, 0.99, alias="candidate")
    decision = promote(NAME)
    assert not decision.promoted and champion(registry) == better
    assert "val_roc_auc is lower (0.9200 vs 0.9300)" in decision.reason
    assert decision.summary().startswith(f"kept: @champion stays on v{better}; {NAME} v{worse}")

    forced = promote(NAME, force=True)
    assert forced.promoted and champion(registry) == worse and "--force" in forced.reason


def test_ties_on_auc_go_to_sensitivity_then_specificity_then_the_candidate(registry):
    assert compare((0.9, 0.8, 0.7), (0.9, 0.7, 0.9)) == (
        True,
        "its val_sensitivity is higher (0.8000 vs 0.7000)",
    )
    assert compare((0.9, 0.8, 0.7), (0.9, 0.8, 0.75))[0] is False
    assert compare((0.9, 0.8, 0.7), (0.9, 0.8, 0.7))[0] is True

    add_version(registry, 0.9, 0.8, 0.7, alias="champion")
    same = add_version(registry, 0.9, 0.8, 0.7, alias="candidate")
    decision = promote(NAME)
    assert decision.promoted and champion(registry) == same
    assert "equal the champion's" in decision.reason
    again = promote(NAME)
    assert not again.promoted and "already holds both aliases" in again.reason


def test_test_figures_are_never_compared(registry):
    add_version(registry, 0.95, 0.9, 0.9, alias="champion", test_roc_auc=0.60)
    candidate = add_version(registry, 0.94, 0.9, 0.9, alias="candidate", test_roc_auc=0.99)
    decision = promote(NAME)
    assert not decision.promoted and "test" not in decision.reason
    assert champion(registry) != candidate


def test_val_figures_from_different_val_sets_are_not_compared(registry):
    add_version(registry, 0.90, 0.9, 0.9, alias="champion")
    candidate = add_version(registry, 0.99, 0.9, 0.9, alias="candidate", val_dataset_digest="val-2")
    decision = promote(NAME)
    assert not decision.promoted and "not evaluated on the same val set" in decision.reason
    assert promote(NAME, force=True).promoted and champion(registry) == candidate


def test_missing_aliases_tags_and_models_fail_clearly(registry):
    with pytest.raises(PromotionError, match="has no version with alias 'candidate'"):
        promote(NAME)
    version = registry.create_model_version(NAME, source="file:///nowhere/model").version
    registry.set_registered_model_alias(NAME, "candidate", version)
    with pytest.raises(PromotionError, match=f"v{version}: tag 'val_roc_auc' is missing"):
        promote(NAME)
    with pytest.raises(PromotionError, match="registered model 'other' not found"):
        promote("other")
    with pytest.raises(PromotionError, match="--from and --to are both"):
        promote(NAME, "champion", "champion")


def test_cli_takes_the_name_from_params_and_prints_the_decision(registry, tmp_path, capsys):
    version = add_version(registry, 0.9, 0.9, 0.8, alias="candidate")
    params = write_params(tmp_path / "project", {})
    main(["promote", "--params", str(params)])
    out = capsys.readouterr().out
    assert out.startswith(f"promoted: {NAME} v{version} (@candidate) is now @champion")
    assert champion(registry) == version
    with pytest.raises(SystemExit) as exit:
        main(["promote", "--name", NAME, "--from", "staging"])
    assert exit.value.code == 2
    assert (
        "error: pneumonia-classifier has no version with alias 'staging'" in capsys.readouterr().err
    )


def test_a_candidate_without_its_val_set_digest_or_with_infinite_figures_is_refused(registry):
    version = add_version(registry, 0.9, 0.9, 0.9, alias="candidate", val_dataset_digest="")
    with pytest.raises(PromotionError, match=f"v{version}: tag 'val_dataset_digest' is missing"):
        promote(NAME)
    version = add_version(registry, "inf", 0.9, 0.9, alias="candidate")
    with pytest.raises(PromotionError, match="'val_roc_auc' is missing or not a finite number"):
        promote(NAME)


def test_a_champion_without_a_digest_is_not_compared(registry):
    add_version(registry, 0.90, 0.9, 0.9, alias="champion", val_dataset_digest="")
    add_version(registry, 0.99, 0.9, 0.9, alias="candidate")
    decision = promote(NAME)
    assert not decision.promoted and "val_dataset_digest val-1 vs missing" in decision.reason


def test_a_tie_goes_to_the_candidate_even_an_older_one(registry):
    older = add_version(registry, 0.9, 0.9, 0.9)
    add_version(registry, 0.9, 0.9, 0.9, alias="champion")
    registry.set_registered_model_alias(NAME, "candidate", older)
    decision = promote(NAME)
    assert decision.promoted and "ties go to the candidate" in decision.reason
    assert "newer" not in decision.reason
