"""Fuzzing the functional layer's public inputs: every case gives a clear error or a correct result.

Hypothesis draws inputs per class (activation shapes and dtypes, label encodings, sample weights,
regularisation values, metric inputs), mixing valid and invalid ones. Each case ends in one of:

* a clear error: ``ValueError`` / ``TypeError`` whose message names the argument at fault;
* a result checked against a float64 reference (scikit-learn or the closed form / optimality condition);
* a result its diagnostics flag (``converged`` False), not compared;
* anything else fails the test (silent wrong: a result that is not right, or an unclear exception).

Shapes stay within a few row buckets and widths, so the solvers compile a handful of programs. The counts
per class (cases, clear errors, checked results) are written to ``$LMPROBE_JAX_FUZZ_COUNTS`` when set.
"""

import json
import os
import re
from collections import Counter

import _tolerance as T
import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

import lmprobe_jax.functional as F

COUNTS: dict[str, Counter] = {}
SETTINGS = settings(max_examples=int(os.environ.get("LMPROBE_JAX_FUZZ_EXAMPLES", "25")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], derandomize=True)
ARGUMENT = re.compile(r"\b(X|y|C|alpha|sample_weight|scores|shrinkage|calibration_C|folds|n_classes|labels?|classes?)\b")


def outcome(kind: str, run, check) -> None:
    """Run ``run()``; a ValueError/TypeError naming an argument counts as a clear error, a result must pass
    ``check(result)`` (its assertions), anything else propagates."""
    counts = COUNTS.setdefault(kind, Counter())
    counts["cases"] += 1
    try:
        result = run()
    except (ValueError, TypeError) as err:
        assert ARGUMENT.search(str(err)), f"unclear error for {kind}: {err!r}"
        counts["clear errors"] += 1
        return
    counts["flagged unconverged" if check(result) == "flagged" else "checked results"] += 1


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    yield
    path = os.environ.get("LMPROBE_JAX_FUZZ_COUNTS")
    if path:
        with open(path, "w") as handle:
            json.dump({k: dict(v) for k, v in COUNTS.items()}, handle, indent=1)


def assert_near_optimal(X, y01, coef, intercept, C, sw=None, tol=1e-7):
    """A float32 fit of ``X`` (float64 here) stopped at ``tol``: its objective within the derived gap of the
    float64 optimum's (T.glm_region: the stopping test's and the float32 gradient's reach, X's cast), plus
    the float64 evaluation's rounding. scikit-learn's float64 fit is no better than that optimum, so a fit
    that beat it by more would be as wrong as one that lost."""
    region = T.glm_region(X, y01, C, tol=tol, sample_weight=sw)
    ours = T.objective(region.problem, T.as_theta(coef, intercept))
    best = region.objective
    assert best - 1e-12 * abs(best) <= ours <= best + region.gap + 1e-12 * abs(best), (ours, best, region.gap)


def assert_ridge_matches(coef, X, targets, alpha, sw=None):
    """A float32 refined direct solve of float64 ``X`` (``targets`` ``(N,)`` or ``(N, T)``) against
    scikit-learn's float64 ``Ridge``: within the solve's derived reach with X's cast (T.ridge_region) plus
    scikit-learn's own float64 error (T.ridge_reference_error), per target."""
    region = T.ridge_region(X, np.asarray(targets, float).T, alpha, sample_weight=sw)
    ref = np.atleast_2d(Ridge(alpha=alpha, solver="cholesky").fit(X, targets, sample_weight=sw).coef_)
    ref_coef, _ = T.ridge_reference_error(region, len(X))
    coef = np.atleast_2d(np.asarray(coef, float))
    for t in range(len(ref)):
        T.assert_within(coef[t], ref[t], region.radius[t] + ref_coef[t], f"ridge target {t}")


# --- activations: shapes, dtypes, values ----------------------------------------------------------------
DTYPES = ["float32", "float32", "float64", "float16", "bfloat16", "int32", "bool", "complex64", "object"]


