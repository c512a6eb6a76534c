"""One forward pass with an intervention on every decoder block, by forward hooks or through nnsight.

An :class:`Intervention` sees each block's input and output (and, when it asks, the attention's and
the MLP's writes, see :mod:`._layout`), may replace either, and receives the final logits. The two
backends call the same methods with the same tensors, so an analysis is written once:

* ``local``: a forward pre-hook and a forward hook per block (and hooks on the two sub-modules).
* ``nnsight``: an nnsight trace that reads ``block.input`` / ``block.output`` in execution order and
  assigns the replacements; nnsight 0.8 runs the trace body on the real tensors.

Rows of a batch are independent runs of one text (no padding: the analyses replicate one text), so
``inputs`` carries no position ids of its own beyond what :func:`._capture.model_inputs` gives.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import torch

from ._blocks import find_decoder_layers
from ._capture import model_inputs, wrap_nnsight
from ._extract import BACKENDS, check_prompts
from ._layout import BlockLayout, first_output
from ._source import resolve_source, torch_dtype


class BlockView(NamedTuple):
    """What an intervention sees of block ``index`` for a batch of R rows of T tokens.

    ``input`` and ``output`` are ``(R, T, D)`` (``output`` before any replacement); ``attention`` and
    ``mlp`` are the sub-layers' writes ``(R, T, D)``, or None when the intervention did not ask.
    """

    index: int
    input: torch.Tensor
    output: torch.Tensor
    attention: torch.Tensor | None
    mlp: torch.Tensor | None


class Intervention:
    """Base class: observe (and optionally replace) the stream around each block, then see the logits.

    ``block_input`` and ``block_output`` return a replacement tensor of the same shape, or None to leave
    the stream as it is. ``wants_submodules`` asks for the attention / MLP writes in the views.
    """

    wants_submodules = False
    tensor_blocks: bool | None = None  # set by the run: whether the blocks return a tensor (not a tuple)

    def block_input(self, index: int, hidden: torch.Tensor) -> torch.Tensor | None:
        return None

    def block_output(self, view: BlockView) -> torch.Tensor | None:
        return None

    def final(self, logits: torch.Tensor) -> None:
        return None


class Loaded(NamedTuple):
    """A model ready for interventions: the module, its tokenizer, its blocks, an nnsight wrapper (None
    for the local backend), and the model's id as :func:`._source.resolve_source` names it."""

    model: torch.nn.Module
    tokenizer: Any
    blocks_path: str
    blocks: torch.nn.ModuleList
    traced: Any
    backend: str
    source_id: str


def load(
    model: Any,
    *,
    tokenizer: Any = None,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    backend: str = "local",
) -> Loaded:
    """Load ``model`` (anything :func:`._source.resolve_source` takes) for interventions."""
    if backend not in BACKENDS:
        raise ValueError(f"Unknown backend {backend!r}: choose from {BACKENDS}.")
    source = resolve_source(model, tokenizer)
    if device is None and source.kind != "object":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    net = source.load_model(torch_dtype(dtype), device)
    tok = source.load_tokenizer()
    path, blocks = find_decoder_layers(net)
    traced = wrap_nnsight(net, tok) if backend == "nnsight" else None
    return Loaded(net, tok, path, blocks, traced, backend, source.id)


def tokenize_texts(tokenizer: Any, texts: Any, what: str = "texts") -> list[list[int]]:
    """Token ids of each text on its own, with the tokenizer's defaults (special tokens included); a
    ValueError names a text that tokenises to nothing."""
    texts = check_prompts(texts, what)
    ids = [list(tokenizer(text)["input_ids"]) for text in texts]
    empty = [i for i, row in enumerate(ids) if not row]
    if empty:
        raise ValueError(
            f"{what}[{empty[0]}] ({texts[empty[0]]!r}) tokenises to nothing: remove empty texts."
        )
    return ids


