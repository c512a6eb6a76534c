from pathlib import Path

import numpy as np
import pytest

import lmprobe_jax.functional as F

X = np.random.default_rng(0).normal(size=(2, 20, 3)).astype(np.float32)
y = np.arange(20) % 2


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: F.fit_logistic(np.where(X > 2, np.nan, X), y), "NaN or infinity"),
        (lambda: F.fit_logistic(np.where(X > 2, np.inf, X), y), "NaN or infinity"),
        (lambda: F.fit_logistic(X, np.zeros(20)), "single class"),
        (lambda: F.fit_logistic(X, y[:-1]), "19 entries but X has 20 samples"),
        (lambda: F.fit_logistic(X[0, 0], y), "expected \\(N, D\\)"),
        (lambda: F.fit_logistic(X[None], y), "4-D"),
        (lambda: F.fit_logistic(X, np.arange(20) % 3), "3 classes.*fit_multinomial"),
        (lambda: F.fit_logistic(X, y + 0.5), "non-integer floats.*fit_ridge"),
        (lambda: F.fit_logistic(X, y, C=0.0), "C must be finite and > 0"),
        (lambda: F.fit_logistic(X, y, C=[[1.0]]), "scalar or a 1-D grid"),
        (lambda: F.fit_logistic(X, y, sample_weight=-np.ones(20)), "non-negative"),
        (lambda: F.fit_logistic(X, y, max_iter=0), "max_iter must be a positive integer"),
        (lambda: F.fit_logistic(X.astype(str), y), "expected a floating array"),
        (lambda: F.fit_ridge(X, y, alpha=-1), "alpha must be finite and > 0"),
        (lambda: F.fit_ridge(X, np.zeros(20, int)), "single class"),
        (lambda: F.cross_validate_ridge(X, np.arange(20) % 3, scoring="roc_auc"), "'mse' or 'accuracy'"),
        (lambda: F.cross_validate_ridge(X, y + 0.5, scoring="accuracy"), "use 'mse'"),
        (lambda: F.fit_multinomial(X, np.zeros(20)), "single class"),
        (lambda: F.fit_mass_mean(X, np.ones(20)), "single class"),
        (lambda: F.stratified_folds(y, 11), "fewer than n_folds=11"),
        (lambda: F.cross_validate_logistic(X, np.arange(20) % 3, scoring="roc_auc"), "not available"),
        (lambda: F.fit_logistic(X, y, layer_batch_size=0), "layer_batch_size must be a positive"),
        (lambda: F.cross_validate_logistic(X, y, folds=np.arange(20) % 2, groups=np.arange(20)), "groups only"),
        (lambda: F.cross_validate_logistic(X, y, folds=np.zeros(20)), "at least two folds"),
    ],
)
def test_bad_input_raises_clear_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_predict_checks_shapes():
    fit = F.fit_logistic(X, y)
    with pytest.raises(ValueError, match="expects"):
        F.decision_function(fit, X[:, :, :2])
    with pytest.raises(ValueError, match="3 layers but the fit has 2"):
        F.decision_function(fit, np.concatenate([X, X[:1]]))
    with pytest.raises(TypeError, match="expected a fit"):
        F.predict((1, 2), X)


@pytest.mark.parametrize("check", ["check_activations", "host_activations"])
def test_finite_check_is_exact_when_the_sum_overflows(check):
    # Finiteness is first tested through the sum of X; finite entries whose sum overflows must still
    # pass, and a NaN among them must still be caught.
    from lmprobe_jax.functional import _checks

    check_activations = getattr(_checks, check)
    big = np.full((2, 20, 3), 3e38, np.float32)
    assert check_activations(big)[0].shape == (2, 20, 3)
    big[1, 5, 2] = np.nan
    with pytest.raises(ValueError, match=r"NaN or infinity \(first at \(layer, row, col\) \(1, 5, 2\)\)"):
        check_activations(big)
    half = np.full((20, 3), 6e4, np.float16)  # a float16 cache near its limit: summed in float32
    assert check_activations(half)[0].dtype == np.float16


