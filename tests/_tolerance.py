r"""Tolerances derived from the arithmetic, for comparing float32 fits with each other and with float64.

Two float32 solves of one problem that order their sums differently (all layers at once or one at a
time, vmap or a loop, jit or eager, another CPU's vector width) do not agree to a fixed number of
digits: each stops somewhere inside the region that its stopping test and its rounding allow, and only
that region is promised. These helpers compute the region in float64 from the problem itself, so a test
asserts what the solver guarantees, on any CPU, and still fails on a real bug (another layer's probe,
another ``C``'s, a fold trained on its held-out rows: each lies far outside).

**Rounding model.** Rounding errors are independent, mean zero and at most ``u = 2^-24`` relative (the
model of Higham & Mary, "A new approach to probabilistic rounding error analysis", SIAM J. Sci. Comput.
41(5), 2019, where it gives ``lambda sqrt(n) u sum_i |t_i|`` for an ``n``-term sum, for any summation
order, with probability at least ``1 - 2n exp(-lambda^2 (1 - u)^2 / 2)``: ``1 - 3e-14 n`` at
``lambda = 8``). With data that is itself random (the tests' rows are i.i.d. draws), the partial sums
of a sum whose terms nearly cancel stay small and the bound sharpens to
``lambda u (sqrt(n) |sum_i t_i| + sum_i |t_i|)`` (Higham & Mary, "Sharper probabilistic backward error
analysis for basic linear algebra kernels with random data", SIAM J. Sci. Comput. 42(5), 2020: backward
error ``~ (|mean| sqrt(n) + 1) u``): :func:`dot_error`. Sums of non-negative terms (metrics) keep the
2019 form (:func:`sum_rounding`). Independent errors that enter a sum (one per sample: its linear
predictor's rounding, the cast of its data to float32, its sigmoid's few ulps) add up like a random walk,
``lambda sqrt(sum_i e_i^2)`` (Azuma-Hoeffding): :func:`independent_sum`.

**Logistic / softmax (Newton-CG).** The solver (``lmprobe_jax.functional._newton_cg``) stops when the
max-abs entry of its float32 gradient of ``F = C sum_i s_i loss_i + ||W||^2 / 2`` is at most
``tol * C * sum_i s_i`` (scikit-learn's ``tol``, on its mean-loss objective), or at the float floor.
The float32 gradient is off the exact one by the rounding bound ``r`` (:func:`gradient_rounding`:
the products ``X^T (s * residual)``, the residual's error through the linear predictor and the loss's
curvature, the data's cast). So the exact gradient has 2-norm at most
``g = sqrt(P) tol C sum s + ||r||_2`` (``P`` free parameters). ``F`` is strongly convex: with ``mu``
the smallest eigenvalue of its Hessian at the float64 optimum (on the directions that change the
model; the softmax intercepts' common shift does not), such a point lies within ``g / mu`` of the
optimum and its objective within ``g^2 / (2 mu)`` of the least. (``mu`` at the optimum stands for the
segment's: the radius is far too small for the curvature to change.) Two solves lie within the sum of
their radii of each other. Where the rounding term dominates (it does at ``tol = 1e-7``) this is "a few
ulps times the condition number" made exact for the problem at hand.

**Ridge (direct solve).** A factorisation of the centred Gram matrix, then one step of iterative
refinement against the normal equations' residual computed in float32. The error left is that
residual's rounding through ``(Xc^T S Xc + alpha I)^-1`` on the row space of ``Xc`` (solution and error
lie there), plus the square of the unrefined solve's relative error (``kappa`` times the Gram's
rounding): :func:`ridge_region`.

Everything here is float64 numpy, independent of the library under test.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

U32 = float(np.finfo(np.float32).eps) / 2  # float32 unit roundoff, 2^-24
U64 = float(np.finfo(np.float64).eps) / 2
LAMBDA = 8.0  # Higham & Mary's confidence parameter (see the module docstring)


def unit_roundoff(precision: str) -> float:
    return {"float32": U32, "float64": U64}[precision]


def sum_rounding(n: int, unit: float = U32) -> float:
    """Bound on an ``n``-term sum's rounding error, per unit of ``sum |terms|`` (any data; sums of
    non-negative terms)."""
    return LAMBDA * np.sqrt(n) * unit


def dot_error(terms, axis: int = -1, unit: float = U32) -> np.ndarray:
    """Bound on the rounding error of ``terms.sum(axis)`` for random data (see the module docstring):
    ``lambda u (sqrt(n) |sum t| + sum |t|)``."""
    terms = np.asarray(terms, np.float64)
    n = terms.shape[axis]
    return LAMBDA * unit * (np.sqrt(n) * np.abs(terms.sum(axis)) + np.abs(terms).sum(axis))


def gram_error(A, weights=None, *, cast: bool = True, unit: float = U32) -> np.ndarray:
    """Entrywise bound ``(m, m)`` on a float32 ``A^T diag(weights) A``'s rounding (:func:`dot_error` of each
    entry's ``n`` products, without forming them; with ``cast``, also the inputs' casts). Its 2-norm bounds
    the error's 2-norm (``||E|| <= || |E| ||`` and ``|E| <= B`` entrywise give ``||E|| <= ||B||``)."""
    A = np.asarray(A, np.float64)
    w = np.ones(len(A)) if weights is None else np.asarray(weights, np.float64)
    G = (A * w[:, None]).T @ A
    bound = LAMBDA * unit * (np.sqrt(len(A)) * np.abs(G) + (np.abs(A) * np.abs(w)[:, None]).T @ np.abs(A))
    if cast:
        bound = bound + 2 * LAMBDA * unit * np.sqrt(((A * w[:, None]) ** 2).T @ (A**2))
    return bound


def independent_sum(bounds, axis: int = -1) -> np.ndarray:
    """Bound on a sum of independent, mean-zero errors each at most ``bounds``: ``lambda ||bounds||_2``."""
    return LAMBDA * np.sqrt(np.sum(np.square(bounds), axis=axis))


def mean_rounding(n: int, unit: float = U32) -> float:
    """Relative error bound of a weighted mean ``sum w_i v_i / sum w_i`` of ``n`` non-negative terms
    (each term and the weights one rounding, two sums, one division), per unit of ``sum w |v| / sum w``."""
    return 2 * sum_rounding(n, unit) + 4 * unit