def rows_per_chunk(
    max_batch_bytes: int, n_tokens: int, hidden: int, n_logits: int, vocab: int, itemsize: int = 4
) -> int:
    """How many rows of ``n_tokens`` tokens one forward may hold within ``max_batch_bytes`` (an estimate:
    logits, their softmax and a difference, ``3 n_logits V``; a block's temporaries, ``16 D + T`` per
    token, from its MLP and attention scores; ``itemsize`` bytes each: 4 for float32, 8 for float64)."""
    per_row = itemsize * (n_tokens * (16 * hidden + n_tokens) + 3 * n_logits * vocab)
    return max(1, int(max_batch_bytes) // per_row)


def _keep_kwarg(model: torch.nn.Module, logits_to_keep: int | None) -> dict:
    if logits_to_keep is None:
        return {}
    if "logits_to_keep" not in inspect.signature(model.forward).parameters:
        return {}  # the caller slices the full logits (see run)
    return {"logits_to_keep": logits_to_keep}


def run(
    loaded: Loaded,
    input_ids: torch.Tensor,
    intervention: Intervention,
    *,
    layout: BlockLayout | None = None,
    grad: bool = False,
    logits_to_keep: int | None = None,
    clean_outputs: list[torch.Tensor] | None = None,
    start: int = 0,
) -> None:
    """One forward of the ``(R, T)`` rows ``input_ids`` (no padding) with ``intervention`` on every block.

    ``logits_to_keep``: only the last that many positions' logits reach ``intervention.final`` (the LM
    head runs on those alone where the model supports it). ``grad``: build the autograd graph (for
    gradients with respect to replaced tensors); otherwise the pass runs under ``torch.no_grad``.

    ``clean_outputs`` (the ``(1, T, D)`` outputs of every block on the same text without intervention)
    and ``start``: blocks before ``start`` are not run, they return their clean output (every row of the
    batch must be unchanged before block ``start``; the intervention still sees their input and output).
    Only the local backend skips them, and only blocks that return a tensor (see :func:`reusable`);
    nnsight runs every block.
    """
    net = loaded.model
    ids = input_ids.to(next(net.parameters()).device)
    inputs = {**model_inputs(net, ids, torch.ones_like(ids)), **_keep_kwarg(net, logits_to_keep)}
    if intervention.wants_submodules and layout is None:
        raise ValueError("This intervention reads the attention and MLP writes: pass the block layout.")
    context = torch.enable_grad() if grad else torch.no_grad()
    with context, _contiguous_head_input(net, logits_to_keep):
        if loaded.backend == "nnsight":
            logits = _run_nnsight(loaded, inputs, intervention, layout)
        else:
            with _clean_prefix(loaded.blocks, clean_outputs, start, len(ids)):
                logits = _run_local(loaded, inputs, intervention, layout)
        if logits_to_keep is not None and logits.shape[1] != logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        intervention.final(logits)


def reusable(clean: Intervention, start: int) -> int:
    """``start`` for :func:`run` after ``clean`` ran without intervention: 0 where the blocks return tuples
    (their cached output would have to rebuild the tuple)."""
    return start if clean.tensor_blocks else 0


@contextmanager
def _clean_prefix(blocks, clean_outputs, start: int, rows: int) -> Iterator[None]:
    """Blocks ``< start`` return ``clean_outputs`` (expanded to ``rows``) instead of computing: the rows of a
    batch that intervene from block ``start`` on share the clean run before it, so it is not recomputed."""
    if not start:
        yield
        return
    if clean_outputs is None:
        raise ValueError("start > 0 needs the blocks' clean outputs.")
    # A wrapper (nnsight) may have set its own instance-level forward: it is put back afterwards.
    saved = {index: blocks[index].__dict__.get("forward") for index in range(start)}
    try:
        for index in range(start):
            cached = clean_outputs[index]
            blocks[index].forward = lambda *args, cached=cached, **kwargs: cached.expand(rows, -1, -1).clone()
        yield
    finally:
        for index, forward in saved.items():
            if forward is None:
                del blocks[index].forward
            else:
                blocks[index].forward = forward


@contextmanager
def _contiguous_head_input(model: torch.nn.Module, logits_to_keep: int | None) -> Iterator[None]:
    """The LM head reads a contiguous copy of its input while ``logits_to_keep`` slices it.

    Transformers passes the head ``hidden[:, -k:, :]``, a strided view; ``matmul`` cannot fold a strided
    ``(R, k, D)`` into one ``(R k, D)`` product, so it broadcasts the ``(V, D)`` weight over the rows and
    runs a batched product (10x the time of one ``mm`` for SmolLM2's 49k x 576 head on a CPU, and again
    in the backward pass: half the integrated gradients' time). A copy of ``R k D`` numbers avoids it.
    """
    head = model.get_output_embeddings() if logits_to_keep is not None else None
    if head is None:
        yield
        return
    handle = head.register_forward_pre_hook(
        lambda module, args: (args[0].contiguous(), *args[1:]) if args else None
    )
    try:
        yield
    finally:
        handle.remove()


def _hidden_arg(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _run_local(loaded: Loaded, inputs: dict, intervention: Intervention, layout) -> torch.Tensor:
    writes: dict[tuple[str, int], torch.Tensor] = {}
    handles = []

    def pre_hook(index):
        def hook(module, args, kwargs):
            new = intervention.block_input(index, _hidden_arg(args, kwargs))
            if new is None:
                return None
            if args:
                return (new, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": new}

        return hook

    def post_hook(index):
        def hook(module, args, kwargs, output):
            intervention.tensor_blocks = torch.is_tensor(output)
            view = BlockView(
                index,
                _hidden_arg(args, kwargs),
                first_output(output),
                writes.pop(("attention", index), None),
                writes.pop(("mlp", index), None),
            )
            new = intervention.block_output(view)
            if new is None:
                return None
            return new if torch.is_tensor(output) else (new, *output[1:])

        return hook

    def write_hook(kind, index):
        def hook(module, args, output):
            # A clone: some blocks update a sub-layer's output in place after the hook has run.
            writes[(kind, index)] = first_output(output).clone()

        return hook

    try:
        for index, block in enumerate(loaded.blocks):
            handles.append(block.register_forward_pre_hook(pre_hook(index), with_kwargs=True))
            if intervention.wants_submodules:
                for kind in ("attention", "mlp"):
                    module = block.get_submodule(getattr(layout, kind))
                    handles.append(module.register_forward_hook(write_hook(kind, index)))
            handles.append(block.register_forward_hook(post_hook(index), with_kwargs=True))
        return loaded.model(**inputs).logits
    finally:
        for handle in handles:
            handle.remove()


def _envoy(root: Any, path: str) -> Any:
    for attribute in path.split("."):
        root = root[int(attribute)] if attribute.isdigit() else getattr(root, attribute)
    return root


def _run_nnsight(loaded: Loaded, inputs: dict, intervention: Intervention, layout) -> torch.Tensor:
    # Modules are read in execution order (nnsight 0.8 raises OutOfOrderError otherwise): a block's input,
    # its attention's and MLP's outputs, then its output.
    traced = loaded.traced
    blocks = _envoy(traced, loaded.blocks_path)
    result: dict[str, torch.Tensor] = {}
    with traced.trace(dict(inputs)):
        for index in range(len(loaded.blocks)):
            block = blocks[index]
            hidden = block.input
            new = intervention.block_input(index, hidden)
            if new is not None:
                block.input = new
                hidden = new
            attention = mlp = None
            if intervention.wants_submodules:
                attention = first_output(_envoy(block, layout.attention).output).clone()
                mlp = first_output(_envoy(block, layout.mlp).output).clone()
            output = block.output
            intervention.tensor_blocks = torch.is_tensor(output)
            new = intervention.block_output(BlockView(index, hidden, first_output(output), attention, mlp))
            if new is not None:
                block.output = new if torch.is_tensor(output) else (new, *output[1:])
        result["logits"] = traced.output.logits
    return result["logits"]
