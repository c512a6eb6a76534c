"""The data of the regime panel (benchmarks/regimes.py): the kinds of activations users bring to a probe.

Binary regimes return ``(X (L, N, D) float32, y (N,) int)``; softmax ones a single layer ``(1, N, D)``
with Zipf-distributed class labels. Every generator is seeded, so a regime is the same data in every run.

* ``clear`` / ``weak``: standardised features, independent across dimensions, with a class signal along a
  random direction whose separation grows with depth (train accuracy ~0.93-1.0 / ~0.73-0.77).
* ``correlated``: the solver benchmark's layers (:func:`synthetic.make_layers`: an anisotropic spectrum in
  a random basis, standardised), the regime the Newton-CG engine was tuned on.
* ``raw``: LLM-like activations as a model writes them, not standardised: low rank, a common offset and a
  few "massive activation" dimensions far larger than the rest.
* ``wide`` (few prompts, a wide model) and ``tall`` (many prompts, a narrow probe), standardised.
* ``wide-4096`` / ``raw-4096``: 4 layers of 4000 x 4096, as ``clear``-like standardised layers (separation
  1-4) and as ``raw`` ones: a 7B-class model's width, where the solver's fixed costs showed (session 18).
* ``smollm2-raw`` / ``smollm2-std``: the demo's data, real residual streams (see :func:`smollm2_cities`).
* ``softmax-K``: one layer, N = 8000, D = 576, K classes drawn from a Zipf law (rare classes have a few
  samples and are separable, as next-token targets are); anisotropic features, standardised.

Seven more binary regimes of 4 layers, none of which any solver choice was tuned on (added to check the
engine on data it had not seen): ``imbalanced`` (2% positives, standardised), ``duplicated`` (every column
twice: rank D / 2), ``tiny`` (N = 40, D = 768), ``huge-scale`` (features x 1000 + 5000, not standardised),
``binary-features`` (sparse 0/1 features), ``offset-columns`` (standardised, plus 20 zero and 10 constant
columns) and ``small-separable`` (200 x 50, separable).
"""

from __future__ import annotations

import numpy as np
from synthetic import make_layers

UNSEEN = ("imbalanced", "duplicated", "tiny", "huge-scale", "binary-features", "offset-columns", "small-separable")
BINARY = ("clear", "weak", "correlated", "raw", "wide", "tall", "wide-4096", "raw-4096", "smollm2-raw",
          "smollm2-std") + UNSEEN
SOFTMAX = ("softmax-10", "softmax-100", "softmax-300", "softmax-2000")


def signal(n_layers: int, n: int, d: int, *, separation: tuple[float, float], positive: float = 0.5, seed: int = 0):
    """``(layers (L, N, D) float64, y)``: standard normal features plus ``+-separation / 2`` along a random unit
    direction (the separation growing with depth), a fraction ``positive`` of the labels 1."""
    rng = np.random.default_rng(seed)
    # Balanced labels keep the draw that clear / weak / wide / tall were generated with (the same data).
    y = rng.integers(0, 2, n) if positive == 0.5 else (rng.random(n) < positive).astype(int)
    layers = []
    for layer in range(n_layers):
        z = rng.standard_normal((n, d))
        v = rng.standard_normal(d)
        v /= np.linalg.norm(v)
        sep = separation[0] + (separation[1] - separation[0]) * layer / max(n_layers - 1, 1)
        z += np.outer((2 * y - 1) * 0.5 * sep, v)
        layers.append(z)
    return np.stack(layers), y


def standardised(X):
    """Each layer's columns at mean 0 and variance 1 (constant columns left at 0), as float32."""
    sd = X.std(1, keepdims=True)
    return ((X - X.mean(1, keepdims=True)) / np.where(sd > 0, sd, 1)).astype(np.float32)


def independent(n_layers: int, n: int, d: int, *, separation: tuple[float, float], seed: int = 0):
    """:func:`signal`'s features, standardised."""
    X, y = signal(n_layers, n, d, separation=separation, seed=seed)
    return standardised(X), y


def imbalanced(n_layers: int, n: int, d: int, *, seed: int = 0):
    """:func:`signal`'s features with 2% positives, standardised."""
    X, y = signal(n_layers, n, d, separation=(0.5, 2.0), positive=0.02, seed=seed)
    return standardised(X), y


def duplicated(n_layers: int, n: int, d: int, *, seed: int = 0):
    """Standardised features, each column twice (``2 d`` columns of rank ``d``)."""
    X, y = independent(n_layers, n, d, separation=(0.35, 1.4), seed=seed)
    return np.concatenate([X, X], axis=-1), y


def huge_scale(n_layers: int, n: int, d: int, *, seed: int = 0):
    """:func:`signal`'s features times 1000 plus 5000, not standardised."""
    X, y = signal(n_layers, n, d, separation=(0.25, 1.0), seed=seed)
    return (X * 1000.0 + 5000.0).astype(np.float32), y


