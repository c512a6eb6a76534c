"""The README's claims about compilation and JAX transformations, one test per claim.

* the functions run under your own ``jax.jit`` (numpy ``X`` closed over, or traced) and ``jax.vmap``
  (say over label sets), and give the eager results;
* ``jax.grad`` through ``fit_logistic`` / ``fit_multinomial`` gives the derivative of the optimum
  (implicit differentiation), checked against central differences in float64;
* a new ``tol``, ``max_iter``, ``C`` or a row count in the same bucket compiles nothing new; rows padded to
  the bucket (zero weight) change no result, and zero-weight rows are absent from every solver and score;
* the persistent compilation cache is on by default where safe, and off when asked or when the user chose.
"""

import ast
import contextlib
import logging
import os
import subprocess
import sys
import textwrap

import _tolerance as T
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lmprobe_jax.functional as F
from lmprobe_jax.functional._checks import bucket_rows


@contextlib.contextmanager
def compiled_names():
    """The names of the programs XLA compiles inside the block (``jax_log_compiles`` records)."""
    names = []
    handler = logging.Handler()
    handler.emit = lambda record: names.append(record.getMessage())
    logger = logging.getLogger("jax")
    logger.addHandler(handler)
    try:
        with jax.log_compiles(True):
            yield names
    finally:
        logger.removeHandler(handler)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2, 90, 5)).astype(np.float32)
    y = (X[0, :, 0] + rng.normal(size=90) > 0).astype(int)
    y3 = np.digitize(X[1, :, 2], [-0.5, 0.5])
    return X, y, y3


SOLVERS = {
    "fit_logistic": lambda X, y, y3, C: F.fit_logistic(X, y, C),
    "fit_multinomial": lambda X, y, y3, C: F.fit_multinomial(X, y3, C),
    "fit_ridge": lambda X, y, y3, C: F.fit_ridge(X, y, C),
    "fit_mass_mean": lambda X, y, y3, C: F.fit_mass_mean(X, y, calibration_C=C),
    "cross_validate_logistic": lambda X, y, y3, C: F.cross_validate_logistic(X, y, jnp.stack([C, 2 * C]), folds=3),
    "cross_validate_ridge": lambda X, y, y3, C: F.cross_validate_ridge(X, y, jnp.stack([C, 2 * C])),
}


def _ridge_mse_slack(X, targets, grid) -> np.ndarray:
    """``(G, 1)``: most that a float32 solve's mean squared LOO error can differ from the exact one's: each
    LOO residual ``r_i`` within ``delta_i`` (T.ridge_loo_error) moves its square by ``2 |r_i| delta_i +
    delta_i^2``; then the mean's own rounding."""
    X = np.asarray(X, np.float64)
    Xc = X - X.mean(0)
    slack = []
    for alpha in grid:
        region = T.ridge_region(X, targets, alpha, data=False)
        hat = np.einsum("nd,dn->n", Xc, np.linalg.solve(Xc.T @ Xc + alpha * np.eye(X.shape[1]), Xc.T)) + 1 / len(X)
        r = (targets - X @ region.coef[0] - region.intercept[0]) / (1 - hat)
        delta = T.ridge_loo_error(X, targets, alpha, data=False)
        slack.append(np.mean(2 * np.abs(r) * delta + delta**2) + T.mean_rounding(len(X)) * np.mean(r**2))
    return np.array(slack)[:, None]


