"""The lmprobe-jax command line on a tiny offline model: extract -> info -> sweep -> select, and errors."""

import json

import numpy as np
import pytest

pytest.importorskip("transformers")

from lmprobe_jax import cli

POSITIVE = [
    f"The city of {c} is in France."
    for c in ["Lyon", "Paris", "Nice", "Lille", "Tours", "Metz", "Brest", "Caen", "Dijon", "Arles"]
]
NEGATIVE = [p.replace("France", "Japan, by the quick dog") for p in POSITIVE]


@pytest.fixture
def prompts_csv(tmp_path):
    path = tmp_path / "prompts.csv"
    lines = ["text,label"] + [f'"{p}",1' for p in POSITIVE] + [f'"{p}",0' for p in NEGATIVE]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LMPROBE_JAX_CACHE", str(tmp_path / "cache"))
    # JAX's compilation-cache setting is process-wide: leave the rest of the suite's JAX untouched.
    monkeypatch.setattr(cli, "default_compilation_cache", lambda *args, **kwargs: None)


def test_extract_info_sweep_select(tiny_models, prompts_csv, tmp_path, capsys):
    store = tmp_path / "store"
    args = [
        "extract",
        "--model",
        str(tiny_models["gpt2"]),
        "--prompts",
        str(prompts_csv),
        "--label-column",
        "label",
        "--layers",
        "1-3",
        "--pooling",
        "mean,last_token",
        "--out",
        str(store),
        "--quiet",
    ]
    assert cli.main(args) == 0
    assert cli.main(["info", "--store", str(store)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["layers"] == [1, 2, 3] and info["n_prompts"] == 20 and info["labels"] is True
    out = tmp_path / "report"
    assert (
        cli.main(
            [
                "sweep",
                "--store",
                str(store),
                "--pooling",
                "mean",
                "--out",
                str(out),
                "--folds",
                "4",
                "--grid",
                "0.1,1",
                "--layers",
                "2,3",
                "--quiet",
            ]
        )
        == 0
    )
    report = json.loads((out / "report.json").read_text())
    assert [row["layer"] for row in report["layers"]] == [2, 3] and report["best_layer"] in (2, 3)
    assert (out / "report.csv").read_text().startswith("layer,") and (
        out / "layers.png"
    ).stat().st_size > 1000
    capsys.readouterr()
    assert (
        cli.main(["select", "--store", str(store), "--pooling", "mean", "--method", "fast_auto", "--k", "1"])
        == 0
    )
    chosen = json.loads(capsys.readouterr().out)
    assert len(chosen["layers"]) == 1 and chosen["layers"][0] in (1, 2, 3)
    assert cli.main(["select", "--store", str(store), "--pooling", "mean", "--alpha", "0.001"]) == 0
    assert set(json.loads(capsys.readouterr().out)["layers"]) <= {1, 2, 3}


def test_prompt_files(tmp_path):
    (tmp_path / "p.txt").write_text("one\n\ntwo\n")
    assert cli.read_prompts(tmp_path / "p.txt", "text", None) == (["one", "two"], None, None)
    (tmp_path / "p.jsonl").write_text('{"prompt": "a", "y": 0.5}\n{"prompt": "b", "y": 1.5}\n')
    prompts, labels, metadata = cli.read_prompts(tmp_path / "p.jsonl", "prompt", "y")
    assert prompts == ["a", "b"] and np.allclose(labels, [0.5, 1.5]) and metadata is None
    (tmp_path / "q.csv").write_text('text,label,city\n"a, b",yes,Lyon\nc,no,Paris\n')
    prompts, labels, metadata = cli.read_prompts(tmp_path / "q.csv", "text", None)  # 'label' found by itself
    assert prompts == ["a, b", "c"] and labels == ["yes", "no"]
    assert metadata == [{"city": "Lyon"}, {"city": "Paris"}]
    (tmp_path / "r.csv").write_text("text,label\na,1\nb,0\nc,2\n")
    labels = cli.read_prompts(tmp_path / "r.csv", "text", None).labels
    assert labels.dtype == np.int64 and labels.tolist() == [1, 0, 2]
    (tmp_path / "s.csv").write_text("text,label\na,1\nb,\n")
    with pytest.raises(cli.CLIError, match="row 2 .* no 'label'"):
        cli.read_prompts(tmp_path / "s.csv", "text", None)
    with pytest.raises(cli.CLIError, match="no 'y' column"):
        cli.read_prompts(tmp_path / "q.csv", "text", "y")
    with pytest.raises(cli.CLIError, match="no 'text' column"):
        cli.read_prompts(tmp_path / "p.jsonl", "text", None)
    with pytest.raises(cli.CLIError, match="does not exist"):
        cli.read_prompts(tmp_path / "missing.csv", "text", None)


def test_bad_arguments_exit_non_zero(tiny_models, prompts_csv, tmp_path, capsys):
    assert cli.main(["info", "--store", str(tmp_path)]) == 1
    assert "not a complete activation store" in capsys.readouterr().err
    bad_layers = [
        "extract",
        "--model",
        str(tiny_models["gpt2"]),
        "--prompts",
        str(prompts_csv),
        "--layers",
        "sweep:9-12",
        "--out",
        str(tmp_path / "s"),
        "--quiet",
    ]
    assert cli.main(bad_layers) == 1
    assert "out of range" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["sweep", "--store", str(tmp_path), "--out", str(tmp_path), "--classifier", "svm"])
    assert exit_info.value.code == 2


def test_enable_compilation_cache_stores_compiled_programs(tmp_path):
    import jax
    import jax.numpy as jnp

    import lmprobe_jax

    before = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    try:
        path = lmprobe_jax.enable_compilation_cache(tmp_path / "jax", min_compile_seconds=0)
        assert path == tmp_path / "jax" and jax.config.jax_compilation_cache_dir == str(path)
        jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.25)(jnp.arange(7.0)).block_until_ready()
        assert any(path.iterdir()), "no compiled program was written to the cache directory"
    finally:
        from jax.experimental.compilation_cache import compilation_cache

        jax.config.update("jax_compilation_cache_dir", before[0])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])
        # Once initialised, JAX keeps writing to the cache whatever the config says; without a reset,
        # every later test in the session would store its programs in this test's temporary folder.
        compilation_cache.reset_cache()
    with pytest.raises(ValueError, match="min_compile_seconds"):
        lmprobe_jax.enable_compilation_cache(tmp_path, min_compile_seconds=-1)


