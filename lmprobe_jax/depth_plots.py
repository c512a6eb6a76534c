"""Figures of the depth analyses, drawn as the depth-efficiency notebook draws them, from the report dict
that ``lmprobe-jax depth`` writes to ``depth.json`` (so they can be redrawn without torch or a model).

* ``contributions.png``: per-block bars of the relative contribution and of the cosine with the stream,
  attention / MLP / whole block overlaid (the shortest bar in front), Fig. 2a / 2b.
* ``skip_layers.png``: the L x L heat maps of skip effects on later blocks (max and mean over positions,
  all tokens and later tokens only), Fig. 3.
* ``skip_output.png``: per skipped block, the change of the output distribution.
* ``logit_lens.png``: per block, the logit lens on the stream entering it against the output
  distribution: KL(lens || final) and the top-5 overlap, Fig. 4.
* ``erasure.png`` / ``integrated_gradients.png``: stream x token maps, Fig. 6b / 6a.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _overlaid_bars(ax, series: dict[str, np.ndarray]) -> None:
    """Bars of several series at the same x, each x's shortest bar drawn in front (the notebook's
    ``sort_zorder``)."""
    containers = [ax.bar(np.arange(len(v)), v, width=1.0, label=k) for k, v in series.items()]
    for group in zip(*containers, strict=True):
        for z, bar in enumerate(sorted(group, key=lambda b: abs(b.get_height()))):
            bar.set_zorder(len(group) - z)
    ax.set_xlim(-0.5, len(next(iter(series.values()))) - 0.5)
    ax.set_xlabel("layer (decoder block)")
    ax.legend(fontsize=8, loc="upper right")


RATIO_AXIS_TOP = 1.5  # the notebook's ylim: a block writing many times its input (layer 0) is labelled


def _clip_bars(ax, heights: np.ndarray, top: float) -> None:
    """Cut the y axis at ``top`` (when a bar passes it) and print the clipped bars' heights above them."""
    if heights.max() <= top:
        return
    ax.set_ylim(0, top)
    for x in np.flatnonzero(heights > top):
        ax.text(x, 0.97 * top, f"{heights[x]:.1f}", ha="center", va="top", fontsize=7, rotation=90)


