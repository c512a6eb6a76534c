"""SampleScan (lmprobe's PCA lens of every layer's signals) against independent references: scikit-learn's
PCA and ROC AUC in float64, and a direct float64 forward of the same model with its own hooks."""

import json

import _tolerance as T
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import jax
from sklearn.decomposition import PCA
from sklearn.metrics import roc_auc_score
from transformers import AutoModelForCausalLM, AutoTokenizer

from lmprobe_jax import SampleScan
from lmprobe_jax.functional import fit_pca, max_component_auroc, pca_project
from lmprobe_jax_extract import SignalCapture

PROMPTS = [
    "The city of Lyon is in France.",
    "Paris is a city in France.",
    "The lazy dog sleeps.",
    "Kyoto is in Japan.",
    "The quick brown fox jumps over the lazy dog.",
    "Osaka lies in Japan, near Kyoto.",
]
LABELS = [1, 1, 0, 1, 0, 0]


def _reference_streams(path, texts):
    """Per text, float64 ``(L + 1, T, D)``: the embeddings, then the stream leaving each block, by a plain
    forward with this test's own hooks (the last block's output is taken before the final norm)."""
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64).eval()
    tok = AutoTokenizer.from_pretrained(path)
    out = []
    for text in texts:
        ids = torch.tensor([tok(text)["input_ids"]])
        kept = {}

        def keep(module, args, output, kept=kept):
            kept["last"] = output[0] if isinstance(output, tuple) else output

        handle = model.base_model.layers[-1].register_forward_hook(keep)
        with torch.no_grad():
            hidden = model(ids, output_hidden_states=True).hidden_states
        handle.remove()
        out.append(torch.cat([torch.stack(hidden[:-1])[:, 0], kept["last"]], dim=0).numpy())
    return out


def test_fit_pca_is_sklearn_pca_in_float64():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3, 300, 12)) * np.geomspace(8, 0.1, 12) + rng.normal(size=(3, 1, 12)) * 50
    with jax.enable_x64(True):
        fit = fit_pca(X, 5)
        Z = np.asarray(pca_project(X, fit))
    for layer in range(3):
        ref = PCA(5, svd_solver="full").fit(X[layer])
        cos = np.sum(np.asarray(fit.components[layer]) * ref.components_.T, axis=0)
        np.testing.assert_allclose(np.abs(cos), 1, atol=1e-12)
        np.testing.assert_allclose(fit.explained_variance[layer], ref.explained_variance_, rtol=1e-12)
        np.testing.assert_allclose(fit.mean[layer], ref.mean_, rtol=1e-13)
        np.testing.assert_allclose(Z[layer] * np.sign(cos), ref.transform(X[layer]), atol=1e-10 * np.abs(X).max())


