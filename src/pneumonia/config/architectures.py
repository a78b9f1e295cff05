"""The architecture names `train.model.architecture` takes: the one registry that the schema
(which names it accepts, which minimum image size it checks) and model.backbones (which Keras
application it builds for each) both read.

`cnn` is the project's own network (model.network), trained from scratch; the others are Keras
Applications backbones (model.backbones), each with Keras's own smallest input side.
"""

from __future__ import annotations

from typing import Literal

CNN = "cnn"
# Each backbone and its smallest input side, in the order the schema's messages list them.
BACKBONE_MIN_IMAGE_SIZE = {
    "densenet121": 32,
    "efficientnetv2b0": 32,
    "resnet50v2": 32,
    "convnext_tiny": 32,
    "mobilenetv3small": 32,
}
ARCHITECTURES = (CNN, *BACKBONE_MIN_IMAGE_SIZE)
Architecture = Literal[ARCHITECTURES]  # type: ignore[valid-type]  # built from the registry

# train.model.weights' two words (anything else is a weights file): Keras's ImageNet download
# and cache, or random weights.
IMAGENET, NO_WEIGHTS = "imagenet", "none"