def _assert_same_fit(name, got, want, X, y, y3, C):
    """Two float32 solves of one problem (under jit and eager, say) order their sums differently: each lies
    in the region that its stopping test and its rounding allow around the exact solution (tests/_tolerance.py),
    so they lie within twice its radius of each other, per layer. A cross-validation's choice of ``C`` may
    differ only where the grid's scores are within their derived slack (then its refits are not compared)."""
    targets = 2.0 * y - 1  # ridge's targets for two classes
    cv = name.startswith("cross_validate")
    solver = name.replace("cross_validate", "fit")
    for l in range(X.shape[0]):
        C_l, fits = C, (got, want)
        if cv:
            grid = [C, 2 * C]
            if name == "cross_validate_logistic":
                slack = 2 * T.fold_accuracy_slack(X[l], y, grid, want.fold_ids, tol=1e-4)
                np.testing.assert_array_less(np.abs(np.asarray(got.accuracy[l]) - np.asarray(want.accuracy[l])),
                                             slack + 1e-12)
                scores = want.accuracy[l]
            else:
                slack = 2 * _ridge_mse_slack(X[l], targets, grid)
                np.testing.assert_array_less(np.abs(np.asarray(got.mse[l]) - np.asarray(want.mse[l])), slack)
                scores = -np.asarray(want.mse[l])
            if not T.same_best(got.best_index[l], want.best_index[l], scores, slack):
                continue
            C_l, fits = grid[int(want.best_index[l])], (got.fit, want.fit)
        if solver == "fit_logistic":
            reach = T.glm_region(X[l], y, C_l, tol=1e-7, data=False).radius
        elif solver == "fit_multinomial":
            reach = T.glm_region(X[l], y3, C_l, tol=1e-7, data=False).radius
        elif solver == "fit_ridge":
            reach = T.ridge_region(X[l], targets, C_l, data=False).reach
        else:
            reach = T.mass_mean_reach(X[l], y, C_l)[0]
        T.assert_within(*(T.as_theta(fit.coef[l], fit.intercept[l]) for fit in fits), 2 * reach, f"{name}, layer {l}")


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_jit_with_numpy_x_closed_over(data, name):
    # A numpy X closed over by the caller's jit: device_put gives a tracer there, which has no buffer.
    X, y, y3 = data
    solve = SOLVERS[name]
    jitted = jax.jit(lambda C: solve(X, y, y3, C))(1.0)
    _assert_same_fit(name, jitted, solve(X, y, y3, jnp.float32(1.0)), X, y, y3, 1.0)


@pytest.mark.parametrize("name", sorted(SOLVERS))
def test_jit_with_traced_x(data, name):
    X, y, y3 = data
    solve = SOLVERS[name]
    jitted = jax.jit(lambda X: solve(X, y, y3, jnp.float32(1.0)))(X)
    _assert_same_fit(name, jitted, solve(X, y, y3, jnp.float32(1.0)), X, y, y3, 1.0)


def test_cross_validate_logistic_under_jit_picks_the_same_c(data):
    X, y, _ = data
    grid = [0.01, 1.0, 100.0]
    eager = F.cross_validate_logistic(X, y, grid, folds=3)
    traced = jax.jit(lambda X: F.cross_validate_logistic(X, y, grid, folds=3))(X)
    for l in range(X.shape[0]):
        # Fold fits stopped at cv_tol = 1e-4 in two orders of their sums: a held-out prediction may differ
        # only where its decision value is within the fold region's reach of zero.
        slack = 2 * T.fold_accuracy_slack(X[l], y, grid, eager.fold_ids, tol=1e-4)
        np.testing.assert_array_less(np.abs(np.asarray(traced.accuracy[l]) - np.asarray(eager.accuracy[l])),
                                     slack + 1e-12)
        T.same_best(traced.best_index[l], eager.best_index[l], eager.accuracy[l], slack)  # or a tie within slack
    # Under jit the grid is a float32 array: its value is the float64 grid's, rounded once.
    np.testing.assert_allclose(traced.best_value, eager.grid[np.asarray(traced.best_index)], rtol=T.U32)


