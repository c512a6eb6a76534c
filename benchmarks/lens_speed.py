"""Logit-lens metrics for all 30 layers of SmolLM2-135M: lmprobe-jax's one compiled program against the
per-layer loop the anchors run, and the memory of a 30 layers x 20k tokens x 49k vocabulary run.

speed: the exactness benchmark's texts (arithmetic problems + city statements), the first --tokens
token positions; contenders in one process, one core, interleaved rounds, medians:
* ours: lmprobe_jax.lens.logit_lens_metrics (all layers per compiled call, token and vocabulary chunks);
* the anchors' loop, as the depth notebook and Layer-Probing compute it: for each layer, torch float32
  final norm + lm_head on every position ((T, V) logits materialised), log-softmax, both KLs, entropy,
  cross-entropy, top-1 and top-5 against the final distribution.
memory: synthetic float32 streams for 30 layers x --memory-tokens tokens (memory-mapped .npy files, as
store shards are) with SmolLM2's real readout; logit_lens_metrics over the first --memory-run tokens of
them; prints the peak resident set (VmHWM) and the peak anonymous memory sampled after every chunk
(RssAnon: what the process allocates, not the file pages it maps), against the (L, T, V) float32 logits
the run would need if materialised.

Usage: python benchmarks/lens_speed.py [speed|memory] [--tokens 300] [--rounds 3] [--record]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time

os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})  # one core, before torch and jax start

import numpy as np
import torch

from lmprobe_jax.lens import logit_lens_metrics
from lmprobe_jax.lens._data import token_data
from lmprobe_jax.lens._engine import iter_token_stats
from lmprobe_jax.lens._logit_lens import final_distribution, logit_lens
from lmprobe_jax_extract import extract_token_streams, smollm2_directory
from lmprobe_jax_store import cache_root

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lens_anchors import torch_loop
from lens_exactness import texts_for
from measure import proc_status_bytes
from recording import record


def speed(args) -> str:
    torch.set_num_threads(1)
    model_dir = smollm2_directory()
    store = extract_token_streams(
        model_dir, texts_for(8, 20), cache_dir=cache_root() / "activations", progress=False
    )
    data = token_data(store)
    n = min(args.tokens, data.n_tokens)
    streams = np.stack([np.asarray(s[:n], np.float32) for s in data.streams])
    final = np.asarray(data.final_stream[:n], np.float32)
    next_ids = data.next_ids[:n]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    norm, weight = copy.deepcopy(model.model.norm), model.lm_head.weight.detach()
    t_streams, t_final, t_next = torch.as_tensor(streams), torch.as_tensor(final), torch.as_tensor(next_ids)

    def ours():
        return logit_lens_metrics(streams, final, next_ids, data.readout)

    def anchors():
        return torch_loop(t_streams, t_final, t_next, norm, weight)

    t0 = time.perf_counter()
    ours()
    cold = time.perf_counter() - t0
    times = {"ours": [], "anchors": []}
    for _ in range(args.rounds):
        for name, run in (("ours", ours), ("anchors", anchors)):
            t0 = time.perf_counter()
            result = run()
            times[name].append(time.perf_counter() - t0)
            if name == "ours":
                mine = np.stack(
                    [
                        result.kl_final_lens,
                        result.kl_lens_final,
                        result.ce_next_token,
                        result.entropy,
                        result.top1_agreement,
                        result.topk_overlap,
                    ],
                    1,
                )
            else:
                theirs = result
    med = {name: float(np.median(v)) for name, v in times.items()}
    load = os.getloadavg()[0]
    return (
        f"{n} tokens x 30 layers x 49152 vocabulary, one core, {args.rounds} interleaved rounds (load "
        f"average {load:.1f} on 2 cores):\n\n"
        "| contender | median s | all runs s |\n|---|---:|---:|\n"
        f"| lmprobe-jax logit_lens_metrics (all layers per compiled call) | {med['ours']:.2f} | "
        f"{', '.join(f'{t:.2f}' for t in times['ours'])} |\n"
        f"| per-layer torch loop, (T, V) logits per layer | {med['anchors']:.2f} | "
        f"{', '.join(f'{t:.2f}' for t in times['anchors'])} |\n\n"
        f"Ratio {med['anchors'] / med['ours']:.2f}x; ours cold (compile included) {cold:.2f} s; largest "
        f"difference between the two over the six metrics and 30 layers {np.abs(mine - theirs).max():.2e}."
    )


def memory(args) -> str:
    store = extract_token_streams(
        smollm2_directory(), texts_for(8, 20), cache_dir=cache_root() / "activations", progress=False
    )
    readout = token_data(store).readout
    L, T, D = 30, args.memory_tokens, 576
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(dir=args.scratch) as tmp:
        maps = []
        for layer in range(L):
            path = os.path.join(tmp, f"{layer}.npy")
            out = np.lib.format.open_memmap(path, "w+", np.float32, (T, D))
            for start in range(0, T, 4096):
                out[start : start + 4096] = rng.normal(size=(min(4096, T - start), D)) * (1 + layer / 10)
            out.flush()
            del out
            maps.append(np.load(path, mmap_mode="r"))
        next_ids = rng.integers(0, 49152, size=T)
        run = min(args.memory_run, T)
        base_anon = proc_status_bytes("RssAnon") / 2**20
        peak_anon = base_anon
        t0 = time.perf_counter()
        for _, _, _ in iter_token_stats(
            logit_lens(readout),
            final_distribution(readout),
            [m[:run] for m in maps],
            maps[-1][:run],
            next_ids[:run],
        ):
            peak_anon = max(peak_anon, proc_status_bytes("RssAnon") / 2**20)
        seconds = time.perf_counter() - t0
    full = L * T * 49152 * 4 / 2**30
    return (
        f"30 layers x {T} tokens (memory-mapped float32 shards, {L * T * D * 4 / 2**30:.2f} GB) x 49152 "
        f"vocabulary, SmolLM2's readout; engine defaults (token_chunk 128, vocab_chunk 2048); metrics over "
        f"the first {run} tokens ({seconds:.0f} s; every chunk runs the same program, so the working set "
        f"does not depend on how many chunks run). Anonymous memory (RssAnon) before the run "
        f"{base_anon:.0f} MB (Python, jax, torch, the readout), peak during it {peak_anon:.0f} MB; process "
        f"peak resident set (VmHWM, file pages included) {proc_status_bytes('VmHWM') / 2**20:.0f} MB. The (L, T, V) float32 "
        f"logits of the whole run would be {full:.0f} GB."
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("which", choices=["speed", "memory"])
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory-tokens", type=int, default=20000)
    parser.add_argument("--memory-run", type=int, default=1024)
    parser.add_argument("--scratch", default=None, help="directory for the synthetic shards (default: tmp)")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    table = speed(args) if args.which == "speed" else memory(args)
    print(table)
    if args.record:
        title = (
            "logit lens, all layers: one program vs the per-layer loop"
            if args.which == "speed"
            else ("logit lens memory, 30 layers x 20k tokens x 49k vocabulary")
        )
        record(title, "CPU, 1 core", table)


if __name__ == "__main__":
    main()
