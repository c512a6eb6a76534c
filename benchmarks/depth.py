"""The depth analyses on SmolLM2-135M: exactness against an independent reference, the two backends
against each other, and time against the depth notebook's approach, one thread.

    python benchmarks/depth.py [--n-texts 3] [--ig-steps 16] [--ig-batch-size 16] [--dtype float64]
                               [--skip-timing | --timing-only | --ig-rounds N | --attribution-only]
                               [--record]

* exactness: every metric of ``lmprobe_jax_extract`` (hooks and nnsight) against
  ``depth_reference.py`` (plain forwards with hooks, one per intervention, float64 metrics), every layer:
  the largest error on the metric's scale, ``max |ours - ref| / max |ref|``, and the largest relative
  error over the entries of at least 1% of that scale (see :func:`compare`).
* time: the whole analysis (contributions; skip effects, all tokens and later tokens; erasure;
  integrated gradients) by ``lmprobe_jax_extract`` against ``depth_notebook.py`` (the notebook's code:
  one nnsight trace per text, per skipped layer and split, per erased stream and position, per layer and
  block of gradient steps), same texts, same splits (every split point), same steps, one thread and one
  pinned core each, in turn.
* ``--ig-rounds N``: integrated gradients alone, N interleaved rounds (the order rotates each round) of
  ours, ours with the LM head reading the strided ``logits_to_keep`` slice (as before the contiguous copy
  of ``_intervene._contiguous_head_input``), and the notebook's code; medians of CPU and wall seconds.
* ``--dtype float64``: the model and every contender in float64, to tell rounding from error: a gap that
  is rounding falls by float64 eps / float32 eps (~5e-9) from the float32 run's.
* ``--attribution-only``: exactness of erasure and integrated gradients alone, hooks against the
  reference (the two metrics whose float32 gaps on small entries exceed 1e-4 relative).

Texts: benchmarks/depth_texts.txt (prose, 20-27 tokens each); erasure and gradients on the notebook's
"5 + 7 + 5 + 3 + 1 + 7 = " -> "28", erasure's baseline the same texts.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
QUESTION, ANSWER = "5 + 7 + 5 + 3 + 1 + 7 = ", "28"


def compare(got, want) -> tuple[float, float]:
    """(max |got - want| / max |want|, max relative error over the entries with |want| >= 1e-2 max|want|).

    The first is the error on the metric's own scale; entries far below it (a probability change of 1e-3
    next to one of 0.9) are differences of nearly equal float32 numbers and carry float32 noise that the
    one-forward reference has as well.
    """
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = np.abs(want).max()
    if scale == 0:
        return float(np.abs(got).max()), 0.0
    big = np.abs(want) >= 1e-2 * scale
    return float(np.abs(got - want).max() / scale), float((np.abs(got - want)[big] / np.abs(want)[big]).max())


class Stages:
    """Wall-clock and CPU (this process) seconds of consecutive stages: on a shared machine the CPU time is
    what a stage cost, the wall time also counts other processes' turns on the core."""

    def __init__(self):
        self.times: dict[str, tuple[float, float]] = {}
        self._last = (time.perf_counter(), time.process_time())

    def mark(self, name: str) -> None:
        now = (time.perf_counter(), time.process_time())
        self.times[name] = (now[0] - self._last[0], now[1] - self._last[1])
        self._last = now


