"""Pretrained Keras Applications backbones, as the CNN's alternative (`train.model.architecture`).

Inside the model, as for the CNN: uint8 grayscale (size, size, 1) in, repeated to three channels,
then the backbone's own input preprocessing, global average pooling, dropout and a float32
sigmoid. So predict, serving and Grad-CAM keep taking raw pixels. Only real layers (no Lambda):
the saved .keras file loads with safe deserialization and through the MLflow pyfunc.

The application is built on the model's tensors (`input_tensor=`), so its layers sit flat in the
model: Grad-CAM finds the backbone's last spatial layer among them, and the layers that are not
this module's own (OWN_LAYERS) are the backbone, frozen and unfrozen by name.

Weights: `imagenet` goes through Keras's own download and cache (`$KERAS_HOME/models`, else
`~/.keras/models`, the files and hashes of keras.applications), so a filled cache works offline;
`none` is random; anything else is a path to a weights file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
from keras import layers
from keras.src.applications import convnext, densenet, efficientnet_v2, mobilenet_v3, resnet

from pneumonia.config import BACKBONE_MIN_IMAGE_SIZE, IMAGENET, NO_WEIGHTS, ModelConfig
from pneumonia.contracts.files import file_sha256

# WeightsError is defined with the file checks; it is imported from here as before.
from pneumonia.model.weights_file import WeightsError, check_weights_file

# This module's layers around the backbone: everything else in a backbone model is the backbone.
OWN_LAYERS = (
    "image",
    "pixels",
    "to_rgb",
    "imagenet_scale",
    "imagenet_normalization",
    "pool",
    "dropout",
    "pneumonia",
)
# torch-mode preprocessing (keras.applications.imagenet_utils), which DenseNet expects.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Backbone:
    constructor: Callable[..., keras.Model]
    # "builtin": the application rescales 0-255 floats itself (include_preprocessing);
    # "torch": scale to [0, 1], then ImageNet mean and std; "tf": scale to [-1, 1].
    preprocessing: str
    # The ImageNet weights without the classifier top, as the application's own get_file call
    # names, locates and checks them.
    weights_file: str
    weights_url: str
    weights_hash: str | None


def _backbone(constructor, preprocessing: str, url: str, file_hash: str | None) -> Backbone:
    return Backbone(constructor, preprocessing, url.rsplit("/", 1)[1], url, file_hash)


_APPLICATIONS = {
    "densenet121": _backbone(
        keras.applications.DenseNet121,
        "torch",
        densenet.DENSENET121_WEIGHT_PATH_NO_TOP,
        # densenet.py passes this md5 inline (no module constant holds it).
        "30ee3e1110167f948a6b9946edeeb738",
    ),
    "efficientnetv2b0": _backbone(
        keras.applications.EfficientNetV2B0,
        "builtin",
        f"{efficientnet_v2.BASE_WEIGHTS_PATH}efficientnetv2-b0_notop.h5",
        efficientnet_v2.WEIGHTS_HASHES["b0"][1],
    ),
    "resnet50v2": _backbone(
        keras.applications.ResNet50V2,
        "tf",
        f"{resnet.BASE_WEIGHTS_PATH}resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        resnet.WEIGHTS_HASHES["resnet50v2"][1],
    ),
    "convnext_tiny": _backbone(
        keras.applications.ConvNeXtTiny,
        "builtin",
        f"{convnext.BASE_WEIGHTS_PATH}convnext_tiny_notop.h5",
        convnext.WEIGHTS_HASHES["convnext_tiny"][1],
    ),
    "mobilenetv3small": _backbone(
        keras.applications.MobileNetV3Small,
        "builtin",
        f"{mobilenet_v3.BASE_WEIGHT_PATH}weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5",
        mobilenet_v3.WEIGHTS_HASHES["small_224_1.0_float"][1],
    ),
}
# The names are the registry's (config.architectures, which the schema reads too), in its order:
# a backbone the schema accepts and nothing builds fails here, at import, not in a trial.
BACKBONES = {name: _APPLICATIONS[name] for name in BACKBONE_MIN_IMAGE_SIZE}


@dataclass(frozen=True)
class WeightsFile:
    """The file a backbone's weights come from, and its sha256 (logged and on the model card)."""

    setting: str  # train.model.weights as written
    path: Path
    sha256: str