@st.composite
def activations(draw):
    # Valid choices drawn more often than invalid ones, so both kinds of outcome get cases.
    ndim = draw(st.sampled_from([2, 2, 3, 3, 1, 4]))
    n = draw(st.sampled_from([30, 48, 48, 1, 0]))
    d = draw(st.sampled_from([3, 5, 5, 0]))
    shape = {1: (n,), 2: (n, d), 3: (2, n, d), 4: (1, 2, n, d)}[ndim]
    dtype = draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    X = rng.normal(size=shape)
    poison = draw(st.sampled_from([None, None, None, np.nan, np.inf, 1e3]))
    if poison is not None and X.size:
        X.flat[draw(st.integers(0, X.size - 1))] = poison
    if dtype == "bfloat16":
        return X.astype(jax.numpy.bfloat16)
    if dtype == "object":
        return X.astype(object)
    return X.astype(dtype)


@SETTINGS
@given(X=activations(), seed=st.integers(0, 2**16))
def test_fit_logistic_activations(X, seed):
    rng = np.random.default_rng(seed)
    n = X.shape[-2] if X.ndim >= 2 else 0
    y = rng.integers(0, 2, size=max(n, 1))[:n] if n else np.zeros(0, int)
    if n >= 2:
        y[:2] = [0, 1]

    def check(fit):
        if not np.all(fit.converged):
            return "flagged"
        X64 = np.asarray(X, np.float64).reshape((-1,) + X.shape[-2:])
        assert np.all(np.isfinite(fit.coef)) and fit.coef.shape[-1] == X.shape[-1]
        coef = np.asarray(fit.coef, np.float64).reshape(X64.shape[0], -1)
        intercept = np.asarray(fit.intercept, np.float64).reshape(-1)
        for layer in range(X64.shape[0]):
            assert_near_optimal(X64[layer], y, coef[layer], intercept[layer], 1.0)

    outcome("activations (shape, dtype, NaN/inf)", lambda: F.fit_logistic(X, y, 1.0), check)


