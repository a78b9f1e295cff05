"""A weights file (`train.model.weights`), checked before Keras reads any of it.

Keras reads a layer's datasets into memory before it counts or compares them, and guards only
datasets over 4 GiB: a few hundred bytes of HDF5 metadata (a dataset declared, never written)
can make it allocate gigabytes, and a file of another model prints pages of warnings before its
error. So the file is opened here with h5py and only its metadata is read:

1. bounds (`model.weights_bounds`): every object is walked; each dataset's declared size (shape
   x itemsize) must be stored in the file (not a declared-only or fill-value dataset, not past
   its end), within a cap, and compress no more than genuine weights do; the declared total and
   every attribute are capped too; links and data outside the file are refused;
2. structure: the datasets Keras would read, compared by shape (never by value) with the
   variables of the application built with random weights, in the way Keras matches them (a
   Keras 3 `.weights.h5` by saved path, a legacy Keras Applications `.h5` by layer order).

Each problem is one WeightsError naming the file (and the first mismatching layer).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py

from pneumonia.model.weights_bounds import (
    DEFAULT_LIMITS,
    FIX,
    WeightsError,
    WeightsLimits,
    open_weights_file,
)
from pneumonia.model.weights_bounds import (  # re-exported: imported from here
    MAX_DATASET_BYTES as MAX_DATASET_BYTES,
)

LEGACY_LAYER_NAMES = "layer_names"
LEGACY_WEIGHT_NAMES = "weight_names"
KERAS3_LEGACY_LAYERS = "_layer_checkpoint_dependencies"  # Keras 2.13 files (H5IOStore.get)


# Structure: what Keras would read, by shape.


def _mismatch(path: Path, model_name: str, detail: str) -> WeightsError:
    return WeightsError(
        f"{path}: does not fit {model_name}: {detail}; params.yaml's 'train.model.weights' "
        f"must name weights saved from {model_name}, or be imagenet or none"
    )


def _shape(shape: object) -> tuple[int, ...]:
    return tuple(int(side) for side in shape)


def _dataset(group: h5py.Group, name: str) -> h5py.Dataset | None:
    item = group.get(name)
    return item if isinstance(item, h5py.Dataset) else None


def _group(parent: h5py.Group, name: str) -> h5py.Group | None:
    item = parent.get(name) if name else None
    return item if isinstance(item, h5py.Group) else None


def _legacy_names(group: h5py.Group, attribute: str, path: Path) -> list[str]:
    """An attribute's list of names as Keras's legacy loader reads it (split into `name0`,
    `name1`... when it outgrew an object header); its size was checked (check_bounds)."""
    if attribute in group.attrs:
        parts = [group.attrs[attribute]]
    else:
        parts, index = [], 0
        while f"{attribute}{index}" in group.attrs:
            parts.append(group.attrs[f"{attribute}{index}"])
            index += 1
    names = []
    for part in parts:
        for value in part if getattr(part, "ndim", 1) else [part]:
            try:
                names.append(value.decode("utf8") if hasattr(value, "decode") else str(value))
            except UnicodeDecodeError:
                raise WeightsError(
                    f"{path}: its '{attribute}' attribute is not UTF-8 text; {FIX}"
                ) from None
    return names


def check_legacy_structure(handle: h5py.File, path: Path, model: Any, model_name: str) -> None:
    """A legacy `.h5` (the format of Keras's ImageNet files) against `model`, as
    keras.src.legacy.saving.legacy_h5_format.load_weights_from_hdf5_group matches them: the
    file's layers that list weights, in order, against the model's layers with weights."""
    root: h5py.Group = handle
    if LEGACY_LAYER_NAMES not in handle.attrs and "model_weights" in handle:
        root = _group(handle, "model_weights")
        if root is None:
            raise WeightsError(f"{path}: 'model_weights' is not a group; {FIX}")
    if not any(attribute.startswith(LEGACY_LAYER_NAMES) for attribute in root.attrs):
        raise WeightsError(
            f"{path}: no '{LEGACY_LAYER_NAMES}' attribute, so not a Keras weights file of the "
            f"legacy .h5 format (a Keras 3 file's name ends in .weights.h5); {FIX}"
        )
    saved = []
    for name in _legacy_names(root, LEGACY_LAYER_NAMES, path):
        group = _group(root, name)
        if group is None:
            raise WeightsError(
                f"{path}: layer '{name}' is listed in '{LEGACY_LAYER_NAMES}' but is not a group "
                f"in the file; {FIX}"
            )
        weight_names = _legacy_names(group, LEGACY_WEIGHT_NAMES, path)
        if weight_names:
            saved.append((name, group, weight_names))
    expected = [layer for layer in model.layers if layer.weights]
    for index, layer in enumerate(expected):
        wanted = [_shape(v.shape) for v in layer.trainable_weights + layer.non_trainable_weights]
        if index >= len(saved):
            raise _mismatch(
                path,
                model_name,
                f"the file has {len(saved)} layers with weights, the model {len(expected)}; "
                f"the first missing is the model's layer #{index} ('{layer.name}')",
            )
        name, group, weight_names = saved[index]
        shapes = []
        for weight_name in weight_names:
            dataset = _dataset(group, weight_name)
            if dataset is None:
                raise WeightsError(
                    f"{path}: layer '{name}' lists weight '{weight_name}', which is not a "
                    f"dataset in the file; {FIX}"
                )
            shapes.append(_shape(dataset.shape))
        if shapes != wanted:
            raise _mismatch(
                path,
                model_name,
                f"layer #{index} with weights, '{name}' in the file, holds shapes {shapes}; "
                f"the model's ('{layer.name}') are {wanted}",
            )
    if len(saved) > len(expected):
        raise _mismatch(
            path,
            model_name,
            f"the file has {len(saved)} layers with weights, the model {len(expected)}; the "
            f"first extra is '{saved[len(expected)][0]}'",
        )
    top = _group(root, "top_level_model_weights")
    if top is not None and _legacy_names(top, LEGACY_WEIGHT_NAMES, path):
        raise _mismatch(path, model_name, "the file holds top-level model weights")


@dataclass(frozen=True)
class SavedObject:
    """An object whose variables Keras 3 saves: its path in the file, its name in the model,
    and its variables' shapes in order (`<path>/vars/0`, `1`...)."""

    path: str
    name: str
    shapes: list[tuple[int, ...]]


def expected_variables(model: Any) -> list[SavedObject]:
    """Where Keras 3 saves each object's variables in a `.weights.h5`, and their shapes: Keras's
    own saving walk, run with a store that records shapes instead of writing values (so paths
    match Keras's, whatever names the layers got)."""
    from keras.src.saving import saving_lib

    class ShapeEntry(dict):
        def __setitem__(self, key: str, value: Any) -> None:
            super().__setitem__(key, _shape(value.shape))

    class ShapeRecorder(saving_lib.H5IOStore):  # the walk accepts only Keras's own stores
        def __init__(self) -> None:
            self.entries: dict[str, tuple[str, ShapeEntry]] = {}

        def __bool__(self) -> bool:
            return True

        def make(self, path: str, metadata: dict | None = None) -> ShapeEntry:
            name = (metadata or {}).get("name", path)
            return self.entries.setdefault(path, (name, ShapeEntry()))[1]

    recorder = ShapeRecorder()
    saving_lib._save_state(
        model, weights_store=recorder, assets_store=None, inner_path="", visited_saveables=set()
    )
    return [
        SavedObject(path, name, [entry[str(index)] for index in range(len(entry))])
        for path, (name, entry) in recorder.entries.items()
    ]


def _saved_variables(handle: h5py.File, path: str) -> h5py.Group | None:
    """The group Keras's H5IOStore.get reads an object's variables from (None: none saved)."""
    if not path:
        return _group(handle, "vars")
    group = _group(handle, path) if path in handle else None
    if group is not None and _group(group, "vars") is not None:
        return _group(group, "vars")
    if KERAS3_LEGACY_LAYERS in handle:
        old = path.replace("layers", KERAS3_LEGACY_LAYERS)
        group = _group(handle, old) if old in handle else None
        if group is not None:
            return _group(group, "vars")
    return None


def check_keras3_structure(handle: h5py.File, path: Path, model: Any, model_name: str) -> None:
    """A Keras 3 `.weights.h5` against `model`, as keras.src.saving.saving_lib loads it: for
    each object the model saves, as many variables under its path, of its shapes."""
    for saved in expected_variables(model):
        group = _saved_variables(handle, saved.path)
        keys = list(group.keys()) if group is not None else []
        where = f"'{saved.path or '/'}' (the model's {saved.name})"
        if len(keys) != len(saved.shapes):
            raise _mismatch(
                path,
                model_name,
                f"{where} holds {len(keys)} variable(s) in the file, the model {len(saved.shapes)}",
            )
        for index, shape in enumerate(saved.shapes):
            dataset = _dataset(group, str(index))
            if dataset is None:
                raise _mismatch(path, model_name, f"{where} has no variable {index} in the file")
            if _shape(dataset.shape) != shape:
                raise _mismatch(
                    path,
                    model_name,
                    f"{where} variable {index} has shape {_shape(dataset.shape)} in the file, "
                    f"the model's is {shape}",
                )


def check_weights_file(
    path: Path,
    build_reference: Callable[[], Any],
    model_name: str,
    limits: WeightsLimits = DEFAULT_LIMITS,
) -> None:
    """The file within bounds, before anything builds a model or reads data; then its structure
    against `build_reference()` (the application with random weights), by the format its name
    says: `.weights.h5` Keras 3, else a legacy `.h5`."""
    with open_weights_file(path, limits) as handle:
        reference = build_reference()
        if path.name.endswith(".weights.h5"):
            check_keras3_structure(handle, path, reference, model_name)
        else:
            check_legacy_structure(handle, path, reference, model_name)
