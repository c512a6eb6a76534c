"""Labels and metadata: checked, encoded, and stored content-addressed beside the activations.

A store's activations are fixed by the request that produced them; its labels are not -- the same
prompts are often labelled several ways. So each label set is its own file, named by its SHA-256
(``labels/<digest>.safetensors``), never overwritten, and the manifest points at the current one. A store
object keeps the label set it was opened with: attaching another one (a new extraction with other labels,
in this process or another) cannot change what an open store, or a sweep holding it, trains on.

Labels are bool, integer or float ``(N,)`` arrays, or strings / other class names, which are stored as
indices into their sorted unique names (as scikit-learn's ``classes_``), the names kept in the file.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from ._manifest import label_path, metadata_path
from ._safetensors import encode


def label_set(labels: Any, n: int) -> tuple[np.ndarray, list[str] | None]:
    """``(values (n,), class names or None)``: numeric labels as given; strings (or any other class names)
    as int64 indices into the sorted unique names. ValueError for a wrong shape or non-finite floats."""
    values = np.asarray(labels)
    if values.dtype.kind == "O" and values.ndim == 1:
        numbers = [v for v in values.tolist() if isinstance(v, (bool, int, float, np.number))]
        if len(numbers) == len(values):  # e.g. a pandas object column of numbers
            values = np.asarray(numbers)
    if values.ndim != 1 or len(values) != n:
        raise ValueError(f"labels has shape {values.shape}; expected ({n},), one per prompt.")
    if values.dtype.kind in "biu":
        return values, None
    if values.dtype.kind == "f":
        if not np.all(np.isfinite(values)):
            raise ValueError("labels hold NaN or infinite values; give finite numbers or class names.")
        return values, None
    if values.dtype.kind in "USO":
        names = [str(value) for value in values.tolist()]
        if values.dtype.kind == "O" and any(v is None or isinstance(v, float) and np.isnan(v) for v in values):
            raise ValueError("labels hold missing values (None / NaN); give every prompt a label.")
        classes, codes = np.unique(np.asarray(names), return_inverse=True)
        return codes.astype(np.int64), classes.tolist()
    raise ValueError(f"labels of dtype {values.dtype} cannot be stored: give numbers or class names.")


def check_metadata(metadata: Any, n: int) -> list:
    """``metadata`` as a list of ``n`` JSON-serialisable records, or ValueError."""
    if isinstance(metadata, (str, bytes, dict)):
        raise TypeError("metadata must be a list of N records (one dict per prompt), not one value.")
    records = list(metadata)
    if len(records) != n:
        raise ValueError(f"metadata has {len(records)} entries; expected {n}, one per prompt.")
    try:
        json.dumps(records, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"metadata must be JSON-serialisable, without NaN or infinity ({err}).") from None
    return records


def encode_labels(values: np.ndarray, names: list[str] | None, store_id: str) -> tuple[str, bytes]:
    """``(relative path, file bytes)`` of a label set of store ``store_id``."""
    metadata = {"store": store_id}
    if names is not None:
        metadata["classes"] = json.dumps(names, ensure_ascii=False)
    data = encode({"labels": values}, metadata)
    return label_path(hashlib.sha256(data).hexdigest()), data


def encode_json(records: list) -> bytes:
    return (json.dumps(records, ensure_ascii=False, allow_nan=False) + "\n").encode()


def encode_metadata(records: list) -> tuple[str, bytes]:
    data = encode_json(records)
    return metadata_path(hashlib.sha256(data).hexdigest()), data
