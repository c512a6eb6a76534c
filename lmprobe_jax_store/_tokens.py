"""Token-level stores: every real token's stream (the ``"all"`` pooling), its token id, the id of the
token that follows it, and the model's readout (:mod:`lmprobe_jax_store._readout`).

Files a token-level store adds to an ``"all"`` store (one tensor per file, like every other shard)::

    all/input_ids.safetensors        (n_tokens,) int64: the token at each row of the "all" shards
    all/next_ids.safetensors         (n_tokens,) int64: the next token of the same text, -1 at a text's end
    readout/<name>.safetensors       the readout's tensors (norm.weight, unembed.weight, ...), float32

and ``manifest["readout"]``, the readout's description. The rows line up with ``store.offsets()``: text
``i`` owns rows ``offsets[i]:offsets[i + 1]``. The readout is a function of the weights, which the
manifest's model fingerprint already keys; it is stored in float32 (an exact upcast of float16 /
bfloat16 weights).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ._readout import check_readout_arrays, check_readout_meta
from ._safetensors import encode
from ._store import ActivationStore
from ._writer import attach_files

INPUT_IDS = "all/input_ids.safetensors"
NEXT_IDS = "all/next_ids.safetensors"
NO_NEXT = -1
"""``next_ids`` value of a text's last token, which has no next token."""


def readout_file(name: str) -> str:
    """Relative path of readout tensor ``name`` (e.g. ``"unembed.weight"``)."""
    return f"readout/{name}.safetensors"


class TokenIds(NamedTuple):
    """Token ids of a token-level store, row-aligned with its ``"all"`` shards.

    Attributes:
      input_ids: ``(n_tokens,)`` int64, the token at each row.
      next_ids: ``(n_tokens,)`` int64, the next token of the same text; ``-1`` at each text's last row.
      offsets: ``(n_texts + 1,)`` int64; text ``i`` owns rows ``offsets[i]:offsets[i + 1]``.
    """

    input_ids: np.ndarray
    next_ids: np.ndarray
    offsets: np.ndarray


def next_token_ids(input_ids: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``(n_tokens,)`` id of the next token within each text, :data:`NO_NEXT` on each text's last row."""
    input_ids = np.asarray(input_ids, np.int64)
    offsets = np.asarray(offsets, np.int64)
    if offsets.ndim != 1 or offsets[0] != 0 or offsets[-1] != len(input_ids) or np.any(np.diff(offsets) < 1):
        raise ValueError(
            f"offsets {offsets[:5]}... do not split {len(input_ids)} tokens into non-empty texts."
        )
    nxt = np.empty_like(input_ids)
    nxt[:-1] = input_ids[1:]
    nxt[offsets[1:] - 1] = NO_NEXT
    return nxt


def is_token_level(store: ActivationStore) -> bool:
    """Whether ``store`` holds token ids and a readout (see module docstring)."""
    files = store.manifest.get("files", {})
    return "readout" in store.manifest and INPUT_IDS in files and NEXT_IDS in files


def _require_token_level(store: ActivationStore) -> None:
    if not is_token_level(store):
        raise ValueError(
            f"{store!r} holds no token ids or readout: extract it with "
            "lmprobe_jax_extract.extract_token_streams (not extract_activations)."
        )


def read_tokens(store: ActivationStore) -> TokenIds:
    """The token ids of a token-level store (raises ValueError for another store)."""
    _require_token_level(store)
    return TokenIds(
        np.asarray(store.tensor(INPUT_IDS, "input_ids"), np.int64),
        np.asarray(store.tensor(NEXT_IDS, "next_ids"), np.int64),
        store.offsets(),
    )


def read_readout(store: ActivationStore) -> tuple[dict, dict[str, np.ndarray]]:
    """``(description, arrays)`` of a token-level store's readout (raises ValueError for another store)."""
    _require_token_level(store)
    meta = check_readout_meta(store.manifest["readout"])
    names = meta.get("tensors", ["norm.weight", "unembed.weight"])
    arrays = {name: np.asarray(store.tensor(readout_file(name), name)) for name in names}
    return meta, check_readout_arrays(meta, arrays)


def add_token_level(
    store: ActivationStore, input_ids: np.ndarray, readout: dict, readout_arrays: dict[str, np.ndarray]
) -> ActivationStore:
    """Add token ids and the readout to an ``"all"`` store; returns the reopened store.

    Every file is written atomically before the manifest that names them is replaced, under the store's
    lock (:func:`~lmprobe_jax_store.attach_files`), so a crash leaves the store as it was.
    """
    offsets = store.offsets()
    input_ids = np.ascontiguousarray(input_ids, np.int64)
    if input_ids.shape != (int(offsets[-1]),):
        raise ValueError(
            f"{input_ids.shape[0]} token ids for a store of {int(offsets[-1])} token rows: the texts "
            "were tokenised differently from the extraction."
        )
    arrays = {name: np.ascontiguousarray(a, np.float32) for name, a in readout_arrays.items()}
    meta = check_readout_meta({**readout, "tensors": sorted(arrays)})
    check_readout_arrays(meta, arrays)
    tensors = {
        INPUT_IDS: ("input_ids", input_ids),
        NEXT_IDS: ("next_ids", next_token_ids(input_ids, offsets)),
        **{readout_file(name): (name, array) for name, array in arrays.items()},
    }
    # A re-export replaces the previous readout whole (its tensor set may differ: a bias came or went).
    if store.path is None:
        kept = [relative for relative in store.manifest["files"] if not relative.startswith("readout/")]
        added = {relative: array for relative, (_, array) in tensors.items()}
        manifest = {**store.manifest, "readout": meta, "files": sorted({*kept, *added})}
        return ActivationStore.from_arrays(manifest, {**store._arrays, **added})
    files = {
        relative: encode({name: array}, {"store": store.manifest["store_id"]})
        for relative, (name, array) in tensors.items()
    }
    return attach_files(store, files, {"readout": meta}, unlist=lambda relative: relative.startswith("readout/"))
