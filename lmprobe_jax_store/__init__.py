"""lmprobe_jax_store: the activation store, readable without torch or jax.

The torch side (:mod:`lmprobe_jax_extract`) writes stores; the JAX side (:mod:`lmprobe_jax`) reads them;
this package is the format between the two and needs only numpy, safetensors and filelock.

* :class:`ActivationStore` -- ``load(layer, pooling)`` -> ``(N, D)`` memory-mapped numpy,
  ``stack(layers, pooling)`` -> ``(L, N, D)``, ``iter_rows`` -> row chunks without copies; every file
  checked against the manifest's size and SHA-256, every path confined to the store.
* Writing: :func:`store_lock`, :class:`StoreContent`, :class:`StoreWriter` (batches straight to their
  final rows, checksummed for resume, renamed into place whole), :class:`MemoryWriter`, :func:`attach`
  (another label set), :func:`attach_files` (files added to a finished store), :func:`merge` (publish
  what sharded writers staged).
* Layer ``i`` is the residual stream leaving decoder block ``i`` (before the final norm); the stream
  entering block 0 is :data:`EMBEDDINGS`; :func:`resolve_layers` / :func:`normalise_layer` read layer
  requests. Poolings: :data:`POOLINGS`.
* Token-level stores (:mod:`lmprobe_jax_store._tokens`): the ``"all"`` streams plus every row's token
  id and next-token id (:func:`read_tokens`) and the model's readout -- final norm + unembedding
  (:func:`read_readout`, formula in :mod:`lmprobe_jax_store._readout`) -- so logits can be computed for any
  stream without torch.
* Sample scans (:mod:`lmprobe_jax_store._scan`): :func:`read_scan` and the writer's steps
  (:func:`writing_scan`, :func:`open_scan_projections`, :func:`finish_scan`).
* :func:`cache_root` -- where models, stores and compiled programs are cached (``$LMPROBE_JAX_CACHE``).
"""

from ._annotations import check_metadata, label_set
from ._cache import CACHE_ENV, cache_root
from ._layers import EMBEDDINGS, LayerName, layer_key, layer_order, normalise_layer, resolve_layers
from ._manifest import FORMAT, FORMAT_VERSION, MANIFEST, prompt_hash, request_mismatches, shard_path
from ._poolings import POOLINGS, check_poolings
from ._readout import NORM_KINDS, check_readout_arrays, check_readout_meta, readout_logits_numpy
from ._safetensors import ALIGNMENT
from ._scan import ScanBasis, ScanFiles, finish_scan, read_scan, writing_scan
from ._scan import open_projections as open_scan_projections
from ._store import ActivationStore
from ._tokens import (
    NO_NEXT,
    TokenIds,
    add_token_level,
    is_token_level,
    next_token_ids,
    read_readout,
    read_tokens,
)
from ._version import library_version
from ._writer import (
    MemoryWriter,
    StoreContent,
    StoreWriter,
    attach,
    attach_files,
    check_shard,
    finished_store,
    merge,
    store_lock,
    store_root,
)

__version__ = library_version()

__all__ = [
    "ALIGNMENT",
    "CACHE_ENV",
    "EMBEDDINGS",
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "NORM_KINDS",
    "NO_NEXT",
    "POOLINGS",
    "ActivationStore",
    "LayerName",
    "MemoryWriter",
    "ScanBasis",
    "ScanFiles",
    "StoreContent",
    "StoreWriter",
    "TokenIds",
    "add_token_level",
    "attach",
    "attach_files",
    "cache_root",
    "check_metadata",
    "check_poolings",
    "check_readout_arrays",
    "check_readout_meta",
    "check_shard",
    "finish_scan",
    "finished_store",
    "is_token_level",
    "label_set",
    "layer_key",
    "layer_order",
    "library_version",
    "merge",
    "next_token_ids",
    "normalise_layer",
    "open_scan_projections",
    "prompt_hash",
    "read_readout",
    "read_scan",
    "read_tokens",
    "readout_logits_numpy",
    "request_mismatches",
    "resolve_layers",
    "shard_path",
    "store_lock",
    "store_root",
    "writing_scan",
]
