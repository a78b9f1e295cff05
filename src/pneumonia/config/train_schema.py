"""The schema of params.yaml's `train` section: the network, the optimizer, the fine-tuning of a
backbone, augmentation, and the Optuna study with its search space."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from pneumonia.config.architectures import CNN, NO_WEIGHTS, Architecture
from pneumonia.config.fields import (
    MAX_SEED,
    MAX_STUDY_NAME,
    ModelName,
    Name,
    Pair,
    PairWithin,
    Section,
    Seed,
    Unfreeze,
    inside_project,
    printable,
)
from pneumonia.config.messages import FieldError, shown

MAX_ENSEMBLE = 10
# An Optuna storage URL of a SQLite file; `sqlite:///:memory:` is a study in memory.
SQLITE_PREFIX = "sqlite:///"


class ModelConfig(Section):
    """The network: the project's cnn, or a Keras Applications backbone."""

    architecture: Annotated[
        Architecture,
        Field(
            description="`cnn` (this project's network, trained from scratch; fits a 2-core CPU) "
            "or a Keras Applications backbone; see [Pretrained backbones](transfer-learning.md)"
        ),
    ]
    weights: Annotated[
        Name,
        Field(
            description="a backbone's starting weights: `none` (random), `imagenet` (Keras's "
            "download and cache) or a path to a weights file; only `none` for `cnn`"
        ),
    ]
    # The cnn's own; a backbone ignores them.
    depth: Annotated[
        int,
        Field(
            ge=1,
            le=7,
            description="cnn only: convolution blocks, each halving the resolution; 5 chosen on "
            "val with the acquisition-shift check (`docs/experiments.md`)",
        ),
    ]
    base_filters: Annotated[
        int,
        Field(
            ge=1,
            le=512,
            description="cnn only: filters of the first block, doubled per block up to 8x",
        ),
    ]
    convolution: Annotated[
        Literal["plain", "separable"], Field(description="cnn only: the blocks' convolutions")
    ]
    dropout: Annotated[
        float, Field(ge=0, le=0.95, description="before the classifier (both kinds)")
    ]

    @property
    def is_backbone(self) -> bool:
        return self.architecture != CNN

    @model_validator(mode="after")
    def _weights_fit_architecture(self) -> ModelConfig:
        if not self.is_backbone and self.weights != NO_WEIGHTS:
            raise FieldError(
                "weights",
                f"must be none for architecture cnn (trained from scratch), got "
                f"{shown(self.weights)}; pretrained weights need a backbone such as "
                "'train.model.architecture: densenet121'",
            )
        return self


class FineTuningConfig(Section):
    """A backbone's two phases, Keras's transfer-learning recipe (the cnn ignores them): warm-up
    with the backbone frozen, then fine-tuning with `unfreeze` of it trainable, each keeping its
    best epoch by val AUC (and stopped early as `train.early_stopping_patience` says)."""

    warmup_epochs: Annotated[
        int,
        Field(
            ge=0,
            description="backbone only: epochs with the backbone frozen, the head trained at "
            "`train.optimizer.learning_rate` (0 skips the warm-up)",
        ),
    ]
    learning_rate: Annotated[
        float,
        Field(
            gt=0,
            le=1,
            description="backbone only: learning rate of the fine-tuning phase, which trains "
            "the unfrozen layers for `train.epochs` epochs",
        ),
    ]
    unfreeze: Annotated[
        Unfreeze,
        Field(
            description="backbone only: `all`, or N, the top N layers of the backbone trainable "
            "in fine-tuning (pretrained BatchNorm stays frozen)"
        ),
    ]


class OptimizerConfig(Section):
    """The optimizer of every fit."""

    name: Annotated[Literal["adam", "rmsprop"], Field(description="Keras optimizer")]
    learning_rate: Annotated[
        float,
        Field(gt=0, le=1, description="learning rate (a backbone's: of its warm-up phase)"),
    ]
    weight_decay: Annotated[
        float, Field(ge=0, le=1, description="decoupled weight decay (0 = none)")
    ]
    rho: Annotated[float, Field(ge=0, le=0.9999, description="RMSprop only")]
    momentum: Annotated[float, Field(ge=0, le=0.9999, description="RMSprop only")]