def test_vmap_over_label_sets(data):
    X, y, y3 = data
    ys = np.stack([y, (X[1, :, 1] > 0).astype(int)])
    y3s = np.stack([y3, np.digitize(X[0, :, 3], [-0.3, 0.6])])
    multi = jax.vmap(lambda labels: F.fit_multinomial(X, labels, 1.0, n_classes=3))(jnp.asarray(y3s))
    for i, labels in enumerate(y3s):
        eager = F.fit_multinomial(X, labels, 1.0)
        _assert_same_fit("fit_multinomial", jax.tree.map(lambda a, i=i: a[i], multi), eager, X, y, labels, 1.0)
    folds = F.stratified_folds(y, 3)
    cv = jax.vmap(lambda labels: F.cross_validate_logistic(X, labels, [0.1, 1.0], folds=folds, n_classes=2))(
        jnp.asarray(ys))
    for i, labels in enumerate(ys):
        eager = F.cross_validate_logistic(X, labels, [0.1, 1.0], folds=folds)
        for l in range(X.shape[0]):
            slack = 2 * T.fold_accuracy_slack(X[l], labels, [0.1, 1.0], folds, tol=1e-4)
            np.testing.assert_array_less(np.abs(np.asarray(cv.accuracy[i, l]) - np.asarray(eager.accuracy[l])),
                                         slack + 1e-12)
            if T.same_best(cv.best_index[i, l], eager.best_index[l], eager.accuracy[l], slack):
                C = float(eager.best_value[l])
                reach = T.glm_region(X[l], labels, C, tol=1e-7, data=False).radius
                T.assert_within(T.as_theta(cv.fit.coef[i, l], cv.fit.intercept[i, l]),
                                T.as_theta(eager.fit.coef[l], eager.fit.intercept[l]), 2 * reach, f"label set {i}, layer {l}")


def test_traced_labels_need_their_class_count_and_fold_ids(data):
    X, y, y3 = data
    with pytest.raises(ValueError, match="give n_classes"):
        jax.vmap(lambda labels: F.fit_multinomial(X, labels, 1.0).coef)(jnp.asarray(y3[None]))
    with pytest.raises(ValueError, match="give folds as \\(N,\\) fold ids"):
        jax.vmap(lambda labels: F.cross_validate_logistic(X, labels, [1.0], n_classes=2).accuracy)(jnp.asarray(y[None]))


def _central_difference(f, x, direction, eps=1e-5):
    return (f(x + eps * direction) - f(x - eps * direction)) / (2 * eps)


def test_grad_of_the_optimum_matches_finite_differences(data):
    """Reverse mode through the solvers by implicit differentiation: against central differences of the
    solver's own output in float64 (solved to tol 1e-12, so the difference quotient is exact to ~1e-8)."""
    X, y, y3 = data
    X = X.astype(np.float64)
    with jax.enable_x64(True):
        def by_c(C):
            return jnp.sum(F.fit_logistic(X, y, C, tol=1e-12).coef ** 2)

        np.testing.assert_allclose(jax.grad(by_c)(1.0), _central_difference(by_c, 1.0, 1.0), rtol=1e-6)

        def by_x(Xv):
            return jnp.sum(F.fit_logistic(Xv, y, 0.5, tol=1e-12).coef[:, 1])

        E = np.zeros_like(X)
        E[1, 3, 2] = 1.0
        np.testing.assert_allclose(jax.grad(by_x)(X)[1, 3, 2], _central_difference(by_x, X, E), rtol=1e-5)

        def by_weight(w):
            fit = F.fit_logistic(X[0], y, 1.0, sample_weight=w, tol=1e-12, fit_intercept=False)
            return jnp.sum(fit.coef) + jnp.sum(fit.intercept)

        w, E = np.ones(90), np.eye(90)[7]
        np.testing.assert_allclose(jax.grad(by_weight)(w)[7], _central_difference(by_weight, w, E), rtol=1e-6)

        def softmax_by_c(C):
            return jnp.sum(F.fit_multinomial(X, y3, C, tol=1e-12).coef[..., 0] ** 2)

        np.testing.assert_allclose(jax.grad(softmax_by_c)(2.0), _central_difference(softmax_by_c, 2.0, 1.0),
                                   rtol=1e-6)

        def ridge_by_alpha(alpha):  # closed form: JAX differentiates the factorisation itself
            return jnp.sum(F.fit_ridge(X, y, alpha).coef ** 2)

        np.testing.assert_allclose(jax.grad(ridge_by_alpha)(3.0), _central_difference(ridge_by_alpha, 3.0, 1.0),
                                   rtol=1e-6)


def test_new_tol_and_max_iter_do_not_recompile(data):
    X, y, _ = data
    F.fit_logistic(X, y, 1.0, tol=1e-6, max_iter=50)
    with compiled_names() as names:
        fit = F.fit_logistic(X, y, 1.0, tol=1e-4, max_iter=7)
    assert [n for n in names if "solve_layers" in n] == []
    assert int(np.max(fit.n_iter)) <= 7