def ours(model, texts, args, backend):
    import lmprobe_jax_extract as extract

    common = {"backend": backend, "progress": False}
    clock = Stages()
    if not args.attribution_only:
        depth = extract.depth_analysis(model, texts, n_splits=None, **common)
        clock.mark("contributions + skip")
    erased = extract.residual_erasure(model, QUESTION, ANSWER, texts, **common)
    clock.mark("erasure")
    ig = extract.integrated_gradients(
        model, QUESTION, ANSWER, n_steps=args.ig_steps, batch_size=args.ig_batch_size, **common
    )
    clock.mark("integrated gradients")
    attribution = {"erasure": erased.effect, "integrated gradients": ig.attributions}
    if args.attribution_only:
        return attribution, clock.times
    c, s, later = depth.contributions, depth.skip, depth.skip_later_tokens
    return {
        **{
            name: getattr(c, name)
            for name in ("rel_attn", "rel_mlp", "rel_layer", "cos_attn", "cos_mlp", "cos_layer")
        },
        "skip future max": s.future_max,
        "skip future mean": s.future_mean,
        "skip output max": s.output_max,
        "skip output mean": s.output_mean,
        "later-tokens future max": later.future_max,
        "later-tokens future mean": later.future_mean,
        "later-tokens output max": later.output_max,
        "later-tokens output mean": later.output_mean,
        **attribution,
    }, clock.times


def reference_metrics(model, tok, texts, args):
    import depth_reference as ref

    out = {}
    if not args.attribution_only:
        out.update(depth_reference_metrics(model, tok, texts))
    out["erasure"] = ref.erasure(model, tok, QUESTION, ANSWER, texts)
    out["integrated gradients"] = ref.integrated_gradients(
        model, tok, QUESTION, ANSWER, args.ig_steps, args.ig_batch_size
    )
    return out


def depth_reference_metrics(model, tok, texts):
    import depth_reference as ref

    splits = [list(range(8, len(tok(t)["input_ids"]) - 4, 8)) for t in texts]
    c = ref.contributions(model, tok, texts, "self_attn", "mlp", False)
    s = ref.skip_effects(model, tok, texts)
    later = ref.skip_effects(model, tok, texts, splits=splits)
    names = ("max", "mean")
    out = {**c}
    for prefix, values in (("skip", s), ("later-tokens", later)):
        for i, stat in enumerate(names):
            out[f"{prefix} future {stat}"] = values[i]
            out[f"{prefix} output {stat}"] = values[2 + i]
    return out


def notebook(model, tok, texts, args):
    """The notebook's approach through nnsight; returns its metrics and times."""
    import depth_notebook as nb
    from nnsight import TransformersModel

    llm = TransformersModel(model, task="text-generation", tokenizer=tok)
    ids = [tok(t)["input_ids"] for t in texts]
    clock = Stages()
    norms = nb.analyze_norms(llm, ids)
    skip, later, out, out_later = [], [], [], []
    for row in ids:
        layers, output = nb.test_effect(llm, row, [None])
        skip.append(layers)
        out.append(output)
        points = list(range(8, len(row) - 4, 8))
        if points:
            layers, output = nb.test_effect(llm, row, points)
            later.append(layers)
            out_later.append(output)
    clock.mark("contributions + skip")
    q = tok(QUESTION)["input_ids"]
    a = tok(ANSWER, add_special_tokens=False)["input_ids"]
    erasure = nb.measure_token_skip(llm, q + a, len(a), ids)
    clock.mark("erasure")
    ig = nb.get_igrads(llm, q + a, len(a), args.ig_steps, args.ig_batch_size)
    clock.mark("integrated gradients")
    names = ("rel_attn", "rel_mlp", "rel_layer", "cos_attn", "cos_mlp", "cos_layer")
    metrics = dict(zip(names, norms, strict=True))
    metrics.update(
        {
            "skip future max": np.max(skip, 0),
            "skip output max": np.max(out, 0),
            "later-tokens future max": np.max(later, 0),
            "later-tokens output max": np.max(out_later, 0),
            "erasure": erasure,
            "integrated gradients": ig,
        }
    )
    return metrics, clock.times


