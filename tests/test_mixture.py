"""SinkhornEM: agreement with scikit-learn, ported GaussianMixture tests, numerics, errors."""

import warnings

import numpy as np
import pytest

from napari_sinkhorn_em import ConvergenceWarning, SinkhornEM


def blobs(seed=0, K=3, D=2, n=200, sep=8.0, scale=1.0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(K, D)) * sep
    X = np.concatenate([c + rng.normal(size=(n, D)) * scale for c in centers])
    y = np.repeat(np.arange(K), n)
    return X, y, centers


def match(found, truth):
    """Permutation of found onto truth by nearest mean."""
    return np.array([np.argmin(((found - t) ** 2).sum(1)) for t in truth])


@pytest.mark.parametrize("ct", ["full", "diag", "spherical"])
def test_em_matches_sklearn_step_for_step(ct):
    GaussianMixture = pytest.importorskip("sklearn.mixture").GaussianMixture
    from sklearn.exceptions import ConvergenceWarning as SkCW

    X, _, centers = blobs(1, K=4, D=3, sep=3.0)
    rng = np.random.default_rng(0)
    K, D = 4, 3
    mi = centers + rng.normal(size=centers.shape)
    w = np.array([0.1, 0.2, 0.3, 0.4])
    cov = {"full": np.tile(2 * np.eye(D), (K, 1, 1)), "diag": np.full((K, D), 2.0)}.get(
        ct, np.full(K, 2.0)
    )
    prec = np.linalg.inv(cov) if ct == "full" else 1 / cov
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkCW)
        sk = GaussianMixture(
            K, covariance_type=ct, weights_init=w, means_init=mi, precisions_init=prec,
            max_iter=10, tol=0,
        ).fit(X)  # fmt: skip
    with pytest.warns(ConvergenceWarning):
        ours = SinkhornEM(
            K, method="em", learn_weights=True, weights=w, covariance_type=ct,
            means_init=mi, covariances_init=cov, max_iter=10, tol=0,
        ).fit(X)  # fmt: skip
    np.testing.assert_allclose(ours.means_, sk.means_, atol=1e-6)
    np.testing.assert_allclose(ours.covariances_, sk.covariances_, atol=1e-6)
    np.testing.assert_allclose(ours.weights_, sk.weights_, atol=1e-6)
    # sklearn's lower bound is taken at the parameters before its last M-step
    assert ours.objective_history_[-2] == pytest.approx(sk.lower_bound_, abs=1e-8)
    np.testing.assert_allclose(ours.score_samples(X), sk.score_samples(X), atol=1e-8)
    assert ours.score(X) == pytest.approx(sk.score(X), abs=1e-8)


@pytest.mark.parametrize("method", ["sinkhorn", "em"])
@pytest.mark.parametrize("ct", ["full", "diag", "spherical"])
def test_recovers_separated_blobs(method, ct):
    X, y, centers = blobs(2, K=3, D=2)
    est = SinkhornEM(3, method=method, covariance_type=ct, random_state=0).fit(X)
    perm = match(est.means_, centers)
    np.testing.assert_allclose(est.means_[perm], centers, atol=0.25)
    cov = {"full": est.covariances_, "diag": est.covariances_, "spherical": est.covariances_}
    c = cov[ct][perm]
    expect = {"full": np.eye(2), "diag": np.ones(2), "spherical": 1.0}[ct]
    np.testing.assert_allclose(c, np.broadcast_to(expect, c.shape), atol=0.3)
    assert est.converged_
    labels = est.predict(X)
    inv = np.argsort(perm)
    assert np.mean(inv[labels] == y) > 0.99
    np.testing.assert_array_equal(est.predict_proba(X).argmax(1), labels)
    if method == "sinkhorn":
        # the fitted responsibilities average to the prescribed weights
        np.testing.assert_allclose(est.predict_proba(X).mean(0), 1 / 3, atol=1e-6)


def test_predict_proba_sparse_and_fit_predict():
    X, _, _ = blobs(3, K=5, D=3, n=150)
    est = SinkhornEM(5, n_neighbors=2, random_state=1)
    labels = est.fit_predict(X)
    np.testing.assert_array_equal(labels, est.predict(X))
    idx, resp = est.predict_proba_sparse(X)
    assert idx.shape == resp.shape == (X.shape[0], 2)
    np.testing.assert_allclose(resp.sum(1), 1)
    # separated blobs: the truncated responsibilities equal the dense ones
    dense = est.predict_proba(X)
    np.testing.assert_allclose(np.take_along_axis(dense, idx, 1), resp, atol=1e-6)
    idx_all, resp_all = est.predict_proba_sparse(X, n_neighbors=5)
    np.testing.assert_allclose(np.take_along_axis(dense, idx_all, 1), resp_all, atol=1e-12)