def weights_params(weights: WeightsFile | None) -> dict[str, str]:
    """The weights file's name and sha256, as run params (none for random weights)."""
    if weights is None:
        return {}
    return {"weights_file": weights.path.name, "weights_sha256": weights.sha256}


def weights_record(model: ModelConfig, weights: WeightsFile | None) -> dict[str, Any]:
    """The model card's account of where the weights started: the architecture, the
    train.model.weights setting, and the file's name and sha256 (None for random weights)."""
    return {
        "architecture": model.architecture,
        "setting": model.weights,
        "file": None if weights is None else weights.path.name,
        "sha256": None if weights is None else weights.sha256,
    }


def keras_cache_dir() -> Path:
    """Where keras.utils.get_file keeps models: $KERAS_HOME/models, else ~/.keras/models (Keras
    reads KERAS_HOME once at import; read here at call time, so the same rule is testable)."""
    home = os.environ.get("KERAS_HOME")
    if not home:
        base = os.path.expanduser("~")
        home = os.path.join(base if os.access(base, os.W_OK) else "/tmp", ".keras")
    return Path(home) / "models"


def resolve_weights(model: ModelConfig, project_root: Path) -> WeightsFile | None:
    """The weights file of train.model.weights, checked before any data is read: None for the
    cnn and for `none`; for `imagenet`, Keras's cached file (downloaded once if missing); else
    the named file (a relative path is under the project root), checked within bounds and
    against the backbone from its metadata (model.weights_file) before Keras reads any of it."""
    if not model.is_backbone or model.weights == NO_WEIGHTS:
        return None
    if model.weights == IMAGENET:
        path = imagenet_weights(model.architecture)
    else:
        path = Path(os.path.expanduser(model.weights))
        path = path if path.is_absolute() else project_root / path
        if not path.is_file():
            raise WeightsError(
                f"params.yaml: 'train.model.weights' names {path}, which is not a file; give "
                "the path of a weights file (a Keras Applications .h5, or a .weights.h5 saved "
                f"from keras.applications), or use imagenet or none"
            )
        if not path.name.endswith(".h5"):
            raise WeightsError(
                f"params.yaml: 'train.model.weights' {path} is not a .h5 weights file; give a "
                "Keras Applications .h5 (as keras caches the imagenet ones) or a .weights.h5"
            )
        backbone = BACKBONES[model.architecture]
        # Weight shapes do not depend on the input size without the top: the smallest is built.
        size = BACKBONE_MIN_IMAGE_SIZE[model.architecture]
        check_weights_file(
            path,
            lambda: _application(backbone, None, size, None),
            f"{backbone.constructor.__name__}(include_top=False)",
        )
    return WeightsFile(model.weights, path, file_sha256(path))


