"""``SampleScan``: a PCA lens of every layer's residual stream, attention and MLP writes, fit on a corpus.

lmprobe's class and names. :meth:`SampleScan.run` runs the model once over the corpus
(:class:`lmprobe_jax_extract.SignalCapture`), fits the principal components of every (layer, signal)
on all real tokens (:func:`lmprobe_jax.functional.fit_pca`, every layer of a chunk in one program),
projects every token onto them and writes the scan (:mod:`lmprobe_jax_store._scan`). A loaded scan
answers per-token and per-layer queries from a memory map, maps where two classes separate along one
component (:meth:`SampleScan.separability_map`), and projects new prompts (:meth:`~SampleScan.plot`).

Differences from lmprobe, each deliberate: the components are fit on real tokens only (lmprobe's CPU
path fits on the padded batch too) and coordinates are centred on the corpus mean, ``(x - mean) V``;
projections are kept in float32 (lmprobe: float16); the samples table is a dict of columns (lmprobe:
a pyarrow Table); ``router_logits`` (mixture-of-experts routers) is not captured.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lmprobe_jax_store import (
    ScanBasis,
    finish_scan,
    open_scan_projections,
    read_scan,
    writing_scan,
)

if TYPE_CHECKING:
    import matplotlib.figure

DEFAULT_SIGNALS = ("attn_delta", "mlp_delta")
_BACKENDS = {"auto": "local", "chunked": "local", "local": "local", "nnsight": "nnsight"}


def _backend(backend: str) -> str:
    if backend == "disk_offload":
        raise NotImplementedError(
            "backend='disk_offload' is not available: use 'chunked' (or 'auto'); a model larger than memory "
            "can be given as an already-loaded model with device_map='auto'."
        )
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {sorted(_BACKENDS)}; got {backend!r}.")
    return _BACKENDS[backend]


def _fit_weights(lengths: list[int], generative_masks: Sequence[Any] | None) -> np.ndarray:
    """``(n_tokens,)`` 1 for tokens the fit uses, 0 otherwise (a mask shorter than its text: the rest out)."""
    if generative_masks is None:
        return np.ones(sum(lengths), np.float32)
    if len(generative_masks) != len(lengths):
        raise ValueError(f"generative_masks has {len(generative_masks)} masks for {len(lengths)} prompts.")
    parts = []
    for mask, n in zip(generative_masks, lengths, strict=True):
        row = np.ones(n, bool) if mask is None else np.zeros(n, bool)
        if mask is not None:
            mask = np.asarray(mask, bool).ravel()[:n]
            row[: len(mask)] = mask
        parts.append(row)
    return np.concatenate(parts).astype(np.float32)


def _layer_chunk(n_layers: int, n_rows: int, dim: int, chunk_size: int | str, memory_budget: Any) -> int:
    """Layers per PCA program: ``chunk_size``, or as many as ``memory_budget`` holds (the rows, their
    centred copy and projection, and a few ``D x D`` matrices per layer, float32)."""
    from lmprobe_jax.functional._budget import format_bytes
    from lmprobe_jax.functional._budget import memory_budget as budget_bytes

    if chunk_size != "auto":
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
            raise ValueError(f"chunk_size must be 'auto' or a positive integer (layers); got {chunk_size!r}.")
        return min(int(chunk_size), n_layers)
    per_layer = 4 * (3 * n_rows * dim + 5 * dim * dim)
    budget = budget_bytes(memory_budget)
    if per_layer > budget:
        raise ValueError(
            f"One layer's PCA needs about {format_bytes(per_layer)} ({n_rows} tokens x {dim} dims), more "
            f"than memory_budget={format_bytes(budget)}: raise memory_budget or scan fewer tokens."
        )
    return max(1, min(n_layers, budget // per_layer))


def _padded(X: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows padded with zeros of weight 0 to the solvers' compile bucket (one program for near sizes)."""
    from lmprobe_jax.functional._checks import bucket_rows, pad_rows

    rows = bucket_rows(X.shape[1])
    return pad_rows(X, rows, axis=1), pad_rows(weights, rows)