@pytest.mark.parametrize(
    ("shape", "m"),
    [
        ("blobs", 16),
        ("blobs", 1),
        ("uniform", 5),
        ("flat", 4),
        ("line", 3),
        ("twins", 2),
        ("6d", 16),
        ("6d", 39),
    ],
)
@pytest.mark.parametrize("search", ["grid", "brute"])
def test_grid_neighbors_are_exact(shape, m, search):
    """Both searches (grid, brute-force scan) return exactly the m nearest means, in any
    layout, and keep the budgets that let later refreshes skip points."""
    from napari_sinkhorn_em.mixture import _kernels
    from napari_sinkhorn_em.mixture._neighbors import _BruteNeighbors, _NeighborGrid

    rng = np.random.default_rng(7)
    K = 40
    if shape == "blobs":
        means = rng.uniform(0, 12, size=(K, 3))
        X = means[rng.integers(0, K, 6000)] + rng.normal(0, 0.8, size=(6000, 3))
        means = means + rng.normal(0, 0.5, size=means.shape)  # moved since the grid was built
    elif shape == "uniform":
        X, means = rng.uniform(0, 10, size=(3000, 3)), rng.uniform(-2, 12, size=(K, 3))
    elif shape == "flat":  # one coordinate constant: a single layer of cells across it
        X = np.column_stack([rng.uniform(0, 10, size=(3000, 2)), np.full(3000, 1.5)])
        means = rng.uniform(0, 10, size=(K, 3))
    elif shape == "line":
        X, means = rng.normal(size=(2000, 1)), rng.normal(size=(K, 1)) * 2
    elif shape == "6d":
        means = rng.uniform(0, 6, size=(K, 6))
        X = means[rng.integers(0, K, 3000)] + rng.normal(0, 0.5, size=(3000, 6))
    else:  # all points at two positions
        X = np.repeat([[0.0, 0.0], [5.0, 1.0]], 500, axis=0)
        means = rng.uniform(-1, 6, size=(K, 2))
    X = np.ascontiguousarray(X)
    grid = (_NeighborGrid if search == "grid" else _BruteNeighbors)(X, K, m)
    # then small moves (most points keep their neighbours without a search), then one
    # component jumps across the data (every point is searched again)
    # (with small moves of the others: the brute-force scan measures the far mover
    # directly and bounds the rest by their moves)
    jump = 1e-3 * rng.normal(size=means.shape)
    jump[0] = X.max(axis=0) - means[0]
    for step in (0.0, 1e-3 * rng.normal(size=means.shape), jump):
        means = np.ascontiguousarray(means + step)
        out = grid.neighbors(means, _kernels.n_chunks_for(len(X)))
        d2 = ((X[:, None, :] - means[None, :, :]) ** 2).sum(-1)
        expect = np.sort(np.argsort(d2, axis=1, kind="stable")[:, :m], axis=1)
        np.testing.assert_array_equal(np.sort(out, axis=1), expect)
        if step is jump:
            continue
        # the small move leaves many points a budget: their search is skipped next
        assert np.mean(grid.budget > 0.01) > 0.2


@pytest.mark.parametrize("seed", [0, 1])
def test_brute_neighbour_lists_keep_their_order_and_ties(seed):
    """The brute-force scan's lists, in order, on integer data (many exact distance ties):
    the first scan lists the m nearest by distance, ties to the smaller index; a refresh
    after large moves (every point scanned, its previous threshold met by many means)
    lists them by distance, ties to the earlier place in the previous list and then to
    the smaller index (the order of the insertions, which the count search must
    reproduce: the E-step sums a row in list order). The bounds are the m-th and
    (m + 1)-th distances."""
    from napari_sinkhorn_em.mixture import _kernels
    from napari_sinkhorn_em.mixture._neighbors import _BruteNeighbors

    rng = np.random.default_rng(seed)
    N, K, m, d = 4000, 40, 8, 5
    X = rng.integers(0, 4, size=(N, d)).astype(float)
    means = rng.integers(0, 4, size=(K, d)).astype(float)
    search = _BruteNeighbors(X, K, m)
    n_chunks = _kernels.n_chunks_for(N)

    def sq(means):
        return ((X[:, None, :] - means[None, :, :]) ** 2).sum(-1)  # exact: integers

    out = search.neighbors(means, n_chunks).astype(np.int64)
    d2 = sq(means)
    order = np.argsort(d2, axis=1, kind="stable")
    np.testing.assert_array_equal(out, order[:, :m])
    rows = np.arange(N)[:, None]
    np.testing.assert_allclose(search.upper, np.sqrt(d2[rows, order[:, m - 1 : m]])[:, 0])
    np.testing.assert_allclose(search.lower, np.sqrt(d2[rows, order[:, m : m + 1]])[:, 0])

    old = out.copy()
    means2 = np.ascontiguousarray(means[rng.permutation(K)] + rng.integers(-1, 2, size=(K, d)))
    out2 = search.neighbors(means2, n_chunks).astype(np.int64)
    d2 = sq(means2)
    prio = np.tile(m + np.arange(K), (N, 1))
    prio[rows, old] = np.arange(m)
    expect = np.lexsort((prio, d2), axis=1)
    thr = d2[rows, old].max(axis=1)
    rescanned = (d2 <= thr[:, None]).sum(axis=1) > m + _kernels._SCAN_EXTRA
    assert rescanned.mean() > 0.5
    np.testing.assert_array_equal(out2[rescanned], expect[rescanned, :m])
    # every point: m distinct means at the m smallest distances (ties may go either way)
    assert (np.diff(np.sort(out2, axis=1), axis=1) > 0).all()
    np.testing.assert_array_equal(np.sort(d2[rows, out2], axis=1), np.sort(d2, axis=1)[:, :m])


@pytest.mark.parametrize("method", ["sinkhorn", "em"])
@pytest.mark.parametrize("m", [None, 3])
def test_sparse_with_all_components_is_exact(method, m):
    X, _, centers = blobs(4, K=3, D=2, sep=3.0)
    kw = {"method": method, "means_init": centers + 0.5, "max_iter": 5, "tol": 0}
    with pytest.warns(ConvergenceWarning):
        dense = SinkhornEM(3, **kw).fit(X)
    with pytest.warns(ConvergenceWarning):
        sparse = SinkhornEM(3, n_neighbors=m, **kw).fit(X)
    np.testing.assert_allclose(sparse.means_, dense.means_, atol=1e-9)
    np.testing.assert_allclose(sparse.objective_history_, dense.objective_history_, atol=1e-9)


