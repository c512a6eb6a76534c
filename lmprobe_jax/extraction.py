"""lmprobe's ``lmprobe.extraction`` names that its users call: a model's depth read from its config, and
:class:`ActivationExtractor`, the object a :class:`~lmprobe_jax.Probe` extracts through (lmprobe code
reaches the loaded model as ``probe._extractor.model`` and the backend as ``probe._extractor._backend``).

Importing this module imports neither torch nor the model: the backend is made, and the model loaded,
on first use.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def get_num_layers_from_config(model_name: Any) -> int:
    """Number of decoder blocks of ``model_name`` (a hub id, a directory, a ``.gguf`` file), from its
    config alone: no weights are loaded (:func:`lmprobe_jax_extract.model_layer_count`)."""
    from lmprobe_jax_extract import model_layer_count

    return model_layer_count(model_name)


class ActivationExtractor:
    """A model, its layer spec and extraction settings (lmprobe's class, same constructor).

    Two ways to extract:

    * :meth:`extract_store`: pooled activations through :func:`lmprobe_jax_extract.extract_activations`
      (one forward pass for every layer, content-keyed cache, resume) -- what ``Probe`` uses;
    * :meth:`extract_batch` / :meth:`extract`: one batch's / every prompt's unpooled hidden states
      ``(B, T, D * len(layer_indices))`` and the mask, through the backend object
      (:mod:`lmprobe_jax.backends`), as lmprobe's.

    Both load the model through the same loader, which keeps the model loaded last, so
    ``extractor.model`` is the model extraction runs (for a model of the same dtype and device).

    Attributes: ``model_name``, ``device``, ``layers_spec``, ``batch_size`` (prompts per forward pass;
    assign to change it), ``auto_candidates``, ``remote``, ``backend_name``, ``dtype`` (a torch dtype or
    None); ``_backend`` (a :class:`~lmprobe_jax.backends.ExtractionBackend`, made on first use),
    ``model`` / ``tokenizer`` (loaded on first use), ``layer_indices`` (the spec resolved against the
    model's depth, read from its config), ``num_layers`` (``len(layer_indices)``).
    """

    def __init__(
        self,
        model_name: Any,
        device: str = "auto",
        layers: Any = "middle",
        batch_size: int = 8,
        auto_candidates: Sequence[int | float] | None = None,
        remote: bool = False,
        backend: str = "local",
        dtype: Any = None,
    ):
        from .probe._compat import _resolve_dtype

        if backend not in ("local", "nnsight"):
            raise ValueError(f"Unknown backend {backend!r}: choose 'local' or 'nnsight'.")
        if backend == "local" and remote:
            raise ValueError("backend='local' does not support remote=True: use backend='nnsight' for NDIF.")
        self.model_name = model_name
        self.device = device
        self.layers_spec = layers
        self.batch_size = batch_size
        self.auto_candidates = auto_candidates
        self.remote = remote
        self.backend_name = backend
        self.dtype = _resolve_dtype(dtype)
        self._backend_object: Any = None
        self._model_layers: int | None = None

    @property
    def _backend(self) -> Any:
        """The backend object of ``backend_name`` (made on first use; it loads the model on first use)."""
        if self._backend_object is None:
            from .backends import resolve_backend

            self._backend_object = resolve_backend(
                self.backend_name, self.model_name, self.device, remote=self.remote, dtype=self.dtype
            )
        return self._backend_object

    @property
    def model(self) -> Any:
        """The loaded model (for ``backend="nnsight"``, its nnsight wrapper)."""
        return self._backend.model

    @property
    def tokenizer(self) -> Any:
        return self._backend.tokenizer

    @property
    def n_model_layers(self) -> int:
        """Decoder blocks of the model, from its config (read once)."""
        if self._model_layers is None:
            self._model_layers = get_num_layers_from_config(self.model_name)
        return self._model_layers

    @property
    def layer_indices(self) -> list[Any]:
        """``layers_spec`` resolved against the model's depth (non-negative block indices)."""
        from .layers import parse_layers

        spec = parse_layers(self.layers_spec, self.n_model_layers, auto_candidates=self.auto_candidates)
        return list(spec.layers)

    @property
    def num_layers(self) -> int:
        """Number of layers extracted: ``len(layer_indices)``."""
        return len(self.layer_indices)

    def extract_batch(self, prompts: list[str], layer_indices: list[int], **kwargs: Any) -> tuple[Any, Any]:
        """``(activations (B, T, D * len(layer_indices)), attention_mask (B, T))`` torch tensors on the CPU
        for one batch, unpooled (the backend's ``extract_batch``)."""
        return self._backend.extract_batch(prompts, layer_indices, **kwargs)

    def extract(
        self, prompts: list[str], remote: bool = False, layers: list[int] | None = None
    ) -> tuple[Any, Any]:
        """Every prompt's unpooled hidden states at ``layers`` (default :attr:`layer_indices`), as lmprobe's:
        :meth:`extract_batch` over batches of ``batch_size``, each zero-padded on the right to the longest:
        ``(activations (N, T, D * L), attention_mask (N, T))``."""
        import torch
        import torch.nn.functional as nnf

        layers = self.layer_indices if layers is None else layers
        step = self.batch_size
        parts = [
            self.extract_batch(prompts[i : i + step], layers, remote=remote)
            for i in range(0, len(prompts), step)
        ]
        width = max(mask.shape[1] for _, mask in parts)
        acts = [nnf.pad(a, (0, 0, 0, width - a.shape[1])) for a, _ in parts]
        masks = [nnf.pad(m, (0, width - m.shape[1])) for _, m in parts]
        return torch.cat(acts), torch.cat(masks)

    def extract_store(
        self,
        prompts: list[str],
        pooling: str | Sequence[str],
        *,
        layers: Sequence[Any] | None = None,
        cache_dir: str | Path | None = None,
        batch_size: int | None = None,
        remote: bool | None = None,
        overwrite: bool = False,
        progress: bool = True,
    ) -> Any:
        """Pooled activations of ``prompts`` at ``layers`` (default :attr:`layer_indices`) as an
        :class:`lmprobe_jax_store.ActivationStore`, one forward pass for all of them; ``batch_size`` and
        ``remote`` override this extractor's for this call only."""
        from lmprobe_jax_extract import extract_activations
        from lmprobe_jax_store import layer_order

        from .cache import storage_dtype

        layers = self.layer_indices if layers is None else layers
        return extract_activations(
            self.model_name,
            prompts,
            layers=sorted(set(layers), key=layer_order),
            pooling=pooling,
            cache_dir=cache_dir,
            batch_size=batch_size or self.batch_size,
            dtype=self.dtype,
            storage_dtype=storage_dtype(),
            device=None if self.device == "auto" else self.device,
            backend=self.backend_name,
            remote=self.remote if remote is None else remote,
            overwrite=overwrite,
            progress=progress,
        )


__all__ = ["ActivationExtractor", "get_num_layers_from_config"]
