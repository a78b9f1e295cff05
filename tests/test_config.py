import pytest

from pneumonia.cli import main
from pneumonia.config import ConfigError, find_project_root, load_config

from helpers import PROJECT_ROOT, write_params


def test_project_params_load():
    """The project's own params.yaml validates as it is. The other tests build their params from
    it too, through tests/helpers/params.py (speed overrides, then each test's changes)."""
    config = load_config(PROJECT_ROOT / "params.yaml")
    assert config.download.is_kaggle
    assert config.download.kaggle_handle.endswith("/versions/2")
    assert config.paths.manifest == PROJECT_ROOT / "data/raw/manifest.csv"
    assert config.evaluate.serving_model_name == "pneumonia-classifier"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"split.val_fraction": 1.5}, "'split.val_fraction' must be in \\(0, 1\\)"),
        ({"split.val_fraction": "a lot"}, "'split.val_fraction' must be a number, got 'a lot'"),
        ({"split.seed": None}, "'split.seed' is missing"),
        (
            {"split.val_fracton": 0.2},
            "unknown key 'split.val_fracton'; did you mean 'val_fraction'",
        ),
        ({"preprocess.image.resize": "squash"}, "'preprocess.image.resize' must be one of"),
        ({"preprocess.image.size": 8}, "'preprocess.image.size' must be in"),
        ({"preprocess.image.size": True}, "'preprocess.image.size' must be an integer"),
        ({"preprocess.image.size": "128"}, "'preprocess.image.size' must be an integer"),
        (
            {"preprocess.image.clahe_tile_grid": 200},
            "'preprocess.image.clahe_tile_grid' must be in \\[1, 'preprocess.image.size'\\]",
        ),
        ({"preprocess.workers": -1}, "'preprocess.workers' must be >= 0"),
        ({"download.source": " "}, "'download.source' is empty"),
        ({"download.kaggle_dataset": "chest-xray"}, "'download.kaggle_dataset' must look like"),
        (
            {"preprocess.limits.max_file_bytes": 0},
            "'preprocess.limits.max_file_bytes' must be >= 1",
        ),
        (
            {"preprocess.limits.max_file_bytes": "50MB"},
            "'preprocess.limits.max_file_bytes' must be an integer",
        ),
        (
            {"preprocess.limits.max_file_bytes": 5e7},
            "'preprocess.limits.max_file_bytes' must be an integer",
        ),
        ({"mlflow.experiment": ""}, "'mlflow.experiment' must not be empty"),
        ({"train.optimizer.name": "sgd"}, "'train.optimizer.name' must be one of adam, rmsprop"),
        ({"train.optimizer.learning_rate": 0}, "'train.optimizer.learning_rate' must be in"),
        ({"train.optimizer.learning_rate": -0.1}, "'train.optimizer.learning_rate' must be in"),
        ({"train.tuning.n_trials": -1}, "'train.tuning.n_trials' must be >= 0"),
        ({"train.tuning.epochs": 0}, "'train.tuning.epochs' must be >= 1"),
        ({"train.tuning.pruner": "asha"}, "'train.tuning.pruner' must be one of"),
        ({"train.tuning.storage": "studies.db"}, "'train.tuning.storage' must be an Optuna RDB"),
        (
            {"train.tuning.search_space.optimizer": ["adam", "sgd"]},
            "'train.tuning.search_space.optimizer.1' must be one of adam, rmsprop, got 'sgd'",
        ),
        (
            {"train.tuning.search_space.learning_rate": [0.01, 0.001]},
            "'train.tuning.search_space.learning_rate' must satisfy",
        ),
        ({"train.model.convolution": "dilated"}, "'train.model.convolution' must be one of"),
        ({"train.model.depth": 9}, "'train.model.depth' must be in"),
        ({"train.batch_size": 0}, "'train.batch_size' must be >= 1"),
        ({"train.label_smoothing": 0.7}, "'train.label_smoothing' must be in"),
        ({"train.ensemble": 0}, "'train.ensemble' must be in \\[1, 10\\]"),
        ({"train.ensemble": 11}, "'train.ensemble' must be in \\[1, 10\\]"),
        ({"train.seed": -1}, "'train.seed' must be in \\[0, 4294967295\\], got -1"),
        (
            {"train.optimizer.learning_rate": float("nan")},
            "'train.optimizer.learning_rate' must be a finite",
        ),
        ({"train.model": 3}, "'train.model' must be a mapping"),
        (
            {"train.model.depth": 6, "preprocess.image.size": 32},
            "'train.model.depth' 6 halves the image 6 times; 'preprocess.image.size' 32 is too",
        ),
        (
            {"train.tuning.grace_period": 100},
            "'train.tuning.grace_period' \\(100\\) must be at least twice "
            "'train.tuning.heartbeat_interval'",
        ),
        ({"evalute": {"threshold": 0.3}}, "unknown key 'evalute'; did you mean 'evaluate'"),
        ({"train.augmentation.brightness": 0.8}, "'train.augmentation.brightness' must be in"),
        ({"train.augmentation.blur": -1}, "'train.augmentation.blur' must be in"),
        ({"train.augmentation.aspect": 0.6}, "'train.augmentation.aspect' must be in"),
        ({"train.learning_rate_schedule": "step"}, "'train.learning_rate_schedule' must be one of"),
        ({"train.epochs": None}, "'train.epochs' is missing"),
        (
            {"train.tuning.n_trails": 3},
            "unknown key 'train.tuning.n_trails'; did you mean 'n_trials'",
        ),
        ({"evaluate.threshold": "sensitivity:1.5"}, "'evaluate.threshold' must be youden"),
        ({"evaluate.threshold": "sensitivity:most"}, "'evaluate.threshold' must be youden"),
        ({"evaluate.threshold": 1.0}, "'evaluate.threshold' must be youden"),
        ({"evaluate.threshold": "otsu"}, "'evaluate.threshold' must be youden"),
        ({"evaluate.threshold": True}, "'evaluate.threshold' must be youden"),
        ({"evaluate.threshold": None}, "'evaluate.threshold' is missing"),
        ({"evaluate.bootstrap": 10}, "'evaluate.bootstrap' must be >= 100"),
        ({"evaluate.confidence": 1.5}, "'evaluate.confidence' must be in"),
        ({"evaluate.alias": "v2"}, "'evaluate.alias' must be a name"),
        ({"evaluate.alias": "my alias"}, "'evaluate.alias' must be a name"),
        ({"evaluate.thresold": 0.5}, "unknown key 'evaluate.thresold'; did you mean 'threshold'"),
        # Patience that could never stop the fit early (Keras stops after `patience` epochs in
        # a row without a gain, which must end before the last epoch).
        (
            {"train.epochs": 8, "train.early_stopping_patience": 8},
            "'train.early_stopping_patience' \\(8\\) must be below 'train.epochs' - 1",
        ),
        (
            {"train.epochs": 8, "train.early_stopping_patience": 7},
            "'train.early_stopping_patience' \\(7\\) must be below",
        ),
        # A params.yaml from before the preprocess section was split (or `-S +key=...`).
        (
            {"preprocess.image_size": 96},
            "'preprocess.image_size' has moved to 'preprocess.image.size'",
        ),
        ({"preprocess.clahe": False}, "'preprocess.clahe' has moved to 'preprocess.image.clahe'"),
        (
            {"preprocess.max_pixels": 10**6},
            "'preprocess.max_pixels' has moved to 'preprocess.limits.max_pixels'",
        ),
        ({"evaluate.serving_model_name": None}, "'evaluate.serving_model_name' is missing"),
        ({"evaluate.serving_model_name": " "}, "'evaluate.serving_model_name' must be a"),
        ({"evaluate.serving_model_name": "a/b"}, "'evaluate.serving_model_name' must be a"),
        (
            {"evaluate.serving_model_name": "pneumonia-cnn"},
            "'evaluate.serving_model_name' must differ from 'train.registered_model_name'",
        ),
    ],
)
def test_bad_params_fail_naming_the_key(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write_params(tmp_path, changes))


