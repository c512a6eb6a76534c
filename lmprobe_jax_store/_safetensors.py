"""One safetensors file as a store writes and reads it: page-aligned data, checked headers, no torch.

A safetensors file is an 8-byte little-endian header length, a JSON header (``{name: {dtype, shape,
data_offsets}}`` plus an optional ``__metadata__`` of strings), then the tensors' bytes. The format lets
the header end in spaces; the store pads it so the data section starts at a multiple of
:data:`ALIGNMENT` bytes. A read-only memory map of a shard then hands numpy (and JAX, which uses
64-byte-aligned host buffers in place) its rows without a copy, and a writer can preallocate a shard and
fill its rows in any order. The files stay plain safetensors: ``safetensors.numpy.load_file`` reads them.

Every header is checked before it is trusted: its length against the file, its JSON, each tensor's
dtype, shape and byte range. A file that fails raises ``ValueError`` naming the file -- never a bare
``KeyError``, ``MemoryError`` or ``OverflowError``.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping

import numpy as np

ALIGNMENT = 4096
"""Byte alignment of the data section of every file a store writes (one page)."""

_MAX_HEADER = 100_000_000  # the safetensors library's own limit on a header's size

_CODES = {
    "BOOL": "bool",
    "U8": "uint8",
    "I8": "int8",
    "U16": "uint16",
    "I16": "int16",
    "U32": "uint32",
    "I32": "int32",
    "U64": "uint64",
    "I64": "int64",
    "F16": "float16",
    "F32": "float32",
    "F64": "float64",
}


def dtype_of(code: str) -> np.dtype:
    """The numpy dtype of a safetensors dtype code (``"F32"``, ``"BF16"``, ``"BOOL"``, ...)."""
    if code == "BF16":
        import ml_dtypes  # numpy has no bfloat16; ml_dtypes (a jax dependency) provides it

        return np.dtype(ml_dtypes.bfloat16)
    if not isinstance(code, str) or code not in _CODES:
        raise ValueError(f"unsupported safetensors dtype {code!r}")
    return np.dtype(_CODES[code])


def code_of(dtype: np.dtype | str) -> str:
    """The safetensors code of a numpy dtype (or a dtype name such as ``"bfloat16"``)."""
    name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if name == "bfloat16":
        return "BF16"
    for code, numpy_name in _CODES.items():
        if numpy_name == name:
            return code
    raise ValueError(f"dtype {name!r} cannot be stored: use a bool, integer or float dtype.")


def encode_header(
    tensors: Mapping[str, tuple[str, tuple[int, ...]]], metadata: Mapping[str, str] | None = None
) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """Header bytes (length prefix included, padded to :data:`ALIGNMENT`) for ``{name: (code, shape)}``,
    laid out in the given order, and each tensor's ``(begin, end)`` within the data section."""
    header: dict = {}
    spans: dict[str, tuple[int, int]] = {}
    position = 0
    for name, (code, shape) in tensors.items():
        size = math.prod(shape) * dtype_of(code).itemsize
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [position, position + size]}
        spans[name] = (position, position + size)
        position += size
    if metadata:
        header["__metadata__"] = dict(metadata)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * ((-(8 + len(raw))) % ALIGNMENT)
    return struct.pack("<Q", len(raw)) + raw, spans


def encode(arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> bytes:
    """A whole safetensors file holding ``arrays`` (small files: labels, offsets)."""
    arrays = {name: np.ascontiguousarray(array) for name, array in arrays.items()}
    head, _ = encode_header({n: (code_of(a.dtype), a.shape) for n, a in arrays.items()}, metadata)
    return head + b"".join(array.tobytes() for array in arrays.values())


class Header:
    """A parsed, checked safetensors header: ``tensors`` (``{name: (dtype, shape, begin, end)}``, byte
    positions absolute in the file), ``metadata`` (``{str: str}``) and ``data_start``."""

    def __init__(self, tensors: dict, metadata: dict, data_start: int):
        self.tensors, self.metadata, self.data_start = tensors, metadata, data_start


def read_header(fd: int, where: object) -> Header:
    """Parse and check the header of the open file ``fd`` (``where`` names it in errors)."""
    size = os.fstat(fd).st_size
    prefix = os.pread(fd, 8, 0)
    if len(prefix) < 8:
        raise ValueError(f"{where} is truncated: it is shorter than a safetensors header.")
    (length,) = struct.unpack("<Q", prefix)
    if length > min(size - 8, _MAX_HEADER):
        raise ValueError(f"{where} is corrupted: its header claims {length} bytes, the file has {size}.")
    raw = os.pread(fd, length, 8)
    try:
        header = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{where} has a corrupted safetensors header ({err}).") from None
    if not isinstance(header, dict):
        raise ValueError(f"{where} has a corrupted safetensors header (not a JSON object).")  # noqa: TRY004
    data_start = 8 + length
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ValueError(f"{where} has corrupted safetensors metadata.")
    tensors = {}
    for name, info in header.items():
        try:
            dtype = dtype_of(info["dtype"])
            shape = tuple(info["shape"])
            begin, end = info["data_offsets"]
            if not all(type(v) is int and v >= 0 for v in (*shape, begin, end)):
                raise ValueError("negative or non-integer shape or offsets")
        except (TypeError, KeyError, ValueError) as err:
            raise ValueError(f"{where} has a corrupted entry for tensor {name!r} ({err}).") from None
        if end - begin != math.prod(shape) * dtype.itemsize or data_start + end > size:
            raise ValueError(f"{where} is truncated or corrupted: tensor {name!r} does not fit the file.")
        tensors[name] = (dtype, shape, data_start + begin, data_start + end)
    return Header(tensors, metadata, data_start)


def memmap(fd: int, info: tuple) -> np.ndarray:
    """A read-only memory map of one tensor of the open file ``fd`` (``info`` from :class:`Header`): no
    copy, pages load on access; the map outlives ``fd``. An empty tensor is returned as an empty array."""
    dtype, shape, begin, _ = info
    if not shape or 0 in shape:
        return np.zeros(shape, dtype)
    with os.fdopen(os.dup(fd), "rb") as handle:  # mapped through the checked descriptor, not a path
        return np.memmap(handle, dtype=dtype, mode="r", offset=begin, shape=shape)
