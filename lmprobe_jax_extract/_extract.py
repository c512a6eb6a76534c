"""``extract_activations``: one forward pass per batch, every requested layer, pooled on the device,
written to a store that can be trusted (see :mod:`lmprobe_jax_store`) and resumed after a crash."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_tensors

from lmprobe_jax_store import (
    EMBEDDINGS,
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    ActivationStore,
    LayerName,
    check_poolings,
    layer_key,
    library_version,
    resolve_layers,
    shard_path,
)
from lmprobe_jax_store._store import read_header, request_mismatches, write_file, write_json

from ._blocks import find_decoder_layers, n_layers_of
from ._capture import capture_local, capture_nnsight, model_inputs, wrap_nnsight
from ._pooling import token_offsets
from ._source import dtype_name, hash_tokenizer, resolve_source, torch_dtype

BACKENDS = ("local", "nnsight")
PARTIAL = ".partial"


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


def _prompt_hash(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    if tensor.dtype == torch.bfloat16:
        import ml_dtypes

        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


class _Plan:
    """Prompts sorted by token count (longest first: an out-of-memory shows up in the first batch) and cut
    into batches. Batch k of the plan is chunk k on disk; a resumed run rebuilds the same plan."""

    def __init__(self, lengths: np.ndarray, batch_size: int):
        self.order = np.argsort(-lengths, kind="stable")
        self.batches = [self.order[i : i + batch_size] for i in range(0, len(self.order), batch_size)]


class _Runner:
    """Runs plan batches through the model with out-of-memory back-off: a batch that does not fit is
    split in halves (recursively), and later batches start from the size that fitted."""

    def __init__(
        self,
        model,
        blocks_path,
        blocks,
        token_ids,
        pad_id,
        padding_side,
        layers,
        poolings,
        backend,
        traced,
        remote,
        storage_dtype,
    ):
        self.model, self.blocks_path, self.blocks = model, blocks_path, blocks
        self.token_ids, self.pad_id, self.padding_side = token_ids, pad_id, padding_side
        self.layers, self.poolings = layers, poolings
        self.backend, self.traced, self.remote = backend, traced, remote
        self.storage_dtype = storage_dtype
        self.device = next(model.parameters()).device
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
        if self.max_rows is not None and len(rows) > self.max_rows:
            parts = [rows[i : i + self.max_rows] for i in range(0, len(rows), self.max_rows)]
            return _concat([self.run(part) for part in parts])
        try:
            return self._forward(rows)
        except torch.OutOfMemoryError:
            if len(rows) == 1:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self.max_rows = len(rows) // 2
            return self.run(rows)


def _concat(parts: list[dict]) -> dict:
    return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}


def _chunk_name(k: int) -> str:
    return f"chunk_{k:06d}.safetensors"


def _tensor_key(layer: LayerName, pooling: str) -> str:
    return f"{pooling}/{layer_key(layer)}"


def _load_chunk(path: Path, expected_keys: set[str], rows: np.ndarray) -> dict | None:
    """A finished chunk, or None when it is absent or unreadable (it is then recomputed)."""
    if not path.is_file():
        return None
    try:
        read_header(path)
        with safe_open(path, framework="pt") as handle:
            if set(handle.keys()) != expected_keys | {"rows"}:
                return None
            if not torch.equal(handle.get_tensor("rows"), torch.as_tensor(rows, dtype=torch.int64)):
                return None
            return {key: handle.get_tensor(key) for key in expected_keys}
    except (OSError, ValueError, RuntimeError, SafetensorError):  # unreadable: recompute, never trust
        return None


def _resolve_out_dir(out_dir, cache_dir, request) -> tuple[Path | None, bool]:
    if out_dir is not None:
        return Path(out_dir), False
    if cache_dir is None:
        return None, False
    # Layers and poolings are left out of the key: one cache entry per (model, tokenizer, dtypes,
    # prompts) grows to the union of what was asked for.
    keyed = {key: value for key, value in request.items() if key not in ("layers", "poolings")}
    digest = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:24]
    return Path(cache_dir).expanduser() / digest, True


def _side_files(root: Path | None, labels, metadata, prompts) -> dict:
    """Write labels / metadata / prompts; returns manifest entries (or in-memory arrays when root is None)."""
    entries: dict = {}
    items = {"prompts.json": prompts}
    if metadata is not None:
        items["metadata.json"] = metadata
    for name, value in items.items():
        entries[name] = (
            value
            if root is None
            else write_file(root, name, (json.dumps(value, ensure_ascii=False) + "\n").encode())
        )
    if labels is not None:
        tensor = torch.as_tensor(labels)
        entries["labels.safetensors"] = (
            _to_numpy(tensor)
            if root is None
            else write_file(root, "labels.safetensors", save_tensors({"labels": tensor.contiguous()}))
        )
    return entries


def _check_side_data(labels, metadata, n: int):
    if labels is not None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) != n:
            raise ValueError(f"labels has shape {labels.shape}; expected ({n},), one per prompt.")
        if labels.dtype.kind not in "biuf":
            raise ValueError(
                "labels must be numeric (bool, int or float); map class names to integers and keep the "
                "names in metadata."
            )
    if metadata is not None:
        metadata = list(metadata)
        if len(metadata) != n:
            raise ValueError(f"metadata has {len(metadata)} entries; expected {n}, one per prompt.")
        try:
            json.dumps(metadata)
        except TypeError as err:
            raise ValueError(f"metadata must be JSON-serialisable ({err}).") from None
    return labels, metadata


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
    backend: str = "local",
    remote: bool = False,
    tokenizer: Any = None,
    revision: str | None = None,
    max_length: int | None = None,
    padding_side: str = "right",
    labels: Sequence | np.ndarray | None = None,
    metadata: Sequence[dict] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    verify: bool = True,
) -> ActivationStore:
    """Run ``model`` over ``prompts`` once and keep one pooled vector per prompt per requested layer.

    Args:
      model: a local model directory, a ``.gguf`` file, a Hugging Face hub id (its local snapshot;
        offline with ``HF_HUB_OFFLINE=1``), a ``(model, tokenizer)`` pair, or a loaded model with
        ``tokenizer=``.
      prompts: N strings.
      layers: block indices (negatives count from the end), ``"all"``, or ``"embeddings"``. Layer i is the
        residual stream leaving decoder block i, before the final norm (see :mod:`extract._layers`).
      pooling: one of :data:`extract.POOLINGS` or a list of them, all computed in the same pass.
      out_dir: where to write the store. If it already holds a store for the same request it is served
        as is (a request for fewer layers or poolings is served too); a store for a different request
        raises ``ValueError`` unless ``overwrite=True``. ``None`` with no ``cache_dir`` keeps the store
        in memory.
      cache_dir: a content-keyed cache: the store goes to ``cache_dir/<key>``, where the key hashes the
        weights, tokenizer, dtypes, prompts and library version; asking for more layers or poolings than
        an entry holds re-extracts it with the union of both.
      batch_size: prompts per forward pass (halved automatically on out-of-memory).
      dtype: the model's compute dtype (``"float32"``, ``"float16"``, ``"bfloat16"``); default float32
        for a model loaded here, the model's own dtype for a model object.
      storage_dtype: dtype of the stored activations.
      device: where the model runs (default: CUDA when available, else CPU; a model object stays where
        it is unless ``device`` is given).
      backend: ``"local"`` (forward hooks) or ``"nnsight"``; both give the same activations.
      remote: with ``backend="nnsight"``, run the trace on NDIF.
      max_length: truncate prompts to this many tokens (part of the store's key).
      padding_side: ``"right"`` or ``"left"``; results do not depend on it (masks and position ids are
        handled), it only matters for speed on some kernels.
      labels, metadata: numeric labels ``(N,)`` and a list of N JSON-serialisable dicts, stored beside
        the activations (updated in place on a store hit).
      overwrite: replace a store at ``out_dir`` that was made for a different request.
      progress: show a progress bar with tokens/s.
      verify: check every shard's SHA-256 against the manifest on first read.

    Returns:
      An :class:`ActivationStore`; ``store.load(layer, pooling)`` is ``(N, D)`` (``(n_tokens, D)`` for
      ``"all"``, with ``store.offsets()``), ``store.stack(layers, pooling)`` is ``(L, N, D)``.

    An interrupted extraction (crash, kill, out of time) resumes from its last finished batch when called
    again with the same arguments; finished batches live in ``out_dir/.partial`` until the store is
    complete.
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
    if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
        raise ValueError(f"max_length must be a positive integer or None, not {max_length!r}.")
    storage = torch_dtype(storage_dtype)
    labels, metadata = _check_side_data(labels, metadata, len(prompts))

    source = resolve_source(model, tokenizer, revision)
    config = source.config()
    n_layers = n_layers_of(config)
    layer_names = resolve_layers(layers, n_layers)
    tok = source.load_tokenizer()
    compute = source.compute_dtype(dtype)
    hashes = [_prompt_hash(p) for p in prompts]
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
        },
        "max_length": max_length,
        "compute_dtype": dtype_name(compute),
        "storage_dtype": dtype_name(storage),
        "layers": layer_names,
        "poolings": poolings,
        "n_prompts": len(prompts),
        "prompts_sha256": hashlib.sha256("".join(hashes).encode()).hexdigest(),
        "prompt_hashes": hashes,
    }

    root, cached = _resolve_out_dir(out_dir, cache_dir, request)
    if root is not None and (root / MANIFEST).is_file() and not overwrite:
        existing = ActivationStore(root, verify=verify)
        wrong = request_mismatches(existing.manifest, request)
        if not wrong:
            if labels is not None or metadata is not None:
                manifest = dict(existing.manifest)
                manifest["files"] = {**manifest["files"], **_side_files(root, labels, metadata, prompts)}
                write_json(root / MANIFEST, manifest)
                existing = ActivationStore(root, verify=verify)
            return existing
        if cached and set(wrong) <= {"layers", "poolings"}:
            stored_layers = [EMBEDDINGS if n == EMBEDDINGS else int(n) for n in existing.manifest["layers"]]
            request["layers"] = resolve_layers(list({*layer_names, *stored_layers}), n_layers)
            request["poolings"] = check_poolings([*poolings, *existing.poolings])
        elif not cached:
            raise ValueError(
                f"{root} holds activations for a different request (they differ in: {', '.join(wrong)}). "
                "They are not served: pass overwrite=True to replace them, or choose another out_dir."
            )

    # Tokenise once: the plan sorts by length, and the progress bar counts tokens.
    encoded = encode_prompts(tok, prompts, max_length)
    lengths = np.array([len(ids) for ids in encoded])
    if (lengths == 0).any():
        raise ValueError(f"prompt {int(np.argmin(lengths))} tokenises to nothing; remove empty prompts.")
    plan = _Plan(lengths, batch_size)
    layer_names, poolings = request["layers"], request["poolings"]
    keys = {_tensor_key(layer, pooling) for layer in layer_names for pooling in poolings}

    partial = None
    if root is not None:
        partial = root / PARTIAL
        plan_record = {"request": request, "batch_size": batch_size, "padding_side": padding_side}
        plan_file = partial / "plan.json"
        if not (
            plan_file.is_file() and json.loads(plan_file.read_text()) == json.loads(json.dumps(plan_record))
        ):
            shutil.rmtree(partial, ignore_errors=True)
            write_json(plan_file, plan_record)

    device = source.device(device)
    chunks: list[dict | None] = [
        None if partial is None else _load_chunk(partial / _chunk_name(k), keys, rows)
        for k, rows in enumerate(plan.batches)
    ]
    if any(chunk is None for chunk in chunks):
        net = source.load_model(compute, device)
        blocks_path, blocks = find_decoder_layers(net)
        if len(blocks) != n_layers:
            raise ValueError(f"The config says {n_layers} layers but the model has {len(blocks)} blocks.")
        runner = _Runner(
            net,
            blocks_path,
            blocks,
            encoded,
            tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0),
            padding_side,
            layer_names,
            poolings,
            backend,
            wrap_nnsight(net, tok) if backend == "nnsight" else None,
            remote,
            storage,
        )
        _run_plan(plan, chunks, runner, lengths, partial, progress)

    return _assemble(root, request, plan, chunks, lengths, labels, metadata, prompts, verify, partial)


