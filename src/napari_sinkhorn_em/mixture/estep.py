"""Log-domain Sinkhorn E-step: responsibilities with prescribed column marginals.

Given the log-densities ``A[i, k] = log p_k(x_i)``, point masses ``a`` and
mixing weights ``alpha``, the E-step finds the column potential ``g`` such that
``r_ik = softmax_k(A_ik + g_k)`` has sample-weighted column means ``alpha``.
``g`` maximises the concave semi-dual

    J(g) = sum_k alpha_k g_k - sum_i a_i logsumexp_k(A_ik + g_k),

whose gradient is ``alpha - sum_i a_i r_i`` and whose negative Hessian is
``sum_i a_i (diag r_i - r_i r_i^T)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._validation import check_marginal_penalty as _check_marginal_penalty
from . import _kernels as _k

__all__ = ["SinkhornInfo", "sinkhorn_responsibilities"]

# neighbour indices: int32 here (the mixture uses the smallest integer type for K); the
# row kernels stream them on every pass
_DUMMY_IDX = np.zeros((1, 1), dtype=np.int32)
_DUMMY_P = np.zeros((1, 1))
_DUMMY_AMAX = np.zeros(1)
# Linear column sums below this are recomputed in the log domain.
_TINY = 1e-280
# The Hessian accumulation may cost at most max(_HESS_BUDGET, _HESS_PER_ENTRY * N * M)
# multiply-adds per pass (a few times the cost of the pass itself). Its cost is measured
# on every pass (only responsibilities above _k.HESS_CUT enter, so a row whose mass sits
# on a few components is cheap); above the budget the Hessian is estimated from every
# s-th row only (inexact Newton: the gradient stays exact and the line search keeps J
# increasing).
_HESS_BUDGET = 2e7
_HESS_PER_ENTRY = 4.0
# Newton steps reuse the last Hessian while each cuts the marginal error by this factor.
_CHORD_RATE = 0.1
# A trial pass due to form a fresh Hessian (the last step contracted poorly) forms the
# M-step's statistics instead when the error expected from the last contraction is below
# this fraction of the tolerance. Measured on the structured data of bench_coldstart part
# 2 (seed 0): separate M-step passes in 9 of 23 iterations without it (4 after an E-step
# that ended on a Hessian pass), 5 of 22 with it; with a fraction of 1 instead of 0.5,
# part 1's second E-step (its Hessian stale after the first, large move of the means)
# missed with the statistics and paid for them, a Hessian pass and the M-step pass.
_FUSE_OVER_REFRESH = 0.5
# A sparse E-step still unsolved after this many passes checks whether its components
# fall into blocks that no point links (see _EStep._balance_blocks); a normal E-step
# takes 3-10 passes, so a connected problem never pays for the check.
_BLOCK_CHECK_PASSES = 25
# A sparse E-step caps a weight at this fraction of the mass of the points that list its
# component (see _EStep._cap_weights).
_CAP_FRACTION = 0.5


@dataclass
class SinkhornInfo:
    """Diagnostics of :func:`sinkhorn_responsibilities`.

    Attributes
    ----------
    potential : ndarray of shape (K,)
        Column potential g (normalised to ``sum_k alpha_k g_k = sum_k alpha_k log alpha_k``;
        with ``marginal_penalty`` it is unique and not shifted).
    marginal_error : float
        ``|| sum_i a_i r_i - alpha ||_1`` at return (with ``marginal_penalty``: the
        distance to the soft target ``alpha exp(-(g - log alpha) / tau)``).
    n_iter : int
        Number of solver iterations (potential updates).
    objective : float
        ``sum_i a_i logsumexp_k(A_ik + g_k) - sum_k alpha_k (g_k - log alpha_k)``; equals the
        negative entropic-OT loss ``-L`` at the optimum (the weighted log-likelihood when
        ``g = log alpha``). With ``marginal_penalty=tau`` the second term is
        ``-tau sum_k alpha_k (exp(-(g_k - log alpha_k) / tau) - 1)``.
    converged : bool
        Whether ``marginal_error < tol`` was reached.
    solver : str
        ``"newton"`` or ``"sinkhorn"``.
    n_passes : int
        Number of passes over the data (each O(N m)).
    """

    potential: np.ndarray
    marginal_error: float
    n_iter: int
    objective: float
    converged: bool
    solver: str
    n_passes: int


def _vdot(x: np.ndarray, y: np.ndarray) -> float:
    """Dot product of two short vectors without BLAS.

    A BLAS call between two parallel Numba kernels can wake OpenBLAS's worker threads,
    which then spin and starve Numba's threads on a small machine (measured: 50 ms per
    E-step pass instead of 30 us on 2 cores).
    """
    return float(np.add.reduce(x * y))


def _as_weights(weights, K: int, name: str = "weights") -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (K,):
        raise ValueError(f"{name} must have shape ({K},), got {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError(f"{name} contains NaN or infinity")
    if np.any(w <= 0):
        raise ValueError(f"{name} must be strictly positive (min is {w.min():g})")
    if abs(w.sum() - 1.0) > 1e-8:
        raise ValueError(f"{name} must sum to 1 (sum is {w.sum():.12g})")
    return w / w.sum()


def _as_sample_weight(sample_weight, N: int) -> np.ndarray:
    """Validate sample weights and return masses normalised to sum 1."""
    if sample_weight is None:
        return np.full(N, 1.0 / N)
    a = np.asarray(sample_weight, dtype=np.float64)
    if a.shape != (N,):
        raise ValueError(f"sample_weight must have shape ({N},), got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError("sample_weight contains NaN or infinity")
    if np.any(a < 0):
        raise ValueError(f"sample_weight must be non-negative (min is {a.min():g})")
    total = a.sum()
    if not total > 0:
        raise ValueError("sample_weight must have a positive sum")
    return a / total


class _EStep:
    """Reusable E-step solver on a fixed log-density matrix (dense or sparse).

    The exp table ``(P, amax)`` of :func:`_kernels.row_max_exp` is formed on the first
    constrained pass (into the buffers ``table`` if given). Passes store no
    responsibilities: they are formed on demand from ``A`` / the table and a potential
    (:meth:`responsibilities`, and the M-step kernel of the mixture).
    """

    def __init__(
        self, A, idx, a, alpha, *, n_chunks=None, lse=None, hess_stride=None, table=None,
        system=None, find_blocks=False, tau=None, hess_budget=None, fuse=None, rate=None,
    ):  # fmt: skip
        self.A = A
        self.dense = idx is None
        self.idx = _DUMMY_IDX if idx is None else idx
        self.a = a
        K = alpha.shape[0]
        self.K = K
        N, M = A.shape
        self.n_chunks = _k.n_chunks_for(N) if n_chunks is None else n_chunks
        if self.dense:
            active = np.ones(K, dtype=bool)
        else:
            # components that no point with mass reaches cannot receive mass: the
            # transport problem is solved on the reachable components only (the mass
            # that lists a component is positive exactly when one such point does; one
            # pass for this and _cap_weights)
            self.listed = _k.listed_mass(self.idx, a, K, self.n_chunks)
            active = self.listed > 0.0
        self.active = active
        self.all_active = bool(active.all())
        alpha = np.where(active, alpha, 0.0)
        self.alpha = alpha / alpha.sum()
        self.block = None
        self.n_blocks = 1
        # finite tau: soft column marginal (always solvable, no gauge, no blocks to balance)
        self.tau = None if tau is None or not np.isfinite(tau) else float(tau)
        self.blocks_checked = self.tau is not None
        self.capped = np.zeros(K, dtype=bool)
        if not self.dense and self.tau is None:
            self._cap_weights()
        if find_blocks and not self.dense and self.tau is None:
            self._balance_blocks()
        self.log_alpha = np.log(np.where(active, self.alpha, 1.0))
        self.lse = np.empty(N) if lse is None else lse
        self.n_passes = 0
        self._table_buf = table
        self.P = self.amax = None
        # whether the last solve used the exp table (not for the plain EM E-step)
        self.use_p = True
        # Newton system of a previous E-step on a similar problem (see newton)
        self.system = system
        # fuse = (X, shift): a trial pass expected to end the solve also accumulates the
        # diagonal M-step statistics (see newton); stats = (g, nk, s1, s2) of that pass.
        # rate: the marginal error's contraction per Newton step expected (the last one
        # measured, carried over from earlier E-steps)
        self.fuse = fuse
        self.stats = None
        # a pass that accumulated the M-step's statistics ends the solve if its marginal
        # error is below fuse_slack * tol (the mixture's loose early E-steps only; 1 = the
        # plain rule)
        self.fuse_slack = 1.0
        # the M-step skips weights below this fraction of their column's mass (a loose
        # E-step of the mixture raises it; see estimator._LOOSE_CUT)
        self.mstep_cut = _k.MSTEP_CUT
        self.rate = _CHORD_RATE if rate is None else float(rate)
        if hess_budget is None:
            hess_budget = max(_HESS_BUDGET, _HESS_PER_ENTRY * N * M)
        self.hess_budget = float(hess_budget)
        if hess_stride is None:
            # first guess: every entry above the cut (refined after the first pass)
            hess_stride = int(max(1, N * M * M // (2 * self.hess_budget)))
        self.hess_stride = int(hess_stride)

    def _cap_weights(self):
        """Cap the weights that the neighbour lists can (almost) not deliver.

        Component k can receive at most the mass of the points that list it. A start from
        random means can put a component where few points list it (a data point in the
        tail); with a weight above that mass the sparse problem has no solution, and near
        it the potential must grow without bound: measured from random means on 2e5
        normal points in 6-D (K = 100, m = 16), one component listed by 0.46% of the mass
        against a weight of 1%, the E-step ran its 100 Newton passes without converging
        (16 s; 6 passes once capped). Weights above ``_CAP_FRACTION`` of that mass are set
        to it and the excess goes to the other components in proportion to their weights
        (water-filling); later iterations move the component towards its points, its mass
        grows and the cap lifts. A no-op for dense problems and deliverable weights.
        """
        cap = _CAP_FRACTION * self.listed
        alpha = self.alpha
        if not np.any(alpha > cap) or cap.sum() <= 1.0:
            return
        fixed = np.zeros(self.K, dtype=bool)
        while True:
            over = ~fixed & (alpha > cap)
            if not over.any():
                break
            fixed |= over
            rest = 1.0 - cap[fixed].sum()
            free = self.alpha * ~fixed
            alpha = np.where(fixed, cap, free * (rest / free.sum()))
        self.capped = fixed
        self.alpha = alpha / alpha.sum()

    def _balance_blocks(self):
        """Find blocks of components that no row links; scale each block's weights to its
        rows' mass. Returns True if there is more than one block.

        A sparse problem whose neighbour lists split the components into such blocks only
        has a solution if each block's weights sum to the mass of its rows, and each
        block's potentials are free up to their own constant: otherwise (a tiny mismatch
        suffices, e.g. from flooring small weights) the potentials of the blocks drift
        apart without end and every E-step runs to its pass limit (measured on one
        synthetic head: 100 EM iterations of 100 passes, 17 s instead of 1 s). The
        scaling is a no-op for weights that already match; the Newton system and the
        normalisation of ``g`` are then gauge-fixed per block.
        """
        self.blocks_checked = True
        block, n_blocks = _k.component_blocks(self.idx, self.K, self.n_chunks)
        if np.unique(block[self.active]).size < 2:
            return False
        row_mass = np.bincount(block[self.idx[:, 0]], weights=self.a, minlength=n_blocks)
        row_mass /= row_mass.sum()
        w_mass = np.bincount(block, weights=self.alpha, minlength=n_blocks)
        scale = np.divide(row_mass, w_mass, out=np.zeros(n_blocks), where=w_mass > 0)
        alpha = self.alpha * scale[block]
        self.alpha = alpha / alpha.sum()
        self.log_alpha = np.log(np.where(self.active, self.alpha, 1.0))
        self.block = block
        self.n_blocks = n_blocks
        return True

    def rows(self, use_p=None):
        """Arguments ``(A, P, amax, use_p, idx, dense)`` of the row kernels."""
        use_p = self.use_p if use_p is None else use_p
        if use_p and self.P is None:
            N, M = self.A.shape
            buf = self._table_buf
            self.P, self.amax = (np.empty((N, M)), np.empty(N)) if buf is None else buf
            _k.row_max_exp(self.A, self.P, self.amax, self.n_chunks)
        if use_p:
            return self.A, self.P, self.amax, True, self.idx, self.dense
        return self.A, _DUMMY_P, _DUMMY_AMAX, False, self.idx, self.dense

    def pass_(self, g, want_hess=False, use_p=True, stats_cut=None):
        self.n_passes += 1
        if stats_cut is not None:
            X, shift = self.fuse
            col, wlse, nk, s1, s2 = _k.estep_pass_stats_diag(
                X, *self.rows(use_p), g, self.a, self.lse, shift, stats_cut, self.n_chunks
            )
            self.stats = (g, nk, s1, s2)
            return col, wlse, None
        col, wlse, S, work = _k.estep_pass(
            *self.rows(use_p),
            g,
            self.a,
            self.lse,
            self.n_chunks,
            want_hess,
            self.hess_stride,
        )
        if want_hess:
            self.hess_stride = int(max(1, work // self.hess_budget))
        return col, wlse, S

    def responsibilities(self, g):
        """Responsibilities for the potential ``g`` (as in the last solve), shape of ``A``."""
        R = np.empty_like(self.A)
        _k.responsibilities(*self.rows(), g, R, self.n_chunks)
        return R

    def target(self, g):
        """Column sums the solution must reach: ``alpha``, or with a finite ``tau`` the
        soft marginal ``alpha * exp(-(g - log alpha) / tau)``."""
        if self.tau is None:
            return self.alpha
        out = np.zeros(self.K)
        act = self.active
        out[act] = self.alpha[act] * np.exp(-(g[act] - self.log_alpha[act]) / self.tau)
        return out

    def error(self, g, col):
        """L1 distance of the column sums from their target."""
        return float(np.abs(col - self.target(g)).sum())

    def objective(self, g, wlse):
        act = self.active
        u = g[act] - self.log_alpha[act]
        if self.tau is None:
            return float(wlse - _vdot(self.alpha[act], u))
        # soft marginal: tau KL(column sums | alpha) in the primal; its dual term
        return float(wlse + self.tau * _vdot(self.alpha[act], np.expm1(-u / self.tau)))

    def _coordinate_step(self, g, col):
        """Exact coordinate-wise update of the potentials (a log-domain Sinkhorn step)."""
        lc = self.log_col(g, col)
        if self.tau is None:
            step = self.log_alpha - lc
        else:
            # col_k scales as exp(g_k): solve col_k exp(s_k) = target_k(g_k + s_k)
            w = self.tau / (1.0 + self.tau)
            step = w * (self.log_alpha - lc) + (1.0 - w) * (self.log_alpha - g)
        # a column no point reaches stays infeasible; leave its potential alone
        step[~np.isfinite(step)] = 0.0
        return self.normalise(g + step)

    def log_col(self, g, col):
        """log column sums; log-domain recomputation where the linear sum underflows."""
        with np.errstate(divide="ignore"):
            lc = np.log(col)
        bad = col < _TINY
        if np.any(bad):
            lc2 = _k.log_colsum(
                self.A, self.idx, self.dense, g, self.a, self.lse, self.K, self.n_chunks
            )
            lc[bad] = lc2[bad]
        return lc

    def normalise(self, g):
        # g is defined up to a constant (per block); pin
        # sum_k alpha_k g_k = sum_k alpha_k log alpha_k (within each block)
        act = self.active
        if self.tau is not None:
            return g
        if self.block is None:
            return g - _vdot(self.alpha[act], g[act] - self.log_alpha[act])
        w = np.where(act, self.alpha, 0.0)
        dev = np.where(act, g - self.log_alpha, 0.0)
        num = np.bincount(self.block, weights=w * dev, minlength=self.n_blocks)
        den = np.bincount(self.block, weights=w, minlength=self.n_blocks)
        shift = np.divide(num, den, out=np.zeros(self.n_blocks), where=den > 0)
        return g - shift[self.block]

    def fixed(self, g):
        """Plain EM E-step: responsibilities for a fixed potential (no column constraint)."""
        self.use_p = False
        col, wlse, _ = self.pass_(g, use_p=False)  # a single pass: no exp(A) table
        err = float(np.abs(col - self.alpha).sum())
        return g, col, wlse, err, 0, True

    def sinkhorn(self, g, tol, max_iter):
        col, wlse, _ = self.pass_(g)
        err = self.error(g, col)
        it = 0
        while err >= tol and it < max_iter:
            g = self._coordinate_step(g, col)
            col, wlse, _ = self.pass_(g)
            err = self.error(g, col)
            it += 1
        return g, col, wlse, err, it, err < tol

    def _factor(self, col, H, g):
        """Newton system at the point with column sums ``col`` and negative Hessian ``H``.

        ``H`` is the (PSD) estimate of :func:`_kernels.estep_pass`; with a soft marginal
        the penalty's curvature at ``g`` is added. Returns
        ``(L, H, active, block)``: the Cholesky factor of the gauge-fixed negative Hessian
        on the active components (None if it is not numerically positive definite), that
        matrix itself, the active mask and the component blocks it was gauge-fixed for
        (None: one block).
        """
        H = H.copy()
        act = self.active
        if not self.all_active:
            H = H[np.ix_(act, act)]
        Ka = H.shape[0]
        diag = 1e-12 * max(col.max(), 1e-300)
        if self.tau is not None:
            # soft marginal: the penalty's curvature makes H definite; no gauge
            diag = self.target(g)[act] / self.tau + diag
        elif self.block is None:
            # gauge: H 1 = 0 and grad is orthogonal to 1 (on each block); add a rank-one
            # term on 1 (on each block's indicator)
            H += np.mean(col[act]) * np.ones((Ka, Ka)) / Ka
        else:
            b = self.block[act]
            same = (b[:, None] == b[None, :]).astype(np.float64)
            H += np.mean(col[act]) * same / np.bincount(b)[b][:, None]
        H[np.diag_indices(Ka)] += diag
        H = np.ascontiguousarray(H)
        L, ok = _k.cholesky_factor(H)
        return (L if ok else None), H, act, self.block

    def _fresh_point(self, g):
        """One pass with a fresh Hessian at ``g``: ``(col, wlse, system, J, err)``."""
        col, wlse, H = self.pass_(g, want_hess=True)
        J = -self.objective(g, wlse)
        return col, wlse, self._factor(col, H, g), J, self.error(g, col)

    def _direction(self, system, col, g):
        L, H = system[0], system[1]
        act = self.active
        grad = self.target(g) - col
        if L is not None:
            da = _k.cholesky_solve(L, np.ascontiguousarray(grad[act]))
        else:
            da = np.linalg.lstsq(H, grad[act], rcond=None)[0]
        if not np.all(np.isfinite(da)):
            da = grad[act] / np.maximum(col[act], 1e-300)
        d = np.zeros(self.K)
        d[act] = da
        return grad, d

    def newton(self, g, tol, max_iter, at=None):
        """Damped Newton on the semi-dual, reusing the last Hessian while it contracts well.

        The Hessian pass costs a few plain passes (it scatters r r^T), so a step whose
        Newton system is not from the current point (a chord step) is taken with the last
        factorised Hessian as long as each step cuts the marginal error by ``_CHORD_RATE``
        or more; otherwise the next pass forms a fresh Hessian. Near the optimum the
        Hessian barely changes and chord steps converge almost as fast as Newton steps.
        The first step uses the system of a previous E-step if one was given (the mixture
        passes the last one: its log-densities change little between iterations).
        ``at = (col, wlse)``: the column sums and weighted log-sum-exp of a pass at ``g``
        that is already known (the last pass of an earlier solve of this E-step; ``lse``
        still holds its rows); used with a reusable system, it saves the first pass.
        """
        old = self.system
        reuse = (
            old is not None
            and np.array_equal(old[2], self.active)
            and (old[3] is None) == (self.block is None)
            and (old[3] is None or np.array_equal(old[3], self.block))
        )
        if reuse and at is not None:
            col, wlse = at
        else:
            col, wlse, S = self.pass_(g, want_hess=not reuse)
        system = old if reuse else self._factor(col, S, g)
        refresh = False  # whether the next trial passes form a fresh Hessian
        J = -self.objective(g, wlse)
        err = self.error(g, col)
        it = 0
        radius = 2.0
        while err >= tol and it < max_iter:
            it += 1
            if (
                not self.dense
                and not self.blocks_checked
                and self.n_passes >= _BLOCK_CHECK_PASSES
                and self._balance_blocks()
            ):
                # unlinked blocks (see _balance_blocks): restart from the balanced problem
                g = self.normalise(g)
                col, wlse, system, J, err = self._fresh_point(g)
                refresh = False
                radius = 2.0
                continue
            if np.any(col[self.active] < 1e-3 * self.target(g)[self.active]):
                # Far from feasible for some column (e.g. a component far from all points):
                # a log-domain Sinkhorn step moves it there in one go (and never decreases J).
                g = self._coordinate_step(g, col)
                col, wlse, system, J, err = self._fresh_point(g)
                refresh = False
                continue
            grad, d = self._direction(system, col, g)
            if not _vdot(grad, d) > 0.0:
                # not an ascent direction (a singular system solved by least squares):
                # the diagonal Newton step, a linearised Sinkhorn step, always is one
                diag = col if self.tau is None else col + self.target(g) / self.tau
                d = np.where(self.active, grad / np.maximum(diag, 1e-300), 0.0)
            # trust region in the sup norm: far from the optimum the semi-dual is nearly
            # linear along weakly coupled directions and the raw Newton step overshoots
            dmax = float(np.abs(d).max())
            if dmax > radius:
                # each component's move is clipped to the radius on its own: scaling the
                # whole step would also stall the components that need small moves when a
                # single weakly coupled one asks for a huge move (measured: 307 -> 228
                # passes over a synthetic head's fit, 27 -> 22 for a cold E-step at
                # N = 1e6); scaled if the clipped step is no ascent direction
                dc = np.clip(d, -radius, radius)
                d = dc if _vdot(grad, dc) > 0.0 else d * (radius / dmax)
                dmax = radius
            slope = _vdot(grad, d)
            t = 1.0
            accepted = False
            # a full step expected to meet the tolerance also accumulates the M-step's
            # statistics (one pass instead of two when it does; when it does not, the
            # statistics cost about one pass for nothing). Its cut is the M-step's
            # (_k.MSTEP_CUT times the column sums) from this point's column sums: within
            # the tolerance of the final ones, and the cut only drops weights below
            # 1e-16 of a column anyway
            expect = err * self.rate
            fuse = self.fuse is not None and expect < tol * (_FUSE_OVER_REFRESH if refresh else 1)
            if fuse and refresh:
                # a step expected to end the solve with a margin needs no fresh Hessian (a
                # Hessian pass cannot also form the statistics; see _FUSE_OVER_REFRESH)
                refresh = False
            for _ in range(40):
                gt = self.normalise(g + t * d)
                cut = self.mstep_cut * col if fuse and t == 1.0 else None
                col_t, wlse_t, S_t = self.pass_(gt, want_hess=refresh, stats_cut=cut)
                Jt = -self.objective(gt, wlse_t)
                # near the optimum J changes by less than its rounding error: a step that
                # meets the marginal tolerance is accepted whatever the rounding of J says
                if Jt >= J + 1e-4 * t * slope or t * dmax < 1e-14 or self.error(gt, col_t) < tol:
                    accepted = True
                    break
                # backtrack with the minimiser of the quadratic through J, J'(0), J(t)
                denom = 2.0 * (J + t * slope - Jt)
                t_q = slope * t * t / denom if denom > 0 else 0.5 * t
                t = min(max(t_q, 0.1 * t), 0.5 * t)
            if not accepted:
                break
            if t == 1.0:
                radius = min(2.0 * radius, 1e6) if dmax >= radius else radius
            else:
                radius = max(t * dmax, 1e-3)
            err_t = self.error(gt, col_t)
            if t == 1.0 and err > 0.0:
                self.rate = err_t / err
            if refresh:
                system = self._factor(col_t, S_t, gt)
                refresh = False
            else:
                # a step that contracted poorly: the next trial point brings a Hessian
                refresh = err_t > _CHORD_RATE * err
            g, col, wlse, J, err = gt, col_t, wlse_t, Jt, err_t
            if self.stats is not None and self.stats[0] is g and err < self.fuse_slack * tol:
                # the statistics of this pass serve the M-step; a near miss of a loose
                # tolerance is not worth another pass and an M-step pass of its own
                break
        self.system = system
        return g, col, wlse, err, it, err < tol

    def solve(self, g, tol, max_iter, solver="auto", at=None):
        if solver == "auto":
            solver = "newton"
        self.use_p = True
        if solver == "newton":
            out = self.newton(g, tol, max_iter, at)
        elif solver == "sinkhorn":
            out = self.sinkhorn(g, tol, max_iter)
        else:
            raise ValueError(f"solver must be 'auto', 'newton' or 'sinkhorn', got {solver!r}")
        return (*out, solver)


def _validate_log_prob(log_prob, neighbors, K):
    A = np.asarray(log_prob, dtype=np.float64)
    if A.ndim != 2:
        raise ValueError(f"log_prob must be a 2-D array, got {A.ndim} dimension(s)")
    if A.shape[0] == 0:
        raise ValueError("log_prob has no rows")
    if np.isnan(A).any() or np.isposinf(A).any():
        raise ValueError("log_prob contains NaN or +inf")
    dead = np.zeros(A.shape[0], dtype=bool)
    if np.isneginf(A).any():
        # rows with zero density under every listed component (checked against the masses
        # by the caller)
        dead = np.isneginf(A).all(axis=1)
        # -inf log-density = zero density: replace by a very small finite number
        A = np.where(np.isneginf(A), -1e300, A)
    if neighbors is None:
        return np.ascontiguousarray(A), None, A.shape[1], dead
    idx = np.asarray(neighbors)
    if idx.shape != A.shape:
        raise ValueError(
            f"neighbors must have the same shape as log_prob {A.shape}, got {idx.shape}"
        )
    if not np.issubdtype(idx.dtype, np.integer):
        raise ValueError("neighbors must be an integer array of component indices")
    if K is None:
        raise ValueError("with neighbors, the number of components is len(weights)")
    if idx.size and (idx.min() < 0 or idx.max() >= K):
        raise ValueError(f"neighbors contains component indices outside [0, {K})")
    srt = np.sort(idx, axis=1)
    if idx.shape[1] > 1 and np.any(srt[:, 1:] == srt[:, :-1]):
        raise ValueError("neighbors must not repeat a component within a row")
    return np.ascontiguousarray(A), np.ascontiguousarray(idx, dtype=np.int32), K, dead


def sinkhorn_responsibilities(
    log_prob,
    weights=None,
    sample_weight=None,
    *,
    neighbors=None,
    tol: float = 1e-9,
    max_iter: int = 1000,
    init_potential=None,
    solver: str = "auto",
    marginal_penalty: float | None = None,
    return_info: bool = False,
):
    """Responsibilities whose weighted column means equal prescribed mixing weights.

    Solves the entropic optimal-transport E-step of Sinkhorn-EM in the log domain:
    find the column potential ``g`` such that ``r_ik = softmax_k(log_prob[i, k] + g_k)``
    satisfies ``sum_i a_i r_ik = weights[k]`` with ``a = sample_weight / sum(sample_weight)``.

    Parameters
    ----------
    log_prob : array_like of shape (N, K), or (N, m) with ``neighbors``
        Log-densities ``log p_k(x_i)``. ``-inf`` entries are treated as zero density. A
        row that is ``-inf`` everywhere (zero density under every component) is an error
        if its point has positive mass (the ``ValueError`` names the rows); with
        ``sample_weight`` 0 it carries nothing and its returned row is
        ``softmax(potential)``.
    weights : array_like of shape (K,), optional
        Target column marginals (mixing weights): strictly positive, summing to 1.
        Default uniform. Required with ``neighbors`` (it fixes K).
    sample_weight : array_like of shape (N,), optional
        Non-negative point masses (normalised internally). Default uniform.
    neighbors : array_like of int, shape (N, m), optional
        Sparse variant: ``log_prob[i, j]`` is the log-density of component
        ``neighbors[i, j]``; other components have zero responsibility for point i.
        Components that no point with mass lists get no mass (the weights are
        renormalised over the others). If the lists split the components into blocks
        that no point links, each block's weights are scaled to the mass of its points
        (the only feasible marginals) before solving.
    tol : float, default 1e-9
        Stop when ``|| sum_i a_i r_i - weights ||_1 < tol``.
    max_iter : int, default 1000
        Maximum number of potential updates.
    init_potential : array_like of shape (K,), optional
        Warm start for ``g`` (default ``log(weights)``, i.e. the EM posteriors).
    solver : {"auto", "newton", "sinkhorn"}, default "auto"
        ``"newton"``: damped Newton on the K-dimensional concave semi-dual (Armijo line
        search, one K x K solve per step); ``"sinkhorn"``: log-domain Sinkhorn column
        updates. ``"auto"`` is Newton, which measured faster in every tested case (its
        Hessian pass costs at most a few times a plain pass, see ``_HESS_BUDGET``).
    marginal_penalty : float, optional
        ``None`` (default): the column means equal ``weights`` exactly. A positive
        ``tau``: a soft marginal (unbalanced, semi-relaxed transport) penalising
        ``tau * KL(column means | weights)``; the column means then reach
        ``weights * exp(-(g - log weights) / tau)`` (``tol`` applies to that target).
        Always solvable; ``tau -> 0`` gives the EM posteriors. See docs/method.md.
    return_info : bool, default False
        Also return a :class:`SinkhornInfo`.

    Returns
    -------
    resp : ndarray, same shape as ``log_prob``
        Responsibilities; each row sums to 1.
    info : SinkhornInfo
        Only if ``return_info``.

    Raises
    ------
    ValueError
        On NaN/+inf log-densities, rows with positive mass that are -inf everywhere,
        mismatched shapes, invalid weights or sample weights, invalid neighbour indices,
        or fewer points with mass than components.
    """
    K0 = None if weights is None else int(np.size(weights))
    A, idx, K, dead = _validate_log_prob(log_prob, neighbors, K0)
    N = A.shape[0]
    alpha = np.full(K, 1.0 / K) if weights is None else _as_weights(weights, K)
    a = _as_sample_weight(sample_weight, N)
    dead = np.flatnonzero(dead & (a > 0))
    if dead.size:
        shown = ", ".join(str(i) for i in dead[:10]) + (", ..." if dead.size > 10 else "")
        raise ValueError(
            f"log_prob is -inf in every column of {dead.size} row(s) with positive mass "
            f"(rows {shown}): such a point has zero density under every component and "
            "cannot be assigned; drop these rows or give them sample_weight 0"
        )
    tau = _check_marginal_penalty(marginal_penalty)
    if tau is None and np.count_nonzero(a) < K:
        raise ValueError(
            f"only {np.count_nonzero(a)} point(s) have positive mass, fewer than the "
            f"{K} components: the column marginals cannot be met"
        )
    if not (tol > 0):
        raise ValueError(f"tol must be positive, got {tol}")
    if int(max_iter) < 0:
        raise ValueError(f"max_iter must be >= 0, got {max_iter}")
    if init_potential is None:
        g = np.log(alpha)
    else:
        g = np.asarray(init_potential, dtype=np.float64).copy()
        if g.shape != (K,) or not np.all(np.isfinite(g)):
            raise ValueError(f"init_potential must be a finite array of shape ({K},)")
    with _k.threads_for(A.size):
        es = _EStep(A, idx, a, alpha, find_blocks=True, tau=tau)
        g = es.normalise(g)
        g, _col, wlse, err, it, conv, used = es.solve(g, tol, int(max_iter), solver)
        R = es.responsibilities(g)
    if not return_info:
        return R
    info = SinkhornInfo(
        potential=g,
        marginal_error=err,
        n_iter=it,
        objective=es.objective(g, wlse),
        converged=bool(conv),
        solver=used,
        n_passes=es.n_passes,
    )
    return R, info