def forward_rounding(want, n_layers: int = 4, width: int = 256) -> float:
    """How far two float32 forward passes of the same prompts that batch (and pad) them differently can
    be apart: each of the 2L + 1 writes to the residual stream (the embedding, then per block the
    attention's and the MLP's outputs) adds at most lambda u (sqrt(k) + 1) of the stream's scale
    (dot_error's random-data form, k the widest inner product: GPT-2's MLP, 4 x 64), and the tiny
    random models' sublayers (weights ~0.02) carry earlier errors on without amplifying them; pooling
    adds a float32 mean over at most 64 tokens."""
    scale = np.abs(want).max()
    return ((2 * n_layers + 1) * LAMBDA * U32 * (np.sqrt(width) + 1) + mean_rounding(64)) * scale


def storage_tolerance(want, storage_dtype: str) -> tuple[float, float]:
    """``(rtol, atol)`` between activations stored as ``storage_dtype`` and a float32 forward of the same
    prompts batched differently: rounding to the storage type is half its spacing, relative (2^-11 for
    float16, 2^-8 for bfloat16; float16's subnormals below 2^-14 are spaced 2^-24), on top of
    :func:`forward_rounding`."""
    unit, tiny = {"float32": (0.0, 0.0), "float16": (2.0**-11, 2.0**-25), "bfloat16": (2.0**-8, 0.0)}[storage_dtype]
    return unit, tiny + forward_rounding(want) * (1 + unit)


def auc_rounding(n: int, unit: float = U32) -> float:
    """Relative error bound of a weighted AUROC computed from ``n`` samples: ranks are exact; the
    weights' prefix sums (below each positive), the ties' sums, the sum of products over positives and the
    two class totals are sums of non-negative terms (``sum_rounding`` each, relative), then a product
    and a division."""
    return 4 * sum_rounding(n, unit) + 6 * unit


# ---------------------------------------------------------------------------------------------------
# L2-penalised logistic and softmax regression (scikit-learn's LogisticRegression objective)


class Problem(NamedTuple):
    """``F(theta) = C sum_i s_i loss_i + ||W||^2 / 2`` in float64, ``theta = [W, b]`` ``(K, D + 1)``.

    ``A`` is ``[X, 1]`` (``[X, 0]`` without intercept), ``Y`` ``(N, K)``: ``K = 1`` with 0/1 labels for the
    binary sigmoid, one-hot for softmax. ``basis`` ``(D + 1, m)``: when the problem is wide, an orthonormal
    basis of the rows of ``A`` and the intercept axis, which holds the optimum (``w* = -C X^T S r``) and on
    whose complement the Hessian is ``I``; the reference solve then runs in ``m`` dimensions.
    """

    A: np.ndarray
    Y: np.ndarray
    s: np.ndarray
    C: float
    softmax: bool
    fit_intercept: bool
    basis: np.ndarray | None

    @property
    def penalty(self) -> np.ndarray:
        """``(D + 1,)``: 1 on the coefficients; 0 on the intercept (1 without one: its column of ``A`` is 0,
        so it stays 0 and the Hessian stays invertible)."""
        return np.r_[np.ones(self.A.shape[1] - 1), 0.0 if self.fit_intercept else 1.0]


def problem(X, y, C, *, sample_weight=None, fit_intercept=True, multinomial=None) -> Problem:
    """The float64 problem that a fit of ``(X, y, C)`` solves; ``multinomial`` defaults to ``> 2`` classes."""
    X = np.asarray(X, np.float64)
    n, d = X.shape
    classes, codes = np.unique(np.asarray(y), return_inverse=True)
    softmax = classes.size > 2 if multinomial is None else bool(multinomial)
    Y = (codes[:, None] == np.arange(classes.size)).astype(float) if softmax else codes[:, None].astype(float)
    s = np.ones(n) if sample_weight is None else np.asarray(sample_weight, np.float64)
    A = np.hstack([X, np.full((n, 1), 1.0 if fit_intercept else 0.0)])
    basis = None
    if d + 1 > 2 * (n + 1) and d > 500:
        basis = np.linalg.qr(np.hstack([A.T[:, s > 0], np.eye(d + 1)[:, -1:]]))[0]
    return Problem(A, Y, s, float(C), softmax, bool(fit_intercept), basis)


def _probabilities(p: Problem, Z: np.ndarray) -> np.ndarray:
    if p.softmax:
        E = np.exp(Z - Z.max(axis=1, keepdims=True))
        return E / E.sum(axis=1, keepdims=True)
    return 0.5 * (1 + np.tanh(0.5 * Z))  # the sigmoid, without overflow


def _theta(p: Problem, theta) -> np.ndarray:
    return np.asarray(theta, np.float64).reshape(-1, p.A.shape[1])


def objective(p: Problem, theta) -> float:
    """:class:`Problem`'s ``F`` at ``theta`` (``(K, D + 1)``, or a fit's ``as_theta``)."""
    theta = _theta(p, theta)
    Z = p.A @ theta.T
    if p.softmax:
        top = Z.max(axis=1, keepdims=True)
        loss = np.log(np.exp(Z - top).sum(axis=1)) + top[:, 0] - (Z * p.Y).sum(axis=1)
    else:
        loss = np.logaddexp(0, -(2 * p.Y[:, 0] - 1) * Z[:, 0])
    return p.C * float(p.s @ loss) + 0.5 * float(np.sum(theta**2 * p.penalty))


def gradient(p: Problem, theta) -> np.ndarray:
    """``(K, D + 1)`` gradient of ``F``."""
    theta = _theta(p, theta)
    R = _probabilities(p, p.A @ theta.T) - p.Y
    return p.C * (R * p.s[:, None]).T @ p.A + theta * p.penalty


def _data_hessian(p: Problem, theta: np.ndarray, A: np.ndarray) -> np.ndarray:
    """``C sum_i s_i (d2 loss / dz2) (x) a_i a_i^T`` for design ``A`` (full or reduced), ``(K m, K m)``."""
    P = _probabilities(p, p.A @ theta.T)
    K, m = P.shape[1], A.shape[1]
    if p.softmax:
        w = p.C * p.s[:, None, None] * (np.einsum("nk,kl->nkl", P, np.eye(K)) - np.einsum("nk,nl->nkl", P, P))
        return np.einsum("nkl,nd,ne->kdle", w, A, A).reshape(K * m, K * m)
    return (A * (p.C * p.s * P[:, 0] * (1 - P[:, 0]))[:, None]).T @ A


def _reduced(p: Problem) -> tuple[np.ndarray, np.ndarray]:
    """The design and the penalty's matrix in the coordinates the reference solve uses."""
    if p.basis is None:
        return p.A, np.diag(p.penalty)
    return p.A @ p.basis, p.basis.T @ (p.penalty[:, None] * p.basis)