@pytest.mark.parametrize(
    ("value", "kind", "number"),
    [
        ("youden", "youden", None),
        ("sensitivity:0.95", "sensitivity", 0.95),
        ("sensitivity:1", "sensitivity", 1.0),
        (0.3, "fixed", 0.3),
        ("0.3", "fixed", 0.3),  # how `dvc exp run -S evaluate.threshold=0.3` may arrive
    ],
)
def test_threshold_rules_parse(tmp_path, value, kind, number):
    rule = load_config(write_params(tmp_path, {"evaluate.threshold": value})).evaluate.threshold
    assert (rule.kind, rule.value) == (kind, number)


def test_missing_params_file(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_config(tmp_path / "params.yaml")


def test_dvc_temp_workspace_resolves_to_the_project(tmp_path):
    project = tmp_path / "project"
    (project / ".dvc").mkdir(parents=True)
    workspace = project / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    params = write_params(workspace, {"download.source": "../shared/chest_xray"})
    assert find_project_root(workspace) == project
    config = load_config(params)
    assert config.workspace == workspace
    assert config.paths.images == workspace / "data/raw/images"
    assert config.source_path() == tmp_path / "shared/chest_xray"


@pytest.mark.parametrize(
    "threshold",
    [{"kind": "fixed", "value": 3}, {"kind": "sensitivity"}, {"kind": "youden", "junk": 1}],
)
def test_threshold_given_as_a_mapping_is_refused(tmp_path, threshold):
    with pytest.raises(ConfigError, match=r"'evaluate\.threshold' must be youden"):
        load_config(write_params(tmp_path, {"evaluate.threshold": threshold}))


def test_yaml_names_are_the_python_names(tmp_path):
    """Every key of params.yaml is reachable under the same dotted name in the config object."""
    config = load_config(write_params(tmp_path, {}))

    def leaves(section, prefix):
        for key, value in section.items():
            if isinstance(value, dict):
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}"

    for dotted in leaves(config.params, ""):
        value = config
        for part in dotted.split("."):
            value = getattr(value, part)
        assert value is not None, dotted


