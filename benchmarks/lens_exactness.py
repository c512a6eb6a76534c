"""Logit lens on SmolLM2-135M: lmprobe-jax's streamed all-layer metrics against a direct torch computation.

Texts: --n-problems arithmetic word problems (lmprobe_jax.datasets.arithmetic_problems) and --n-cities
true city statements (lmprobe_jax.datasets.cities). Ours: extract_token_streams (every token of every
text, all 30 layers, the readout) -> lmprobe_jax.lens.logit_lens_metrics (float32, token and vocabulary
chunks that divide neither T nor V). Reference: per text, a plain Hugging Face forward with
output_hidden_states=True; layer i < 29 is hidden_states[i + 1] (hidden_states[30] is *after* the final
norm, so layer 29 is taken by a hook on the last block); the model's final norm and lm_head applied in
float64 to every layer's stream, the final distribution likewise from the last block's stream; every
metric in float64 torch, averaged over all positions (cross-entropy over positions with a next token).
Prints both tables, the largest difference per metric and the targets (1e-3 nats, 1e-3 on agreement).

Usage: python benchmarks/lens_exactness.py [--n-problems 8] [--n-cities 20] [--record]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time

os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, before torch and jax start

import numpy as np
import torch

from lmprobe_jax.datasets import arithmetic_problems, cities
from lmprobe_jax.lens import logit_lens_metrics
from lmprobe_jax.lens._data import token_data
from lmprobe_jax_extract import extract_token_streams, smollm2_directory
from lmprobe_jax_store import cache_root

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from recording import record

NAMES = ("kl_final_lens", "kl_lens_final", "ce_next_token", "entropy", "top1_agreement", "topk_overlap")


def texts_for(n_problems: int, n_cities: int) -> list[str]:
    statements = cities(n_cities).prompts[::2]  # the true statement of each city
    return arithmetic_problems(n_problems) + statements


def torch_reference(model_dir, texts, k=5) -> dict:
    """Per-layer float64 means of the six metrics, computed from a plain HF forward (see module doc)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    norm = copy.deepcopy(model.model.norm).double()
    weight = model.lm_head.weight.detach().double()
    n_layers = len(model.model.layers)
    sums = {name: torch.zeros(n_layers, dtype=torch.float64) for name in NAMES}
    count = count_next = 0
    for text in texts:
        ids = tok(text, return_tensors="pt")["input_ids"]
        captured = {}
        handle = model.model.layers[-1].register_forward_hook(lambda m, a, out, c=captured: c.update(h=out))
        with torch.no_grad():
            hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
        handle.remove()
        streams = [hidden[i + 1][0] for i in range(n_layers - 1)] + [captured["h"][0]]
        with torch.no_grad():
            final = torch.log_softmax(norm(streams[-1].double()) @ weight.T, -1)
            p = final.exp()
            final_top = final.topk(k, -1).indices
            nxt = ids[0, 1:]
            for layer, h in enumerate(streams):
                lens = torch.log_softmax(norm(h.double()) @ weight.T, -1)
                q = lens.exp()
                sums["kl_final_lens"][layer] += (p * (final - lens)).sum()
                sums["kl_lens_final"][layer] += (q * (lens - final)).sum()
                sums["entropy"][layer] += -(q * lens).sum()
                sums["ce_next_token"][layer] += -lens[:-1].gather(1, nxt[:, None]).sum()
                sums["top1_agreement"][layer] += (lens.argmax(-1) == final.argmax(-1)).sum()
                top = lens.topk(k, -1).indices
                sums["topk_overlap"][layer] += (top[:, :, None] == final_top[:, None, :]).sum() / k
        count += ids.shape[1]
        count_next += ids.shape[1] - 1
    return {
        name: (value / (count_next if name == "ce_next_token" else count)).numpy()
        for name, value in sums.items()
    } | {"n_tokens": count}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n-problems", type=int, default=8)
    parser.add_argument("--n-cities", type=int, default=20)
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model_dir = smollm2_directory()
    texts = texts_for(args.n_problems, args.n_cities)

    t0 = time.perf_counter()
    store = extract_token_streams(model_dir, texts, cache_dir=cache_root() / "activations", progress=False)
    t_extract = time.perf_counter() - t0
    data = token_data(store)
    t0 = time.perf_counter()
    ours = logit_lens_metrics(
        data.streams, data.final_stream, data.next_ids, data.readout, token_chunk=100, vocab_chunk=5000
    )
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = torch_reference(model_dir, texts)
    t_ref = time.perf_counter() - t0
    assert ref["n_tokens"] == ours.n_tokens

    lines = [
        (
            f"{len(texts)} texts ({args.n_problems} arithmetic problems, {args.n_cities} city statements), "
            f"{ours.n_tokens} tokens, 30 layers, vocabulary 49152; ours: token chunks of 100, vocabulary chunks "
            f"of 5000 (neither divides); extraction {t_extract:.1f} s, our metrics {t_ours:.1f} s (compile "
            f"included), float64 torch reference {t_ref:.1f} s; one core."
        ),
        "",
        "| layer | KL(final‖lens) ours / torch | KL(lens‖final) | CE next token | entropy | top-1 agreement | top-5 overlap |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for layer in range(len(ours.kl_final_lens)):
        cells = [f"{getattr(ours, n)[layer]:.4f} / {ref[n][layer]:.4f}" for n in NAMES]
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    worst = {n: float(np.abs(getattr(ours, n) - ref[n]).max()) for n in NAMES}
    lines += [
        "",
        "Largest difference over layers: "
        + ", ".join(f"{n} {worst[n]:.2e}" for n in NAMES)
        + " (targets: 1e-3 nats, 1e-3 on agreement / overlap).",
    ]
    table = "\n".join(lines)
    print(table)
    ok = all(value < 1e-3 for value in worst.values())
    print("PASS" if ok else "FAIL")
    if args.record:
        record("logit lens exactness on SmolLM2-135M (vs float64 torch)", "CPU, 1 core", table)


if __name__ == "__main__":
    main()