def test_bucket_rows():
    sizes = np.arange(1, 20000)
    buckets = np.array([bucket_rows(int(n)) for n in sizes])
    assert (buckets >= sizes).all() and (buckets <= np.maximum(16, sizes * 17 // 16)).all()
    assert bucket_rows(1000) == bucket_rows(1001) == 1024
    assert len(set(buckets[(sizes > 1024) & (sizes <= 2048)])) == 16  # 16 sizes per octave


def test_rows_in_one_bucket_compile_once():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(1001, 6)).astype(np.float32)
    y = (X[:, 0] > 0).astype(int)
    F.fit_logistic(X[:1000], y[:1000], 1.0)
    F.cross_validate_logistic(X[:1000], y[:1000], [0.1, 1.0], folds=3)
    with compiled_names() as names:
        F.fit_logistic(X, y, 1.0)
        F.cross_validate_logistic(X, y, [0.1, 1.0], folds=3)
    assert names == []


ZERO_WEIGHT_CASES = {
    # Iterative solvers to a tolerance far below the comparison's: the rows change the preconditioner, so
    # the two solves take different paths to the same optimum.
    "fit_logistic": lambda X, y, y3, sw: F.fit_logistic(X, y, [0.1, 10.0], sample_weight=sw, tol=1e-12).coef,
    "fit_multinomial": lambda X, y, y3, sw: F.fit_multinomial(X, y3, 1.0, sample_weight=sw, tol=1e-12).coef,
    "fit_ridge": lambda X, y, y3, sw: F.fit_ridge(X, y, [0.1, 10.0], sample_weight=sw).coef,
    "fit_ridge (K=3)": lambda X, y, y3, sw: F.fit_ridge(X, y3, 1.0, sample_weight=sw).coef,
    "fit_mass_mean": lambda X, y, y3, sw: F.fit_mass_mean(X, y, iid=True, sample_weight=sw).coef,
    "cross_validate_ridge": lambda X, y, y3, sw: F.cross_validate_ridge(X, y, [0.1, 10.0], scoring="roc_auc",
                                                                       sample_weight=sw).roc_auc,
}


@pytest.mark.parametrize("name", sorted(ZERO_WEIGHT_CASES))
@pytest.mark.parametrize("wide", [False, True])
def test_zero_weight_rows_are_absent(name, wide):
    """A row of weight zero is the row removed: what padding to a bucket relies on (the wide case takes
    ridge's dual, N < D)."""
    rng = np.random.default_rng(2)
    n, d = (40, 60) if wide else (150, 6)
    X = rng.normal(size=(2, n, d))
    y = (X[0, :, 0] + 0.5 * rng.normal(size=n) > 0).astype(int)
    y3 = np.digitize(X[1, :, 1], [-0.5, 0.5])
    sw = rng.uniform(0.5, 2.0, size=n)
    sw[::5] = 0.0
    keep = sw > 0
    with jax.enable_x64(True):
        solve = ZERO_WEIGHT_CASES[name]
        weighted = solve(X, y, y3, sw)
        removed = solve(X[:, keep], y[keep], y3[keep], sw[keep])
    np.testing.assert_allclose(weighted, removed, rtol=1e-6, atol=1e-8)


def test_ridge_loo_predictions_ignore_the_padding():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(2, 37, 4))
    y = X[0, :, 0] + 0.1 * rng.normal(size=37)
    with jax.enable_x64(True):
        loo = F.ridge_loo(X, y, [0.5, 5.0])
        assert loo.predictions.shape == (2, 2, 37) and loo.targets.shape == (37,)
        for i in (0, 17, 36):  # brute force: refit without row i
            keep = np.arange(37) != i
            fit = F.fit_ridge(X[:, keep], y[keep], [0.5, 5.0])
            expected = np.einsum("lgd,ld->lg", fit.coef, X[:, i]) + fit.intercept
            np.testing.assert_allclose(loo.predictions[..., i], expected, rtol=1e-8)


def _run(code: str, env: dict) -> subprocess.CompletedProcess:
    full = dict(os.environ, **env, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full, capture_output=True, text=True,
                          check=False, timeout=300)


