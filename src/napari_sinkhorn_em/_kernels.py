"""Numba kernels for the Sinkhorn-EM core.

All kernels work on either a *dense* problem (every point interacts with all K
components; arrays of shape (N, K)) or a *sparse-neighbour* problem (point i
interacts with the m components ``idx[i, :]``; arrays of shape (N, m)). The
``dense`` flag selects the indexing; for dense problems ``idx`` is a dummy
(1, 1) array that is never read.

Parallel kernels split the rows into ``n_chunks`` contiguous chunks processed by
``prange``; reductions go into per-chunk accumulators that are summed at the
end in chunk order; ``n_chunks`` does not depend on the thread count, so results
are bit-identical with any number of threads.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager

# GNU OpenMP (Numba's default "omp" threading layer) lets idle workers spin; on a machine
# whose cores are shared with other processes the spinning threads take the time slices
# the working ones need (measured on 2 cores at load ~6: 570 ms vs 85-130 ms per
# Sinkhorn-EM iteration at N = 1e5, K = 200, m = 16). Passive waiting costs a few
# microseconds per parallel region on an idle machine. Only takes effect if set before
# OpenMP is loaded; an explicit user setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numba
import numpy as np
from numba import njit, prange

LOG_2PI = math.log(2.0 * math.pi)


# Problems with fewer (row, component) entries than this run on one thread: a parallel
# region needs every worker scheduled, which on a loaded machine costs a scheduler time
# slice per kernel call (measured: 48 ms per E-step pass on a 600 x 4 problem on 2
# loaded cores, 0.1 ms serial), far more than the work itself.
SERIAL_BELOW = 1 << 18


@contextmanager
def threads_for(n_entries: int):
    """Run the enclosed kernels single-threaded when the problem is small."""
    if n_entries >= SERIAL_BELOW or numba.get_num_threads() == 1:
        yield
        return
    old = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(old)


# Row chunks of the parallel reductions. A constant, not a multiple of the thread count:
# the per-chunk partial sums are added in chunk order, so the results are bit-identical
# whatever the number of threads (a laptop, a 2-core CI runner, a cluster node, or the
# single-threaded path for small problems all agree). 32 chunks keep up to 32 threads busy.
N_CHUNKS = 32


def n_chunks_for(n_rows: int) -> int:
    """Number of row chunks used by the parallel reductions (independent of threads)."""
    return int(max(1, min(n_rows, N_CHUNKS)))


# --------------------------------------------------------------------------
# Gaussian log-densities
# --------------------------------------------------------------------------
@njit(parallel=True, cache=True)
def log_prob_full(X, means, prec_chol, log_det, idx, dense, out, n_chunks):
    """log N(x_i | mu_k, Sigma_k) with upper-triangular precision Cholesky factors.

    ``prec_chol[k]`` is U with U U^T = Sigma_k^{-1} (scikit-learn convention:
    the Mahalanobis vector is (x - mu) @ U); ``log_det[k] = sum(log diag U)``.
    Writes ``out[i, j]`` for component ``j`` (dense) or ``idx[i, j]`` (sparse).
    """
    N, D = X.shape
    M = out.shape[1]
    for c in prange(n_chunks):
        i0 = c * N // n_chunks
        i1 = (c + 1) * N // n_chunks
        y = np.empty(D)
        for i in range(i0, i1):
            for j in range(M):
                k = j if dense else idx[i, j]
                for d in range(D):
                    y[d] = X[i, d] - means[k, d]
                q = 0.0
                for d in range(D):
                    z = 0.0
                    for e in range(d + 1):
                        z += y[e] * prec_chol[k, e, d]
                    q += z * z
                out[i, j] = -0.5 * (D * LOG_2PI + q) + log_det[k]


@njit(parallel=True, cache=True)
def log_prob_diag(X, means, prec_sqrt, log_det, idx, dense, out, n_chunks):
    """log N(x_i | mu_k, diag(var_k)) with ``prec_sqrt = 1 / sqrt(var)`` of shape (K, D)."""
    N, D = X.shape
    M = out.shape[1]
    for c in prange(n_chunks):
        i0 = c * N // n_chunks
        i1 = (c + 1) * N // n_chunks
        for i in range(i0, i1):
            for j in range(M):
                k = j if dense else idx[i, j]
                q = 0.0
                for d in range(D):
                    z = (X[i, d] - means[k, d]) * prec_sqrt[k, d]
                    q += z * z
                out[i, j] = -0.5 * (D * LOG_2PI + q) + log_det[k]


# --------------------------------------------------------------------------
# E-step passes
# --------------------------------------------------------------------------
# Responsibilities below this are left out of the Hessian accumulation. The dropped part
# of sum_i a_i r_i r_i^T is at most about 2 m HESS_CUT relative to a column's mass (~1e-10
# for m = 16), so Newton keeps its quadratic convergence, while a row whose mass sits on
# a few components costs a few multiply-adds instead of m^2.
HESS_CUT = 1e-12


@njit(parallel=True, cache=True)
def row_max_exp(A, P, amax, n_chunks):
    """``amax[i] = max_j A[i, j]`` and ``P[i, j] = exp(A[i, j] - amax[i])`` (in [0, 1])."""
    N, M = A.shape
    for c in prange(n_chunks):
        i0 = c * N // n_chunks
        i1 = (c + 1) * N // n_chunks
        for i in range(i0, i1):
            mx = -np.inf
            for j in range(M):
                if A[i, j] > mx:
                    mx = A[i, j]
            amax[i] = mx
            for j in range(M):
                P[i, j] = math.exp(A[i, j] - mx)


@njit(parallel=True, cache=True)
def estep_pass(A, P, amax, use_p, idx, dense, g, a, R, lse, n_chunks, want_hess, hess_stride):
    """One pass of the log-domain E-step for a given column potential ``g``.

    For each row: ``lse[i] = logsumexp_j(A[i, j] + g[k_ij])`` and
    ``R[i, j] = exp(A[i, j] + g[k_ij] - lse[i])`` (rows sum to one).

    With ``use_p`` the row sums are formed without any exponential as
    ``sum_j P[i, j] exp(g_k - max g)`` from ``P``/``amax`` of :func:`row_max_exp` (computed
    once per log-density matrix; the E-step then changes only ``g``). A row whose sum
    falls below 1e-250 (its mass sits on components whose potential is far below the
    largest one) is recomputed in the log domain, so nothing underflows: the result is
    the same to rounding.

    Returns
    -------
    colsum : (K,) sum_i a_i R[i, :] scattered to components.
    wlse : float, sum_i a_i lse[i].
    S : (K, K) sum_i a_i r_i r_i^T over the entries ``r > HESS_CUT`` if ``want_hess``, else
        a (1, 1) zero array. With ``hess_stride > 1`` only every ``hess_stride``-th row
        enters S (scaled up accordingly): an unbiased estimate for large problems.
    work : float, number of multiply-adds the Hessian accumulation would cost with
        ``hess_stride = 1`` (estimated from the rows visited), to choose the stride.
    """
    N, M = A.shape
    K = g.shape[0]
    gmax = -np.inf
    for k in range(K):
        if g[k] > gmax:
            gmax = g[k]
    G = np.empty(K)
    for k in range(K):
        G[k] = math.exp(g[k] - gmax)
    c_acc = np.zeros((n_chunks, K))
    o_acc = np.zeros(n_chunks)
    w_acc = np.zeros(n_chunks)
    H_acc = np.zeros((n_chunks, K, K)) if want_hess else np.zeros((n_chunks, 1, 1))
    for c in prange(n_chunks):
        i0 = c * N // n_chunks
        i1 = (c + 1) * N // n_chunks
        v = np.empty(M)
        kk = np.empty(M, dtype=np.int64)
        sj = np.empty(M, dtype=np.int64)
        # per-chunk scalars live in registers (neighbouring o_acc[c] share a cache line)
        o_loc = 0.0
        w_loc = 0.0
        for i in range(i0, i1):
            s = 0.0
            li = 0.0
            if use_p:
                for j in range(M):
                    k = j if dense else idx[i, j]
                    kk[j] = k
                    e = P[i, j] * G[k]
                    v[j] = e
                    s += e
                if s > 1e-250:
                    li = amax[i] + gmax + math.log(s)
            if not (s > 1e-250):
                mx = -np.inf
                for j in range(M):
                    k = j if dense else idx[i, j]
                    kk[j] = k
                    t = A[i, j] + g[k]
                    v[j] = t
                    if t > mx:
                        mx = t
                s = 0.0
                for j in range(M):
                    e = math.exp(v[j] - mx)
                    v[j] = e
                    s += e
                li = mx + math.log(s)
            lse[i] = li
            inv = 1.0 / s
            ai = a[i]
            if ai > 0.0:
                o_loc += ai * li
            for j in range(M):
                r = v[j] * inv
                R[i, j] = r
                v[j] = r
                c_acc[c, kk[j]] += ai * r
            if want_hess and ai > 0.0 and i % hess_stride == 0:
                cnt = 0
                for j in range(M):
                    if v[j] > HESS_CUT:
                        sj[cnt] = j
                        cnt += 1
                w_loc += cnt * cnt
                w0 = hess_stride * ai
                for p in range(cnt):
                    jp = sj[p]
                    w = w0 * v[jp]
                    kp = kk[jp]
                    for q in range(cnt):
                        jq = sj[q]
                        H_acc[c, kp, kk[jq]] += w * v[jq]
        o_acc[c] = o_loc
        w_acc[c] = w_loc
    colsum = np.zeros(K)
    wlse = 0.0
    work = 0.0
    for c in range(n_chunks):
        wlse += o_acc[c]
        work += w_acc[c]
        for k in range(K):
            colsum[k] += c_acc[c, k]
    if want_hess:
        S = np.zeros((K, K))
        for c in range(n_chunks):
            for k in range(K):
                for q in range(K):
                    S[k, q] += H_acc[c, k, q]
    else:
        S = np.zeros((1, 1))
    return colsum, wlse, S, work * hess_stride


@njit(parallel=True, cache=True)
def reached_components(idx, a, K, n_chunks):
    """``out[k]`` is True if some point with positive mass lists component ``k``."""
    N, M = idx.shape
    acc = np.zeros((n_chunks, K), dtype=np.bool_)
    for c in prange(n_chunks):
        i0 = c * N // n_chunks
        i1 = (c + 1) * N // n_chunks
        for i in range(i0, i1):
            if a[i] > 0.0:
                for j in range(M):
                    acc[c, idx[i, j]] = True
    out = np.zeros(K, dtype=np.bool_)
    for c in range(n_chunks):
        for k in range(K):
            if acc[c, k]:
                out[k] = True
    return out


@njit(parallel=True, cache=True)
def log_colsum(A, idx, dense, g, a, lse, K, n_chunks):
    """log sum_i a_i exp(A[i, j] + g[k] - lse[i]) per component, fully in the log domain.

    Used only when a linear column sum underflows (components far from every point).
    Columns that no point reaches get ``-inf``.
    """
    N, M = A.shape
    mx_acc = np.full((n_chunks, K), -np.inf)
    s_acc = np.zeros((n_chunks, K))
    for c in prange(n_chunks):
        i0 = c * N // n_chunks
        i1 = (c + 1) * N // n_chunks
        for i in range(i0, i1):
            ai = a[i]
            if ai <= 0.0:
                continue
            la = math.log(ai) - lse[i]
            for j in range(M):
                k = j if dense else idx[i, j]
                t = A[i, j] + g[k] + la
                m0 = mx_acc[c, k]
                if t > m0:
                    s_acc[c, k] = s_acc[c, k] * math.exp(m0 - t) + 1.0
                    mx_acc[c, k] = t
                else:
                    s_acc[c, k] += math.exp(t - m0)
    out = np.full(K, -np.inf)
    for k in range(K):
        m = -np.inf
        for c in range(n_chunks):
            if mx_acc[c, k] > m:
                m = mx_acc[c, k]
        if m == -np.inf:
            continue
        s = 0.0
        for c in range(n_chunks):
            if s_acc[c, k] > 0.0:
                s += s_acc[c, k] * math.exp(mx_acc[c, k] - m)
        out[k] = m + math.log(s)
    return out


@njit(parallel=True, cache=True)
def row_logsumexp(A, idx, dense, g, out, n_chunks):
    """``out[i] = logsumexp_j(A[i, j] + g[k_ij])`` (mixture log-density when g = log weights)."""
    N, M = A.shape
    for c in prange(n_chunks):
        i0 = c * N // n_chunks
        i1 = (c + 1) * N // n_chunks
        for i in range(i0, i1):
            mx = -np.inf
            for j in range(M):
                k = j if dense else idx[i, j]
                t = A[i, j] + g[k]
                if t > mx:
                    mx = t
            s = 0.0
            for j in range(M):
                k = j if dense else idx[i, j]
                s += math.exp(A[i, j] + g[k] - mx)
            out[i] = mx + math.log(s)


# --------------------------------------------------------------------------
# M-step reductions
# --------------------------------------------------------------------------
@njit(parallel=True, cache=True)
def mstep_stats(X, R, idx, dense, a, shift, K, n_chunks, kind):
    """Weighted sufficient statistics in one pass, shifted by ``shift`` (K, D) for stability.

    With w_ik = a_i r_ik and y = x_i - shift_k, returns
    ``nk[k] = sum_i w_ik``, ``s1[k] = sum_i w_ik y`` and the second moment
    ``s2`` = sum_i w_ik y y^T: shape (K, D, D) when ``kind == 0`` (full) or
    (K, D, 1) holding only the diagonal when ``kind == 1``.
    """
    N, D = X.shape
    M = R.shape[1]
    nk_acc = np.zeros((n_chunks, K))
    s1_acc = np.zeros((n_chunks, K, D))
    s2_acc = np.zeros((n_chunks, K, D, D)) if kind == 0 else np.zeros((n_chunks, K, D, 1))
    for c in prange(n_chunks):
        i0 = c * N // n_chunks
        i1 = (c + 1) * N // n_chunks
        y = np.empty(D)
        for i in range(i0, i1):
            ai = a[i]
            if ai <= 0.0:
                continue
            for j in range(M):
                w = ai * R[i, j]
                if w == 0.0:
                    continue
                k = j if dense else idx[i, j]
                nk_acc[c, k] += w
                for d in range(D):
                    y[d] = X[i, d] - shift[k, d]
                    s1_acc[c, k, d] += w * y[d]
                if kind == 0:
                    for d in range(D):
                        wy = w * y[d]
                        for e in range(d + 1):
                            s2_acc[c, k, d, e] += wy * y[e]
                else:
                    for d in range(D):
                        s2_acc[c, k, d, 0] += w * y[d] * y[d]
    nk = np.zeros(K)
    s1 = np.zeros((K, D))
    s2 = np.zeros(s2_acc.shape[1:])
    for c in range(n_chunks):
        for k in range(K):
            nk[k] += nk_acc[c, k]
            for d in range(D):
                s1[k, d] += s1_acc[c, k, d]
                for e in range(s2.shape[2]):
                    s2[k, d, e] += s2_acc[c, k, d, e]
    if kind == 0:
        for k in range(K):
            for d in range(D):
                for e in range(d):
                    s2[k, e, d] = s2[k, d, e]
    return nk, s1, s2


# --------------------------------------------------------------------------
# Neighbour search
# --------------------------------------------------------------------------
@njit(parallel=True, cache=True)
def refine_neighbors(Xp, means_p, idx, graph, out, n_chunks):
    """Update each point's m nearest component means from a candidate set.

    Candidates for point i are its current components ``idx[i, :]`` plus the
    component-graph neighbours ``graph[idx[i, 0], :]`` of its current nearest
    component. The m candidates closest in Euclidean distance (over the
    columns of ``Xp`` / ``means_p``) are written to ``out[i, :]`` sorted by
    increasing distance. Cost O(N (m + m') d).
    """
    N, D = Xp.shape
    M = idx.shape[1]
    K = means_p.shape[0]
    G = graph.shape[1]
    for c in prange(n_chunks):
        i0 = c * N // n_chunks
        i1 = (c + 1) * N // n_chunks
        stamp = np.empty(K, dtype=np.int64)
        for k in range(K):
            stamp[k] = -1
        bd = np.empty(M)
        bk = np.empty(M, dtype=np.int64)
        for i in range(i0, i1):
            nb = 0
            for t in range(M + G):
                k = idx[i, t] if t < M else graph[idx[i, 0], t - M]
                if stamp[k] == i:
                    continue
                stamp[k] = i
                dist = 0.0
                for d in range(D):
                    z = Xp[i, d] - means_p[k, d]
                    dist += z * z
                if nb < M:
                    p = nb
                    nb += 1
                elif dist < bd[M - 1]:
                    p = M - 1
                else:
                    continue
                while p > 0 and bd[p - 1] > dist:
                    bd[p] = bd[p - 1]
                    bk[p] = bk[p - 1]
                    p -= 1
                bd[p] = dist
                bk[p] = k
            for j in range(M):
                out[i, j] = bk[j]


@njit(parallel=True, cache=True)
def sq_dist_min_update(Xp, center, best):
    """``best[i] = min(best[i], ||Xp[i] - center||^2)`` (k-means++ seeding)."""
    N, D = Xp.shape
    for i in prange(N):
        dist = 0.0
        for d in range(D):
            z = Xp[i, d] - center[d]
            dist += z * z
        if dist < best[i]:
            best[i] = dist


@njit(parallel=True, cache=True)
def nearest_center(Xp, centers, labels):
    """Index of the nearest center (Euclidean) for every row."""
    N, D = Xp.shape
    K = centers.shape[0]
    for i in prange(N):
        bestd = np.inf
        bestk = 0
        for k in range(K):
            dist = 0.0
            for d in range(D):
                z = Xp[i, d] - centers[k, d]
                dist += z * z
            if dist < bestd:
                bestd = dist
                bestk = k
        labels[i] = bestk


# --------------------------------------------------------------------------
# Small dense solve (serial: a K x K system is too small for threaded BLAS, whose
# thread start-up dominated the Newton step in measurements)
# --------------------------------------------------------------------------
@njit(cache=True)
def cholesky_solve(H, b):
    """Solve ``H x = b`` for symmetric positive definite ``H`` by Cholesky.

    Returns ``(x, ok)``; ``ok`` is False if a pivot is not positive.
    """
    n = H.shape[0]
    L = np.zeros((n, n))
    for j in range(n):
        s = H[j, j]
        for p in range(j):
            s -= L[j, p] * L[j, p]
        if not s > 0.0:
            return np.zeros(n), False
        d = math.sqrt(s)
        L[j, j] = d
        for i in range(j + 1, n):
            t = H[i, j]
            for p in range(j):
                t -= L[i, p] * L[j, p]
            L[i, j] = t / d
    y = np.empty(n)
    for i in range(n):
        t = b[i]
        for p in range(i):
            t -= L[i, p] * y[p]
        y[i] = t / L[i, i]
    x = np.empty(n)
    for i in range(n - 1, -1, -1):
        t = y[i]
        for p in range(i + 1, n):
            t -= L[p, i] * x[p]
        x[i] = t / L[i, i]
    return x, True


@njit(cache=True)
def precision_cholesky(cov, P, log_det):
    """Upper-triangular precision factors of SPD matrices (serial, no BLAS/LAPACK).

    For every ``cov[k] = L L^T`` writes ``P[k] = L^{-T}`` (so ``P P^T = cov^{-1}``, the
    scikit-learn convention) and ``log_det[k] = -sum(log diag L)``. Returns the index of
    the first matrix that is not numerically positive definite, or -1. (Small LAPACK
    calls between parallel kernels wake OpenBLAS's spinning threads; see sinkhorn._vdot.)
    """
    K, D, _ = cov.shape
    L = np.zeros((D, D))
    for k in range(K):
        for j in range(D):
            s = cov[k, j, j]
            for p in range(j):
                s -= L[j, p] * L[j, p]
            if not s > 0.0:
                return k
            d = math.sqrt(s)
            L[j, j] = d
            for i in range(j + 1, D):
                t = cov[k, i, j]
                for p in range(j):
                    t -= L[i, p] * L[j, p]
                L[i, j] = t / d
        ld = 0.0
        for j in range(D):
            ld -= math.log(L[j, j])
        log_det[k] = ld
        # P^T = L^{-1} (lower triangular) by forward substitution, column by column
        for c in range(D):
            for i in range(D):
                P[k, c, i] = 0.0
            for i in range(c, D):
                t = 1.0 if i == c else 0.0
                for p in range(c, i):
                    t -= L[i, p] * P[k, c, p]
                P[k, c, i] = t / L[i, i]
    return -1
