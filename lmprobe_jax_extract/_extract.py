"""``extract_activations``: one forward pass per batch, every requested layer, pooled on the device,
streamed into a store (:mod:`lmprobe_jax_store`) that can be trusted, shared and resumed after a crash."""

from __future__ import annotations

import hashlib
import json
import struct
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmprobe_jax_store import (
    FORMAT,
    FORMAT_VERSION,
    ActivationStore,
    LayerName,
    MemoryWriter,
    StoreContent,
    StoreWriter,
    attach,
    check_metadata,
    check_poolings,
    check_shard,
    finished_store,
    label_set,
    library_version,
    prompt_hash,
    request_mismatches,
    resolve_layers,
    store_lock,
    store_root,
)

from ._blocks import find_decoder_layers, hidden_size_of, n_layers_of
from ._capture import capture_local, capture_nnsight, input_device, model_inputs, wrap_nnsight
from ._source import dtype_name, hash_tokenizer, resolve_source, torch_dtype

BACKENDS = ("local", "nnsight")


def check_prompts(prompts: Any, what: str = "prompts") -> list[str]:
    """``prompts`` as a non-empty list of strings, or a TypeError / ValueError naming ``what``."""
    if isinstance(prompts, str):
        raise TypeError(f"{what} must be a list of strings, not one string: wrap it as [prompt].")
    prompts = list(prompts)
    if not prompts:
        raise ValueError(f"{what} is empty: pass at least one prompt.")
    bad = next((i for i, p in enumerate(prompts) if not isinstance(p, str)), None)
    if bad is not None:
        raise TypeError(f"{what}[{bad}] is a {type(prompts[bad]).__name__}, not a string.")
    return prompts


def encode_prompts(tokenizer: Any, prompts: list[str], max_length: int | None) -> list[list[int]]:
    """Token ids of each prompt, tokenised on its own with the tokenizer's special tokens (the ids a
    store's rows come from)."""
    return tokenizer(
        prompts, add_special_tokens=True, truncation=max_length is not None, max_length=max_length
    )["input_ids"]