class Hyperparameters(Section):
    """What one training run (a trial, or the final fit) is configured with; TrainConfig holds
    these fields as train's fixed hyperparameters."""

    model: ModelConfig
    optimizer: OptimizerConfig
    batch_size: Annotated[int, Field(ge=1, description="images per training batch")]
    fine_tuning: FineTuningConfig

    def flat(self) -> dict[str, Any]:
        """`model.architecture`, `optimizer.name`, ..., `batch_size`: the names MLflow logs,
        only those that apply (the cnn's shape, or a backbone's fine-tuning)."""
        values = {
            **{f"model.{key}": value for key, value in self.model.model_dump().items()},
            **{f"optimizer.{key}": value for key, value in self.optimizer.model_dump().items()},
            "batch_size": self.batch_size,
        }
        if self.model.is_backbone:
            for key in CNN_ONLY:
                del values[f"model.{key}"]
            values.update(
                {
                    f"fine_tuning.{key}": value
                    for key, value in self.fine_tuning.model_dump().items()
                }
            )
        if self.optimizer.name != "rmsprop":
            del values["optimizer.rho"], values["optimizer.momentum"]
        return values


# The model params that only the cnn reads.
CNN_ONLY = ("depth", "base_filters", "convolution")


class AugmentationConfig(Section):
    """Applied on the fly to train batches, seeded; 0 turns each one off."""

    rotation: Annotated[
        float, Field(ge=0, le=0.5, description="random rotation, a fraction of a full turn")
    ]
    shift: Annotated[float, Field(ge=0, le=0.5, description="random shift, a fraction of the side")]
    zoom: Annotated[float, Field(ge=0, le=0.9, description="random zoom")]
    contrast: Annotated[float, Field(ge=0, le=0.9, description="random contrast")]
    brightness: Annotated[
        float,
        Field(ge=0, le=0.5, description="exposure jitter: the fraction of 255 added or subtracted"),
    ]
    blur: Annotated[
        float,
        Field(ge=0, le=5, description="the largest Gaussian blur sigma, pixels (reflect-padded)"),
    ]
    aspect: Annotated[
        float,
        Field(
            ge=0,
            le=0.5,
            description="width-only zoom, so the chest's aspect ratio varies (the published copy "
            "stretched every original to a square)",
        ),
    ]


Optimizers = Annotated[tuple[Literal["adam", "rmsprop"], ...], Field(strict=False, min_length=1)]
Choices = Annotated[tuple[Annotated[int, Field(ge=1)], ...], Field(strict=False, min_length=1)]


class SearchSpace(Section):
    """What Optuna draws each trial from: a list of choices, or a `[low, high]` range. Which
    hyperparameter each sets, on which scale and when, is model.tuning.search_space's
    SEARCH_SPACE, in the order of the draws."""

    optimizer: Annotated[Optimizers, Field(description="the optimizers a trial picks from")]
    learning_rate: Annotated[
        Pair,
        AfterValidator(PairWithin(1e-7, 1.0)),
        Field(description="the learning rate's range"),
    ]
    batch_size: Annotated[Choices, Field(description="the batch sizes")]
    dropout: Annotated[
        Pair,
        AfterValidator(PairWithin(0.0, 0.95)),
        Field(description="the dropout's range"),
    ]
    weight_decay: Annotated[
        Pair,
        AfterValidator(PairWithin(1e-12, 1.0)),
        Field(description="the weight decay's range"),
    ]
    rho: Annotated[
        Pair, AfterValidator(PairWithin(0.0, 0.9999)), Field(description="RMSprop's rho range")
    ]
    momentum: Annotated[
        Pair,
        AfterValidator(PairWithin(0.0, 0.9999)),
        Field(description="RMSprop's momentum range"),
    ]
    base_filters: Annotated[
        Choices,
        Field(
            description="the first block's filters; 32 doubles the final fit: no room in the "
            "30-minute CPU budget"
        ),
    ]
    fine_tuning_learning_rate: Annotated[
        Pair,
        AfterValidator(PairWithin(1e-9, 1.0)),
        Field(
            description="the fine-tuning phase's learning rate range (in place of `base_filters`)"
        ),
    ]
    unfreeze: Annotated[
        tuple[Unfreeze, ...],
        Field(
            strict=False,
            min_length=1,
            description="the unfrozen depths",
        ),
    ]