@pytest.mark.parametrize(
    "kw",
    [
        {"method": "sinkhorn"},
        {"method": "em"},
        {"method": "em", "learn_weights": True},
        {"method": "sinkhorn", "covariance_type": "diag", "weights": [0.2, 0.3, 0.1, 0.4]},
        {"method": "sinkhorn", "position_dims": 2, "covariance_bounds": (0.5, 2.0)},
        {"method": "sinkhorn", "n_neighbors": 4},
    ],
)
def test_objective_is_monotone(kw):
    X, _, _ = blobs(5, K=4, D=3, sep=2.0)
    hist = SinkhornEM(4, max_iter=30, tol=1e-10, random_state=3, init="random", **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        hist = hist.fit(X).objective_history_
    assert len(hist) > 3
    assert np.all(np.diff(hist) >= -1e-9)


def test_sinkhorn_objective_below_loglik_and_equal_at_balance():
    X, _, _ = blobs(6, K=3, D=2)
    s = SinkhornEM(3, random_state=0).fit(X)
    em = SinkhornEM(
        3, method="em", max_iter=0, means_init=s.means_, covariances_init=s.covariances_
    )
    ll = em.fit(X).objective_
    # -L <= l, nearly equal on balanced separated blobs
    assert s.objective_ <= ll + 1e-10
    assert s.objective_ == pytest.approx(ll, abs=1e-3)


def test_n_init_never_worse():
    X, _, _ = blobs(7, K=5, D=2, sep=4.0)
    kw = {"random_state": 11, "init": "random", "tol": 1e-4, "max_iter": 300}
    one = SinkhornEM(5, n_init=1, **kw).fit(X)
    many = SinkhornEM(5, n_init=4, **kw).fit(X)
    assert many.objective_ >= one.objective_ - 1e-12


def test_deterministic():
    X, _, _ = blobs(8, K=3)
    a = SinkhornEM(3, random_state=5).fit(X)
    b = SinkhornEM(3, random_state=5).fit(X)
    np.testing.assert_array_equal(a.means_, b.means_)
    assert a.objective_history_ == b.objective_history_


def test_convergence_warning_and_max_iter_zero():
    X, _, centers = blobs(9, K=3)
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        est = SinkhornEM(3, max_iter=1, tol=0, random_state=0).fit(X)
    assert not est.converged_ and est.n_iter_ == 1
    means_init = centers + 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        est = SinkhornEM(3, max_iter=0, means_init=means_init).fit(X)
    np.testing.assert_array_equal(est.means_, means_init)
    assert est.n_iter_ == 0 and len(est.objective_history_) == 1


def test_callback_progress_and_stop():
    X, _, _ = blobs(10, K=3)
    seen = []
    est = SinkhornEM(3, tol=0, max_iter=50, random_state=0, callback=lambda i, o: seen.append(i))
    with pytest.warns(ConvergenceWarning):
        est.fit(X)
    assert seen == list(range(1, 51))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        est = SinkhornEM(3, tol=0, max_iter=50, random_state=0, callback=lambda i, o: i >= 3)
        est.fit(X)
    assert est.stopped_ and not est.converged_ and est.n_iter_ == 3


def test_collapsed_component_raises():
    # sklearn's regularisation test: two collapsed point clouds, no regularisation
    X = np.vstack([np.ones((10, 2)), np.zeros((10, 2))])
    with pytest.raises(ValueError, match=r"component \d+ collapsed"):
        SinkhornEM(2, reg_covar=0, means_init=[[0, 0], [1, 1]]).fit(X)
    est = SinkhornEM(2, reg_covar=1e-6, means_init=[[0, 0], [1, 1]]).fit(X)
    np.testing.assert_allclose(np.sort(est.means_[:, 0]), [0, 1], atol=1e-9)


def test_sample_weight_equals_repetition():
    X, _, centers = blobs(11, K=2, n=50)
    w = np.random.default_rng(0).integers(0, 4, size=X.shape[0])
    kw = {"means_init": centers, "max_iter": 8, "tol": 0}
    with pytest.warns(ConvergenceWarning):
        a = SinkhornEM(2, **kw).fit(X, sample_weight=w)
    with pytest.warns(ConvergenceWarning):
        b = SinkhornEM(2, **kw).fit(np.repeat(X, w, axis=0))
    np.testing.assert_allclose(a.means_, b.means_, atol=1e-9)
    np.testing.assert_allclose(a.covariances_, b.covariances_, atol=1e-9)


def test_block_structure_and_bounds():
    rng = np.random.default_rng(12)
    cov = np.array([[4.0, 0, 0, 1.5], [0, 0.01, 0, 0], [0, 0, 1, 0], [1.5, 0, 0, 1]])
    X = rng.multivariate_normal(np.zeros(4), cov, size=3000)
    est = SinkhornEM(1, position_dims=2, covariance_bounds=(0.1, 2.0)).fit(X)
    c = est.covariances_[0]
    np.testing.assert_array_equal(c[:2, 2:], 0)
    w = np.linalg.eigvalsh(c[:2, :2])
    np.testing.assert_allclose(w, [0.1, 2.0], atol=1e-12)
    # the intensity block is neither clipped nor decoupled from itself
    assert c[3, 3] == pytest.approx(1.0, abs=0.1)
    est = SinkhornEM(1, covariance_type="diag", covariance_bounds=(0.1, 2.0)).fit(X)
    np.testing.assert_allclose(est.covariances_[0, :2], [2.0, 0.1])


def test_far_points_and_zero_weights_stay_finite():
    X, _, centers = blobs(13, K=3)
    X = np.vstack([X, [[1e5, -1e5]]])
    sw = np.ones(X.shape[0])
    sw[:10] = 0
    for method in ("sinkhorn", "em"):
        est = SinkhornEM(3, method=method, means_init=centers, random_state=0)
        est.fit(X, sample_weight=sw)
        assert np.all(np.isfinite(est.means_)) and np.all(np.isfinite(est.objective_history_))
        assert np.all(np.isfinite(est.score_samples(X)))
        assert np.all(np.isfinite(est.predict_proba(X)))


def test_single_component():
    X, _, _ = blobs(14, K=1)
    est = SinkhornEM(1).fit(X)
    np.testing.assert_allclose(est.means_[0], X.mean(0), atol=1e-12)
    np.testing.assert_allclose(est.predict_proba(X), 1.0)


@pytest.mark.parametrize(
    ("X", "kw", "fit_kw", "match"),
    [
        (np.array([[0.0, np.nan]] * 5), {}, {}, "NaN or infinity"),
        (np.array([[0.0, np.inf]] * 5), {}, {}, "NaN or infinity"),
        (np.zeros(5), {}, {}, "2-D"),
        (np.zeros((5, 2)), {"weights": [0.5, 0.6]}, {}, "sum to 1"),
        (np.zeros((5, 2)), {"weights": [1.5, -0.5]}, {}, "strictly positive"),
        (np.zeros((5, 2)), {"weights": [1.0]}, {}, r"shape \(2,\)"),
        (np.zeros((5, 2)), {}, {"sample_weight": [1, 1, -1, 1, 1]}, "non-negative"),
        (np.zeros((5, 2)), {}, {"sample_weight": [1, 1]}, r"sample_weight must have shape"),
        (np.zeros((5, 2)), {}, {"sample_weight": [1, 0, 0, 0, 0]}, "positive mass"),
        (np.zeros((1, 2)), {}, {}, "positive mass"),
        (np.zeros((5, 2)), {"means_init": np.zeros((3, 2))}, {}, r"means_init must have shape"),
        (np.zeros((5, 2)), {"covariances_init": np.ones((2, 3))}, {}, "covariances_init"),
        (np.zeros((5, 2)), {"method": "kmeans"}, {}, "method must be"),
        (np.zeros((5, 2)), {"learn_weights": True}, {}, "requires method='em'"),
        (np.zeros((5, 2)), {"covariance_type": "tied"}, {}, "covariance_type"),
        (np.zeros((5, 2)), {"covariance_bounds": (2, 1)}, {}, "covariance_bounds"),
        (np.zeros((5, 2)), {"position_dims": 3}, {}, "position_dims"),
        (np.zeros((5, 2)), {"n_neighbors": 0}, {}, "n_neighbors"),
        (np.zeros((5, 2)), {"init": "kmeans"}, {}, "init must be"),
        (np.zeros((5, 2)), {"n_init": 0}, {}, "n_init"),
    ],
)
def test_bad_input(X, kw, fit_kw, match):
    with pytest.raises(ValueError, match=match):
        SinkhornEM(2, **kw).fit(X, **fit_kw)


def test_predict_checks():
    X, _, _ = blobs(15, K=2)
    with pytest.raises(ValueError, match="not fitted"):
        SinkhornEM(2).predict(X)
    est = SinkhornEM(2, random_state=0).fit(X)
    with pytest.raises(ValueError, match="features"):
        est.predict(np.zeros((3, 5)))


def test_unlinked_blocks_are_balanced_and_the_fit_converges():
    """Two groups of points farther apart than the neighbour reach: with weights that do
    not match the groups' masses the constrained E-step has no solution unless the
    weights are balanced per block (found after the E-step stalls); the fit then
    converges with each group's weights scaled to its mass."""
    rng = np.random.default_rng(4)
    centres = np.array([[0.0, 0.0], [0.0, 4.0], [100.0, 0.0], [100.0, 4.0]])
    sizes = [500, 500, 520, 520]  # group masses 0.490 / 0.510, weights 0.5 / 0.5
    X = np.concatenate(
        [c + rng.normal(0, 0.7, size=(n, 2)) for c, n in zip(centres, sizes, strict=True)]
    )
    est = SinkhornEM(
        4, means_init=centres + 0.3, n_neighbors=2, tol=1e-8, max_iter=200, random_state=0
    )
    est.fit(X)
    assert est.converged_ and est.n_iter_ < 100
    assert est.marginal_error_ < 1e-6
    np.testing.assert_allclose(est.means_, centres, atol=0.15)
    mass = np.bincount(est.predict(X), minlength=4) / len(X)
    np.testing.assert_allclose(mass, np.array(sizes) / len(X), atol=2e-3)


def _soft_marginal_reference(X, means, cov, alpha, tau):
    """Slow reference: the unbalanced semi-dual maximised by dense NumPy Newton (D = 1).

    J(g) = -tau sum_k alpha_k (exp(-(g_k - log alpha_k) / tau) - 1)
           - mean_i log sum_k exp(log p_k(x_i) + g_k)
    """
    from scipy.special import logsumexp
    from scipy.stats import norm

    A = np.stack(
        [norm.logpdf(X[:, 0], m, np.sqrt(c)) for m, c in zip(means, cov, strict=True)], axis=1
    )
    la = np.log(alpha)
    g = la.copy()
    for _ in range(100):  # plain dense Newton on the concave semi-dual
        r = np.exp(A + g - logsumexp(A + g, axis=1)[:, None])
        target = alpha * np.exp(-(g - la) / tau)
        grad = target - r.mean(axis=0)
        H = np.diag(r.mean(axis=0)) - r.T @ r / len(X) + np.diag(target / tau)
        g = g + np.linalg.solve(H, grad)
        if np.abs(grad).max() < 1e-14:
            break
    return g


@pytest.mark.parametrize("tau", [0.3, 3.0, 30.0])
def test_soft_marginal_e_step_matches_slow_reference(tau):
    rng = np.random.default_rng(21)
    X = np.concatenate([rng.normal(-1.0, 1.0, (600, 1)), rng.normal(1.5, 0.7, (200, 1))])
    means = np.array([[-2.0], [2.0]])
    cov = np.array([1.0, 0.5])
    alpha = np.array([0.4, 0.6])  # far from the data's 0.75 / 0.25
    est = SinkhornEM(
        2, weights=alpha, means_init=means, covariances_init=cov.reshape(2, 1, 1),
        max_iter=0, marginal_penalty=tau, tol=1e-12,
    ).fit(X)  # fmt: skip
    g_ref = _soft_marginal_reference(X, means[:, 0], cov, alpha, tau)
    np.testing.assert_allclose(est.potential_, g_ref, atol=1e-7)
    # the column sums reach the soft target, which lies between EM's and the weights
    col = est.predict_proba(X).mean(axis=0)
    target = alpha * np.exp(-(est.potential_ - np.log(alpha)) / tau)
    np.testing.assert_allclose(col, target, atol=1e-7)
    em_col = SinkhornEM(
        2, method="em", weights=alpha, means_init=means, covariances_init=cov.reshape(2, 1, 1),
        max_iter=0,
    ).fit(X).predict_proba(X).mean(axis=0)  # fmt: skip
    assert abs(col[0] - alpha[0]) < abs(em_col[0] - alpha[0])


def test_soft_marginal_limits_are_sinkhorn_em_and_em():
    X, _, _ = blobs(22, K=3, D=2, sep=2.5)
    kw = {"weights": [0.5, 0.3, 0.2], "init": "random", "random_state": 2, "tol": 1e-12}
    kw["max_iter"] = 60
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        exact = SinkhornEM(3, **kw).fit(X)
        stiff = SinkhornEM(3, marginal_penalty=1e7, **kw).fit(X)
        em = SinkhornEM(3, method="em", **kw).fit(X)
        loose = SinkhornEM(3, marginal_penalty=1e-7, **kw).fit(X)
    np.testing.assert_allclose(stiff.means_, exact.means_, atol=1e-4)
    np.testing.assert_allclose(loose.means_, em.means_, atol=1e-4)
    assert np.abs(exact.means_ - em.means_).max() > 1e-2  # the two limits differ here


def test_soft_marginal_objective_is_monotone_and_bad_values_raise():
    X, _, _ = blobs(23, K=4, D=3, sep=2.0)
    est = SinkhornEM(
        4, weights=[0.1, 0.2, 0.3, 0.4], marginal_penalty=2.0, n_neighbors=3, init="random",
        random_state=1, tol=1e-10, max_iter=40,
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        hist = est.fit(X).objective_history_
    assert len(hist) > 3
    assert np.all(np.diff(hist) >= -1e-9)
    for bad in (0.0, -1.0, "big", True):
        with pytest.raises(ValueError, match="marginal_penalty must be a positive number"):
            SinkhornEM(2, marginal_penalty=bad).fit(np.zeros((5, 2)) + np.arange(5)[:, None])


@pytest.mark.parametrize("kw", [{}, {"init": "random"}, {"n_neighbors": 1}, {"method": "em"}])
def test_data_beyond_float_range_is_a_clear_error(kw):
    """Issue 16: data scaled by 1e200 used to fail deep inside the initialisation with
    "Probabilities contain NaN"; its variances (1e400) do not exist in float64, so the
    error names X, the magnitude and the remedy. 1e150 (squares 1e300) still fits."""
    X, _, _ = blobs(16, K=2, sep=6.0)
    with pytest.raises(ValueError, match=r"X has values of magnitude up to .*e\+200.*rescale X"):
        SinkhornEM(2, random_state=0, **kw).fit(X * 1e200)
    est = SinkhornEM(2, random_state=0, **kw).fit(X * 1e150)
    ref = SinkhornEM(2, random_state=0, **kw).fit(X)
    assert np.all(np.isfinite(est.means_)) and np.all(np.isfinite(est.covariances_))
    np.testing.assert_allclose(est.means_ / 1e150, ref.means_, rtol=1e-6, atol=1e-6)
    assert np.array_equal(est.predict(X * 1e150), ref.predict(X))


def test_tiny_coordinates_keep_the_neighbour_grid_finite():
    """Tiny coordinates in 6-D (1e-60: the product of the six extents underflows) made
    the grid's cell count infinite ("dimensions are too large"); it uses extent ratios
    now. Spreads whose squares underflow (1e-200) are a clear error like 1e200."""
    X, _, _ = blobs(17, K=3, D=6, sep=6.0)
    est = SinkhornEM(3, n_neighbors=2, reg_covar=0.0, random_state=0).fit(X * 1e-60)
    ref = SinkhornEM(3, n_neighbors=2, reg_covar=0.0, random_state=0).fit(X)
    np.testing.assert_allclose(est.means_ * 1e60, ref.means_, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"X varies by at most .*e-19.*rescale X"):
        SinkhornEM(3, random_state=0).fit(X * 1e-200)


# ---------------------------------------------------------------- issue 15


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"n_neighbors": 4},
        {"covariance_type": "diag"},
        {"covariance_type": "diag", "n_neighbors": 4},
        {"covariance_type": "spherical", "n_neighbors": 3},
    ],
)
def test_fast_start_reaches_the_exact_fit(kw):
    """fast_start (inexact early E-steps, sampled Hessian, scaling passes) converges to
    the fit of exact E-steps from the same random start, declares convergence only on an
    exact E-step and leaves an exact final E-step (marginal error at the final tolerance)."""
    X, _, _ = blobs(21, K=6, D=3, sep=5.0, n=300)
    common = {"init": "random", "random_state": 4, "tol": 1e-6, "max_iter": 300, **kw}
    fast = SinkhornEM(6, fast_start=True, **common).fit(X)
    exact = SinkhornEM(6, fast_start=False, **common).fit(X)
    assert fast.converged_ and exact.converged_
    np.testing.assert_allclose(
        np.sort(fast.means_, axis=0), np.sort(exact.means_, axis=0), atol=1e-3
    )
    assert fast.objective_ == pytest.approx(exact.objective_, abs=1e-5)
    assert fast.marginal_error_ < 1e-8
    # the objective still rises up to the error of an inexact E-step (marginal error
    # e <= 1e-2 and e^2 K / 2 below 1% of the last change)
    assert np.all(np.diff(fast.objective_history_) >= -1e-5)


