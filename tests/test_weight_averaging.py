"""train.weight_averaging (issue 28): none leaves the fit as it was; ema trains, validates, keeps
and saves the optimizer's moving average of the weights; swa saves the mean of the last epochs'
weights with batch-norm statistics recomputed on train. Real tiny Keras fits on synthetic
arrays."""

import keras
import mlflow
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from pneumonia.config import ConfigError
from pneumonia.model.dataset import make_dataset
from pneumonia.model.network import ensemble_members, save_model
from pneumonia.model.scoring import score
from pneumonia.model.training import (
    FINAL_VAL_ROC_AUC,
    MONITOR,
    SplitArrays,
    final_fit_figures,
    fit,
    fit_ensemble,
)
from pneumonia.model.weight_averaging import batch_norm_extractor, recompute_batch_norm

from helpers import fixture_train_config

SIDE = 16
BATCH = 8
# What each test sets, so that no params.yaml default changes what it checks.
SMALL = {
    "train.seed": 7,
    "train.epochs": 3,
    "train.ensemble": 1,
    "train.early_stopping_patience": 0,
    "train.learning_rate_schedule": "constant",
    "train.label_smoothing": 0.0,
    "train.mixed_precision": "off",
    "train.model.architecture": "cnn",
    "train.model.weights": "none",
    "train.model.depth": 2,
    "train.model.base_filters": 4,
    "train.model.convolution": "separable",
    "train.batch_size": BATCH,
    "train.optimizer.name": "adam",
    "train.optimizer.learning_rate": 0.01,
}


def small_config(changes: dict | None = None):
    return fixture_train_config({**SMALL, **(changes or {})})


def split(count: int, seed: int) -> SplitArrays:
    """Noisy images whose pneumonia label brightens a central patch: learnable, not trivially."""
    generator = np.random.default_rng(seed)
    labels = np.arange(count) % 2
    images = generator.normal(110, 40, (count, SIDE, SIDE, 1))
    images[:, 4:12, 4:12, 0] += 30 * labels[:, None, None]
    return SplitArrays(np.clip(images, 0, 255).astype(np.uint8), labels)


TRAIN, VAL = split(36, 0), split(20, 1)


def val_figures(model: keras.Model) -> dict[str, float]:
    """The compiled model's loss and AUC on val, in fit's own validation batches."""
    data = make_dataset(VAL.images, VAL.labels, 128, training=False, seed=0)
    return model.evaluate(data, return_dict=True, verbose=0)


class RawWeights(keras.callbacks.Callback):
    """The trainable weights after every training step (the model holds the raw ones then)."""

    def __init__(self):
        super().__init__()
        self.steps: list[list[np.ndarray]] = []

    def on_train_batch_end(self, batch, logs=None):
        self.steps.append([w.numpy().astype(np.float64) for w in self.model.trainable_weights])


class EpochWeights(keras.callbacks.Callback):
    """All the weights at each epoch's end."""

    def __init__(self):
        super().__init__()
        self.epochs: list[list[np.ndarray]] = []

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append([w.astype(np.float64) for w in self.model.get_weights()])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"train.weight_averaging.method": "swa", "train.early_stopping_patience": 1},
            r"'train\.weight_averaging\.method' swa needs 'train\.early_stopping_patience' 0, "
            r"got 1",
        ),
        (
            {"train.weight_averaging.method": "swa", "train.weight_averaging.swa_epochs": 4},
            r"'train\.weight_averaging\.swa_epochs' \(4\) must be at most 'train\.epochs' \(3\)",
        ),
        ({"train.weight_averaging.method": "polyak"}, r"'train\.weight_averaging\.method' must"),
        ({"train.weight_averaging.ema_momentum": 1.0}, r"'train\.weight_averaging\.ema_momentum'"),
        ({"train.weight_averaging.ema_momentum": 0.0}, r"'train\.weight_averaging\.ema_momentum'"),
        ({"train.weight_averaging.swa_epochs": 0}, r"'train\.weight_averaging\.swa_epochs'"),
        ({"train.weight_averaging.average": "ema"}, r"unknown key 'train\.weight_averaging"),
    ],
)
def test_weight_averaging_params_are_checked_at_load(changes, message):
    with pytest.raises(ConfigError, match=message):
        small_config(changes)


def test_swa_settings_are_not_checked_when_swa_is_off():
    # An ema or none block keeps its swa_epochs without a meaning: no epochs count to fit.
    config = small_config(
        {"train.weight_averaging.method": "ema", "train.weight_averaging.swa_epochs": 9}
    )
    assert config.weight_averaging.swa_epochs == 9
    backbone = small_config(
        {"train.weight_averaging.method": "ema", "train.model.architecture": "densenet121"}
    )
    assert backbone.weight_averaging.method == "ema"