def _tokens_hash(encoded: Sequence[Sequence[int]]) -> str:
    """SHA-256 of the exact token ids the model reads, prompt by prompt."""
    digest = hashlib.sha256()
    for ids in encoded:
        digest.update(struct.pack("<q", len(ids)))
        digest.update(np.asarray(ids, dtype="<i8").tobytes())
    return digest.hexdigest()


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    if tensor.dtype == torch.bfloat16:
        import ml_dtypes

        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def plan_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Prompts sorted by token count (longest first: an out-of-memory shows up in the first batch) and
    cut into batches; a resumed run rebuilds the same batches."""
    order = np.argsort(-lengths, kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


class _Runner:
    """Runs plan batches through the model with out-of-memory back-off: a batch that does not fit is
    split in halves (recursively), and later batches start from the size that fitted."""

    def __init__(self, model, blocks_path, blocks, token_ids, pad_id, padding_side, layers, poolings,
                 backend, traced, remote, storage_dtype):
        self.model, self.blocks_path, self.blocks = model, blocks_path, blocks
        self.token_ids, self.pad_id, self.padding_side = token_ids, pad_id, padding_side
        self.layers, self.poolings = layers, poolings
        self.backend, self.traced, self.remote = backend, traced, remote
        self.storage_dtype = storage_dtype
        self.device = input_device(model)
        self.max_rows: int | None = None

    def _pad(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(self.token_ids[i]) for i in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, i in enumerate(rows):
            tokens = torch.as_tensor(self.token_ids[i], dtype=torch.long)
            span = slice(width - len(tokens), width) if self.padding_side == "left" else slice(0, len(tokens))
            ids[row, span], mask[row, span] = tokens, 1
        return ids.to(self.device), mask.to(self.device)

    def _forward(self, rows: np.ndarray) -> dict:
        ids, mask = self._pad(rows)
        inputs = model_inputs(self.model, ids, mask)
        if self.backend == "nnsight":
            out = capture_nnsight(
                self.traced, self.blocks_path, inputs, self.layers, self.poolings, remote=self.remote
            )
        else:
            out = capture_local(self.model, self.blocks, inputs, self.layers, self.poolings)
        return {key: value.to(self.storage_dtype).cpu() for key, value in out.items()}

    def run(self, rows: np.ndarray) -> dict:
        """``{(layer, pooling): (rows, D) tensor}`` on the CPU, rows in the order given."""
        if self.max_rows is not None and len(rows) > self.max_rows:
            pieces = [rows[i : i + self.max_rows] for i in range(0, len(rows), self.max_rows)]
            parts = [self.run(piece) for piece in pieces]  # a piece may lower max_rows further
            return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}
        try:
            return self._forward(rows)
        except torch.OutOfMemoryError:
            if len(rows) == 1:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self.max_rows = len(rows) // 2
            return self.run(rows)


def _cache_entry(cache_dir, request) -> Path:
    # Layers and poolings are left out of the key: one cache entry per (model, tokens, dtypes, prompts)
    # grows to the union of what was asked for.
    keyed = {key: value for key, value in request.items() if key not in ("layers", "poolings")}
    digest = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:24]
    return Path(cache_dir).expanduser() / digest


def extract_activations(
    model: Any,
    prompts: Sequence[str],
    *,
    layers: int | str | Sequence[LayerName] | None = "all",
    pooling: str | Sequence[str] = "last_token",
    out_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    batch_size: int = 8,
    dtype: str | torch.dtype | None = None,
    storage_dtype: str | torch.dtype = "float32",
    device: str | torch.device | None = None,
    device_map: str | dict | None = None,
    backend: str = "local",
    remote: bool = False,
    tokenizer: Any = None,
    revision: str | None = None,
    max_length: int | None = None,
    padding_side: str = "right",
    labels: Sequence | np.ndarray | None = None,
    metadata: Sequence[dict] | None = None,
    overwrite: bool = False,
    shard: tuple[int, int] | None = None,
    progress: bool = True,
    verify: bool = True,
) -> ActivationStore | None:
    """Run ``model`` over ``prompts`` once and keep one pooled vector per prompt per requested layer.

    Args:
      model: a local model directory, a ``.gguf`` file (converted once, cached by its content hash), a
        Hugging Face hub id (its local snapshot; offline with ``HF_HUB_OFFLINE=1``), a ``(model,
        tokenizer)`` pair, or a loaded model with ``tokenizer=``.
      prompts: N strings.
      layers: block indices (negatives count from the end), ``"all"``, or ``"embeddings"``. Layer i is the
        residual stream leaving decoder block i, before the final norm (see :mod:`lmprobe_jax_store`).
      pooling: one of :data:`lmprobe_jax_store.POOLINGS` or a list of them, all computed in one pass.
      out_dir: where to write the store. If it already holds a store for the same request it is served
        as is (a request for fewer layers or poolings is served too); a store for a different request
        raises ``ValueError`` unless ``overwrite=True``. ``None`` with no ``cache_dir`` keeps the store
        in memory.
      cache_dir: a content-keyed cache: the store goes to ``cache_dir/<key>``, where the key hashes the
        weights, the token ids the model reads, the tokenizer, dtypes, prompts and library version;
        asking for more layers or poolings than an entry holds re-extracts it with the union of both.
      batch_size: prompts per forward pass (halved automatically on out-of-memory).
      dtype: the model's compute dtype (``"float32"``, ``"float16"``, ``"bfloat16"``); default float32
        for a model loaded here, the model's own dtype for a model object.
      storage_dtype: dtype of the stored activations.
      device: where the model runs (default: CUDA when available, else CPU; a model object stays where
        it is unless ``device`` is given).
      device_map: spread a model loaded here over several devices (and the CPU / disk) through
        accelerate, e.g. ``"auto"`` for a model larger than one GPU; exclusive with ``device``.
      backend: ``"local"`` (forward hooks) or ``"nnsight"``; both give the same activations.
      remote: with ``backend="nnsight"``, run the trace on NDIF.
      max_length: truncate prompts to this many tokens (on the tokenizer's ``truncation_side``).
      padding_side: ``"right"`` or ``"left"``; results do not depend on it (masks and position ids are
        handled), it only matters for speed on some kernels.
      labels, metadata: ``(N,)`` labels -- numbers, or class names (strings), stored as indices with
        the names kept (``store.label_names``) -- and a list of N JSON-serialisable records, stored
        beside the activations. On a store hit they become the store's current label set; a store
        opened earlier keeps the labels it was opened with.
      overwrite: replace a store at ``out_dir`` that was made for a different request.
      shard: ``(i, n)`` to split one extraction over ``n`` processes (or machines sharing the disk):
        this call computes batches ``k`` with ``k % n == i`` into the shared staging directory of
        ``out_dir``; the last shard to finish publishes the store and returns it, the others return
        None (:func:`lmprobe_jax_store.merge` publishes it too, once all are done).
      progress: show a progress bar with tokens/s.
      verify: check every shard's SHA-256 against the manifest on first read.

    Returns:
      An :class:`~lmprobe_jax_store.ActivationStore` (None for a shard whose peers are still running);
      ``store.load(layer, pooling)`` is ``(N, D)`` (``(n_tokens, D)`` for ``"all"``, with
      ``store.offsets()``), ``store.stack(layers, pooling)`` is ``(L, N, D)``.

    Concurrency and crashes: one process at a time writes a store (an inter-process lock beside it;
    another extraction into it waits, then is served or refused); the store is written beside its final
    place and renamed in whole, so readers see the old store or the new one. An interrupted extraction
    resumes from its finished batches when called again with the same arguments; each batch's rows are
    checked against their checksum before they are trusted.

    Memory: the model, plus one batch's pooled outputs (``batch_size x layers x poolings x D`` values;
    tokens instead of prompts for ``"all"``) and the token ids -- on disk, independent of N (each batch
    goes straight to its final rows); in memory (no ``out_dir`` / ``cache_dir``), the store once more.
    """
    prompts = check_prompts(prompts)
    poolings = check_poolings(pooling)
    if backend not in BACKENDS:
        raise ValueError(f"Unknown backend {backend!r}: choose from {BACKENDS}.")
    if remote and backend != "nnsight":
        raise ValueError("remote=True needs backend='nnsight' (remote execution is NDIF's, through nnsight).")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', not {padding_side!r}.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, not {batch_size!r}.")
    if max_length is not None and (
        isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1
    ):
        raise ValueError(f"max_length must be a positive integer or None, not {max_length!r}.")
    if device is not None and device_map is not None:
        raise ValueError("Pass device or device_map, not both: device_map places the model itself.")
    shard = check_shard(shard)
    if shard is not None and out_dir is None and cache_dir is None:
        raise ValueError("shard=(i, n) writes to a shared store: give out_dir (or cache_dir).")
    storage = torch_dtype(storage_dtype)
    if labels is not None:
        label_set(labels, len(prompts))  # checked before any work; stored by the writer
    if metadata is not None:
        metadata = check_metadata(metadata, len(prompts))

    source = resolve_source(model, tokenizer, revision)
    config = source.config()
    n_layers = n_layers_of(config)
    layer_names = resolve_layers(layers, n_layers)
    tok = source.load_tokenizer()
    compute = source.compute_dtype(dtype)
    # Tokenise first: the token ids are part of the key (any tokenizer setting that changes them does).
    encoded = encode_prompts(tok, prompts, max_length)
    lengths = np.array([len(ids) for ids in encoded])
    if (lengths == 0).any():
        raise ValueError(f"prompt {int(np.argmin(lengths))} tokenises to nothing; remove empty prompts.")
    hashes = [prompt_hash(p) for p in prompts]
    request = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "library_version": library_version(),
        "model": {
            "id": source.id,
            "kind": source.kind,
            "revision": source.revision,
            "fingerprint": source.fingerprint(),
            "class": getattr(config, "architectures", None) or type(source.model).__name__,
            "n_layers": n_layers,
        },
        "tokenizer": {
            "name": getattr(tok, "name_or_path", None),
            "fingerprint": hash_tokenizer(tok),
            "add_special_tokens": True,
            "truncation_side": getattr(tok, "truncation_side", None),
        },
        "tokens_sha256": _tokens_hash(encoded),
        "max_length": max_length,
        "compute_dtype": dtype_name(compute),
        "storage_dtype": dtype_name(storage),
        "hidden_size": hidden_size_of(config),
        "layers": layer_names,
        "poolings": poolings,
        "n_prompts": len(prompts),
        "prompts_sha256": hashlib.sha256("".join(hashes).encode()).hexdigest(),
        "prompt_hashes": hashes,
    }

    def runner() -> _Runner:
        net = source.load_model(compute, None if device_map is not None else source.device(device), device_map)
        blocks_path, blocks = find_decoder_layers(net)
        if len(blocks) != n_layers:
            raise ValueError(f"The config says {n_layers} layers but the model has {len(blocks)} blocks.")
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        traced = wrap_nnsight(net, tok) if backend == "nnsight" else None
        return _Runner(net, blocks_path, blocks, encoded, pad, padding_side, request["layers"],
                       request["poolings"], backend, traced, remote, storage)

    if out_dir is None and cache_dir is None:
        batches = plan_batches(lengths, batch_size)
        writer = MemoryWriter(StoreContent(request, batches, lengths, prompts, labels, metadata))
        _run(writer, batches, runner, lengths, progress)
        return writer.finish()

    cached = out_dir is None
    root = store_root(out_dir if not cached else _cache_entry(cache_dir, request))

    def waiting() -> None:
        if progress:
            print(f"extract: waiting for another process writing {root} ...", file=sys.stderr)

    with store_lock(root, on_wait=waiting):
        try:
            existing = finished_store(root, verify=verify)
        except ValueError as err:
            if not (cached or overwrite):
                if not (root / "manifest.json").is_file():
                    raise
                raise ValueError(f"{err} It is not replaced unless asked: pass overwrite=True.") from None
            existing = None  # a store this version cannot read: replaced, as asked (or as a cache's)
        if existing is not None:
            wrong = request_mismatches(existing.manifest, request)
            if not wrong:
                if labels is None and metadata is None:
                    return existing
                return attach(root, labels=labels, metadata=metadata, verify=verify)
            if cached and set(wrong) <= {"layers", "poolings"}:
                request["layers"] = resolve_layers([*layer_names, *existing.layers], n_layers)
                request["poolings"] = check_poolings([*poolings, *existing.poolings])
            elif not overwrite:
                raise ValueError(
                    f"{root} holds activations for a different request (they differ in: {', '.join(wrong)}). "
                    "They are not served: pass overwrite=True to replace them, or choose another out_dir."
                )
        batches = plan_batches(lengths, batch_size)
        writer = StoreWriter(
            root,
            StoreContent(request, batches, lengths, prompts, labels, metadata),
            resume_key={"batch_size": batch_size, "padding_side": padding_side, "backend": backend},
            shard=shard or (0, 1),
            replace=overwrite or cached,
        )
        if shard is None or shard[1] == 1:
            _run(writer, batches, runner, lengths, progress)
            return writer.finish(verify=verify)
    try:  # a shard computes without the lock, so that its peers can run beside it
        _run(writer, batches, runner, lengths, progress)
    except BaseException:
        writer._close()
        raise
    with store_lock(root, on_wait=waiting):
        return writer.finish(verify=verify)


def _run(writer, batches: list[np.ndarray], runner, lengths: np.ndarray, progress: bool) -> None:
    """Compute and write the writer's pending batches (the model is loaded only if there are any)."""
    if not writer.pending:
        return
    from tqdm.auto import tqdm
    todo = int(sum(lengths[batches[k]].sum() for k in writer.pending))
    net = runner()
    with tqdm(total=todo, unit="tok", unit_scale=True, desc="extract", disable=not progress) as bar:
        for k in list(writer.pending):
            pooled = net.run(batches[k])
            writer.write(k, {key: _to_numpy(tensor) for key, tensor in pooled.items()})
            bar.update(int(lengths[batches[k]].sum()))