def test_fast_start_auto_is_off_for_given_means_and_max_iter_end_is_exact():
    X, _, centers = blobs(22, K=4, D=2, sep=6.0)
    start = centers + 0.7
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        auto = SinkhornEM(4, init=start, max_iter=6, tol=1e-12).fit(X)
        off = SinkhornEM(4, init=start, max_iter=6, tol=1e-12, fast_start=False).fit(X)
    # bit for bit: given means keep the exact E-steps of earlier versions (the pipeline)
    assert np.array_equal(auto.means_, off.means_)
    assert auto.objective_history_ == off.objective_history_
    with pytest.warns(ConvergenceWarning):
        short = SinkhornEM(4, init=start, max_iter=2, tol=0, fast_start=True).fit(X)
    # stopped by max_iter on an inexact E-step: the last E-step is finished exactly
    assert short.marginal_error_ < 1e-8
    with pytest.raises(ValueError, match="fast_start must be"):
        SinkhornEM(4, fast_start="yes").fit(X)


def test_sparse_e_step_caps_weights_the_lists_cannot_deliver():
    """A component listed by points holding less than its weight: the sparse problem has
    no solution (the E-step used to run its pass limit). Its weight is capped at half that
    mass, the excess spread over the others in proportion, and the E-step converges."""
    from napari_sinkhorn_em import sinkhorn_responsibilities

    rng = np.random.default_rng(3)
    N, K, m = 2000, 5, 3
    idx = np.empty((N, m), dtype=np.int64)
    for i in range(N):
        idx[i] = rng.choice(4, size=m, replace=False)  # components 0..3, each ~75% of rows
    idx[:30, 2] = 4  # component 4 is listed by 30 points only: 1.5% of the mass < 20%
    A = rng.normal(size=(N, m))
    R, info = sinkhorn_responsibilities(A, np.full(K, 0.2), neighbors=idx, return_info=True)
    assert info.converged and info.n_passes < 40
    col = np.bincount(idx.ravel(), weights=R.ravel() / N, minlength=K)
    assert col[4] == pytest.approx(0.5 * 30 / N, rel=1e-6)
    np.testing.assert_allclose(col[:4], (1 - 0.5 * 30 / N) / 4, rtol=1e-6)


