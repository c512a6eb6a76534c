"""Fault injection with real processes: ``kill -9`` at chosen points of extraction, resume and publish,
and two processes racing on one store.

Workers are forks of the test process (torch and the model already loaded), so a case costs
milliseconds, not a fresh interpreter's 10-20 s; tests/test_extract.py kills a fresh interpreter too.
Kills are precise: the worker process arms a trap on one system call the store uses (``pwrite`` of a
batch's rows, ``write`` of a progress line, ``replace`` of an atomic write, ``rename`` of the publish,
``fsync``) and sends itself SIGKILL just before or just after its n-th call, with (call, n, side) drawn
at random from a fixed seed. Every case must end in the store a clean run produces, byte for byte, or
in a clear ValueError; never a store holding other data ("silent wrong") and never a finished store
lost or replaced without ``overwrite=True`` ("data lost"). Counts print at the end (run with ``-s``).
"""

import hashlib
import json
import os
import random
import signal
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from transformers import AutoModelForCausalLM, AutoTokenizer

from lmprobe_jax_extract import extract_activations
from lmprobe_jax_store import ActivationStore, store_lock

BASE = ["The city of Lyon is in France.", "Hi", "The quick brown fox jumps over the lazy dog.", "A b",
        "Lyon is in Japan.", "The dog", "fox fox fox fox", "Paris"]
PROMPTS_A = [f"{p} ({i})" for i, p in enumerate(BASE * 2)]  # 16 prompts: 8 batches of 2
PROMPTS_B = [f"{p} [{i}]" for i, p in enumerate(BASE * 2)]
KWARGS = {"layers": "all", "pooling": ["mean", "all"], "batch_size": 2, "progress": False}

def work(pair, prompts, kwargs, trap=None, go=None, sleep=None) -> dict:
    """What each worker process runs: arm the trap, wait for the start signal, extract, describe."""
    model, _ = pair
    if sleep:
        model.model.layers[0].register_forward_pre_hook(lambda *a: time.sleep(sleep))
    if trap:
        name, n, side = trap
        real, count = getattr(os, name), [0]

        def trapped(*args, **kw):
            count[0] += 1
            if count[0] == n and side == "before":
                os.kill(os.getpid(), signal.SIGKILL)
            out = real(*args, **kw)
            if count[0] == n and side == "after":
                os.kill(os.getpid(), signal.SIGKILL)
            return out

        setattr(os, name, trapped)
    while go is not None and not os.path.exists(go):
        time.sleep(0.002)
    try:
        store = extract_activations(pair, prompts, **kwargs)
    except ValueError as err:
        return {"ok": False, "error": "ValueError", "message": str(err)}
    result = {"ok": True, "published": store is not None}
    if store is not None:
        result.update(prompts=store.prompts, digests=digests(store),
                      labels=None if store.labels is None else store.labels.tolist())
    return result


def start(*args, **kwargs) -> tuple[int, int]:
    """Run :func:`work` in a new process: a fork of this one, so that it starts in milliseconds with torch
    and the model already loaded (a fresh interpreter takes 10-20 s to import them). The parent holds
    no lock when it forks, and the children run torch on one thread, as the parent does here."""
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # JAX, loaded by other tests, warns about fork; the child never uses it
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        try:
            result = work(*args, **kwargs)
        except BaseException as err:  # noqa: BLE001 - the child reports whatever it met
            result = {"ok": False, "error": type(err).__name__, "message": str(err)}
        os.write(write, json.dumps(result).encode())
        os._exit(0)
    os.close(write)
    return pid, read


def finish(child) -> dict | None:
    """The worker's result, or None when it was killed."""
    pid, read = child
    chunks = []
    while block := os.read(read, 1 << 16):
        chunks.append(block)
    os.close(read)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return None
    return json.loads(b"".join(chunks))


def digests(store) -> dict:
    return {f"{p}/{layer}": hashlib.sha256(np.asarray(store.load(layer, p)).tobytes()).hexdigest()
            for p in store.poolings for layer in store.layers}


def tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}




@pytest.fixture(scope="module")
def llama(tiny_models):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers, so that every process computes the same bits
    path = tiny_models["llama"]
    yield path, (AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path))
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def clean(llama, tmp_path_factory):
    """The byte-exact store a clean run of each prompt set produces."""
    _, pair = llama
    out = {}
    for name, prompts in (("A", PROMPTS_A), ("B", PROMPTS_B)):
        root = tmp_path_factory.mktemp("clean") / name
        extract_activations(pair, prompts, out_dir=root, **KWARGS)
        out[name] = tree(root)
    return out


TRAPS = [("pwrite", 1, 30), ("write", 1, 8), ("replace", 1, 6), ("rename", 1, 1), ("fsync", 1, 14)]