class TuningConfig(Section):
    """The Optuna study. A worker killed mid-trial leaves its trial RUNNING; once the trial's
    heartbeat is `grace_period` seconds old, the next worker fails it and queues its params
    again. Every worker of a study must agree on both."""

    n_trials: Annotated[
        int,
        Field(
            ge=0,
            description="Optuna trials (0 skips tuning: the fixed hyperparameters are used, or "
            "the named study's best trial)",
        ),
    ]
    timeout: Annotated[int, Field(ge=0, description="seconds for the whole study (0 = no limit)")]
    epochs: Annotated[int, Field(ge=1, description="epochs per trial")]
    pruner: Annotated[
        Literal["median", "hyperband", "none"], Field(description="Optuna pruner of the trials")
    ]
    storage: Annotated[
        str,
        Field(
            description="any Optuna RDB URL; a SQLite file's path is relative to the project "
            "root and must stay inside it"
        ),
    ]
    study_name: Annotated[
        str,
        Field(
            max_length=MAX_STUDY_NAME,
            description="empty = a fresh study per run; a name resumes or shares a study",
        ),
        AfterValidator(printable),
    ]
    heartbeat_interval: Annotated[
        int, Field(ge=1, description="seconds between a running trial's heartbeats")
    ]
    grace_period: Annotated[
        int,
        Field(
            ge=1,
            description="seconds without a heartbeat before another worker fails the trial (at "
            "least 2x `heartbeat_interval`)",
        ),
    ]
    search_space: SearchSpace

    @field_validator("storage")
    @classmethod
    def _rdb_url(cls, value: str) -> str:
        if "://" not in value:
            raise ValueError(
                "must be an Optuna RDB URL such as sqlite:///studies/optuna.db or "
                "postgresql://user@host/db"
            )
        if value.startswith(SQLITE_PREFIX) and value[len(SQLITE_PREFIX) :] != ":memory:":
            try:
                inside_project(value[len(SQLITE_PREFIX) :])
            except ValueError:
                raise ValueError(
                    "must keep a SQLite study inside the project (sqlite:///studies/optuna.db, "
                    "relative to the project root); share a study across machines through a "
                    f"database server (postgresql://user@host/db), got {shown(value)}"
                ) from None
        return value

    @model_validator(mode="after")
    def _grace_covers_heartbeats(self) -> TuningConfig:
        # Every worker judges the others' trials by its own grace period: a grace shorter than
        # two heartbeats would fail live trials whose heartbeat is merely a little late.
        if self.grace_period < 2 * self.heartbeat_interval:
            raise FieldError(
                "grace_period",
                f"({self.grace_period}) must be at least twice 'train.tuning.heartbeat_interval' "
                f"({self.heartbeat_interval})",
            )
        return self


class WeightAveragingConfig(Section):
    """An average of the weights of the final fit (each member's; never the Optuna trials', so
    a study picks the same trial), for a model that depends less on its seed (issue 28)."""

    method: Annotated[
        Literal["none", "ema", "swa"],
        Field(
            description="`none`: the best epoch's weights, as without this block. `ema`: the "
            "optimizer's exponential moving average of the trainable weights (Keras's "
            "`use_ema`); each epoch's val figures, the best epoch early stopping keeps and the "
            "saved model are the averaged weights'; batch-norm moving statistics are not "
            "averaged (they stay those of the raw weights); a backbone averages in its "
            "fine-tuning phase only. `swa`: the equal-weight mean of all the weights at the end "
            "of each of the last `swa_epochs` epochs, replacing the best epoch (so "
            "`train.early_stopping_patience` must be 0), then the batch-norm moving statistics "
            "recomputed as the plain mean of the batch statistics over one pass of the train "
            "images, unaugmented. A backbone averages the last epochs of its fine-tuning phase "
            "(which it then keeps, whatever the warm-up scored) and recomputes only the batch "
            "norm layers that trained: pretrained ones stay frozen with their ImageNet "
            "statistics"
        ),
    ]
    ema_momentum: Annotated[
        float,
        Field(
            gt=0,
            lt=1,
            description="`ema` only: the average's momentum per training step (0.99: about the "
            "last 100 steps)",
        ),
    ]
    swa_epochs: Annotated[
        int,
        Field(
            ge=1,
            description="`swa` only: the last epochs averaged, at most `train.epochs`",
        ),
    ]


