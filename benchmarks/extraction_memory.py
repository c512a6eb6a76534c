"""Host memory of an extraction to disk: the extraction's own peak (above the loaded model) against the
size of the store it writes, for two code trees in one run (e.g. main before the streaming writer, and
this tree).

Each measurement runs in a fresh process: build a random GPT-2-shaped model from its config (seeded, so
every tree sees the same weights), save it, load it, tokenise, then ``extract_activations`` of every
layer with two poolings into a new directory. ``ru_maxrss`` is read before the extraction (model and
tokenizer loaded, one warm-up forward done) and sampled every 5 ms while it runs (a thread reading
``/proc/self/statm``); the largest rise is what the extraction itself held at its peak (file pages written
with ``pwrite`` are page cache, not the process's memory). Rounds alternate between the trees; medians
are reported.

    python benchmarks/extraction_memory.py --tree main=/tmp/lmprobe-main --tree this=. --prompts 6000

(``git archive <commit> | tar -x -C /tmp/lmprobe-main`` makes a tree of an older commit.)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent(
    """
    import json, os, sys, tempfile, threading, time
    sys.path.insert(0, sys.argv[1])
    os.environ["OMP_NUM_THREADS"] = "1"
    import numpy as np, torch
    torch.set_num_threads(1)
    from transformers import AutoModelForCausalLM, GPT2Config, PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers
    args = json.loads(sys.argv[2])
    vocab = {chr(97 + i): i for i in range(26)} | {"<pad>": 26}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>")
    config = GPT2Config(n_embd=args["hidden"], n_layer=args["layers"], n_head=8, vocab_size=27, n_positions=64)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        AutoModelForCausalLM.from_config(config).save_pretrained(tmp + "/model")
        tokenizer.save_pretrained(tmp + "/model")
        model = AutoModelForCausalLM.from_pretrained(tmp + "/model").eval()
        rng = np.random.default_rng(0)
        prompts = ["".join(rng.choice(list("abcdefghij"), size=int(n))) for n in rng.integers(4, 16, args["prompts"])]
        with torch.no_grad():
            model(**tokenizer(prompts[:args["batch"]], return_tensors="pt", padding=True))
        from lmprobe_jax_extract import extract_activations
        extract_activations((model, tokenizer), prompts[:4], layers=[0], progress=False)  # imports, warm
        page = os.sysconf("SC_PAGE_SIZE")
        def rss():
            with open("/proc/self/statm") as handle:
                return int(handle.read().split()[1]) * page
        before, peak, done = rss(), [0], threading.Event()
        def sample():
            while not done.wait(0.005):
                peak[0] = max(peak[0], rss())
        sampler = threading.Thread(target=sample)
        sampler.start()
        start = time.perf_counter()
        store = extract_activations((model, tokenizer), prompts, layers="all", pooling=["mean", "last_token"],
                                    out_dir=tmp + "/store", batch_size=args["batch"], progress=False)
        seconds = time.perf_counter() - start
        done.set()
        sampler.join()
        after = max(peak[0], rss())
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(tmp + "/store") for f in fs)
        print(json.dumps({"peak_above_model": after - before, "store_bytes": size, "seconds": seconds,
                          "rss_before": before}))
    """
)


def measure(tree: str, config: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, os.path.abspath(tree), json.dumps(config)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", action="append", required=True, help="name=path of a source tree")
    parser.add_argument("--prompts", type=int, default=6000)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    config = {"prompts": args.prompts, "hidden": args.hidden, "layers": args.layers, "batch": args.batch}
    trees = dict(item.split("=", 1) for item in args.tree)
    results: dict[str, list[dict]] = {name: [] for name in trees}
    for _ in range(args.rounds):
        for name, path in trees.items():
            results[name].append(measure(path, config))
    print(f"{args.prompts} prompts, GPT-2 shape {args.layers} layers x {args.hidden}, pooling mean + last_token, "
          f"batch {args.batch}, one thread; {args.rounds} rounds, medians; load {os.getloadavg()[0]:.1f}")
    for name, rows in results.items():
        peak = sorted(r["peak_above_model"] for r in rows)[len(rows) // 2]
        seconds = sorted(r["seconds"] for r in rows)[len(rows) // 2]
        size = rows[0]["store_bytes"]
        print(f"  {name:>8}: store {size / 1e6:8.1f} MB, extraction peak above the model {peak / 1e6:8.1f} MB "
              f"({peak / size:.2f}x the store), {seconds:.1f} s")


if __name__ == "__main__":
    main()
