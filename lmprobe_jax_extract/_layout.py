"""What a decoder block adds to the residual stream: the modules whose outputs are its attention's and its
MLP's writes, and which stream the MLP reads.

A pre-norm block writes ``h_out = h_in + attn + mlp``. Sequential blocks (Llama, GPT-2, ...) feed the MLP
the stream after the attention's write, ``h_in + attn``; parallel blocks (GPT-J, Phi-1/2, GPT-NeoX with
``use_parallel_residual=True``) feed both sub-layers ``h_in``. The depth analyses need to know which,
and :func:`check_additive` verifies the sum on every run, so a block that is not a plain sum of the two
named outputs (a post-norm outside the named module, a residual added inside the attention, ...) is
refused instead of silently mis-measured.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch


class BlockLayout(NamedTuple):
    """Where, inside one decoder block, the two writes to the residual stream come from.

    Attributes:
      attention: dotted path (inside the block) of the module whose output (its first item, for modules
        returning a tuple) the block adds to the stream as the attention's write.
      mlp: the same for the MLP's write.
      parallel: True when the MLP reads the block's input stream ``h_in`` (parallel attention and MLP),
        False when it reads ``h_in + attn`` (attention, then MLP).
    """

    attention: str
    mlp: str
    parallel: bool


def _always(flag: bool):
    return lambda config: flag


# model_type -> (attention, mlp, parallel(config)). Every entry is checked by tests/test_depth.py on a tiny
# model built from its config (the sum h_in + attn + mlp reproduces the block's output).
_LAYOUTS: dict[str, tuple[str, str, Any]] = {
    **{
        name: ("self_attn", "mlp", _always(False))
        for name in ("llama", "mistral", "qwen2", "qwen3", "gemma", "phi3")
    },
    # Gemma 2 normalises each sub-layer's output before adding it: the norm's output is the write.
    "gemma2": ("post_attention_layernorm", "post_feedforward_layernorm", _always(False)),
    "gpt2": ("attn", "mlp", _always(False)),
    "gpt_neox": ("attention", "mlp", lambda config: bool(config.use_parallel_residual)),
    "gptj": ("attn", "mlp", _always(True)),
    "phi": ("self_attn", "mlp", _always(True)),
}
SUPPORTED_MODEL_TYPES = tuple(sorted(_LAYOUTS))


def block_layout(model: torch.nn.Module, layout: BlockLayout | None = None) -> BlockLayout:
    """The :class:`BlockLayout` of ``model``'s decoder blocks, from its config's ``model_type``.

    ``layout`` overrides the table (for an architecture it does not know); it is checked against the
    model's first block. Raises ValueError for an unknown architecture without ``layout``.
    """
    config = getattr(model, "config", None)
    config = getattr(config, "text_config", None) or config
    model_type = getattr(config, "model_type", None)
    if layout is None:
        if model_type not in _LAYOUTS:
            raise ValueError(
                f"The attention / MLP contributions are not defined for model_type={model_type!r} "
                f"({type(model).__name__}): known block layouts are {', '.join(SUPPORTED_MODEL_TYPES)}. "
                "If its blocks write h_out = h_in + attn + mlp, pass layout=BlockLayout(attention=..., "
                "mlp=..., parallel=...) naming the modules whose outputs are added (it is checked on every "
                "run); blocks that add a residual inside a sub-layer (Bloom) or compute the MLP inline (OPT) "
                "cannot be split."
            )
        attention, mlp, parallel = _LAYOUTS[model_type]
        layout = BlockLayout(attention, mlp, parallel(config))
    from ._blocks import find_decoder_layers

    block = find_decoder_layers(model)[1][0]
    for path in (layout.attention, layout.mlp):
        try:
            block.get_submodule(path)
        except AttributeError:
            raise ValueError(
                f"{type(block).__name__} has no sub-module {path!r} (layout {layout}); its children are "
                f"{[name for name, _ in block.named_children()]}."
            ) from None
    return layout


def first_output(output: Any) -> torch.Tensor:
    """A module's hidden-state output: the tensor itself, or the first item of a tuple."""
    return output if torch.is_tensor(output) else output[0]


def widen(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in the dtype the depth metrics are computed in: float32 for half-precision and float32
    models, float64 for a float64 one (so a float64 run is exact to float64 rounding, not float32's)."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def check_additive(
    index: int, h_in: torch.Tensor, h_out: torch.Tensor, attn: torch.Tensor, mlp: torch.Tensor, layout
) -> None:
    """Raise ValueError unless ``h_out == h_in + attn + mlp`` to rounding.

    The bound is elementwise: two additions in another order differ by at most ``2 eps (|h_in| + |attn| +
    |mlp|)`` (eps of the model's dtype); twice that is allowed. A missing or extra term is far outside it.
    """
    eps = torch.finfo(h_out.dtype).eps
    h_in, h_out, attn, mlp = (widen(t) for t in (h_in, h_out, attn, mlp))
    error = (h_out - (h_in + attn + mlp)).abs()
    bound = 4 * eps * (h_in.abs() + attn.abs() + mlp.abs()) + torch.finfo(torch.float32).tiny
    if bool((error > bound).any()):
        worst = float((error - bound).max())
        raise ValueError(
            f"Block {index} does not write h_out = h_in + attn + mlp with {layout} (off by up to "
            f"{worst:.3g} beyond rounding): its outputs are not a plain sum of those two modules' outputs, so "
            "attention and MLP contributions cannot be measured from them. Pass layout=BlockLayout(...) "
            "naming the modules whose outputs the block adds to its stream."
        )