def test_the_run_params_log_the_weight_averaging_keys(tmp_path):
    from pneumonia.config import load_config
    from pneumonia.model.training_setup import TrainingSetup
    from pneumonia.tracking.stage import flatten

    from helpers import write_params

    config = load_config(write_params(tmp_path, {"train.weight_averaging.method": "ema"}))
    params = flatten(TrainingSetup(None, TRAIN, VAL).run_params(config))
    assert params["train.weight_averaging.method"] == "ema"
    assert (
        params["train.weight_averaging.ema_momentum"] == config.train.weight_averaging.ema_momentum
    )
    assert "train.weight_averaging.swa_epochs" in params


def test_method_none_fits_exactly_as_without_averaging():
    config = small_config({"train.weight_averaging.method": "none"})
    hyperparameters = config.hyperparameters
    averaged, history = fit(
        hyperparameters,
        TRAIN,
        VAL,
        config,
        epochs=2,
        callbacks=[],
        averaging=config.weight_averaging,
    )
    # averaging=None: the trials' path, which the lever never touches.
    plain, plain_history = fit(hyperparameters, TRAIN, VAL, config, epochs=2, callbacks=[])
    assert averaged.optimizer.use_ema is False
    assert not hasattr(averaged.optimizer, "_model_variables_moving_average")
    # The same optimizer but for the name Keras numbers (adam, adam_1).
    settings, plain_settings = averaged.optimizer.get_config(), plain.optimizer.get_config()
    assert {**settings, "name": None} == {**plain_settings, "name": None}
    for one, other in zip(averaged.get_weights(), plain.get_weights(), strict=True):
        np.testing.assert_array_equal(one, other)
    assert history.history == plain_history.history


def test_ema_keeps_validates_and_ends_with_the_moving_average():
    momentum = 0.8
    config = small_config(
        {"train.weight_averaging.method": "ema", "train.weight_averaging.ema_momentum": momentum}
    )
    raw = RawWeights()
    model, history = fit(
        config.hyperparameters,
        TRAIN,
        VAL,
        config,
        epochs=3,
        callbacks=[raw],
        averaging=config.weight_averaging,
    )
    assert model.optimizer.use_ema and model.optimizer.ema_momentum == momentum
    # Keras' average: the first step's weights, then momentum * average + (1 - momentum) * w.
    expected = raw.steps[0]
    for step in raw.steps[1:]:
        expected = [momentum * a + (1 - momentum) * w for a, w in zip(expected, step, strict=True)]
    averages = model.optimizer._model_variables_moving_average
    for kept, average, wanted in zip(model.trainable_weights, averages, expected, strict=True):
        np.testing.assert_allclose(np.asarray(kept), wanted, rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(kept), np.asarray(average))
    differences = [
        np.abs(np.asarray(kept) - last).max()
        for kept, last in zip(model.trainable_weights, raw.steps[-1], strict=True)
    ]
    assert max(differences) > 1e-3  # the average is not the raw weights
    # The last epoch's logged val figures are the averaged weights' (patience never triggers,
    # nothing restores another epoch), and not the raw weights'.
    figures = val_figures(model)
    assert history.history["val_loss"][-1] == pytest.approx(figures["loss"], rel=1e-5)
    assert history.history[MONITOR][-1] == pytest.approx(figures["auc"], rel=1e-5)
    for variable, value in zip(model.trainable_weights, raw.steps[-1], strict=True):
        variable.assign(value.astype(variable.dtype))
    assert val_figures(model)["loss"] != pytest.approx(history.history["val_loss"][-1], rel=1e-3)