def ig_rounds(model, tok, args) -> str:
    """Integrated gradients alone: ``args.ig_rounds`` interleaved rounds of three contenders (see the
    module docstring), the order rotated each round; a table of medians and the ratios."""
    from contextlib import nullcontext

    import depth_notebook as nb
    from nnsight import TransformersModel

    import lmprobe_jax_extract as extract
    from lmprobe_jax_extract import _intervene

    llm = TransformersModel(model, task="text-generation", tokenizer=tok)
    q = tok(QUESTION)["input_ids"]
    a = tok(ANSWER, add_special_tokens=False)["input_ids"]
    steps = {"n_steps": args.ig_steps, "batch_size": args.ig_batch_size, "progress": False}

    def ours():
        return extract.integrated_gradients((model, tok), QUESTION, ANSWER, **steps).attributions

    def ours_strided_head():
        contiguous = _intervene._contiguous_head_input
        _intervene._contiguous_head_input = lambda model, keep: nullcontext()
        try:
            return ours()
        finally:
            _intervene._contiguous_head_input = contiguous

    def notebook():
        return nb.get_igrads(llm, q + a, len(a), args.ig_steps, args.ig_batch_size)

    contenders = {
        "lmprobe-jax (hooks)": ours,
        "lmprobe-jax (hooks), strided head input": ours_strided_head,
        "notebook (nnsight, one trace each)": notebook,
    }
    names = list(contenders)
    times = {name: [] for name in names}
    results = {}
    for round_ in range(args.ig_rounds):
        for name in names[round_ % 3 :] + names[: round_ % 3]:
            wall, cpu = time.perf_counter(), time.process_time()
            results[name] = contenders[name]()
            times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
            print(name, f"round {round_}:", times[name][-1], f"load {os.getloadavg()[0]:.1f}", file=sys.stderr)
    median = {name: np.median(np.asarray(t), axis=0) for name, t in times.items()}
    ours_name = names[0]
    header = (
        f"SmolLM2-135M-Instruct, integrated gradients on {QUESTION!r} -> {ANSWER!r}, {args.ig_steps} steps in "
        f"batches of {args.ig_batch_size}, {args.dtype}; {args.ig_rounds} interleaved rounds; load "
        f"{os.getloadavg()[0]:.1f} at the end"
    )
    columns = "| contender (one thread, one core) | median wall s | median CPU s | CPU s per round | max err / scale |"
    lines = [header, "", columns, "|---|---:|---:|---|---:|"]
    for name in names:
        err = compare(results[name], results[ours_name])[0]
        per_round = ", ".join(f"{c:.1f}" for _, c in times[name])
        lines.append(f"| {name} | {median[name][0]:.1f} | {median[name][1]:.1f} | {per_round} | {err:.1e} |")
    for name in names[1:]:
        lines.append(
            f"\n{name} / {ours_name}: CPU {median[name][1] / median[ours_name][1]:.2f}x, "
            f"wall {median[name][0] / median[ours_name][0]:.2f}x"
        )
    return "\n".join(lines)


