"""Tuned lens on SmolLM2-135M: lmprobe-jax (every layer in one vmapped step) against the tuned-lens 0.2.0
package itself (its TunedLens, its Optimizer ingredient, its training loop's per-layer backward), on the
same cached activations, the same minibatches and the same token budget; held-out KL per layer and wall
time, one core each.

Data: --n-train built-in arithmetic problems to train on, --n-eval others (another seed) held out;
streams of the embeddings and all 30 blocks (extract_token_streams). tuned-lens's translator i reads
``hidden_states[i]`` (i = 0: embeddings; i >= 1: block i - 1's output) and the last block needs none, so
both train translators for the embeddings and blocks 0..28 (ours also trains block 29's, which starts
and stays at KL 0). Both use tuned-lens's recipe: SGD Nesterov, lr 1.0 x (1 - 0.9), weight decay 1e-3,
clip 1.0 (tuned-lens: the norm of all translators together; ours: per layer), linear decay over
--steps; --batch-tokens positions per step, the same rows each step for both. tuned-lens runs in its
own virtualenv (--venv; torch 2.13.0, tuned-lens 0.2.0, torchdata 0.7.1 installed with --no-deps because
its scripts import torchdata.dataloader2, gone since torchdata 0.10), as its loop does: bfloat16
autocast, one backward per layer. Both translators are then evaluated by the same exact metric engine
on the held-out tokens. Writes docs/lens-smollm2.png (logit lens, ours, tuned-lens).

Usage: python benchmarks/lens_tuned_vs_package.py [--steps 40] [--batch-tokens 64] [--record]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, before jax starts

import numpy as np

from lmprobe_jax.datasets import arithmetic_problems
from lmprobe_jax.lens import Translator, fit_tuned_lens, logit_lens_metrics, token_data, tuned_lens_metrics
from lmprobe_jax.lens._analyze import plot_lenses
from lmprobe_jax.lens._training import minibatches
from lmprobe_jax_extract import extract_token_streams, smollm2_directory
from lmprobe_jax_store import EMBEDDINGS, cache_root

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from recording import record

HERE = Path(__file__).resolve().parent

# Runs in tuned-lens's virtualenv: its lens, its optimizer ingredient, its loop's inner step.
PACKAGE_SCRIPT = r"""
import json, os, sys, time
os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
import numpy as np, torch as th
th.set_num_threads(1)
from transformers import AutoModelForCausalLM
from tuned_lens import TunedLens
import tuned_lens.scripts.ingredients as ing

work = sys.argv[1]
cfg = json.load(open(f"{work}/config.json"))
model = AutoModelForCausalLM.from_pretrained(cfg["model"], dtype=th.float32)
lens = TunedLens.from_model(model)
streams = np.load(f"{work}/streams.npy", mmap_mode="r")  # (31, T, D): embeddings, blocks 0..29
batches = np.load(f"{work}/batches.npy")
opt_cfg = ing.Optimizer()
params = [p for p in lens.parameters() if p.requires_grad]
opt = opt_cfg.create_optim(params)
scheduler = opt_cfg.create_scheduler(opt, cfg["steps"])
start = time.perf_counter()
for rows in batches:
    h_all = th.from_numpy(np.ascontiguousarray(streams[:, rows]))
    with th.no_grad():
        labels = lens.unembed.forward(h_all[-1]).float().log_softmax(dim=-1)  # the model's logits
    for i in range(len(lens)):  # train_loop.py: "We do this sequentially to save VRAM"
        with th.autocast("cpu", dtype=th.bfloat16):
            logits = lens(h_all[i], idx=i)
            loss = th.sum(labels.exp() * (labels - logits.log_softmax(-1)), dim=-1).mean()
        loss.backward()
    th.nn.utils.clip_grad_norm_(lens.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=False)
    scheduler.step()