def binary_features(n_layers: int, n: int, d: int, *, seed: int = 0):
    """Sparse 0/1 features (3-7% ones), each feature's rate tilted by the class, more with depth."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    layers = []
    for layer in range(n_layers):
        rate = 0.03 + 0.04 * rng.random(d)
        tilt = rng.standard_normal(d) * 0.15 * (layer + 1)
        layers.append((rng.random((n, d)) < rate * np.exp(np.outer(2 * y - 1, tilt))).astype(np.float32))
    return np.stack(layers), y


def offset_columns(n_layers: int, n: int, d: int, *, seed: int = 0):
    """Standardised features whose first 20 columns are 0 and next 10 the constant 3."""
    X, y = independent(n_layers, n, d, separation=(0.25, 1.0), seed=seed)
    X[:, :, :20] = 0.0
    X[:, :, 20:30] = 3.0
    return X, y


def raw_llm(n_layers: int, n: int, d: int, *, rank: int = 48, n_outliers: int = 4, seed: int = 0):
    """Low-rank activations with an offset, small isotropic noise and ``n_outliers`` dimensions of scale
    ~100 (the rest ~3): the class signal lies in the low-rank part and grows with depth."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    decay = (1.0 + np.arange(rank)) ** -0.7
    layers = []
    for layer in range(n_layers):
        loadings = rng.standard_normal((rank, d)) * 3.0
        z = (rng.standard_normal((n, rank)) * decay) @ loadings
        z += 0.3 * rng.standard_normal((n, d)) + 2.0 * rng.standard_normal(d)
        u = rng.standard_normal(rank) * decay
        z += np.outer((2 * y - 1) * (0.3 + 0.1 * layer), u @ loadings / np.linalg.norm(u))
        out = rng.choice(d, n_outliers, replace=False)
        z[:, out] = 60.0 * (1 + rng.random(n_outliers)) + 20.0 * rng.standard_normal((n, n_outliers))
        layers.append(z.astype(np.float32))
    return np.stack(layers), y


def softmax_zipf(n: int, d: int, k: int, *, seed: int = 0):
    """``(X (1, n, d), y (n,))``: Zipf labels over ``k`` classes, each class's mean a random direction of
    norm ~2 against anisotropic noise (spectrum ``1/sqrt(j)`` in a random basis), standardised."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, k + 1)
    y = rng.choice(k, n, p=p / p.sum())
    basis = np.linalg.qr(rng.standard_normal((d, d)))[0]
    noise = (rng.standard_normal((n, d)) * (1.0 + np.arange(d)) ** -0.5) @ basis.T
    noise /= np.sqrt(np.mean(np.sum(noise**2, axis=1)))
    x = 3 * noise + 3 * rng.standard_normal((k, d))[y] * (2.0 / np.sqrt(d))
    x = (x - x.mean(0)) / x.std(0)
    return x[None].astype(np.float32), y


def smollm2_cities(standardise: bool):
    """``(X (30, 600, 576), y, groups)``: the demo's 600 city statements through SmolLM2-135M-Instruct, the
    last token's residual stream at every layer (extracted once into the cache root's ``activations``)."""
    from lmprobe_jax.datasets import cities
    from lmprobe_jax.sweep import standardize
    from lmprobe_jax_extract import extract_activations, smollm2_directory
    from lmprobe_jax_store import cache_root

    data = cities(300)
    store = extract_activations(smollm2_directory(), data.prompts, layers="all", pooling="last_token",
                                cache_dir=cache_root() / "activations", labels=data.labels, progress=False,
                                batch_size=16)
    X = np.asarray(store.stack(range(30), "last_token"), np.float32)
    if standardise:
        X = np.asarray(standardize(X)[0], np.float32)
    return X, np.asarray(data.labels), np.asarray(data.groups)


def regime(name: str, scale: float = 1.0):
    """``(X, y, groups)`` of a regime; ``scale`` < 1 shrinks the synthetic sizes (a smoke test)."""
    def size(*dims):
        return tuple(max(round(v * scale), 4) for v in dims)

    if name == "smollm2-raw":
        return smollm2_cities(False)
    if name == "smollm2-std":
        return smollm2_cities(True)
    if name.startswith("softmax-"):
        n, d = size(8000, 576)
        X, y = softmax_zipf(n, d, int(name.split("-")[1]))
        return X, y, None
    makers = {
        "clear": lambda: independent(12, *size(3000, 768), separation=(2.0, 5.0)),
        "weak": lambda: independent(12, *size(3000, 768), separation=(0.2, 0.8)),
        "correlated": lambda: make_layers(12, *size(3000, 768)),
        "raw": lambda: raw_llm(8, *size(2000, 512)),
        "wide": lambda: independent(8, *size(400, 2048), separation=(1.0, 4.0)),
        "tall": lambda: independent(6, *size(20000, 128), separation=(0.5, 2.0)),
        "wide-4096": lambda: independent(4, *size(4000, 4096), separation=(1.0, 4.0)),
        "raw-4096": lambda: raw_llm(4, *size(4000, 4096)),
        "imbalanced": lambda: imbalanced(4, *size(3000, 256)),
        "duplicated": lambda: duplicated(4, *size(2000, 256)),
        "tiny": lambda: independent(4, *size(40, 768), separation=(0.25, 1.0)),
        "huge-scale": lambda: huge_scale(4, *size(2000, 256)),
        "binary-features": lambda: binary_features(4, *size(3000, 512)),
        "offset-columns": lambda: offset_columns(4, *size(2000, 256)),
        "small-separable": lambda: independent(4, *size(200, 50), separation=(3.0, 12.0)),
    }
    X, y = makers[name]()
    return X, y, None