FIT = """
import numpy as np, jax, lmprobe_jax.functional as F
X = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
F.fit_logistic(X, (X[:, 0] > 0).astype(int), 1.0)
print("DIR", jax.config.jax_compilation_cache_dir)
"""


def test_persistent_cache_on_by_default(tmp_path):
    proc = _run(FIT, {"LMPROBE_JAX_CACHE": str(tmp_path), "LMPROBE_JAX_COMPILATION_CACHE": ""})
    assert proc.returncode == 0, proc.stderr
    cache = tmp_path / "jax"
    assert f"DIR {cache}" in proc.stdout and any(cache.iterdir())
    assert oct(cache.stat().st_mode & 0o777) == oct(0o700)


TRACED = """
import threading
import numpy as np, jax, jax.monitoring, lmprobe_jax.functional as F
from lmprobe_jax.functional import _aot
built, loaded_on = [], []
load = _aot._load
_aot._load = lambda path: loaded_on.append(threading.current_thread().name) or load(path)
jax.monitoring.register_event_duration_secs_listener(
    lambda event, duration, **kw: built.append(kw.get("fun_name").removeprefix("jit_"))
    if event.endswith(("jaxpr_trace_duration", "jaxpr_to_mlir_module_duration")) else None)
X = np.random.default_rng(0).normal(size=(2, 64, 12)).astype(np.float32)
res = F.cross_validate_logistic(X, (X[0, :, 0] > 0).astype(int), [0.1, 1.0], folds=3)
print("BUILT", sorted(set(built)))
print("COEF", np.asarray(res.fit.coef).ravel().tolist())
print("LOADED_ON", sorted(loaded_on))
"""


def test_a_new_process_loads_the_solvers_executables(tmp_path):
    """With the cache on, the second process runs the solvers' executables kept on disk: the same result,
    and none of the CV's programs is traced or lowered again. The preconditioner's eigendecomposition is a
    LAPACK call, which a loaded executable must find set up."""
    env = {"LMPROBE_JAX_CACHE": str(tmp_path), "LMPROBE_JAX_COMPILATION_CACHE": ""}
    first, second = _run(TRACED, env), _run(TRACED, env)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    for name in ("_sum_is_finite", "solve_layers", "layer_preconditioners", "_scored_folds", "_with_refit"):
        assert name in first.stdout.split("BUILT")[1].split("\n")[0]
        assert name not in second.stdout.split("BUILT")[1].split("\n")[0]
    assert first.stdout.split("COEF")[1].split("\n")[0] == second.stdout.split("COEF")[1].split("\n")[0]
    # The values' check, preconditioners, folds, scoring, refit, and the refit merged with the folds' counts.
    assert len(list((tmp_path / "jax-executables").iterdir())) == 6
    # Each loaded once; the refit's on the loader's thread, while the folds are solved (its prefetch found it).
    loaded_on = ast.literal_eval(second.stdout.split("LOADED_ON")[1].strip())
    assert len(loaded_on) == 6 and sum(name.startswith("lmprobe-jax-load") for name in loaded_on) == 1, loaded_on


def test_a_program_from_jaxs_cache_is_not_kept_as_an_executable(tmp_path):
    """A program JAX's persistent cache already holds (an earlier version's, say) comes back loaded, not
    compiled, and on XLA:CPU such an executable serialises without its kernels: kept as a file, it failed the
    next process at its first run (NOT_FOUND: Function ... not found). Every process gives the same fit."""
    env = {"LMPROBE_JAX_CACHE": str(tmp_path), "LMPROBE_JAX_COMPILATION_CACHE": ""}
    # The first process compiles as a plain jit would: into JAX's cache, no executable of ours.
    plain = "_aot._compiled = lambda jitted, kwargs: (jitted.lower(**kwargs).compile(), False)"
    seeded = _run(TRACED.replace("built, loaded_on = [], []", "built, loaded_on = [], []\n" + plain), env)
    runs = [seeded] + [_run(TRACED, env) for _ in range(2)]
    assert all(run.returncode == 0 for run in runs), runs[1].stderr + runs[2].stderr
    assert len({run.stdout.split("COEF")[1].split("\n")[0] for run in runs}) == 1