class SampleScan:
    """A scan on disk: per-(layer, signal) principal components of a corpus and every token's coordinates.

    Args:
      scan_dir: a directory written by :meth:`run`.
      backend: how :meth:`project_prompt` / :meth:`plot` run the model: ``"auto"`` / ``"chunked"`` /
        ``"local"`` (forward hooks) or ``"nnsight"``.
      model, tokenizer: the model to project new prompts with (default: the scan's ``model_id``); the
        scan returned by :meth:`run` keeps the one it was given.
    """

    def __init__(self, scan_dir: str | Path, *, backend: str = "auto", model: Any = None, tokenizer: Any = None):
        self._scan_dir = Path(scan_dir)
        self._files = read_scan(self._scan_dir)
        self._backend_mode = _backend(backend)
        self._model = self._files.metadata["model_id"] if model is None else model
        self._tokenizer = tokenizer

    @classmethod
    def run(
        cls,
        prompts: list[str],
        labels: list[Any],
        model_name: Any,
        scan_dir: str | Path,
        *,
        signals: list[str] | None = None,
        n_components: int = 64,
        device: str = "auto",
        dtype: Any = None,
        batch_size: int = 4,
        chunk_size: int | str = "auto",
        generative_masks: list[np.ndarray] | None = None,
        backend: str = "chunked",
        attn_implementation: str = "sdpa",
        tokenizer: Any = None,
        memory_budget: Any = None,
        progress: bool = False,
    ) -> SampleScan:
        """Run ``model_name`` over ``prompts`` once, fit the lens, and write the scan to ``scan_dir``.

        Args:
          prompts: the corpus, N texts (each tokenised on its own, special tokens included).
          labels: N labels (any JSON values; :meth:`separability_map` needs two distinct ones).
          model_name: a model directory, ``.gguf`` file, hub id, ``(model, tokenizer)`` pair, or a loaded
            model with ``tokenizer=``.
          scan_dir: where the scan is written (a previous scan there is replaced once the new one is
            complete; a non-empty directory that is not a scan is refused).
          signals: from ``("residual", "attn_delta", "mlp_delta")``; default ``attn_delta`` and ``mlp_delta``.
          n_components: components per (layer, signal); the scan keeps
            ``k = min(n_components, D, n_fit_tokens - 1)``.
          device, dtype: where and in which precision the model runs (``"auto"``: a GPU when there is one;
            dtype None: the loader's default).
          batch_size: texts of one length per forward (texts are never padded).
          chunk_size: layers per PCA program, or ``"auto"``: as many as ``memory_budget`` holds.
          generative_masks: per prompt, a bool array over its tokens: only True tokens enter the fit (all
            tokens are projected); None entries keep every token.
          backend: ``"chunked"`` / ``"auto"`` / ``"local"`` (forward hooks) or ``"nnsight"``.
          attn_implementation: accepted for lmprobe's signature; the model's own attention is used (the
            kernel changes the signals by rounding only).
          memory_budget: bytes (or ``"4GB"``) for one PCA program; default half the available memory.
          progress: a progress bar over forwards.

        Memory: one forward's signals, and one layer chunk's ``(L_c, n_tokens, D)`` float32 rows plus
        ``(L_c, D, D)`` covariances; the corpus's signals are staged on disk next to the scan
        (``S x L x n_tokens x D`` float32, removed when the scan is written).
        """
        import jax.numpy as jnp
        from tqdm.auto import tqdm

        from lmprobe_jax.functional import fit_pca, pca_project
        from lmprobe_jax_extract import SignalCapture

        if not isinstance(attn_implementation, str):
            raise TypeError(f"attn_implementation must be a string, got {type(attn_implementation).__name__}.")
        labels = np.asarray(labels).tolist()
        if len(labels) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(labels)} labels: give one label per prompt.")
        if isinstance(n_components, bool) or not isinstance(n_components, (int, np.integer)) or n_components < 1:
            raise ValueError(f"n_components must be a positive integer, got {n_components!r}.")
        capture = SignalCapture(
            model_name, prompts, signals or DEFAULT_SIGNALS, tokenizer=tokenizer, dtype=dtype,
            device=None if device == "auto" else device, backend=_backend(backend),
        )
        lengths = [len(ids) for ids in capture.token_ids]
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        weights = _fit_weights(lengths, generative_masks)
        n_fit, n_tokens, dim = int(weights.sum()), int(offsets[-1]), capture.hidden_size
        if n_fit < 2:
            raise ValueError(f"{n_fit} token(s) enter the fit; a PCA needs at least 2 (check generative_masks).")
        k = min(int(n_components), dim, n_fit - 1)
        n_signals, n_layers = len(capture.signals), capture.n_layers
        layers_per_chunk = _layer_chunk(n_layers, n_tokens, dim, chunk_size, memory_budget)

        with writing_scan(scan_dir) as partial:
            staged = np.lib.format.open_memmap(
                partial / "signals.npy", mode="w+", dtype=np.float32, shape=(n_signals, n_layers, n_tokens, dim)
            )
            for batch in tqdm(capture.batches(batch_size), disable=not progress, desc="scan", unit="batch"):
                for row, text in enumerate(batch.texts):
                    staged[:, :, offsets[text] : offsets[text + 1]] = batch.values[:, :, row]
            projections = open_scan_projections(partial, (n_signals, n_layers, n_tokens, k))
            bases = {}
            for s, name in enumerate(capture.signals):
                parts = []
                for start in range(0, n_layers, layers_per_chunk):
                    layers = slice(start, start + layers_per_chunk)
                    X, w = _padded(np.asarray(staged[s, layers]), weights)
                    X = jnp.asarray(X)
                    fit = fit_pca(X, k, jnp.asarray(w))
                    projections[s, layers] = np.asarray(pca_project(X, fit))[:, :n_tokens]
                    parts.append([np.asarray(a) for a in (fit.components, fit.mean, fit.explained_variance)])
                bases[name] = ScanBasis(*(np.concatenate(field) for field in zip(*parts, strict=True)))
            projections.flush()
            del projections, staged
            (partial / "signals.npy").unlink()
            finish_scan(
                partial, scan_dir, model_id=capture.model_id, hidden_dim=dim, n_components=n_components,
                signals=list(capture.signals), prompts=list(prompts), labels=labels,
                token_ids=capture.token_ids, bases=bases,
            )
        return cls(scan_dir, backend=backend, model=model_name, tokenizer=tokenizer)

    # --- what the scan holds ---

    @property
    def metadata(self) -> dict[str, Any]:
        """The scan's metadata (model_id, hidden_dim, n_layers, n_components, n_samples, signals, ...)."""
        return dict(self._files.metadata)

    @property
    def n_layers(self) -> int:
        return int(self._files.metadata["n_layers"])

    @property
    def n_samples(self) -> int:
        return int(self._files.metadata["n_samples"])

    @property
    def n_components(self) -> int:
        """The ``n_components`` asked for (the kept ``k`` is ``bases[s].shape[-1]``)."""
        return int(self._files.metadata["n_components"])

    @property
    def signals(self) -> list[str]:
        return list(self._files.metadata["signals"])

    @property
    def bases(self) -> dict[str, np.ndarray]:
        """``{signal: (n_layers, D, k)}`` orthonormal components, columns by decreasing variance."""
        return {s: b.components for s, b in self._files.bases.items()}

    @property
    def means(self) -> dict[str, np.ndarray]:
        """``{signal: (n_layers, D)}`` the corpus mean each coordinate is taken from."""
        return {s: b.mean for s, b in self._files.bases.items()}

    @property
    def explained_variance(self) -> dict[str, np.ndarray]:
        """``{signal: (n_layers, k)}`` the corpus variance along each component."""
        return {s: b.explained_variance for s, b in self._files.bases.items()}

    @property
    def samples(self) -> dict[str, list]:
        """The corpus as columns: ``sample_id``, ``prompt``, ``label``, ``token_ids``, ``seq_length``."""
        f = self._files
        bounds = list(zip(f.offsets[:-1], f.offsets[1:], strict=True))
        return {
            "sample_id": list(range(self.n_samples)),
            "prompt": list(f.prompts),
            "label": list(f.labels),
            "token_ids": [f.token_ids[a:b].tolist() for a, b in bounds],
            "seq_length": np.diff(f.offsets).tolist(),
        }

    # --- queries ---

    def _sample(self, sample_id: int) -> slice:
        if not 0 <= int(sample_id) < self.n_samples:
            raise IndexError(f"sample_id {sample_id} is out of range for a scan of {self.n_samples} samples.")
        return slice(int(self._files.offsets[sample_id]), int(self._files.offsets[sample_id + 1]))

    def _signal_indices(self, signal: str | None) -> list[int]:
        if signal is None:
            return list(range(len(self.signals)))
        if signal not in self.signals:
            raise ValueError(f"signal {signal!r} is not in this scan; it holds {self.signals}.")
        return [self.signals.index(signal)]

    def _layer(self, layer: int) -> int:
        if not -self.n_layers <= int(layer) < self.n_layers:
            raise IndexError(f"layer {layer} is out of range for a scan of {self.n_layers} layers.")
        return int(layer) % self.n_layers

    def per_token(self, sample_id: int, layer: int, signal: str | None = None) -> np.ndarray:
        """Coordinates of one sample's tokens at one layer: ``(T, k)`` for ``signal``, else ``(T, S, k)``."""
        rows, layer = self._sample(sample_id), self._layer(layer)
        chosen = self._signal_indices(signal)
        values = np.asarray(self._files.projections[chosen, layer, rows])  # (S', T, k)
        return values[0] if signal is not None else np.transpose(values, (1, 0, 2))

    def per_token_layer(self, layer: int, signal: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every token's coordinates at ``(layer, signal)``: values ``(n_tokens, k)``, the sample of each
        row ``(n_tokens,)`` int32, and its position in the sample ``(n_tokens,)`` int32."""
        (s,) = self._signal_indices(signal)
        offsets = self._files.offsets
        lengths = np.diff(offsets)
        sample_ids = np.repeat(np.arange(self.n_samples, dtype=np.int32), lengths)
        positions = (np.arange(int(offsets[-1])) - np.repeat(offsets[:-1], lengths)).astype(np.int32)
        return np.asarray(self._files.projections[s, self._layer(layer)]), sample_ids, positions

    def get_projections(self, sample_id: int, signal: str | None = None) -> np.ndarray:
        """One sample's coordinates ``(T, n_layers, S', k)`` float32 (``S' = 1`` with ``signal``)."""
        rows = self._sample(sample_id)
        values = np.asarray(self._files.projections[self._signal_indices(signal), :, rows])  # (S', L, T, k)
        return np.transpose(values, (2, 1, 0, 3))

    def separability_map(
        self,
        labels: Sequence[Any] | np.ndarray | None = None,
        signal: str | None = None,
        token_positions: Sequence[int] | np.ndarray | None = None,
    ) -> np.ndarray:
        """``(n_layers, S')`` how well one component separates two classes: ``max_j max(A_j, 1 - A_j)``
        over components ``j`` (``A_j`` the ROC AUC of the coordinate), at one token per sample.

        Args:
          labels: N labels with exactly two distinct values; default the scan's stored labels.
          signal: one signal, or None for every signal (columns in :attr:`signals` order).
          token_positions: per sample, the token to read (negative counts from the end); default each
            sample's last token.
        """
        from lmprobe_jax.functional import max_component_auroc

        labels = np.asarray(self._files.labels if labels is None else labels)
        if labels.shape != (self.n_samples,):
            raise ValueError(f"labels has shape {labels.shape}; expected ({self.n_samples},), one per sample.")
        classes, y = np.unique(labels, return_inverse=True)
        if len(classes) != 2:
            raise ValueError(f"separability_map needs two classes; the labels hold {len(classes)}: {classes[:5]}.")
        lengths = np.diff(self._files.offsets)
        if token_positions is None:
            positions = lengths - 1
        else:
            positions = np.asarray(token_positions, np.int64)
            if positions.shape != (self.n_samples,):
                raise ValueError(f"token_positions has shape {positions.shape}; expected ({self.n_samples},).")
            bad = (positions >= lengths) | (positions < -lengths)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise IndexError(f"token_positions[{i}] = {positions[i]} is outside sample {i}'s {lengths[i]} tokens.")
            positions = positions % lengths
        rows = self._files.offsets[:-1] + positions
        values = np.asarray(self._files.projections[self._signal_indices(signal)][:, :, rows])  # (S', L, N, k)
        return np.asarray(max_component_auroc(y, values), np.float64).T

    # --- new prompts ---

    def project_prompt(
        self, prompt: str, signal: str | None = None
    ) -> tuple[np.ndarray, list[str], np.ndarray]:
        """Run the model on ``prompt`` and read it through the scan's components.

        Returns:
          ``projections`` ``(T, n_layers, S', k)`` float32, the T decoded ``tokens``, and ``log_probs``
          ``(T,)`` float32: the log-probability of each next token (NaN at the last position).
        """
        import jax.numpy as jnp

        from lmprobe_jax.functional import PCAFit, pca_project
        from lmprobe_jax_extract import SignalCapture

        chosen = self._signal_indices(signal)
        names = [self.signals[s] for s in chosen]
        capture = SignalCapture(self._model, [prompt], names, tokenizer=self._tokenizer, backend=self._backend_mode)
        if (capture.n_layers, capture.hidden_size) != (self.n_layers, self._files.metadata["hidden_dim"]):
            raise ValueError(
                f"The model has {capture.n_layers} layers of width {capture.hidden_size}; the scan was fit on "
                f"{self.n_layers} of width {self._files.metadata['hidden_dim']}: pass the scan's model."
            )
        (batch,) = capture.batches(1)
        n_tokens = batch.values.shape[3]
        coordinates = []
        for s, name in enumerate(names):
            basis = self._files.bases[name]
            X, _ = _padded(batch.values[s, :, 0], np.ones(n_tokens, np.float32))
            fit = PCAFit(jnp.asarray(basis.mean), jnp.asarray(basis.components), jnp.asarray(basis.explained_variance))
            coordinates.append(np.asarray(pca_project(jnp.asarray(X), fit))[:, :n_tokens])  # (L, T, k)
        projections = np.transpose(np.stack(coordinates), (2, 1, 0, 3))
        tokens = [capture.tokenizer.decode([t]) for t in capture.token_ids[0]]
        return projections.astype(np.float32), tokens, batch.log_probs[0]

    def plot(
        self,
        prompt: str,
        *,
        signal: str | None = None,
        show_surprise: bool = True,
        show_stats: bool = True,
        figsize: tuple[float, float] | None = None,
        title: str = "",
        generative_mask: np.ndarray | None = None,
    ) -> matplotlib.figure.Figure:
        """The figure of ``prompt`` under this lens (see :mod:`lmprobe_jax.scan_plot`): one (layer x token)
        image per signal, the surprise strip (``show_surprise``) and per-layer energies (``show_stats``)."""
        from lmprobe_jax.scan_plot import render_scan_figure

        projections, tokens, log_probs = self.project_prompt(prompt, signal)
        names = [self.signals[s] for s in self._signal_indices(signal)]
        sigma = np.stack([np.sqrt(self._files.bases[n].explained_variance) for n in names], axis=1)  # (L, S', k)
        return render_scan_figure(
            projections, tokens, names, sigma,
            log_probs=log_probs if show_surprise else None,
            layer_stats=np.sqrt((projections**2).sum(axis=3).mean(axis=0)) if show_stats else None,
            figsize=figsize, title=title, generative_mask=generative_mask,
        )
