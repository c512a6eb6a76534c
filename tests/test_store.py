"""lmprobe_jax_store without a model: the writer's placement and format, label sets, confinement,
malformed stores, leftovers of dead writers. (Extraction-level and multi-process tests: test_extract.py,
tests/faults/; randomised tampering: tests/fuzz/.)"""

import json
import os

import numpy as np
import pytest
import safetensors.numpy

from lmprobe_jax_store import (
    ALIGNMENT,
    ActivationStore,
    MemoryWriter,
    StoreContent,
    StoreWriter,
    attach,
    merge,
    store_lock,
)


def test_every_batch_lands_at_its_final_rows(write_store, tmp_path):
    store, data, counts = write_store(tmp_path / "s", n=11, batch=3, layers=("embeddings", 0, 3))
    offsets = np.concatenate([[0], np.cumsum(counts)])
    np.testing.assert_array_equal(store.offsets(), offsets)
    for (layer, pooling), want in data.items():
        got = store.load(layer, pooling)
        np.testing.assert_array_equal(got, want)
        assert got.ctypes.data % ALIGNMENT == 0 and not got.flags.writeable
        shard = tmp_path / "s" / pooling / (f"layer_{layer:03d}" if layer != "embeddings" else "embeddings")
        np.testing.assert_array_equal(safetensors.numpy.load_file(f"{shard}.safetensors")["activations"], want)
    assert store.prompts == [f"prompt {i}" for i in range(11)]
    chunks = list(store.iter_rows(3, "mean", chunk_rows=4))
    assert [rows for rows, _ in chunks] == [slice(0, 4), slice(4, 8), slice(8, 11)]
    assert all(np.shares_memory(block, store.load(3, "mean")) or block.base is not None for _, block in chunks)
    np.testing.assert_array_equal(np.concatenate([block for _, block in chunks]), data[(3, "mean")])
    assert sorted(os.listdir(tmp_path)) == [".s.lock", "s"]  # no staging, logs or temporary files left


def test_memory_writer_holds_what_the_store_writer_writes(write_store, tmp_path):
    from conftest import store_manifest

    store, data, counts = write_store(tmp_path / "s", n=6, batch=4)
    plan = [[5, 0, 3, 1], [4, 2]]
    writer = MemoryWriter(StoreContent(store_manifest(6, 8, (0, 2), ("mean", "all")), plan, counts, store.prompts))
    offsets = np.concatenate([[0], np.cumsum(counts)])
    for k, rows in enumerate(plan):
        tokens = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in rows])
        writer.write(k, {key: value[tokens if key[1] == "all" else rows] for key, value in data.items()})
    memory = writer.finish()
    for layer, pooling in data:
        np.testing.assert_array_equal(memory.load(layer, pooling), store.load(layer, pooling))


@pytest.mark.parametrize(
    "dtype", ["bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "float16",
              "float32", "float64"]
)
def test_label_dtypes_round_trip(write_store, tmp_path, dtype):
    labels = (np.arange(7) % 3 == 1) if dtype == "bool" else (np.arange(7) % 3).astype(dtype)
    store, _, _ = write_store(tmp_path / "s", labels=labels)
    for opened in (store, ActivationStore(tmp_path / "s")):
        assert opened.labels.dtype == labels.dtype and opened.label_names is None
        np.testing.assert_array_equal(opened.labels, labels)


def test_class_names_are_kept_beside_their_indices(write_store, tmp_path):
    names = ["pos", "neg", "neutral", "neg", "pos", "pos", "neutral"]
    store, _, _ = write_store(tmp_path / "s", labels=names)
    assert store.label_names == ["neg", "neutral", "pos"]
    assert [store.label_names[i] for i in ActivationStore(tmp_path / "s").labels] == names
    with pytest.raises(ValueError, match="missing"):
        write_store(tmp_path / "t", labels=["a", None, "b", "a", "a", "a", "a"])
    with pytest.raises(ValueError, match="NaN"):
        write_store(tmp_path / "u", labels=[0.0, np.nan, 1, 1, 1, 0, 0])