def _null(p: Problem, m: int) -> np.ndarray:
    """Orthonormal columns (in ``(K m)`` reduced coordinates) along which ``F`` is flat: the softmax
    intercepts' common shift. The intercept axis is the last column of the full coordinates and of the
    reduced basis alike (``basis`` ends with it: QR keeps it orthogonal to the rows before it only up to
    their span, so it is projected here)."""
    K = p.Y.shape[1]
    if not (p.softmax and p.fit_intercept):
        return np.zeros((K * m, 0))
    e = np.eye(p.A.shape[1])[-1] if p.basis is None else p.basis[-1]  # e_b in reduced coordinates
    q = np.kron(np.ones(K), e)
    return (q / np.linalg.norm(q))[:, None]


def optimum(p: Problem) -> np.ndarray:
    """The float64 optimum ``(K, D + 1)``: damped Newton to a gradient at float64's resolution.
    Softmax intercepts sum to zero (the convention of the solvers under test)."""
    A, pen = _reduced(p)
    K, m = p.Y.shape[1], A.shape[1]
    null = _null(p, m)
    beta = np.zeros((K, m))
    full = (lambda b: b) if p.basis is None else (lambda b: b @ p.basis.T)
    scale = p.C * p.s.sum() * max(1.0, np.abs(p.A).max())  # the gradient's float64 rounding grows with |X|
    for _ in range(200):
        theta = full(beta)
        R = _probabilities(p, p.A @ theta.T) - p.Y
        g = p.C * (R * p.s[:, None]).T @ A + beta @ pen
        if np.abs(g).max() <= 1e-13 * scale:
            break
        H = _data_hessian(p, theta, A) + np.kron(np.eye(K), pen) + null @ null.T
        step = -np.linalg.solve(H, g.ravel()).reshape(K, m)
        f0, slope, t = objective(p, theta), float(g.ravel() @ step.ravel()), 1.0
        # Armijo backtracking while the predicted decrease is resolved in float64 (below, the model is
        # quadratic to working precision and the full step is right).
        while -slope > 1e-13 * abs(f0) and objective(p, full(beta + t * step)) > f0 + 1e-4 * t * slope and t > 1e-12:
            t *= 0.5
        beta = beta + t * step
    else:
        raise RuntimeError("the float64 reference Newton solve did not converge")
    theta = full(beta)
    if p.softmax and p.fit_intercept:
        theta[:, -1] -= theta[:, -1].mean()
    return theta


def strong_convexity(p: Problem, theta) -> float:
    """Smallest Hessian eigenvalue at ``theta`` on the directions that change the model."""
    A, pen = _reduced(p)
    K, m = p.Y.shape[1], A.shape[1]
    H = _data_hessian(p, _theta(p, theta), A) + np.kron(np.eye(K), pen)
    if not p.fit_intercept:  # the intercept coordinate is absent from the problem: drop it
        keep = np.ones(K * m, bool)
        if p.basis is None:
            keep[m - 1::m] = False
            H = H[np.ix_(keep, keep)]
        else:
            e = p.basis[-1]  # remove e_b from every class block
            Q = np.linalg.qr(np.eye(m) - np.outer(e, e) / (e @ e))[0][:, : m - 1]
            T = np.kron(np.eye(K), Q)
            H = T.T @ H @ T
    null = _null(p, m)
    if null.shape[1]:
        H = H + (np.abs(H).sum() + 1) * (null @ null.T)  # lift the flat direction above the spectrum
    mu = float(np.linalg.eigvalsh(H)[0])
    return mu if p.basis is None else min(mu, 1.0)  # the basis's complement: penalty only


class _Rounding(NamedTuple):
    """The pieces of a float32 gradient evaluation's error at ``theta`` (see :func:`gradient_rounding`)."""

    products: np.ndarray  # (K, D + 1) bound on each entry's own sum's rounding (and the casts in it)
    vectors: np.ndarray  # (M, K (D + 1)) directions of the per-sample errors (C s_i d r_i / d z_il [x_i, 1])
    sizes: np.ndarray  # (M,) bound on each per-sample error along its direction
    penalty: np.ndarray  # (K, D + 1) the penalty term's ulp


def _rounding_parts(p: Problem, theta, *, unit: float, data: bool) -> _Rounding:
    theta = _theta(p, theta)
    A = p.A
    N, D1 = A.shape
    P = _probabilities(p, A @ theta.T)
    R = P - p.Y  # (N, K)
    K = R.shape[1]
    z_terms = A[:, None, :] * theta[None, :, :]  # (N, K, D + 1)
    dz = dot_error(z_terms, axis=-1, unit=unit)  # (N, K): each linear predictor's rounding
    if data:
        dz = dz + LAMBDA * unit * np.linalg.norm(z_terms, axis=-1)
    if p.softmax:  # J[i, k, l] = d r_ik / d z_il = p_ik (delta_kl - p_il)
        J = np.einsum("nk,kl->nkl", P, np.eye(K)) - P[:, :, None] * P[:, None, :]
    else:
        J = (P * (1 - P))[:, :, None]
    # per (sample, class l): the predictor's error through the curvature; per (sample, class k): the
    # sigmoid's / softmax's few ulps
    through_z = p.C * p.s[:, None, None, None] * J.transpose(0, 2, 1)[:, :, :, None] * A[:, None, None, :]  # (N, l, k, D1)
    own = p.C * p.s[:, None, None, None] * np.eye(K)[None, :, :, None] * A[:, None, None, :]  # (N, k, k', D1)
    vectors = np.concatenate([through_z.reshape(N * K, K * D1), own.reshape(N * K, K * D1)])
    sizes = np.concatenate([dz.ravel(), (4 * unit * P).ravel()])
    g_terms = p.C * (p.s[:, None] * R)[:, :, None] * A[:, None, :]  # (N, K, D + 1)
    products = dot_error(g_terms, axis=0, unit=unit)
    if data:  # X's and s's casts, one ulp of each term, independent
        products = products + 2 * LAMBDA * unit * np.linalg.norm(g_terms, axis=0)
    return _Rounding(products, vectors, sizes, 2 * unit * np.abs(theta) * p.penalty)