def unequal_blobs(seed, K, weights, sep=7.0, n=2000):
    rng = np.random.default_rng(seed)
    centers = rng.uniform(0, sep * K, size=(K, 2))
    while np.min(np.linalg.norm(centers[:, None] - centers[None], axis=2) + 1e9 * np.eye(K)) < sep:
        centers = rng.uniform(0, sep * K, size=(K, 2))
    counts = np.round(np.asarray(weights) * n).astype(int)
    X = np.concatenate([c + rng.normal(size=(k, 2)) for c, k in zip(centers, counts, strict=True)])
    return X, centers


def test_weights_estimate_learns_unequal_weights():
    w = np.array([0.6, 0.3, 0.1])
    X, centers = unequal_blobs(23, 3, w)
    est = SinkhornEM(3, weights="estimate", init="random", random_state=0, tol=1e-6).fit(X)
    order = match(est.means_, centers)
    np.testing.assert_allclose(est.means_[order], centers, atol=0.15)
    np.testing.assert_allclose(est.weights_[order], w, atol=0.01)
    # an EM fixed point: the objective is the mean log-likelihood
    assert est.objective_ == pytest.approx(est.score(X), abs=1e-6)
    assert est.n_iter_ > 1 and est.converged_
    for bad in ({"weights": "learn"}, {"weights": "estimate", "method": "em"}):
        with pytest.raises(ValueError, match="'estimate'"):
            SinkhornEM(3, **bad).fit(X)