def test_zero_weight_rows_leave_the_fit():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(2, 40, 6)) * np.arange(1, 7)
    w = (rng.random(40) > 0.4).astype(float)
    with jax.enable_x64(True):
        weighted = fit_pca(X, 3, w)
        kept = fit_pca(X[:, w > 0], 3)
    for a, b in zip(weighted, kept, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("storage", [np.float32, np.float16, "bfloat16"])
def test_fit_pca_centres_a_layer_at_a_time(storage):
    # The moments program holds one layer's centred float32 copy (and its conversion), not all of them:
    # 8 layers of 1 MB each would be 8 MB of temporaries (16 with a half-precision X's conversion).
    from lmprobe_jax.functional import _checks
    from lmprobe_jax.functional._pca import _moments

    dtype = jax.numpy.dtype(storage)
    X = jax.numpy.asarray(np.random.default_rng(2).normal(size=(8, 1024, 256)), dtype)
    lowered = _moments.lower(_checks.solver_view(X), jax.numpy.ones(1024))
    layer = 1024 * 256 * 4
    assert lowered.compile().memory_analysis().temp_size_in_bytes < 3 * layer
    fit, wide = fit_pca(X, 3), fit_pca(X.astype(np.float32), 3)  # half precision is widened exactly
    for a, b in zip(fit, wide, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_fit_pca_refuses_bad_arguments():
    X = np.zeros((1, 5, 3), np.float32)
    with pytest.raises(ValueError, match="components asked"):
        fit_pca(X, 4)
    with pytest.raises(ValueError, match="summing to more than 1"):
        fit_pca(X, 2, np.array([1.0, 0, 0, 0, 0]))


def test_max_component_auroc_is_sklearn_best_component():
    rng = np.random.default_rng(2)
    y = (rng.random(50) > 0.5).astype(int)
    Z = rng.normal(size=(4, 50, 3)) + y[None, :, None] * rng.normal(size=(4, 1, 3))
    Z[1, :, :] = 0.0  # every component constant: separates nothing
    got = np.asarray(max_component_auroc(y, Z.astype(np.float32)))
    for layer in range(4):
        aucs = [roc_auc_score(y, Z[layer, :, j]) for j in range(3) if np.ptp(Z[layer, :, j]) > 0]
        want = max([0.5] + [max(a, 1 - a) for a in aucs])
        assert abs(got[layer] - want) <= T.auc_rounding(50) * want


@pytest.mark.parametrize("arch", ["llama", "gpt_neox"])
def test_signals_are_the_streams_and_the_writes(tiny_models, arch):
    """``residual`` is the stream leaving each block; ``attn_delta + mlp_delta`` is what the block adds
    (a direct float64 forward's difference of consecutive streams); log-probs are the model's own."""
    path = tiny_models[arch]
    capture = SignalCapture(path, PROMPTS, ["residual", "attn_delta", "mlp_delta"], dtype="float32")
    reference = _reference_streams(path, PROMPTS)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64).eval()
    seen = set()
    for batch in capture.batches(batch_size=2):
        for row, text in enumerate(batch.texts):
            seen.add(int(text))
            ref = reference[text]
            bound = T.forward_rounding(ref)
            residual, attn, mlp = batch.values[:, :, row]
            np.testing.assert_allclose(residual, ref[1:], atol=bound, rtol=0)
            np.testing.assert_allclose(attn + mlp, ref[1:] - ref[:-1], atol=2 * bound, rtol=0)
            assert np.abs(attn).max() > 100 * bound and np.abs(mlp).max() > 100 * bound
            ids = torch.tensor([capture.token_ids[text]])
            with torch.no_grad():
                lp = torch.log_softmax(model(ids).logits[0], -1)
            want = lp[torch.arange(ids.shape[1] - 1), ids[0, 1:]].numpy()
            np.testing.assert_allclose(batch.log_probs[row, :-1], want, atol=1e-4 * np.abs(want).max())
            assert np.isnan(batch.log_probs[row, -1])
    assert seen == set(range(len(PROMPTS)))


def test_unknown_signals_are_refused(tiny_models):
    with pytest.raises(ValueError, match="router"):
        SignalCapture(tiny_models["llama"], PROMPTS, ["router_logits"])
    with pytest.raises(ValueError, match="twice"):
        SignalCapture(tiny_models["llama"], PROMPTS, ["residual", "residual"])


@pytest.fixture(scope="module")
def scan(tiny_models, tmp_path_factory):
    scan_dir = tmp_path_factory.mktemp("scans") / "scan"
    scan = SampleScan.run(
        PROMPTS, LABELS, tiny_models["llama"], scan_dir,
        signals=["residual", "attn_delta", "mlp_delta"], n_components=4, batch_size=2, dtype="float32",
    )
    return scan, scan_dir


def test_scan_components_are_the_corpus_pca(scan, tiny_models):
    """Every layer's residual basis against scikit-learn's PCA of a float64 forward's real tokens: the
    variances within Weyl's bound and each well-separated component within Davis-Kahan's, for the
    covariance error of float32 forwards (forward_rounding) and float32 sums (gram_error)."""
    scan, _ = scan
    streams = np.concatenate(_reference_streams(tiny_models["llama"], PROMPTS), axis=1)[1:]  # (L, n_tokens, D)
    for layer in range(scan.n_layers):
        X = streams[layer]
        ref = PCA(4, svd_solver="full").fit(X)
        centred = X - ref.mean_
        entry = 2 * np.abs(centred).max() * T.forward_rounding(streams) * len(X) + T.gram_error(centred)
        error = np.linalg.norm(entry / (len(X) - 1), 2)
        got_var = scan.explained_variance["residual"][layer]
        np.testing.assert_allclose(got_var, ref.explained_variance_, atol=error + 1e-6 * got_var[0])
        full = np.linalg.eigvalsh(np.cov(X.T))[::-1]
        for j in range(4):
            gap = min(full[j] - full[j + 1], full[j - 1] - full[j] if j else np.inf)
            if gap > 4 * error:
                cos = abs(scan.bases["residual"][layer][:, j] @ ref.components_[j])
                assert np.sqrt(max(0.0, 1 - cos**2)) <= 2 * error / gap + 1e-5


def test_stored_coordinates_are_the_projections(scan, tiny_models):
    scan, _ = scan
    capture = SignalCapture(tiny_models["llama"], PROMPTS, scan.signals, dtype="float32")
    for batch in capture.batches(1):
        (text,) = batch.texts
        for s, name in enumerate(scan.signals):
            X = batch.values[s, :, 0].astype(np.float64)  # (L, T, D)
            want = np.einsum("ltd,ldk->tlk", X - scan.means[name][:, None], scan.bases[name].astype(np.float64))
            got = scan.get_projections(int(text), name)[:, :, 0]
            bound = T.forward_rounding(X) * np.abs(scan.bases[name]).sum(axis=1).max() + 1e-5 * np.abs(want).max()
            np.testing.assert_allclose(got, want, atol=bound, rtol=0)


def test_queries_agree_with_each_other(scan):
    scan, _ = scan
    lengths = scan.samples["seq_length"]
    values, sample_ids, positions = scan.per_token_layer(2, "attn_delta")
    assert values.shape == (sum(lengths), 4) and np.bincount(sample_ids).tolist() == lengths
    for i in range(scan.n_samples):
        dense = scan.get_projections(i)
        assert dense.shape == (lengths[i], scan.n_layers, 3, 4)
        np.testing.assert_array_equal(scan.per_token(i, 2), dense[:, 2])
        np.testing.assert_array_equal(scan.per_token(i, 2, "attn_delta"), dense[:, 2, 1])
        np.testing.assert_array_equal(values[sample_ids == i], dense[:, 2, 1])
        np.testing.assert_array_equal(positions[sample_ids == i], np.arange(lengths[i]))


def test_separability_map_is_the_best_components_auroc(scan):
    scan, _ = scan
    got = scan.separability_map()
    assert got.shape == (scan.n_layers, 3)
    last = np.cumsum(scan.samples["seq_length"]) - 1
    for s, name in enumerate(scan.signals):
        for layer in range(scan.n_layers):
            Z = scan.per_token_layer(layer, name)[0][last]
            want = max([0.5] + [max(a, 1 - a) for a in (roc_auc_score(LABELS, Z[:, j]) for j in range(4))])
            assert abs(got[layer, s] - want) <= T.auc_rounding(len(LABELS))
    first = scan.separability_map(signal="mlp_delta", token_positions=[0] * 6)
    assert first.shape == (scan.n_layers, 1)
    with pytest.raises(ValueError, match="two classes"):
        scan.separability_map(labels=[0, 1, 2, 0, 1, 2])
    with pytest.raises(IndexError, match="outside"):
        scan.separability_map(token_positions=[99] * 6)


def test_a_prompt_projects_as_its_corpus_copy(scan):
    scan, _ = scan
    projections, tokens, log_probs = scan.project_prompt(PROMPTS[3])
    stored = scan.get_projections(3)
    assert projections.shape == stored.shape and len(tokens) == len(log_probs) == stored.shape[0]
    scale = np.abs(stored).max()
    np.testing.assert_allclose(projections, stored, atol=1e-4 * scale)
    single, _, _ = scan.project_prompt(PROMPTS[3], signal="mlp_delta")
    np.testing.assert_array_equal(single[:, :, 0], projections[:, :, 2])


def test_scan_reloads_from_disk(scan, tiny_models):
    scan, scan_dir = scan
    loaded = SampleScan(scan_dir)
    assert (loaded.n_samples, loaded.n_layers, loaded.signals) == (6, 4, ["residual", "attn_delta", "mlp_delta"])
    assert loaded.samples["prompt"] == PROMPTS and loaded.samples["label"] == LABELS
    for name in loaded.signals:
        np.testing.assert_array_equal(loaded.bases[name], scan.bases[name])
    np.testing.assert_array_equal(loaded.get_projections(5), scan.get_projections(5))
    meta = json.loads((scan_dir / "metadata.json").read_text())
    assert meta["n_components"] == 4 and meta["hidden_dim"] == 64
    assert meta["model_id"] == str(tiny_models["llama"].resolve())  # reloadable by project_prompt


def test_plot_draws_a_panel_per_signal(scan):
    import matplotlib

    matplotlib.use("Agg")
    scan, _ = scan
    fig = scan.plot(PROMPTS[0])
    images = [ax for ax in fig.axes if ax.images]
    assert len(images) == 3
    fig = scan.plot(PROMPTS[0], signal="attn_delta", show_surprise=False, show_stats=False)
    assert len(fig.axes) == 1 and fig.axes[0].images


def test_generative_masks_choose_the_fitted_tokens(tiny_models, tmp_path):
    capture = SignalCapture(tiny_models["llama"], PROMPTS, ["residual"], dtype="float32")
    masks = [np.arange(len(ids)) >= len(ids) // 2 for ids in capture.token_ids]
    scan = SampleScan.run(PROMPTS, LABELS, tiny_models["llama"], tmp_path / "s", signals=["residual"],
                          n_components=3, generative_masks=masks, dtype="float32")
    batches = {int(b.texts[0]): b.values[0, :, 0] for b in capture.batches(1)}  # text -> (L, T, D)
    kept = np.concatenate([batches[i][:, masks[i]] for i in range(len(PROMPTS))], axis=1)
    want = kept.astype(np.float64).mean(axis=1)
    np.testing.assert_allclose(scan.means["residual"], want, atol=T.forward_rounding(kept) + 1e-6 * np.abs(want).max())


def test_bad_input_writes_nothing(tiny_models, tmp_path):
    model = tiny_models["llama"]
    with pytest.raises(ValueError, match="labels"):
        SampleScan.run(PROMPTS, [0, 1], model, tmp_path / "a")
    with pytest.raises(NotImplementedError, match="disk_offload"):
        SampleScan.run(PROMPTS, LABELS, model, tmp_path / "b", backend="disk_offload")
    with pytest.raises(ValueError, match="memory_budget"):
        SampleScan.run(PROMPTS, LABELS, model, tmp_path / "c", memory_budget=1000)
    other = tmp_path / "d"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a scan"):
        SampleScan.run(PROMPTS, LABELS, model, other)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    with pytest.raises(FileNotFoundError, match="not a complete scan"):
        SampleScan(other)


def test_a_damaged_scan_is_refused(tiny_models, tmp_path):
    scan_dir = tmp_path / "s"
    SampleScan.run(PROMPTS[:3], LABELS[:3], tiny_models["llama"], scan_dir, signals=["residual"], n_components=2)
    np.save(scan_dir / "projections.npy", np.zeros((1, 4, 3, 2), np.float32))
    with pytest.raises(ValueError, match="damaged"):
        SampleScan(scan_dir)


def test_cli_writes_the_scan_its_map_and_figure(tiny_models, tmp_path):
    import csv

    pytest.importorskip("matplotlib")
    from lmprobe_jax.cli import main

    table = tmp_path / "corpus.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(zip(PROMPTS, LABELS, strict=True))
    out = tmp_path / "scan"
    argv = ["scan", "--model", str(tiny_models["llama"]), "--prompts", str(table), "--out", str(out),
            "--components", "3", "--plot", PROMPTS[0], "--quiet"]
    assert main(argv) == 0
    scan = SampleScan(out)
    assert scan.samples["label"] == LABELS and scan.signals == ["attn_delta", "mlp_delta"]
    with open(out / "separability.csv") as handle:
        rows = list(csv.DictReader(handle))
    want = scan.separability_map()
    assert [int(r["layer"]) for r in rows] == list(range(scan.n_layers))
    np.testing.assert_allclose([[float(r[s]) for s in scan.signals] for r in rows], want, rtol=1e-12)
    assert (out / "scan.png").stat().st_size > 0
    assert main([*argv[:6], str(tmp_path / "bad"), "--signals", "router_logits", "--quiet"]) == 1
    assert not (tmp_path / "bad").exists()


def test_writers_of_one_scan_take_turns(tmp_path):
    """Two writers of one scan directory (threads here: the lock is a file lock, as between processes)
    never hold a partial directory at once."""
    import threading
    import time

    from lmprobe_jax_store import writing_scan

    order, entered = [], threading.Event()

    def first():
        with writing_scan(tmp_path / "scan") as partial:
            (partial / "mine").write_text("first")
            entered.set()
            time.sleep(0.5)
            order.append(("first", (partial / "mine").read_text()))

    thread = threading.Thread(target=first)
    thread.start()
    entered.wait()
    with writing_scan(tmp_path / "scan") as partial:
        order.append(("second", sorted(p.name for p in partial.iterdir())))
    thread.join()
    assert order == [("first", "first"), ("second", [])]