def test_an_open_store_keeps_its_label_set(write_store, tmp_path):
    first, _, _ = write_store(tmp_path / "s", labels=np.zeros(7, int), metadata=[{"v": 0}] * 7)
    second = attach(tmp_path / "s", labels=np.ones(7, int), metadata=[{"v": 1}] * 7)
    np.testing.assert_array_equal(first.labels, np.zeros(7))
    assert first.metadata[0] == {"v": 0} and second.metadata[0] == {"v": 1}
    np.testing.assert_array_equal(second.labels, np.ones(7))
    np.testing.assert_array_equal(ActivationStore(tmp_path / "s").labels, np.ones(7))
    attach(tmp_path / "s", labels=np.zeros(7, int))  # back to the first set: same file, both listed
    assert len([f for f in ActivationStore(tmp_path / "s").manifest["files"] if f.startswith("labels/")]) == 2
    np.testing.assert_array_equal(first.labels, np.zeros(7))


def test_a_store_replaced_while_open_is_never_read_as_the_old_one(write_store, tmp_path):
    old, _, _ = write_store(tmp_path / "s", seed=0)
    old = ActivationStore(tmp_path / "s", verify=False)  # no hashing: the store id must catch it
    write_store(tmp_path / "s", seed=1, replace=True)
    with pytest.raises(ValueError, match="replaced since it was opened"):
        old.load(0, "mean")
    with pytest.raises(ValueError, match="replaced since"):
        old.offsets()


def test_a_finished_store_is_only_replaced_when_asked(write_store, tmp_path):
    write_store(tmp_path / "s")
    with pytest.raises(ValueError, match="not replaced unless asked"):
        write_store(tmp_path / "s", seed=1)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not an activation store"):
        write_store(tmp_path / "mine", replace=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    (tmp_path / "empty").mkdir()
    write_store(tmp_path / "empty")  # an empty directory is fine


def test_writing_without_the_lock_is_refused(tmp_path):
    from conftest import store_manifest

    with pytest.raises(RuntimeError, match="store_lock"):
        StoreWriter(tmp_path / "s", StoreContent(store_manifest(2, 4, [0], ["mean"]), [[0, 1]], [1, 1], ["a", "b"]))


def _tamper(root, edit):
    manifest = json.loads((root / "manifest.json").read_text())
    edit(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m.pop("layers"),
        lambda m: m.pop("model"),
        lambda m: m.update(n_prompts="7"),
        lambda m: m.update(hidden_size=-1),
        lambda m: m.update(layers=[0, 0]),
        lambda m: m.update(layers=[9]),
        lambda m: m.update(poolings=["../../x"]),
        lambda m: m.update(storage_dtype="int8"),
        lambda m: m.update(files=[]),
        lambda m: m["files"].update({"../outside": {"bytes": 1, "sha256": "0" * 64}}),
        lambda m: m["files"].update({"/etc/passwd": {"bytes": 1, "sha256": "0" * 64}}),
        lambda m: m["files"].pop("mean/layer_000.safetensors"),
        lambda m: m.update(labels="labels/none.safetensors"),
        lambda m: m.update(store_id=None),
        lambda m: m.update(prompt_hashes=[]),
    ],
)
def test_a_malformed_manifest_is_a_corrupted_store(write_store, tmp_path, edit):
    write_store(tmp_path / "s", labels=np.zeros(7, int))
    _tamper(tmp_path / "s", edit)
    with pytest.raises(ValueError, match="Corrupted store"):
        ActivationStore(tmp_path / "s")


def test_damaged_shard_headers_are_corrupted_stores(write_store, tmp_path):
    write_store(tmp_path / "s")
    shard = tmp_path / "s" / "mean" / "layer_002.safetensors"
    data = bytearray(shard.read_bytes())
    data[:8] = (1 << 62).to_bytes(8, "little")  # a header length that would exhaust memory if trusted
    shard.write_bytes(bytes(data))
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    manifest["files"]["mean/layer_002.safetensors"]["sha256"] = __import__("hashlib").sha256(data).hexdigest()
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="corrupted"):
        ActivationStore(tmp_path / "s").load(2, "mean")


