"""The params.yaml schema: one pydantic model per section, and Params, the whole file.

The one description of every param: its type, its choices, its bounds. Checks that span fields
(depth against image size, tiles against image size) run at validation, so a bad param fails
before any work with a message naming its key. The train section's models are in train_schema.
"""

from __future__ import annotations

import posixpath
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from pneumonia.config.architectures import BACKBONE_MIN_IMAGE_SIZE
from pneumonia.config.fields import (
    MAX_EXPERIMENT_NAME,
    ModelName,
    ProjectPath,
    Section,
    Seed,
    Workers,
    printable,
)
from pneumonia.config.messages import FieldError, shown
from pneumonia.config.train_schema import TrainConfig
from pneumonia.contracts import registry_tags

KAGGLE_SOURCE = "kaggle"
SPLITS = ("train", "val", "test")


class PathsConfig(Section):
    """Where the stages read and write, relative to the folder of `params.yaml`; dvc.yaml
    interpolates this section, so each path is written down once."""

    images: Annotated[
        ProjectPath,
        Field(
            description="normalised layout of the source images (links, or extracted files) "
            "made by download; deleted and re-laid on each run, so no other path may be inside it"
        ),
    ]
    manifest: Annotated[ProjectPath, Field(description="one row per usable image")]
    data_quality: Annotated[
        ProjectPath, Field(description="bad and skipped files, with reasons and counts")
    ]
    split: Annotated[ProjectPath, Field(description="`train.csv`, `val.csv`, `test.csv`")]
    processed: Annotated[
        ProjectPath,
        Field(
            description="preprocessed arrays per split (`<split>/images.npy`, `labels.npy`, "
            "`index.csv`) and `meta.json`"
        ),
    ]
    reports: Annotated[
        ProjectPath,
        Field(description="per-stage summaries (DVC metrics), sample grids and the train history"),
    ]
    models: Annotated[
        ProjectPath,
        Field(
            description="`model.keras` and `model.json` (hyperparameters, preprocessing, "
            "provenance)"
        ),
    ]

    @model_validator(mode="after")
    def _images_hold_nothing_else(self) -> PathsConfig:
        # download deletes and re-creates paths.images: no other output may live in it.
        images = PurePosixPath(posixpath.normpath(self.images))
        for name, value in self.model_dump().items():
            other = PurePosixPath(posixpath.normpath(value))
            if name != "images" and (other == images or images in other.parents):
                raise FieldError(
                    name,
                    f"({shown(value)}) must not be inside 'paths.images' "
                    f"({shown(self.images)}): the download stage deletes and re-creates that "
                    "folder",
                )
        return self


class MlflowConfig(Section):
    """MLflow tracking."""

    experiment: Annotated[
        str,
        Field(
            min_length=1,
            max_length=MAX_EXPERIMENT_NAME,
            description="MLflow experiment of every stage run",
        ),
        AfterValidator(printable),
    ]


class DownloadConfig(Section):
    """The download stage: the dataset from Kaggle or a local copy, checked and laid out as
    `paths.images` and `paths.manifest`."""

    source: Annotated[
        str,
        Field(description="`kaggle`, or a local folder or `.zip` in the Kaggle layout"),
    ]
    kaggle_dataset: Annotated[
        str, Field(pattern=r"^[^/\s]+/[^/\s]+$", description="Kaggle dataset handle")
    ]
    kaggle_version: Annotated[int, Field(ge=1, description="pinned dataset version on Kaggle")]
    workers: Annotated[
        Workers,
        Field(
            description="processes that decode and hash images (0 = all cores; more than the "
            "usable cores are clamped to them)"
        ),
    ]

    @field_validator("source")
    @classmethod
    def _source_given(cls, value: str) -> str:
        if not value:
            raise ValueError(
                "is empty; use 'kaggle' or a path to a local folder or .zip in the Kaggle layout"
            )
        return value

    @property
    def is_kaggle(self) -> bool:
        return self.source == KAGGLE_SOURCE

    @property
    def kaggle_handle(self) -> str:
        return f"{self.kaggle_dataset}/versions/{self.kaggle_version}"


class SplitConfig(Section):
    """The split stage: train, val and test, by patient."""

    val_fraction: Annotated[
        float,
        Field(
            gt=0,
            lt=1,
            description="share of each class's official train+val images put in val (by patient)",
        ),
    ]
    seed: Annotated[Seed, Field(description="seed of the patient shuffle")]


