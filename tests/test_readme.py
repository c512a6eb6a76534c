"""The README's extraction and command-line snippets run as written, on a tiny offline model with enough
layers for their layer numbers (only the model path is substituted)."""

import re
import shlex
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

README = (Path(__file__).parents[1] / "README.md").read_text()
CITIES = ["Lyon", "Paris", "Nice", "Lille", "Tours", "Metz", "Brest", "Caen", "Dijon", "Arles", "Nantes", "Rouen"]


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


@pytest.fixture(scope="module")
def deep_model(tmp_path_factory):
    """A 24-block Llama of width 16 with the tiny tokenizer (the README names layers up to 20)."""
    import torch
    from conftest import _tiny_tokenizer
    from transformers import AutoModelForCausalLM, LlamaConfig

    tok = _tiny_tokenizer()
    config = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=24, num_attention_heads=2,
                         num_key_value_heads=1, max_position_embeddings=128, vocab_size=len(tok), pad_token_id=0,
                         bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("deep") / "model"
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_the_extraction_snippet_runs_as_written(deep_model, tmp_path, monkeypatch):
    (block,) = [b for b in _blocks("python") if "extract_activations(" in b]
    monkeypatch.chdir(tmp_path)
    prompts = [f"The city of {c} is in {k}." for c in CITIES for k in ("France", "Japan")]
    namespace = {"prompts": prompts, "labels": np.arange(len(prompts)) % 2}
    exec(compile(block.replace("path/or/hub-id", str(deep_model)), "README.md", "exec"), namespace)  # noqa: S102 - the README is ours
    store = namespace["store"]
    assert store.stack(range(10, 20), "mean").shape == (10, len(prompts), 16)
    assert (tmp_path / "acts" / "manifest.json").is_file()


def test_the_command_line_snippet_runs_as_written(deep_model, tmp_path, monkeypatch, capsys):
    from lmprobe_jax import cli

    monkeypatch.setenv("LMPROBE_JAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cli, "default_compilation_cache", lambda *args, **kwargs: None)
    monkeypatch.chdir(tmp_path)
    rows = ["text,label,city"] + [f"The city of {c} is in {k}.,{k == 'France'},{c}" for c in CITIES
                                  for k in ("France", "Japan")]
    (tmp_path / "prompts.csv").write_text("\n".join(rows) + "\n")
    (block,) = [b for b in _blocks("bash") if "lmprobe-jax extract" in b]
    commands = [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]
    assert len(commands) >= 5
    for argv in commands:
        assert argv[0] == "lmprobe-jax"
        argv = [str(deep_model) if arg == "path/to/model" else arg for arg in argv[1:]]
        assert cli.main(argv) == 0, (argv, capsys.readouterr().err)
    assert (tmp_path / "report" / "report.json").is_file() and (tmp_path / "big" / "manifest.json").is_file()
