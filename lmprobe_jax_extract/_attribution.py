"""Where along depth each token still matters to an answer: residual erasure and integrated gradients.

Both take a question and its answer, as the depth-efficiency notebook (Csordás et al., 2025, Fig. 6)
does; the input is the question's tokens (the tokenizer's defaults) followed by the answer's (no special
tokens), so the last ``A`` positions are exactly the answer. Stream ``l`` is the residual stream entering
block 0 for ``l = 0`` (the embeddings) and leaving block ``l - 1`` otherwise.

* :func:`residual_erasure` (Fig. 6b): for every stream ``l`` and position ``t``, the stream's vector at
  ``t`` is replaced by an uninformative one -- the stream's mean over every token of some baseline texts
  -- and the effect is ``max_a ||softmax(z'_a) - softmax(z_a)||_2`` over the positions ``a`` that predict
  answer tokens. ``(L + 1, T)``.
* :func:`integrated_gradients` (Fig. 6a): for block ``l``'s output ``x`` (``T x D``), baseline ``x'`` its
  mean over positions, and the sum ``P`` of the probabilities of the answer tokens,

  .. math::

      IG_{l,t} = \\sum_d (x - x')_{t,d} \\frac{1}{N} \\sum_{k=0}^{N-1}
      \\frac{\\partial P}{\\partial x_{t,d}}\\Big|_{x' + \\frac{k}{N}(x - x')}

  (the notebook's left Riemann sum with ``N = n_steps``). ``(L, T)``.

Batched: each (stream, position) erasure and each (block, step) interpolation is one row of a batch of
copies of the input, so one forward (and, for the gradients, one backward) serves many of the notebook's
traces. Rows are cut to ``max_batch_bytes`` (erasure) or ``batch_size`` (gradient steps), in stream /
block order, and the blocks before a chunk's first intervention return their clean outputs instead of
running again (hooks backend).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

import numpy as np
import torch

from ._intervene import BlockView, Intervention, Loaded, load, reusable, rows_per_chunk, run, tokenize_texts
from ._layout import widen


class Erasure(NamedTuple):
    """Residual erasure effects: ``effect`` is ``(L + 1, T)`` (stream, erased position); ``tokens`` the T
    token strings; the last ``n_answer`` tokens are the answer."""

    effect: np.ndarray
    tokens: list[str]
    n_answer: int


class IntegratedGradients(NamedTuple):
    """Integrated gradients of the answer's probability: ``attributions`` is ``(L, T)`` (block whose
    output is interpolated, position); ``tokens`` the T token strings; the last ``n_answer`` are the answer."""

    attributions: np.ndarray
    tokens: list[str]
    n_answer: int
    n_steps: int


def question_answer_ids(tokenizer: Any, question: str, answer: str) -> tuple[list[int], int]:
    """The question's ids (tokenizer defaults) followed by the answer's (no special tokens), and the
    answer's length."""
    if not isinstance(question, str) or not isinstance(answer, str):
        raise TypeError("question and answer must be strings.")
    (q_ids,) = tokenize_texts(tokenizer, [question], "question")
    a_ids = list(tokenizer(answer, add_special_tokens=False)["input_ids"])
    if not a_ids:
        raise ValueError(f"The answer {answer!r} tokenises to nothing: pass a non-empty answer.")
    return q_ids + a_ids, len(a_ids)


def _token_strings(tokenizer: Any, ids: list[int]) -> list[str]:
    return [tokenizer.decode([i]) for i in ids]


class _Streams(Intervention):
    """No intervention: keeps every stream of one row, ``(L + 1, T, D)`` in at least float32 (entry 0 =
    block 0's input), and the output probabilities of the last ``keep`` positions."""

    def __init__(self):
        self.streams: list[torch.Tensor] = []
        self.outputs: list[torch.Tensor] = []  # the blocks' outputs as they are (dtype kept)
        self.probs: torch.Tensor | None = None

    def block_input(self, index: int, hidden: torch.Tensor) -> None:
        if index == 0:
            self.streams.append(widen(hidden[0]).detach())

    def block_output(self, view: BlockView) -> None:
        self.streams.append(widen(view.output[0]).detach())
        self.outputs.append(view.output.detach())

    def final(self, logits: torch.Tensor) -> None:
        self.probs = widen(logits[0]).softmax(-1).detach()


