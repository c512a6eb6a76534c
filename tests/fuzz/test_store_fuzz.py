"""Hypothesis over the store's public inputs: files on disk (tampered at random), label arrays of every
kind, writer plans. Each case must end in the data as written or in a ValueError that says what is wrong
-- never another exception, never other data ("silent wrong"). Counts print at the end (``-s``)."""

import copy
import hashlib
import itertools
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lmprobe_jax_store import ActivationStore, MemoryWriter, StoreContent, StoreWriter, store_lock

SETTINGS = settings(max_examples=150, deadline=None, derandomize=True, database=None)


def _manifest(n, d, layers, poolings, dtype="float32"):
    from conftest import store_manifest

    return store_manifest(n, d, layers, poolings, storage_dtype=dtype)


def _write(root, n, d, layers, poolings, counts, batches, order, dtype="float32", labels=None, seed=0):
    rng = np.random.default_rng(seed)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    numpy_dtype = np.dtype(dtype) if dtype != "bfloat16" else np.dtype(__import__("ml_dtypes").bfloat16)
    data = {
        (layer, p): rng.normal(size=(offsets[-1] if p == "all" else n, d)).astype(numpy_dtype)
        for layer in layers
        for p in poolings
    }
    with store_lock(root):
        content = StoreContent(_manifest(n, d, layers, poolings, dtype), batches, counts, [f"p{i}" for i in range(n)],
                               labels)
        writer = StoreWriter(root, content)
        for k in order:
            rows = np.asarray(batches[k])
            tokens = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in rows])
            writer.write(k, {key: v[tokens if key[1] == "all" else rows] for key, v in data.items()})
        return writer.finish(), data


@st.composite
def plans(draw):
    n = draw(st.integers(1, 12))
    d = draw(st.integers(1, 9))
    layers = draw(st.lists(st.sampled_from(["embeddings", 0, 1, 2, 3]), min_size=1, max_size=3, unique=True))
    poolings = draw(st.lists(st.sampled_from(["last_token", "mean", "all", "max"]), min_size=1, max_size=2,
                             unique=True))
    counts = draw(st.lists(st.integers(1, 5), min_size=n, max_size=n))
    perm = draw(st.permutations(list(range(n))))
    cuts = sorted(draw(st.sets(st.integers(1, max(n - 1, 1)), max_size=n - 1))) if n > 1 else []
    bounds = [0, *cuts, n]
    batches = [perm[a:b] for a, b in itertools.pairwise(bounds) if b > a]
    order = draw(st.permutations(list(range(len(batches)))))
    dtype = draw(st.sampled_from(["float32", "float16", "bfloat16"]))
    return n, d, layers, poolings, counts, batches, order, dtype


@SETTINGS
@given(plans())
def test_any_plan_and_order_puts_every_row_in_place(outcomes, plan):
    n, d, layers, poolings, counts, batches, order, dtype = plan
    with tempfile.TemporaryDirectory() as tmp:
        store, data = _write(Path(tmp) / "s", n, d, layers, poolings, counts, batches, order, dtype)
        memory = MemoryWriter(StoreContent(_manifest(n, d, layers, poolings, dtype), batches, counts,
                                           [f"p{i}" for i in range(n)]))
        offsets = np.concatenate([[0], np.cumsum(counts)])
        for k in order:
            rows = np.asarray(batches[k])
            tokens = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in rows])
            memory.write(k, {key: v[tokens if key[1] == "all" else rows] for key, v in data.items()})
        in_memory = memory.finish()
        good = all(
            np.array_equal(ActivationStore(Path(tmp) / "s").load(layer, p).view(np.uint8), v.view(np.uint8))
            and np.array_equal(in_memory.load(layer, p).view(np.uint8), v.view(np.uint8))
            for (layer, p), v in data.items()
        )
        outcomes.add("writer: random plans, batch orders, dtypes", silent_wrong=not good)
        assert good
        del store


LABELS = st.one_of(
    hnp.arrays(st.sampled_from(["bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
                                "float16", "float32", "float64"]), 5),
    st.lists(st.text(max_size=6), min_size=5, max_size=5),
    st.lists(st.one_of(st.none(), st.integers(-3, 3), st.floats(allow_nan=True), st.text(max_size=3)),
             min_size=5, max_size=5),
    st.lists(st.integers(0, 3), min_size=0, max_size=7),
    hnp.arrays("float64", st.sampled_from([(5, 1), (1, 5), (5, 2)])),
)


def _same_labels(given, store) -> bool:
    values = np.asarray(given)
    if store.label_names is None:
        return store.labels.dtype == values.dtype and np.array_equal(store.labels, values)
    return [store.label_names[i] for i in store.labels] == [str(v) for v in values.tolist()]


