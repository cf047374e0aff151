"""The public E-step against a slow dense reference and POT."""

import numpy as np
import pytest
from scipy.special import logsumexp

from napari_sinkhorn_em import sinkhorn_responsibilities


def reference_log_sinkhorn(A, alpha, a, n_iter=20000, tol=1e-14):
    """Plain NumPy/SciPy log-domain Sinkhorn on the full N x K problem."""
    la, lal = np.log(a), np.log(alpha)
    g = np.zeros(A.shape[1])
    for _ in range(n_iter):
        f = la - logsumexp(A + g, axis=1)
        g = lal - logsumexp(A + f[:, None], axis=0)
        logT = A + f[:, None] + g  # columns are exact after the g-update; check rows
        if np.abs(np.exp(logsumexp(logT, axis=1)) - a).sum() < tol:
            break
    logT = A + f[:, None] + g
    return np.exp(logT - logsumexp(logT, axis=1, keepdims=True))


def problem(seed, N=300, K=6, scale=3.0):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(N, K)) * scale
    w = rng.random(K) + 0.2
    a = rng.random(N) + 0.1
    return A, w / w.sum(), a


@pytest.fixture(scope="module", params=[0, 1, 2])
def solved_problem(request):
    """A random problem with its slow-reference and POT solutions (shared by both solvers)."""
    ot = pytest.importorskip("ot")
    A, w, a = problem(request.param)
    an = a / a.sum()
    ref = reference_log_sinkhorn(A, w, an)
    T = ot.bregman.sinkhorn_log(an, w, -A, reg=1.0, numItermax=20000, stopThr=1e-14)
    return A, w, a, an, ref, T / an[:, None]


@pytest.mark.parametrize("solver", ["newton", "sinkhorn"])
def test_matches_reference_and_pot(solved_problem, solver):
    A, w, a, an, ref, pot = solved_problem
    # the two references agree with each other, so the comparison below is meaningful
    np.testing.assert_allclose(pot, ref, atol=1e-9)
    R, info = sinkhorn_responsibilities(A, w, a, tol=1e-12, solver=solver, return_info=True)
    np.testing.assert_allclose(R, ref, atol=1e-8)
    np.testing.assert_allclose(R, pot, atol=1e-8)
    np.testing.assert_allclose(R.sum(1), 1.0, atol=1e-12)
    np.testing.assert_allclose(an @ R, w, atol=1e-11)
    assert info.converged and info.marginal_error < 1e-12
    assert info.solver == solver
    # objective = -L = min_g sum_i a_i lse(A_i + g) - sum_k w_k (g_k - log w_k)
    g = info.potential
    obj = an @ logsumexp(A + g, axis=1) - w @ (g - np.log(w))
    assert info.objective == pytest.approx(obj, abs=1e-12)
    # -L <= weighted log-likelihood (EM value at g = log w)
    assert info.objective <= an @ logsumexp(A + np.log(w), axis=1) + 1e-12


def test_newton_needs_few_iterations_and_warm_start_helps():
    A, w, a = problem(5, N=2000, K=20)
    R, info = sinkhorn_responsibilities(A, w, a, tol=1e-10, solver="newton", return_info=True)
    R2, info2 = sinkhorn_responsibilities(A, w, a, tol=1e-10, solver="sinkhorn", return_info=True)
    assert info.n_iter < info2.n_iter
    np.testing.assert_allclose(R, R2, atol=1e-8)
    _, warm = sinkhorn_responsibilities(
        A + 0.01, w, a, tol=1e-10, init_potential=info.potential, return_info=True
    )
    assert warm.n_iter <= 2


def test_sparse_with_all_components_equals_dense():
    A, w, a = problem(3, N=200, K=5)
    rng = np.random.default_rng(0)
    perm = np.argsort(rng.random(A.shape), axis=1)
    R = sinkhorn_responsibilities(A, w, a, tol=1e-12)
    Rs = sinkhorn_responsibilities(np.take_along_axis(A, perm, 1), w, a, neighbors=perm, tol=1e-12)
    np.testing.assert_allclose(Rs, np.take_along_axis(R, perm, 1), atol=1e-10)


def test_sparse_marginals_and_zero_outside():
    rng = np.random.default_rng(1)
    N, K, m = 400, 10, 3
    idx = np.stack([rng.choice(K, m, replace=False) for _ in range(N)])
    A = rng.normal(size=(N, m))
    w = np.full(K, 1 / K)
    R, _info = sinkhorn_responsibilities(A, w, neighbors=idx, tol=1e-11, return_info=True)
    col = np.bincount(idx.ravel(), weights=R.ravel() / N, minlength=K)
    np.testing.assert_allclose(col, w, atol=1e-11)
    np.testing.assert_allclose(R.sum(1), 1, atol=1e-12)