def _run_plan(plan, chunks, runner, lengths, partial, progress) -> None:
    from tqdm.auto import tqdm

    bar = tqdm(total=int(lengths.sum()), unit="tok", unit_scale=True, desc="extract", disable=not progress)
    with bar:
        for k, rows in enumerate(plan.batches):
            if chunks[k] is None:
                pooled = runner.run(rows)
                chunk = {
                    _tensor_key(layer, pooling): t.contiguous() for (layer, pooling), t in pooled.items()
                }
                if partial is not None:
                    write_file(
                        partial,
                        _chunk_name(k),
                        save_tensors({**chunk, "rows": torch.as_tensor(rows, dtype=torch.int64)}),
                    )
                chunks[k] = chunk
            bar.update(int(lengths[rows].sum()))


def _assemble(root, request, plan, chunks, lengths, labels, metadata, prompts, verify, partial):
    """Put the chunks' rows back in prompt order, one array per (pooling, layer), and write the store."""
    inverse = np.empty_like(plan.order)
    inverse[plan.order] = np.arange(len(plan.order))
    sorted_lengths = lengths[plan.order]
    # For "all": row indices that reorder the tokens of the sorted prompts into prompt order.
    sorted_starts = np.concatenate([[0], np.cumsum(sorted_lengths)])
    token_rows = np.concatenate(
        [np.arange(sorted_starts[s], sorted_starts[s] + lengths[i]) for i, s in enumerate(inverse)]
    )
    if root is not None and (root / MANIFEST).exists():
        (root / MANIFEST).unlink()  # replacing a store: it is incomplete until the new manifest lands
    files: dict = {}
    hidden_size = None
    for pooling in request["poolings"]:
        order = torch.as_tensor(token_rows if pooling == "all" else inverse)
        for layer in request["layers"]:
            key = _tensor_key(layer, pooling)
            array = torch.cat([chunk[key] for chunk in chunks])[order].contiguous()
            hidden_size = array.shape[-1]
            relative = shard_path(pooling, layer)
            files[relative] = (
                _to_numpy(array)
                if root is None
                else write_file(root, relative, save_tensors({"activations": array}))
            )
    if "all" in request["poolings"]:
        offsets = token_offsets(lengths.tolist())
        files["all/offsets.safetensors"] = (
            offsets.numpy()
            if root is None
            else write_file(root, "all/offsets.safetensors", save_tensors({"offsets": offsets}))
        )
    files.update(_side_files(root, labels, metadata, prompts))
    manifest = {**request, "hidden_size": int(hidden_size), "n_tokens": int(lengths.sum())}
    manifest["layers"] = [str(layer) if layer == EMBEDDINGS else layer for layer in manifest["layers"]]
    if root is None:
        return ActivationStore.from_arrays({**manifest, "files": sorted(files)}, files)
    manifest["files"] = files
    write_json(root / MANIFEST, manifest)
    shutil.rmtree(partial, ignore_errors=True)
    return ActivationStore(root, verify=verify)
