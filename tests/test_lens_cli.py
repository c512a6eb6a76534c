"""``lmprobe-jax lens`` and ``lmprobe_jax.lens.analyze`` on tiny random models: the documented outputs,
the arithmetic text set, and bad input refused before anything is written."""

import csv
import json

import numpy as np
import pytest

pytest.importorskip("transformers")

from lmprobe_jax.cli import main
from lmprobe_jax.datasets import arithmetic_problems

TEXTS = [
    "The city of Lyon is in France.",
    "The quick brown fox jumps over the lazy dog.",
    "Lyon is in Japan.",
]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LMPROBE_JAX_CACHE", str(tmp_path / "cache"))


def write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_lens_command_writes_json_csv_and_png(tiny_models, tmp_path, arch):
    texts = write(tmp_path / "texts.txt", TEXTS)
    evals = write(tmp_path / "eval.txt", ["The dog is in France.", "Lyon is a city."])
    out = tmp_path / "out"
    code = main(
        [
            "lens",
            "--model",
            str(tiny_models[arch]),
            "--texts",
            str(texts),
            "--eval-texts",
            str(evals),
            "--tuned",
            "--probe",
            "linear",
            "--steps",
            "3",
            "--batch-tokens",
            "8",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    doc = json.loads((out / "lens.json").read_text())
    assert doc["layers"] == [0, 1, 2, 3]
    assert 0 < doc["n_tokens"] < doc["n_train_tokens"]  # measured on the eval texts, trained on the others
    for lens in ("logit_lens", "tuned_lens", "probe"):
        for metric in (
            "kl_final_lens",
            "kl_lens_final",
            "ce_next_token",
            "entropy",
            "top1_agreement",
            "top5_overlap",
        ):
            assert len(doc[lens][metric]) == 4 and all(np.isfinite(doc[lens][metric]))
    assert doc["tuned_lens"]["training"]["steps"] == 3
    # the last block's logit lens is the model itself
    assert (
        doc["logit_lens"]["top1_agreement"][-1] == 1.0 and abs(doc["logit_lens"]["kl_final_lens"][-1]) < 1e-5
    )
    assert abs(doc["logit_lens"]["ce_next_token"][-1] - doc["final_ce_next_token"]) < 1e-5
    with open(out / "lens.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 12 and {row["lens"] for row in rows} == {"logit_lens", "tuned_lens", "probe"}
    assert (out / "lens.png").stat().st_size > 10_000


def test_analyze_metrics_on_the_training_texts_without_eval_texts(tiny_models, tmp_path):
    from lmprobe_jax.lens import analyze

    report = analyze(tiny_models["llama"], TEXTS, layers=[1, 3], progress=False, cache_dir=tmp_path)
    assert report.layers == [1, 3] and report.n_tokens == report.n_train_tokens
    assert report.tuned_lens is None and report.probe is None
    assert report.to_json()["tuned_lens"] is None
    assert report.stats.spectrum_entropy.shape == (2,)


@pytest.mark.parametrize(
    "lines, extra, match",
    [
        ([], [], "holds no prompts"),
        (["The city of Lyon", "A"], [], "fewer than 2 tokens"),
        (TEXTS, ["--layers", "9"], "out of range"),
    ],
)
def test_bad_input_fails_cleanly_and_writes_nothing(tiny_models, tmp_path, capsys, lines, extra, match):
    texts = write(tmp_path / "texts.txt", lines) if lines else tmp_path / "empty.txt"
    if not lines:
        texts.write_text("\n")
    out = tmp_path / "out"
    code = main(
        [
            "lens",
            "--model",
            str(tiny_models["gpt2"]),
            "--texts",
            str(texts),
            "--out",
            str(out),
            "--quiet",
            *extra,
        ]
    )
    assert code == 1
    assert match in capsys.readouterr().err
    assert not out.exists()


def test_arithmetic_problems_are_deterministic_and_correct():
    a, b = arithmetic_problems(50, seed=3), arithmetic_problems(50, seed=3)
    assert a == b and a != arithmetic_problems(50, seed=4)
    for text in a:
        assert text.startswith("Question: ") and "\n" not in text
        answer = int(text.rsplit("The final answer is ", 1)[1].rstrip("."))
        assert answer > 0
        for step in text.split("Answer: ")[1].split(". "):
            if "=" in step:
                expression, result = step.split("=")[0], step.split("=")[1].split()[0]
                lhs = " ".join(expression.split()[-3:]).replace("x", "*")
                assert eval(lhs) == int(result), step
    with pytest.raises(ValueError, match="positive integer"):
        arithmetic_problems(0)