def _streams(loaded: Loaded, ids: list[int], logits_to_keep: int | None = None) -> _Streams:
    streams = _Streams()
    run(loaded, torch.tensor([ids]), streams, logits_to_keep=logits_to_keep)
    return streams


class _EraseRows(Intervention):
    """Row r writes ``baseline[stream[r]]`` at position ``position[r]`` of stream ``stream[r]``; keeps
    ``max_a ||p'_a - p_a||`` over the answer-predicting positions ``(R,)``."""

    def __init__(self, stream, position, baseline, clean_probs):
        self.stream, self.position, self.baseline, self.clean_probs = stream, position, baseline, clean_probs
        self.effect: torch.Tensor | None = None

    def _erase(self, level: int, hidden: torch.Tensor) -> torch.Tensor | None:
        rows = torch.nonzero(self.stream == level).flatten()
        if not len(rows):
            return None
        value = self.baseline[level].to(hidden.dtype).expand(len(rows), -1)
        return hidden.index_put((rows, self.position[rows]), value)

    def block_input(self, index: int, hidden: torch.Tensor) -> torch.Tensor | None:
        return self._erase(0, hidden) if index == 0 else None

    def block_output(self, view: BlockView) -> torch.Tensor | None:
        return self._erase(view.index + 1, view.output)

    def final(self, logits: torch.Tensor) -> None:
        change = (widen(logits[:, :-1]).softmax(-1) - self.clean_probs[:-1]).norm(dim=-1)
        self.effect = change.max(-1).values.cpu()


def residual_erasure(
    model: Any,
    question: str,
    answer: str,
    baseline_texts: Sequence[str],
    *,
    backend: str = "local",
    tokenizer: Any = None,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    max_batch_bytes: int = 1 << 30,
    progress: bool = True,
) -> Erasure:
    """Erase each (stream, position) of ``question + answer`` in turn and measure the answer's change.

    The uninformative vector of stream ``l`` is its mean over every token position of
    ``baseline_texts`` (each tokenised on its own; the notebook uses 10 GSM8K problems). See the module
    docstring for the effect's definition; returns an :class:`Erasure`.
    """
    loaded = load(model, tokenizer=tokenizer, dtype=dtype, device=device, backend=backend)
    baseline_ids = tokenize_texts(loaded.tokenizer, baseline_texts, "baseline_texts")
    ids, n_answer = question_answer_ids(loaded.tokenizer, question, answer)
    total, count = 0.0, 0
    for row in baseline_ids:
        streams = torch.stack(_streams(loaded, row).streams)
        total = total + streams.double().sum(1)
        count += len(row)
    baseline = (total / count).to(streams.dtype)  # (L + 1, D)
    keep = n_answer + 1
    clean = _streams(loaded, ids, logits_to_keep=keep)
    n_streams, n_tokens = baseline.shape[0], len(ids)
    stream = torch.arange(n_streams).repeat_interleave(n_tokens)
    position = torch.arange(n_tokens).repeat(n_streams)
    device_ = clean.probs.device
    baseline = baseline.to(device_)
    chunk = rows_per_chunk(
        max_batch_bytes, n_tokens, baseline.shape[-1], keep, clean.probs.shape[-1], clean.probs.element_size()
    )
    effect = torch.empty(len(stream), dtype=torch.float64)
    from tqdm.auto import tqdm

    for start in tqdm(range(0, len(stream), chunk), desc="erasure", disable=not progress):
        rows = slice(start, start + chunk)
        erase = _EraseRows(stream[rows].to(device_), position[rows].to(device_), baseline, clean.probs)
        start = reusable(clean, int(stream[rows].min()))  # stream l >= 1 is block l-1's output: clean before
        run(
            loaded,
            torch.tensor([ids] * len(stream[rows])),
            erase,
            logits_to_keep=keep,
            clean_outputs=clean.outputs,
            start=start,
        )
        effect[rows] = erase.effect
    return Erasure(
        effect.reshape(n_streams, n_tokens).numpy().astype(np.float64),
        _token_strings(loaded.tokenizer, ids),
        n_answer,
    )


