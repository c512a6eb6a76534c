"""The picture of one text under a scan's lens: a (layer x token) colour image per signal.

A token's colour at layer ``l`` encodes its coordinates on the layer's first three principal components:
channel ``c`` (red, green, blue) is ``(1 + tanh(z_c / (2 sigma_c))) / 2``, with ``sigma_c`` the corpus's
standard deviation along component ``c`` at that layer (the scan's explained variance), so mid-grey is
the corpus mean and a saturated colour is more than about two standard deviations out. The optional
strip above shows each next token's surprise (``-log p``), the optional bars at the right each layer's
mean energy ``sqrt(mean_t ||z_t||^2)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import matplotlib.figure


def scan_colours(projections: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """``(L, T, 3)`` RGB in [0, 1] from one signal's ``(T, L, k)`` coordinates and ``(L, k)`` standard
    deviations (components beyond ``k`` stay mid-grey)."""
    n_tokens, n_layers, k = projections.shape
    rgb = np.full((n_layers, n_tokens, 3), 0.5)
    c = min(3, k)
    z = np.transpose(projections[:, :, :c], (1, 0, 2)) / (2 * np.maximum(sigma[:, None, :c], 1e-12))
    rgb[..., :c] = 0.5 * (1 + np.tanh(z))
    return rgb


def render_scan_figure(
    projections: np.ndarray,
    tokens: Sequence[str],
    signal_names: Sequence[str],
    sigma: np.ndarray,
    *,
    log_probs: np.ndarray | None = None,
    layer_stats: np.ndarray | None = None,
    figsize: tuple[float, float] | None = None,
    title: str = "",
    generative_mask: np.ndarray | None = None,
) -> matplotlib.figure.Figure:
    """A figure of ``projections`` ``(T, L, S, k)``: one image per signal, layers upwards, tokens across.

    Args:
      projections: coordinates of each token, layer and signal.
      tokens: the T decoded tokens (the x tick labels).
      signal_names: the S signals' names (panel titles).
      sigma: ``(L, S, k)`` the corpus's standard deviation along each component (colour scale).
      log_probs: ``(T,)`` next-token log-probabilities (NaN where none): drawn as a surprise strip.
      layer_stats: ``(L, S)`` per-layer energies: drawn as bars at the right of each panel.
      figsize: inches; default grows with T and S.
      title: the figure title.
      generative_mask: ``(T,)`` bool; False tokens (the prompt) are greyed out.
    """
    import matplotlib.pyplot as plt

    n_tokens, n_layers, n_signals, _ = projections.shape
    strip = log_probs is not None
    heights = ([0.6] if strip else []) + [3.0] * n_signals
    widths = [max(4.0, 0.25 * n_tokens)] + ([1.0] if layer_stats is not None else [])
    if figsize is None:
        figsize = (sum(widths) + 1.5, sum(heights) + 1.0)
    fig, axes = plt.subplots(
        len(heights), len(widths), figsize=figsize, squeeze=False,
        gridspec_kw={"height_ratios": heights, "width_ratios": widths},
    )
    if strip:
        surprise = -np.asarray(log_probs, np.float64)
        axes[0, 0].bar(np.arange(n_tokens), np.nan_to_num(surprise), color="0.3", width=0.9)
        axes[0, 0].set_xlim(-0.5, n_tokens - 0.5)
        axes[0, 0].set_ylabel("-log p", fontsize=8)
        axes[0, 0].set_xticks([])
        for ax in axes[0, 1:]:
            ax.axis("off")
    for s, name in enumerate(signal_names):
        row = s + strip
        rgb = scan_colours(projections[:, :, s], sigma[:, s])
        if generative_mask is not None:
            prompt = ~np.asarray(generative_mask, bool)[:n_tokens]
            rgb[:, prompt] = 0.5 * rgb[:, prompt] + 0.25
        ax = axes[row, 0]
        ax.imshow(rgb, origin="lower", aspect="auto", interpolation="nearest")
        ax.set_ylabel(f"{name}\nlayer")
        ax.set_xticks(np.arange(n_tokens))
        ax.set_xticklabels([repr(t)[1:-1] for t in tokens], rotation=90, fontsize=7)
        if layer_stats is not None:
            bars = axes[row, 1]
            bars.barh(np.arange(n_layers), layer_stats[:, s], color="0.4", height=0.8)
            bars.set_ylim(-0.5, n_layers - 0.5)
            bars.set_yticks([])
            bars.set_xlabel("energy", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