def test_far_points_zero_weights_and_k1_are_finite():
    rng = np.random.default_rng(2)
    A = rng.normal(size=(50, 3))
    A[0] = [-1e6, -2e6, -3e6]  # a point far from every component
    A[:, 2] -= 5000.0  # a component far from every point: exp underflows everywhere
    a = rng.random(50)
    a[5:10] = 0.0
    w = np.array([0.5, 0.3, 0.2])
    R, info = sinkhorn_responsibilities(A, w, a, return_info=True, tol=1e-10)
    assert np.all(np.isfinite(R)) and info.converged
    np.testing.assert_allclose((a / a.sum()) @ R, w, atol=1e-10)
    R1, info1 = sinkhorn_responsibilities(A[:, :1], [1.0], a, return_info=True)
    np.testing.assert_array_equal(R1, 1.0)
    assert info1.marginal_error < 1e-12


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"log_prob": np.full((4, 2), np.nan)}, "NaN"),
        ({"log_prob": np.zeros(4)}, "2-D"),
        ({"weights": [0.5, 0.6]}, "sum to 1"),
        ({"weights": [1.5, -0.5]}, "strictly positive"),
        ({"weights": [1.0]}, r"shape \(2,\)"),
        ({"sample_weight": [1, -1, 1, 1]}, "non-negative"),
        ({"sample_weight": [1, 1]}, r"sample_weight must have shape \(4,\)"),
        ({"sample_weight": [1, 0, 0, 0]}, "fewer than the 2 components"),
        ({"neighbors": np.zeros((3, 2), int)}, "same shape"),
        ({"neighbors": np.full((4, 2), 7)}, "outside"),
    ],
)
def test_bad_input(kwargs, match):
    args = {"log_prob": np.zeros((4, 2)), "weights": [0.5, 0.5]}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        sinkhorn_responsibilities(**args)


def test_exp_table_matches_numpy_exp():
    """The E-step's own vectorised exp agrees with np.exp to 1 ulp; underflow gives 0."""
    from napari_sinkhorn_em.mixture import _kernels

    rng = np.random.default_rng(0)
    A = -rng.exponential(30.0, size=(20000, 16))
    A[:, 3] = 5.0  # the row maximum
    A[:50] *= 40.0  # entries far below the maximum: exp underflows
    P, amax = np.empty_like(A), np.empty(len(A))
    _kernels.row_max_exp(A, P, amax, 4)
    np.testing.assert_array_equal(amax, A.max(axis=1))
    ref = np.exp(A - amax[:, None])
    normal = ref > 1e-300
    assert np.max(np.abs(P[normal] - ref[normal]) / np.spacing(ref[normal])) <= 1.0
    assert np.all(P[~normal] <= 1e-300) and (~normal).sum() > 100


@pytest.mark.parametrize("stride", [1, 3, 7])
def test_hessian_estimate_is_psd_and_exact_without_sampling(stride):
    """The E-step pass's negative Hessian: exact for stride 1, PSD for any row sampling."""
    from napari_sinkhorn_em.mixture import _kernels

    A, _, a = problem(5, N=3000, K=12, scale=2.0)
    a = a / a.sum()
    g = np.random.default_rng(1).normal(size=12)
    P, amax, lse = np.empty_like(A), np.empty(len(A)), np.empty(len(A))
    _kernels.row_max_exp(A, P, amax, 8)
    idx = np.zeros((1, 1), dtype=np.int32)
    col, _, H, _ = _kernels.estep_pass(A, P, amax, True, idx, True, g, a, lse, 8, True, stride)
    R = np.exp(A + g - logsumexp(A + g, axis=1, keepdims=True))
    np.testing.assert_allclose(col, a @ R, rtol=1e-12)
    # entries below HESS_CUT are left out of the outer products only
    Rc = np.where(R > _kernels.HESS_CUT, R, 0.0)
    rows = np.arange(len(A)) % stride == 0
    ref = stride * (np.diag(a[rows] @ R[rows]) - (a[rows, None] * Rc[rows]).T @ Rc[rows])
    np.testing.assert_allclose(H, ref, rtol=1e-10, atol=1e-15)
    assert np.linalg.eigvalsh(H).min() > -1e-14
    if stride == 1:
        exact = np.diag(col) - (a[:, None] * R).T @ R
        np.testing.assert_allclose(H, exact, atol=2 * 12 * _kernels.HESS_CUT)


def test_disconnected_blocks_get_their_mass_and_converge():
    """Neighbour lists that split the components into two unlinked blocks: the weights of
    each block are scaled to its points' mass (otherwise no solution exists and the
    potentials diverge) and Newton converges as on a single block."""
    rng = np.random.default_rng(3)
    N1, N2, m = 300, 200, 3
    idx = np.concatenate(
        [
            np.stack([rng.choice(4, m, replace=False) for _ in range(N1)]),
            np.stack([4 + rng.choice(3, m, replace=False) for _ in range(N2)]),
        ]
    )
    A = rng.normal(size=(N1 + N2, m))
    w = np.array([0.15, 0.15, 0.15, 0.15, 0.13334, 0.13333, 0.13333])  # block 1: 0.6 + 0
    w /= w.sum()
    R, info = sinkhorn_responsibilities(A, w, neighbors=idx, tol=1e-11, return_info=True)
    assert info.converged and info.n_passes < 60
    col = np.bincount(idx.ravel(), weights=R.ravel() / (N1 + N2), minlength=7)
    # each block carries its points' mass, split in proportion to the given weights
    np.testing.assert_allclose(col[:4].sum(), N1 / (N1 + N2), rtol=1e-12)
    np.testing.assert_allclose(col[:4], w[:4] / w[:4].sum() * N1 / (N1 + N2), atol=1e-11)
    np.testing.assert_allclose(col[4:], w[4:] / w[4:].sum() * N2 / (N1 + N2), atol=1e-11)
    assert np.all(np.isfinite(info.potential)) and np.ptp(info.potential) < 50


