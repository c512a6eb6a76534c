"""Lenses on an accelerator at SmolLM2's shapes: every layer's logit-lens metrics over 20,000 tokens and
tuned-lens training, lmprobe-jax against the anchors' per-layer torch loops on the same card.

Data (synthetic, so it needs no model download; the metrics' cost depends only on the shapes): 30
layers x --tokens positions x 576 features, memory-mapped float32 files on the host as a store's shards
are; layer l = the final stream + (1 - l / 29) x 3 x noise, so the lens converges with depth; a random
RMSNorm + (49152, 576) unembedding with logits of standard deviation ~3.

1. Logit-lens metrics (KL both ways, cross-entropy, entropy, top-1 agreement, top-5 overlap) for all 30
   layers: lmprobe-jax's ``logit_lens_metrics`` (one compiled program per token chunk, vocabulary
   streamed) at a few chunk sizes, against ``lens_anchors.torch_loop`` (one layer at a time, dense (T, V)
   logits, float32 on the card). Cold (first call, compile included) and warm medians; peak device memory
   of each (JAX's allocator statistics, torch.cuda.max_memory_allocated); host peak resident set; largest
   difference between the two on every metric.
2. Tuned-lens training, every layer's translator: ``fit_tuned_lens`` (one vmapped step for all layers)
   against ``lens_anchors.tuned_lens_steps`` (tuned-lens's loop: one backward per layer) in float32 and
   under bfloat16 autocast (tuned-lens's setting on a GPU); median seconds per step after the first two.

Usage: python benchmarks/gpu_lens.py [--tokens 20000] [--steps 30] [--small] [--record]
(--small: 4 layers x 512 tokens x 64 features x 1000 vocabulary, to check the script on a CPU.)
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # torch shares the card in this process

import argparse
import sys
import tempfile
import time

import jax
import numpy as np
import torch

from lmprobe_jax.lens import fit_tuned_lens, logit_lens_metrics, readout_from_arrays

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lens_anchors import torch_loop, tuned_lens_steps
from measure import proc_status_bytes
from recording import record

METRICS = ("kl_final_lens", "kl_lens_final", "ce_next_token", "entropy", "top1_agreement", "topk_overlap")


def _jax_peak_mb() -> float:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use", float("nan")) / 2**20


def make_data(folder: str, layers: int, tokens: int, hidden: int, vocab: int, seed: int = 0):
    """Memory-mapped ``(T, D)`` streams per layer, the final stream, next ids, readout arrays."""
    rng = np.random.default_rng(seed)
    final = rng.normal(size=(tokens, hidden)).astype(np.float32)
    maps = []
    for layer in range(layers):
        path = os.path.join(folder, f"{layer}.npy")
        out = np.lib.format.open_memmap(path, "w+", np.float32, (tokens, hidden))
        scale = 3.0 * (1 - layer / (layers - 1))
        for start in range(0, tokens, 4096):
            stop = min(start + 4096, tokens)
            out[start:stop] = final[start:stop] + scale * rng.normal(size=(stop - start, hidden))
        out.flush()
        del out
        maps.append(np.load(path, mmap_mode="r"))
    next_ids = rng.integers(0, vocab, size=tokens)
    next_ids[rng.random(tokens) < 0.01] = -1  # text ends
    arrays = {
        "norm.weight": (1 + 0.1 * rng.normal(size=hidden)).astype(np.float32),
        "unembed.weight": (3 * rng.normal(size=(vocab, hidden)) / np.sqrt(hidden)).astype(np.float32),
    }
    meta = {"norm": "rms", "eps": 1e-5, "logit_scale": 1.0, "logit_softcap": None}
    return maps, np.asarray(maps[-1]), next_ids, meta, arrays


def rms_norm(weight: torch.Tensor, eps: float):
    def norm(h: torch.Tensor) -> torch.Tensor:
        h = h.float()
        return weight * h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)

    return norm


def timed(fn, repeats: int) -> tuple[float, list[float], object]:
    """(cold s, warm s list, last result)."""
    t0 = time.perf_counter()
    result = fn()
    cold = time.perf_counter() - t0
    warm = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        warm.append(time.perf_counter() - t0)
    return cold, warm, result


def metrics_section(maps, final, next_ids, readout, t_norm, t_weight, device, repeats) -> str:
    rows, results = [], {}
    for token_chunk, vocab_chunk in ((128, 2048), (2048, 8192)):  # the defaults, and sized for a GPU

        def ours(token_chunk=token_chunk, vocab_chunk=vocab_chunk):
            m = logit_lens_metrics(
                maps, final, next_ids, readout, token_chunk=token_chunk, vocab_chunk=vocab_chunk
            )
            return np.stack([np.asarray(getattr(m, name)) for name in METRICS], 1)

        cold, warm, result = timed(ours, repeats)
        results[(token_chunk, vocab_chunk)] = result
        rows.append(
            f"| lmprobe-jax logit_lens_metrics, token_chunk {token_chunk}, vocab_chunk {vocab_chunk} | "
            f"{cold:.2f} | {np.median(warm):.2f} | {_jax_peak_mb():.0f} (JAX peak so far) |"
        )

    t_final = torch.as_tensor(final, device=device)
    t_next = torch.as_tensor(next_ids, device=device)

    def anchors():
        layers = (torch.as_tensor(np.asarray(m), device=device) for m in maps)
        out = torch_loop(layers, t_final, t_next, t_norm, t_weight)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    cold, warm, theirs = timed(anchors, repeats)
    torch_peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
    rows.append(
        f"| per-layer torch loop, dense (T, V) logits per layer | {cold:.2f} | {np.median(warm):.2f} | "
        f"{torch_peak:.0f} |"
    )
    gaps = np.abs(results[(128, 2048)] - theirs).max(0)
    return (
        "| contender | cold s | warm median s | peak device MB |\n|---|---:|---:|---:|\n"
        + "\n".join(rows)
        + "\n\nLargest difference, ours (128/2048) against the torch loop, per metric: "
        + ", ".join(f"{name} {gap:.1e}" for name, gap in zip(METRICS, gaps, strict=True))
        + f". Host peak resident set of the process so far {proc_status_bytes('VmHWM') / 2**20:.0f} MB."
    )


def training_section(maps, final, readout, t_norm, t_weight, device, steps, batch_tokens) -> str:
    tokens = len(final)
    rng = np.random.default_rng(1)
    batches = [rng.choice(tokens, batch_tokens, replace=False) for _ in range(steps)]
    lines = []

    stamps: list[float] = []

    def callback(step, loss):
        stamps.append(time.perf_counter())
        return False

    t0 = time.perf_counter()
    fit_tuned_lens(maps, final, readout, max_steps=steps, batch_tokens=batch_tokens, callback=callback)
    total = time.perf_counter() - t0
    per_step = float(np.median(np.diff(stamps)[1:])) if len(stamps) > 3 else float("nan")
    lines.append(
        f"| lmprobe-jax fit_tuned_lens (all layers, one vmapped step), float32 | {per_step * 1e3:.1f} | "
        f"{total:.1f} | {stamps[0] - t0:.1f} |"
    )

    t_streams = torch.as_tensor(np.stack([np.asarray(m) for m in maps]), device=device)
    t_final = torch.as_tensor(final, device=device)
    for autocast in (None, torch.bfloat16):
        stamps.clear()

        def on_step(step):
            if device.type == "cuda":
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())

        t0 = time.perf_counter()
        tuned_lens_steps(
            t_streams, t_final, t_norm, t_weight, batches, max_steps=steps, autocast=autocast, on_step=on_step
        )
        total = time.perf_counter() - t0
        per_step = float(np.median(np.diff(stamps)[1:]))
        name = "float32" if autocast is None else "bfloat16 autocast"
        lines.append(
            f"| tuned-lens's loop in torch (one backward per layer), {name} | {per_step * 1e3:.1f} | "
            f"{total:.1f} | {stamps[0] - t0:.1f} |"
        )
    return (
        f"{len(maps)} translators, {batch_tokens} tokens per step, {steps} steps:\n\n"
        "| contender | median ms per step | total s | first step s |\n|---|---:|---:|---:|\n"
        + "\n".join(lines)
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=20000)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-tokens", type=int, nargs="+", default=[256, 4096])
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    layers, hidden, vocab = (4, 64, 1000) if args.small else (30, 576, 49152)
    tokens = 512 if args.small else args.tokens
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    machine = f"{jax.devices()[0].device_kind}, jax {jax.__version__}, torch {torch.__version__}"
    print(machine, flush=True)
    with tempfile.TemporaryDirectory() as folder:
        maps, final, next_ids, meta, arrays = make_data(folder, layers, tokens, hidden, vocab)
        readout = readout_from_arrays(meta, arrays)
        t_norm = rms_norm(torch.as_tensor(arrays["norm.weight"], device=device), meta["eps"])
        t_weight = torch.as_tensor(arrays["unembed.weight"], device=device)
        head = f"{layers} layers x {tokens} tokens x {hidden} features x {vocab} vocabulary, synthetic."
        metrics = metrics_section(maps, final, next_ids, readout, t_norm, t_weight, device, args.repeats)
        print(head + "\n\n" + metrics, flush=True)
        training = [
            training_section(maps, final, readout, t_norm, t_weight, device, args.steps, batch)
            for batch in args.batch_tokens
        ]
        for table in training:
            print(table, flush=True)
    if args.record:
        record("lenses on an accelerator", machine, head + "\n\n" + metrics + "\n\n" + "\n\n".join(training))


if __name__ == "__main__":
    main()
