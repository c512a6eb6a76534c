"""Run lmprobe 0.10.3's own test suite against lmprobe-jax: how much of a drop-in is it?

The suite is fetched from the package index at run time (``pip download --no-deps --no-binary :all:
lmprobe==0.10.3`` into a temporary directory; nothing of it is kept in this repository). Its imports are
mapped, ``lmprobe`` -> ``lmprobe_jax`` (``import``/``from`` lines and the dotted module paths in
``mock.patch`` strings), and nothing else in the test files changes. Its tests load the hub model
``stas/tiny-random-llama-2``; this script builds an offline stand-in of the same shape (Llama, 2 blocks,
hidden 16, 4 heads, vocabulary 32000, random weights, a byte-level BPE tokenizer trained offline) into a
temporary Hugging Face cache under that name, and runs with ``HF_HUB_OFFLINE=1``.

One infrastructure change: the suite's ``conftest.py`` has an autouse fixture that resets private globals
of lmprobe's cache module (``_backend``, ``_shard_manifests``, ``_shard_indices``) between tests. It is kept
for modules that have those names and skipped for ones that do not (lmprobe-jax reads
``LMPROBE_CACHE_DIR`` on every call, so there is no global to reset).

``--reference`` runs the unmapped suite against lmprobe itself (installed with ``pip install --no-deps
--target DIR lmprobe==0.10.3``, passed as ``--lmprobe-path DIR``), in the same environment and with the
same stand-in model, so both counts come from the same machine and packages.

Usage:
  python benchmarks/lmprobe_compat.py [--reference --lmprobe-path DIR] [--files test_probe.py ...]
      [--json out.json] [--record] [--keep DIR] [--against REF/report.xml]

``--against`` a ``--reference`` run's ``report.xml`` (kept with ``--keep``) adds a second table: per test
file, the tests lmprobe itself passes and how many of those pass here (the figures RESULTS.md quotes).

Prints passed / failed / errors / skipped per test file and in total, and for the Probe-API subset:
the tests whose function, or a fixture they use, calls ``Probe`` / ``LinearProbe`` or uses
``LayerSweepResult`` / ``sweep_layers`` (found by a small pytest plugin the script writes beside the
tests).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

VERSION = "0.10.3"
HUB_ID = "stas/tiny-random-llama-2"
SNAPSHOT = "0" * 40

API = "Probe-API tests"

_BARE_IMPORT = re.compile(r"^(\s*)import\s+lmprobe\s*$", re.MULTILINE)
_IMPORT = re.compile(r"^(\s*)(from|import)\s+lmprobe\b", re.MULTILINE)
_PATCH_PATH = re.compile(r"""(['"])lmprobe\.""")

_CONFTEST_RESET = '''

@pytest.fixture(autouse=True)
def _reset_cache_backend():
    """(lmprobe_compat) reset the cache module's private globals where the module has them."""
    import lmprobe.cache as cache_mod

    names = ("_backend", "_shard_manifests", "_shard_indices")
    if not all(hasattr(cache_mod, name) for name in names):
        yield
        return
    old = cache_mod._backend
    cache_mod._backend = None
    old_manifests = copy.deepcopy(cache_mod._shard_manifests)
    old_indices = copy.deepcopy(cache_mod._shard_indices)
    cache_mod._shard_manifests.clear()
    cache_mod._shard_indices.clear()
    yield
    cache_mod._backend = old
    cache_mod._shard_manifests.update(old_manifests)
    cache_mod._shard_indices.update(old_indices)
'''


# A pytest plugin (written beside the tests) that marks each test whose code -- its function or any
# fixture it uses -- calls Probe / LinearProbe or uses LayerSweepResult / sweep_layers: the Probe-API tests.
_PLUGIN = r"""
import inspect, re

_API = re.compile(r"\b(Probe|LinearProbe)\(|LayerSweepResult|sweep_layers")


def _sources(item):
    yield getattr(item, "obj", None)
    for defs in item._fixtureinfo.name2fixturedefs.values():
        for d in defs:
            yield d.func


def pytest_collection_modifyitems(items):
    for item in items:
        text = ""
        for obj in _sources(item):
            try:
                text += inspect.getsource(obj)
            except (OSError, TypeError):
                pass
        if _API.search(text):
            item.user_properties.append(("probe_api", "1"))
"""


def fetch_suite(workdir: Path) -> Path:
    """Download and unpack the sdist; returns its ``tests/`` directory."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "-q",
            f"lmprobe=={VERSION}",
            "-d",
            str(workdir),
        ],
        check=True,
    )
    (archive,) = workdir.glob(f"lmprobe-{VERSION}.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(workdir, filter="data")
    return workdir / f"lmprobe-{VERSION}" / "tests"


def prepare_tests(tests: Path, *, mapped: bool) -> None:
    """Swap the conftest's reset fixture for the tolerant one; map the imports when ``mapped``."""
    (tests / "compat_probe_api.py").write_text(_PLUGIN)
    conftest = tests / "conftest.py"
    text = conftest.read_text()
    start = text.index("@pytest.fixture(autouse=True)")
    conftest.write_text(text[:start].rstrip() + "\n" + _CONFTEST_RESET)
    if not mapped:
        return
    for path in tests.glob("*.py"):
        source = path.read_text()
        source = _BARE_IMPORT.sub(lambda m: f"{m[1]}import lmprobe_jax as lmprobe", source)  # keeps the name
        source = _IMPORT.sub(lambda m: f"{m[1]}{m[2]} lmprobe_jax", source)
        source = _PATCH_PATH.sub(lambda m: f"{m[1]}lmprobe_jax.", source)
        path.write_text(source)


def build_model(hf_home: Path) -> None:
    """An offline stand-in for ``stas/tiny-random-llama-2`` in a Hugging Face cache at ``hf_home``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = ["The dog barked loudly at the cat that sat on the mat in the park."] * 20
    tok.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=16,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    repo = hf_home / "hub" / ("models--" + HUB_ID.replace("/", "--"))
    snapshot = repo / "snapshots" / SNAPSHOT
    model.save_pretrained(snapshot)
    tokenizer.save_pretrained(snapshot)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(SNAPSHOT)


def run_pytest(tests: Path, env: dict, files: list[str], report: Path) -> None:
    targets = [str(tests / name) for name in files] if files else [str(tests)]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            *targets,
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "compat_probe_api",
            "--continue-on-collection-errors",
            f"--junitxml={report}",
        ],
        cwd=tests.parent,
        env={**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(tests), env.get("PYTHONPATH")]))},
        check=False,
    )


def tally(report: Path) -> dict[str, Counter]:
    """Per test file: passed / failed / error / skipped counts from a JUnit XML report; the Probe-API
    tests are also counted under the key ``"Probe-API tests"``."""
    per_file: dict[str, Counter] = {API: Counter()}
    for case in ET.parse(report).getroot().iter("testcase"):
        parts = (case.get("classname") or case.get("name", "")).split(".")  # collection errors: no classname
        name = next((part for part in parts if part.startswith("test_")), "?")
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
        per_file.setdefault(f"{name}.py", Counter())[outcome] += 1
        if any(p.get("name") == "probe_api" for p in case.iter("property")):
            per_file[API][outcome] += 1
    return per_file


def outcomes(report: Path) -> dict[tuple[str, str], tuple[str, bool]]:
    """Per test ``(file, id)``: its outcome and whether it is a Probe-API test."""
    out = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        classname = case.get("classname") or case.get("name", "")
        name = next((part for part in classname.split(".") if part.startswith("test_")), "?")
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = child.tag
        api = any(p.get("name") == "probe_api" for p in case.iter("property"))
        out[(f"{name}.py", f"{classname}::{case.get('name')}")] = (outcome, api)
    return out


def against(report: Path, reference: Path) -> dict[str, Counter]:
    """Per test file, of the tests lmprobe itself passes (``reference``, a ``--reference`` run's report):
    how many (``lmprobe``) and how many of them pass here (``ours``); Probe-API ones also under ``API``."""
    ours, ref = outcomes(report), outcomes(reference)
    ran = {name for name, _ in ours}  # with --files, only those files
    per_file: dict[str, Counter] = {API: Counter()}
    for (name, test), (outcome, api) in ref.items():
        if outcome != "passed" or name not in ran:
            continue
        passed = ours.get((name, test), ("missing", False))[0] == "passed"
        for key in (name, API) if api else (name,):
            per_file.setdefault(key, Counter()).update({"lmprobe": 1, "ours": int(passed)})
    return per_file


def against_table(per_file: dict[str, Counter]) -> str:
    rows = ["| file | lmprobe passes | lmprobe-jax passes of those |", "|---|---:|---:|"]
    for name in [*sorted(set(per_file) - {API}), API]:
        c = per_file[name]
        rows.append(f"| {name} | {c['lmprobe']} | {c['ours']} |")
    return "\n".join(rows)


def table(per_file: dict[str, Counter]) -> str:
    rows = ["| file | passed | failed | errors | skipped |", "|---|---:|---:|---:|---:|"]
    total = Counter()
    for name in sorted(set(per_file) - {API}):
        c = per_file[name]
        rows.append(f"| {name} | {c['passed']} | {c['failed']} | {c['error']} | {c['skipped']} |")
        total.update(c)
    for label, c in (
        (API + " (calling Probe / LayerSweepResult / sweep_layers)", per_file[API]),
        ("all", total),
    ):
        rows.append(f"| **{label}** | {c['passed']} | {c['failed']} | {c['error']} | {c['skipped']} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reference", action="store_true", help="run against lmprobe itself (unmapped)")
    parser.add_argument("--lmprobe-path", help="a pip --target directory holding lmprobe (for --reference)")
    parser.add_argument("--files", nargs="*", default=[], help="test files to run (default: all)")
    parser.add_argument("--json", help="write the per-file counts to this JSON file")
    parser.add_argument("--record", action="store_true", help="append the table to benchmarks/RESULTS.md")
    parser.add_argument("--keep", help="work in this directory and keep it (default: a temporary one)")
    parser.add_argument(
        "--against",
        help="a --reference run's report.xml: also count, per file, the tests lmprobe passes that pass here",
    )
    args = parser.parse_args()

    workdir = Path(args.keep or tempfile.mkdtemp(prefix="lmprobe_compat."))
    workdir.mkdir(parents=True, exist_ok=True)
    tests = fetch_suite(workdir)
    prepare_tests(tests, mapped=not args.reference)
    hf_home = workdir / "hf"
    build_model(hf_home)
    env = {
        **os.environ,
        "HF_HOME": str(hf_home),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "LMPROBE_CACHE_DIR": str(workdir / "lmprobe_cache"),
        "LMPROBE_JAX_CACHE": str(workdir / "jax_cache"),
        "TOKENIZERS_PARALLELISM": "false",
    }
    paths = [p for p in (args.lmprobe_path, os.environ.get("PYTHONPATH")) if p]
    if args.reference and not args.lmprobe_path:
        parser.error("--reference needs --lmprobe-path (pip install --no-deps --target DIR lmprobe==0.10.3)")
    env["PYTHONPATH"] = os.pathsep.join(paths)
    report = workdir / "report.xml"
    run_pytest(tests, env, args.files, report)
    per_file = tally(report)
    text = table(per_file)
    if args.against:
        text += "\n\n" + against_table(against(report, Path(args.against)))
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps({k: dict(v) for k, v in per_file.items()}, indent=1))
    if args.record:
        from recording import record

        who = "lmprobe 0.10.3 itself" if args.reference else "lmprobe-jax (imports mapped)"
        record(f"lmprobe {VERSION}'s test suite against {who}", "2-core CPU, shared", text)


if __name__ == "__main__":
    main()