class _FinalFit(Section):
    """train's keys above the fixed hyperparameters (a base of TrainConfig, so that its fields
    come first, in params.yaml's order)."""

    seed: Annotated[
        Seed,
        Field(
            description="seeds Python, NumPy, TensorFlow, the sampler, shuffling and augmentation"
        ),
    ]
    epochs: Annotated[
        int,
        Field(
            ge=1,
            description="epochs of the final fit with the chosen hyperparameters, at most (early "
            "stopping)",
        ),
    ]
    ensemble: Annotated[
        int,
        Field(
            ge=1,
            le=MAX_ENSEMBLE,
            description="members of the final fit, each a full fit, seeded `train.seed`, `+1`, "
            "...; their probabilities averaged",
        ),
    ]
    early_stopping_patience: Annotated[
        int,
        Field(
            ge=0,
            description="epochs without a val AUC gain before the final fit stops, fewer than "
            "`train.epochs` - 1; 0 (the default, chosen on val over two seeds) never stops early. "
            "Either way the best epoch's weights are the ones kept, unless "
            "`train.weight_averaging.method` is `swa` (the default), which needs 0",
        ),
    ]
    class_weight: Annotated[
        Literal["balanced", "none"],
        Field(
            description="`balanced` weighs each class by n_samples / (2 * n_class) (pneumonia is "
            "~3x normal in train); `none` weighs them alike"
        ),
    ]
    label_smoothing: Annotated[
        float,
        Field(ge=0, le=0.5, description="binary label smoothing s: targets become 1 - s/2 and s/2"),
    ]
    learning_rate_schedule: Annotated[
        Literal["constant", "cosine"],
        Field(
            description="`cosine`: the learning rate decays to 0 over each fit's epochs (Optuna "
            "trials and the final fit alike)"
        ),
    ]
    weight_averaging: WeightAveragingConfig
    mixed_precision: Annotated[
        Literal["auto", "off"], Field(description="`auto`: mixed float16 on a GPU")
    ]
    registered_model_name: Annotated[
        ModelName, Field(description="MLflow registry name of the trained Keras model")
    ]


# Bases in this order give params.yaml's order of keys (the last base's fields come first), which
# the did-you-mean lists and `pneumonia check-params` prints.
class TrainConfig(Hyperparameters, _FinalFit):
    """Training: the final fit; the fixed hyperparameters (`model`, `optimizer`, `batch_size`,
    `fine_tuning`), used as they are when `train.tuning.n_trials` is 0, and as the first trial;
    augmentation; and the Optuna study."""

    augmentation: AugmentationConfig
    tuning: TuningConfig

    @model_validator(mode="after")
    def _patience_can_stop(self) -> TrainConfig:
        # Keras stops once `patience` epochs in a row bring no gain; that can happen before the
        # last epoch only when patience < epochs - 1. A larger one is a dead param.
        patience = self.early_stopping_patience
        if patience and patience >= self.epochs - 1:
            raise FieldError(
                "early_stopping_patience",
                f"({patience}) must be below 'train.epochs' - 1 ({self.epochs - 1}) to ever stop "
                "the fit early; use 0 to train every epoch (the best one is kept anyway)",
            )
        return self

    @model_validator(mode="after")
    def _weight_averaging_fits(self) -> TrainConfig:
        averaging = self.weight_averaging
        if averaging.method != "swa":
            return self
        # SWA's average replaces the best epoch that early stopping would restore: a fit cut
        # short would average epochs that were never meant to be the model.
        if self.early_stopping_patience:
            raise FieldError(
                "weight_averaging.method",
                f"swa needs 'train.early_stopping_patience' 0, got "
                f"{self.early_stopping_patience}: swa averages the last epochs instead of "
                "keeping the best one; set the patience to 0, or use method ema or none",
            )
        if averaging.swa_epochs > self.epochs:
            raise FieldError(
                "weight_averaging.swa_epochs",
                f"({averaging.swa_epochs}) must be at most 'train.epochs' ({self.epochs}): swa "
                "averages the last swa_epochs epochs of the final fit",
            )
        return self

    @model_validator(mode="after")
    def _member_seeds_fit(self) -> TrainConfig:
        # The final fit's members are seeded seed, seed + 1, ..., each within NumPy's range.
        if self.seed + self.ensemble - 1 > MAX_SEED:
            raise FieldError(
                "seed",
                f"({self.seed}) plus 'train.ensemble' - 1 ({self.ensemble - 1}) must be at most "
                f"{MAX_SEED} (NumPy's seed range): the members are seeded seed, seed + 1, ...",
            )
        return self

    @property
    def hyperparameters(self) -> Hyperparameters:
        """The fixed hyperparameters alone, as one training run takes them."""
        return Hyperparameters(
            **{name: getattr(self, name) for name in Hyperparameters.model_fields}
        )