def plot_contributions(report: dict, path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4), dpi=130)
    where = "the stream it reads" if report["parallel_blocks"] else "h_in + attn"
    for ax, kind, label in (
        (axes[0], "rel_contrib", "mean relative contribution"),
        (axes[1], "cos", "mean cosine with the stream"),
    ):
        _overlaid_bars(
            ax,
            {
                "attention": np.asarray(report[f"{kind}_attn"]),
                f"MLP (vs {where})": np.asarray(report[f"{kind}_mlp"]),
                "attention + MLP": np.asarray(report[f"{kind}_layer"]),
            },
        )
        ax.set_ylabel(label)
        if kind == "cos":
            ax.axhline(0, color="black", lw=0.6)
        else:
            _clip_bars(ax, np.asarray(report["rel_contrib_layer"]), top=RATIO_AXIS_TOP)
    first = report["skip_first"]
    fig.suptitle(
        f"{report['model_name']}: what each block writes to the residual stream "
        f"({report['n_tokens']} tokens{f', positions >= {first}' if first else ''})",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_skip_layers(report: dict, path: Path) -> None:
    plt = _pyplot()
    variants = [("", "all tokens")]
    if report.get("skip_effect_future_max_later_tokens") is not None:
        variants.append(("_later_tokens", "later tokens only"))
    fig, axes = plt.subplots(len(variants), 2, figsize=(11, 4.4 * len(variants)), dpi=130, squeeze=False)
    for row, (suffix, name) in enumerate(variants):
        for col, stat in enumerate(("max", "mean")):
            ax = axes[row, col]
            matrix = np.asarray(report[f"skip_effect_future_{stat}{suffix}"])
            image = ax.imshow(matrix, vmin=0, vmax=1, interpolation="nearest", cmap="viridis")
            ax.set_ylabel("layer skipped")
            ax.set_xlabel("effect @ layer")
            ax.set_title(f"{name}: {stat} over positions", fontsize=9)
            fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03, label="relative change (clipped at 1)")
    fig.suptitle(f"{report['model_name']}: skipping a block changes later blocks' writes", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_skip_output(report: dict, path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.2), dpi=130)
    for ax, stat in zip(axes, ("max", "mean"), strict=True):
        series = {"all tokens": np.asarray(report[f"skip_effect_output_{stat}"])}
        later = report.get(f"skip_effect_output_{stat}_later_tokens")
        if later is not None:
            series["later tokens only"] = np.asarray(later)
        _overlaid_bars(ax, series)
        ax.set_xlabel("layer skipped")
        ax.set_ylabel(f"output change norm ({stat})")
    fig.suptitle(f"{report['model_name']}: skipping a block changes the output distribution", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_logit_lens(report: dict, path: Path) -> None:
    plt = _pyplot()
    overlap = next(key for key in report if key.startswith("logit_lens_top") and key.endswith("_overlap"))
    k = overlap.removeprefix("logit_lens_top").removesuffix("_overlap")
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.2), dpi=130)
    for ax, key, label in (
        (axes[0], "logit_lens_kl_lens_final", "KL(lens || final), nats"),
        (axes[1], overlap, f"top-{k} overlap with the output"),
    ):
        values = np.asarray(report[key])
        ax.bar(np.arange(len(values)), values, width=1.0)
        ax.set_xlim(-0.5, len(values) - 0.5)
        ax.set_xlabel("layer (logit lens on the stream entering the block)")
        ax.set_ylabel(label)
    fig.suptitle(
        f"{report['model_name']}: where the output distribution forms "
        f"(logit lens, {report['logit_lens_n_tokens']} tokens)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_token_map(
    values: np.ndarray, tokens: list[str], path: Path, *, title: str, ylabel: str, label: str, diverging: bool
) -> None:
    """A (stream, token) map, the last token left out (it predicts nothing in the answer), lowest stream
    at the bottom; a diverging map is symmetric about 0 and scaled without the first token."""
    plt = _pyplot()
    values = np.asarray(values)[:, :-1]
    tokens = [repr(t)[1:-1].replace(" ", "\u2423") for t in tokens[:-1]]  # spaces shown as a visible mark
    fig, ax = plt.subplots(figsize=(max(5.0, 0.32 * len(tokens) + 2), 5.5), dpi=130)
    if diverging:
        r = float(np.abs(values[:, 1:]).max()) if values.shape[1] > 1 else float(np.abs(values).max())
        image = ax.imshow(values, cmap="seismic", vmin=-r, vmax=r, interpolation="nearest", aspect="auto")
    else:
        image = ax.imshow(values, interpolation="nearest", aspect="auto")
    ax.set_xticks(range(len(tokens)), tokens, rotation=45, ha="right", rotation_mode="anchor", fontsize=8)
    ax.invert_yaxis()
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03, label=label)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_depth(report: dict, out: Path) -> list[Path]:
    """Every figure the report has data for, written into ``out``; returns their paths."""
    out = Path(out)
    written = []
    if report.get("rel_contrib_layer") is not None:
        plot_contributions(report, out / "contributions.png")
        written.append(out / "contributions.png")
    if report.get("skip_effect_future_max") is not None:
        plot_skip_layers(report, out / "skip_layers.png")
        plot_skip_output(report, out / "skip_output.png")
        written += [out / "skip_layers.png", out / "skip_output.png"]
    if report.get("logit_lens_kl_lens_final") is not None:
        plot_logit_lens(report, out / "logit_lens.png")
        written.append(out / "logit_lens.png")
    maps = (
        (
            "erasure",
            "residual erasure",
            "stream (0 = embeddings, l = after block l-1)",
            "probability difference norm",
            False,
        ),
        (
            "integrated_gradients",
            "integrated gradients",
            "layer (decoder block output)",
            "attribution to the answer's probability",
            True,
        ),
    )
    for key, title, ylabel, label, diverging in maps:
        if report.get(key) is not None:
            plot_token_map(
                report[key],
                report["attribution_tokens"],
                out / f"{key}.png",
                title=f"{report['model_name']}: {title}",
                ylabel=ylabel,
                label=label,
                diverging=diverging,
            )
            written.append(out / f"{key}.png")
    return written
