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
# exp(x) for x <= 0 without a library call, so that a row's exponentials vectorise:
# x = n ln2 + r with |r| <= ln2 / 2, exp(r) by its Taylor polynomial of degree 13 (the
# remainder is below 4e-18), 2^n from the exponent bits. Measured within 3 ulp of
# math.exp over [-708, 0] (below -708 the result is 0 instead of a subnormal).
_INV_LN2 = 1.4426950408889634
_LN2_HI = 6.93145751953125e-1
_LN2_LO = 1.42860682030941723212e-6
_EXP_TAYLOR = tuple(1.0 / math.factorial(q) for q in range(13, 1, -1))


@njit(cache=True, inline="always")
def _row_max_exp(out, P, amax, i, bits):
    """``amax[i] = max_j out[i, j]`` and ``P[i, j] = exp(out[i, j] - amax[i])`` (in [0, 1]).

    ``bits`` is an int64 scratch array of length ``out.shape[1]``.
    """
    M = out.shape[1]
    mx = -np.inf
    for j in range(M):
        if out[i, j] > mx:
            mx = out[i, j]
    amax[i] = mx
    for j in range(M):
        x = out[i, j] - mx
        v = max(x, -708.0)
        n = math.floor(v * _INV_LN2 + 0.5)
        r = (v - n * _LN2_HI) - n * _LN2_LO
        p = 0.0
        for c in _EXP_TAYLOR:
            p = p * r + c
        p = 1.0 + r * (1.0 + r * p)
        P[i, j] = p if x >= -708.0 else 0.0
        bits[j] = (np.int64(n) + 1023) << 52
    scale = bits.view(np.float64)
    for j in range(M):
        P[i, j] *= scale[j]


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
# Responsibilities below this are left out of the off-diagonal Hessian accumulation (the
# diagonal keeps every entry, so the estimate stays positive semi-definite). The dropped
# part of sum_i a_i r_i r_i^T is at most about 2 m HESS_CUT relative to a column's mass
# (~3e-5 for m = 16): a Newton step still contracts the marginal error by ~1e4 or more,
# and the Hessian's row sampling (see sinkhorn._HESS_BUDGET) limits it well before that,
# while a row costs the products of its few entries above 1e-6 only (1e-12 kept about
# 10 of 16 in the benchmark: measured 31 vs 43 ms per Hessian pass at N = 1e6, K = 200,
# m = 16).
HESS_CUT = 1e-6

# M-step weights a_i r_ik below MSTEP_CUT times the column mass sum_i a_i r_ik are
# skipped: all skipped weights of a column together are at most N * MSTEP_CUT of its
# mass (1e-10 at N = 1e6; in practice far less, since most skipped weights are orders
# below the cut), while many entries of a sparse row carry no weight worth adding
# (measured M-step 42 ms with a cut of 1e-20, 33 ms with 1e-16, at N = 1e6, K = 200,
# m = 16).
MSTEP_CUT = 1e-16


@njit(parallel=True, cache=True)
def row_max_exp(A, P, amax, n_chunks):
    """``amax[i] = max_j A[i, j]`` and ``P[i, j] = exp(A[i, j] - amax[i])`` (in [0, 1])."""
    N, M = A.shape
    for c in prange(n_chunks):
        i0 = c * N // n_chunks
        i1 = (c + 1) * N // n_chunks
        bits = np.empty(M, dtype=np.int64)
        for i in range(i0, i1):
            _row_max_exp(A, P, amax, i, bits)


@njit(cache=True, inline="always")
def _potential_scale(g):
    """``(exp(g - max g), max g)``: the column factors of the exp-table row sums."""
    gmax = -np.inf
    for k in range(g.shape[0]):
        if g[k] > gmax:
            gmax = g[k]
    G = np.empty(g.shape[0])
    for k in range(g.shape[0]):
        G[k] = math.exp(g[k] - gmax)
    return G, gmax


@njit(cache=True, inline="always")
def _row_weights(A, P, amax, use_p, idx, dense, g, G, gmax, i, v, kk):
    """Unnormalised responsibilities of row ``i`` for the column potential ``g``.

    Writes the components ``kk[j] = k_ij`` and weights ``v[j]`` proportional to
    ``exp(A[i, j] + g[k_ij])``; returns ``(sum_j v[j], logsumexp_j(A[i, j] + g[k_ij]))``.

    With ``use_p`` the weights are ``P[i, j] exp(g_k - max g)`` from the exp table of
    :func:`row_max_exp` (no exponential; ``G, gmax`` from :func:`_potential_scale`). A row
    whose sum falls below 1e-250 (its mass sits on components whose potential is far
    below the largest one) is recomputed in the log domain, so nothing underflows: the
    result is the same to rounding.
    """
    M = A.shape[1]
    if use_p:
        s = 0.0
        for j in range(M):
            k = j if dense else idx[i, j]
            kk[j] = k
            e = P[i, j] * G[k]
            v[j] = e
            s += e
        if s > 1e-250:
            return s, amax[i] + gmax + math.log(s)
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
    return s, mx + math.log(s)