def imagenet_weights(architecture: str) -> Path:
    """Keras's own cached ImageNet file for the backbone (no top), fetched with
    keras.utils.get_file when missing; without network and cache, a WeightsError with the fix."""
    backbone = BACKBONES[architecture]
    cache = keras_cache_dir()
    # get_file re-downloads a cached file whose hash is not Keras's: say which case failed.
    state = (
        "is in the Keras cache but not the file Keras expects (its hash differs)"
        if (cache / backbone.weights_file).is_file()
        else "is not in the Keras cache"
    )
    try:
        return Path(
            keras.utils.get_file(
                backbone.weights_file,
                backbone.weights_url,
                cache_subdir="models",
                cache_dir=str(cache.parent),
                file_hash=backbone.weights_hash,
            )
        )
    except Exception as error:  # get_file raises a bare Exception for a failed download
        detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        fetch = (
            f'python -c "import keras; keras.applications.{backbone.constructor.__name__}'
            "(include_top=False, weights='imagenet')\""
        )
        raise WeightsError(
            f"params.yaml: 'train.model.weights' is imagenet, but {cache / backbone.weights_file} "
            f"{state} and could not be downloaded ({detail}). Fetch it on a "
            f"machine with network ({fetch}, or download {backbone.weights_url}) and copy it to "
            f"{cache}/ (KERAS_HOME sets the folder), or set 'train.model.weights' to the path "
            "of that file"
        ) from None


def _preprocessed(x: keras.KerasTensor, preprocessing: str) -> keras.KerasTensor:
    if preprocessing == "torch":
        x = layers.Rescaling(1.0 / 255.0, name="imagenet_scale")(x)
        return layers.Normalization(
            mean=IMAGENET_MEAN,
            variance=[std**2 for std in IMAGENET_STD],
            name="imagenet_normalization",
        )(x)
    if preprocessing == "tf":
        return layers.Rescaling(1.0 / 127.5, offset=-1.0, name="imagenet_scale")(x)
    return x  # the application's include_preprocessing takes 0-255


def _application(
    backbone: Backbone, x: keras.KerasTensor | None, image_size: int, weights: Any
) -> keras.Model:
    arguments: dict[str, Any] = {"include_top": False, "weights": weights}
    if x is None:
        arguments["input_shape"] = (image_size, image_size, 3)
    else:
        arguments["input_tensor"] = x
    if backbone.preprocessing == "builtin":
        arguments["include_preprocessing"] = True
    return backbone.constructor(**arguments)


def build_backbone_model(
    image_size: int, model: ModelConfig, weights: WeightsFile | None = None
) -> keras.Model:
    """uint8 (size, size, 1) in, probability of pneumonia out, the backbone in between."""
    if not model.is_backbone:
        raise ValueError(f"{model.architecture!r} is not a backbone")
    if model.weights != NO_WEIGHTS and weights is None:
        raise ValueError(
            f"train.model.weights is {model.weights!r}: resolve it first (resolve_weights)"
        )
    backbone = BACKBONES[model.architecture]
    inputs = keras.Input(shape=(image_size, image_size, 1), dtype="uint8", name="image")
    # A cast to float (0-255); the grey channel is then repeated, as ImageNet models take RGB.
    x = layers.Rescaling(1.0, name="pixels")(inputs)
    x = layers.Concatenate(name="to_rgb")([x, x, x])
    x = _preprocessed(x, backbone.preprocessing)
    # A Keras Applications .h5 loads through the application itself (by layer order, as Keras
    # loads its ImageNet files); a Keras 3 .weights.h5 is matched by name, so it is loaded into a
    # stand-alone copy of the application and its weights taken over in order.
    legacy = weights is not None and not weights.path.name.endswith(".weights.h5")
    try:
        application = _application(backbone, x, image_size, str(weights.path) if legacy else None)
    except (ValueError, OSError) as error:  # Keras's message for a file of another model
        if not legacy:
            raise
        raise WeightsError(
            f"params.yaml: 'train.model.weights' ({weights.setting}): {weights.path} does not fit "
            f"{backbone.constructor.__name__}(include_top=False) "
            f"({str(error).splitlines()[0] if str(error) else 'no detail'})"
        ) from None
    if weights is not None and not legacy:
        _load_weights_file(backbone, application, image_size, weights.path)
    x = layers.GlobalAveragePooling2D(name="pool")(application.output)
    x = layers.Dropout(model.dropout, name="dropout")(x)
    # float32 output even under mixed precision, so the sigmoid and the loss stay stable.
    outputs = layers.Dense(1, activation="sigmoid", dtype="float32", name="pneumonia")(x)
    network = keras.Model(inputs, outputs, name=f"pneumonia_{model.architecture}")
    _rename_automatic_layers(network, model.architecture)
    return network