def test_weights_estimate_from_random_starts_beats_em():
    """Ten equal clusters, 6 random starts: weights="estimate" reaches the global optimum
    at least as often as EM with learned weights from the same starts, and its
    log-likelihood is never below EM's by more than noise (study: docs/method.md)."""
    X, centers = unequal_blobs(24, 10, np.full(10, 0.1), n=1500)
    wins = {"em": 0, "estimate": 0}
    for seed in range(6):
        kw = {"init": "random", "random_state": seed, "tol": 1e-6, "max_iter": 500}
        em = SinkhornEM(10, method="em", learn_weights=True, **kw)
        est = SinkhornEM(10, weights="estimate", **kw)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            em.fit(X)
            est.fit(X)
        for name, model in (("em", em), ("estimate", est)):
            d = np.linalg.norm(centers[:, None] - model.means_[None], axis=2)
            wins[name] += bool(np.all(d.min(axis=1) < 0.5)) and len(set(d.argmin(axis=1))) == 10
        assert est.score(X) >= em.score(X) - 1e-3
    assert wins["estimate"] >= wins["em"] and wins["estimate"] >= 5


def test_split_and_merge_scores_rank_the_right_components():
    """The split score is far larger for a component over two blobs than over one, and the
    merge loss far smaller for two components in one blob than for two blobs apart."""
    from napari_sinkhorn_em.mixture import _splitmerge as sm

    rng = np.random.default_rng(3)
    one = rng.normal(size=(400, 2))
    shift = np.array([4.0, 0.0])
    two = np.concatenate([one[:200] - shift, one[200:] + shift])
    w = np.full(400, 1.0 / 400)
    floor = 1e-6 * np.eye(2)
    gains = {}
    for name, Y in (("one", one), ("two", two)):
        mu = Y.mean(axis=0)
        S = np.cov(Y.T, bias=True) + floor
        gains[name], halves = sm.split_gain(Y, w, mu, S, "full", floor)
    # two unit blobs 8 apart: log-likelihood 0.5 log 17 - log 2 = 0.723 per point better
    # as two components than as one Gaussian of variance 17 along the split
    assert gains["two"] == pytest.approx(0.723, abs=0.03)
    assert -0.01 < gains["one"] < 0.1
    pi, mu1, _, mu2, _ = halves
    assert pi == pytest.approx(0.5, abs=0.02)
    np.testing.assert_allclose(sorted([mu1[0], mu2[0]]), [-4.0, 4.0], atol=0.2)
    eye = np.eye(2)
    same, _ = sm.merge_loss(
        w / 2,
        w / 2,
        one,
        np.array([-0.1, 0.0]),
        eye,
        np.array([0.1, 0.0]),
        eye,
        0.5,
        0.5,
        "full",
        floor,
    )
    apart, (mu, S) = sm.merge_loss(
        w / 2,
        w / 2,
        two,
        np.array([-4.0, 0.0]),
        eye,
        np.array([4.0, 0.0]),
        eye,
        0.5,
        0.5,
        "full",
        floor,
    )
    assert abs(same) < 0.01 and apart == pytest.approx(0.723, abs=0.03)
    np.testing.assert_allclose(mu, [0.0, 0.0])
    np.testing.assert_allclose(S, [[17.0, 0.0], [0.0, 1.0]])