@njit(parallel=True, cache=True)
def estep_pass(A, P, amax, use_p, idx, dense, g, a, lse, n_chunks, want_hess, hess_stride):
    """One pass of the log-domain E-step for a given column potential ``g``.

    For each row: ``lse[i] = logsumexp_j(A[i, j] + g[k_ij])``; the responsibilities
    ``r_ij = exp(A[i, j] + g[k_ij] - lse[i])`` (rows sum to one) enter the reductions
    below and are not stored (see :func:`responsibilities`). Rows are formed by
    :func:`_row_weights` (from the exp table ``P`` / ``amax`` if ``use_p``).

    Returns
    -------
    colsum : (K,) sum_i a_i r_i scattered to components.
    wlse : float, sum_i a_i lse[i].
    H : (K, K) estimate of the negative Hessian of the semi-dual,
        ``sum_i a_i (diag r_i - r_i r_i^T)``, if ``want_hess``, else a (1, 1) zero array.
        Only the entries ``r > HESS_CUT`` enter ``r_i r_i^T``. With ``hess_stride > 1`` only
        every ``hess_stride``-th row enters H (scaled up accordingly): an unbiased estimate
        for large problems. The diagonal term comes from the same rows as the outer
        products, so H is positive semi-definite whatever the stride (every row adds
        ``diag r - r_J r_J^T``, which is PSD because ``sum_J r <= 1``); a diagonal from all
        rows with outer products from a sample is not, and its Newton direction can fail
        to be an ascent direction.
    work : float, number of multiply-adds the Hessian accumulation would cost with
        ``hess_stride = 1`` (estimated from the rows visited), to choose the stride.
    """
    N, M = A.shape
    K = g.shape[0]
    G, gmax = _potential_scale(g)
    c_acc = np.zeros((n_chunks, K))
    o_acc = np.zeros(n_chunks)
    w_acc = np.zeros(n_chunks)
    H_acc = np.zeros((n_chunks, K, K)) if want_hess else np.zeros((n_chunks, 1, 1))
    d_acc = np.zeros((n_chunks, K)) if want_hess else np.zeros((n_chunks, 1))
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
            s, li = _row_weights(A, P, amax, use_p, idx, dense, g, G, gmax, i, v, kk)
            lse[i] = li
            ai = a[i]
            if ai <= 0.0:
                continue
            o_loc += ai * li
            inv = 1.0 / s
            for j in range(M):
                r = v[j] * inv
                v[j] = r
                c_acc[c, kk[j]] += ai * r
            if want_hess and i % hess_stride == 0:
                cnt = 0
                for j in range(M):
                    if v[j] > HESS_CUT:
                        sj[cnt] = j
                        cnt += 1
                w_loc += cnt * (cnt + 1) // 2
                w0 = hess_stride * ai
                for j in range(M):
                    d_acc[c, kk[j]] += w0 * v[j]
                # one triangle of the symmetric r r^T (the other is added at the end)
                for p in range(cnt):
                    jp = sj[p]
                    w = w0 * v[jp]
                    kp = kk[jp]
                    for q in range(p, cnt):
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
        T = np.zeros((K, K))
        dg = np.zeros(K)
        for c in range(n_chunks):
            for k in range(K):
                dg[k] += d_acc[c, k]
                for q in range(K):
                    T[k, q] += H_acc[c, k, q]
        H = -(T + T.T)
        for k in range(K):
            H[k, k] = dg[k] - T[k, k]
    else:
        H = np.zeros((1, 1))
    return colsum, wlse, H, work * hess_stride


@njit(parallel=True, cache=True)
def responsibilities(A, P, amax, use_p, idx, dense, g, R, n_chunks):
    """``R[i, j] = r_ij`` as formed by :func:`estep_pass` (rows sum to one)."""
    N, M = A.shape
    G, gmax = _potential_scale(g)
    for c in prange(n_chunks):
        i0 = c * N // n_chunks
        i1 = (c + 1) * N // n_chunks
        v = np.empty(M)
        kk = np.empty(M, dtype=np.int64)
        for i in range(i0, i1):
            s, _ = _row_weights(A, P, amax, use_p, idx, dense, g, G, gmax, i, v, kk)
            inv = 1.0 / s
            for j in range(M):
                R[i, j] = v[j] * inv


@njit(parallel=True, cache=True)
def most_responsible(A, P, amax, use_p, idx, dense, g, labels, n_chunks):
    """``labels[i]``: the component with the largest responsibility (first on ties)."""
    N, M = A.shape
    G, gmax = _potential_scale(g)
    for c in prange(n_chunks):
        i0 = c * N // n_chunks
        i1 = (c + 1) * N // n_chunks
        v = np.empty(M)
        kk = np.empty(M, dtype=np.int64)
        for i in range(i0, i1):
            _row_weights(A, P, amax, use_p, idx, dense, g, G, gmax, i, v, kk)
            best = 0
            for j in range(1, M):
                if v[j] > v[best]:
                    best = j
            labels[i] = kk[best]


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
@njit(cache=True, inline="always")
def _weigh_and_keep(v, wi, cut, kk, keep):
    """Scale a row's weights ``v`` by ``wi`` and list (in ``keep``) the entries above
    their component's ``cut`` first, without an unpredictable branch per entry; returns
    their count."""
    cnt = 0
    for j in range(v.shape[0]):
        v[j] *= wi
        keep[cnt] = j
        cnt += v[j] > cut[kk[j]]
    return cnt


@njit(parallel=True, cache=True)
def mstep_stats(X, A, P, amax, use_p, idx, dense, g, a, shift, cut, n_chunks, kind):
    """Weighted sufficient statistics in one pass, shifted by ``shift`` (K, D) for stability.

    The responsibilities r_ik for the potential ``g`` are formed row by row as in
    :func:`estep_pass`. With w_ik = a_i r_ik and y = x_i - shift_k, returns
    ``nk[k] = sum_i w_ik``, ``s1[k] = sum_i w_ik y`` and the second moment
    ``s2`` = sum_i w_ik y y^T: shape (K, D, D) when ``kind == 0`` (full) or
    (K, D, 1) holding only the diagonal when ``kind == 1``. Weights ``w_ik <= cut[k]``
    are skipped (see ``MSTEP_CUT``).
    """
    N, D = X.shape
    M = A.shape[1]
    K = g.shape[0]
    G, gmax = _potential_scale(g)
    E = D if kind == 0 else 1
    # one accumulator row per component: [nk, s1 (D), s2 (D x E)], contiguous in memory
    W = 1 + D + D * E
    acc = np.zeros((n_chunks, K, W))
    for c in prange(n_chunks):
        i0 = c * N // n_chunks
        i1 = (c + 1) * N // n_chunks
        x = np.empty(D)
        y = np.empty(D)
        v = np.empty(M)
        kk = np.empty(M, dtype=np.int64)
        keep = np.empty(M, dtype=np.int64)
        for i in range(i0, i1):
            ai = a[i]
            if ai <= 0.0:
                continue
            s, _ = _row_weights(A, P, amax, use_p, idx, dense, g, G, gmax, i, v, kk)
            cnt = _weigh_and_keep(v, ai / s, cut, kk, keep)
            for d in range(D):
                x[d] = X[i, d]
            if kind == 0:
                for t in range(cnt):
                    j = keep[t]
                    w = v[j]
                    k = kk[j]
                    row = acc[c, k]
                    row[0] += w
                    for d in range(D):
                        y[d] = x[d] - shift[k, d]
                        row[1 + d] += w * y[d]
                    for d in range(D):
                        wy = w * y[d]
                        for e in range(d + 1):
                            row[1 + D + d * D + e] += wy * y[e]
            else:
                # diagonal: one loop over d per entry with scalar temporaries (the same
                # arithmetic as the full branch, in registers instead of the y buffer)
                accf = acc[c]
                for t in range(cnt):
                    j = keep[t]
                    w = v[j]
                    k = kk[j]
                    accf[k, 0] += w
                    for d in range(D):
                        yd = x[d] - shift[k, d]
                        wy = w * yd
                        accf[k, 1 + d] += wy
                        accf[k, 1 + D + d] += wy * yd
    tot = np.zeros((K, W))
    for c in range(n_chunks):
        for k in range(K):
            for q in range(W):
                tot[k, q] += acc[c, k, q]
    nk = tot[:, 0].copy()
    s1 = tot[:, 1 : 1 + D].copy()
    s2 = tot[:, 1 + D :].copy().reshape((K, D, E))
    if kind == 0:
        for k in range(K):
            for d in range(D):
                for e in range(d):
                    s2[k, e, d] = s2[k, d, e]
    return nk, s1, s2


