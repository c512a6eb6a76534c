"""Per-token signals of every decoder block, for a scan of a corpus (:class:`lmprobe_jax.SampleScan`).

Three signals per block ``l`` and token ``t`` (the same names as lmprobe's ``SampleScan``):

* ``residual``: the stream leaving block ``l``, ``h_out`` (layer ``l`` of an extraction);
* ``attn_delta``: what the attention adds to the stream, ``attn``;
* ``mlp_delta``: what the MLP adds, ``mlp``; so that ``h_out = h_in + attn + mlp``, which is checked on
  every forward (:func:`._layout.check_additive`), since a block whose writes are not named by its layout
  would be measured wrongly.

Texts are tokenised one by one (no padding): a forward runs up to ``batch_size`` texts of one length
together, so every row's tokens are real and the signals are each text's own.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from ._intervene import BlockView, Intervention, Loaded, load, run, tokenize_texts
from ._layout import BlockLayout, block_layout, check_additive, widen

SIGNALS = ("residual", "attn_delta", "mlp_delta")


def check_signals(signals: Sequence[str]) -> tuple[str, ...]:
    """``signals`` as a tuple, each one of :data:`SIGNALS`, none twice; ValueError otherwise."""
    if isinstance(signals, str):
        signals = [signals]
    signals = tuple(signals)
    if not signals:
        raise ValueError(f"signals is empty: pass one or more of {SIGNALS}.")
    unknown = [s for s in signals if s not in SIGNALS]
    if unknown:
        hint = " (a mixture-of-experts router signal is not captured here)" if "router_logits" in unknown else ""
        raise ValueError(f"Unknown signal(s) {unknown}{hint}: choose from {SIGNALS}.")
    if len(set(signals)) != len(signals):
        raise ValueError(f"signals {list(signals)} names a signal twice.")
    return signals


class SignalBatch(NamedTuple):
    """The signals of texts of one length ``T``.

    Attributes:
      texts: ``(R,)`` indices of the texts (into the captured corpus).
      values: ``(S, L, R, T, D)`` float32, signal ``s`` of block ``l`` at each token.
      log_probs: ``(R, T)`` float32, the log-probability the model gave to each next token; NaN at the
        last position (no next token).
    """

    texts: np.ndarray
    values: np.ndarray
    log_probs: np.ndarray


class _Capture(Intervention):
    def __init__(self, signals: tuple[str, ...], layout: BlockLayout | None, n_blocks: int):
        self.signals, self.layout = signals, layout
        self.wants_submodules = layout is not None
        self.values: list[list[np.ndarray | None]] = [[None] * n_blocks for _ in signals]
        self.logits: torch.Tensor | None = None

    def block_output(self, view: BlockView) -> None:
        if self.layout is not None:
            check_additive(view.index, view.input, view.output, view.attention, view.mlp, self.layout)
        tensors = {"residual": view.output, "attn_delta": view.attention, "mlp_delta": view.mlp}
        for s, name in enumerate(self.signals):
            self.values[s][view.index] = widen(tensors[name]).float().cpu().numpy()

    def final(self, logits: torch.Tensor) -> None:
        self.logits = logits


class SignalCapture:
    """A model ready to give :data:`SIGNALS` for a list of texts.

    Args:
      model: a model directory, ``.gguf`` file, hub id, ``(model, tokenizer)`` pair, or loaded model with
        ``tokenizer=``.
      texts: N strings, each tokenised on its own with the tokenizer's defaults (special tokens included).
      signals: names from :data:`SIGNALS`.
      tokenizer, dtype, device, backend: as :func:`lmprobe_jax_extract.depth_analysis`.
      layout: the block layout for an architecture :func:`.block_layout` does not know (only needed for
        ``attn_delta`` / ``mlp_delta``).

    Attributes:
      model_id: the model's id (a resolved directory, a hub id, or a loaded model's ``_name_or_path``).
      token_ids: one list of token ids per text.
      n_layers, hidden_size: the model's block count and stream width.
      tokenizer: the model's tokenizer.
    """

    def __init__(
        self,
        model: Any,
        texts: Sequence[str],
        signals: Sequence[str],
        *,
        tokenizer: Any = None,
        dtype: str | torch.dtype | None = None,
        device: str | torch.device | None = None,
        backend: str = "local",
        layout: BlockLayout | None = None,
    ):
        self.signals = check_signals(signals)
        self._loaded: Loaded = load(model, tokenizer=tokenizer, dtype=dtype, device=device, backend=backend)
        self.tokenizer = self._loaded.tokenizer
        self.model_id = self._loaded.source_id
        self.token_ids = tokenize_texts(self.tokenizer, texts)
        wants_writes = any(s != "residual" for s in self.signals)
        self._layout = block_layout(self._loaded.model, layout) if wants_writes else None
        self.n_layers = len(self._loaded.blocks)
        self.hidden_size = int(self._loaded.model.get_input_embeddings().weight.shape[-1])

    def batches(self, batch_size: int = 4) -> Iterator[SignalBatch]:
        """One :class:`SignalBatch` per forward: texts grouped by length, at most ``batch_size`` a batch."""
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        by_length: dict[int, list[int]] = {}
        for i, ids in enumerate(self.token_ids):
            by_length.setdefault(len(ids), []).append(i)
        for indices in by_length.values():
            for start in range(0, len(indices), int(batch_size)):
                chosen = indices[start : start + int(batch_size)]
                yield self._forward(np.asarray(chosen))

    def _forward(self, texts: np.ndarray) -> SignalBatch:
        ids = torch.tensor([self.token_ids[i] for i in texts])
        capture = _Capture(self.signals, self._layout, self.n_layers)
        run(self._loaded, ids, capture, layout=self._layout)
        values = np.stack([np.stack(per_block) for per_block in capture.values])
        log_probs = torch.log_softmax(widen(capture.logits).float(), dim=-1)
        next_ids = ids[:, 1:].to(log_probs.device)
        chosen = torch.gather(log_probs[:, :-1], 2, next_ids[..., None])[..., 0].cpu().numpy()
        nan = np.full((len(texts), 1), np.nan, np.float32)
        return SignalBatch(texts, values, np.concatenate([chosen, nan], axis=1))
