"""Where a transformer keeps its decoder blocks, and what "layer i" means.

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

from torch import nn

EMBEDDINGS = "embeddings"
"""Name of the residual stream entering block 0 (token + position embeddings, as block 0 receives it)."""

# Known homes of the decoder-block list, tried before the generic search.
_KNOWN_PATHS = (
    "model.layers",  # Llama, Mistral, Qwen, Gemma, Phi-3, SmolLM
    "model.language_model.layers",  # multimodal wrappers (Gemma 3, Llava-style)
    "transformer.h",  # GPT-2, GPT-J, Bloom, Falcon
    "gpt_neox.layers",  # Pythia / GPT-NeoX
    "model.decoder.layers",  # OPT
    "layers",  # a bare decoder (AutoModel rather than *ForCausalLM)
    "h",
)

LayerName = int | str


def n_layers_of(config) -> int | None:
    """Number of decoder blocks a Hugging Face config declares (None when it does not say)."""
    config = getattr(config, "text_config", None) or config
    for attr in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, attr, None)
        if isinstance(value, int):
            return value
    return None


def find_decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """Locate the decoder blocks of a Hugging Face causal LM (or any torch model with one block list).

    Returns ``(path, blocks)`` where ``model.get_submodule(path) is blocks``. Known paths are tried
    first; otherwise the longest :class:`~torch.nn.ModuleList` of identical block types is taken, and,
    when the config says how many layers the model has, it must have that length.
    """
    expected = n_layers_of(getattr(model, "config", None))
    for path in _KNOWN_PATHS:
        try:
            blocks = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(blocks, nn.ModuleList) and len(blocks) and (expected in (None, len(blocks))):
            return path, blocks
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList)
        and len(module) > 0
        and len({type(block) for block in module}) == 1
        and (expected is None or len(module) == expected)
    ]
    if not candidates:
        raise ValueError(
            f"Could not find the decoder blocks of {type(model).__name__}: no ModuleList of identical "
            f"blocks{'' if expected is None else f' of length {expected}'} was found. Pass a model whose "
            "blocks live in a ModuleList (every Hugging Face decoder does)."
        )
    name, blocks = max(candidates, key=lambda item: len(item[1]))
    return name, blocks


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
    resolved: set[LayerName] = set()
    for item in items:
        if isinstance(item, str):
            if item == EMBEDDINGS:
                resolved.add(EMBEDDINGS)
                continue
            try:
                item = int(item)
            except ValueError:
                raise ValueError(
                    f"Unknown layer {item!r}: use block indices (negatives count from the end), "
                    f"'all', or {EMBEDDINGS!r}."
                ) from None
        try:
            if isinstance(item, bool):
                raise TypeError
            index = operator.index(item)
        except TypeError:
            raise ValueError(f"Layer {item!r} is not an integer index.") from None
        if not -n_layers <= index < n_layers:
            raise ValueError(
                f"Layer {index} is out of range for a model with {n_layers} decoder blocks "
                f"(valid: {-n_layers}..{n_layers - 1})."
            )
        resolved.add(index % n_layers)
    return sorted(resolved, key=lambda name: -1 if name == EMBEDDINGS else name)


def layer_key(layer: LayerName) -> str:
    """File-name form of a layer: ``layer_007`` or ``embeddings``."""
    return EMBEDDINGS if layer == EMBEDDINGS else f"layer_{int(layer):03d}"
