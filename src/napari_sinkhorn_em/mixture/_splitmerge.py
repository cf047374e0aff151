"""Split-and-merge moves for ``SinkhornEM(weights="estimate")`` (issue 15).

With unequal cluster masses a fit from a random start ends with one component covering
two small clusters while two components share one cluster (docs/method.md): EM's
likelihood and Sinkhorn-EM's marginal constraint both keep that configuration. A move
merges the pair of components whose responsibilities overlap most and splits the
component whose points a two-component mixture explains best, keeping K; it is kept if
the EM fit from the moved parameters reaches a higher log-likelihood (the split-and-
merge EM of Ueda, Nakano, Ghahramani and Hinton, Neural Computation 12, 2000, with a
local two-component fit as the split criterion instead of their local KL density).

The candidates are ranked on a subsample of at most ``SUBSAMPLE`` points with dense
responsibilities (N_sub x K); the refits run on all the data through the estimator.
"""

from __future__ import annotations

import numpy as np

LOG_2PI = float(np.log(2.0 * np.pi))
# points used to rank the candidate moves (dense N_sub x K responsibilities)
SUBSAMPLE = 20000
# EM iterations of the local two-component fit that scores a split
_LOCAL_ITER = 10
# points whose weight for the scored component(s) is below this fraction of the largest
# are left out of a score (they change it by less than this fraction per point; measured
# at K = 50, N = 1e4: the ranking took 7 of 17 s with 1e-12)
_KEEP = 1e-4


def full_cov(cov, ct, D):
    """The (K, D, D) covariance matrices of ``cov`` given in scikit-learn's shape for ``ct``."""
    if ct == "full":
        return cov
    if ct == "diag":
        return np.einsum("kd,de->kde", cov, np.eye(D))
    return cov[:, None, None] * np.eye(D)


def _to_type(S, ct):
    """A (D, D) covariance in the shape of ``ct`` (its maximum-likelihood projection)."""
    if ct == "full":
        return S
    if ct == "diag":
        return np.diag(S).copy()
    return np.float64(np.trace(S) / S.shape[0])


def _log_gauss(X, mu, S):
    """log N(x | mu, S) for the rows of X (S a full (D, D) matrix)."""
    L = np.linalg.cholesky(S)
    z = np.linalg.solve(L, (X - mu).T)
    return -0.5 * (X.shape[1] * LOG_2PI + (z * z).sum(axis=0)) - np.log(np.diag(L)).sum()


def _moments(X, w, ct, floor):
    """Weighted mean and covariance (type ``ct``, full (D, D) form, ``floor`` added)."""
    W = w.sum()
    mu = w @ X / W
    d = X - mu
    S = (d * w[:, None]).T @ d / W
    S = np.diag(np.atleast_1d(_to_type(S, ct)) * np.ones(X.shape[1])) if ct != "full" else S
    return mu, S + floor


def split_gain(X, w, mu, S, ct, floor):
    """Gain in weighted log-likelihood from splitting one component in two.

    ``X`` the points, ``w`` their weights ``a_i r_ik`` (the component's share), ``mu, S``
    the component (full (D, D) form). Two halves along the principal axis of the weighted
    scatter, refined by ``_LOCAL_ITER`` EM iterations of a two-component mixture on the
    weighted points. Returns ``(gain, (pi, mu1, S1, mu2, S2))`` with ``gain`` in the
    units of the sample-weighted log-likelihood (sum over points of ``w`` times the
    log-density), ``pi`` the first half's share.
    """
    keep = w > _KEEP * w.max()
    X, w = X[keep], w[keep]
    D = X.shape[1]
    if X.shape[0] <= 2 * D + 2:
        return -np.inf, None
    d = X - mu
    C = (d * w[:, None]).T @ d / w.sum()
    _, vecs = np.linalg.eigh(C)
    side = d @ vecs[:, -1] > 0
    if side.all() or not side.any():
        return -np.inf, None
    q = side.astype(np.float64)
    base = w @ _log_gauss(X, mu, S)
    best = None
    for _ in range(_LOCAL_ITER):
        w1, w2 = w * q, w * (1.0 - q)
        if w1.sum() <= 1e-12 * w.sum() or w2.sum() <= 1e-12 * w.sum():
            return -np.inf, None
        pi = w1.sum() / w.sum()
        mu1, S1 = _moments(X, w1, ct, floor)
        mu2, S2 = _moments(X, w2, ct, floor)
        l1 = np.log(pi) + _log_gauss(X, mu1, S1)
        l2 = np.log1p(-pi) + _log_gauss(X, mu2, S2)
        lse = np.logaddexp(l1, l2)
        q = np.exp(l1 - lse)
        best = (w @ lse, (pi, mu1, S1, mu2, S2))
    return best[0] - base, best[1]