def _weighted_layers(model: keras.Model) -> list[keras.layers.Layer]:
    return [layer for layer in model.layers if layer.weights]


def _load_weights_file(
    backbone: Backbone, application: keras.Model, image_size: int, path: Path
) -> None:
    reference = _application(backbone, None, image_size, None)
    try:
        reference.load_weights(path)
    except Exception as error:  # Keras raises several kinds for a file of another model
        raise WeightsError(
            f"params.yaml: 'train.model.weights' {path} does not fit "
            f"{backbone.constructor.__name__}(include_top=False) ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else 'no detail'})"
        ) from None
    sources, targets = _weighted_layers(reference), _weighted_layers(application)
    shapes = [[tuple(w.shape) for w in layer.weights] for layer in sources]
    if shapes != [[tuple(w.shape) for w in layer.weights] for layer in targets]:
        raise WeightsError(
            f"params.yaml: 'train.model.weights' {path}: its layers do not match "
            f"{backbone.constructor.__name__}'s"
        )
    for source, target in zip(sources, targets, strict=True):
        target.set_weights(source.get_weights())


def _snake_case(name: str) -> str:
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()


def _rename_automatic_layers(model: keras.Model, architecture: str) -> None:
    """Some applications leave layers and operations (`x + 3`) unnamed; Keras then numbers them
    by how many of the kind this process made before (`activation_17`, `add_9`), so the same
    model would save to different bytes after a tuning study of another length. Numbered within
    the model instead."""
    counts: dict[str, int] = {}
    parts = list(_parts(model))
    taken = {operation.name for operation in parts}
    for operation in parts:
        kind = _snake_case(type(operation).__name__)
        if operation.name in OWN_LAYERS or not re.fullmatch(
            rf"{re.escape(kind)}(_\d+)?", operation.name
        ):
            continue
        counts[kind] = counts.get(kind, 0) + 1
        name = f"{architecture}_{kind}_{counts[kind]}"
        if name in taken:
            raise ValueError(f"layer name {name} is taken in {model.name}")
        operation.name = name


def _parts(model: keras.Model):
    """The layers and operations of a model, and of the models nested in it (ConvNeXt's blocks
    are Sequential models, whose input layers only `_layers` lists)."""
    parts = model.operations if hasattr(model, "operations") else model._layers
    for part in parts:
        yield part
        if isinstance(part, keras.Model):
            yield from _parts(part)


def backbone_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The backbone's layers of a backbone model, input to output."""
    return [layer for layer in model.layers if layer.name not in OWN_LAYERS]


def freeze_backbone(model: keras.Model) -> None:
    """Warm-up: only the head trains; frozen BatchNorm layers run in inference mode (Keras 3)."""
    for layer in backbone_layers(model):
        layer.trainable = False


def unfreeze_backbone(model: keras.Model, unfreeze: str | int, pretrained: bool) -> None:
    """Fine-tuning: all of the backbone, or its top `unfreeze` layers, trainable. Pretrained
    BatchNorm layers stay frozen, so in inference mode, as Keras's transfer-learning guide does:
    their ImageNet statistics are kept, and small batches cannot wreck what was learnt. Random
    weights (`none`) have no statistics to keep, so their BatchNorm layers train."""
    backbone = backbone_layers(model)
    chosen = backbone if unfreeze == "all" else backbone[-int(unfreeze) :]
    # Every layer set, not only the chosen ones: without a warm-up (warmup_epochs 0) nothing has
    # frozen the layers below the top N yet.
    for layer in backbone:
        pretrained_batch_norm = pretrained and isinstance(layer, layers.BatchNormalization)
        layer.trainable = layer in chosen and not pretrained_batch_norm