def gradient_rounding(p: Problem, theta, *, unit: float = U32, data: bool = True) -> np.ndarray:
    """``(K, D + 1)`` bound on a float32 evaluation's error of :func:`gradient` at ``theta``: the products
    ``C A^T (s * R)`` (:func:`dot_error`), each sample's residual error (its linear predictor's rounding
    through the loss's curvature, and the sigmoid's or softmax's few ulps) summed over samples
    (:func:`independent_sum`), the penalty term's ulp.

    ``data``: also count the cast of float64 ``X`` and sample weights to float32 (the float32 data's
    optimum is then this far, through ``1 / mu``, from the float64 data's). See the module docstring."""
    parts = _rounding_parts(p, _theta(p, theta), unit=unit, data=data)
    K, D1 = parts.products.shape
    propagated = independent_sum(np.abs(parts.vectors) * parts.sizes[:, None], axis=0).reshape(K, D1)
    return parts.products + propagated + parts.penalty


class Region(NamedTuple):
    """Where a solve of one problem stopped at ``tol`` can be, around the float64 ``optimum``.

    Attributes:
      optimum: ``(K, D + 1)`` float64 ``[coef, intercept]`` (``K = 1`` binary; softmax intercepts centred).
      radius: 2-norm bound on ``theta - optimum`` over all entries.
      gradient: 2-norm bound on the exact gradient at such a point.
      mu: the strong-convexity modulus used.
      problem: the :class:`Problem`.
    """

    optimum: np.ndarray
    radius: float
    gradient: float
    mu: float
    problem: Problem

    @property
    def gap(self) -> float:
        """Bound on ``F(theta) - F(optimum)``: ``gradient^2 / (2 mu)``."""
        return self.gradient**2 / (2 * self.mu)

    @property
    def objective(self) -> float:
        return objective(self.problem, self.optimum)


def glm_region(
    X, y, C, *, tol, sample_weight=None, fit_intercept=True, multinomial=None, precision="float32", data=True
) -> Region:
    """The :class:`Region` of a Newton-CG solve of scikit-learn's logistic objective stopped at ``tol``.

    A gradient error ``delta`` moves the stopping point by ``H^-1 delta``. Each piece is bounded two ways
    and the smaller kept: ``||delta|| / mu`` (any direction), or through ``H^-1`` itself, where the
    errors of badly scaled features meet their large curvature: the stopping test's ``|delta_j| <= t``
    gives ``t sum_j ||H^-1 e_j||``; independent errors (each sum's rounding, each sample's) add up as a
    vector random walk, ``lambda sqrt(sum_m b_m^2 ||H^-1 v_m||^2)`` (Pinelis' Hilbert-space Azuma bound).

    Args:
      precision: the arithmetic of the solve (``"float32"``, or ``"float64"`` for an x64 fit).
      data: count the rounding of ``X`` (and the weights) to float32 (True when the fit is compared with
        the float64 problem; False when float32 fits of the same float32 ``X`` are compared).
    """
    p = problem(X, y, C, sample_weight=sample_weight, fit_intercept=fit_intercept, multinomial=multinomial)
    theta = optimum(p)
    mu = strong_convexity(p, theta)
    K, D1 = theta.shape
    unit = unit_roundoff(precision)
    parts = _rounding_parts(p, theta, unit=unit, data=data and precision == "float32")
    # The stopping test bounds every free gradient entry by t (not the absent intercept's, nor the
    # softmax intercepts' common shift, along which F is flat).
    free = np.ones((K, D1))
    if not fit_intercept:
        free[:, -1] = 0
    t = tol * p.C * p.s.sum() * free.ravel()
    products, penalty = (parts.products * free).ravel(), (parts.penalty * free).ravel()
    propagated = independent_sum(np.abs(parts.vectors) * parts.sizes[:, None], axis=0)
    null = _null_directions_full(p)
    g = np.linalg.norm(t) + np.linalg.norm(products) + np.linalg.norm(propagated) + np.linalg.norm(penalty)
    by_mu = g / mu
    if p.basis is None:
        H = hessian_full(p, theta)
        if null.shape[1]:
            H = H + (np.abs(H).sum() + 1) * (null @ null.T)  # errors along the flat direction do not count
        Hinv = np.linalg.inv(H)
        columns = np.linalg.norm(Hinv, axis=0)
        through = (t @ columns + LAMBDA * np.linalg.norm(columns * products)
                   + LAMBDA * np.linalg.norm(np.linalg.norm(parts.vectors @ Hinv, axis=1) * parts.sizes)
                   + penalty @ columns)
        radius = min(by_mu, through)
    else:
        radius = by_mu
    return Region(theta, radius, g, mu, p)


def hessian_full(p: Problem, theta) -> np.ndarray:
    """``(K (D + 1), K (D + 1))`` Hessian of ``F`` in the full coordinates."""
    theta = _theta(p, theta)
    K = theta.shape[0]
    return _data_hessian(p, theta, p.A) + np.kron(np.eye(K), np.diag(p.penalty))


def _null_directions_full(p: Problem) -> np.ndarray:
    K, D1 = p.Y.shape[1], p.A.shape[1]
    if not (p.softmax and p.fit_intercept):
        return np.zeros((K * D1, 0))
    q = np.zeros((K, D1))
    q[:, -1] = 1 / np.sqrt(K)
    return q.reshape(-1, 1)


def reference_radius(region: Region, coef, intercept) -> float:
    """2-norm bound on the distance from a float64 reference solution (scikit-learn's) to the region's
    optimum, measured rather than promised: its exact gradient (float64, plus that evaluation's
    rounding) over ``mu``. (lbfgs may stop on its objective-change test, ``ftol = 64 eps``, before its
    gradient test; its ``tol`` alone promises nothing.)"""
    p = region.problem
    theta = as_theta(coef, intercept)
    g, rounding = gradient(p, theta), gradient_rounding(p, theta, unit=U64, data=False)
    if not p.fit_intercept:
        g, rounding = g[:, :-1], rounding[:, :-1]
    return float(np.linalg.norm(g) + np.linalg.norm(rounding)) / region.mu


def as_theta(coef, intercept) -> np.ndarray:
    """``(K, D + 1)`` float64 from a fit's ``coef`` (``(D,)`` or ``(K, D)``) and ``intercept`` (``()`` /
    ``(K,)``); softmax intercepts are centred (they are defined up to a common shift)."""
    coef = np.atleast_2d(np.asarray(coef, np.float64))
    intercept = np.atleast_1d(np.asarray(intercept, np.float64)).copy()
    if coef.shape[0] > 1:
        intercept -= intercept.mean()
    return np.hstack([coef, intercept[:, None]])