# The input limits' defaults, for what has no params.yaml: a served model logged before the
# limits existed, and `pneumonia predict` run outside a project. The dataset's originals are
# 0.1-3 MB and at most a few megapixels.
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_FILE_BYTES = 50_000_000
# Below this an image cannot hold an X-ray the model can read (it is itself 16-2048 px).
MIN_MAX_PIXELS = 32 * 32


class ImageInput(Section):
    """What the model's input depends on: the image size, the resize and CLAHE. A model records
    these in its card (the image spec) and predict and the served model read them from there;
    dvc.yaml's train stage depends on this sub-section as a whole."""

    size: Annotated[
        int,
        Field(
            ge=16,
            le=2048,
            description="side of the square output, pixels (at least 32 for a backbone)",
        ),
    ]
    resize: Annotated[
        Literal["letterbox", "stretch", "crop"],
        Field(
            description="`letterbox` (keep the aspect, pad black), `stretch`, or `crop` (the "
            "centre square)"
        ),
    ]
    clahe: Annotated[
        bool,
        Field(
            description="contrast-limited adaptive histogram equalisation (on the content, not "
            "the letterbox bars); chosen on val, see `docs/experiments.md`"
        ),
    ]
    clahe_clip_limit: Annotated[float, Field(gt=0, description="CLAHE clip limit")]
    clahe_tile_grid: Annotated[
        int,
        Field(ge=1, description="CLAHE tiles per side (at most `preprocess.image.size`)"),
    ]

    @model_validator(mode="after")
    def _tiles_fit(self) -> ImageInput:
        if self.clahe_tile_grid > self.size:
            raise FieldError(
                "clahe_tile_grid",
                f"must be in [1, 'preprocess.image.size'] ([1, {self.size}]), got "
                f"{self.clahe_tile_grid}",
            )
        return self


class InputLimits(Section):
    """The input limits, checked before decoding wherever an image is read (download,
    preprocess, predict, the served model); they change no pixel of an image they let through."""

    max_pixels: Annotated[
        int,
        Field(
            ge=MIN_MAX_PIXELS,
            description="largest image (width x height, read from the header) that download, "
            "preprocess, predict and the served model decode; see "
            "[Input limits](using-the-model.md#input-limits)",
        ),
    ]
    max_file_bytes: Annotated[
        int,
        Field(
            ge=1,
            description="largest encoded image file (download, predict) or image in a request "
            "(the served model), bytes; the originals are 0.1-3 MB, and the cap keeps a zip "
            "bomb or a padded file off the disk",
        ),
    ]


DEFAULT_LIMITS = InputLimits(max_pixels=DEFAULT_MAX_PIXELS, max_file_bytes=DEFAULT_MAX_FILE_BYTES)


class PreprocessConfig(Section):
    """The preprocess stage: each split's images as the model's input (`image`), the input
    limits (`limits`), and the stage's own knobs, which change no pixel."""

    image: ImageInput
    limits: InputLimits
    workers: Workers
    sample_grid: Annotated[
        int, Field(ge=0, description="images per split in the sample grid PNG (0 = none)")
    ]


_THRESHOLD_PROBLEM = (
    "must be youden, sensitivity:<x> with 0 < x <= 1 (e.g. sensitivity:0.95), or a fixed "
    "threshold in (0, 1); got {value}"
)