# Diagonal M-step statistics for up to MSTEP_LANES features: each entry updates a constant
# number of lanes (4, 6 or 8; the features beyond D are zero in x and in the shift, so
# they add zeros), written out as straight-line code (_diag_lanes4/6/8) with the
# row's features in registers and the component's shift loaded before the first store.
# The same operations in the same order as mstep_stats (bit-identical results). Numba
# does not SLP-vectorise (its default), so the lanes stay scalar; what the written-out
# form saves is the reloading of x and the shift after every store (the arrays may
# alias). Measured on the statistics of a 5-iteration fit at N = 2e5, K = 100, m = 16,
# one thread, CPU time, interleaved: 32.7-33.0 vs 40.4-40.6 ms (D = 6; the loop over the
# lanes before: 42.9 ms, and the generic kernel 45.0 ms). The accumulation, not the row
# weights (6.6 ms for a plain E-step pass), is the cost: 17 loads and stores per entry
# into the component's row. Tried and dropped: bucketing a chunk's entries by component
# first (register accumulators, the same summation order): 110 ms; skipping the padded
# lanes beyond D with branches: 42.7 ms. Six lanes for D = 5-6 (13 loads and stores per
# entry instead of 17): 21.8 -> 17.9 ms per call at N = 2e5, K = 100, m = 16, D = 6 (2
# threads, wall, interleaved with the 8-lane kernel; see docs/method.md, "Seventh pass").
MSTEP_LANES = 8


@njit(cache=True, inline="always")
def _diag_lanes8(row, w, x0, x1, x2, x3, x4, x5, x6, x7, s):
    """Add the entry of weight ``w`` to its component's ``row`` ``[s1 (8), s2 (8), nk]``
    (``s``: the component's shift). Written out with every input loaded before the first
    store: a loop over the lanes, unrolled, reloaded the shift after each store (the
    arrays may alias) and Numba does not SLP-vectorise straight-line code (measured
    35-36 vs 42-43 ms per call; the same operations in the same order)."""
    y0 = x0 - s[0]
    y1 = x1 - s[1]
    y2 = x2 - s[2]
    y3 = x3 - s[3]
    y4 = x4 - s[4]
    y5 = x5 - s[5]
    y6 = x6 - s[6]
    y7 = x7 - s[7]
    a0 = w * y0
    a1 = w * y1
    a2 = w * y2
    a3 = w * y3
    a4 = w * y4
    a5 = w * y5
    a6 = w * y6
    a7 = w * y7
    row[0] += a0
    row[1] += a1
    row[2] += a2
    row[3] += a3
    row[4] += a4
    row[5] += a5
    row[6] += a6
    row[7] += a7
    row[8] += a0 * y0
    row[9] += a1 * y1
    row[10] += a2 * y2
    row[11] += a3 * y3
    row[12] += a4 * y4
    row[13] += a5 * y5
    row[14] += a6 * y6
    row[15] += a7 * y7
    row[16] += w


@njit(cache=True, inline="always")
def _diag_lanes6(row, w, x0, x1, x2, x3, x4, x5, s):
    """:func:`_diag_lanes8` for 6 lanes (row ``[s1 (6), s2 (6), nk]``)."""
    y0 = x0 - s[0]
    y1 = x1 - s[1]
    y2 = x2 - s[2]
    y3 = x3 - s[3]
    y4 = x4 - s[4]
    y5 = x5 - s[5]
    a0 = w * y0
    a1 = w * y1
    a2 = w * y2
    a3 = w * y3
    a4 = w * y4
    a5 = w * y5
    row[0] += a0
    row[1] += a1
    row[2] += a2
    row[3] += a3
    row[4] += a4
    row[5] += a5
    row[6] += a0 * y0
    row[7] += a1 * y1
    row[8] += a2 * y2
    row[9] += a3 * y3
    row[10] += a4 * y4
    row[11] += a5 * y5
    row[12] += w


@njit(cache=True, inline="always")
def _diag_lanes4(row, w, x0, x1, x2, x3, s):
    """:func:`_diag_lanes8` for 4 lanes (row ``[s1 (4), s2 (4), nk]``)."""
    y0 = x0 - s[0]
    y1 = x1 - s[1]
    y2 = x2 - s[2]
    y3 = x3 - s[3]
    a0 = w * y0
    a1 = w * y1
    a2 = w * y2
    a3 = w * y3
    row[0] += a0
    row[1] += a1
    row[2] += a2
    row[3] += a3
    row[4] += a0 * y0
    row[5] += a1 * y1
    row[6] += a2 * y2
    row[7] += a3 * y3
    row[8] += w


@njit(cache=True, inline="always")
def _add_diag_entries(accf, keep, cnt, v, kk, x, sh, L):
    """The ``cnt`` kept entries of a row added to the lane accumulators ``accf`` (K, W)
    (a constant lane count per copy: a variable one does not unroll)."""
    if L == 4:
        x0, x1, x2, x3 = x[0], x[1], x[2], x[3]
        for t in range(cnt):
            j = keep[t]
            k = kk[j]
            _diag_lanes4(accf[k], v[j], x0, x1, x2, x3, sh[k])
    elif L == 6:
        x0, x1, x2, x3, x4, x5 = x[0], x[1], x[2], x[3], x[4], x[5]
        for t in range(cnt):
            j = keep[t]
            k = kk[j]
            _diag_lanes6(accf[k], v[j], x0, x1, x2, x3, x4, x5, sh[k])
    else:
        x0, x1, x2, x3, x4, x5, x6, x7 = x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7]
        for t in range(cnt):
            j = keep[t]
            k = kk[j]
            _diag_lanes8(accf[k], v[j], x0, x1, x2, x3, x4, x5, x6, x7, sh[k])


