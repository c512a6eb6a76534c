"""What a lens reads from a token-level store: the layers' streams (memory-mapped), the last block's
stream, the token ids and the readout -- and row subsets of them (a held-out split by text)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from lmprobe_jax_store import ActivationStore, LayerName, read_tokens, resolve_layers

from ._readout import Readout, load_readout


class Rows:
    """Rows ``rows`` of a ``(T, ...)`` array, read on demand: ``Rows(a, rows)[i:j]`` is ``a[rows[i:j]]``.
    Lets a text subset of a memory-mapped store stream through the engine without a copy."""

    def __init__(self, array: np.ndarray, rows: np.ndarray):
        self.array, self.rows = array, np.asarray(rows, np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index) -> np.ndarray:
        return np.asarray(self.array[self.rows[index]])

    @property
    def shape(self) -> tuple:
        return (len(self.rows), *self.array.shape[1:])


class TokenData(NamedTuple):
    """A token-level store's contents for lenses (arrays stay memory-mapped until read).

    Attributes:
      layers: the layer names of ``streams`` (block indices, or ``"embeddings"``).
      streams: L arrays ``(T, D)``, one per layer, before the final norm.
      final_stream: ``(T, D)`` the last block's stream: the model's output is its readout.
      input_ids, next_ids: ``(T,)`` int64 (``next_ids`` is ``-1`` on each text's last token).
      offsets: ``(N + 1,)`` int64 row offsets of the N texts.
      readout: the model's :class:`Readout`.
    """

    layers: list
    streams: list
    final_stream: np.ndarray
    input_ids: np.ndarray
    next_ids: np.ndarray
    offsets: np.ndarray
    readout: Readout

    @property
    def n_tokens(self) -> int:
        return len(self.next_ids)

    def texts(self, which: Sequence[int] | np.ndarray) -> TokenData:
        """The rows of texts ``which`` (in that order), as a :class:`TokenData` whose arrays read lazily."""
        which = np.asarray(which, np.int64)
        lengths = np.diff(self.offsets)[which]
        rows = np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1]) for i in which])
        return TokenData(
            self.layers,
            [Rows(s, rows) for s in self.streams],
            Rows(self.final_stream, rows),
            self.input_ids[rows],
            self.next_ids[rows],
            np.concatenate([[0], np.cumsum(lengths)]),
            self.readout,
        )


def token_data(store: ActivationStore, layers: int | str | Sequence[LayerName] | None = None) -> TokenData:
    """Open what a lens needs from a token-level store (:func:`lmprobe_jax_extract.extract_token_streams`).

    ``layers``: a subset of the stored layers (default: all of them). Raises ValueError for a store
    without token ids / readout, or a layer the store does not hold.
    """
    tokens = read_tokens(store)
    stored = store.layers
    wanted = stored if layers is None else resolve_layers(layers, store.n_layers)
    missing = [layer for layer in wanted if layer not in stored]
    if missing:
        raise ValueError(f"The store does not hold layers {missing}; it holds {stored}.")
    last = store.n_layers - 1
    if last not in stored:
        raise ValueError(f"The store lacks the last block ({last}), whose readout is the model's output.")
    return TokenData(
        list(wanted),
        [store.load(layer, "all") for layer in wanted],
        store.load(last, "all"),
        tokens.input_ids,
        tokens.next_ids,
        tokens.offsets,
        load_readout(store),
    )
