"""Hypothesis over extract_activations' and the CLI's public inputs on a tiny offline model: every case
ends in a ValueError / TypeError (the CLI: exit status 1 and one "error:" line) or in a store that holds
exactly what was asked for -- rows checked against an unbatched, unpadded extraction of the same prompts,
labels and metadata against the input. Counts print at the end (``-s``)."""

import csv
import io
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

pytest.importorskip("torch")
pytest.importorskip("transformers")


import _tolerance as T

from lmprobe_jax import cli
from lmprobe_jax_extract import extract_activations

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def gpt2(tiny_models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_models["gpt2"]
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


WORDS = st.text(alphabet=st.sampled_from(list("abcdefgh XYZ.,!éß😀\t")), max_size=30)
SOME_WORDS = WORDS.filter(lambda text: text.strip())


def sometimes(valid, invalid):
    """Mostly valid values; now and then an invalid one."""
    return st.one_of(valid, valid, valid, invalid)


VALID_LAYER = st.one_of(st.integers(-4, 3), st.sampled_from(["embeddings", "all", "-1", "2"]))
FIELDS = {  # (valid, invalid) values of each argument
    "prompts": (st.lists(SOME_WORDS, min_size=1, max_size=6), st.one_of(st.just([]), st.lists(st.just(""), min_size=1))),
    "layers": (st.one_of(VALID_LAYER, st.lists(VALID_LAYER, min_size=1, max_size=3)),
               st.one_of(st.integers(4, 9), st.sampled_from(["middle", "x", []]), st.floats(0, 3), st.booleans())),
    "pooling": (st.one_of(st.sampled_from(["mean", "all", "last_token", "first_token", "max", "min"]),
                          st.lists(st.sampled_from(["mean", "all", "max", "first_token"]), min_size=1, max_size=3)),
                st.one_of(st.just("median"), st.just([]), st.just(["sum"]))),
    "batch_size": (st.integers(1, 7), st.one_of(st.integers(-1, 0), st.booleans())),
    "max_length": (st.one_of(st.none(), st.integers(1, 6)), st.integers(-1, 0)),
    "padding_side": (st.sampled_from(["left", "right"]), st.just("middle")),
    "storage_dtype": (st.sampled_from(["float32", "float16"]), st.just("int8")),
}


@st.composite
def arguments(draw):
    """All arguments valid (half of the cases), or exactly one of them broken."""
    broken = draw(st.sampled_from([None] * len(FIELDS) + [*FIELDS, "labels"]))
    args = {name: draw(bad if name == broken else good) for name, (good, bad) in FIELDS.items()}
    n = len(args["prompts"])
    labels = st.one_of(st.none(), st.lists(st.integers(0, 2), min_size=n, max_size=n),
                       st.lists(st.sampled_from(["yes", "no", "maybe"]), min_size=n, max_size=n))
    wrong = st.one_of(st.lists(st.integers(0, 2), min_size=n + 1, max_size=n + 1),
                      st.lists(st.one_of(st.text(max_size=2), st.none()), min_size=n, max_size=n).filter(
                          lambda values: None in values))
    args["labels"] = draw(wrong if broken == "labels" else labels)
    args["on_disk"] = draw(st.booleans())
    return args


ARGS = arguments()


@SETTINGS
@given(args=ARGS)
def test_extract_activations_on_any_input(outcomes, gpt2, args):
    on_disk = args.pop("on_disk")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            store = extract_activations(gpt2, args["prompts"], out_dir=Path(tmp) / "s" if on_disk else None,
                                        progress=False, **{k: v for k, v in args.items() if k != "prompts"})
        except (ValueError, TypeError):
            outcomes.add("extract_activations: random arguments", clear=True)
            return
        reference = extract_activations(gpt2, args["prompts"], layers=store.layers, pooling=store.poolings,
                                        max_length=args["max_length"], batch_size=1, progress=False)
        def close(layer, p) -> bool:  # batched and padded vs one prompt at a time, then the storage rounding
            want = np.asarray(reference.load(layer, p), np.float64)
            rtol, atol = T.storage_tolerance(want, args["storage_dtype"])
            return np.allclose(np.asarray(store.load(layer, p), np.float64), want, rtol=rtol, atol=atol)

        good = all(close(layer, p) for p in store.poolings for layer in store.layers) and store.prompts == args["prompts"]
        if args["labels"] is not None:
            values = np.asarray(args["labels"])
            names = store.label_names
            got = [names[i] for i in store.labels] if names is not None else store.labels.tolist()
            good = good and got == ([str(v) for v in values.tolist()] if names is not None else values.tolist())
        outcomes.add("extract_activations: random arguments", silent_wrong=not good)
        assert good, args


def _file(rows: list[dict], kind: str) -> str:
    if kind == "jsonl":
        return "".join(json.dumps(row) + "\n" for row in rows)
    columns = sorted({key for row in rows for key in row})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


VALUE = st.one_of(st.none(), st.integers(-3, 3), st.floats(allow_nan=True, allow_infinity=True, width=32),
                  st.text(alphabet=st.sampled_from(list("ab1.,\" é")), max_size=4), st.booleans())
GOOD_ROW = st.fixed_dictionaries(
    {"text": SOME_WORDS, "label": st.sampled_from(["0", "1", 0, 1, "pos", "neg"]), "city": st.sampled_from(["Lyon", "Nice"])}
)
ROWS = sometimes(
    st.lists(GOOD_ROW, min_size=1, max_size=5),
    st.lists(st.fixed_dictionaries({"text": WORDS}, optional={"label": VALUE, "city": VALUE, "y": VALUE}), max_size=5),
)


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(rows=ROWS, kind=st.sampled_from(["jsonl", "csv"]), label_column=st.sampled_from([None, "label", "y"]))
@example(rows=[{"text": "a", "label": 1e20}, {"text": "b", "label": "1"}], kind="csv", label_column=None)  # int64 wrap
def test_any_prompt_file_reads_or_is_refused_clearly(outcomes, rows, kind, label_column):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"p.{kind}"
        path.write_text(_file(rows, kind))
        try:
            data = cli.read_prompts(path, "text", label_column)
        except cli.CLIError:
            outcomes.add("CLI prompt files: random columns and values", clear=True)
            return
        good = len(data.prompts) == len(rows) and (data.labels is None or len(data.labels) == len(rows))
        if good and data.labels is not None:  # the values the file holds: class names, or the same numbers
            raw = [row[label_column or "label"] for row in rows]
            if isinstance(data.labels, list):
                good = data.labels == [str(v) for v in raw]
            else:
                good = np.array_equal(np.asarray(data.labels, np.float64), [float(v) for v in raw])
        outcomes.add("CLI prompt files: random columns and values", silent_wrong=not good)
        assert good, (rows, data.labels)


@SETTINGS
@given(rows=ROWS, kind=st.sampled_from(["jsonl", "csv"]),
       layers=st.sampled_from(["all", "1-2", "embeddings,0", "-1", "9"]))
def test_cli_extract_on_any_file(outcomes, tiny_models, rows, kind, layers, capsys):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"p.{kind}"
        path.write_text(_file(rows, kind))
        argv = ["extract", "--model", str(tiny_models["gpt2"]), "--prompts", str(path), "--layers", layers,
                "--pooling", "mean", "--out", str(Path(tmp) / "s"), "--quiet"]
        status = cli.main(argv)
        err = capsys.readouterr().err
        if status == 1:
            clear = err.startswith("lmprobe-jax extract: error: ")
            outcomes.add("CLI extract: random files", clear=clear)
            assert clear, err
            return
        from lmprobe_jax_store import ActivationStore

        store = ActivationStore(Path(tmp) / "s")
        expected = cli.read_prompts(path, "text", None)
        good = store.prompts == expected.prompts and store.metadata == expected.metadata
        if expected.labels is not None:
            got = store.labels.tolist() if store.label_names is None else [store.label_names[i] for i in store.labels]
            want = expected.labels if isinstance(expected.labels, list) else expected.labels.tolist()
            good = good and got == want
        outcomes.add("CLI extract: random files", silent_wrong=not good)
        assert status == 0 and good