def assert_within(actual, desired, bound: float, what: str = "", *, informative: float | None = 0.05) -> float:
    """Assert ``||actual - desired||_2 <= bound``; returns the distance.

    ``informative``: also assert that ``bound`` is at most this fraction of ``||desired||``, so that a
    comparison cannot turn vacuous unnoticed (None skips it, for targets near zero)."""
    actual, desired = np.asarray(actual, np.float64), np.asarray(desired, np.float64)
    assert actual.shape == desired.shape, (what, actual.shape, desired.shape)
    scale = float(np.linalg.norm(desired))
    if informative is not None:
        assert bound <= informative * scale, f"{what}: the bound {bound:.3g} says little against ||desired|| = {scale:.3g}"
    dist = float(np.linalg.norm(actual - desired))
    assert dist <= bound, (
        f"{what}: ||actual - desired|| = {dist:.3g} exceeds the derived bound {bound:.3g} "
        f"({dist / bound:.2g}x; ||desired|| = {scale:.3g})"
    )
    return dist


def decision_error(X, theta, radius: float, unit: float = U32) -> np.ndarray:
    """``(N, K)``: how far a float32 decision value ``[x, 1] . theta'`` can be from the exact
    ``[x, 1] . theta`` for any ``theta'`` within ``radius`` of ``theta``."""
    A = np.hstack([np.asarray(X, np.float64), np.ones((len(X), 1))])
    theta = np.atleast_2d(theta)
    z = A @ theta.T
    reach = np.linalg.norm(A, axis=1)[:, None] * radius
    # the float32 product's rounding (for theta' within reach: |z'| <= |z| + reach), and X's cast
    rounding = LAMBDA * unit * (np.sqrt(A.shape[1]) * (np.abs(z) + reach) + np.abs(A) @ (np.abs(theta).T + radius))
    return reach + rounding


def unsure(X, theta, radius: float) -> np.ndarray:
    """``(N,)`` bool: samples whose predicted class can differ between ``theta`` (exact) and any float32
    evaluation of a ``theta'`` within ``radius``: the decision is within :func:`decision_error` of a tie
    (zero for one column; the top two for several)."""
    A = np.hstack([np.asarray(X, np.float64), np.ones((len(X), 1))])
    theta = np.atleast_2d(theta)
    z = A @ theta.T
    err = decision_error(X, theta, radius)
    if z.shape[1] == 1:
        return np.abs(z[:, 0]) <= err[:, 0]
    order = np.argsort(z, axis=1)
    rows = np.arange(len(z))
    top, second = order[:, -1], order[:, -2]
    return z[rows, top] - z[rows, second] <= err[rows, top] + err.max(axis=1)


def accuracy_slack(X, theta, radius: float, weights=None) -> float:
    """Most that the weighted accuracy (on ``X``, any labels) of a fit within ``radius`` of ``theta`` can
    differ from ``theta``'s: the weight share of :func:`unsure` samples, plus the float32 rounding of the
    weighted mean. Usually 0 plus rounding: the accuracies must then agree."""
    w = np.ones(len(X)) if weights is None else np.asarray(weights, np.float64)
    return float(w[unsure(X, theta, radius)].sum() / w.sum()) + mean_rounding(len(X))


def spd_inverse_error(M, formation: float = 0.0) -> float:
    """Relative 2-norm error bound of a float32 inverse of the SPD matrix ``M`` (float64 here) by Cholesky
    and triangular inversion: ``kappa`` times the relative backward errors, the matrix's own (its cast,
    plus ``formation``, a bound on the 2-norm of its formation's rounding) and the factorisation's and the
    two triangular steps' (``lambda sqrt(m) u`` each, probabilistically)."""
    M = np.asarray(M, np.float64)
    norm = np.linalg.norm(M, 2)
    kappa = np.linalg.cond(M)
    backward = U32 + formation / norm + 3 * sum_rounding(M.shape[0])
    return float(kappa * backward / (1 - kappa * backward))


# ---------------------------------------------------------------------------------------------------
# Ridge (closed form)


class RidgeRegion(NamedTuple):
    """Float64 ridge solution and bounds on a float32 solve's error, per target ``t``.

    Attributes:
      coef: ``(T, D)``; intercept: ``(T,)``.
      radius: ``(T,)`` 2-norm bounds on the coefficient error.
      intercept_error: ``(T,)`` bounds on the intercept error.
      kappa: condition number of ``Xc^T S Xc + alpha I`` on the row space of ``Xc``.
      xbar: ``(D,)`` the weighted feature means (the intercept is ``ybar - w . xbar``).
      residual_error: ``(T, N)`` bounds on the error of each training residual ``e_i = yc_i - xc_i . w`` as
        the solver forms it (primal: from ``w``; dual: as ``alpha beta_i / sqrt(s_i)``, no cancellation).
    """

    coef: np.ndarray
    intercept: np.ndarray
    radius: np.ndarray
    intercept_error: np.ndarray
    kappa: float
    xbar: np.ndarray
    residual_error: np.ndarray

    def theta(self) -> np.ndarray:
        """``(T, D + 1)`` ``[coef, intercept]``."""
        return np.hstack([self.coef, self.intercept[:, None]])

    @property
    def reach(self) -> float:
        """2-norm bound on ``[coef, intercept]``'s error, the largest over targets."""
        return float(np.max(self.radius + self.intercept_error))