def test_kill_at_random_points_then_resume(outcomes, llama, clean, tmp_path):
    _, pair = llama
    rng = random.Random(20)
    name, killed = "kill -9 during extraction / resume, then resume", 0
    cases = [(name, rng.randint(low, high), rng.choice(["before", "after"])) for name, low, high in TRAPS]
    cases += [(rng.choice(TRAPS)[0], rng.randint(1, 6), rng.choice(["before", "after"])) for _ in range(19)]
    for i, trap in enumerate(cases):
        out = tmp_path / f"s{i}"
        kwargs = {**KWARGS, "out_dir": str(out)}
        result = finish(start(pair, PROMPTS_A, kwargs, trap=trap))
        killed += result is None
        if i % 3 == 2:  # the resume itself killed as well, at another point
            second = list(rng.choice(TRAPS))
            second[1], second[2] = rng.randint(1, 4), "after"
            killed += finish(start(pair, PROMPTS_A, kwargs, trap=second)) is None
        store = extract_activations(pair, PROMPTS_A, out_dir=out, **KWARGS)  # resume in this process
        ok = tree(out) == clean["A"] and digests(store) == digests(ActivationStore(out))
        leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(f".s{i}.") and p.name != f".s{i}.lock"]
        outcomes.add(name, silent_wrong=not ok, data_lost=bool(leftovers))  # leftovers: a copy never cleared
        assert ok, f"case {trap}: the resumed store differs from a clean run"
        assert not leftovers, f"case {trap}: left {leftovers}"
    assert killed >= len(cases) // 2  # the traps fired


def test_kill_while_replacing_a_finished_store_never_loses_it(outcomes, llama, clean, tmp_path):
    _, pair = llama
    for i, trap in enumerate([("rename", 1, "after"), ("rename", 2, "before"), ("replace", 3, "after")]):
        out = tmp_path / f"r{i}"
        extract_activations(pair, PROMPTS_B, out_dir=out, **KWARGS)  # a finished store of prompts B
        result = finish(start(pair, PROMPTS_A, {**KWARGS, "out_dir": str(out), "overwrite": True}, trap=trap))
        assert result is None  # killed
        # Whatever the kill point, once the next lock holder has tidied, the directory holds B (the
        # replacement had not landed) or A (it had, or it was staged whole and is now published).
        with store_lock(out):
            pass
        final = tree(out)
        whole = final in (clean["A"], clean["B"])
        outcomes.add("kill -9 while replacing a finished store", silent_wrong=not whole, data_lost=not whole)
        assert whole, trap
        prompts = PROMPTS_A if final == clean["A"] else PROMPTS_B
        assert extract_activations(pair, prompts, out_dir=out, **KWARGS).prompts == prompts


def test_two_processes_with_different_prompts_race_on_one_directory(outcomes, llama, clean, tmp_path):
    _, pair = llama
    name = "two processes, different prompts, one out_dir"
    for i, overwrite in enumerate([(False, False), (False, False), (True, True), (True, False)] * 2):
        out, go = tmp_path / f"race{i}", tmp_path / f"go{i}"
        procs = [
            start(pair, prompts, {**KWARGS, "out_dir": str(out), "overwrite": flag}, go=str(go), sleep=0.01 * (i % 3))
            for prompts, flag in ((PROMPTS_A, overwrite[0]), (PROMPTS_B, overwrite[1]))
        ]
        go.touch()  # both start extracting at once
        results = [finish(proc) for proc in procs]
        final = tree(out)
        whole = final in (clean["A"], clean["B"])
        for prompts, result in zip((PROMPTS_A, PROMPTS_B), results, strict=True):
            if result["ok"]:
                good = result["prompts"] == prompts
                outcomes.add(name, silent_wrong=not good, data_lost=not whole)
                assert good, "a process got a store of the other's prompts"
            else:
                clear = result["error"] == "ValueError" and (
                    "different request" in result["message"] or "replaced since" in result["message"]
                )
                outcomes.add(name, clear=clear, data_lost=not whole)
                assert clear, result
        assert whole, "the directory holds neither store whole"
        if not any(overwrite):  # the first finished store stands; the other process was refused
            assert sum(r["ok"] for r in results) == 1


def test_racing_label_sets_and_shards(outcomes, llama, clean, tmp_path):
    _, pair = llama
    go = tmp_path / "go"
    labels = {"A": [i % 2 for i in range(16)], "B": [(i // 2) % 2 for i in range(16)]}
    procs = [
        start(pair, PROMPTS_A, {**KWARGS, "cache_dir": str(tmp_path / "cache"), "labels": y}, go=str(go))
        for y in labels.values()
    ]
    shards = [
        start(pair, PROMPTS_B, {**KWARGS, "out_dir": str(tmp_path / "sharded"), "shard": [i, 2]}, go=str(go),
              sleep=0.01)
        for i in range(2)
    ]
    go.touch()
    for y, proc in zip(labels.values(), procs, strict=True):
        result = finish(proc)
        good = result["ok"] and result["labels"] == y and result["prompts"] == PROMPTS_A
        outcomes.add("two label sets racing on one cache entry", silent_wrong=not good)
        assert good, result
    published = [finish(proc) for proc in shards]
    assert all(r["ok"] for r in published) and sum(r["published"] for r in published) >= 1
    final = tree(tmp_path / "sharded")
    outcomes.add("two shards of one store, side by side", silent_wrong=final != clean["B"])
    assert final == clean["B"], "two shards did not make the store one process makes"