seconds = time.perf_counter() - start
np.save(f"{work}/weight.npy", np.stack([t.weight.detach().float().numpy() for t in lens]))
np.save(f"{work}/bias.npy", np.stack([t.bias.detach().float().numpy() for t in lens]))
json.dump({"seconds": seconds}, open(f"{work}/result.json", "w"))
"""


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n-train", type=int, default=60)
    parser.add_argument("--n-eval", type=int, default=8)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-tokens", type=int, default=64)
    parser.add_argument("--venv", default="/work/venvs/tuned-lens")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    model_dir = smollm2_directory()
    layers = [EMBEDDINGS, *range(30)]
    stores = {
        name: extract_token_streams(
            model_dir,
            arithmetic_problems(n, seed=seed),
            layers=layers,
            cache_dir=cache_root() / "activations",
            progress=False,
        )
        for name, n, seed in (("train", args.n_train, 0), ("eval", args.n_eval, 1))
    }
    train, held = token_data(stores["train"], layers), token_data(stores["eval"], layers)
    rows = minibatches(train.n_tokens, args.batch_tokens, 0)
    batches = np.array([next(rows) for _ in range(args.steps)])

    with tempfile.TemporaryDirectory() as work:
        np.save(f"{work}/streams.npy", np.stack([np.asarray(s, np.float32) for s in train.streams]))
        np.save(f"{work}/batches.npy", batches)
        Path(f"{work}/config.json").write_text(json.dumps({"model": str(model_dir), "steps": args.steps}))
        Path(f"{work}/run.py").write_text(PACKAGE_SCRIPT)
        done = subprocess.run(
            [f"{args.venv}/bin/python", f"{work}/run.py", work], check=False, capture_output=True, text=True
        )
        if done.returncode:
            raise SystemExit(f"tuned-lens run failed:\n{done.stderr[-3000:]}")
        theirs = Translator(np.load(f"{work}/weight.npy"), np.load(f"{work}/bias.npy"))
        their_seconds = json.loads(Path(f"{work}/result.json").read_text())["seconds"]

    t0 = time.perf_counter()
    fit = fit_tuned_lens(
        train.streams, train.final_stream, train.readout, max_steps=args.steps, batch_tokens=args.batch_tokens
    )
    our_seconds = time.perf_counter() - t0
    # tuned-lens has no translator for the last block: evaluate both on the embeddings and blocks 0..28
    streams = held.streams[:-1]
    ev = (held.final_stream, held.next_ids, held.readout)
    logit = logit_lens_metrics(streams, *ev)
    ours = tuned_lens_metrics(Translator(fit.params.weight[:-1], fit.params.bias[:-1]), streams, *ev)
    package = tuned_lens_metrics(theirs, streams, *ev)

    names = [str(layer) for layer in layers[:-1]]
    lines = [
        (
            f"Train: {args.n_train} arithmetic problems ({train.n_tokens} tokens); held out: {args.n_eval} others "
            f"({held.n_tokens} tokens). {args.steps} steps x {args.batch_tokens} tokens, the same rows for both; one "
            f"core each; load average {os.getloadavg()[0]:.1f} on 2 cores. Wall time of the training steps: "
            f"lmprobe-jax {our_seconds:.0f} s (31 translators, compile included), tuned-lens 0.2.0 "
            f"{their_seconds:.0f} s (30 translators), ratio {their_seconds / our_seconds:.2f}x."
        ),
        "",
        "| layer | held-out KL(final‖lens): logit lens | lmprobe-jax tuned | tuned-lens 0.2.0 tuned | top-1 agreement: logit / ours / tuned-lens |",
        "|---|---:|---:|---:|---:|",
    ]
    for i, name in enumerate(names):
        lines.append(
            f"| {name} | {logit.kl_final_lens[i]:.3f} | {ours.kl_final_lens[i]:.3f} | "
            f"{package.kl_final_lens[i]:.3f} | {logit.top1_agreement[i]:.3f} / {ours.top1_agreement[i]:.3f} / "
            f"{package.top1_agreement[i]:.3f} |"
        )
    below = int(np.sum(ours.kl_final_lens < logit.kl_final_lens))
    monotone = int(np.sum(np.diff(ours.kl_final_lens) > 0))
    lines += [
        "",
        (
            f"Ours below the logit lens at {below} of {len(names)} layers; increases from one layer to the next "
            f"{monotone} times (mean KL: logit {logit.kl_final_lens.mean():.3f}, ours {ours.kl_final_lens.mean():.3f}, "
            f"tuned-lens {package.kl_final_lens.mean():.3f}). Our final minibatch loss per layer "
            f"{np.round(fit.loss[-1][:-1], 2).tolist()}, final gradient norms "
            f"{np.round(fit.grad_norm[-1][:-1], 3).tolist()}."
        ),
    ]
    table = "\n".join(lines)
    print(table)
    (HERE.parent / "docs").mkdir(exist_ok=True)
    plot_lenses(
        names,
        {"logit lens": logit, "tuned lens (lmprobe-jax)": ours, "tuned lens (tuned-lens 0.2.0)": package},
        logit.final_ce_next_token,
        HERE.parent / "docs" / "lens-smollm2.png",
        f"SmolLM2-135M, {held.n_tokens} held-out tokens of arithmetic word problems "
        f"(tuned lenses: {args.steps} steps x {args.batch_tokens} tokens)",
    )
    if args.record:
        record("tuned lens on SmolLM2-135M: lmprobe-jax vs the tuned-lens package", "CPU, 1 core each", table)


if __name__ == "__main__":
    main()
