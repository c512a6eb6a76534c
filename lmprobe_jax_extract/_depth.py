"""How much each decoder block writes to the residual stream, and what skipping it does to later blocks.

The measures of Csordás et al., "Do Language Models Use Their Depth Efficiently?" (2025), as its nnsight
notebook defines them (Fig. 2 and 3), per token position ``p`` of block ``l`` with input ``h``, output
``h'``, attention write ``a`` and MLP write ``m``:

.. math::

    r_{attn} = \\frac{\\|a\\|}{\\|h\\|}, \\quad
    r_{mlp} = \\frac{\\|m\\|}{\\|s\\|}, \\quad
    r_{layer} = \\frac{\\|h' - h\\|}{\\|h\\|}, \\quad
    \\cos_{attn} = \\cos(a, h), \\quad \\cos_{mlp} = \\cos(m, s), \\quad \\cos_{layer} = \\cos(h' - h, h)

(norms clamped below at 1e-6) where ``s`` is the stream the MLP reads: ``h + a`` in a sequential block,
``h`` itself in a parallel one (GPT-J, Phi-1/2, GPT-NeoX with ``use_parallel_residual``; see
:mod:`._layout`). Each is averaged over every token position ``p >= skip_first`` of every text: a sum
over positions divided by their count (the notebook divides by ``layer.output[0].shape[1]``, which is the
hidden size under transformers >= 5).

Skipping block ``s`` sets its output to its input at positions ``keep_first <= p`` (the first token,
which carries a massive activation in many models, keeps its output, as the notebook's
``no_skip_front=1``). Its effect on block ``l`` at position ``p`` is the relative change of that block's
write, ``||c'_l - c_l|| / max(||c_l||, 1e-6)`` with ``c = h' - h``; its effect on the output is
``||softmax(z') - softmax(z)||_2`` over the vocabulary. Two variants:

* all tokens: skip at every position from ``keep_first``, measure every position from ``skip_first``.
* later tokens only: skip at positions ``keep_first <= p < t`` and measure ``p >= t``, for split points
  ``t`` drawn from ``split_every, 2 split_every, ... < T - 4`` (the notebook's ``range(8, T - 4, 8)``,
  at most ``n_splits`` per text): a block whose effect reaches later tokens takes part in a mechanism that
  spans positions.

Both report the max and the mean over the measured positions (of every text and split). Blocks before
``s`` are unaffected by causality and reported as exactly 0.

Batched: the notebook runs one trace per skipped block (and per split). Here every (skipped block, split)
of one text is a row of one batch, the text replicated along the batch axis, cut into chunks that fit
``max_batch_bytes``; rows are ordered by skipped block, and the blocks up to a chunk's first skipped one
are not run again but return their clean outputs (hooks backend), which saves about half the blocks'
work. The arithmetic per row is the notebook's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from ._intervene import BlockView, Intervention, load, reusable, rows_per_chunk, run, tokenize_texts
from ._layout import BlockLayout, block_layout, check_additive, widen

NORM_FLOOR = 1e-6  # the notebook's clamp on the norm a contribution is divided by
CONTRIBUTION_NAMES = ("rel_attn", "rel_mlp", "rel_layer", "cos_attn", "cos_mlp", "cos_layer")


class Contributions(NamedTuple):
    """Per-block means over token positions (Fig. 2a / 2b of the notebook); every array is ``(L,)``.

    ``rel_mlp`` and ``cos_mlp`` are relative to the stream the MLP reads: ``h + attn`` when
    ``parallel`` is False, ``h`` when it is True. ``n_tokens`` positions were averaged.
    """

    rel_attn: np.ndarray
    rel_mlp: np.ndarray
    rel_layer: np.ndarray
    cos_attn: np.ndarray
    cos_mlp: np.ndarray
    cos_layer: np.ndarray
    n_tokens: int
    parallel: bool


class SkipEffects(NamedTuple):
    """What skipping each block does (Fig. 3 of the notebook). Row ``s`` is the skipped block.

    Attributes:
      future_max, future_mean: ``(L, L)``; entry ``[s, l]`` is the relative change of block ``l``'s write
        to the stream, max / mean over the measured positions (0 for ``l < s``).
      output_max, output_mean: ``(L,)``; the L2 norm of the change of the output probability vector.
      n_positions: ``(L,)`` int; measured (run, position) pairs behind each mean.
    """

    future_max: np.ndarray
    future_mean: np.ndarray
    output_max: np.ndarray
    output_mean: np.ndarray
    n_positions: np.ndarray


class DepthAnalysis(NamedTuple):
    """Everything :func:`depth_analysis` measured; an analysis that was not asked for is None.

    ``skip`` is the all-tokens variant, ``skip_later_tokens`` the later-tokens-only one; ``n_tokens``
    counts the positions from ``skip_first`` on, over ``n_texts`` texts.
    """

    contributions: Contributions | None
    skip: SkipEffects | None
    skip_later_tokens: SkipEffects | None
    n_texts: int
    n_tokens: int
    skip_first: int


def per_position_contributions(
    h_in: torch.Tensor, h_out: torch.Tensor, attn: torch.Tensor, mlp: torch.Tensor, parallel: bool
) -> torch.Tensor:
    """The six measures at every position: ``(..., T, D)`` streams -> ``(6, ..., T)`` float32 (float64 for
    float64 streams), in the order of :data:`CONTRIBUTION_NAMES`."""
    h_in, h_out, attn, mlp = (widen(t) for t in (h_in, h_out, attn, mlp))
    layer = h_out - h_in
    mlp_reads = h_in if parallel else h_in + attn
    floor = NORM_FLOOR

    def ratio(x, ref):
        return x.norm(dim=-1) / ref.norm(dim=-1).clamp(min=floor)

    return torch.stack(
        [
            ratio(attn, h_in),
            ratio(mlp, mlp_reads),
            ratio(layer, h_in),
            F.cosine_similarity(attn, h_in, dim=-1),
            F.cosine_similarity(mlp, mlp_reads, dim=-1),
            F.cosine_similarity(layer, h_in, dim=-1),
        ]
    )


def relative_change(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """``||new - old|| / max(||old||, 1e-6)`` over the last axis, in float32 (float64 for float64 input)."""
    new, old = widen(new), widen(old)
    return (new - old).norm(dim=-1) / old.norm(dim=-1).clamp(min=NORM_FLOOR)


class _CleanPass(Intervention):
    """One text, no intervention: the contribution sums over measured positions, each block's write
    ``h' - h`` ``(L, T, D)`` and the output probabilities ``(T, V)``, for the skip runs to compare with."""

    def __init__(self, n_blocks: int, measured: torch.Tensor, layout: BlockLayout | None, keep: bool):
        self.wants_submodules = layout is not None
        self.layout, self.measured, self.keep = layout, measured, keep
        self.sums = torch.zeros(n_blocks, len(CONTRIBUTION_NAMES), dtype=torch.float64)
        self.writes: list[torch.Tensor] = []
        self.outputs: list[torch.Tensor] = []
        self.probs: torch.Tensor | None = None

    def block_output(self, view: BlockView) -> None:
        h_in, h_out = view.input[0], view.output[0]
        if self.layout is not None:
            attn, mlp = view.attention[0], view.mlp[0]
            check_additive(view.index, h_in, h_out, attn, mlp, self.layout)
            values = per_position_contributions(h_in, h_out, attn, mlp, self.layout.parallel)
            self.sums[view.index] = values[:, self.measured].double().sum(-1).cpu()
        if self.keep:
            self.writes.append((widen(h_out) - widen(h_in)).detach())
            self.outputs.append(view.output.detach())

    def final(self, logits: torch.Tensor) -> None:
        if self.keep:
            self.probs = widen(logits[0]).softmax(-1).detach()


