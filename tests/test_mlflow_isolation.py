"""The tests' own MLflow isolation (conftest.py's isolated_mlflow, helpers.mlflow_store): each test
starts on a store of its own with nothing active, and whatever it sets is put back."""

import os

import mlflow

from helpers import mlflow_store


def test_each_test_starts_on_its_own_store_with_no_active_run(isolated_mlflow, tmp_path):
    assert isolated_mlflow == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert os.environ["MLFLOW_TRACKING_URI"] == isolated_mlflow
    assert mlflow.get_tracking_uri() == isolated_mlflow
    assert mlflow.active_run() is None
    assert "MLFLOW_EXPERIMENT_ID" not in os.environ
    # Lazily: no database until something logs.
    assert not (tmp_path / "mlflow.db").exists()


def test_what_a_block_sets_is_put_back(isolated_mlflow, tmp_path):
    inner, elsewhere = (f"sqlite:///{tmp_path / name}" for name in ("inner.db", "elsewhere.db"))
    with mlflow_store(inner):
        assert mlflow.get_tracking_uri() == inner
        mlflow.set_experiment("leaky")
        mlflow.start_run()  # left open on purpose
        mlflow.set_tracking_uri(elsewhere)
    assert mlflow.active_run() is None
    assert mlflow.get_tracking_uri() == isolated_mlflow
    assert os.environ["MLFLOW_TRACKING_URI"] == isolated_mlflow
    assert "MLFLOW_EXPERIMENT_ID" not in os.environ
    # The run left open was ended in its own store, not abandoned as RUNNING.
    runs = mlflow.MlflowClient(inner).search_runs(
        [mlflow.MlflowClient(inner).get_experiment_by_name("leaky").experiment_id]
    )
    assert [run.info.status for run in runs] == ["FINISHED"]