def test_weights_estimate_splits_and_merges_unequal_clusters():
    """Six clusters whose masses spread 10x: from random starts EM with learned weights
    (and the estimate without split/merge) stops with clusters shared or left uncovered;
    weights="estimate" (with its split-and-merge moves) finds every cluster with its
    weight, from every start, deterministically (study: docs/method.md)."""
    w = np.geomspace(1.0, 10.0, 6)
    w = np.random.default_rng(5).permutation(w / w.sum())
    X, centers = unequal_blobs(25, 6, w, n=3000)
    found = {"em": 0, "nosm": 0, "estimate": 0}
    for seed in range(4):
        kw = {"init": "random", "random_state": seed, "tol": 1e-6, "max_iter": 500}
        fits = {
            "em": SinkhornEM(6, method="em", learn_weights=True, **kw),
            "nosm": SinkhornEM(6, weights="estimate", split_merge=False, **kw),
            "estimate": SinkhornEM(6, weights="estimate", **kw),
        }
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            for model in fits.values():
                model.fit(X)
        for name, model in fits.items():
            d = np.linalg.norm(centers[:, None] - model.means_[None], axis=2)
            found[name] += bool(np.all(d.min(axis=1) < 0.3)) and len(set(d.argmin(axis=1))) == 6
        est = fits["estimate"]
        assert est.score(X) >= max(fits["em"].score(X), fits["nosm"].score(X)) - 1e-6
        if found["estimate"] == seed + 1:
            order = match(est.means_, centers)
            np.testing.assert_allclose(est.weights_[order], w, atol=0.01)
    assert found["estimate"] == 4 and found["em"] < 4 and found["nosm"] < 4
    again = SinkhornEM(6, weights="estimate", **kw).fit(X)
    np.testing.assert_array_equal(again.means_, est.means_)


def test_split_merge_parameter_checks():
    X, _, _ = blobs(0, K=3)
    for bad, match_ in (
        ({"split_merge": "yes"}, "split_merge must be"),
        ({"split_merge": True}, "split_merge=True needs"),
        ({"split_merge": True, "method": "em"}, "split_merge=True needs"),
    ):
        with pytest.raises(ValueError, match=match_):
            SinkhornEM(3, **bad).fit(X)
    # with EM learning the weights the moves are available too (split-and-merge EM)
    est = SinkhornEM(3, method="em", learn_weights=True, split_merge=True, random_state=0)
    assert est.fit(X).converged_


@pytest.mark.parametrize("kw", [{"n_neighbors": 3}, {"covariance_type": "diag"}])
def test_weights_estimate_moves_with_sparse_lists_and_other_covariances(kw):
    """The moves' refits run through the sparse neighbour model and every covariance
    type: the 10x-spread clusters are all found (a start where EM alone is stuck)."""
    w = np.geomspace(1.0, 10.0, 6)
    w = np.random.default_rng(5).permutation(w / w.sum())
    X, centers = unequal_blobs(25, 6, w, n=3000)
    common = {"init": "random", "random_state": 1, "tol": 1e-6, "max_iter": 500, **kw}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        em = SinkhornEM(6, method="em", learn_weights=True, **common).fit(X)
        est = SinkhornEM(6, weights="estimate", **common).fit(X)
    for model, ok in ((est, True), (em, False)):
        d = np.linalg.norm(centers[:, None] - model.means_[None], axis=2)
        assert bool(np.all(d.min(axis=1) < 0.3) and len(set(d.argmin(axis=1))) == 6) is ok
    assert est.score(X) > em.score(X) + 0.05