def test_a_float16_x_is_checked_without_a_float32_copy():
    # XLA's CPU backend widens a float16 reduction's operand as a whole; the check sums it in chunks of
    # 2**20 entries. Here 4 full chunks and a remainder (4,197,000 entries): a bad entry in the first three
    # chunks and the remainder is found, and the compiled check holds about one float32 chunk (4 MB), not a
    # float32 copy of X (16.8 MB).
    import jax

    from lmprobe_jax.functional import _checks

    shape = (3, 1000, 1399)
    lowered = _checks._sum_is_finite.lower(jax.ShapeDtypeStruct(shape, np.float16))
    assert lowered.compile().memory_analysis().temp_size_in_bytes <= (1 << 20) * 4 + 4096
    half = np.random.default_rng(0).normal(size=shape).astype(np.float16)
    assert bool(_checks._sum_is_finite(half))
    for flat_index in (0, (1 << 20) + 5, 2 * (1 << 20) + 7, half.size - 1):
        for bad in (np.inf, -np.inf, np.nan):
            broken = half.copy()
            broken.reshape(-1)[flat_index] = bad
            assert not bool(_checks._sum_is_finite(broken)), (flat_index, bad)


def _aligned_copy(a: np.ndarray) -> np.ndarray:
    buf = np.empty(a.nbytes + 64, np.uint8)
    start = (-buf.ctypes.data) % 64
    out = buf[start : start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def test_activations_are_not_shared_with_a_writeable_numpy_array():
    # On the CPU, jax.device_put shares a 64-byte aligned numpy buffer (jax-ml/jax#37830): writes to X
    # after a call returned would reach the solver's copy, which runs asynchronously.
    from lmprobe_jax.functional._checks import check_activations

    Xa = _aligned_copy(X)
    assert Xa.ctypes.data % 64 == 0 and Xa.flags.writeable
    X_device, _ = check_activations(Xa)
    Xa[...] = np.nan
    np.testing.assert_array_equal(np.asarray(X_device), X)

    frozen = _aligned_copy(X)
    frozen.flags.writeable = False  # nothing can write to it: used in place
    np.testing.assert_array_equal(np.asarray(check_activations(frozen)[0]), X)

    # Predictions take numpy X the same way.
    import lmprobe_jax.functional as F

    fit = F.fit_logistic(X, y, 1.0)
    expected = np.asarray(F.decision_function(fit, X))
    Xa = _aligned_copy(X)
    z = F.decision_function(fit, Xa)
    Xa[...] = np.nan
    np.testing.assert_array_equal(np.asarray(z), expected)


def _smaps_entry(address: int) -> str:
    """This process's /proc/self/smaps entry for the mapping that holds ``address``."""
    with open("/proc/self/smaps") as smaps:
        entry, inside = [], False
        for line in smaps:
            if "-" in line.split()[0] and ":" not in line.split()[0]:  # a mapping's header line
                start, end = (int(v, 16) for v in line.split()[0].split("-"))
                if inside:
                    break
                inside = start <= address < end
            if inside:
                entry.append(line)
    return "".join(entry)


def test_padded_copies_ask_for_transparent_huge_pages_where_the_kernel_has_them():
    # The copy that fills a fresh 4 kB-page buffer faults 512 times per 2 MB (tall's 63 MB: 20 ms filled,
    # 5 ms in huge pages): aligned_empty asks for huge pages where the kernel gives them on request.
    from lmprobe_jax.functional._sources import _huge_pages, aligned_empty

    try:
        mode = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        pytest.skip("no transparent huge pages (not Linux)")
    assert _huge_pages() == ("[never]" not in mode)
    if "[never]" in mode:
        pytest.skip("transparent huge pages are off here")
    buffer = aligned_empty((8, 2**20), np.float32)  # 32 MB
    assert buffer.ctypes.data % 4096 == 0 and not buffer.any()
    flags = _smaps_entry(buffer.ctypes.data).split("VmFlags:")[1].split()
    assert "hg" in flags  # madvise(MADV_HUGEPAGE)


def test_activations_from_numpy_survive_their_source():
    # The device array must outlive the caller's (device_put shares some host buffers on the CPU), and
    # non-contiguous, unaligned and half-precision inputs keep their values.
    import gc

    from lmprobe_jax.functional._checks import check_activations

    rng = np.random.default_rng(5)
    source = rng.normal(size=(3, 40, 24)).astype(np.float32)
    for given in (source.copy(), source[:, ::2], source.copy()[..., 1:].copy(), source.astype(np.float16)):
        expected = np.array(given)
        X_device, _ = check_activations(given)
        del given
        gc.collect()
        churn = [np.full(source.shape, np.nan, np.float32) for _ in range(4)]  # reuse of freed memory
        np.testing.assert_array_equal(np.asarray(X_device), expected)
        assert X_device.dtype == expected.dtype
        del churn


def test_a_finished_call_s_padded_copy_is_let_go_before_the_next_is_made(monkeypatch):
    # JAX drops its reference to a buffer it used in place only at a garbage pass (its gc callback): without
    # one, a sweep's previous padded copy was still resident while the next call filled its own.
    import gc
    import time
    import weakref

    from lmprobe_jax.functional import _checks

    made, alive_when_made = [], []
    make = _checks.aligned_empty

    def recorded(shape, dtype):
        out = make(shape, dtype)
        alive_when_made.append(sum(ref() is not None for ref in made))
        made.append(weakref.ref(out.base))  # the array JAX's in-place buffer holds
        return out

    monkeypatch.setattr(_checks, "aligned_empty", recorded)
    rng = np.random.default_rng(7)
    enabled = gc.isenabled()
    gc.disable()  # no automatic pass between the calls: only the library's own may let the copies go
    try:
        for n in (101, 102, 103):  # each padded to 104 rows
            Xn = rng.normal(size=(2, n, 6)).astype(np.float32)
            fit = F.fit_logistic(Xn, (Xn[0, :, 0] > 0).astype(int))
            np.asarray(fit.coef)  # the call's work is done
            del fit
            time.sleep(0.3)  # JAX's own thread releases the buffer once the work is done (a few ms at most)
    finally:
        if enabled:
            gc.enable()
    assert alive_when_made == [0, 0, 0]


def test_a_cpu_jax_array_is_padded_on_the_host(monkeypatch):
    # XLA's pad writes a fresh buffer page by page (110 MB: 47 ms); a JAX array on the default CPU device
    # takes the host's page-aligned padded copy instead (16 ms), which device_put then uses in place.
    import jax
    import jax.numpy as jnp

    from lmprobe_jax.functional._checks import bucket_rows, check_bucketed_activations

    n = 1001
    assert bucket_rows(n) > n
    source = np.random.default_rng(6).normal(size=(2, n, 24)).astype(np.float32)

    def no_device_pad(*args, **kwargs):
        raise AssertionError("padded with XLA's pad")

    for given in (source, source.astype(jnp.bfloat16)):
        with monkeypatch.context() as patch:
            patch.setattr(jnp, "pad", no_device_pad)
            X_device, _, rows = check_bucketed_activations(jnp.asarray(given))
        assert rows == n and X_device.shape == (2, bucket_rows(n), 24) and X_device.dtype == given.dtype
        assert X_device.unsafe_buffer_pointer() % 4096 == 0  # the host's aligned copy, used in place
        expected = np.zeros(X_device.shape, given.dtype)
        expected[:, :n] = given
        np.testing.assert_array_equal(np.asarray(X_device), expected)

    yn = (source[0, :, 0] > 0).astype(int)
    from_numpy = F.fit_logistic(source, yn, 1.0)
    from_jax = F.fit_logistic(jax.device_put(source), yn, 1.0)
    np.testing.assert_array_equal(np.asarray(from_jax.coef), np.asarray(from_numpy.coef))