@SETTINGS
@given(LABELS)
def test_any_labels_round_trip_or_are_refused_clearly(outcomes, labels):
    with tempfile.TemporaryDirectory() as tmp:
        try:
            store, _ = _write(Path(tmp) / "s", 5, 2, [0], ["mean"], [1] * 5, [[0, 1, 2], [3, 4]], [1, 0],
                              labels=labels)
        except ValueError as err:
            outcomes.add("labels: every dtype, class names, missing values, shapes", clear=True)
            assert "label" in str(err)
            return
        good = _same_labels(np.asarray(labels) if not isinstance(labels, list) else labels, store) and _same_labels(
            labels, ActivationStore(Path(tmp) / "s"))
        outcomes.add("labels: every dtype, class names, missing values, shapes", silent_wrong=not good)
        assert good


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A finished store (two poolings, labels, metadata) and everything it must read back as."""
    root = tmp_path_factory.mktemp("pristine") / "s"
    from conftest import store_manifest

    with store_lock(root):
        rng = np.random.default_rng(0)
        counts = [2, 1, 3, 1, 2]
        data = {(layer, p): rng.normal(size=(9 if p == "all" else 5, 4)).astype(np.float32)
                for layer in (0, 2) for p in ("mean", "all")}
        content = StoreContent(store_manifest(5, 4, [0, 2], ["mean", "all"]), [[4, 0], [1, 2, 3]], counts,
                               list("abcde"), ["x", "y", "x", "y", "y"], [{"i": i} for i in range(5)])
        writer = StoreWriter(root, content)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        for k, rows in enumerate([[4, 0], [1, 2, 3]]):
            tokens = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in rows])
            writer.write(k, {key: v[tokens if key[1] == "all" else rows] for key, v in data.items()})
        writer.finish()
    return root, _read_all(ActivationStore(root))


def _read_all(store) -> dict:
    out = {f"{p}/{layer}": np.array(store.load(layer, p)) for p in store.poolings for layer in store.layers}
    out.update(offsets=np.array(store.offsets()), labels=store.labels, names=store.label_names,
               metadata=store.metadata, prompts=store.prompts)
    store.verify_all()
    return out


def _equal(got: dict, want: dict) -> bool:
    """Whether everything read is what was written. A manifest edited to list fewer layers or poolings,
    or to drop its label or metadata set, reads as a store without them (a consumer that needs them is
    told they are not there): absent, never wrong."""
    if not got.keys() <= want.keys():
        return False
    detached = {"labels", "names", "metadata"} if got["labels"] is None or got["metadata"] is None else set()
    return all(
        (k in detached and got[k] is None)
        or (np.array_equal(got[k], want[k]) if isinstance(want[k], np.ndarray) else got[k] == want[k])
        for k in got
    )


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10**12) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=6), children, max_size=3),
    max_leaves=6,
)


@st.composite
def tamperings(draw):
    kind = draw(st.sampled_from(["flip", "truncate", "manifest_value", "manifest_drop", "symlink", "path",
                                 "remove", "header_length"]))
    return kind, draw(st.integers(0, 10**9)), draw(JSON), draw(st.integers(0, 7))


def _tamper(root: Path, kind: str, seed: int, value, bit: int) -> None:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    target = files[seed % len(files)]
    manifest_path = root / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    if kind == "flip":
        data = bytearray(target.read_bytes())
        data[seed % len(data)] ^= 1 << bit
        target.write_bytes(bytes(data))
    elif kind == "truncate":
        data = target.read_bytes()
        target.write_bytes(data[: seed % max(len(data), 1)])
    elif kind == "header_length" and target.suffix == ".safetensors":
        data = bytearray(target.read_bytes())
        data[:8] = (seed * 7919 % (1 << 63)).to_bytes(8, "little")
        target.write_bytes(bytes(data))
        manifest["files"][str(target.relative_to(root))]["sha256"] = hashlib.sha256(data).hexdigest()
        manifest_path.write_text(json.dumps(manifest))
    elif kind == "manifest_value":
        paths = _paths(manifest)
        where = paths[seed % len(paths)]
        _set(manifest, where, value)
        manifest_path.write_text(json.dumps(manifest))
    elif kind == "manifest_drop":
        paths = _paths(manifest)
        where = paths[seed % len(paths)]
        parent = manifest
        for key in where[:-1]:
            parent = parent[key]
        del parent[where[-1]]
        manifest_path.write_text(json.dumps(manifest))
    elif kind == "symlink" and target != manifest_path:
        moved = root.parent / f"moved-{target.name}"
        shutil.copy(target, moved)
        target.unlink()
        os.symlink(moved, target)
    elif kind == "path":
        relative = ["../outside.safetensors", "/etc/hostname", "mean/../../x", "a\\b", ""][seed % 5]
        entry = next(iter(manifest["files"].values()))
        manifest["files"][relative] = entry
        if seed % 2:
            manifest["labels"] = relative
        manifest_path.write_text(json.dumps(manifest))
    elif kind == "remove":
        target.unlink()


def _paths(obj, prefix=()):
    out = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            out.append((*prefix, key))
            out.extend(_paths(value, (*prefix, key)))
    elif isinstance(obj, list):
        for i, value in enumerate(obj[:3]):
            out.append((*prefix, i))
            out.extend(_paths(value, (*prefix, i)))
    return out


def _set(obj, where, value):
    for key in where[:-1]:
        obj = obj[key]
    obj[where[-1]] = value


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(tamperings())
def test_a_tampered_store_is_refused_or_reads_as_written(outcomes, pristine, tampering):
    root, expected = pristine
    with tempfile.TemporaryDirectory() as tmp:
        copy_root = Path(tmp) / "s"
        shutil.copytree(root, copy_root, symlinks=True)
        _tamper(copy_root, *tampering)
        try:
            got = _read_all(ActivationStore(copy_root))
        except ValueError:
            outcomes.add(f"tampered store: {tampering[0]}", clear=True)
            return
        # Provenance fields (model id, tokenizer name, ...) may be edited without changing any data.
        good = _equal(got, copy.deepcopy(expected))
        outcomes.add(f"tampered store: {tampering[0]}", silent_wrong=not good)
        assert good, tampering