@njit(cache=True, inline="always")
def _diag_lane_count(D):
    """Lanes of the diagonal M-step accumulators for ``D <= MSTEP_LANES`` features."""
    return 4 if D <= 4 else (6 if D <= 6 else MSTEP_LANES)


@njit(cache=True)
def _lane_shift(shift, L):
    """``shift`` (K, D) padded with zeros to ``L`` lanes."""
    K, D = shift.shape
    sh = np.zeros((K, L))
    for k in range(K):
        for d in range(D):
            sh[k, d] = shift[k, d]
    return sh


@njit(cache=True)
def _sum_diag_lanes(acc, K, D, L):
    """The per-chunk lane accumulators summed into ``(nk, s1, s2)`` (chunk order)."""
    nk = np.zeros(K)
    s1 = np.zeros((K, D))
    s2 = np.zeros((K, D, 1))
    for c in range(acc.shape[0]):
        for k in range(K):
            nk[k] += acc[c, k, 2 * L]
            for d in range(D):
                s1[k, d] += acc[c, k, d]
                s2[k, d, 0] += acc[c, k, L + d]
    return nk, s1, s2


@njit(parallel=True, cache=True)
def mstep_stats_diag(X, A, P, amax, use_p, idx, dense, g, a, shift, cut, n_chunks):
    """:func:`mstep_stats` with ``kind == 1`` (diagonal second moments) for
    ``D <= MSTEP_LANES`` features: the same ``(nk, s1, s2)``, bit for bit, faster."""
    N, D = X.shape
    M = A.shape[1]
    K = g.shape[0]
    G, gmax = _potential_scale(g)
    L = _diag_lane_count(D)
    # one accumulator row per component: [s1 (L), s2 (L), nk]
    W = 2 * L + 1
    sh = _lane_shift(shift, L)
    acc = np.zeros((n_chunks, K, W))
    for c in prange(n_chunks):
        i0 = c * N // n_chunks
        i1 = (c + 1) * N // n_chunks
        x = np.zeros(L)
        v = np.empty(M)
        kk = np.empty(M, dtype=np.int64)
        keep = np.empty(M, dtype=np.int64)
        accf = acc[c]
        for i in range(i0, i1):
            ai = a[i]
            if ai <= 0.0:
                continue
            s, _ = _row_weights(A, P, amax, use_p, idx, dense, g, G, gmax, i, v, kk)
            cnt = _weigh_and_keep(v, ai / s, cut, kk, keep)
            for d in range(D):
                x[d] = X[i, d]
            _add_diag_entries(accf, keep, cnt, v, kk, x, sh, L)
    return _sum_diag_lanes(acc, K, D, L)


@njit(parallel=True, cache=True)
def estep_pass_stats_diag(X, A, P, amax, use_p, idx, dense, g, a, lse, shift, cut, n_chunks):
    """:func:`estep_pass` (no Hessian) and :func:`mstep_stats_diag` in one pass.

    For an E-step pass that is likely the last one of its E-step: the next M-step then
    needs no pass of its own. Returns ``(colsum, wlse, nk, s1, s2)``, bit for bit those of
    the two kernels (``cut``: the M-step's cut; the caller can only pass the one from the
    column sums of the previous pass, see ``_EStep.newton``).
    """
    N, D = X.shape
    M = A.shape[1]
    K = g.shape[0]
    G, gmax = _potential_scale(g)
    L = _diag_lane_count(D)
    W = 2 * L + 1
    sh = _lane_shift(shift, L)
    c_acc = np.zeros((n_chunks, K))
    o_acc = np.zeros(n_chunks)
    acc = np.zeros((n_chunks, K, W))
    for c in prange(n_chunks):
        i0 = c * N // n_chunks
        i1 = (c + 1) * N // n_chunks
        x = np.zeros(L)
        v = np.empty(M)
        kk = np.empty(M, dtype=np.int64)
        keep = np.empty(M, dtype=np.int64)
        accf = acc[c]
        o_loc = 0.0
        for i in range(i0, i1):
            s, li = _row_weights(A, P, amax, use_p, idx, dense, g, G, gmax, i, v, kk)
            lse[i] = li
            ai = a[i]
            if ai <= 0.0:
                continue
            o_loc += ai * li
            inv = 1.0 / s
            wi = ai / s
            cnt = 0
            for j in range(M):
                c_acc[c, kk[j]] += ai * (v[j] * inv)
                v[j] *= wi
                keep[cnt] = j
                cnt += v[j] > cut[kk[j]]
            for d in range(D):
                x[d] = X[i, d]
            _add_diag_entries(accf, keep, cnt, v, kk, x, sh, L)
        o_acc[c] = o_loc
    colsum = np.zeros(K)
    wlse = 0.0
    for c in range(n_chunks):
        wlse += o_acc[c]
        for k in range(K):
            colsum[k] += c_acc[c, k]
    nk, s1, s2 = _sum_diag_lanes(acc, K, D, L)
    return colsum, wlse, nk, s1, s2


# --------------------------------------------------------------------------
# Neighbour search
# --------------------------------------------------------------------------
# The m nearest means of every point come from a uniform grid over the points. For a
# point x at distance delta from the centre c of its cell, with d_m the distance from c to
# its m-th nearest mean, the triangle inequality gives: x's m nearest means all lie within
# d_m + 2 delta of c (x has m means within d_m + delta), and every mean closer than
# d_m - 2 delta to c is one of them (x has fewer than m means closer than d_m - delta).
# A cell lists the means within d_{m+1} + 2 h of its centre (h: half diagonal, the largest
# delta; m + 1 for the point budgets of grid_neighbors) sorted by distance to it; each
# point then ranks only the few in its own shell.


@njit(parallel=True, cache=True)
def grid_cells(Xp, lo, inv_size, shape, cell):
    """Row-major index of the grid cell holding each row of ``Xp`` (clipped to the grid)."""
    N, D = Xp.shape
    for i in prange(N):
        c = 0
        for d in range(D):
            t = int((Xp[i, d] - lo[d]) * inv_size[d])
            c = c * shape[d] + min(max(t, 0), shape[d] - 1)
        cell[i] = c