def ridge_region(X, Y, alpha, *, sample_weight=None, fit_intercept=True, data=True) -> RidgeRegion:
    """The float64 solution of ``||y - X w - b||_S^2 + alpha ||w||^2`` for targets ``Y`` (``(N,)`` or
    ``(T, N)``) and a float32 solve's error bounds (see the module docstring).

    In the primal (``N >= D``) the refinement's residual is ``Xc^T S (yc - Xc w) - alpha w``; in the dual it
    is ``ys - Xs (Xs^T beta) - alpha beta`` with ``w = Xs^T beta``, which maps to the primal's through
    ``Xs^T``: its rounding is carried through ``||Xs^T (K + alpha)^-1|| = max_j sigma_j / (sigma_j^2 +
    alpha)``. Centring's rounding shifts every row by the same ``delta xbar``, which the centred normal
    equations do not see to first order (``sum_i s_i xc_i = 0``, ``sum_i s_i e_i = 0``); the subtraction's
    own ulps are counted with the data's cast.
    """
    X = np.asarray(X, np.float64)
    Y = np.atleast_2d(np.asarray(Y, np.float64))
    n, d = X.shape
    s = np.ones(n) if sample_weight is None else np.asarray(sample_weight, np.float64)
    xbar = s @ X / s.sum() if fit_intercept else np.zeros(d)
    ybar = Y @ s / s.sum() if fit_intercept else np.zeros(len(Y))
    Xc, Yc = X - xbar, Y - ybar[:, None]
    root = np.sqrt(s)
    Xs = Xc * root[:, None]
    sv = np.linalg.svd(Xs, compute_uv=False)
    sv = sv[sv > sv[0] * 1e-10] if sv[0] > 0 else sv[:0]
    lam_min = (sv[-1] ** 2 if sv.size else 0.0) + alpha
    lam_max = (sv[0] ** 2 if sv.size else 0.0) + alpha
    kappa = lam_max / lam_min
    W = np.linalg.solve(Xs.T @ Xs + alpha * np.eye(d), Xs.T @ (Yc * root).T).T  # (T, D)
    b = ybar - W @ xbar
    m = max(n, d)
    first = (sum_rounding(m) + m * U32) * kappa  # the unrefined solve's relative error (Gram + factorisation)
    mag = np.abs(X) + np.abs(xbar)  # a centred entry's cast and subtraction round against |x| + |xbar|
    dual = n < d
    gain_dual = float(np.max(sv / (sv**2 + alpha))) if (dual and sv.size) else 0.0
    if dual:  # (K + alpha)'s smallest eigenvalue, with the centred kernel's null vector moved as the solver does
        kernel = Xs @ Xs.T
        if fit_intercept:
            q = root / np.linalg.norm(root)
            kernel = kernel + (np.trace(kernel) + 1.0) * np.outer(q, q)
        kernel_min = float(np.linalg.eigvalsh(kernel)[0]) + alpha
    radii, ierr, rerr = [], [], []
    for t in range(len(Y)):
        w, yc, y_ = W[t], Yc[t], Y[t]
        e = yc - Xc @ w  # the training residual
        xw_terms = Xc * w  # (N, D)
        d_xw = dot_error(xw_terms, axis=1)  # each sample's Xc w
        if data:  # X's (and the centring's) and y's casts
            d_xw = d_xw + LAMBDA * U32 * np.linalg.norm(mag * w, axis=1) + U32 * (np.abs(y_) + np.abs(ybar[t]))
        if dual:
            beta = root * e / alpha  # ys - Xs w = alpha beta at the solution
            w_terms = beta[:, None] * Xs  # (N, D): w = Xs^T beta, summed over samples
            d_w = dot_error(w_terms, axis=0)
            # ys - Xs w' - alpha beta per sample: w's rounding through Xs (independent over features),
            # the product's own, the subtraction's
            res = (independent_sum(np.abs(Xs) * d_w, axis=1) + root * d_xw
                   + U32 * (root * (np.abs(yc) + np.abs(Xc @ w)) + alpha * np.abs(beta)))
            r = gain_dual * np.linalg.norm(res) + np.linalg.norm(d_w)
            rerr.append(alpha * np.linalg.norm(res) / kernel_min / np.maximum(root, 1e-300) + U32 * np.abs(e))
        else:
            terms = (s * e)[:, None] * Xc  # (N, D): Xc^T S e, which equals alpha w at the solution
            res = dot_error(terms, axis=0) + independent_sum(s[:, None] * np.abs(Xc) * d_xw[:, None], axis=0)
            res = res + U32 * alpha * np.abs(w)
            if data:  # X's and the weights' casts in the products
                res = res + LAMBDA * U32 * (np.linalg.norm((s * e)[:, None] * mag, axis=0) + np.linalg.norm(terms, axis=0))
            r = np.linalg.norm(res) / lam_min
        r = r + first**2 * np.linalg.norm(w)
        if not dual:
            rerr.append(np.linalg.norm(Xc, axis=1) * r + d_xw + U32 * (np.abs(yc) + np.abs(e)))
        radii.append(r)
        # b = ybar - w . xbar: the coefficients' error through xbar, the product's, and the means' own
        means = mean_rounding(n) * (np.abs(y_) @ s / s.sum() + np.abs(w) @ (np.abs(X).T @ s) / s.sum())
        ierr.append(r * np.linalg.norm(xbar) + (sum_rounding(d) + U32) * (np.abs(w) @ np.abs(xbar) + abs(ybar[t])) + means)
    return RidgeRegion(W, b, np.array(radii), np.array(ierr), float(kappa), xbar, np.array(rerr))


