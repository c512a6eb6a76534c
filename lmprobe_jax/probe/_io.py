"""Saving and loading a fitted Probe without pickle, atomically.

A saved probe is a directory: ``arrays.safetensors`` (every fitted array) and ``probe.json`` (the
parameters, the fitted non-array state, each estimator's class name, and the SHA-256 of the arrays
file). Only the classes of :data:`SAVABLE` are ever instantiated, from their JSON parameters.

``save`` writes both files into a fresh temporary directory beside ``path`` (each file written and
fsynced by :func:`lmprobe_jax_store._store.atomic_write`), then renames the directory into place (an
existing probe is first renamed aside, then removed), so a reader finds the old probe or the new one,
never one's JSON beside the other's arrays. ``load`` recomputes the arrays' SHA-256 and refuses a
mismatch. The activation cache location and progress bars are settings of the machine, not of the
probe: they are not saved (a loaded probe uses the default cache).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.pipeline import FeatureUnion, Pipeline

from lmprobe_jax_store._store import atomic_write, sha256, write_json

from ..classifiers import SAVABLE
from ..layers import LayerSpec
from ..scaling import PerLayerScaler
from ._features import MassMeanProjection

FORMAT = "lmprobe-jax-probe"
VERSION = 3  # 3: the per-layer scaler is PerLayerScaler (means_, stds_)
_CLASSES = {**SAVABLE, "PerLayerScaler": PerLayerScaler, "MassMeanProjection": MassMeanProjection}
_NOT_SAVED = ("cache_dir", "progress")
_STATE = (
    "layers_",
    "candidate_layers_",
    "selected_layers_",
    "best_layer_",
    "n_model_layers_",
    "input_layers_",
    "n_features_per_layer_",
)


def _json_value(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _estimator_state(est: Any, key: str, arrays: dict) -> Any:
    """JSON description of a fitted transformer / estimator (Pipelines and FeatureUnions recursively);
    array attributes go into ``arrays`` under ``key``."""
    if isinstance(est, str):  # "passthrough"
        return est
    if isinstance(est, Pipeline):
        return {
            "class": "Pipeline",
            "steps": [[n, _estimator_state(s, f"{key}.{n}", arrays)] for n, s in est.steps],
        }
    if isinstance(est, FeatureUnion):
        parts = [[n, _estimator_state(s, f"{key}.{n}", arrays)] for n, s in est.transformer_list]
        return {"class": "FeatureUnion", "transformers": parts}
    name = type(est).__name__
    if _CLASSES.get(name) is not type(est):
        raise ValueError(
            f"{name} cannot be saved without pickle: save/load supports the built-in classifiers "
            f"({', '.join(sorted(SAVABLE))}) and preprocessing steps only."
        )
    attrs: dict = {}
    for attr, value in vars(est).items():
        if not attr.endswith("_") or attr.startswith("_"):
            continue
        if isinstance(value, np.ndarray) and value.dtype.kind in "biuf" and value.ndim:
            arrays[f"{key}.{attr}"] = np.ascontiguousarray(value)
        elif isinstance(value, np.ndarray):
            attrs[attr] = {"list": value.tolist(), "dtype": value.dtype.str}
        elif isinstance(value, (bool, int, float, str, type(None), np.number, np.bool_)):
            attrs[attr] = value.item() if isinstance(value, (np.number, np.bool_)) else value
    params = {
        k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in est.get_params(deep=False).items()
    }
    return {"class": name, "params": params, "attrs": attrs}


def _estimator_from_state(state: Any, key: str, arrays: dict) -> Any:
    if isinstance(state, str):
        return state
    if state["class"] == "Pipeline":
        return Pipeline([(n, _estimator_from_state(s, f"{key}.{n}", arrays)) for n, s in state["steps"]])
    if state["class"] == "FeatureUnion":
        return FeatureUnion(
            [(n, _estimator_from_state(s, f"{key}.{n}", arrays)) for n, s in state["transformers"]]
        )
    cls = _CLASSES.get(state["class"])
    if cls is None:
        raise ValueError(f"Unknown estimator {state['class']!r} in a saved probe.")
    est = cls(**state["params"])
    for attr, value in state["attrs"].items():
        setattr(
            est, attr, np.array(value["list"], dtype=value["dtype"]) if isinstance(value, dict) else value
        )
    prefix = f"{key}."
    for name, value in arrays.items():
        if name.startswith(prefix) and "." not in name[len(prefix) :]:
            setattr(est, name[len(prefix) :], value)
    return est


def _params(probe: Any) -> dict:
    """The constructor parameters as JSON; a built-in estimator instance becomes its name + kwargs."""
    from ..classifiers import REGISTRY

    params = {k: v for k, v in probe.get_params(deep=False).items() if k not in _NOT_SAVED}
    model = params["model"]
    params["model"] = str(model) if isinstance(model, (str, os.PathLike)) else None
    if not isinstance(params["classifier"], str):
        est = params["classifier"]
        names = [n for n, e in REGISTRY.items() if e.native is type(est)]
        if not names:
            raise ValueError(
                f"{type(est).__name__} cannot be saved without pickle: save/load supports the built-in "
                "classifiers only (pass classifier='<name>', classifier_kwargs={...} instead)."
            )
        params["classifier"], params["classifier_kwargs"] = names[0], est.get_params(deep=False)
    return params


def _remove_leftovers(path: Path) -> None:
    """Remove the temporary and set-aside directories that killed saves of ``path`` left behind: those
    of processes no longer running (a set-aside copy only while ``path`` itself is complete)."""
    for leftover in path.parent.glob(f".{path.name}.*-*-*"):
        kind, pid = leftover.name[len(path.name) + 2 :].split("-")[:2]
        if kind not in ("tmp", "old") or not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # its saver is still running
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        if kind == "tmp" or (path / "probe.json").is_file():
            shutil.rmtree(leftover, ignore_errors=True)


def save_probe(probe: Any, path: str | os.PathLike) -> None:
    from safetensors.numpy import save

    arrays: dict[str, np.ndarray] = {}
    config = {
        "format": FORMAT,
        "version": VERSION,
        "params": _params(probe),
        "state": {name: getattr(probe, name, None) for name in _STATE},
        "layer_spec_": list(probe.layer_spec_),
        "classes_": None
        if probe.classes_ is None
        else {"list": probe.classes_.tolist(), "dtype": probe.classes_.dtype.str},
        "classifier_": _estimator_state(probe.classifier_, "classifier", arrays),
        "features_": _estimator_state(probe.features_, "features", arrays),
        "sweep_table": None if probe.sweep_ is None else probe.sweep_.table(),
    }
    if probe.layer_importances_ is not None:
        arrays["layer_importances_"] = np.asarray(probe.layer_importances_)
    data = save(arrays)
    config["arrays_sha256"] = sha256(data)
    text = json.dumps(config, indent=1, default=_json_value)  # fails before anything is written
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:  # an empty placeholder (a temporary file's name)
        path.unlink()
    if path.exists() and not (path / "probe.json").is_file():
        raise ValueError(
            f"{path} exists and is not a saved probe: choose another path (nothing was written)."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent))
    try:
        atomic_write(tmp / "arrays.safetensors", data)
        write_json(tmp / "probe.json", json.loads(text))
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-{os.getpid()}-", dir=path.parent))
            os.replace(path, old / "probe")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_probe(cls: type, path: str | os.PathLike) -> Any:
    from safetensors.numpy import load

    path = Path(path)
    if not (path / "probe.json").is_file():
        raise ValueError(f"{path} holds no saved probe (no probe.json).")
    try:
        config = json.loads((path / "probe.json").read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path / 'probe.json'} is corrupted ({err}).") from None
    if config.get("format") != FORMAT or config.get("version") != VERSION:
        raise ValueError(f"{path / 'probe.json'} is not an lmprobe-jax probe of format version {VERSION}.")
    data = (path / "arrays.safetensors").read_bytes() if (path / "arrays.safetensors").is_file() else b""
    if sha256(data) != config.get("arrays_sha256"):
        raise ValueError(
            f"{path / 'arrays.safetensors'} does not match {path / 'probe.json'} (its SHA-256 differs): the "
            "probe is corrupted or its files come from two saves. Save the probe again."
        )
    arrays = load(data)
    probe = cls(**config["params"])
    for name, value in config["state"].items():
        setattr(probe, name, value)
    probe.layer_spec_ = LayerSpec(*config["layer_spec_"])
    classes = config["classes_"]
    probe.classes_ = None if classes is None else np.array(classes["list"], dtype=classes["dtype"])
    probe.classifier_ = _estimator_from_state(config["classifier_"], "classifier", arrays)
    probe.features_ = _estimator_from_state(config["features_"], "features", arrays)
    probe.scaler_ = probe.features_.named_steps.get("scale")
    probe.layer_importances_ = arrays.get("layer_importances_")
    probe.sweep_ = probe.sweep_result_ = probe._evaluation_results_ = None
    probe.sweep_table_ = config["sweep_table"]
    return probe