def test_links_inside_a_store_are_never_followed(write_store, tmp_path):
    write_store(tmp_path / "s")
    elsewhere = tmp_path / "elsewhere"
    os.rename(tmp_path / "s" / "mean", elsewhere)
    os.symlink(elsewhere, tmp_path / "s" / "mean")
    with pytest.raises(ValueError, match="symbolic link"):
        ActivationStore(tmp_path / "s")
    os.unlink(tmp_path / "s" / "mean")
    os.rename(elsewhere, tmp_path / "s" / "mean")
    prompts = tmp_path / "s" / "prompts.json"
    os.rename(prompts, tmp_path / "prompts.json")
    os.symlink(tmp_path / "prompts.json", prompts)
    with pytest.raises(ValueError, match="symbolic link"):
        ActivationStore(tmp_path / "s")


def test_a_staging_directory_with_links_is_rebuilt_not_written_through(write_store, tmp_path):
    from conftest import store_manifest

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "layer_000.safetensors").write_bytes(b"precious")
    staging = tmp_path / ".s.partial"
    staging.mkdir()
    os.symlink(victim, staging / "mean")
    (staging / "plan.json").write_text("{}")
    store, data, _ = write_store(tmp_path / "s", poolings=("mean",))
    assert (victim / "layer_000.safetensors").read_bytes() == b"precious"
    np.testing.assert_array_equal(store.load(0, "mean"), data[(0, "mean")])
    del store_manifest


def test_leftovers_of_dead_writers_are_cleared_under_the_lock(write_store, tmp_path):
    root = tmp_path / "s"
    write_store(root)
    (tmp_path / ".s.old-99999").mkdir()
    (tmp_path / ".s.old-99999" / "x").write_text("old")
    (root / ".manifest.json.tmp-99999").write_text("half")
    (root / "labels").mkdir(exist_ok=True)
    (root / "labels" / ".abc.safetensors.tmp-4").write_text("half")
    with store_lock(root):
        pass
    assert sorted(os.listdir(tmp_path)) == [".s.lock", "s"]
    assert not [p for p in root.rglob("*") if ".tmp-" in p.name]
    ActivationStore(root).verify_all()


def test_a_store_staged_but_not_renamed_is_published_by_the_next_lock_holder(write_store, tmp_path):
    root = tmp_path / "s"
    _, data, _ = write_store(root)
    os.rename(root, tmp_path / ".s.partial")  # as if killed between finishing and the rename
    with store_lock(root):
        pass
    np.testing.assert_array_equal(ActivationStore(root).load(0, "mean"), data[(0, "mean")])


def test_merge_publishes_only_when_every_batch_is_on_disk(tmp_path):
    from conftest import store_manifest

    rng = np.random.default_rng(0)
    data = rng.normal(size=(6, 4)).astype(np.float32)
    content = StoreContent(store_manifest(6, 4, [1], ["mean"], prompts=list("abcdef")), [[0, 1], [2, 3], [4, 5]],
                           [1] * 6, list("abcdef"), ["x", "y"] * 3)
    writers = []
    for i in range(2):
        with store_lock(tmp_path / "s"):
            writers.append(StoreWriter(tmp_path / "s", content, shard=(i, 2)))
    assert writers[0].pending == [0, 2] and writers[1].pending == [1]
    for k in list(writers[0].pending):
        writers[0].write(k, {(1, "mean"): data[2 * k : 2 * k + 2]})
    with store_lock(tmp_path / "s"):
        assert writers[0].finish() is None  # shard 1 is not done
    with pytest.raises(ValueError, match="Shards of this extraction are writing"):
        merge(tmp_path / "s")  # shard 1's writer is alive
    writers[1]._close()  # as if it died
    with pytest.raises(ValueError, match=r"1 of 3 batches .* not on disk"):
        merge(tmp_path / "s")
    with store_lock(tmp_path / "s"):
        rerun = StoreWriter(tmp_path / "s", content, shard=(1, 2))
    assert rerun.pending == [1]
    rerun.write(1, {(1, "mean"): data[2:4]})
    rerun._close()
    store = merge(tmp_path / "s")
    np.testing.assert_array_equal(store.load(1, "mean"), data)
    assert store.label_names == ["x", "y"]
    assert merge(tmp_path / "s").manifest == store.manifest  # already published: served