def test_ema_members_keep_their_best_averaged_epoch_and_save_as_plain_keras(tmp_path):
    config = small_config(
        {
            "train.ensemble": 2,
            "train.weight_averaging.method": "ema",
            "train.weight_averaging.ema_momentum": 0.8,
        }
    )
    with mlflow.start_run() as run:
        final = fit_ensemble(config.hyperparameters, TRAIN, VAL, config, run.info.run_id)
    members = ensemble_members(final.model)
    assert len(members) == 2
    for member, history in zip(members, final.histories, strict=True):
        assert member.optimizer.use_ema
        # EarlyStopping kept the best epoch by the averaged weights' val AUC, and what it kept
        # is the averaged weights: their val loss is the one logged at that epoch.
        best = int(np.argmax(history.history[MONITOR]))
        figures = val_figures(member)
        assert figures["auc"] == pytest.approx(history.history[MONITOR][best], rel=1e-5)
        assert figures["loss"] == pytest.approx(history.history["val_loss"][best], rel=1e-5)
    path = tmp_path / "model.keras"
    save_model(final.model, path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(score(loaded, VAL.images), score(final.model, VAL.images))


def test_ema_with_early_stopping_keeps_the_best_averaged_epoch():
    # Stopped early or not, what EarlyStopping restores is the best epoch's averaged weights
    # (a stop before the last epoch leaves Keras' finalize_variable_values the raw ones).
    config = small_config(
        {
            "train.epochs": 6,
            "train.early_stopping_patience": 1,
            "train.weight_averaging.method": "ema",
            "train.weight_averaging.ema_momentum": 0.8,
        }
    )
    with mlflow.start_run() as run:
        final = fit_ensemble(config.hyperparameters, TRAIN, VAL, config, run.info.run_id)
    history = final.histories[0].history
    assert len(history[MONITOR]) < config.epochs  # the case in point: it stopped early
    best = int(np.argmax(history[MONITOR]))
    figures = val_figures(final.model)
    assert figures["loss"] == pytest.approx(history["val_loss"][best], rel=1e-5)
    assert figures["auc"] == pytest.approx(history[MONITOR][best], rel=1e-5)


def bn_moments(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return values.mean(axis=(0, 1, 2)), values.var(axis=(0, 1, 2))


def test_swa_averages_the_last_epochs_and_recomputes_batch_norm_on_train():
    config = small_config(
        {"train.weight_averaging.method": "swa", "train.weight_averaging.swa_epochs": 2}
    )
    snapshots = EpochWeights()
    model, history = fit(
        config.hyperparameters,
        TRAIN,
        VAL,
        config,
        epochs=3,
        callbacks=[snapshots],
        averaging=config.weight_averaging,
    )
    assert len(history.history["loss"]) == 3
    names = [variable.path for variable in model.weights]
    mean = [np.mean(pair, axis=0) for pair in zip(*snapshots.epochs[-2:], strict=True)]
    kernels = [i for i, name in enumerate(names) if "kernel" in name or name.endswith("bias")]
    assert any("conv" in names[i] for i in kernels) and "pneumonia/kernel" in names
    weights = model.get_weights()
    for index in kernels:
        np.testing.assert_allclose(weights[index], mean[index], rtol=1e-6, atol=1e-7)
        assert not np.allclose(weights[index], snapshots.epochs[-1][index], rtol=1e-4)

    # Batch norm statistics: the plain mean over the unshuffled train batches of each batch's
    # mean and biased variance of the layer's input, upstream batch norms on batch statistics.
    rescale, conv1, norm1 = (model.get_layer(n) for n in ("rescale", "block1_conv1", "block1_bn1"))
    conv2, norm2 = model.get_layer("block1_conv2"), model.get_layer("block1_bn2")
    first, second = [], []
    for start in range(0, len(TRAIN.images), BATCH):
        pre1 = np.asarray(conv1(rescale(TRAIN.images[start : start + BATCH])), dtype=np.float64)
        batch_mean, batch_variance = bn_moments(pre1)
        first.append((batch_mean, batch_variance))
        normed = (pre1 - batch_mean) / np.sqrt(batch_variance + norm1.epsilon)
        normed = np.maximum(np.asarray(norm1.gamma) * normed + np.asarray(norm1.beta), 0)
        second.append(bn_moments(np.asarray(conv2(normed.astype(np.float32)), dtype=np.float64)))
    assert len(first) == 5  # 36 images in batches of 8: the short last batch counts too
    for layer, moments in ((norm1, first), (norm2, second)):
        np.testing.assert_allclose(
            np.asarray(layer.moving_mean), np.mean([m for m, _ in moments], axis=0), rtol=1e-4
        )
        np.testing.assert_allclose(
            np.asarray(layer.moving_variance), np.mean([v for _, v in moments], axis=0), rtol=1e-4
        )
    # Not the snapshots' exponential averages of other networks' statistics.
    moving = names.index("block1_bn2/moving_mean")
    assert not np.allclose(weights[moving], mean[moving], rtol=1e-3)


def test_swa_replaces_the_best_epoch_and_its_figures_are_the_saved_models(tmp_path):
    config = small_config(
        {"train.weight_averaging.method": "swa", "train.weight_averaging.swa_epochs": 2}
    )
    with mlflow.start_run() as run:
        final = fit_ensemble(config.hyperparameters, TRAIN, VAL, config, run.info.run_id)
    # The final fit's model is fit's average (no EarlyStopping restored a best epoch over it).
    alone, _ = fit(
        config.hyperparameters,
        TRAIN,
        VAL,
        config,
        epochs=config.epochs,
        callbacks=[],
        averaging=config.weight_averaging,
    )
    for one, other in zip(final.model.get_weights(), alone.get_weights(), strict=True):
        np.testing.assert_array_equal(one, other)
    path = tmp_path / "model.keras"
    save_model(final.model, path)
    loaded = keras.saving.load_model(path)
    scores = score(loaded, VAL.images)
    np.testing.assert_allclose(scores, score(final.model, VAL.images))
    assert np.isfinite(scores).all() and scores.std() > 0
    figures = final_fit_figures(final, TRAIN, VAL)
    assert figures[FINAL_VAL_ROC_AUC] == pytest.approx(roc_auc_score(VAL.labels, scores))
    assert figures["epochs_run"] == config.epochs


class PhaseOptimizers(keras.callbacks.Callback):
    """Whether each phase's (each model.fit's) optimizer keeps an average of the weights."""

    def __init__(self):
        super().__init__()
        self.use_ema: list[bool] = []

    def on_train_begin(self, logs=None):
        self.use_ema.append(bool(self.model.optimizer.use_ema))


def backbone_fit(tmp_path, changes: dict, callback: keras.callbacks.Callback):
    """A tiny random-start mobilenetv3small through `fit`: one warm-up epoch, then fine-tuning
    of every layer, with `changes` on top. Returns the model, its history and the images."""
    from pneumonia.config import load_config
    from pneumonia.model.backbones import resolve_weights

    from helpers import tiny_project_arrays, write_params

    backbone = {
        **{key: value for key, value in SMALL.items() if not key.startswith("train.model.")},
        "preprocess.image.size": 32,
        "train.model.architecture": "mobilenetv3small",
        "train.model.weights": "none",
        "train.fine_tuning.warmup_epochs": 1,
        "train.fine_tuning.unfreeze": "all",
        "train.batch_size": 16,
    }
    loaded = load_config(write_params(tmp_path, {**backbone, **changes}))
    config = loaded.train
    images, labels = tiny_project_arrays(32, 32, 0)
    model, history = fit(
        config.hyperparameters,
        SplitArrays(images, labels),
        SplitArrays(images, labels),
        config,
        epochs=config.epochs,
        callbacks=[callback],
        weights=resolve_weights(config.model, loaded.project_root),
        averaging=config.weight_averaging,
    )
    return model, history, images


def test_a_backbone_averages_in_its_fine_tuning_phase_only(tmp_path):
    phases = PhaseOptimizers()
    changes = {"train.epochs": 1, "train.weight_averaging.method": "ema"}
    model, history, _ = backbone_fit(tmp_path, changes, phases)
    assert phases.use_ema == [False, True]
    assert model.optimizer.use_ema and history.epoch == [0, 1]


class FineTuningEnds(keras.callbacks.Callback):
    """The model's weights, and its batch norm layers' moving means, at each epoch's end."""

    def __init__(self):
        super().__init__()
        self.weights: dict[int, list[np.ndarray]] = {}
        self.moving_means: dict[int, list[np.ndarray]] = {}

    def on_epoch_end(self, epoch, logs=None):
        self.weights[epoch] = [np.asarray(value) for value in self.model.get_weights()]
        self.moving_means[epoch] = [
            np.asarray(layer.moving_mean)
            for layer in self.model.layers
            if isinstance(layer, keras.layers.BatchNormalization)
        ]


def backbone_swa_fit(tmp_path, weights: str):
    ends = FineTuningEnds()
    changes = {
        "train.epochs": 2,
        "train.model.weights": weights,
        "train.weight_averaging.method": "swa",
        "train.weight_averaging.swa_epochs": 2,
    }
    model, history, images = backbone_fit(tmp_path, changes, ends)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    return model, history, ends, norms, images


def test_a_random_backbone_averages_its_fine_tuning_epochs_and_recomputes_its_batch_norm(tmp_path):
    model, history, ends, norms, images = backbone_swa_fit(tmp_path, "none")
    assert history.epoch == [0, 1, 2]  # the warm-up, then the two fine-tuning epochs
    # The mean of the fine-tuning epochs' weights (kept, whatever the warm-up scored), but the
    # batch norm moving statistics, which are recomputed for the average.
    statistics = {id(layer.moving_mean) for layer in norms} | {
        id(layer.moving_variance) for layer in norms
    }
    averaged = [
        (variable, np.mean([ends.weights[1][index], ends.weights[2][index]], axis=0))
        for index, variable in enumerate(model.weights)
        if id(variable) not in statistics
    ]
    for variable, mean in averaged:
        np.testing.assert_allclose(np.asarray(variable), mean, rtol=1e-5, atol=1e-7)
    assert any(
        not np.allclose(ends.weights[0][index], np.asarray(variable))
        for index, variable in enumerate(model.weights)
        if id(variable) not in statistics
    )  # not the warm-up's weights
    recomputed = [np.asarray(layer.moving_mean) for layer in norms]
    assert norms and all(layer.trainable for layer in norms)
    assert not all(
        np.allclose(now, raw) for now, raw in zip(recomputed, ends.moving_means[2], strict=True)
    )
    recompute_batch_norm(model, images, 16)  # the statistics are those of the average already
    for layer, before in zip(norms, recomputed, strict=True):
        np.testing.assert_allclose(np.asarray(layer.moving_mean), before, rtol=1e-4, atol=1e-6)


def test_a_pretrained_backbone_under_swa_keeps_its_frozen_batch_norm_statistics(tmp_path):
    from pneumonia.model.backbones import BACKBONES

    tmp_path.mkdir(exist_ok=True)
    application = BACKBONES["mobilenetv3small"].constructor(
        include_top=False, weights=None, input_shape=(32, 32, 3), include_preprocessing=True
    )
    # Statistics no fresh layer has (those start at mean 0, variance 1), so the check below
    # can tell the file's from a reset or a recomputation.
    generator = np.random.default_rng(0)
    for layer in application.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(generator.normal(size=layer.moving_mean.shape))
            layer.moving_variance.assign(generator.uniform(0.5, 2.0, layer.moving_variance.shape))
    application.save_weights(tmp_path / "start.weights.h5")
    pretrained = {
        layer.name: np.asarray(layer.moving_mean)
        for layer in application.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    }
    _, _, ends, norms, _ = backbone_swa_fit(tmp_path, "start.weights.h5")
    assert norms and not any(layer.trainable for layer in norms)
    for layer, raw in zip(norms, ends.moving_means[2], strict=True):
        # Frozen all along: neither averaged away nor recomputed.
        np.testing.assert_array_equal(np.asarray(layer.moving_mean), raw)
    loaded_means = sorted(np.asarray(layer.moving_mean).sum() for layer in norms)
    assert loaded_means == pytest.approx(sorted(mean.sum() for mean in pretrained.values()))


def test_swa_refuses_before_fitting_a_model_whose_dropout_precedes_a_training_batch_norm():
    inputs = keras.Input((SIDE, SIDE, 1))
    hidden = keras.layers.Conv2D(4, 3)(inputs)
    hidden = keras.layers.Dropout(0.2)(hidden)
    hidden = keras.layers.BatchNormalization()(hidden)
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(hidden)))
    with pytest.raises(ValueError, match=r"'dropout.*' acts only in training .* ema or none"):
        batch_norm_extractor(model)
    model.layers[-3].trainable = False  # a frozen batch norm is not recomputed: nothing to refuse
    norms, extractor = batch_norm_extractor(model)
    assert norms == [] and extractor is None


