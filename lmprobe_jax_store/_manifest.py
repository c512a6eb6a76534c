"""The manifest: what a store holds and what produced it, checked before anything is read.

Fields (format 2)::

    format, format_version       "lmprobe-jax-activations", 2
    store_id                     hex digest of what the store was planned from; every shard carries it
    model, tokenizer             the producer: fingerprints of the weights and of the tokenizer
    tokens_sha256                hash of the exact token ids the model read (any tokenizer setting that
                                 changes the tokens -- truncation side, special tokens -- changes it)
    compute_dtype, storage_dtype, max_length, n_prompts, prompts_sha256, prompt_hashes, library_version
    layers, poolings             what it holds (layer names: block indices or "embeddings")
    hidden_size, n_tokens        D, and the real tokens of all prompts (the rows of the "all" pooling)
    files                        {relative path: {"bytes", "sha256"}} for every file of the store
    labels, metadata             the label set and metadata a reader sees by default (relative paths in
                                 ``files``, or null); older label sets stay listed in ``files``

A manifest that does not have this shape is refused with a "corrupted store" ``ValueError``.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from ._layers import EMBEDDINGS, LayerName, layer_key
from ._paths import check_relative
from ._poolings import POOLINGS

MANIFEST = "manifest.json"
FORMAT = "lmprobe-jax-activations"
FORMAT_VERSION = 2
PROMPTS = "prompts.json"
OFFSETS = "all/offsets.safetensors"
STORAGE_DTYPES = ("float32", "float16", "bfloat16")

# The fields of a request that must match for a store to be served (layers and poolings may be a subset).
MATCH_FIELDS = (
    "format_version",
    "library_version",
    "model",
    "tokenizer",
    "tokens_sha256",
    "compute_dtype",
    "storage_dtype",
    "n_prompts",
    "prompts_sha256",
    "prompt_hashes",
    "max_length",
)

_HEX = re.compile(r"[0-9a-f]{64}")
_ID = re.compile(r"[0-9a-f]{16,64}")


def prompt_hash(prompt: str) -> str:
    """A prompt's entry in ``prompt_hashes``: the first 16 hex digits of the SHA-256 of its UTF-8."""
    return hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def shard_path(pooling: str, layer: LayerName) -> str:
    """Relative path of the shard holding ``layer`` under ``pooling``."""
    return f"{pooling}/{layer_key(layer)}.safetensors"


def label_path(digest: str) -> str:
    """Relative path of the label set whose file has SHA-256 ``digest`` (content-addressed)."""
    return f"labels/{digest[:32]}.safetensors"


def metadata_path(digest: str) -> str:
    return f"metadata/{digest[:32]}.json"


def layer_names(manifest: dict) -> list[LayerName]:
    return [EMBEDDINGS if name == EMBEDDINGS else int(name) for name in manifest["layers"]]


def expected_files(manifest: dict) -> list[str]:
    """The files every store of this manifest must hold (the label and metadata sets come on top)."""
    files = [PROMPTS] + [shard_path(p, layer) for p in manifest["poolings"] for layer in layer_names(manifest)]
    return files + ([OFFSETS] if "all" in manifest["poolings"] else [])


def _int(value: Any, low: int) -> bool:
    return type(value) is int and value >= low


def check_manifest(manifest: Any, where: object) -> dict:
    """``manifest`` if it has the shape above, else ValueError saying what is wrong with it."""

    def bad(reason: str) -> ValueError:
        return ValueError(f"Corrupted store: {where} {reason}; re-extract the activations.")

    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{where} is not an lmprobe-jax activation manifest.")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{where} is store format {manifest.get('format_version')!r}; this version reads format "
            f"{FORMAT_VERSION}. Re-extract the activations."
        )
    if not isinstance(manifest.get("store_id"), str) or not _ID.fullmatch(manifest["store_id"]):
        raise bad("has no valid store_id")
    for field, low in (("n_prompts", 1), ("hidden_size", 1), ("n_tokens", 1)):
        if not _int(manifest.get(field), low):
            raise bad(f"has an invalid {field} ({manifest.get(field)!r})")
    model = manifest.get("model")
    if not isinstance(model, dict) or not _int(model.get("n_layers"), 1):
        raise bad("has no valid model.n_layers")
    n_layers = model["n_layers"]
    layers, poolings = manifest.get("layers"), manifest.get("poolings")
    if not isinstance(layers, list) or not layers:
        raise bad("has no valid layer list")
    for layer in layers:
        if layer != EMBEDDINGS and not (type(layer) is int and 0 <= layer < n_layers):
            raise bad(f"names layer {layer!r}, not a block of a {n_layers}-layer model")
    if len(set(map(str, layers))) != len(layers):
        raise bad("lists a layer twice")
    if not isinstance(poolings, list) or not poolings or not all(p in POOLINGS for p in poolings):
        raise bad(f"has an invalid pooling list ({poolings!r})")
    if len(set(poolings)) != len(poolings):
        raise bad("lists a pooling twice")
    if manifest.get("storage_dtype") not in STORAGE_DTYPES:
        raise bad(f"has an invalid storage_dtype ({manifest.get('storage_dtype')!r})")
    hashes = manifest.get("prompt_hashes")
    if not isinstance(hashes, list) or len(hashes) != manifest["n_prompts"]:
        raise bad("has no prompt hash per prompt")
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise bad("has no file table")
    for relative, entry in files.items():
        check_relative(relative, where)
        if not (isinstance(entry, dict) and _int(entry.get("bytes"), 0) and isinstance(entry.get("sha256"), str)):
            raise bad(f"has a corrupted entry for {relative!r}")
        if not _HEX.fullmatch(entry["sha256"]):
            raise bad(f"has a corrupted SHA-256 for {relative!r}")
    missing = [relative for relative in expected_files(manifest) if relative not in files]
    if missing:
        raise bad(f"does not list {missing[0]!r}")
    for field in ("labels", "metadata"):
        pointer = manifest.get(field)
        if pointer is not None and (not isinstance(pointer, str) or pointer not in files):
            raise bad(f"points its {field} at {pointer!r}, which is not one of its files")
    return manifest


def request_mismatches(stored: dict, request: dict) -> list[str]:
    """Names of the fields in which a stored manifest cannot serve ``request`` (empty: it can)."""
    wrong = [field for field in MATCH_FIELDS if stored.get(field) != request.get(field)]
    if not set(map(str, request["layers"])) <= set(map(str, stored.get("layers", []))):
        wrong.append("layers")
    if not set(request["poolings"]) <= set(stored.get("poolings", [])):
        wrong.append("poolings")
    return wrong