# --- labels: encodings ---------------------------------------------------------------------------------
@st.composite
def labels(draw, n):
    kind = draw(st.sampled_from(["int01", "int_pm1", "int_big", "str", "bool", "float_int", "float_frac",
                                 "one_class", "three_class", "wrong_length", "two_d", "nan"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    base = rng.integers(0, 2, size=n)
    base[:2] = [0, 1]
    return kind, {
        "int01": base, "int_pm1": 2 * base - 1, "int_big": base * 1000 + 7, "str": np.where(base, "yes", "no"),
        "bool": base.astype(bool), "float_int": base.astype(float), "float_frac": base + 0.5,
        "one_class": np.zeros(n, int), "three_class": np.arange(n) % 3, "wrong_length": base[:-1],
        "two_d": base[:, None], "nan": np.where(base, np.nan, 0.0),
    }[kind]


@pytest.fixture(scope="module")
def layer():
    rng = np.random.default_rng(0)
    return rng.normal(size=(48, 4)) * np.array([0.5, 1.0, 2.0, 1.0])


@SETTINGS
@given(data=st.data())
def test_label_encodings(layer, data):
    kind, y = data.draw(labels(48))
    positive = {"int01": 1, "int_pm1": 1, "int_big": 1007, "str": "yes", "bool": True, "float_int": 1.0}.get(kind)

    def check_binary(fit):
        assert positive is not None, f"{kind} labels were accepted as binary"
        if not np.all(fit.converged):
            return "flagged"
        y01 = (np.asarray(y) == positive).astype(int)
        assert_near_optimal(layer, y01, np.asarray(fit.coef, float), float(fit.intercept), 1.0)

    outcome("labels, binary logistic", lambda: F.fit_logistic(layer.astype(np.float32), y, 1.0), check_binary)

    def check_multi(fit):
        classes = np.unique(y)
        assert kind in ("int01", "int_pm1", "int_big", "str", "bool", "float_int", "three_class")
        # Two classes: the symmetric two-row model at C is scikit-learn's binary one at 2 C (see its docstring).
        C = 1.0 if classes.size > 2 else 2.0
        ref = LogisticRegression(C=C, tol=1e-12, max_iter=10000).fit(layer, y)
        coef, intercept = ref.coef_, ref.intercept_
        if classes.size == 2:  # scikit-learn's binary w at 2 C is the symmetric softmax [-w / 2, w / 2] at C
            coef, intercept = np.vstack([-coef, coef]) / 2, np.r_[-intercept, intercept] / 2
        # Ours within the float32 region of the float64 softmax optimum, scikit-learn's as far as its own
        # gradient says; a softmax moves by at most half the largest logit's move, plus its own rounding.
        region = T.glm_region(layer, y, 1.0, tol=1e-7, multinomial=True)
        reach = region.radius + T.reference_radius(region, coef, intercept)
        T.assert_within(T.as_theta(fit.coef, fit.intercept), T.as_theta(coef, intercept), reach, "multinomial")
        proba = np.asarray(F.predict_proba(fit, layer.astype(np.float32)))
        atol = 0.5 * T.decision_error(layer, region.optimum, reach).max() + 8 * T.U32
        np.testing.assert_allclose(proba, ref.predict_proba(layer), atol=atol)

    outcome("labels, multinomial", lambda: F.fit_multinomial(layer.astype(np.float32), y, 1.0), check_multi)

    def check_ridge(fit):
        assert kind not in ("one_class", "wrong_length", "two_d", "nan", "str")
        if kind in ("float_int", "float_frac"):  # float targets: regression
            targets = np.asarray(y, float)
        elif np.unique(y).size == 2:
            targets = np.where(np.asarray(y) == np.unique(y)[1], 1.0, -1.0)
        else:  # one-vs-all targets
            targets = np.where(np.asarray(y)[:, None] == np.unique(y)[None], 1.0, -1.0)
        assert_ridge_matches(fit.coef, layer, targets, 1.0)

    outcome("labels, ridge", lambda: F.fit_ridge(layer.astype(np.float32), y, 1.0), check_ridge)


# --- sample weights and regularisation values -----------------------------------------------------------
WEIGHTS = st.sampled_from(["none", "ones", "ints", "uniform", "some_zero", "all_zero", "negative", "nan",
                           "inf", "short", "two_d"])
REG = st.one_of(
    st.floats(min_value=1e-4, max_value=1e4),
    st.sampled_from([0.0, -1.0, float("nan"), float("inf"), "grid", "grid_bad", "empty", "two_d", "string"]),
)


def make_weights(kind, rng, n):
    return {
        "none": None, "ones": np.ones(n), "ints": rng.integers(1, 4, n), "uniform": rng.uniform(0.1, 3, n),
        "some_zero": np.where(np.arange(n) % 4 == 0, 0.0, 1.0), "all_zero": np.zeros(n),
        "negative": -np.ones(n), "nan": np.full(n, np.nan), "inf": np.full(n, np.inf), "short": np.ones(n - 1),
        "two_d": np.ones((n, 1)),
    }[kind]


def make_reg(value):
    return {"grid": [0.01, 1.0, 100.0], "grid_bad": [1.0, -1.0], "empty": [], "two_d": [[1.0]],
            "string": "1.0"}.get(value, value) if isinstance(value, str) else value


@SETTINGS
@given(weights=WEIGHTS, reg=REG, seed=st.integers(0, 2**16))
def test_weights_and_regularisation(layer, weights, reg, seed):
    rng = np.random.default_rng(seed)
    y = (layer[:, 0] + rng.normal(size=48) > 0).astype(int)
    sw = make_weights(weights, rng, 48)
    C = make_reg(reg)
    X32 = layer.astype(np.float32)

    def check_logistic(fit):
        if not np.all(fit.converged):
            return "flagged"
        swv = np.ones(48) if sw is None else np.asarray(sw, float)
        grid = np.atleast_1d(np.asarray(C, float))
        coef = np.asarray(fit.coef, float).reshape(grid.size, -1)
        intercept = np.asarray(fit.intercept, float).reshape(-1)
        for i, c in enumerate(grid):
            assert_near_optimal(layer, y, coef[i], intercept[i], c, swv)

    outcome("sample_weight x C, logistic", lambda: F.fit_logistic(X32, y, C, sample_weight=sw), check_logistic)

    def check_ridge(fit):
        swv = np.ones(48) if sw is None else np.asarray(sw, float)
        grid = np.atleast_1d(np.asarray(C, float))
        coef = np.asarray(fit.coef, float).reshape(grid.size, -1)
        for i, a in enumerate(grid):
            assert_ridge_matches(coef[i], layer, 2.0 * y - 1, a, swv)

    outcome("sample_weight x alpha, ridge", lambda: F.fit_ridge(X32, y, C, sample_weight=sw), check_ridge)

    def check_mass_mean(fit):
        swv = np.ones(48) if sw is None else np.asarray(sw, float)
        direction = np.average(layer[y == 1], 0, swv[y == 1]) - np.average(layer[y == 0], 0, swv[y == 0])
        # Weighted class means of float32 data: within their rounding (T.mass_mean_reach) and X's cast.
        cast = sum(T.U32 * np.average(np.abs(layer[y == c]), 0, swv[y == c]) for c in (0, 1))
        T.assert_within(fit.direction, direction, T.mass_mean_reach(X32, y, 1.0, swv)[1] + np.linalg.norm(cast),
                        "mass-mean direction")
        assert np.all(np.isfinite(fit.coef))

    outcome("sample_weight x calibration_C, mass-mean",
            lambda: F.fit_mass_mean(X32, y, sample_weight=sw, calibration_C=C), check_mass_mean)


# --- metrics --------------------------------------------------------------------------------------------
@SETTINGS
@given(label_kind=st.sampled_from(["01", "01", "bool", "float01", "pm1", "012"]),
       score_kind=st.sampled_from(["finite", "finite", "ties", "half", "nan", "inf"]),
       weights=st.one_of(st.just("none"), st.just("uniform"), WEIGHTS), seed=st.integers(0, 2**16))
def test_metrics(label_kind, score_kind, weights, seed):
    rng = np.random.default_rng(seed)
    n = 40
    base = rng.integers(0, 2, n)
    base[:2] = [0, 1]
    y = {"01": base, "bool": base.astype(bool), "pm1": 2 * base - 1, "012": np.arange(n) % 3,
         "float01": base.astype(float)}[label_kind]
    scores = rng.normal(size=n)
    if score_kind == "ties":
        scores = np.round(scores)
    elif score_kind in ("nan", "inf"):
        scores[3] = np.nan if score_kind == "nan" else np.inf
    elif score_kind == "half":
        scores = scores.astype(np.float16)
    sw = make_weights(weights, rng, n)
    swv = None if sw is None else np.asarray(sw, float)

    # float32 arithmetic (float16 scores: their unit roundoff, in case they are scored in their own type):
    # a weighted mean of non-negative terms (accuracy; log-loss, whose per-sample terms carry a few ulps of
    # their own), a weighted AUROC from prefix sums (tests/_tolerance.py).
    unit = 2.0**-11 if score_kind == "half" else T.U32
    rtol = {"accuracy": T.mean_rounding(n, unit), "log-loss": T.mean_rounding(n, unit) + 4 * unit,
            "AUROC": T.auc_rounding(n, unit)}

    def check(reference, metric):
        def run_check(result):
            assert label_kind in ("01", "bool", "float01") and score_kind not in ("nan", "inf")
            assert swv is None or (swv.shape == (n,) and np.isfinite(swv).all() and (swv >= 0).all()
                                   and (swv > 0).any())
            try:
                expected = reference()
            except ValueError:  # undefined for scikit-learn (the weights leave one class): ours is NaN
                assert np.isnan(float(result))
                return
            np.testing.assert_allclose(float(result), expected, rtol=rtol[metric], atol=0)

        return run_check

    y01 = np.asarray(y, float)
    outcome("metrics, accuracy", lambda: F.binary_accuracy(y, scores, sw),
            check(lambda: accuracy_score(y01, scores.astype(float) > 0, sample_weight=swv), "accuracy"))
    outcome("metrics, log-loss", lambda: F.binary_log_loss(y, scores, sw),
            check(lambda: log_loss(y01, 1 / (1 + np.exp(-scores.astype(float))), sample_weight=swv, labels=[0, 1]),
                  "log-loss"))
    outcome("metrics, AUROC", lambda: F.roc_auc(y, scores, sw),
            check(lambda: roc_auc_score(y01, scores.astype(float), sample_weight=swv), "AUROC"))