@njit(cache=True)
def _kth_smallest(buf, n, k):
    """The ``k``-th smallest (0-based) of ``buf[:n]`` by quickselect (reorders ``buf``)."""
    lo = 0
    hi = n - 1
    while lo < hi:
        pivot = buf[(lo + hi) // 2]
        i = lo
        j = hi
        while i <= j:
            while buf[i] < pivot:
                i += 1
            while buf[j] > pivot:
                j -= 1
            if i <= j:
                t = buf[i]
                buf[i] = buf[j]
                buf[j] = t
                i += 1
                j -= 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            break
    return buf[k]


@njit(cache=True)
def cell_centres(cells, lo, size, shape):
    """Centres of grid cells given by row-major index, shape (n, d)."""
    D = shape.shape[0]
    out = np.empty((cells.shape[0], D))
    for c in range(cells.shape[0]):
        rem = cells[c]
        for d in range(D - 1, -1, -1):
            out[c, d] = lo[d] + (rem % shape[d] + 0.5) * size[d]
            rem //= shape[d]
    return out


@njit(cache=True, inline="always")
def _insert_sorted(bd, bk, n, dist, k):
    """Insert ``(dist, k)`` into the ascending lists ``bd``/``bk`` of length ``n``."""
    p = n
    while p > 0 and bd[p - 1] > dist:
        bd[p] = bd[p - 1]
        bk[p] = bk[p - 1]
        p -= 1
    bd[p] = dist
    bk[p] = k


@njit(cache=True)
def _centre_candidates(ctr, means_p, pool, m, reach, dist, out, out_d, write):
    """Components of ``pool`` within ``d_{m+1} + reach`` of ``ctr`` (reach: cell diagonal).

    ``d_j`` is the distance from ``ctr`` to its j-th nearest mean in ``pool`` (which must
    hold more than m components). Returns ``(count, d_m, d_{m+1})``; if ``write``, stores
    the candidates in ``out`` sorted by their distance to ``ctr`` (ties in ``pool``
    order), the distances in ``out_d``.
    """
    n = pool.shape[0]
    D = ctr.shape[0]
    for t in range(n):
        k = pool[t]
        s = 0.0
        for d in range(D):
            z = means_p[k, d] - ctr[d]
            s += z * z
        dist[t] = s
        dist[n + t] = s
    buf = dist[n:]
    dm1 = _kth_smallest(buf, n, m)
    dm = buf[0]  # the m smallest now come first
    for t in range(1, m):
        dm = max(dm, buf[t])
    dm = math.sqrt(dm)
    dm1 = math.sqrt(dm1)
    # slack for the rounding of the distances and of the cell assignment
    hi = (dm1 + reach) * (1.0 + 1e-9)
    hi2 = hi * hi
    count = 0
    for t in range(n):
        if dist[t] <= hi2:
            if write:
                _insert_sorted(out_d, out, count, math.sqrt(dist[t]), pool[t])
            count += 1
    return count, dm, dm1


@njit(parallel=True, cache=True)
def cell_candidates(centres, size, means_p, m, pools, pool_start, pool_of):
    """Candidate components of grid cells with the given ``centres`` and side lengths.

    The candidates of a cell are the means that can be among the m + 1 nearest of one
    of its points. Cell ``c`` searches ``pools[pool_start[p]:pool_start[p + 1]]`` with
    ``p = pool_of[c]``: all components, or the candidates of a coarser cell that contains
    it (its centre is then a point of that cell). Returns
    ``(start, cand, cand_dist, d_m, d_m1)``: the candidates of cell ``c`` are
    ``cand[start[c]:start[c + 1]]``, sorted by their distance ``cand_dist`` to the
    centre; ``d_m[c]`` and ``d_m1[c]`` are the distances from the centre to its m-th and
    (m + 1)-th nearest means.
    """
    n, D = centres.shape
    reach = 0.0
    for d in range(D):
        reach += size[d] * size[d]
    reach = math.sqrt(reach)
    count = np.zeros(n + 1, dtype=np.int64)
    dm = np.empty(n)
    dm1 = np.empty(n)
    dummy_k = np.empty(0, dtype=pools.dtype)
    dummy_d = np.empty(0)
    for c in prange(n):
        pool = pools[pool_start[pool_of[c]] : pool_start[pool_of[c] + 1]]
        dist = np.empty(2 * pool.shape[0])
        count[c + 1], dm[c], dm1[c] = _centre_candidates(
            centres[c], means_p, pool, m, reach, dist, dummy_k, dummy_d, False
        )
    start = np.cumsum(count)
    cand = np.empty(start[n], dtype=pools.dtype)
    cand_dist = np.empty(start[n])
    for c in prange(n):
        pool = pools[pool_start[pool_of[c]] : pool_start[pool_of[c] + 1]]
        dist = np.empty(2 * pool.shape[0])
        _centre_candidates(
            centres[c], means_p, pool, m, reach, dist,
            cand[start[c] : start[c + 1]], cand_dist[start[c] : start[c + 1]], True,
        )  # fmt: skip
    return start, cand, cand_dist, dm, dm1


@njit(cache=True)
def spend_budget(budget, eps, slot, n_cells):
    """Subtract ``eps`` from every point's budget; flag the cells of points left with none."""
    flag = np.zeros(n_cells, dtype=np.bool_)
    for i in range(budget.shape[0]):
        budget[i] -= eps
        if not budget[i] > 0.0:
            flag[slot[i]] = True
    return flag


@njit(parallel=True, cache=True)
def grid_neighbors(
    Xp, slot, pos, centres, start, cand, cand_dist, dm, dm1, means_p, out, budget, n_chunks
):
    """The ``m = out.shape[1]`` nearest component means of the points without budget.

    For every point with ``budget[i] <= 0``, ``pos[slot[i]]`` indexes its cell in the
    lists of :func:`cell_candidates`. Writes the means surely among the m nearest (in candidate
    order), then the nearest of the point's uncertain ones by increasing distance
    (Euclidean over the columns of ``Xp`` / ``means_p``; ties go to the earlier
    candidate): the exact m nearest means. The new budget is half the gap between the
    (m + 1)-th and the m-th nearest distance: while the means move by less than that in
    total, the m nearest stay the same (every distance changes by at most the move).
    """
    N, D = Xp.shape
    M = out.shape[1]
    for c in prange(n_chunks):
        i0 = c * N // n_chunks
        i1 = (c + 1) * N // n_chunks
        bd = np.empty(M + 1)
        bk = np.empty(M + 1, dtype=np.int64)
        for i in range(i0, i1):
            if budget[i] > 0.0:
                continue
            s = pos[slot[i]]
            delta = 0.0
            for d in range(D):
                z = Xp[i, d] - centres[s, d]
                delta += z * z
            delta = math.sqrt(delta)
            # the same slack as the cell lists
            sure = dm[s] * (1.0 - 1e-9) - 2.0 * delta * (1.0 + 1e-9)
            reach = (dm1[s] + 2.0 * delta) * (1.0 + 1e-9)
            t = start[s]
            t1 = start[s + 1]
            j = 0
            while t < t1 and cand_dist[t] < sure:
                out[i, j] = cand[t]
                j += 1
                t += 1
            # the m - j nearest of the others, and the next one for the budget
            need = M - j + 1
            nb = 0
            while t < t1 and cand_dist[t] <= reach:
                k = cand[t]
                t += 1
                dist = 0.0
                for d in range(D):
                    z = Xp[i, d] - means_p[k, d]
                    dist += z * z
                if nb < need:
                    _insert_sorted(bd, bk, nb, dist, k)
                    nb += 1
                elif dist < bd[need - 1]:
                    _insert_sorted(bd, bk, need - 1, dist, k)
            for u in range(need - 1):
                out[i, j + u] = bk[u]
            far = math.sqrt(bd[need - 1])
            budget[i] = 0.5 * (far - math.sqrt(bd[need - 2])) - 1e-9 * far


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


@njit(cache=True, inline="always")
def _find(parent, k):
    """Root of ``k`` in the union-find forest ``parent`` (with path halving)."""
    while parent[k] != k:
        parent[k] = parent[parent[k]]
        k = parent[k]
    return k


@njit(parallel=True, cache=True)
def component_blocks(idx, K, n_chunks):
    """Connected blocks of the components: two components are linked when a row lists both.

    Returns ``(block, n_blocks)``: the block of every component, numbered 0.. in order of
    each block's smallest component. Union-find per row chunk, then the chunks' forests
    are merged.
    """
    N, M = idx.shape
    parents = np.empty((n_chunks, K), dtype=np.int64)
    for c in prange(n_chunks):
        i0 = c * N // n_chunks
        i1 = (c + 1) * N // n_chunks
        par = parents[c]
        for k in range(K):
            par[k] = k
        for i in range(i0, i1):
            r0 = _find(par, np.int64(idx[i, 0]))
            for j in range(1, M):
                r = _find(par, np.int64(idx[i, j]))
                if r != r0:
                    if r < r0:
                        par[r0] = r
                        r0 = r
                    else:
                        par[r] = r0
    par = np.arange(K)
    for c in range(n_chunks):
        pc = parents[c]
        for k in range(K):
            a = _find(par, k)
            b = _find(par, _find(pc, k))
            if a != b:
                if a < b:
                    par[b] = a
                else:
                    par[a] = b
    block = np.empty(K, dtype=np.int64)
    n_blocks = 0
    for k in range(K):
        r = _find(par, k)
        if r == k:
            block[k] = n_blocks
            n_blocks += 1
        else:
            block[k] = block[r]  # r < k: numbered already
    return block, n_blocks


# --------------------------------------------------------------------------
# Small dense solve (serial: a K x K system is too small for threaded BLAS, whose
# thread start-up dominated the Newton step in measurements)
# --------------------------------------------------------------------------
@njit(cache=True)
def cholesky_factor(H):
    """Lower-triangular L with ``L L^T = H`` for symmetric positive definite ``H``.

    Returns ``(L, ok)``; ``ok`` is False if a pivot is not positive.
    """
    n = H.shape[0]
    L = np.zeros((n, n))
    for j in range(n):
        s = H[j, j]
        for p in range(j):
            s -= L[j, p] * L[j, p]
        if not s > 0.0:
            return L, False
        d = math.sqrt(s)
        L[j, j] = d
        for i in range(j + 1, n):
            t = H[i, j]
            for p in range(j):
                t -= L[i, p] * L[j, p]
            L[i, j] = t / d
    return L, True


@njit(cache=True)
def cholesky_solve(L, b):
    """Solve ``L L^T x = b`` for a factor ``L`` from :func:`cholesky_factor`."""
    n = L.shape[0]
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
    return x


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


# brute_neighbors: a refresh whose threshold (the previous list's largest distance) is met
# by at most this many means beyond m drops them one by one instead of inserting
_SCAN_EXTRA = 4
# the first search sorts at most m + 1 + _FIRST_EXTRA candidates (see brute_neighbors; extra
# 6, 8 and 12 measured alike at N = 2e5, K = 100, d = 6, m = 16)
_FIRST_EXTRA = 8


@njit(cache=True, inline="always")
def _sq_dists8(Xp, i, D, m8, x, dist):
    """``dist[k]`` = squared distance from point ``i`` to mean ``k`` for ``D <= 8``
    features, with the means as 8 zero-padded rows ``m8`` (8, K) and ``x`` an 8-lane
    buffer whose lanes beyond ``D`` are zero.

    The sum runs over the features in order, as the loop over features of
    :func:`brute_neighbors` adds them (a padded lane adds an exact 0), so the distances
    are the same bit for bit; with the row's features in registers the loop over the
    means vectorises without a load and store of ``dist`` per feature. Measured over the
    recorded refreshes of a 5-iteration fit (N = 2e5, K = 100, d = 6, m = 16; CPU ms over
    both threads, the two variants in turns in one process): first scan 101-105 vs
    105-107, the refresh after iteration 1 104-108 vs 110-112, later refreshes 37-44 vs
    42-52 (the ranking, not the distances, dominates the first two).
    """
    for d in range(D):
        x[d] = Xp[i, d]
    x0, x1, x2, x3, x4, x5, x6, x7 = x[0], x[1], x[2], x[3], x[4], x[5], x[6], x[7]
    for k in range(m8.shape[1]):
        z0 = x0 - m8[0, k]
        z1 = x1 - m8[1, k]
        z2 = x2 - m8[2, k]
        z3 = x3 - m8[3, k]
        z4 = x4 - m8[4, k]
        z5 = x5 - m8[5, k]
        z6 = x6 - m8[6, k]
        z7 = x7 - m8[7, k]
        dist[k] = z0 * z0 + z1 * z1 + z2 * z2 + z3 * z3 + z4 * z4 + z5 * z5 + z6 * z6 + z7 * z7


@njit(cache=True, inline="always")
def _sq_dists6(Xp, i, D, m8, x, dist):
    """:func:`_sq_dists8` for ``D <= 6`` features: the first 6 lanes only (the two
    left out add exact zeros to a non-negative sum, so the distances are the same bit
    for bit)."""
    for d in range(D):
        x[d] = Xp[i, d]
    x0, x1, x2, x3, x4, x5 = x[0], x[1], x[2], x[3], x[4], x[5]
    for k in range(m8.shape[1]):
        z0 = x0 - m8[0, k]
        z1 = x1 - m8[1, k]
        z2 = x2 - m8[2, k]
        z3 = x3 - m8[3, k]
        z4 = x4 - m8[4, k]
        z5 = x5 - m8[5, k]
        dist[k] = z0 * z0 + z1 * z1 + z2 * z2 + z3 * z3 + z4 * z4 + z5 * z5


@njit(parallel=True, cache=True)
def brute_neighbors(
    Xp, means_t, out, upper, lower, step, movers, is_mover, rest, have_old, n_chunks
):
    """The ``m = out.shape[1]`` nearest means of every point, by brute force where needed.

    ``means_t`` is the (d, K) transpose of the means (the distance loop runs over K
    contiguous values and vectorises). Every point carries bounds from its last scan:
    ``upper[i]`` >= its distance to each of its m listed means, ``lower[i]`` <= its
    distance to every other mean. With ``have_old``, ``step[k]`` is how far mean k moved
    since the last refresh, ``movers`` the few means that moved farthest (``is_mover``
    their (K,) mask) and ``rest`` the largest move of the others. By the triangle
    inequality the list still holds the m nearest if the largest distance to a listed
    mean (at most ``upper[i] + step[k]`` for a listed non-mover, measured for a listed
    mover) is below ``lower[i] - rest`` and below the measured distance to every
    unlisted mover: the point then keeps its list with those bounds and costs
    ``len(movers)`` distances instead of K (Elkan-style bounds, per component: late
    in a fit most means barely move while a few still travel, measured at N = 2e5,
    K = 100, d = 6 on 100 clusters: median move 0.01 with the largest 0.5-1 from
    iteration 12 on). Otherwise the point is scanned and gets exact bounds (its m-th and
    (m + 1)-th nearest distances). The first search lists them by distance, ties to the
    smaller index. With ``have_old`` a refresh first tries the threshold of the point's
    previous list (``out[i]``; see the loop): after a small move of the means only a few
    extra means meet it and the list comes out in index order; otherwise the list is
    ranked by distance, ties to the earlier place in the previous list, then to the
    smaller index. Both rankings come from a count search (a threshold met by m + 1 to
    m + 1 + ``_FIRST_EXTRA`` means, found with vectorised counts, then a rank of those
    few), with insertions into a sorted list (the previous list inserted first) as the
    fallback for the 1-3% of the points whose counts miss; both give the same lists and
    bounds. The insertions, not the distances,
    dominate a scan (measured single-threaded at N = 1e5, K = 100, d = 6: refresh after a
    move of 0.03-0.1 (nearest means ~1 apart) 0.09-0.18 s with the threshold vs
    0.21-0.31 s ranking only; after large moves both about 0.35-0.5 s). For position
    dimensions above 3, where grid cells are as wide as the spacing of the means and every
    cell lists nearly every mean, this is cheaper than the grid (mixture/_neighbors.py).
    """
    N, D = Xp.shape
    K = means_t.shape[1]
    M = out.shape[1]
    need = M + 1 if M < K else M
    # the written-out distances of _sq_dists8 for up to 8 features (means_t padded with
    # zero rows to 8 by the caller)
    lanes8 = D <= 8 and means_t.shape[0] == 8
    for c in prange(n_chunks):
        i0 = c * N // n_chunks
        i1 = (c + 1) * N // n_chunks
        dist = np.empty(K)
        xl = np.zeros(8)
        seen = np.zeros(K, dtype=np.bool_)
        cand = np.empty(K + 1, dtype=np.int64)
        bd = np.empty(need + 1)
        bk = np.empty(need + 1, dtype=np.int64)
        npad = ((need + _FIRST_EXTRA) // 32 + 1) * 32
        cd = np.empty(max(K + 1, npad))
        pt = np.empty(max(K + 1, npad), dtype=np.int64)
        rk = np.empty(npad, dtype=np.int64)
        prio = np.zeros(K, dtype=np.int64)
        guess = -1.0  # squared threshold of the count search (see below)
        thr = 0.0
        for i in range(i0, i1):
            if have_old:
                # listed means: moved at most step[k] each, movers measured
                u = 0.0
                for j in range(M):
                    k = np.int64(out[i, j])
                    u = max(u, 0.0 if is_mover[k] else step[k])
                u += upper[i]
                lo = lower[i] - rest
                if u < lo:
                    for j in range(M):
                        seen[np.int64(out[i, j])] = True
                    for t in range(movers.shape[0]):
                        k = movers[t]
                        s = 0.0
                        for d in range(D):
                            z = Xp[i, d] - means_t[d, k]
                            s += z * z
                        dk = math.sqrt(s)
                        if seen[k]:
                            u = max(u, dk * (1.0 + 1e-12))
                        else:
                            lo = min(lo, dk * (1.0 - 1e-12))
                    for j in range(M):
                        seen[np.int64(out[i, j])] = False
                    if u < lo:
                        upper[i] = u
                        lower[i] = lo
                        continue
            if lanes8 and D <= 6:
                _sq_dists6(Xp, i, D, means_t, xl, dist)
            elif lanes8:
                _sq_dists8(Xp, i, D, means_t, xl, dist)
            else:
                for k in range(K):
                    dist[k] = 0.0
                for d in range(D):
                    x = Xp[i, d]
                    for k in range(K):
                        z = x - means_t[d, k]
                        dist[k] += z * z
            if have_old and need > M:
                # the largest distance to the previous list is a threshold that at least
                # M means meet; gathered without branches. Usually (a small move) only a
                # few more meet it: drop the farthest extras one by one, the nearest
                # dropped one (or the nearest mean beyond the threshold) is the
                # (M + 1)-th. Otherwise fall through to the insertions below.
                thr = 0.0
                for j in range(M):
                    thr = max(thr, dist[np.int64(out[i, j])])
                # first a count without the gather (it vectorises): exactly M means
                # within the threshold are the previous list itself, which stays as it is
                # (the common case late in a fit: measured at N = 2e5, K = 100, d = 6,
                # later refreshes of a fit to convergence ~25% faster)
                nc = 0
                nxt = np.inf
                for k in range(K):
                    v = dist[k]
                    nc += v <= thr
                    nxt = min(nxt, v if v > thr else np.inf)
                if nc == M:
                    upper[i] = math.sqrt(thr) * (1.0 + 1e-12)
                    lower[i] = math.sqrt(nxt) * (1.0 - 1e-12)
                    continue
                nc = 0
                for k in range(K):
                    cand[nc] = k
                    nc += dist[k] <= thr
                if nc <= M + _SCAN_EXTRA:
                    while nc > M:
                        far = 0
                        for t in range(1, nc):
                            if dist[cand[t]] > dist[cand[far]]:
                                far = t
                        nxt = min(nxt, dist[cand[far]])
                        for t in range(far, nc - 1):
                            cand[t] = cand[t + 1]
                        nc -= 1
                    dm = 0.0
                    for j in range(M):
                        out[i, j] = cand[j]
                        dm = max(dm, dist[cand[j]])
                    upper[i] = math.sqrt(dm) * (1.0 + 1e-12)
                    lower[i] = math.sqrt(nxt) * (1.0 - 1e-12)
                    continue
            if need > M:
                # a count search: a threshold that about need + _FIRST_EXTRA / 2 means
                # meet, found with vectorised counts. The first search starts from the
                # previous point's (M + 1)-th distance, a refresh from its previous list's
                # threshold (met by too many means here); each miss is rescaled by the
                # count (in d dimensions a count grows like the squared radius to the
                # d / 2). The candidates within it are then ranked by distance, ties in
                # the order the insertions below (the fallback) would meet them: the
                # previous list first (a refresh), then by index. The same lists and
                # bounds as the insertions. Measured at N = 2e5, K = 100, d = 6, m = 16:
                # first search 56-70 ms vs 118-122 ms (2 threads; 97-99% of the points
                # need no fallback); refresh after iteration 1 (large moves, most points
                # land here) 100-106 vs 124-129 ms (one thread, interleaved).
                if have_old:
                    guess = thr * ((need + 0.5 * _FIRST_EXTRA) / nc) ** (2.0 / D)
                nc = 0
                for k in range(K):
                    nc += dist[k] <= guess
                tries = 0
                while (nc < need or nc > need + _FIRST_EXTRA) and tries < 3:
                    if nc == 0:
                        guess = guess * 4.0 if guess > 0.0 else 1.0
                    else:
                        guess *= ((need + 0.5 * _FIRST_EXTRA) / nc) ** (2.0 / D)
                    nc = 0
                    for k in range(K):
                        nc += dist[k] <= guess
                    tries += 1
                if nc >= need and nc <= need + _FIRST_EXTRA:
                    nc = 0
                    for k in range(K):
                        cand[nc] = k
                        cd[nc] = dist[k]
                        nc += dist[k] <= guess
                    # tie order: the previous list's position (negative), else the index
                    if have_old:
                        for j in range(M):
                            prio[np.int64(out[i, j])] = j - M
                    for t in range(nc):
                        q = prio[cand[t]]
                        pt[t] = q if q < 0 else cand[t]
                    if have_old:
                        for j in range(M):
                            prio[np.int64(out[i, j])] = 0
                    # ranks vectorised over the candidates: padded to a width of at
                    # least 32 not known at compile time (a constant trip count would be
                    # unrolled into scalar code; a shorter loop runs in its scalar
                    # remainder). Measured one thread: first search 92 vs 104 ms,
                    # refresh after iteration 1 92 vs 98 ms
                    for t in range(nc, npad):
                        cd[t] = np.inf
                        pt[t] = K
                    for t in range(npad):
                        rk[t] = 0
                    for u in range(nc):
                        v = cd[u]
                        p = pt[u]
                        for t in range(npad):
                            rk[t] += (v < cd[t]) | ((v == cd[t]) & (p < pt[t]))
                    dm = 0.0
                    dn = 0.0
                    for t in range(nc):
                        r = rk[t]
                        if r < M:
                            out[i, r] = cand[t]
                        if r == M - 1:
                            dm = cd[t]
                        if r == M:
                            dn = cd[t]
                    upper[i] = math.sqrt(dm) * (1.0 + 1e-12)
                    lower[i] = math.sqrt(dn) * (1.0 - 1e-12)
                    guess = dn
                    continue
            nb = 0
            if have_old:
                for j in range(M):
                    k = np.int64(out[i, j])
                    seen[k] = True
                    _insert_sorted(bd, bk, nb, dist[k], k)
                    nb += 1
            for k in range(K):
                if seen[k]:
                    continue
                v = dist[k]
                if nb < need:
                    _insert_sorted(bd, bk, nb, v, k)
                    nb += 1
                elif v < bd[need - 1]:
                    _insert_sorted(bd, bk, need - 1, v, k)
            if have_old:
                for j in range(M):
                    seen[np.int64(out[i, j])] = False
            for j in range(M):
                out[i, j] = bk[j]
            upper[i] = math.sqrt(bd[M - 1]) * (1.0 + 1e-12)
            lower[i] = math.sqrt(bd[M]) * (1.0 - 1e-12) if need > M else np.inf
            if need > M:
                guess = bd[M]


@njit(parallel=True, cache=True)
def listed_mass(idx, a, K, n_chunks):
    """``out[k] = sum_i a_i`` over the rows ``i`` that list component ``k``."""
    N, M = idx.shape
    acc = np.zeros((n_chunks, K))
    for c in prange(n_chunks):
        i0 = c * N // n_chunks
        i1 = (c + 1) * N // n_chunks
        for i in range(i0, i1):
            ai = a[i]
            if ai > 0.0:
                for j in range(M):
                    acc[c, idx[i, j]] += ai
    out = np.zeros(K)
    for c in range(n_chunks):
        for k in range(K):
            out[k] += acc[c, k]
    return out