def ridge_reference_error(region: RidgeRegion, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(coef, intercept)`` error bounds ``(T,)`` of a float64 direct solve (scikit-learn's ``Ridge``):
    its Gram's and its factorisation's relative backward error times ``kappa``, on ``||w||``; the
    intercept gets it through ``xbar``, and float64 rounding of the means."""
    m = max(n, region.coef.shape[1])
    coef = (sum_rounding(m, U64) + m * U64) * region.kappa * np.linalg.norm(region.coef, axis=1)
    scale = np.abs(region.intercept) + np.abs(region.coef) @ np.abs(region.xbar) + 1.0
    return coef, coef * np.linalg.norm(region.xbar) + mean_rounding(n, U64) * scale


# ---------------------------------------------------------------------------------------------------
# Group lasso (FISTA stopped on the KKT conditions)


def group_lasso_rounding(X, y, coef, intercept, *, loss="logistic", sample_weight=None) -> tuple[np.ndarray, np.ndarray]:
    """``(rounding, curvature)``: bound ``(P + 1,)`` on a float32 evaluation's error of the smooth part's
    gradient ``(1/sum s) [X, 1]^T (s * r)`` at ``[coef, intercept]`` (the products, each sample's predictor
    rounding through the loss's curvature, X's cast), and each sample's curvature ``(N,)``."""
    X = np.asarray(X, np.float64)  # (N, P): the groups side by side
    n = X.shape[0]
    s = np.ones(n) if sample_weight is None else np.asarray(sample_weight, np.float64)
    A = np.hstack([X, np.ones((n, 1))])
    theta = np.r_[np.asarray(coef, np.float64).ravel(), float(intercept)]
    z = A @ theta
    if loss == "logistic":
        p = 0.5 * (1 + np.tanh(0.5 * z))
        curv, r = p * (1 - p), p - np.asarray(y, np.float64)
    else:
        curv, r = np.ones(n), z - np.asarray(y, np.float64)
    dz = dot_error(A * theta, axis=1) + LAMBDA * U32 * np.linalg.norm(A * theta, axis=1)  # with X's cast
    terms = (s * r)[:, None] * A
    rounding = (dot_error(terms, axis=0) + 2 * LAMBDA * U32 * np.linalg.norm(terms, axis=0)
                + independent_sum((s * (curv * dz + 4 * U32))[:, None] * np.abs(A), axis=0)) / s.sum()
    return rounding, curv


def group_lasso_radius(X, y, coef, intercept, alpha, *, tol, n_groups, loss="logistic", sample_weight=None) -> float:
    """2-norm bound on the distance to the optimum of any point whose KKT violation (relative to ``alpha``,
    as ``lmprobe_jax.functional._group_lasso`` measures it) is at most ``tol`` in float32.

    The violation bounds the distance from 0 to the subdifferential: at most ``tol alpha`` per group and
    for the intercept, so ``sqrt(G + 1) tol alpha`` in all, plus the float32 gradient's rounding
    (:func:`group_lasso_rounding`). The smooth part ``(1/sum s) sum s loss`` is strongly convex when
    ``[X, 1]`` has full column rank (the group penalty is convex and only adds to monotonicity): ``mu``
    is the smallest eigenvalue of its Hessian at ``coef``, a point of the region (the curvature cannot
    change across so small a region).
    """
    X = np.asarray(X, np.float64)
    n = X.shape[0]
    s = np.ones(n) if sample_weight is None else np.asarray(sample_weight, np.float64)
    rounding, curv = group_lasso_rounding(X, y, coef, intercept, loss=loss, sample_weight=s)
    A = np.hstack([X, np.ones((n, 1))])
    mu = float(np.linalg.eigvalsh((A * (s * curv)[:, None]).T @ A / s.sum())[0])
    assert mu > 0, "the smooth part is not strongly convex here: no distance bound from the KKT violation"
    return (np.sqrt(n_groups + 1) * tol * alpha + np.linalg.norm(rounding)) / mu


def ridge_loo_error(X, y, alpha, *, sample_weight=None, fit_intercept=True, data=True) -> np.ndarray:
    """``(N,)`` bounds on a float32 evaluation's error of the leave-one-out predictions
    ``y_i - e_i / (1 - h_ii)`` (``e`` the training residual, ``h`` the weighted hat matrix's diagonal),
    for one target ``y`` ``(N,)``.

    ``e_i`` is off by the fit's error (:func:`ridge_region`) through ``[x_i, 1]``; ``1 - h_ii`` comes from
    an eigendecomposition of the Gram matrix (primal) or kernel (dual) in float32, which is exact for a
    matrix off by ``E`` with ``||E|| <= (lambda sqrt(N) + m) u ||Gram||`` (its formation and a backward
    stable ``eigh``), so ``h_ii`` moves by at most ``||E|| ||v_i||^2`` with ``v_i`` the sample's image
    under ``(Gram + alpha)^-1`` (first order), plus the rounding of its ``m``-term sum.
    """
    X = np.asarray(X, np.float64)
    y = np.asarray(y, np.float64)
    n, d = X.shape
    s = np.ones(n) if sample_weight is None else np.asarray(sample_weight, np.float64)
    reg = ridge_region(X, y, alpha, sample_weight=s, fit_intercept=fit_intercept, data=data)
    w, b = reg.coef[0], reg.intercept[0]
    xbar = s @ X / s.sum() if fit_intercept else np.zeros(d)
    root = np.sqrt(s)
    Xs = (X - xbar) * root[:, None]
    lever = s / s.sum() if fit_intercept else np.zeros(n)
    if n >= d:
        gram = Xs.T @ Xs
        V = np.linalg.solve(gram + alpha * np.eye(d), Xs.T)  # (D, N): v_i
        h = np.einsum("dn,nd->n", V, Xs) + lever
        m = d
    else:
        gram = Xs @ Xs.T
        shift = 0.0
        if fit_intercept:  # the solver moves the centred kernel's null vector to a known eigenvalue
            q = root / np.linalg.norm(root)
            shift = np.trace(gram) + 1.0
            gram = gram + shift * np.outer(q, q)
        V = np.sqrt(alpha) * np.linalg.inv(gram + alpha * np.eye(n))
        # 1 - h_ii = alpha [(K + alpha)^-1]_ii, less the null vector's share (q_i^2 = lever_i) of it
        h = 1.0 - (np.diag(V) * np.sqrt(alpha) - lever * alpha / (shift + alpha))
        m = n
    # The Gram's (or kernel's) formation (T.gram_error) and eigh's backward error (m u ||Gram||, a
    # backward stable eigensolver).
    E = np.linalg.norm(gram_error(Xs if n >= d else Xs.T), 2) + m * U32 * np.linalg.norm(gram, 2)
    one_minus_h = 1.0 - h
    # h_ii's own sum of m terms (each an ulp), and 1 - h's subtraction
    dh = E * np.sum(V * V, axis=0) + (sum_rounding(m) + 4 * U32) * np.maximum(h, one_minus_h) + 2 * U32
    e = y - X @ w - b
    de = reg.residual_error[0]
    assert np.all(dh < 0.5 * one_minus_h), "1 - h_ii is not resolved in float32 here: no first-order bound"
    return de / one_minus_h + np.abs(e) * dh / (one_minus_h * (one_minus_h - dh)) + 2 * U32 * (np.abs(y) + np.abs(e / one_minus_h))


# ---------------------------------------------------------------------------------------------------
# Mass-mean (class means, then a one-feature logistic calibration)


def mass_mean_reach(X32, y, calibration_C: float, sample_weight=None) -> tuple[float, float]:
    """``(coef, direction)`` 2-norm bounds on a float32 mass-mean fit's error (``iid=False``) against the
    exact solution of its problem (float32 data).

    The direction is a difference of weighted class means (:func:`dot_error` each, and the means'
    rounding). The coefficient is ``direction * c / spread``, ``c`` the 1-D calibration's slope on the
    unit-spread feature ``X direction / spread``. Its error: the calibration's region (:func:`glm_region`
    at ``tol = 1e-7``) plus the feature's own error (the direction's, relative, through ``X``) carried into
    ``c``, ``spread`` and the direction, each at most that relative error times their size. The
    ``coef`` bound also covers the intercept (the calibration's own)."""
    X = np.asarray(X32, np.float64)
    y = np.asarray(y)
    w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, np.float64)
    err = 0.0
    for c in (0, 1):
        sw = w * (y == c)
        err = err + dot_error(sw[:, None] * X, axis=0) / sw.sum() + mean_rounding(len(y)) * (sw @ np.abs(X)) / sw.sum()
    direction = (w * (y == 1)) @ X / (w * (y == 1)).sum() - (w * (y == 0)) @ X / (w * (y == 0)).sum()
    dir_err = float(np.linalg.norm(err))
    proj = X @ direction
    centre = w @ proj / w.sum()
    spread = np.sqrt(w @ (proj - centre) ** 2 / w.sum())
    feature = (proj / spread)[:, None]
    cal = glm_region(feature, y, calibration_C, tol=1e-7, sample_weight=w, data=False)
    slope = abs(cal.optimum[0, 0])
    rel_feature = np.abs(X).sum(1).max() * dir_err / spread  # the feature's error (it has unit spread)
    rel = cal.radius / slope + 3 * rel_feature + mean_rounding(len(y))
    coef = float(rel * np.linalg.norm(direction) * slope / spread + dir_err * slope / spread)
    return coef + cal.radius, dir_err


# ---------------------------------------------------------------------------------------------------
# Cross-validation: held-out scores and the chosen grid value


def fold_accuracy_slack(X, y, grid, fold_ids, *, tol: float, sample_weight=None) -> np.ndarray:
    """``(G, F)``: most that a fold fit's held-out accuracy can differ from its exact problem's, per grid
    value and fold: :func:`accuracy_slack` of the held-out rows within the fold problem's
    :func:`glm_region` (float32 data, solved to ``tol``). Two solves differ by at most twice this."""
    X = np.asarray(X, np.float64)
    fold_ids = np.asarray(fold_ids)
    w = np.ones(len(X)) if sample_weight is None else np.asarray(sample_weight, np.float64)
    folds = np.unique(fold_ids[fold_ids >= 0])
    slack = np.zeros((len(grid), len(folds)))
    for f, fold in enumerate(folds):
        train, test = fold_ids != fold, fold_ids == fold
        for g, C in enumerate(grid):
            region = glm_region(X, y, float(C), tol=tol, sample_weight=w * train, data=False)
            slack[g, f] = accuracy_slack(X[test], region.optimum, region.radius, w[test])
    return slack


def same_best(best, other_best, scores, slack) -> bool:
    """Whether two CV runs chose the same grid value; if not, assert that the scores' derived slack
    (``(G, F)``) allowed it: the best and the runner-up mean score are within it."""
    if float(best) == float(other_best):
        return True
    mean = np.sort(np.asarray(scores, np.float64).mean(-1))
    assert mean[-1] - mean[-2] <= 2 * np.asarray(slack).mean(-1).max(), (best, other_best, mean)
    return False


# ---------------------------------------------------------------------------------------------------
# Model forwards and the readout (final norm + unembedding)


def readout_error(meta: dict, arrays: dict, hidden, stream_error: float = 0.0) -> np.ndarray:
    """``(..., V)`` bound on a float32 evaluation's error of the readout logits of float32 ``hidden``
    ``(..., D)`` (the formula of ``lmprobe_jax_store.readout_logits_numpy``, which gives them exactly).

    LayerNorm's centring ``c = h - mean(h)``: the mean's ``D``-term sum (:func:`dot_error`) and the
    subtraction's ulp. The RMS ``r = sqrt(mean(c^2) + eps)``: a sum of ``D`` non-negative squares
    (:func:`sum_rounding`, relative), the centring's error through ``sum c dc / sum c^2``, the square
    root's and the division's ulps. ``u = c / r * w + b``: those relative errors on ``|c w| / r``, ``dc``
    through ``|w| / r``, the bias add's ulp (and the weight's own, for offset weights ``1 + w`` formed in
    float32). ``z = u W^T + bias``: the products' :func:`dot_error` (the bias as one more term), ``du``
    through ``|W|``, the scale's ulp; a softcap ``cap tanh(z / cap)`` has slope at most 1 and adds its own
    few ulps. ``stream_error``: a bound on each entry's error in ``hidden`` itself, carried through the
    norm (its Jacobian, a projection over ``r``, has 2-norm at most ``max |w| / r``) and ``W``'s rows."""
    h = np.asarray(hidden, np.float64)
    D = h.shape[-1]
    w = np.asarray(arrays["norm.weight"], np.float64)
    b = np.asarray(arrays.get("norm.bias", np.zeros(D)), np.float64)
    W = np.asarray(arrays["unembed.weight"], np.float64)
    bias = np.asarray(arrays.get("unembed.bias", np.zeros(len(W))), np.float64)
    if meta["norm"] == "layer":
        mean = h.mean(-1, keepdims=True)
        c = h - mean
        dc = LAMBDA * U32 * (np.sqrt(D) * np.abs(mean) + np.abs(h).mean(-1, keepdims=True)) + U32 * np.abs(c)
    else:
        c, dc = h, np.zeros_like(h)
    square = (c**2).sum(-1, keepdims=True)
    r = np.sqrt(square / D + meta["eps"])
    rel_r = 0.5 * (sum_rounding(D) + 2 * U32 + 2 * (np.abs(c) * dc).sum(-1, keepdims=True) / (square + D * meta["eps"])) + U32
    u = c / r * w + b
    du = np.abs(w) * dc / r + np.abs(c * w) / r * (rel_r + 3 * U32) + U32 * np.abs(u)
    terms = np.concatenate([u[..., None, :] * W, np.broadcast_to(bias[:, None], (*u.shape[:-1], *bias.shape, 1))], -1)
    z = terms.sum(-1)
    scale = meta["logit_scale"]
    dz = abs(scale) * (dot_error(terms) + du @ np.abs(W).T) + 2 * U32 * np.abs(scale * z)
    carried = abs(scale) * np.sqrt(D) * stream_error * np.abs(w).max() / r * np.linalg.norm(W, axis=1)
    return dz + carried + 3 * U32 * np.abs(scale * z)  # the softcap's ulps (its value is at most |z|)


def scaled_gradient_excess(X, y, theta, C, *, fit_intercept=True, tol=1e-7) -> float:
    """Largest ``|g_j| - (tol + 2 rounding_j)`` of scikit-learn's scaled objective's float64 gradient at
    ``theta`` (``(K, D + 1)``, from :func:`as_theta`; softmax when ``K > 1``; unit sample weights), with
    ``rounding`` what a float32 evaluation of it can hide (:func:`gradient_rounding` of the float32 data):
    at most 0 when a float32 solve's stopping test ``max |g| <= tol`` held."""
    theta = np.asarray(theta, np.float64)
    p = problem(X, y, C, fit_intercept=fit_intercept, multinomial=theta.shape[0] > 1)
    scale = p.C * p.s.sum()
    g = gradient(p, theta) / scale
    rounding = gradient_rounding(p, theta, data=False) / scale
    return float(np.max(np.abs(g) - (tol + 2 * rounding)))
