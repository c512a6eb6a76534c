"""Where a transformer keeps its decoder blocks (what "layer i" means is the store's: see
:mod:`lmprobe_jax_store._layers`)."""

from __future__ import annotations

from torch import nn

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


def n_layers_of(config) -> int | None:
    """Number of decoder blocks a Hugging Face config declares (None when it does not say)."""
    config = getattr(config, "text_config", None) or config
    for attr in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, attr, None)
        if isinstance(value, int):
            return value
    return None


def hidden_size_of(config) -> int:
    """Width of the residual stream a Hugging Face config declares (ValueError when it does not say)."""
    text = getattr(config, "text_config", None) or config
    for attr in ("hidden_size", "n_embd", "d_model"):
        value = getattr(text, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ValueError(f"The config of {type(config).__name__} does not say the model's hidden size.")


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
            f"Could not find decoder layers in {type(model).__name__}: no ModuleList of identical "
            f"blocks{'' if expected is None else f' of length {expected}'} was found. Pass a model whose "
            "blocks live in a ModuleList (every Hugging Face decoder does)."
        )
    name, blocks = max(candidates, key=lambda item: len(item[1]))
    return name, blocks
