"""Where one fit's time goes, op by op: a profiler trace of a warm call joined with XLA's optimised programs.

Runs one workload of the regime panel (``benchmarks/regime_data.py``) in this process with the persistent
caches off and XLA dumping its optimised HLO, times a warm call, then traces one more. Each op of the trace
(a fusion, a dot, a loop) is printed with its total time, calls, time a call, and, for fusions, the bytes of
its operands and result and the rate that implies: a fusion far below the memory's few GB/s that is not a
product (``dot`` in its HLO) is a fusion XLA's CPU backend runs badly. That is how the fused reductions of
``benchmarks/fused_reductions.py`` were found (a softmax fit's Nystrom scales at ~1 GB/s, 10% of its time).
The profiler adds tens of microseconds to each op, so ops of under ~0.1 ms a call read slow whatever they do.

Usage: taskset -c 1 python benchmarks/op_profile.py REGIME {c1,path,cv} [--top 25] [--keep-dump]
(``--keep-dump`` leaves the HLO under ``/tmp`` to look an op up by name.)
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import shutil
import sys
import tempfile
import time

BYTES = {"f64": 8, "f32": 4, "s32": 4, "u32": 4, "pred": 1, "s8": 1, "u8": 1}


def shape_bytes(text: str) -> int:
    """Bytes of every array type in ``text`` (an HLO signature)."""
    total = 0
    for dtype, dims in re.findall(r"\b(f64|f32|s32|u32|pred|s8|u8)\[([\d,]*)\]", text):
        count = 1
        for dim in filter(None, dims.split(",")):
            count *= int(dim)
        total += count * BYTES[dtype]
    return total


def fusion_bytes(dump: str) -> dict[str, int]:
    """``{instruction name: operand and result bytes}`` for every fusion in the dumped optimised programs."""
    sizes: dict[str, int] = {}
    for path in glob.glob(os.path.join(dump, "*cpu_after_optimizations.txt")):
        with open(path) as handle:
            text = handle.read()
        computations = {m.group(1): shape_bytes(m.group(2)) + shape_bytes(m.group(3))
                        for m in re.finditer(r"^%(\S+) \((.*?)\) -> (.*?) \{", text, re.MULTILINE)}
        for m in re.finditer(r"^\s*(?:ROOT )?%(\S+) = .*? calls=%([\w.\-]+)", text, re.MULTILINE):
            if m.group(2) in computations:
                sizes.setdefault(m.group(1), computations[m.group(2)])
    return sizes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("regime")
    ap.add_argument("workload", choices=["c1", "path", "cv"])
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--keep-dump", action="store_true")
    args = ap.parse_args()

    dump = tempfile.mkdtemp(prefix="op_profile_hlo_")
    trace_dir = tempfile.mkdtemp(prefix="op_profile_trace_")
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={dump} --xla_dump_hlo_as_text"
    os.environ["LMPROBE_JAX_COMPILATION_CACHE"] = "0"  # compile here, so the dump holds every program
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import jax
    import numpy as np
    from regime_data import regime

    import lmprobe_jax.functional as F

    X, y, _ = regime(args.regime, 1.0)
    codes = np.unique(y, return_inverse=True)[1]
    grid = np.logspace(-3, 2, 8)
    if args.regime.startswith("softmax-"):
        if args.workload != "c1":
            ap.error("softmax regimes have the c1 workload only")
        run = lambda: F.fit_multinomial(X[0], codes, 1.0)
    else:
        run = {"c1": lambda: F.fit_logistic(X, codes, 1.0), "path": lambda: F.fit_logistic(X, codes, grid),
               "cv": lambda: F.cross_validate_logistic(X, codes, grid, folds=5)}[args.workload]
    jax.block_until_ready(run())
    start = time.perf_counter()
    jax.block_until_ready(run())
    print(f"{args.regime} {args.workload}: warm call {time.perf_counter() - start:.3f} s")
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
        jax.block_until_ready(run())

    with gzip.open(glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)[0]) as handle:
        events = json.load(handle)["traceEvents"]
    totals: dict[str, list] = collections.defaultdict(lambda: [0, 0.0])
    for event in events:
        if event.get("ph") == "X" and not event["name"].startswith(("$", "Thunk")):
            totals[event["name"]][0] += 1
            totals[event["name"]][1] += event.get("dur", 0) / 1e3
    sizes = fusion_bytes(dump)
    print(f"{'total ms':>9} {'calls':>6} {'ms a call':>9} {'MB':>7} {'GB/s':>6}  op")
    for name, (calls, ms) in sorted(totals.items(), key=lambda item: -item[1][1])[:args.top]:
        mb = sizes.get(name, 0) / 1e6
        rate = f"{mb / (ms / calls):6.1f}" if mb else "     -"
        print(f"{ms:9.1f} {calls:6d} {ms / calls:9.3f} {mb:7.2f} {rate}  {name}")
    shutil.rmtree(trace_dir, ignore_errors=True)
    if args.keep_dump:
        print(f"optimised HLO: {dump}")
    else:
        shutil.rmtree(dump, ignore_errors=True)


if __name__ == "__main__":
    main()