class ThresholdRule(BaseModel):
    """How evaluate picks the operating threshold on val: youden, sensitivity or fixed."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    kind: Literal["youden", "sensitivity", "fixed"]
    value: float | None = None

    @model_validator(mode="after")
    def _value_fits_kind(self) -> ThresholdRule:
        fits = {
            "youden": self.value is None,
            "sensitivity": self.value is not None and 0.0 < self.value <= 1.0,
            "fixed": self.value is not None and 0.0 < self.value < 1.0,
        }[self.kind]
        if not fits:
            raise ValueError(_THRESHOLD_PROBLEM.format(value=shown(f"{self.kind}:{self.value}")))
        return self

    @classmethod
    def parse(cls, value: Any) -> ThresholdRule:
        """From params.yaml: `youden`, `sensitivity:<x>`, or a number in (0, 1) (a number may
        arrive as text from `dvc exp run -S`)."""
        if isinstance(value, ThresholdRule):
            return value
        problem = _THRESHOLD_PROBLEM.format(value=shown(value))
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError(problem)
        if isinstance(value, str):
            text = value.strip().lower()
            if text == "youden":
                return cls(kind="youden")
            if text.startswith("sensitivity:"):
                try:
                    target = float(text.split(":", 1)[1])
                except ValueError:
                    raise ValueError(problem) from None
                if not 0.0 < target <= 1.0:
                    raise ValueError(problem)
                return cls(kind="sensitivity", value=target)
            try:
                value = float(text)
            except ValueError:
                raise ValueError(problem) from None
        if not 0.0 < float(value) < 1.0:
            raise ValueError(problem)
        return cls(kind="fixed", value=float(value))

    def __str__(self) -> str:
        if self.kind == "youden":
            return "youden"
        return f"sensitivity:{self.value}" if self.kind == "sensitivity" else str(self.value)


class EvaluateConfig(Section):
    """The evaluate stage: the operating threshold, chosen on val only; the test figures with
    their intervals; Grad-CAM; the registry alias and the served model."""

    threshold: Annotated[
        ThresholdRule,
        Field(
            description="operating threshold, chosen on val: `youden` (max sensitivity + "
            "specificity - 1), `sensitivity:<x>` with 0 < x <= 1 (the highest threshold whose "
            "val sensitivity reaches x), or a fixed number in (0, 1)"
        ),
    ]
    bootstrap: Annotated[
        int,
        Field(ge=100, description="patient-level bootstrap resamples for the confidence intervals"),
    ]
    confidence: Annotated[
        float, Field(ge=0.5, le=0.999, description="confidence level of the intervals")
    ]
    seed: Annotated[Seed, Field(description="seed of the bootstrap")]
    calibration_bins: Annotated[
        int,
        Field(ge=2, description="equal-width probability bins for the calibration curve and ECE"),
    ]
    gradcam_examples: Annotated[
        int,
        Field(
            ge=0,
            description="Grad-CAM overlays per outcome (true/false positive/negative; 0 = none)",
        ),
    ]
    alias: Annotated[
        str,
        Field(description="registry alias set on the evaluated model versions (Keras and served)"),
    ]
    serving_model_name: Annotated[
        ModelName,
        Field(
            description="registered name of the served model (image bytes in); must differ "
            "from `train.registered_model_name`"
        ),
    ]

    @field_validator("threshold", mode="before")
    @classmethod
    def _rule(cls, value: Any) -> ThresholdRule:
        return ThresholdRule.parse(value)

    @field_validator("alias")
    @classmethod
    def _alias(cls, value: str) -> str:
        # One rule with promote's --from/--to (MLflow refuses v3 and latest).
        return registry_tags.check_alias(value)


class Params(Section):
    """The whole of params.yaml; an unknown section (a typo such as `evalute:`) is refused."""

    paths: PathsConfig
    mlflow: MlflowConfig
    download: DownloadConfig
    split: SplitConfig
    preprocess: PreprocessConfig
    train: TrainConfig
    evaluate: EvaluateConfig

    @model_validator(mode="after")
    def _sections_agree(self) -> Params:
        model, size = self.train.model, self.preprocess.image.size
        depth = model.depth
        if model.is_backbone and size < BACKBONE_MIN_IMAGE_SIZE[model.architecture]:
            minimum = BACKBONE_MIN_IMAGE_SIZE[model.architecture]
            raise FieldError(
                "preprocess.image.size",
                f"({size}) is too small for 'train.model.architecture' {model.architecture} "
                f"(needs >= {minimum}, Keras's minimum for it); raise it or use architecture cnn",
            )
        if not model.is_backbone and size < 2**depth:
            raise FieldError(
                "train.model.depth",
                f"{depth} halves the image {depth} times; 'preprocess.image.size' {size} is "
                f"too small (needs >= {2**depth})",
            )
        # One registered name per flavor: promotion compares versions of one kind of model.
        if self.evaluate.serving_model_name == self.train.registered_model_name:
            raise FieldError(
                "evaluate.serving_model_name",
                f"must differ from 'train.registered_model_name' (both "
                f"{shown(self.train.registered_model_name)})",
            )
        return self
