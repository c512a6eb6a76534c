"""``extract_token_streams``: every real token's residual stream at the requested layers, the token ids
and next-token ids, and the model's readout -- what a lens needs (see :mod:`lmprobe_jax_store._tokens`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmprobe_jax_store import (
    ActivationStore,
    LayerName,
    add_token_level,
    is_token_level,
    read_readout,
    resolve_layers,
)

from ._blocks import find_decoder_layers, n_layers_of
from ._extract import check_prompts, encode_prompts, extract_activations
from ._readout import check_readout, export_readout
from ._source import resolve_source

# Tokens of the first text the readout check runs the model on (enough to exercise every position
# kind, cheap on any model).
_CHECK_TOKENS = 64


def extract_token_streams(
    model: Any,
    texts: Sequence[str],
    *,
    layers: int | str | Sequence[LayerName] | None = "all",
    out_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    batch_size: int = 8,
    dtype: str | torch.dtype | None = None,
    storage_dtype: str | torch.dtype = "float32",
    device: str | torch.device | None = None,
    backend: str = "local",
    tokenizer: Any = None,
    revision: str | None = None,
    max_length: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    verify: bool = True,
) -> ActivationStore:
    """Run ``model`` over ``texts`` once and keep what a lens needs: a token-level store.

    Each text is tokenised on its own (the tokenizer's special tokens included) and every one of its
    tokens is kept: the ``"all"`` pooling's ``(n_tokens, D)`` streams for ``layers`` *plus the last
    block* (the final distribution is the readout of the last block's stream), each row's token id and
    next-token id (``-1`` on a text's last token), and the model's readout (final norm + unembedding),
    exported once and checked against the model's own logits on the first text.

    Args:
      model, tokenizer, revision, batch_size, dtype, storage_dtype, device, backend, max_length,
        overwrite, progress, verify: as :func:`extract_activations`.
      texts: N strings, each at least 2 tokens long (one position must have a next token).
      layers: block indices, ``"all"`` or ``"embeddings"`` (layer i = the stream leaving block i, before
        the final norm); the last block is always added.
      out_dir, cache_dir: as :func:`extract_activations`; the same content-keyed cache entry as an
        ``"all"`` extraction of the same texts, grown by the token ids and readout.

    Returns:
      An :class:`~lmprobe_jax_store.ActivationStore` for which
      :func:`~lmprobe_jax_store.read_tokens` and :func:`~lmprobe_jax_store.read_readout` work.

    Raises:
      ValueError: no texts, a text shorter than 2 tokens, a layer out of range, a model without an
        unembedding or with an unsupported final norm -- before anything is written.
    """
    texts = check_prompts(texts, "texts")
    source = resolve_source(model, tokenizer, revision)
    n_layers = n_layers_of(source.config())
    wanted = resolve_layers(layers, n_layers)
    encoded = encode_prompts(source.load_tokenizer(), texts, max_length)
    short = [i for i, ids in enumerate(encoded) if len(ids) < 2]
    if short:
        raise ValueError(
            f"{len(short)} text(s) tokenise to fewer than 2 tokens (first: texts[{short[0]}] = "
            f"{texts[short[0]]!r}); a lens needs a next token to compare with. Remove or lengthen them."
        )
    compute = source.compute_dtype(dtype)
    # Refuse an unexportable readout before the (long) extraction writes anything. The extraction below
    # reuses this loaded model (same source, dtype and device: the loader's memo).
    net = source.load_model(compute, source.device(device))
    blocks_path, blocks = find_decoder_layers(net)
    meta, arrays = export_readout(net, blocks_path)
    meta["check"] = check_readout(net, blocks, meta, arrays, encoded[0][:_CHECK_TOKENS])

    store = extract_activations(
        model,
        texts,
        layers=resolve_layers([*wanted, n_layers - 1], n_layers),
        pooling="all",
        out_dir=out_dir,
        cache_dir=cache_dir,
        batch_size=batch_size,
        dtype=compute,
        storage_dtype=storage_dtype,
        device=device,
        backend=backend,
        tokenizer=tokenizer,
        revision=revision,
        max_length=max_length,
        overwrite=overwrite,
        progress=progress,
        verify=verify,
    )
    lengths = np.diff(store.offsets())
    if not np.array_equal(lengths, [len(ids) for ids in encoded]):
        raise ValueError(
            "The store's token counts differ from this tokenisation; re-extract with overwrite=True."
        )
    if is_token_level(store) and _same_readout(store, meta, arrays):
        return store
    return add_token_level(store, np.concatenate(encoded), meta, arrays)


def _same_readout(store: ActivationStore, meta: dict, arrays: dict[str, np.ndarray]) -> bool:
    stored_meta, stored = read_readout(store)
    keys = ("norm", "eps", "logit_scale", "logit_softcap", "vocab_size", "hidden_size")
    return (
        all(stored_meta[key] == meta[key] for key in keys)
        and stored.keys() == arrays.keys()
        and all(np.array_equal(stored[name], arrays[name]) for name in arrays)
    )