class _Interpolate(Intervention):
    """Row r replaces block ``layer[r]``'s output by ``x' + alpha[r] (x - x')`` (a leaf that requires grad)
    and the objective is the summed probability of the answer tokens over rows."""

    def __init__(self, layer, alpha, outputs, baselines, answer_ids):
        self.layer, self.alpha, self.outputs, self.baselines = layer, alpha, outputs, baselines
        self.answer_ids = answer_ids
        self.leaves: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.objective: torch.Tensor | None = None

    def block_output(self, view: BlockView) -> torch.Tensor | None:
        rows = torch.nonzero(self.layer == view.index).flatten()
        if not len(rows):
            return None
        x, base = self.outputs[view.index], self.baselines[view.index]
        target = base + self.alpha[rows, None, None] * (x - base)
        leaf = target.to(view.output.dtype).detach().requires_grad_(True)
        self.leaves[view.index] = (rows, leaf)
        return view.output.index_put((rows,), leaf)

    def final(self, logits: torch.Tensor) -> None:
        probs = widen(logits[:, :-1]).softmax(-1)
        answer = self.answer_ids.expand(len(probs), -1)
        self.objective = probs.gather(-1, answer[..., None]).sum()


@contextmanager
def _frozen(model: torch.nn.Module) -> Iterator[None]:
    """Parameters stop requiring grad for the duration (so autograd records nothing for them)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def integrated_gradients(
    model: Any,
    question: str,
    answer: str,
    *,
    n_steps: int = 256,
    batch_size: int = 16,
    backend: str = "local",
    tokenizer: Any = None,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> IntegratedGradients:
    """Integrated gradients of the answer's probability with respect to each block's output (see the
    module docstring): ``n_steps`` interpolation steps per block (the notebook's 256), ``batch_size``
    rows (steps, of any blocks) per forward and backward (the notebook's 16)."""
    for name, value in (("n_steps", n_steps), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, not {value!r}.")
    loaded = load(model, tokenizer=tokenizer, dtype=dtype, device=device, backend=backend)
    ids, n_answer = question_answer_ids(loaded.tokenizer, question, answer)
    clean = _streams(loaded, ids, logits_to_keep=1)
    outputs = torch.stack(clean.streams[1:])  # (L, T, D): block outputs
    baselines = outputs.mean(1, keepdim=True)  # (L, 1, D): the mean over positions
    n_blocks = len(outputs)
    device_ = outputs.device
    answer_ids = torch.tensor(ids[-n_answer:], device=device_)
    layer = torch.arange(n_blocks, device=device_).repeat_interleave(n_steps)
    alpha = (torch.arange(n_steps, device=device_, dtype=outputs.dtype) / n_steps).repeat(n_blocks)
    grad_sums = torch.zeros_like(outputs)
    from tqdm.auto import tqdm

    with _frozen(loaded.model):
        for start in tqdm(
            range(0, len(layer), batch_size), desc="integrated gradients", disable=not progress
        ):
            rows = slice(start, start + batch_size)
            step = _Interpolate(layer[rows], alpha[rows], outputs, baselines, answer_ids)
            start = reusable(clean, int(layer[rows].min()) + 1)  # up to the first replaced block: clean
            run(
                loaded,
                torch.tensor([ids] * len(layer[rows])),
                step,
                grad=True,
                logits_to_keep=n_answer + 1,
                clean_outputs=clean.outputs,
                start=start,
            )
            blocks = sorted(step.leaves)
            grads = torch.autograd.grad(step.objective, [step.leaves[b][1] for b in blocks])
            for block, grad in zip(blocks, grads, strict=True):
                grad_sums[block] += grad.to(grad_sums.dtype).sum(0)
    attributions = (grad_sums * (outputs - baselines)).sum(-1) / n_steps
    return IntegratedGradients(
        attributions.cpu().numpy().astype(np.float64),
        _token_strings(loaded.tokenizer, ids),
        n_answer,
        n_steps,
    )