@pytest.fixture
def cities_jsonl(tmp_path):
    """Paired prompts with string labels in a 'label' column and a 'city' field for grouped folds."""
    path = tmp_path / "cities.jsonl"
    rows = []
    for city in ["Lyon", "Paris", "Nice", "Lille", "Tours", "Metz", "Brest", "Caen", "Dijon", "Arles"]:
        rows.append({"text": f"The city of {city} is in France.", "label": "true", "city": city})
        rows.append({"text": f"The city of {city} is in Japan, by the dog.", "label": "false", "city": city})
        rows.append({"text": f"Is {city} a city? Maybe.", "label": "unsure", "city": city})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _strict_json(path):
    def refuse(constant):
        raise ValueError(f"{path} holds bare {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_string_labels_metadata_and_grouped_folds_from_any_store(tiny_models, cities_jsonl, tmp_path, capsys):
    store = tmp_path / "store"
    extract = ["extract", "--model", str(tiny_models["gpt2"]), "--prompts", str(cities_jsonl), "--layers",
               "embeddings,1-2", "--pooling", "mean", "--out", str(store), "--quiet"]
    assert cli.main(extract) == 0
    assert cli.main(["info", "--store", str(store)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["layers"] == ["embeddings", 1, 2] and info["class_names"] == ["false", "true", "unsure"]
    assert info["metadata_fields"] == ["city"]
    out = tmp_path / "report"
    sweep = ["sweep", "--store", str(store), "--out", str(out), "--classifier", "ridge", "--folds", "5",
             "--group-by", "city", "--layers", "embeddings,1,2"]
    assert cli.main(sweep) == 0
    printed = capsys.readouterr().out
    assert "nan" not in printed.lower()
    report = _strict_json(out / "report.json")  # three classes: AUROC is null, never a bare NaN
    assert [row["layer"] for row in report["layers"]] == ["embeddings", 1, 2]
    assert all(row["roc_auc"] is None for row in report["layers"])
    assert report["n_classes"] == 3 and report["chance_accuracy"] == pytest.approx(1 / 3)
    assert report["class_names"] == ["false", "true", "unsure"]
    assert (out / "layers.png").stat().st_size > 1000


def test_select_reports_convergence_and_takes_k(tiny_models, prompts_csv, tmp_path, capsys):
    store = tmp_path / "store"
    assert cli.main(["extract", "--model", str(tiny_models["gpt2"]), "--prompts", str(prompts_csv), "--out",
                     str(store), "--pooling", "mean", "--quiet"]) == 0
    assert cli.main(["select", "--store", str(store), "--max-iter", "1", "--tol", "1e-9"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["converged"] is False and "did not converge" in captured.err
    assert cli.main(["select", "--store", str(store), "--k", "1", "--n-alphas", "8"]) == 0
    captured = capsys.readouterr()
    chosen = json.loads(captured.out)
    assert len(chosen["layers"]) >= 1 and chosen["converged"] is True and "group lasso path" in captured.err
    assert cli.main(["select", "--store", str(store), "--k", "5"]) == 1  # 4 layers stored
    assert "keeps 5 layers" in capsys.readouterr().err


def test_shards_and_merge(tiny_models, prompts_csv, tmp_path, capsys):
    store = tmp_path / "store"
    common = ["extract", "--model", str(tiny_models["gpt2"]), "--prompts", str(prompts_csv), "--out", str(store),
              "--layers", "1", "--pooling", "mean", "--batch-size", "4"]
    assert cli.main([*common, "--shard", "0/2"]) == 0
    assert "shard 0/2 done" in capsys.readouterr().err
    assert cli.main(["merge", "--out", str(store)]) == 1
    assert "not on disk yet" in capsys.readouterr().err
    assert cli.main([*common, "--shard", "1/2", "--quiet"]) == 0  # the last shard publishes
    assert cli.main(["merge", "--out", str(store)]) == 0
    whole = tmp_path / "whole"
    assert cli.main([*common[:-6], "--out", str(whole), "--layers", "1", "--pooling", "mean", "--batch-size", "4",
                     "--quiet"]) == 0
    for name in ("manifest.json", "mean/layer_001.safetensors", "labels"):
        a, b = store / name, whole / name
        assert (sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())) if a.is_dir() else (
            a.read_bytes() == b.read_bytes()
        )
    assert cli.main([*common, "--shard", "2/2"]) == 1
    assert cli.main([*common, "--shard", "x"]) == 1


def test_every_option_says_what_it_does_and_its_default(capsys):
    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, __import__("argparse")._SubParsersAction))
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            if action.dest != "help":
                assert action.help, f"{name} {action.option_strings} has no help text"
        text = sub.format_help()
        assert "(default:" in text, name
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.startswith("lmprobe-jax ")


def test_commands_that_read_a_store_import_neither_torch_nor_jax(write_store, tmp_path):
    import subprocess
    import sys

    write_store(tmp_path / "s", labels=[0, 1, 0, 1, 0, 1, 1])
    code = (
        "import sys; from lmprobe_jax import cli; "
        f"assert cli.main(['info', '--store', {str(tmp_path / 's')!r}]) == 0; "
        f"assert cli.main(['info', '--store', {str(tmp_path)!r}]) == 1; "
        "print(sorted(m for m in ('torch', 'jax', 'transformers', 'sklearn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
