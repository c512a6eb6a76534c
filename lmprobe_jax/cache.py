"""Managing the activation cache: what it holds, how big it may grow, in which dtype (lmprobe's names).

Where: ``$LMPROBE_CACHE_DIR`` when set (lmprobe's variable, naming the activation cache directory
itself), else ``$LMPROBE_JAX_CACHE/activations`` (default ``~/.cache/lmprobe-jax/activations``; the
root also holds converted models and compiled programs). Both are read on every call.

The cache is a directory of activation stores (:class:`lmprobe_jax_store.ActivationStore`), one per
(model weights, tokenizer, dtypes, prompt list), each grown to the union of the layers and poolings asked
of it. :func:`cache_info` sums them per model; :func:`discover_cached` says what is cached for one
prompt; :func:`load_activations` reads cached activations back without a model, and
:func:`load_layer_across_prompts` / :func:`load_layer_last_token` read one layer's per-token activations
as lmprobe's functions of those names return them (torch tensors).

:func:`set_cache_limit` sets a size cap that :func:`evict` enforces by removing whole stores, least
recently used first (by the access or modification time of their manifest, whichever is later), as in
lmprobe; ``set_cache_limit(0)`` turns the default cache off for Probes built afterwards and before.
:func:`set_cache_dtype` stores future extractions in float16 / bfloat16 (half the disk); the storage
dtype is part of a store's identity, so float32 entries are never served for a float16 request.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lmprobe_jax_store import MANIFEST, ActivationStore, cache_root, layer_order, normalise_layer, store_lock

_LIMIT_BYTES: int | None = None
_STORAGE_DTYPE: str | None = None
STORAGE_DTYPES = ("float32", "float16", "bfloat16")


def activation_cache_dir() -> Path | None:
    """The activation cache directory (module doc), or None when ``set_cache_limit(0)`` disabled it."""
    if _LIMIT_BYTES == 0:
        return None
    return Path(os.environ.get("LMPROBE_CACHE_DIR") or cache_root() / "activations").expanduser()


def storage_dtype() -> str:
    """The dtype new cache entries are stored in (:func:`set_cache_dtype`; default float32)."""
    return _STORAGE_DTYPE or "float32"


def set_cache_limit(gb: float | None = None) -> None:
    """Cap the activation cache at ``gb`` gigabytes (10^9 bytes), enforced by :func:`evict`; None removes
    the cap; 0 disables the default cache."""
    global _LIMIT_BYTES
    if gb is not None and (not np.isfinite(gb) or gb < 0):
        raise ValueError(f"gb must be a non-negative number of gigabytes or None, not {gb!r}.")
    _LIMIT_BYTES = None if gb is None else int(gb * 1e9)


def set_cache_dtype(dtype: str | None = None) -> None:
    """Store future cache entries in ``dtype`` (``"float16"``, ``"bfloat16"``, ``"float32"``; None: float32)."""
    global _STORAGE_DTYPE
    if dtype is not None and dtype not in STORAGE_DTYPES:
        raise ValueError(f"Unknown cache dtype {dtype!r}: choose from {STORAGE_DTYPES} or None.")
    _STORAGE_DTYPE = dtype


@dataclass
class ModelCacheInfo:
    """One model's share of the cache: ``model_name`` (hub id or path), ``model_hash`` (its weights
    fingerprint), bytes, prompts and layers over its stores."""

    model_name: str | None
    model_hash: str
    size_bytes: int
    num_prompts: int
    num_layers: int
    has_pooled: bool = True
    has_perplexity: bool = False
    has_logits: bool = False
    entries: list[Path] = field(default_factory=list)

    @property
    def size_gb(self) -> float:
        return self.size_bytes / 1e9

    def __repr__(self) -> str:
        return (
            f"  {self.model_name or self.model_hash}  {self.size_gb:.3f} GB  {self.num_prompts} prompts, "
            f"{self.num_layers} layers, {len(self.entries)} stores"
        )


@dataclass
class CacheInfo:
    """The cache directory, its total bytes, one :class:`ModelCacheInfo` per model, and the oldest /
    newest store times (seconds since the epoch)."""

    cache_dir: Path | str | None
    total_size_bytes: int
    models: list[ModelCacheInfo] = field(default_factory=list)
    oldest_mtime: float | None = None
    newest_mtime: float | None = None
    cache_limit_bytes: int | None = None

    @property
    def total_size_gb(self) -> float:
        return self.total_size_bytes / 1e9

    def __repr__(self) -> str:
        lines = [f"Cache directory: {self.cache_dir}", f"Total size: {self.total_size_gb:.3f} GB"]
        if self.cache_limit_bytes:
            lines.append(f"Size limit: {self.cache_limit_bytes / 1e9:.3f} GB")
        lines += [repr(model) for model in self.models]
        return "\n".join(lines)


@dataclass
class CachedPromptInfo:
    """What is cached for one prompt: ``pooled`` maps each pooling to its layers (``"embeddings"``
    included when stored). lmprobe's raw-sequence, logit and perplexity fields are always empty / False:
    the cache holds pooled activations only (the ``"all"`` pooling keeps every real token)."""

    raw_layers: list[int]
    pooled: dict[str, list]
    has_logits: bool = False
    logits_top_k: int | None = None
    has_perplexity: bool = False
    has_token_perplexity: bool = False
    num_tokens: int | None = None
    router_layers: list[int] = field(default_factory=list)


def _entries(root: Path | None) -> list[tuple[Path, dict]]:
    """Every complete store under ``root`` with its manifest (unreadable manifests are skipped)."""
    if root is None or not root.is_dir():
        return []
    out = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):  # a store's lock, staging directory or previous version
            continue
        try:
            out.append((entry, json.loads((entry / MANIFEST).read_text())))
        except (OSError, ValueError):
            continue
    return out


def _size(entry: Path) -> int:
    return sum(p.stat().st_size for p in entry.rglob("*") if p.is_file())


def _model_matches(manifest: dict, model: Any) -> bool:
    stored = manifest.get("model", {}).get("id")
    if model is None or stored is None:
        return model is None
    candidates = {str(model)}
    path = Path(str(model)).expanduser()
    if path.exists():
        candidates.add(str(path.resolve()))
    return stored in candidates


def cache_info(model: Any = None) -> CacheInfo:
    """Size and contents of the activation cache, per model (only ``model``'s stores when given)."""
    root = activation_cache_dir()
    by_model: dict[str, ModelCacheInfo] = {}
    times = []
    total = 0
    for entry, manifest in _entries(root):
        if model is not None and not _model_matches(manifest, model):
            continue
        size = _size(entry)
        total += size
        times.append((entry / MANIFEST).stat().st_mtime)
        info = manifest.get("model", {})
        key = info.get("fingerprint") or info.get("id") or entry.name
        item = by_model.setdefault(key, ModelCacheInfo(info.get("id"), str(key), 0, 0, 0))
        item.size_bytes += size
        item.num_prompts += int(manifest.get("n_prompts", 0))
        item.num_layers = max(item.num_layers, len(manifest.get("layers", [])))
        item.entries.append(entry)
    return CacheInfo(
        root, total, list(by_model.values()), min(times, default=None), max(times, default=None), _LIMIT_BYTES
    )


def discover_cached(model_name: Any, prompt: str) -> CachedPromptInfo | None:
    """What the cache holds for ``prompt`` under ``model_name`` (None if nothing)."""
    pooled: dict[str, set] = {}
    for entry, manifest in _entries(activation_cache_dir()):
        if not _model_matches(manifest, model_name):
            continue
        if prompt in (ActivationStore(entry, verify=False).prompts or []):
            for pooling in manifest.get("poolings", []):
                pooled.setdefault(pooling, set()).update(manifest.get("layers", []))
    if not pooled:
        return None
    return CachedPromptInfo([], {p: sorted(layers, key=layer_order) for p, layers in pooled.items()})


def evict() -> list[Path]:
    """Remove whole stores, least recently used first, until the cache fits :func:`set_cache_limit`'s
    cap; returns what was removed (nothing without a cap)."""
    root = activation_cache_dir()
    if _LIMIT_BYTES is None or root is None:
        return []
    entries = [
        (entry, _size(entry), max((entry / MANIFEST).stat().st_atime, (entry / MANIFEST).stat().st_mtime))
        for entry, _ in _entries(root)
    ]
    total = sum(size for _, size, _ in entries)
    removed = []
    for entry, size, _ in sorted(entries, key=lambda item: item[2]):
        if total <= _LIMIT_BYTES:
            break
        with store_lock(entry):  # never under a process that is writing or growing this store
            shutil.rmtree(entry, ignore_errors=True)
        total -= size
        removed.append(entry)
    return removed


def load_activations(
    source: Any,
    *,
    prompts: list[str] | None = None,
    layers: list | None = None,
    pooling: str = "last_token",
    as_dict: bool = True,
    return_labels: bool = False,
) -> Any:
    """Cached activations without a model. ``source``: a store directory, or a model whose cache entry
    holds ``prompts`` (required then). Returns ``{layer: (N, D)}`` (``as_dict``) or ``(N, L, D)``; with
    ``return_labels`` also the stored labels (or None)."""
    store = _find_store(source, prompts, pooling)
    layers = [layer for layer in store.layers] if layers is None else list(layers)
    rows = None
    if prompts is not None:
        index = {p: i for i, p in enumerate(store.prompts or [])}
        missing = [p for p in prompts if p not in index]
        if missing:
            raise ValueError(
                f"{len(missing)} of the prompts are not in {store.path} (first: {missing[0]!r})."
            )
        rows = np.array([index[p] for p in prompts])
    arrays = {
        layer: np.asarray(store.load(layer, pooling))[rows if rows is not None else slice(None)]
        for layer in layers
    }
    out = arrays if as_dict else np.stack([arrays[layer] for layer in layers], axis=1)
    if not return_labels:
        return out
    labels = store.labels
    return out, (None if labels is None else labels[rows if rows is not None else slice(None)])


def load_layer_across_prompts(model_name: Any, prompts: list[str], layer: Any) -> tuple[list, list]:
    """Every real token's activations at ``layer`` for each prompt (lmprobe's layout): two lists of torch
    tensors, ``(1, T_i, D)`` float32 activations and ``(1, T_i)`` masks (all ones: the cache keeps no
    padding), read from a cached store of ``model_name`` extracted with ``pooling="all"``.

    Raises FileNotFoundError when no cached store holds every prompt with that pooling and layer."""
    import torch

    try:
        store = _find_store(model_name, prompts, "all", layer)
    except ValueError as err:
        raise FileNotFoundError(
            f"{err} Cache every token's activations first, e.g. Probe(model=..., layers=[{layer!r}], "
            "pooling='all').warmup(prompts)."
        ) from None
    rows, offsets = np.asarray(store.load(layer, "all"), np.float32), store.offsets()
    index = {p: i for i, p in enumerate(store.prompts or [])}
    acts = [torch.from_numpy(rows[offsets[index[p]] : offsets[index[p] + 1]][None].copy()) for p in prompts]
    return acts, [torch.ones(a.shape[:2], dtype=torch.long) for a in acts]


def load_layer_last_token(model_name: Any, prompts: list[str], layer: Any) -> Any:
    """The last real token's activation at ``layer`` for each prompt, ``(N, D)`` float32 torch, from the
    cache (:func:`load_layer_across_prompts`)."""
    import torch

    acts, _ = load_layer_across_prompts(model_name, prompts, layer)
    return torch.stack([a[0, -1] for a in acts])


def _find_store(source: Any, prompts: list[str] | None, pooling: str, layer: Any = None) -> ActivationStore:
    path = Path(str(source)).expanduser()
    if (path / MANIFEST).is_file():
        return ActivationStore(path)
    if prompts is None:
        raise ValueError(f"{source!r} is not a store directory: pass prompts=... to find them in the cache.")
    wanted = set(prompts)
    for entry, manifest in _entries(activation_cache_dir()):
        if _model_matches(manifest, source) and pooling in manifest.get("poolings", []):
            store = ActivationStore(entry)
            if wanted <= set(store.prompts or []) and (layer is None or _holds(store, layer)):
                return store
    where = "" if layer is None else f" at layer {layer!r}"
    raise ValueError(
        f"No cached store of {source!r} holds all {len(wanted)} prompts with pooling {pooling!r}{where}."
    )


def _holds(store: ActivationStore, layer: Any) -> bool:
    try:
        return normalise_layer(layer, store.n_layers) in store.layers
    except ValueError:
        return False