def test_check_params_fails_naming_the_key_with_exit_2(tmp_path, capsys):
    params = write_params(tmp_path, {"train.model.dept": 3})
    with pytest.raises(SystemExit) as exit_info:
        main(["check-params", "--params", str(params)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "unknown key 'train.model.dept'; did you mean 'depth'?" in error
    assert "Traceback" not in error


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"paths.images": "../victim"}, "'paths.images' must be a path inside the project"),
        ({"paths.images": "/tmp/victim"}, "'paths.images' must be a path inside the project"),
        ({"paths.reports": "~/reports"}, "'paths.reports' must be a path inside the project"),
        ({"paths.models": "."}, "'paths.models' must be a path inside the project"),
        ({"paths.models": "data/../.."}, "'paths.models' must be a path inside the project"),
        (
            {"paths.models": "data/raw/images/models"},
            "'paths.models' .* must not be inside 'paths.images'",
        ),
        (
            {"train.tuning.storage": "sqlite:////tmp/study.db"},
            "'train.tuning.storage' must keep a SQLite study inside the project",
        ),
        (
            {"train.tuning.storage": "sqlite:///../study.db"},
            "'train.tuning.storage' must keep a SQLite study inside the project",
        ),
    ],
)
def test_output_paths_outside_the_project_are_refused(tmp_path, changes, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write_params(tmp_path, changes))


def test_an_output_path_that_a_link_takes_outside_is_refused(tmp_path):
    params = write_params(tmp_path / "project", {})
    victim = tmp_path / "victim"
    victim.mkdir()
    (tmp_path / "project" / "data" / "raw").mkdir(parents=True)
    (tmp_path / "project" / "data" / "raw" / "images").symlink_to(victim)
    with pytest.raises(ConfigError, match=r"'paths\.images' .* through a symbolic link, outside"):
        load_config(params)