def test_shards_must_agree_on_their_labels(tmp_path):
    from conftest import store_manifest

    content = StoreContent(store_manifest(2, 4, [1], ["mean"]), [[0], [1]], [1, 1], ["a", "b"])
    with store_lock(tmp_path / "s"):
        StoreWriter(tmp_path / "s", content._replace(labels=[0, 1]), shard=(0, 2))
        with pytest.raises(ValueError, match="other labels"):
            StoreWriter(tmp_path / "s", content._replace(labels=[1, 0]), shard=(1, 2))


@pytest.mark.parametrize("shard", [(2, 2), (-1, 2), (0, 0), "0/2", (True, 2), (0, 1, 2)])
def test_bad_shards(tmp_path, shard):
    from conftest import store_manifest

    with store_lock(tmp_path / "s"), pytest.raises(ValueError, match="shard must be"):
        StoreWriter(tmp_path / "s", StoreContent(store_manifest(2, 4, [1], ["mean"]), [[0, 1]], [1, 1], ["a", "b"]),
                    shard=shard)


def test_a_shard_that_finishes_after_another_published_gets_the_store(tmp_path):
    from conftest import store_manifest

    data = np.arange(24, dtype=np.float32).reshape(6, 4)
    content = StoreContent(store_manifest(6, 4, [1], ["mean"]), [[0, 1], [2, 3], [4, 5]], [1] * 6, list("abcdef"))
    with store_lock(tmp_path / "s"):
        writers = [StoreWriter(tmp_path / "s", content, shard=(i, 2)) for i in range(2)]
    for writer in writers:
        for k in list(writer.pending):
            writer.write(k, {(1, "mean"): data[2 * k : 2 * k + 2]})
    with store_lock(tmp_path / "s"):
        first = writers[1].finish()  # every batch is on disk: shard 1 publishes
        second = writers[0].finish()
    assert first.manifest == second.manifest
    np.testing.assert_array_equal(second.load(1, "mean"), data)


def test_damaged_side_files_in_staging_are_never_published(tmp_path):
    from conftest import store_manifest

    prompts = list("abcd")
    content = StoreContent(store_manifest(4, 2, [0], ["all"], prompts=prompts), [[0, 1], [2, 3]], [1, 2, 1, 1],
                           prompts, ["u", "v", "u", "v"])
    data = np.arange(10, dtype=np.float32).reshape(5, 2)
    with store_lock(tmp_path / "s"):
        writer = StoreWriter(tmp_path / "s", content)
        writer.write(0, {(0, "all"): data[:3]})
        writer.write(1, {(0, "all"): data[3:]})
        staging = tmp_path / ".s.partial"
        for name in ["prompts.json", "all/offsets.safetensors", *(str(p.relative_to(staging))
                                                                  for p in (staging / "labels").iterdir())]:
            damaged = bytearray((staging / name).read_bytes())
            damaged[-2] ^= 0x01
            (staging / name).write_bytes(bytes(damaged))
        store = writer.finish()
    assert store.prompts == prompts and store.offsets().tolist() == [0, 1, 3, 4, 5]
    assert [store.label_names[i] for i in store.labels] == ["u", "v", "u", "v"]
    store.verify_all()


def test_files_are_attached_only_to_the_store_they_were_made_for(write_store, tmp_path):
    from lmprobe_jax_store import attach_files
    from lmprobe_jax_store._safetensors import encode

    store, _, _ = write_store(tmp_path / "s", seed=0)
    extra = {"extra/ids.safetensors": encode({"ids": np.arange(3)}, {"store": store.manifest["store_id"]})}
    grown = attach_files(store, extra, {"note": "kept"})
    np.testing.assert_array_equal(grown.tensor("extra/ids.safetensors", "ids"), np.arange(3))
    assert grown.manifest["note"] == "kept" and store.manifest.get("note") is None
    write_store(tmp_path / "s", seed=1, replace=True)
    with pytest.raises(ValueError, match="replaced since it was opened"):
        attach_files(grown, extra)