def merge_loss(w_i, w_j, X, mu_i, S_i, mu_j, S_j, al_i, al_j, ct, floor):
    """Loss in weighted log-likelihood from replacing two components by their moment match.

    Evaluated on the points weighted by ``w_i + w_j`` (their shares): the pair as a
    two-component mixture with weights ``al_i, al_j`` against one Gaussian. Returns
    ``(loss, (mu, S))``.
    """
    w = w_i + w_j
    keep = w > _KEEP * w.max()
    X, w = X[keep], w[keep]
    p = al_i / (al_i + al_j)
    mu = p * mu_i + (1 - p) * mu_j
    di, dj = mu_i - mu, mu_j - mu
    S = p * (S_i + np.outer(di, di)) + (1 - p) * (S_j + np.outer(dj, dj))
    if ct != "full":
        S = np.diag(np.atleast_1d(_to_type(S, ct)) * np.ones(X.shape[1]))
    pair = np.logaddexp(
        np.log(p) + _log_gauss(X, mu_i, S_i), np.log1p(-p) + _log_gauss(X, mu_j, S_j)
    )
    one = _log_gauss(X, mu, S)
    return float(w @ (pair - one)), (mu, S)


def candidate_moves(X, a, means, cov, alpha, log_prob, ct, floor, n_moves):
    """The ``n_moves`` most promising (merge pair, split) moves, best first.

    ``log_prob`` (N, K) dense log-densities of the points ``X`` (masses ``a``) under the
    current components. Merge pairs are the 2 n_moves pairs with the most overlapping
    responsibilities (cosine of the responsibility columns) and every component with its
    most overlapping partner, split candidates the 2 n_moves components with the largest
    :func:`split_gain`; a move combines a merge pair (i, j) with a split k outside it,
    ranked by the predicted change ``gain_k - loss_ij`` (:func:`merge_loss`).
    Returns a list of ``(i, j, k, merged, halves)`` with the merged component's
    ``(mu, S)`` and the split's ``(pi, mu1, S1, mu2, S2)`` (full (D, D) covariances).
    """
    K, D = means.shape
    Sf = full_cov(cov, ct, D)
    L = log_prob + np.log(alpha)
    L -= L.max(axis=1, keepdims=True)
    R = np.exp(L)
    R /= R.sum(axis=1, keepdims=True)
    Rw = R * a[:, None]
    # overlap of the responsibility columns (the SMEM merge criterion)
    norm = np.sqrt((Rw * R).sum(axis=0)) + 1e-300
    Jm = (Rw.T @ R) / np.outer(norm, norm)
    iu = np.triu_indices(K, 1)
    n_pairs = min(iu[0].size, 2 * n_moves)
    top = np.argsort(-Jm[iu], kind="stable")[:n_pairs]
    pairs = {(int(iu[0][t]), int(iu[1][t])) for t in top}
    # and every component with its most overlapping partner: a component collapsed onto
    # a few points overlaps little with anything, yet merging it away is the move (seen
    # with 10 clusters of masses spread 3x: a singleton of variance reg_covar)
    np.fill_diagonal(Jm, -np.inf)
    partner = np.argmax(Jm, axis=1)
    pairs |= {(min(i, int(p)), max(i, int(p))) for i, p in enumerate(partner)}
    merges = []
    for i, j in sorted(pairs):
        try:
            loss, merged = merge_loss(
                Rw[:, i], Rw[:, j], X, means[i], Sf[i], means[j], Sf[j], alpha[i], alpha[j],
                ct, floor,
            )  # fmt: skip
        except np.linalg.LinAlgError:  # a degenerate pair: no move
            continue
        merges.append((loss, i, j, merged))
    splits = []
    for k in range(K):
        try:
            gain, halves = split_gain(X, Rw[:, k], means[k], Sf[k], ct, floor)
        except np.linalg.LinAlgError:
            continue
        if halves is not None:
            splits.append((gain, k, halves))
    splits.sort(key=lambda s: -s[0])
    splits = splits[: 2 * n_moves]
    moves = []
    for loss, i, j, merged in merges:
        for gain, k, halves in splits:
            if k not in (i, j):
                moves.append((gain - loss, i, j, k, merged, halves))
    moves.sort(key=lambda m: -m[0])
    return [m[1:] for m in moves[:n_moves]]


def apply_move(move, means, cov, alpha, ct):
    """Parameters after merging (i, j) into i and splitting k into k and j."""
    i, j, k, (mu, S), (pi, mu1, S1, mu2, S2) = move
    means, cov, alpha = means.copy(), cov.copy(), alpha.copy()
    means[i], cov[i] = mu, _to_type(S, ct)
    alpha[i] = alpha[i] + alpha[j]
    ak = alpha[k]
    means[k], cov[k], alpha[k] = mu1, _to_type(S1, ct), ak * pi
    means[j], cov[j], alpha[j] = mu2, _to_type(S2, ct), ak * (1.0 - pi)
    return means, cov, alpha / alpha.sum()