@pytest.mark.parametrize("tau", [0.05, 1.0, 20.0])
def test_soft_marginal_newton_and_sinkhorn_steps_reach_the_same_potential(tau):
    """The soft-marginal E-step (marginal_penalty): Newton and the coordinate (Sinkhorn)
    step converge to one potential, at which the column sums equal the soft target
    alpha exp(-(g - log alpha) / tau), between EM's (tau -> 0) and alpha."""
    from napari_sinkhorn_em.mixture.estep import _EStep

    rng = np.random.default_rng(5)
    N, K = 300, 4
    A = rng.normal(scale=2.0, size=(N, K))
    a = rng.random(N)
    a /= a.sum()
    alpha = np.array([0.1, 0.2, 0.3, 0.4])
    out = {}
    for solver in ("newton", "sinkhorn"):
        es = _EStep(A.copy(), None, a, alpha, tau=tau)
        g, col, _, err, _, ok = es.solve(np.log(alpha), 1e-12, 5000, solver=solver)[:6]
        assert ok, (solver, err)
        target = alpha * np.exp(-(g - np.log(alpha)) / tau)
        np.testing.assert_allclose(col, target, atol=1e-11)
        out[solver] = g
    np.testing.assert_allclose(out["newton"], out["sinkhorn"], atol=1e-9)
    em_col = (
        np.exp(A + np.log(alpha) - logsumexp(A + np.log(alpha), axis=1)[:, None]) * a[:, None]
    ).sum(0)
    assert np.all(np.abs(col - alpha) <= np.abs(em_col - alpha) + 1e-12)


def test_sinkhorn_responsibilities_soft_marginal():
    rng = np.random.default_rng(6)
    A = rng.normal(scale=2.0, size=(200, 3))
    w = np.array([0.2, 0.3, 0.5])
    R, info = sinkhorn_responsibilities(A, w, marginal_penalty=2.0, tol=1e-11, return_info=True)
    target = w * np.exp(-(info.potential - np.log(w)) / 2.0)
    np.testing.assert_allclose(R.mean(axis=0), target, atol=1e-10)
    assert info.converged and np.abs(R.mean(axis=0) - w).sum() > 1e-3  # soft, not exact
    # a huge penalty is the exact E-step
    R_exact = sinkhorn_responsibilities(A, w, tol=1e-11)
    R_stiff = sinkhorn_responsibilities(A, w, marginal_penalty=1e9, tol=1e-11)
    np.testing.assert_allclose(R_stiff, R_exact, atol=1e-6)
    with pytest.raises(ValueError, match="marginal_penalty must be a positive number"):
        sinkhorn_responsibilities(A, w, marginal_penalty=-1.0)


def test_rows_with_zero_density_everywhere_raise_and_name_the_rows():
    """Issue 16: a row that is -inf in every column used to come back uniform with
    converged=True. With positive mass it is now a ValueError naming the rows; with zero
    mass it carries nothing (documented: its row is softmax(potential)) and the rest is
    solved as if it were absent."""
    A, w, a = problem(7, N=40, K=4)
    A[[3, 17]] = -np.inf
    with pytest.raises(ValueError, match=r"2 row\(s\) with positive mass \(rows 3, 17\)"):
        sinkhorn_responsibilities(A, w, a)
    idx = np.tile(np.arange(4), (40, 1))
    with pytest.raises(ValueError, match=r"rows 3, 17"):
        sinkhorn_responsibilities(A, w, a, neighbors=idx)
    a0 = a.copy()
    a0[[3, 17]] = 0.0
    R, info = sinkhorn_responsibilities(A, w, a0, tol=1e-11, return_info=True)
    keep = a0 > 0
    ref = sinkhorn_responsibilities(A[keep], w, a0[keep], tol=1e-11)
    np.testing.assert_allclose(R[keep], ref, atol=1e-9)
    g = info.potential
    np.testing.assert_allclose(R[[3, 17]], np.tile(np.exp(g) / np.exp(g).sum(), (2, 1)))
    assert info.converged
    # a single -inf entry is zero density for that component only
    A1 = problem(7, N=40, K=4)[0]
    A1[5, 2] = -np.inf
    R1 = sinkhorn_responsibilities(A1, w, a, tol=1e-11)
    assert R1[5, 2] == 0.0 and np.isclose(R1[5].sum(), 1.0)
