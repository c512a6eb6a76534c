"""``analyze``: the whole lens job for a model and texts -- extraction, logit lens, optional tuned lens and
next-token probes, residual-stream statistics -- returned as one :class:`LensReport` (and written by the
``lmprobe-jax lens`` command as lens.json / lens.csv / lens.png)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from ._data import TokenData, token_data
from ._engine import LensMetrics
from ._logit_lens import logit_lens_metrics
from ._stats import StreamStats, stream_statistics
from ._training import Training

PROBES = {"linear": 0, "mlp": 256}
"""Probe kinds and their MLP hidden width (0: linear)."""

METRICS = ("kl_final_lens", "kl_lens_final", "ce_next_token", "entropy", "top1_agreement", "topk_overlap")


class LensReport(NamedTuple):
    """What :func:`analyze` measured; every metric is a per-layer mean over the evaluation texts' tokens.

    Attributes:
      layers: the layers measured (block indices; ``"embeddings"`` for the stream entering block 0).
      n_tokens: evaluation token positions; n_train_tokens: the lenses' training positions.
      logit_lens, tuned_lens, probe: :class:`LensMetrics` (``(L,)`` arrays) or None when not run.
      stats: :class:`StreamStats` of the evaluation streams.
      tuned_training, probe_training: the training records (loss curves, gradient norms) or None.
      lenses: ``{"tuned_lens": Translator, "probe": Probes}`` for what was trained.
      timings: seconds per stage.
      model: the store manifest's model record (id, fingerprint, class).
    """

    layers: list
    n_tokens: int
    n_train_tokens: int
    logit_lens: LensMetrics
    tuned_lens: LensMetrics | None
    probe: LensMetrics | None
    stats: StreamStats
    tuned_training: Training | None
    probe_training: Training | None
    lenses: dict
    timings: dict
    model: dict

    def to_json(self) -> dict:
        """The ``lens.json`` document: layers, token counts, the final distribution's cross-entropy, and per
        lens the per-layer lists of the six metrics (nats; agreement and overlap as fractions)."""

        def lens(metrics: LensMetrics | None, training: Training | None) -> dict | None:
            if metrics is None:
                return None
            out = {name: getattr(metrics, name).tolist() for name in METRICS[:-1]}
            out[f"top{metrics.k}_overlap"] = metrics.topk_overlap.tolist()
            if training is not None:
                out["training"] = {
                    "steps": training.n_steps,
                    "stop_reason": training.stop_reason,
                    "seconds": round(training.seconds, 2),
                    "final_loss": training.loss[-1].tolist(),
                    "final_grad_norm": training.grad_norm[-1].tolist(),
                    "loss_curve_mean": training.loss.mean(1).tolist(),
                }
            return out

        return {
            "layers": [layer if isinstance(layer, str) else int(layer) for layer in self.layers],
            "n_tokens": self.n_tokens,
            "n_train_tokens": self.n_train_tokens,
            "final_ce_next_token": self.logit_lens.final_ce_next_token,
            "final_entropy": self.logit_lens.final_entropy,
            "logit_lens": lens(self.logit_lens, None),
            "tuned_lens": lens(self.tuned_lens, self.tuned_training),
            "probe": lens(self.probe, self.probe_training),
            "residual_stream": {
                "spectrum_entropy": self.stats.spectrum_entropy.tolist(),
                "effective_rank": self.stats.effective_rank.tolist(),
                "log_frobenius": self.stats.log_frobenius.tolist(),
                "log_frobenius_no_first": self.stats.log_frobenius_no_first.tolist(),
            },
            "model": self.model,
            "timing_s": {name: round(value, 2) for name, value in self.timings.items()},
        }

    def rows(self) -> list[dict]:
        """One row per (lens, layer) with the six metrics, for ``lens.csv``."""
        rows = []
        for name in ("logit_lens", "tuned_lens", "probe"):
            metrics = getattr(self, name)
            if metrics is not None:
                rows += [{"lens": name, **row} for row in metrics.table(self.layers)]
        return rows


def analyze(
    model: Any,
    texts: Sequence[str],
    *,
    eval_texts: Sequence[str] | None = None,
    layers: Any = "all",
    tuned: bool = False,
    probe: str | None = None,
    probe_objective: str = "kl",
    probe_top_k: int | None = 1024,
    max_steps: int = 250,
    batch_tokens: int = 256,
    time_budget: float | None = None,
    k: int = 5,
    dtype: str | None = None,
    storage_dtype: str = "float32",
    batch_size: int = 8,
    cache_dir: Any = None,
    seed: int = 0,
    progress: bool = True,
) -> LensReport:
    """Every layer's view of the next token, for ``model`` (anything
    :func:`lmprobe_jax_extract.extract_token_streams` takes) on ``texts``.

    Lenses train on ``texts``; every metric is computed on ``eval_texts`` when given, else on ``texts``
    (each text tokenised on its own; metrics are means over every token position, cross-entropy over the
    positions with a next token).

    Args:
      layers: the layers to measure (default every block).
      tuned: train a tuned lens (:func:`fit_tuned_lens`, ``max_steps`` x ``batch_tokens``).
      probe: ``"linear"`` or ``"mlp"`` to train next-token probes (:func:`fit_next_token_probes`) with
        ``probe_objective`` (``"kl"`` / ``"ce"``) over ``probe_top_k`` tokens + "other" (None, or a K
        of at least the vocabulary size - 1: the whole vocabulary).
      time_budget: seconds each trained lens may take (it stops early and is still evaluated).
      k: the top-k overlap's k. dtype, storage_dtype, batch_size: the extraction's.
      cache_dir: where token-level stores are cached (default ``<cache root>/activations``).
      seed: minibatch order and probe initialisation. progress: progress bars.
    """
    from lmprobe_jax_extract import extract_token_streams
    from lmprobe_jax_store import cache_root

    if probe is not None and probe not in PROBES:
        raise ValueError(f"probe must be one of {sorted(PROBES)} or None, not {probe!r}.")
    cache_dir = cache_root() / "activations" if cache_dir is None else cache_dir
    timings: dict[str, float] = {}

    def extract(texts_: Sequence[str], what: str) -> tuple[TokenData, dict]:
        start = time.perf_counter()
        store = extract_token_streams(
            model,
            texts_,
            layers=layers,
            cache_dir=cache_dir,
            dtype=dtype,
            storage_dtype=storage_dtype,
            batch_size=batch_size,
            progress=progress,
        )
        timings[f"extract_{what}"] = time.perf_counter() - start
        return token_data(store, layers), store.manifest["model"]

    train, model_record = extract(texts, "train")
    evaluate = train if eval_texts is None else extract(eval_texts, "eval")[0]
    options = {"k": k, "progress": progress}

    def timed(name: str, fn, *args, **kwargs):
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        timings[name] = time.perf_counter() - start
        return out

    ev = (evaluate.streams, evaluate.final_stream, evaluate.next_ids, evaluate.readout)
    logit = timed("logit_lens_metrics", logit_lens_metrics, *ev, **options)
    stats = timed("stream_statistics", stream_statistics, evaluate.streams, evaluate.offsets)
    budget = {"max_steps": max_steps, "batch_tokens": min(batch_tokens, train.n_tokens), "seed": seed}
    lenses, tuned_metrics, tuned_training, probe_metrics_, probe_training = {}, None, None, None, None
    if tuned:
        from ._tuned import fit_tuned_lens, tuned_lens_metrics

        tuned_training = timed(
            "tuned_lens_training",
            fit_tuned_lens,
            train.streams,
            train.final_stream,
            train.readout,
            time_budget=time_budget,
            progress=progress,
            **budget,
        )
        lenses["tuned_lens"] = tuned_training.params
        tuned_metrics = timed("tuned_lens_metrics", tuned_lens_metrics, tuned_training.params, *ev, **options)
    if probe is not None:
        from ._probes import fit_next_token_probes, probe_metrics

        vocab = train.readout.unembed.shape[0]
        top_k = None if probe_top_k is None or probe_top_k >= vocab - 1 else probe_top_k
        probes, probe_training = timed(
            "probe_training",
            fit_next_token_probes,
            train.streams,
            train.final_stream,
            train.next_ids,
            train.readout,
            hidden=PROBES[probe],
            top_k=top_k,
            objective=probe_objective,
            time_budget=time_budget,
            progress=progress,
            **budget,
        )
        lenses["probe"] = probes
        probe_metrics_ = timed("probe_metrics", probe_metrics, probes, *ev, **options)
    return LensReport(
        layers=list(evaluate.layers),
        n_tokens=evaluate.n_tokens,
        n_train_tokens=train.n_tokens,
        logit_lens=logit,
        tuned_lens=tuned_metrics,
        probe=probe_metrics_,
        stats=stats,
        tuned_training=tuned_training,
        probe_training=probe_training,
        lenses=lenses,
        timings=timings,
        model=model_record,
    )


def plot_report(report: LensReport, path, title: str) -> None:
    """``lens.png`` for a :class:`LensReport` (see :func:`plot_lenses`)."""
    named = {
        "logit lens": report.logit_lens,
        "tuned lens": report.tuned_lens,
        "next-token probe": report.probe,
    }
    plot_lenses(report.layers, named, report.logit_lens.final_ce_next_token, path, title)


def plot_lenses(layers: Sequence, lenses: dict, final_ce: float, path, title: str) -> None:
    """Per-layer KL(final || lens), cross-entropy to the next token and top-1 agreement, one curve per
    lens (``{label: LensMetrics or None}``): the tuned-lens paper's figure, with its two companions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(layers))
    labels = [str(layer) for layer in layers]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), dpi=110)
    panels = (
        ("kl_final_lens", "KL(final ‖ lens) [nats]"),
        ("ce_next_token", "cross-entropy to the next token [nats]"),
        ("top1_agreement", "top-1 agreement with the final prediction"),
    )
    colors = ("tab:blue", "tab:orange", "tab:green", "tab:red")
    for ax, (metric, ylabel) in zip(axes, panels, strict=True):
        for (label, metrics), color in zip(lenses.items(), colors, strict=False):
            if metrics is not None:
                ax.plot(x, getattr(metrics, metric), marker="o", ms=3, color=color, label=label)
        if metric == "ce_next_token":
            ax.axhline(final_ce, color="grey", ls="--", lw=0.8, label="model output")
        ax.set_xlabel("layer (output of decoder block)")
        ax.set_ylabel(ylabel)
        step = max(1, len(x) // 10)
        ax.set_xticks(x[::step], labels[::step])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
