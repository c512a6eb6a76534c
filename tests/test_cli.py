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
    assert cli.read_prompts(tmp_path / "p.txt", "text", None) == (["one", "two"], None)
    (tmp_path / "p.jsonl").write_text('{"prompt": "a", "y": 0.5}\n{"prompt": "b", "y": 1.5}\n')
    prompts, labels = cli.read_prompts(tmp_path / "p.jsonl", "prompt", "y")
    assert prompts == ["a", "b"] and np.allclose(labels, [0.5, 1.5])
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
