"""What a model object's fingerprint costs now that it is never memoised.

The old fingerprint memo (main at 2658d26) skipped hashing when every parameter's storage pointer and
version counter were unchanged -- and so served stale activations after ``param.data.zero_()``, which
does not bump the parameter's counter. Now the parameters are hashed on every extraction. This times,
in one process pinned to one core, interleaved over rounds:

* new: ``hash_parameters`` (SHA-256 of each tensor's bytes in place, tied tensors once);
* old, first call: the old function with an empty memo (it copied each tensor with ``tobytes``);
* old, memo hit: its second call (what it cost when it was wrong);
* a weight directory's file hash, for comparison (the path form of the same model).

    python benchmarks/fingerprint.py [--old /tmp/lmprobe-main] [--rounds 3]

Default model: SmolLM2-135M-Instruct (``smollm2_directory()``, fp32, 538 MB of parameters).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def load_old(tree: str):
    spec = importlib.util.spec_from_file_location("old_source", Path(tree) / "lmprobe_jax_extract" / "_source.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_source"] = module  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", default=None, help="source tree of the old code (skipped if not given)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    from lmprobe_jax_extract import _source, smollm2_directory

    directory = smollm2_directory()
    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    n_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    old = load_old(args.old) if args.old else None
    times: dict[str, list[float]] = {}

    def timed(name, fn):
        start = time.perf_counter()
        fn()
        times.setdefault(name, []).append(time.perf_counter() - start)

    files = [p for p in directory.iterdir() if p.suffix == ".safetensors"] + [directory / "config.json"]
    for _ in range(args.rounds):
        timed("new: hash_parameters (every call)", lambda: _source.hash_parameters(model))
        if old is not None:
            old._PARAM_HASHES.clear()
            timed("old: first call (memo empty)", lambda: old.hash_parameters(model))
            timed("old: memo hit (stale after p.data edits)", lambda: old.hash_parameters(model))
        _source._FILE_HASHES.clear()
        timed("weight files of the same model (path form)", lambda: _source._hash_files(files))
    print(f"SmolLM2-135M, {n_bytes / 1e6:.0f} MB of parameters, one core, {args.rounds} rounds, medians; "
          f"load {os.getloadavg()[0]:.1f}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:<48} {median:7.3f} s  ({n_bytes / median / 1e9:.2f} GB/s)")


if __name__ == "__main__":
    main()