class _SkipRows(Intervention):
    """A batch of rows of one text; row r skips block ``skipped[r]`` at its ``intervene[r]`` positions.

    Keeps, per row, the max and the sum over its ``measured[r]`` positions of the relative change of each
    block's write ``(R, L)`` and of the output-probability change ``(R,)``.
    """

    def __init__(self, skipped, intervene, measured, clean_writes, clean_probs):
        self.skipped, self.intervene, self.measured = skipped, intervene, measured
        self.clean_writes, self.clean_probs = clean_writes, clean_probs
        rows, blocks = len(skipped), len(clean_writes)
        self.layer_max = torch.zeros(rows, blocks, dtype=torch.float64)
        self.layer_sum = torch.zeros(rows, blocks, dtype=torch.float64)
        self.output_max = torch.zeros(rows, dtype=torch.float64)
        self.output_sum = torch.zeros(rows, dtype=torch.float64)

    def _reduce(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        masked = torch.where(self.measured, values, torch.zeros_like(values))
        return masked.max(-1).values.double().cpu(), masked.double().sum(-1).cpu()

    def block_output(self, view: BlockView) -> torch.Tensor | None:
        index = view.index
        skip_here = self.skipped == index
        output = view.output
        if bool(skip_here.any()):
            replace = (skip_here[:, None] & self.intervene)[..., None]
            output = torch.where(replace, view.input, output)
        change = relative_change(output - view.input, self.clean_writes[index])
        change = change * (self.skipped <= index)[:, None]  # blocks before the skipped one: unaffected
        self.layer_max[:, index], self.layer_sum[:, index] = self._reduce(change)
        return output if bool(skip_here.any()) else None

    def final(self, logits: torch.Tensor) -> None:
        change = (widen(logits).softmax(-1) - self.clean_probs).norm(dim=-1)
        self.output_max, self.output_sum = self._reduce(change)


class _SkipTotals:
    """Running max / sum / count per (skipped block, measured block) over texts, for one variant."""

    def __init__(self, n_blocks: int):
        self.layer_max = np.zeros((n_blocks, n_blocks))
        self.layer_sum = np.zeros((n_blocks, n_blocks))
        self.output_max = np.zeros(n_blocks)
        self.output_sum = np.zeros(n_blocks)
        self.count = np.zeros(n_blocks, dtype=np.int64)

    def add(self, skipped: np.ndarray, counts: np.ndarray, rows: _SkipRows, select: np.ndarray) -> None:
        for r in np.flatnonzero(select):
            s = skipped[r]
            self.layer_max[s] = np.maximum(self.layer_max[s], rows.layer_max[r].numpy())
            self.layer_sum[s] += rows.layer_sum[r].numpy()
            self.output_max[s] = max(self.output_max[s], float(rows.output_max[r]))
            self.output_sum[s] += float(rows.output_sum[r])
            self.count[s] += counts[r]

    def result(self) -> SkipEffects:
        count = np.maximum(self.count, 1)
        return SkipEffects(
            self.layer_max,
            self.layer_sum / count[:, None],
            self.output_max,
            self.output_sum / count,
            self.count.copy(),
        )


def split_points(
    n_tokens: int, split_every: int, n_splits: int | None, rng: np.random.Generator
) -> list[int]:
    """Split positions ``t`` for the later-tokens variant: ``range(split_every, n_tokens - 4,
    split_every)`` (at least five measured positions after each), shuffled, the first ``n_splits``."""
    points = list(range(split_every, n_tokens - 4, split_every))
    rng.shuffle(points)
    return sorted(points[:n_splits] if n_splits is not None else points)


def _check_depth_args(skip_first, keep_first, split_every, n_splits):
    for name, value, low in (("skip_first", skip_first, 0), ("keep_first", keep_first, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, not {value!r}.")
    if isinstance(split_every, bool) or not isinstance(split_every, int) or split_every <= keep_first:
        raise ValueError(
            f"split_every must be an integer above keep_first={keep_first} (a split skips positions "
            f"keep_first..t-1), not {split_every!r}."
        )
    if n_splits is not None and (not isinstance(n_splits, int) or n_splits < 1):
        raise ValueError(
            f"n_splits must be a positive integer or None (every split point), not {n_splits!r}."
        )


def depth_analysis(
    model: Any,
    texts: Sequence[str],
    *,
    skip_first: int = 0,
    contributions: bool = True,
    skip: bool = True,
    later_tokens: bool = True,
    keep_first: int = 1,
    split_every: int = 8,
    n_splits: int | None = 4,
    seed: int = 0,
    backend: str = "local",
    tokenizer: Any = None,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    layout: BlockLayout | None = None,
    max_batch_bytes: int = 1 << 30,
    progress: bool = True,
) -> DepthAnalysis:
    """Relative contributions, cosines and skip-layer effects of every decoder block (see module doc).

    Args:
      model: a model directory, ``.gguf`` file, hub id, ``(model, tokenizer)`` pair, or loaded model with
        ``tokenizer=``.
      texts: N strings, each tokenised on its own with the tokenizer's defaults.
      skip_first: means (and maxima) cover positions ``p >= skip_first`` of each text; every text must be
        longer than that.
      contributions, skip, later_tokens: which analyses to run (Fig. 2; Fig. 3 all tokens; Fig. 3 later
        tokens only).
      keep_first: positions ``p < keep_first`` keep a skipped block's output (the notebook's 1).
      split_every, n_splits, seed: split points of the later-tokens variant (see :func:`split_points`);
        ``n_splits=None`` takes every one.
      backend: ``"local"`` (forward hooks) or ``"nnsight"``; both give the same numbers.
      dtype, device: compute dtype and device of a model loaded here.
      layout: the block layout for an architecture :func:`.block_layout` does not know.
      max_batch_bytes: memory for one batched forward of skip rows (see :func:`._intervene.rows_per_chunk`).

    Returns:
      A :class:`DepthAnalysis` of numpy arrays.
    """
    _check_depth_args(skip_first, keep_first, split_every, n_splits)
    loaded = load(model, tokenizer=tokenizer, dtype=dtype, device=device, backend=backend)
    ids = tokenize_texts(loaded.tokenizer, texts)
    short = [i for i, row in enumerate(ids) if len(row) <= skip_first]
    if short:
        raise ValueError(
            f"texts[{short[0]}] has {len(ids[short[0]])} tokens, so skip_first={skip_first} leaves none of its "
            "positions to measure: lower skip_first or remove the short texts."
        )
    rng = np.random.default_rng(seed)
    splits = [split_points(len(row), split_every, n_splits, rng) if later_tokens else [] for row in ids]
    if skip and later_tokens and not any(splits):
        raise ValueError(
            f"The later-tokens variant needs a text of at least {split_every + 5} tokens (a split every "
            f"{split_every} tokens with five positions after it); the longest text has "
            f"{max(map(len, ids))}. Pass longer texts or later_tokens=False."
        )
    layout = block_layout(loaded.model, layout) if contributions else None
    n_blocks = len(loaded.blocks)
    sums = np.zeros((n_blocks, len(CONTRIBUTION_NAMES)))
    n_tokens = 0
    totals = {False: _SkipTotals(n_blocks), True: _SkipTotals(n_blocks)}
    from tqdm.auto import tqdm

    for row, text_splits in zip(
        tqdm(ids, desc="depth", unit="text", disable=not progress), splits, strict=True
    ):
        input_ids = torch.tensor([row])
        positions = torch.arange(len(row))
        measured = positions >= skip_first
        clean = _CleanPass(n_blocks, measured, layout, keep=skip)
        run(loaded, input_ids, clean, layout=layout)
        sums += clean.sums.numpy()
        n_tokens += int(measured.sum())
        if skip:
            _skip_text(loaded, row, text_splits, clean, keep_first, skip_first, max_batch_bytes, totals)
    result = None
    if contributions:
        means = sums / n_tokens
        result = Contributions(*means.T, n_tokens=n_tokens, parallel=layout.parallel)
    return DepthAnalysis(
        contributions=result,
        skip=totals[False].result() if skip else None,
        skip_later_tokens=totals[True].result() if skip and later_tokens else None,
        n_texts=len(ids),
        n_tokens=n_tokens,
        skip_first=skip_first,
    )


def _skip_text(loaded, row, text_splits, clean, keep_first, skip_first, max_batch_bytes, totals) -> None:
    """Every skip run of one text (all-tokens rows, then later-tokens rows), in chunks of rows."""
    n_blocks, n_tokens = len(loaded.blocks), len(row)
    # Ordered by skipped block: a chunk's rows share the clean run up to its first skipped block.
    specs = sorted(
        [(s, None) for s in range(n_blocks)] + [(s, t) for t in text_splits for s in range(n_blocks)],
        key=lambda spec: spec[0],
    )
    positions = torch.arange(n_tokens)
    skipped = torch.tensor([s for s, _ in specs])
    split = torch.tensor([n_tokens if t is None else t for _, t in specs])
    later = np.array([t is not None for _, t in specs])
    intervene = (positions >= keep_first) & (positions < split[:, None])
    measured = positions >= torch.maximum(split * torch.as_tensor(later), torch.tensor(skip_first))[:, None]
    counts = measured.sum(-1).numpy()
    device = clean.writes[0].device
    writes = torch.stack(clean.writes)
    chunk = rows_per_chunk(
        max_batch_bytes, n_tokens, writes.shape[-1], n_tokens, clean.probs.shape[-1], clean.probs.element_size()
    )
    for start in range(0, len(specs), chunk):
        rows = slice(start, start + chunk)
        analysis = _SkipRows(
            skipped[rows].to(device),
            intervene[rows].to(device),
            measured[rows].to(device),
            writes,
            clean.probs,
        )
        start = reusable(clean, int(skipped[rows].min()) + 1)  # blocks up to the first skipped one: clean
        run(
            loaded,
            torch.tensor([row] * len(skipped[rows])),
            analysis,
            clean_outputs=clean.outputs,
            start=start,
        )
        for variant in (False, True):
            totals[variant].add(skipped[rows].numpy(), counts[rows], analysis, later[rows] == variant)