BOUNDED = """
import numpy as np, jax, lmprobe_jax.functional as F
rng = np.random.default_rng(0)
for n in (40, 90, 200, 400, 800):  # five row buckets: five solve_layers programs
    X = rng.normal(size=(n, 3)).astype(np.float32)
    np.asarray(F.fit_logistic(X, (X[:, 0] > 0).astype(int), 1.0).coef)
    names = [e.hlo_modules()[0].name for e in jax.devices()[0].client.live_executables()]
    print("LIVE", sum("solve_layers" in name for name in names))
"""


def test_a_process_keeps_a_bounded_number_of_the_solvers_executables(tmp_path):
    """With the cache on, each solver's executables are let go beyond LMPROBE_JAX_MAX_PROGRAMS (JAX's
    caches of its traces held every one: ~900 memory maps apiece, toward vm.max_map_count)."""
    proc = _run(BOUNDED, {"LMPROBE_JAX_CACHE": str(tmp_path), "LMPROBE_JAX_COMPILATION_CACHE": "",
                          "LMPROBE_JAX_MAX_PROGRAMS": "2"})
    assert proc.returncode == 0, proc.stderr
    assert [int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("LIVE")] == [1, 2, 2, 2, 2]


PREFETCHED = """
import numpy as np, jax
import lmprobe_jax.functional as F
from lmprobe_jax.functional import _aot
F.fit_logistic(np.eye(20, 2, dtype=np.float32), np.arange(20) % 2)  # turns the cache on
one_more = jax.jit(lambda x: x + 1)
for n in (1, 2, 3, 4):
    _aot.call(one_more, x=np.zeros(n, np.float32))  # four executables kept on disk
_aot._LOADED.clear()
for n in (1, 2, 3, 4):  # four loads whose calls never come
    _aot.prefetch(one_more, x=jax.ShapeDtypeStruct((n,), np.float32))
print("LOADING", len(_aot._LOADING))
print("RESULT", np.asarray(_aot.call(one_more, x=np.ones(4, np.float32))).tolist())
print("LOADING", len(_aot._LOADING))
"""


def test_loads_awaiting_their_call_are_bounded(tmp_path):
    """A prefetched load whose call never comes (an exception between them) is let go once newer loads
    arrive: at most LMPROBE_JAX_MAX_PROGRAMS await, and the call that comes takes its own."""
    proc = _run(PREFETCHED, {"LMPROBE_JAX_CACHE": str(tmp_path), "LMPROBE_JAX_COMPILATION_CACHE": "",
                             "LMPROBE_JAX_MAX_PROGRAMS": "2"})
    assert proc.returncode == 0, proc.stderr
    assert [line for line in proc.stdout.splitlines() if line.startswith(("LOADING", "RESULT"))] == [
        "LOADING 2", "RESULT [2.0, 2.0, 2.0, 2.0]", "LOADING 1"]


def test_persistent_cache_opt_out_and_the_users_choice_win(tmp_path):
    proc = _run(FIT, {"LMPROBE_JAX_CACHE": str(tmp_path), "LMPROBE_JAX_COMPILATION_CACHE": "0"})
    assert proc.returncode == 0 and "DIR None" in proc.stdout and not (tmp_path / "jax").exists()
    mine = tmp_path / "mine"
    proc = _run(FIT, {"LMPROBE_JAX_CACHE": str(tmp_path), "LMPROBE_JAX_COMPILATION_CACHE": "",
                      "JAX_COMPILATION_CACHE_DIR": str(mine)})
    assert proc.returncode == 0 and f"DIR {mine}" in proc.stdout and not (tmp_path / "jax").exists()
    moved = tmp_path / "elsewhere"
    proc = _run(FIT, {"LMPROBE_JAX_COMPILATION_CACHE": str(moved)})
    assert proc.returncode == 0 and f"DIR {moved}" in proc.stdout and any(moved.iterdir())


def test_persistent_cache_refuses_a_directory_others_can_write(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    proc = _run(FIT, {"LMPROBE_JAX_COMPILATION_CACHE": str(shared)})
    assert proc.returncode == 0 and "DIR None" in proc.stdout
    assert "not a directory that only you can write to" in proc.stderr and not any(shared.iterdir())