@pytest.mark.parametrize(
    ("architecture", "weights", "refused"),
    [
        ("efficientnetv2b0", "none", True),  # its blocks' dropout precedes training batch norm
        ("efficientnetv2b0", "imagenet", False),  # pretrained: its batch norm stays frozen
        ("mobilenetv3small", "none", False),
    ],
)
def test_swa_on_a_backbone_it_cannot_recompute_is_refused_before_the_study(
    tmp_path, architecture, weights, refused
):
    from pneumonia.config import ConfigError, load_config
    from pneumonia.model.training import refuse_swa_it_cannot_recompute

    from helpers import write_params

    changes = {
        "preprocess.image.size": 32,
        "train.model.architecture": architecture,
        "train.model.weights": weights,
        "train.weight_averaging.method": "swa",
    }
    config = load_config(write_params(tmp_path, changes))
    if not refused:
        refuse_swa_it_cannot_recompute(32, config.train)
        return
    with pytest.raises(ConfigError, match=r"train\.weight_averaging\.method swa: layer") as caught:
        refuse_swa_it_cannot_recompute(32, config.train)
    assert "use method ema or none" in str(caught.value)
    # The same config with another method is not this check's business.
    ema = load_config(write_params(tmp_path, {**changes, "train.weight_averaging.method": "ema"}))
    refuse_swa_it_cannot_recompute(32, ema.train)
