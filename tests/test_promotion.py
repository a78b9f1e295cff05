"""`pneumonia promote`: the champion alias moves to the candidate only when its val figures are at
least as good; test figures are never read; figures that are not what evaluate measured are
refused; concurrent promotes run one after the other. Runs against a real (temporary) MLflow
registry, with real evaluate runs holding the metrics the tags must match."""

import multiprocessing
import time
import warnings
import zlib

import mlflow
import pandas as pd
import pytest

from pneumonia.cli import main
from pneumonia.contracts import registry_tags
from pneumonia.promotion import PromotionError, compare, promote, promotion_lock

from helpers import run_cli, write_params

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


def val_dataset(val_set: str):
    """An MLflow dataset standing for one val set; its digest depends on `val_set`."""
    rows = pd.DataFrame({"set": [float(zlib.crc32(val_set.encode())), 0.0]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas 4 notices from MLflow's digest code
        return mlflow.data.from_pandas(rows, name="val")


def add_version(
    client,
    auc,
    sensitivity,
    specificity,
    alias=None,
    val_set="val-1",
    logged=None,
    name=NAME,
    **extra_tags,
):
    """A registered version tagged as evaluate tags it, with the evaluate run it names: the run
    logged the val metrics (`logged` replaces some) on the val set `val_set` (the model files
    do not matter here)."""
    dataset = val_dataset(val_set)
    figures = {"val/roc_auc": auc, "val/sensitivity": sensitivity, "val/specificity": specificity}
    with mlflow.start_run(run_name="evaluate") as run:
        mlflow.log_input(dataset, context="validation")
        numbers = {
            key: float(value)
            for key, value in {**figures, **(logged or {})}.items()
            if _is_number(value)
        }
        mlflow.log_metrics(numbers)
    version = client.create_model_version(name, source="file:///nowhere/model").version
    tags = {
        "val_roc_auc": auc,
        "val_sensitivity": sensitivity,
        "val_specificity": specificity,
        "val_dataset_digest": dataset.digest,
        "evaluate_run_id": run.info.run_id,
        **extra_tags,
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))
    if alias:
        client.set_registered_model_alias(name, alias, version)
    return str(version)


def _is_number(value) -> bool:
    try:
        return abs(float(value)) < 1e300
    except ValueError:
        return False


def champion(client):
    return str(client.get_model_version_by_alias(NAME, "champion").version)


def test_first_candidate_becomes_champion(registry):
    version = add_version(registry, 0.9, 0.9, 0.8, alias="candidate")
    decision = promote(NAME, "candidate")
    assert decision.promoted and decision.champion is None
    assert champion(registry) == version
    assert "champion_since" in registry.get_model_version(NAME, version).tags
    assert decision.summary().startswith(
        f"promoted: {NAME} v{version} (@candidate) is now @champion"
    )


def test_better_val_auc_is_promoted_and_worse_is_not(registry):
    old = add_version(registry, 0.90, 0.9, 0.8, alias="champion")
    better = add_version(registry, 0.93, 0.7, 0.7, alias="candidate")
    decision = promote(NAME, "candidate")
    assert decision.promoted and champion(registry) == better
    assert "val_roc_auc is higher (0.9300 vs 0.9000)" in decision.reason
    assert registry.get_model_version(NAME, better).tags["replaced_champion"] == old

    worse = add_version(registry, 0.92, 0.99, 0.99, alias="candidate")
    decision = promote(NAME, "candidate")
    assert not decision.promoted and champion(registry) == better
    assert "val_roc_auc is lower (0.9200 vs 0.9300)" in decision.reason
    assert decision.summary().startswith(f"kept: @champion stays on v{better}; {NAME} v{worse}")

    forced = promote(NAME, "candidate", force=True)
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
    decision = promote(NAME, "candidate")
    assert decision.promoted and champion(registry) == same
    assert "equal the champion's" in decision.reason
    again = promote(NAME, "candidate")
    assert not again.promoted and "already holds both aliases" in again.reason


def test_test_figures_are_never_compared(registry):
    add_version(registry, 0.95, 0.9, 0.9, alias="champion", test_roc_auc=0.60)
    candidate = add_version(registry, 0.94, 0.9, 0.9, alias="candidate", test_roc_auc=0.99)
    decision = promote(NAME, "candidate")
    assert not decision.promoted and "test" not in decision.reason
    assert champion(registry) != candidate


def test_val_figures_from_different_val_sets_are_not_compared(registry):
    add_version(registry, 0.90, 0.9, 0.9, alias="champion")
    candidate = add_version(registry, 0.99, 0.9, 0.9, alias="candidate", val_set="val-2")
    decision = promote(NAME, "candidate")
    assert not decision.promoted and "not evaluated on the same val set" in decision.reason
    assert promote(NAME, "candidate", force=True).promoted and champion(registry) == candidate


def test_missing_aliases_tags_and_models_fail_clearly(registry):
    with pytest.raises(PromotionError, match="has no version with alias 'candidate'"):
        promote(NAME, "candidate")
    version = registry.create_model_version(NAME, source="file:///nowhere/model").version
    registry.set_registered_model_alias(NAME, "candidate", version)
    with pytest.raises(
        PromotionError, match=rf"v{version} \(@candidate\): tag 'val_roc_auc' is missing"
    ):
        promote(NAME, "candidate")
    with pytest.raises(PromotionError, match="registered model 'other' not found"):
        promote("other", "candidate")
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


def test_an_experiments_version_is_refused_unless_allowed_and_force_is_not_enough(registry, capsys):
    """A version a DVC experiment registered (tag dvc_experiment, any `dvc exp run`) is not the
    workspace's: promote refuses it in one line naming the experiment and both ways out, even
    with --force; --allow-experiment compares its val figures as any candidate's."""
    old = add_version(registry, 0.90, 0.9, 0.8, alias="champion")
    worse = add_version(registry, 0.80, 0.9, 0.8, alias="exp-sens95", dvc_experiment="sens95")
    for extra in ([], ["--force"]):
        status, out, err = run_cli(
            ["promote", "--name", NAME, "--from", "exp-sens95", *extra], capsys
        )
        assert status == 2 and out == "" and len(err.splitlines()) == 1, err
        assert err.startswith(
            f"error: {NAME} v{worse} (@exp-sens95) was registered by DVC experiment 'sens95'"
        )
        assert "--allow-experiment" in err and "dvc exp apply sens95" in err
    assert champion(registry) == old

    arguments = ["promote", "--name", NAME, "--from", "exp-sens95", "--allow-experiment"]
    status, out, _ = run_cli(arguments, capsys)
    assert status == 0 and out.startswith(f"kept: @champion stays on v{old}"), out
    better = add_version(registry, 0.95, 0.9, 0.8, alias="exp-sens95", dvc_experiment="sens95")
    status, out, _ = run_cli(arguments, capsys)
    assert status == 0 and out.startswith(f"promoted: {NAME} v{better} (@exp-sens95)"), out
    assert champion(registry) == better


def test_a_candidate_without_its_val_set_digest_or_with_infinite_figures_is_refused(registry):
    version = add_version(registry, 0.9, 0.9, 0.9, alias="candidate", val_dataset_digest="")
    with pytest.raises(PromotionError, match=f"v{version}: tag 'val_dataset_digest' is missing"):
        promote(NAME, "candidate")
    version = add_version(registry, "inf", 0.9, 0.9, alias="candidate")
    with pytest.raises(PromotionError, match="'val_roc_auc' is 'inf', not a decimal in"):
        promote(NAME, "candidate")


def test_a_champion_without_a_digest_is_not_compared(registry):
    add_version(registry, 0.90, 0.9, 0.9, alias="champion", val_dataset_digest="")
    add_version(registry, 0.99, 0.9, 0.9, alias="candidate")
    digest = val_dataset("val-1").digest
    decision = promote(NAME, "candidate")
    assert not decision.promoted and f"val_dataset_digest {digest} vs missing" in decision.reason


def test_a_tie_goes_to_the_candidate_even_an_older_one(registry):
    older = add_version(registry, 0.9, 0.9, 0.9)
    add_version(registry, 0.9, 0.9, 0.9, alias="champion")
    registry.set_registered_model_alias(NAME, "candidate", older)
    decision = promote(NAME, "candidate")
    assert decision.promoted and "ties go to the candidate" in decision.reason
    assert "newer" not in decision.reason


# --- Figures promote trusts --------------------------------------------------------------------


@pytest.mark.parametrize("text", ["1.5", "97", "1e308", "1_0", "-0.1", "nan", "inf", " 0.9", "0x1"])
def test_figures_outside_zero_one_or_not_plain_decimals_are_refused(registry, text):
    version = add_version(registry, text, 0.9, 0.9, alias="candidate")
    with pytest.raises(PromotionError) as refused:
        promote(NAME, "candidate")
    assert str(refused.value).startswith(
        f"{NAME} v{version} (@candidate): tag 'val_roc_auc' is {text!r}, not a decimal in [0, 1]"
    )
    assert "champion" not in {alias for alias in registry.get_registered_model(NAME).aliases}


def test_plain_figures_parse_as_written():
    assert registry_tags.parse_figure(registry_tags.format_figure(0.9312)) == 0.9312
    assert registry_tags.parse_figure("1e-05") == 1e-05  # how Python writes a small rate
    assert registry_tags.parse_figure("1") == 1.0 and registry_tags.parse_figure("0.0") == 0.0
    assert registry_tags.parse_figure("1_0") is None and registry_tags.parse_figure("1e5") is None


def test_a_tag_that_differs_from_the_evaluate_runs_metric_is_refused(registry):
    version = add_version(registry, 0.97, 0.9, 0.9, alias="candidate", logged={"val/roc_auc": 0.91})
    run_id = registry.get_model_version(NAME, version).tags["evaluate_run_id"]
    with pytest.raises(PromotionError) as refused:
        promote(NAME, "candidate")
    assert str(refused.value).startswith(
        f"{NAME} v{version} (@candidate): tag 'val_roc_auc' is 0.97 but its evaluate run "
        f"{run_id} logged 0.91 as 'val/roc_auc'"
    )
    # A run that logged nothing under the name, and a version whose run is not in the store.
    registry.set_model_version_tag(NAME, version, "val_roc_auc", "0.91")
    registry.set_model_version_tag(NAME, version, "val_specificity", "0.5")
    with pytest.raises(PromotionError, match=r"tag 'val_specificity' is 0.5 but .* logged 0.9 as"):
        promote(NAME, "candidate")
    registry.set_model_version_tag(NAME, version, "val_specificity", "0.9")
    registry.set_model_version_tag(NAME, version, "evaluate_run_id", "0" * 32)
    with pytest.raises(PromotionError, match=f"its evaluate run {'0' * 32} .* is not in sqlite"):
        promote(NAME, "candidate")
    registry.delete_model_version_tag(NAME, version, "evaluate_run_id")
    with pytest.raises(PromotionError, match="tag 'evaluate_run_id' is missing"):
        promote(NAME, "candidate")
    registry.set_model_version_tag(NAME, version, "evaluate_run_id", run_id)
    assert promote(NAME, "candidate").promoted  # the tags as measured again


def test_a_val_set_digest_the_evaluate_run_did_not_take_is_refused(registry):
    add_version(registry, 0.90, 0.9, 0.9, alias="champion")
    version = add_version(registry, 0.99, 0.9, 0.9, alias="candidate", val_set="val-2")
    # Made to look comparable with the champion's: its run took val-2, not val-1.
    registry.set_model_version_tag(NAME, version, "val_dataset_digest", val_dataset("val-1").digest)
    with pytest.raises(PromotionError, match=r"tag 'val_dataset_digest' is .* took no val set"):
        promote(NAME, "candidate")


def test_a_champion_with_untrustworthy_figures_needs_force_and_force_replaces_it(registry):
    """Once a champion held 97, every real candidate was "kept" for good."""
    champion_version = add_version(registry, "97", 0.9, 0.9, alias="champion")
    add_version(registry, 0.95, 0.9, 0.9, alias="candidate")
    with pytest.raises(PromotionError) as refused:
        promote(NAME, "candidate")
    message = str(refused.value)
    assert message.startswith(
        f"{NAME} v{champion_version} (@champion): tag 'val_roc_auc' is '97', not a decimal"
    )
    assert message.endswith("--force replaces it without comparing")
    forced = promote(NAME, "candidate", force=True)
    assert forced.promoted and champion(registry) == forced.candidate
    assert "promoted without comparing (--force)" in forced.reason


def test_force_replaces_a_champion_without_tags(registry):
    bare = registry.create_model_version(NAME, source="file:///nowhere/model").version
    registry.set_registered_model_alias(NAME, "champion", bare)
    version = add_version(registry, 0.9, 0.9, 0.9, alias="candidate")
    with pytest.raises(PromotionError, match=r"tag 'val_roc_auc' is missing.*--force replaces"):
        promote(NAME, "candidate")
    assert promote(NAME, "candidate", force=True).promoted and champion(registry) == version


# --- Aliases, the CLI's defaults, messages -------------------------------------------------------


@pytest.mark.parametrize("alias", ["v1", "V12", "bad/alias", "latest", "with space", "", "x" * 300])
def test_aliases_follow_the_evaluate_alias_rule(registry, alias, capsys):
    add_version(registry, 0.9, 0.9, 0.9, alias="candidate")
    with pytest.raises(PromotionError, match="--to alias: must be a name of letters, digits"):
        promote(NAME, "candidate", target_alias=alias)
    status, out, err = run_cli(["promote", "--name", NAME, "--to", alias], capsys)
    assert status == 2 and out == "" and "Traceback" not in err
    assert err.startswith("error: --to alias: must be a name") and len(err.splitlines()) == 1
    status, _, err = run_cli(["promote", "--name", NAME, "--from", alias], capsys)
    assert status == 2 and err.startswith("error: --from alias: must be a name")


def test_cli_promotes_from_evaluate_alias_of_params(registry, tmp_path, capsys):
    version = add_version(registry, 0.9, 0.9, 0.8, alias="staging")
    params = write_params(tmp_path / "project", {"evaluate.alias": "staging"})
    status, out, _ = run_cli(["promote", "--params", str(params)], capsys)
    assert status == 0, out
    assert out.startswith(f"promoted: {NAME} v{version} (@staging) is now @champion")


def test_an_unreachable_registry_is_named_masked_not_not_found(monkeypatch, capsys):
    from helpers import free_port

    uri = f"http://reader:s3cret-pass@127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    mlflow.set_tracking_uri(uri)
    # promote's own message, for a registry that stops answering after the command's check.
    with pytest.raises(PromotionError) as refused:
        promote(NAME, "candidate")
    message = str(refused.value)
    assert message.startswith("the model registry at http://reader:***@127.0.0.1:")
    assert "is unreachable" in message and "MLFLOW_TRACKING_URI" in message
    assert "not found" not in message and "s3cret" not in message
    # The command checks the server first (tracking.check_reachable): one line, masked.
    status, out, err = run_cli(["promote", "--name", NAME], capsys)
    assert status == 2 and out == "" and "Traceback" not in err and len(err.splitlines()) == 1
    assert "http://reader:***@127.0.0.1" in err and "unreachable" in err
    assert "not found" not in err and "s3cret" not in err


# --- Concurrent promotes -------------------------------------------------------------------------


def test_a_held_lock_makes_promote_wait_then_say_who_holds_it(registry):
    version = add_version(registry, 0.9, 0.9, 0.9, alias="candidate")
    with promotion_lock(registry, NAME):
        lock = registry.get_registered_model(registry_tags.promotion_lock_name(NAME))
        assert "pneumonia promote, process" in lock.tags[registry_tags.LOCK_HOLDER]
        with pytest.raises(PromotionError) as refused:
            promote(NAME, "candidate", wait_seconds=0.3)
        assert "another promote of pneumonia-classifier has held the promotion lock" in str(
            refused.value
        )
        assert f"delete the registered model '{NAME}.promotion-lock'" in str(refused.value)
    assert promote(NAME, "candidate").promoted and champion(registry) == version
    names = {model.name for model in registry.search_registered_models()}
    assert registry_tags.promotion_lock_name(NAME) not in names  # released


def _hold_the_lock_until_killed(store, ready):
    import os
    import time

    os.environ["MLFLOW_TRACKING_URI"] = store
    import mlflow as client_module

    from pneumonia.promotion import promotion_lock as hold

    with hold(client_module.MlflowClient(), NAME):
        ready.set()
        time.sleep(600)  # killed long before


@pytest.mark.slow
def test_a_lock_whose_holder_was_killed_is_broken(registry, store):
    """A promote SIGKILLed while it held the lock cannot delete it; the next promote proves the
    holder gone (same boot and PID namespace, no such process) and takes over at once."""
    version = add_version(registry, 0.9, 0.9, 0.9, alias="candidate")
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    holder = context.Process(target=_hold_the_lock_until_killed, args=(store, ready))
    holder.start()
    assert ready.wait(timeout=120)
    holder.kill()
    holder.join()
    lock = registry_tags.promotion_lock_name(NAME)
    assert lock in {model.name for model in registry.search_registered_models()}  # left behind
    started = time.monotonic()
    assert promote(NAME, "candidate", wait_seconds=30).promoted and champion(registry) == version
    assert time.monotonic() - started < 20  # broken on proof, not after the wait
    assert lock not in {model.name for model in registry.search_registered_models()}


def _promote_in_rounds(store, source_alias, rounds, barrier, results):
    """One of two processes promoting at the same moment, round after round."""
    import os

    os.environ["MLFLOW_TRACKING_URI"] = store
    from pneumonia.promotion import promote as promote_now

    for number in range(rounds):
        barrier.wait(timeout=300)  # the round is set up: both go
        try:
            decision = promote_now(f"race-{number}", source_alias, "champion")
            results.put((number, source_alias, decision.promoted, decision.champion, None))
        except Exception as error:  # reported to the test, which fails on it
            results.put((number, source_alias, None, None, f"{type(error).__name__}: {error}"))
        barrier.wait(timeout=300)  # the round is over


@pytest.mark.slow
def test_concurrent_promotes_in_two_processes_end_on_the_best(isolated_mlflow):
    """Two promotes start together, candidates at 0.95 (@fast) and 0.97 (@best) over a 0.93
    champion. Serialised, @best ends champion in whatever order they ran: the 0.97 one always
    promotes; the 0.95 one promotes only when it ran first (then the 0.97 one replaced it) and
    otherwise is kept, compared with the 0.97 one. Before the lock, in 1 of 6 rounds both said
    "promoted" over the 0.93 one and the champion ended on 0.95."""
    rounds = 8
    client = mlflow.MlflowClient()
    versions = {}
    for number in range(rounds):  # set up first: the rounds then follow each other fast
        name = f"race-{number}"
        client.create_registered_model(name)
        versions[number] = {
            alias: add_version(client, auc, 0.9, 0.9, alias=alias, name=name)
            for alias, auc in (("champion", 0.93), ("fast", 0.95), ("best", 0.97))
        }
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(3), context.Queue()
    workers = [
        context.Process(
            target=_promote_in_rounds, args=(isolated_mlflow, alias, rounds, barrier, results)
        )
        for alias in ("fast", "best")
    ]
    for worker in workers:
        worker.start()
    try:
        outcomes = {}
        for _ in range(rounds):
            barrier.wait(timeout=300)
            barrier.wait(timeout=300)
            for _ in range(2):
                round_number, alias, promoted, compared_with, error = results.get(timeout=60)
                assert error is None, error
                outcomes[round_number, alias] = (promoted, compared_with)
    finally:
        for worker in workers:
            worker.join(timeout=60)
            if worker.is_alive():
                worker.kill()
    for number, version in versions.items():
        name = f"race-{number}"
        assert str(client.get_model_version_by_alias(name, "champion").version) == version["best"]
        fast, best = outcomes[number, "fast"], outcomes[number, "best"]
        assert best[0] is True
        if fast[0]:  # fast went first: best compared with it, not with the old champion
            assert fast[1] == version["champion"] and best[1] == version["fast"]
        else:  # best went first: fast compared with it and was kept
            assert fast[1] == version["best"] and best[1] == version["champion"]
        tags = client.get_model_version(name, version["best"]).tags
        assert tags["replaced_champion"] == best[1]
    names = {model.name for model in client.search_registered_models()}
    assert not any(name.endswith(registry_tags.PROMOTION_LOCK_SUFFIX) for name in names)


def test_cli_default_candidate_alias_is_evaluate_alias_even_with_a_name(registry, tmp_path, capsys):
    version = add_version(registry, 0.9, 0.9, 0.8, alias="staging")
    params = write_params(tmp_path / "project", {"evaluate.alias": "staging"})
    status, out, _ = run_cli(["promote", "--name", NAME, "--params", str(params)], capsys)
    assert status == 0, out
    assert out.startswith(f"promoted: {NAME} v{version} (@staging) is now @champion")
    # Without --from there is no default but params.yaml's: a missing file is named.
    missing = tmp_path / "elsewhere" / "params.yaml"
    status, _, err = run_cli(["promote", "--name", NAME, "--params", str(missing)], capsys)
    assert status == 2 and str(missing) in err
