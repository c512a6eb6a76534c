"""What "layer i" means in a store, and the one resolver every layer request goes through.

Layer ``i`` is the residual stream leaving decoder block ``i`` (0-based; ``-1`` is the last block): the
tensor a forward hook on the block sees, which is *before* the model's final norm. That is what lmprobe's
hooks capture, and it differs from Hugging Face's ``hidden_states[i]``, which is offset by one (its entry
0 is the embedding output) and whose last entry comes *after* the final norm.

The embedding output -- the residual stream entering block 0 -- is available under the name
:data:`EMBEDDINGS`.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Sequence

EMBEDDINGS = "embeddings"
"""Name of the residual stream entering block 0 (token + position embeddings, as block 0 receives it)."""

LayerName = int | str


def normalise_layer(layer: object, n_layers: int, *, allow_embeddings: bool = True) -> LayerName:
    """One layer name as a block index in ``0..n_layers-1`` (negatives and digit strings count from the
    end as Python indices do) or :data:`EMBEDDINGS`; ValueError for anything else."""
    if isinstance(layer, str):
        if layer == EMBEDDINGS:
            if not allow_embeddings:
                raise ValueError(f"{EMBEDDINGS!r} is not a block: give block indices here.")
            return EMBEDDINGS
        try:
            layer = int(layer)
        except ValueError:
            raise ValueError(
                f"Unknown layer {layer!r}: use block indices (negatives count from the end), 'all', or "
                f"{EMBEDDINGS!r}."
            ) from None
    try:
        if isinstance(layer, bool) or hasattr(layer, "dtype") and layer.dtype.kind == "b":
            raise TypeError
        index = operator.index(layer)
    except TypeError:
        raise ValueError(f"Layer {layer!r} is not an integer index.") from None
    if not -n_layers <= index < n_layers:
        raise ValueError(
            f"Layer {index} is out of range for a model with {n_layers} decoder blocks "
            f"(valid: {-n_layers}..{n_layers - 1})."
        )
    return index % n_layers


def resolve_layers(layers: int | str | Iterable[LayerName] | None, n_layers: int) -> list[LayerName]:
    """Normalise a layer request to sorted, unique names: block indices ``0..n_layers-1`` and/or
    :data:`EMBEDDINGS` (which sorts first, as it comes first in the forward pass).

    ``layers`` is an int (negatives count from the end), ``"all"`` / ``None`` (every block),
    :data:`EMBEDDINGS`, or a sequence of those.
    """
    if layers is None or (isinstance(layers, str) and layers == "all"):
        return list(range(n_layers))
    items: Sequence = [layers] if isinstance(layers, (int, str)) else list(layers)
    if not items:
        raise ValueError("layers is empty: ask for at least one layer (an int, a list of ints, or 'all').")
    resolved = {normalise_layer(item, n_layers) for item in items}
    return sorted(resolved, key=layer_order)


def layer_order(layer: LayerName) -> int:
    """Sort key in forward-pass order: :data:`EMBEDDINGS` first, then blocks by index."""
    return -1 if layer == EMBEDDINGS else int(layer)


def layer_key(layer: LayerName) -> str:
    """File-name form of a layer: ``layer_007`` or ``embeddings``."""
    return EMBEDDINGS if layer == EMBEDDINGS else f"layer_{int(layer):03d}"