@pytest.mark.parametrize("D", [3, 5, 6, 7, 9])
@pytest.mark.parametrize("dense", [True, False])
def test_fused_kernels_match_the_separate_passes_bit_for_bit(D, dense):
    """The vectorised diagonal M-step (D <= 8 lanes; D = 9 takes the generic kernel) and
    the E-step pass that also accumulates it equal mstep_stats and estep_pass bit for bit
    (the first changes no fit; the second only through the cut it is given)."""
    from napari_sinkhorn_em.mixture import _kernels as k

    rng = np.random.default_rng(D)
    N, K, m = 3000, 7, 4
    X = rng.normal(size=(N, D)) * 3.0
    means = rng.normal(size=(K, D)) * 3.0
    prec = 1.0 / np.sqrt(rng.uniform(0.5, 2.0, size=(K, D)))
    log_det = np.log(prec).sum(axis=1)
    M = K if dense else m
    idx = (
        np.zeros((1, 1), dtype=np.int32)
        if dense
        else np.argsort(((X[:, None, :] - means[None]) ** 2).sum(-1), axis=1)[:, :m].astype(
            np.int32
        )
    )
    A = np.empty((N, M))
    P, amax = np.empty((N, M)), np.empty(N)
    k.log_prob_diag(X, means, prec, log_det, idx, dense, A, 8)
    k.row_max_exp(A, P, amax, 8)
    g = rng.normal(size=K)
    a = rng.uniform(0.0, 1.0, size=N)
    a[::10] = 0.0
    a /= a.sum()
    shift = means + 0.1
    cut = np.full(K, 1e-12)
    for use_p in (True, False):
        args = (X, A, P, amax, use_p, idx, dense, g, a, shift, cut, 8)
        ref = k.mstep_stats(*args, 1)
        if D <= k.MSTEP_LANES:
            new = k.mstep_stats_diag(*args)
            for r, n in zip(ref, new, strict=True):
                assert r.shape == n.shape and np.array_equal(r, n)
        # and both are the weighted sums they claim to be
        R = np.empty((N, M))
        k.responsibilities(A, P, amax, use_p, idx, dense, g, R, 8)
        cols = np.broadcast_to(np.arange(K), (N, K)) if dense else idx
        w = (R * a[:, None]).ravel()
        nk = np.bincount(cols.ravel(), weights=w, minlength=K)
        y0 = (X[:, None, 0] - shift[cols, 0]).ravel()
        np.testing.assert_allclose(ref[0], nk, rtol=1e-9, atol=1e-9)  # cut: <= N 1e-12
        np.testing.assert_allclose(ref[1][:, 0], np.bincount(cols.ravel(), w * y0), atol=1e-8)
        np.testing.assert_allclose(ref[2][:, 0, 0], np.bincount(cols.ravel(), w * y0**2), atol=1e-8)
        if D <= k.MSTEP_LANES:
            # the E-step pass that also accumulates the M-step statistics: both, bit for bit
            lse, lse2 = np.empty(N), np.empty(N)
            col, wlse, _, _ = k.estep_pass(A, P, amax, use_p, idx, dense, g, a, lse, 8, False, 1)
            both = k.estep_pass_stats_diag(
                X, A, P, amax, use_p, idx, dense, g, a, lse2, shift, cut, 8
            )
            assert np.array_equal(both[0], col) and both[1] == wlse and np.array_equal(lse, lse2)
            for r, n in zip(ref, both[2:], strict=True):
                assert np.array_equal(r, n)


def test_fused_last_pass_gives_the_m_step_of_the_solved_e_step():
    """A Newton step expected to meet a loose tolerance also accumulates the diagonal
    M-step statistics (fast_start); they are those of the returned potential (up to the
    M-step's 1e-16 cut, taken from the previous pass's column sums)."""
    from napari_sinkhorn_em.mixture import _kernels as k
    from napari_sinkhorn_em.mixture.estep import _EStep

    X, _, centers = blobs(31, K=5, D=4, sep=3.0, n=400)
    N, K, m = X.shape[0], 5, 3
    means = centers + 0.5
    d2 = ((X[:, None, :] - means[None]) ** 2).sum(-1)
    idx = np.argsort(d2, axis=1)[:, :m].astype(np.int32)
    A = -0.5 * np.take_along_axis(d2, idx, axis=1) - 2.0 * np.log(2 * np.pi)
    a = np.full(N, 1.0 / N)
    alpha = np.full(K, 1.0 / K)
    es = _EStep(A, idx, a, alpha, fuse=(X, means), rate=0.5)
    g, col, _, err, _, ok = es.newton(np.log(alpha), 1e-2, 100)
    assert ok and err < 1e-2
    assert es.stats is not None and es.stats[0] is g
    ref = k.mstep_stats(X, *es.rows(), g, a, means, k.MSTEP_CUT * col, es.n_chunks, 1)
    for r, n in zip(ref, es.stats[1:], strict=True):
        np.testing.assert_allclose(n, r, rtol=1e-12, atol=1e-15)
    # and a fit whose last pass took them: the same fit as with separate M-steps
    common = {"covariance_type": "diag", "n_neighbors": m, "random_state": 2, "tol": 1e-7}
    fused = SinkhornEM(K, init="random", fast_start=True, max_iter=200, **common).fit(X)
    exact = SinkhornEM(K, init="random", fast_start=False, max_iter=200, **common).fit(X)
    assert fused.converged_ and exact.converged_
    # both stop where the objective changes by < tol on a flat (overlapping) landscape
    np.testing.assert_allclose(np.sort(fused.means_, 0), np.sort(exact.means_, 0), atol=1e-3)
    assert fused.objective_ == pytest.approx(exact.objective_, abs=1e-6)