def exactness_table(results: dict, want: dict) -> list[str]:
    notebook = "notebook" in results
    nnsight = "nnsight" in results
    lines = [
        "| metric (every layer): max err / scale, max rel err (entries >= 1% of scale) | hooks vs reference |"
        + (" nnsight vs hooks |" if nnsight else "")
        + (" notebook vs reference |" if notebook else ""),
        "|---|---|" + ("---|" if nnsight else "") + ("---|" if notebook else ""),
    ]
    for name, expected in want.items():
        cells = [compare(results["hooks"][name], expected)]
        if nnsight:
            cells.append(compare(results["nnsight"][name], results["hooks"][name]))
        if notebook:
            cells.append(
                compare(results["notebook"][name], expected) if name in results["notebook"] else None
            )
        lines.append(
            f"| {name} | "
            + " | ".join("-" if cell is None else f"{cell[0]:.1e} / {cell[1]:.1e}" for cell in cells)
            + " |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n-texts", type=int, default=3)
    parser.add_argument("--ig-steps", type=int, default=16)
    parser.add_argument("--ig-batch-size", type=int, default=16)
    parser.add_argument("--skip-timing", action="store_true", help="exactness only (no notebook run)")
    parser.add_argument(
        "--timing-only", action="store_true", help="ours (hooks) and the notebook, no reference"
    )
    parser.add_argument(
        "--ig-rounds", type=int, default=0, help="time integrated gradients alone, this many rounds"
    )
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument(
        "--attribution-only",
        action="store_true",
        help="exactness of erasure and integrated gradients alone (hooks against the reference)",
    )
    parser.add_argument("--record", action="store_true", help="append the tables to RESULTS.md")
    args = parser.parse_args()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import lmprobe_jax_extract as extract

    torch.set_num_threads(1)
    path = extract.smollm2_directory()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval().to(getattr(torch, args.dtype))
    tok = AutoTokenizer.from_pretrained(path)
    if args.ig_rounds:
        table = ig_rounds(model, tok, args)
        print(table)
        if args.record:
            from recording import record

            record("integrated gradients on SmolLM2", f"{platform.machine()}, one pinned core, torch 1 thread", table)
        return
    texts = [line.strip() for line in (HERE / "depth_texts.txt").read_text().splitlines() if line.strip()]
    texts = texts[: args.n_texts]

    results, times = {}, {}
    results["hooks"], times["lmprobe-jax (hooks)"] = ours((model, tok), texts, args, "local")
    print("lmprobe-jax (hooks):", times["lmprobe-jax (hooks)"], file=sys.stderr)
    if not args.timing_only and not args.attribution_only:
        results["nnsight"], times["lmprobe-jax (nnsight)"] = ours((model, tok), texts, args, "nnsight")
        print("lmprobe-jax (nnsight):", times["lmprobe-jax (nnsight)"], file=sys.stderr)
    if not args.skip_timing and not args.attribution_only:
        results["notebook"], times["notebook (nnsight, one trace each)"] = notebook(model, tok, texts, args)
        print("notebook:", times["notebook (nnsight, one trace each)"], file=sys.stderr)
    lines = []
    if not args.timing_only:
        clock = Stages()
        want = reference_metrics(model, tok, texts, args)
        clock.mark("all")
        times["reference (hooks, one forward each)"] = clock.times
        lines += exactness_table(results, want)
    parts = ("contributions + skip", "erasure", "integrated gradients")
    lines += [
        "",
        "| contender (one thread, one core): wall s (CPU s) | " + " | ".join(parts) + " | total |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, stages in times.items():
        cells = [stages.get(part) for part in parts]
        total = tuple(map(sum, zip(*stages.values(), strict=True)))
        lines.append(
            f"| {name} | "
            + " | ".join("" if c is None else f"{c[0]:.1f} ({c[1]:.1f})" for c in cells)
            + f" | {total[0]:.1f} ({total[1]:.1f}) |"
        )
    if "notebook" in results:
        for kind, k in (("wall", 0), ("CPU", 1)):
            ratios = [
                times["notebook (nnsight, one trace each)"][part][k] / times["lmprobe-jax (hooks)"][part][k]
                for part in parts
            ]
            total = sum(t[k] for t in times["notebook (nnsight, one trace each)"].values()) / sum(
                t[k] for t in times["lmprobe-jax (hooks)"].values()
            )
            lines.append(
                f"\nnotebook / lmprobe-jax (hooks), {kind} time: "
                + ", ".join(f"{part} {r:.2f}x" for part, r in zip(parts, ratios, strict=True))
                + f"; whole analysis {total:.2f}x"
            )
    lengths = [len(tok(t)["input_ids"]) for t in texts]
    header = (
        f"SmolLM2-135M-Instruct, {len(texts)} texts ({sum(lengths)} tokens, {min(lengths)}-{max(lengths)} each), "
        f"every split point, erasure + gradients on {QUESTION!r} -> {ANSWER!r}, {args.ig_steps} steps in "
        f"batches of {args.ig_batch_size}, {args.dtype}; load {os.getloadavg()[0]:.1f}"
    )
    table = header + "\n\n" + "\n".join(lines)
    print(table)
    if args.record:
        from recording import record

        record("depth analyses on SmolLM2", f"{platform.machine()}, one pinned core, torch 1 thread", table)


if __name__ == "__main__":
    main()
