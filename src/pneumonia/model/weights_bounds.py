"""A weights file's bounds, from HDF5 metadata alone, before Keras reads any of it: every object
walked once (links and data outside the file refused), each dataset's declared size stored in the
file, within the caps (WeightsLimits) and compressed no more than genuine weights are; the
declared total and every attribute capped too.

Each problem is one WeightsError naming the file and the fix.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py

from pneumonia.config import ConfigError

# The largest backbone the project supports, ConvNeXtTiny without its top, holds 106 MiB of
# float32 weights, and its largest single weight is 9 MiB (ResNet50V2's is the same).
MAX_TOTAL_BYTES = 512 << 20  # room for float64 or saved optimizer slots, not for a bomb
MAX_DATASET_BYTES = 64 << 20
MAX_FILE_BYTES = MAX_TOTAL_BYTES + (64 << 20)  # and metadata
MAX_ATTRIBUTE_BYTES = 4 << 20  # layer_names of DenseNet121's file: 20 KB
MAX_OBJECTS = 100_000  # groups, datasets and attributes: DenseNet121's legacy file has ~1,500
MAX_CHUNKS = 1_000_000
# Above this size, a dataset that compresses better than this is no trained weight (zero biases,
# which compress very well, are far smaller).
COMPRESSION_CHECK_FLOOR_BYTES = 1 << 20
MAX_COMPRESSION_RATIO = 100
NUMERIC_KINDS = "fiub"


class WeightsError(ConfigError):
    """train.model.weights cannot be had; the message names the file and the fix."""


@dataclass(frozen=True)
class WeightsLimits:
    total_bytes: int = MAX_TOTAL_BYTES
    dataset_bytes: int = MAX_DATASET_BYTES
    file_bytes: int = MAX_FILE_BYTES
    attribute_bytes: int = MAX_ATTRIBUTE_BYTES
    objects: int = MAX_OBJECTS
    chunks: int = MAX_CHUNKS


# The caps above, as the default of every check.
DEFAULT_LIMITS = WeightsLimits()


def _size(count: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} bytes"


FIX = (
    "params.yaml's 'train.model.weights' names it: give a Keras Applications .h5 or a "
    ".weights.h5 saved from keras.applications, or use imagenet or none"
)


def open_weights_file(path: Path, limits: WeightsLimits = WeightsLimits()) -> h5py.File:
    """The file opened read-only with h5py, after its size on disk is checked and with every
    object checked (check_bounds); the caller closes it."""
    file_bytes = os.stat(path).st_size
    if file_bytes > limits.file_bytes:
        raise WeightsError(
            f"{path}: {_size(file_bytes)}, more than a weights file of a supported backbone "
            f"can be ({_size(limits.file_bytes)}); {FIX}"
        )
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise WeightsError(
            f"{path}: not an HDF5 weights file ({_hdf5_reason(error)}); {FIX}"
        ) from None
    try:
        check_bounds(handle, path, file_bytes, limits)
    except BaseException:
        handle.close()
        raise
    return handle


def _hdf5_reason(error: OSError) -> str:
    """HDF5's reason, as the last parenthesis of h5py's message ('Unable to synchronously open
    file (file signature not found)')."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if text.endswith(")") and "(" in text:
        return text[text.rindex("(") + 1 : -1]
    return text


def _walk(handle: h5py.File, path: Path, limits: WeightsLimits) -> Iterator[tuple[str, object]]:
    """(name, object) for the root and every object under it, each once however many hard
    links reach it (so a group linked into itself ends); a soft or external link is refused,
    as Keras refuses them only when it meets them."""
    yield "/", handle
    seen = {h5py.h5o.get_info(handle.id).addr}
    pending: list[tuple[str, h5py.Group]] = [("", handle)]
    links = 0
    while pending:
        prefix, group = pending.pop()
        for key in group:  # link names only, one at a time
            name = f"{prefix}{key}"
            links += 1
            if links > limits.objects:
                raise WeightsError(
                    f"{path}: holds more than {limits.objects:,} objects, far more than a "
                    f"weights file of a supported backbone; {FIX}"
                )
            link = group.get(key, getlink=True)
            if isinstance(link, (h5py.SoftLink, h5py.ExternalLink)):
                kind = "an external" if isinstance(link, h5py.ExternalLink) else "a soft"
                raise WeightsError(
                    f"{path}: '{name}' is {kind} link; a weights file holds its data itself. {FIX}"
                )
            item = group[key]  # its header only
            address = h5py.h5o.get_info(item.id).addr
            if address in seen:
                continue
            seen.add(address)
            yield name, item
            if isinstance(item, h5py.Group):
                pending.append((f"{name}/", item))


def check_bounds(
    handle: h5py.File, path: Path, file_bytes: int, limits: WeightsLimits = WeightsLimits()
) -> None:
    """Every dataset and attribute within the file and the caps, from metadata alone."""
    total = attribute_total = objects = chunks = 0
    for name, item in _walk(handle, path, limits):
        for attribute in item.attrs:
            objects += 1
            declared = _attribute_bytes(item, attribute)
            attribute_total += declared
            if declared > limits.attribute_bytes or attribute_total > limits.file_bytes:
                raise WeightsError(
                    f"{path}: attribute '{attribute}' of '{name}' declares {_size(declared)}, "
                    f"more than a weights file's attributes hold ({_size(limits.attribute_bytes)})"
                    f"; {FIX}"
                )
        objects += 1
        if objects > limits.objects:
            raise WeightsError(
                f"{path}: holds more than {limits.objects:,} objects and attributes, far more "
                f"than a weights file of a supported backbone; {FIX}"
            )
        if not isinstance(item, h5py.Dataset):
            continue
        declared = _dataset_bytes(item, name, path)
        total += declared
        if declared > limits.dataset_bytes:
            raise WeightsError(
                f"{path}: dataset '{name}' declares {_size(declared)} (shape {item.shape}, "
                f"{item.dtype}), more than any weight of a supported backbone "
                f"({_size(limits.dataset_bytes)}); {FIX}"
            )
        if total > limits.total_bytes:
            raise WeightsError(
                f"{path}: its datasets declare more than {_size(limits.total_bytes)} in all "
                f"(at '{name}'), more than the weights of any supported backbone; {FIX}"
            )
        chunks += _check_storage(item, name, path, declared, file_bytes, limits.chunks)
        if chunks > limits.chunks:
            raise WeightsError(
                f"{path}: its datasets are split into more than {limits.chunks:,} chunks, "
                f"far more than a weights file has; {FIX}"
            )


def _attribute_bytes(item: h5py.HLObject, attribute: str) -> int:
    attribute_id = h5py.h5a.open(item.id, attribute.encode())
    shape = attribute_id.shape or ()
    declared = math.prod(shape) * attribute_id.dtype.itemsize
    try:  # a variable-length string's itemsize is a pointer; its text is stored in the file
        stored = attribute_id.get_storage_size()
    except RuntimeError:  # HDF5 reports an empty attribute's 0 as an error
        stored = 0
    return max(declared, stored)


def _dataset_bytes(dataset: h5py.Dataset, name: str, path: Path) -> int:
    if dataset.is_virtual or dataset.external:
        raise WeightsError(
            f"{path}: dataset '{name}' keeps its data outside the file "
            f"({'virtual' if dataset.is_virtual else 'external'} storage); {FIX}"
        )
    dtype = dataset.dtype
    # Keras stores bfloat16 as 2-byte opaque data, marked by a `dtype` attribute.
    marked = dataset.attrs.get("dtype") if dtype.kind == "V" and dtype.itemsize == 2 else None
    bfloat16 = marked in ("bfloat16", b"bfloat16")
    if (dtype.kind not in NUMERIC_KINDS or dtype.fields or dtype.subdtype) and not bfloat16:
        raise WeightsError(f"{path}: dataset '{name}' holds {dtype}, not numbers; {FIX}")
    return math.prod(dataset.shape or ()) * dtype.itemsize


def _check_storage(
    dataset: h5py.Dataset, name: str, path: Path, declared: int, file_bytes: int, most: int
) -> int:
    """The dataset's data stored in the file, within its end; its number of chunks."""
    dataset_id = dataset.id
    stored = dataset_id.get_storage_size()
    filtered = dataset_id.get_create_plist().get_nfilters() > 0
    # Compressed data may be smaller than declared, but never absent.
    if declared and (stored == 0 or (not filtered and stored < declared)):
        raise WeightsError(
            f"{path}: dataset '{name}' declares {_size(declared)} (shape {dataset.shape}) but "
            f"the file stores {_size(stored)} of it (declared, never written); {FIX}"
        )
    if stored > file_bytes:
        raise WeightsError(
            f"{path}: dataset '{name}' claims {_size(stored)} of storage in a file of "
            f"{_size(file_bytes)} (truncated?); {FIX}"
        )
    compressed_beyond_weights = declared > MAX_COMPRESSION_RATIO * stored
    if filtered and declared > COMPRESSION_CHECK_FLOOR_BYTES and compressed_beyond_weights:
        raise WeightsError(
            f"{path}: dataset '{name}' declares {_size(declared)} but stores {_size(stored)} "
            f"compressed, more than {MAX_COMPRESSION_RATIO}:1, which no trained weight does; "
            f"{FIX}"
        )
    if dataset.chunks is None:
        offset = dataset_id.get_offset()
        if offset is not None and offset + stored > file_bytes:
            raise WeightsError(
                f"{path}: dataset '{name}' lies past the end of the file (truncated?); {FIX}"
            )
        return 0
    count = dataset_id.get_num_chunks()
    if count > most:
        return count  # the caller refuses it, without walking them
    for index in range(count):
        chunk = dataset_id.get_chunk_info(index)
        if chunk.byte_offset is not None and chunk.byte_offset + chunk.size > file_bytes:
            raise WeightsError(
                f"{path}: a chunk of dataset '{name}' lies past the end of the file "
                f"(truncated?); {FIX}"
            )
    return count
