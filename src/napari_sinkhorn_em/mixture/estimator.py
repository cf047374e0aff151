"""Gaussian mixtures fitted by Sinkhorn-EM (or EM) in the shape of scikit-learn's estimator."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
from scipy.spatial import cKDTree

from . import _kernels as _k
from . import _splitmerge as _sm
from ._neighbors import neighbor_search
from .estep import (
    _DUMMY_IDX,
    _as_sample_weight,
    _as_weights,
    _check_marginal_penalty,
    _EStep,
)

__all__ = ["ConvergenceWarning", "SinkhornEM"]

# E-step stopping rule ||mean responsibility - weights||_1 < tol_E with
# tol_E = clip(_ESTEP_TOL_FACTOR * tol, _ESTEP_TOL_MIN, _ESTEP_TOL_MAX). With a marginal
# error e the objective is off by about e^2 / 2 times the inverse Hessian (~K), i.e.
# <= 1e-8 for e = 1e-6, K = 1e4: far below the outer tolerance, so the objective history
# stays monotone to well within ``tol``; the responsibilities are off by O(e).
_ESTEP_TOL_MIN = 1e-8
_ESTEP_TOL_MAX = 1e-6
_ESTEP_TOL_FACTOR = 1e-3
_ESTEP_MAX_ITER = 100
# Fast start (``fast_start``; see SinkhornEM._fast_start). Early E-steps stop at a
# marginal error of at most _FAST_TOL_MAX, tightened as the objective settles (its error
# kept below _FAST_OBJ_FRACTION of the last change: e^2 K / 2 for an error e). A cap of
# 1e-2 instead of 1e-3 saved 9 of 40 pass equivalents of a 5-iteration fit and 16 of 128
# of a fit to convergence (N = 2e5, K = 100, D = 6, m = 16; seeds 0 and 1 of the
# structured data of bench_coldstart: objectives -13.0595 / -13.0651 vs -13.0626 /
# -13.0649, ARI 0.932 / 0.925 vs 0.926 / 0.926). The Newton Hessian is estimated from a
# row sample costing about _FAST_HESS_PER_ENTRY passes' worth of multiply-adds (inexact
# Newton: the gradient stays exact) instead of up to ~10 plain passes when the
# responsibilities are spread over all m neighbours; a cold E-step starts with
# _FAST_SCALING_PASSES log-domain Sinkhorn passes. Measured at N = 2e5, K = 100, D = 6,
# m = 16 from random means: see benchmarks/bench_coldstart.py and docs/method.md.
_FAST_TOL_MAX = 1e-2
_FAST_OBJ_FRACTION = 1e-2
_FAST_HESS_PER_ENTRY = 1.0
_FAST_SCALING_PASSES = 3
_FAST_TOL_PER_OUTER = 10.0
# A loose E-step also ends on a pass that formed the next M-step's statistics if that
# pass' marginal error is below this multiple of its tolerance (the pass is planned when
# the error expected from the last contraction rate meets the tolerance; a near miss
# otherwise costs another pass and a separate M-step pass, about 5 plain passes).
_FAST_FUSE_SLACK = 2.0
# The M-step after a loose E-step (marginal error tol_e, fast_start) skips the weights
# a_i r_ik below _LOOSE_CUT * tol_e / N of their column's mass (instead of
# _kernels.MSTEP_CUT = 1e-16): the skipped weights of a column are at most _LOOSE_CUT *
# tol_e of its mass, a thousandth of the error the E-step itself leaves. On clustered data
# most of the m listed components of a point carry almost nothing: measured on the 100
# clusters of bench_coldstart part 2 (N = 2e5, m = 16, seed 0), 30-73% of the entries
# kept instead of 65-95%, and the accumulation (13-17 loads and stores per kept entry) is
# the cost of the M-step. See docs/method.md, "Seventh pass".
_LOOSE_CUT = 1e-3
_KMEANS_SUBSAMPLE = 20000
# weights="estimate": split-and-merge moves refitted per round (the best ranked first)
_SM_TRIES = 5
# ... each for at most this many EM iterations before it is compared with the current fit
_SM_TRIAL_ITER = 30
_PREDICT_CHUNK = 65536


class ConvergenceWarning(UserWarning):
    """The best of the ``n_init`` runs stopped at ``max_iter`` before reaching ``tol``."""


def _validate_X(X, name="X") -> np.ndarray:
    X = np.asarray(X)
    if X.dtype == object or not np.issubdtype(X.dtype, np.number):
        raise ValueError(f"{name} must be a numeric array, got dtype {X.dtype}")
    X = np.ascontiguousarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D array (n_samples, n_features), got {X.ndim} dimension(s)"
        )
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {X.shape})")
    if not np.all(np.isfinite(X)):
        raise ValueError(f"{name} contains NaN or infinity")
    big = np.abs(X).max()
    # squared distances, variances and their sums over features must stay finite:
    # (2 max|x|)^2 D below the float64 limit (about 1.8e308), i.e. max|x| up to about
    # 1e153 / sqrt(D); beyond, a Gaussian model of X cannot even represent its covariances
    with np.errstate(over="ignore"):
        spread = (2.0 * big) ** 2 * X.shape[1]
    if not np.isfinite(spread):
        raise ValueError(
            f"{name} has values of magnitude up to {big:.3g}: its squared distances and "
            "covariances overflow float64 (values must stay below about 1e150); rescale "
            f"{name} (e.g. divide it by its standard deviation) before fitting"
        )
    spread = float((X.max(axis=0) - X.min(axis=0)).max())
    if 0.0 < spread < 1e-150:
        raise ValueError(
            f"{name} varies by at most {spread:.3g} along any feature: its variances "
            "underflow float64 (spreads must stay above about 1e-150); rescale "
            f"{name} (e.g. divide it by its standard deviation) before fitting"
        )
    return X


class SinkhornEM:
    """Gaussian mixture fitted by Sinkhorn-EM (entropic-OT E-step) or by EM.

    Parameters
    ----------
    n_components : int
        Number of Gaussian components K.
    method : {"sinkhorn", "em"}, default "sinkhorn"
        ``"sinkhorn"``: Sinkhorn-EM with fixed mixing weights; the E-step finds the
        responsibilities whose sample-weighted averages equal ``weights`` and the
        objective is the negative entropic-OT loss ``-L``. ``"em"``: EM with the same
        fixed weights (or learned ones with ``learn_weights=True``); objective is the
        sample-weighted mean log-likelihood. Both share every other line of code.
    weights : array_like of shape (K,) or "estimate", optional
        Mixing weights: strictly positive, summing to 1. Default uniform. With
        ``learn_weights=True`` they are the initial weights. ``"estimate"`` (Sinkhorn-EM
        only): for unknown weights, Sinkhorn-EM with uniform weights (which spreads the
        components over the data), then EM with learned weights from its fit, then
        split-and-merge moves (``split_merge``); the result is an EM fixed point
        (``weights_`` learned, ``objective_`` the log-likelihood, ``n_iter_`` the
        iterations of all phases, rejected moves included). Measured against EM from the
        same random starts in docs/method.md.
    learn_weights : bool, default False
        Re-estimate the weights in the M-step (classic EM). Only with ``method="em"``.
    covariance_type : {"full", "diag", "spherical"}, default "full"
    covariance_bounds : (float, float), optional
        ``(lo, hi)`` with ``0 < lo <= hi``. After every covariance update (and after
        ``reg_covar`` is added) the eigenvalues of the position block (the first
        ``position_dims`` features), or of the whole covariance when ``position_dims``
        is None, are clipped into ``[lo, hi]``; eigenvectors are kept. For "diag" the
        variances of those features are clipped; for "spherical" the single variance.
        Clipping the eigenvalues of the scatter is the exact maximiser of the Gaussian
        M-step under these bounds, so the objective stays monotone.
    reg_covar : float or array_like of shape (D,), default 1e-6
        Added to the diagonal of every covariance; per feature for "full" and "diag"
        (e.g. the quantisation variance ``step**2 / 12`` of a coarsely sampled axis).
    tol : float, default 1e-3
        Stop when the objective changes by less than ``tol`` between iterations.
    max_iter : int, default 100
        Maximum number of EM iterations (M-steps). 0 keeps the initialisation.
    n_init : int, default 1
        Number of initialisations; the run with the highest objective is kept.
    init : {"k-means++", "random"} or array_like of shape (K, D), default "k-means++"
        Initial means: weighted k-means++ seeding plus Lloyd iterations (on a weighted
        subsample of at most 20000 points), ``K`` random points drawn with probability
        proportional to their mass, or the given array.
    means_init : array_like of shape (K, D), optional
        Initial means (overrides ``init``).
    covariances_init : array_like, optional
        Initial covariances, shape (K, D, D), (K, D) or (K,) per ``covariance_type``.
        Default: weighted scatter of the points nearest to each initial mean.
    learn_covariances : bool, default True
        If False the covariances stay at their initial value.
    n_neighbors : int, optional
        Sparse mode: each point only interacts with its ``n_neighbors`` nearest component
        means (Euclidean over the position features), refreshed every iteration, so
        memory and time are O(N m). ``None`` (or ``>= K``) is the exact dense model.
    random_state : int, numpy Generator or None
        Seed for the initialisation.
    verbose : int, default 0
        Print the objective every iteration when > 0.
    position_dims : int, optional
        Block structure: the first ``position_dims`` features are positions, the rest
        intensities, with zero cross-covariance between the blocks ("full" only; the
        other types have no cross-covariance anyway). Also selects the features used for
        the neighbour search and for ``covariance_bounds``.
    callback : callable, optional
        Called as ``callback(n_iter, objective)`` after every iteration; returning True
        stops the fit at once (``converged_=False``, ``stopped_=True``, no warning).
    marginal_penalty : float, optional
        Sinkhorn-EM only: ``None`` (default) makes the column sums of the responsibilities
        equal ``weights`` exactly. A positive ``tau`` makes the constraint soft (unbalanced,
        semi-relaxed optimal transport): the primal penalises ``tau * KL(column sums |
        weights)``, the E-step reaches column sums ``weights * exp(-(g - log weights) /
        tau)``, and ``tau -> 0`` recovers EM with fixed weights. A soft marginal always has
        a solution, also when the sparse neighbour lists cannot deliver the prescribed
        weights.

    fast_start : bool or "auto", default "auto"
        Sinkhorn-EM only. True: early E-steps are solved inexactly (marginal error up to
        1e-2, tightened as the objective settles so that its error stays below 1% of the
        last change; convergence is only declared on an exact E-step, and a fit that
        stops early finishes its last E-step exactly), the Newton Hessian is estimated
        from a row sample, a cold E-step starts with three Sinkhorn scaling passes (and
        the next E-step with a fresh Newton Hessian), and
        (diagonal or spherical covariances, at most 8 features) the pass expected to end
        an E-step also accumulates the next M-step's statistics: the cold start costs
        about 3 later iterations instead of 6-7 (benchmarks/bench_coldstart.py).
        False: every E-step exact to the tolerance derived from ``tol``. ``"auto"``:
        True for ``init="random"`` / ``"k-means++"``, False when means are given (a
        pipeline that passes its own start reproduces earlier results bit for bit).
    split_merge : bool or "auto", default "auto"
        Split-and-merge moves after the fit (with ``weights="estimate"``, or with
        ``method="em", learn_weights=True``; K >= 3): each round merges the two
        components whose responsibilities overlap most into one and splits the component
        that a local two-component fit explains best into two (K stays the same), refits
        EM with learned weights from there for the 5 best-ranked moves in turn (30
        iterations each, the accepted one to convergence) and keeps the first that
        raises the log-likelihood by more than ``tol``; rounds end when no move does.
        This repairs the configurations where one component covers two clusters while
        two share one (unequal cluster masses). ``"auto"``: on for ``weights="estimate"``
        only.

    Attributes
    ----------
    means_, covariances_, weights_ : ndarray
        Fitted parameters (covariances in scikit-learn's shape for the type).
    precisions_cholesky_ : ndarray
        Cholesky factors of the precisions (full) or ``1/sqrt(var)`` (diag, spherical).
    potential_ : ndarray of shape (K,)
        Column potential g of the final E-step; responsibilities are
        ``softmax_k(log p_k(x) + g_k)`` (``g = log weights_`` for EM).
    n_iter_ : int
    converged_ : bool
    stopped_ : bool
        True if the callback stopped the fit.
    objective_ : float
        Objective at the fitted parameters (``lower_bound_`` is an alias).
    objective_history_ : list of float
        Objective at the initial parameters, then after every iteration.
    marginal_error_ : float
        ``|| mean responsibility - weights ||_1`` of the final E-step (with
        ``marginal_penalty``: the distance to the soft target of the column sums).
    n_features_in_ : int
    """

    def __init__(
        self,
        n_components: int = 1,
        *,
        method: str = "sinkhorn",
        weights=None,
        learn_weights: bool = False,
        covariance_type: str = "full",
        covariance_bounds: tuple[float, float] | None = None,
        reg_covar: float = 1e-6,
        tol: float = 1e-3,
        max_iter: int = 100,
        n_init: int = 1,
        init="k-means++",
        means_init=None,
        covariances_init=None,
        learn_covariances: bool = True,
        n_neighbors: int | None = None,
        random_state=None,
        verbose: int = 0,
        position_dims: int | None = None,
        callback: Callable[[int, float], bool | None] | None = None,
        marginal_penalty: float | None = None,
        fast_start="auto",
        split_merge="auto",
    ):
        self.n_components = n_components
        self.method = method
        self.weights = weights
        self.learn_weights = learn_weights
        self.covariance_type = covariance_type
        self.covariance_bounds = covariance_bounds
        self.reg_covar = reg_covar
        self.tol = tol
        self.max_iter = max_iter
        self.n_init = n_init
        self.init = init
        self.means_init = means_init
        self.covariances_init = covariances_init
        self.learn_covariances = learn_covariances
        self.n_neighbors = n_neighbors
        self.random_state = random_state
        self.verbose = verbose
        self.position_dims = position_dims
        self.callback = callback
        self.marginal_penalty = marginal_penalty
        self.fast_start = fast_start
        self.split_merge = split_merge

    def _use_split_merge(self) -> bool:
        estimate = isinstance(self.weights, str) and self.weights == "estimate"
        on = estimate if self.split_merge == "auto" else bool(self.split_merge)
        return on and self.n_components >= 3 and self.max_iter > 0

    def _fast_start(self) -> bool:
        if self.fast_start == "auto":
            return self.means_init is None and isinstance(self.init, str)
        return bool(self.fast_start)

    # ------------------------------------------------------------------ validation
    def _check_params(self, D: int) -> None:
        K = self.n_components
        if isinstance(K, bool) or not isinstance(K, (int, np.integer)) or K < 1:
            raise ValueError(f"n_components must be a positive integer, got {K!r}")
        if self.method not in ("sinkhorn", "em"):
            raise ValueError(f"method must be 'sinkhorn' or 'em', got {self.method!r}")
        if isinstance(self.weights, str) and (
            self.weights != "estimate" or self.method != "sinkhorn" or self.learn_weights
        ):
            raise ValueError(
                "weights must be an array of K weights or 'estimate' (with "
                f"method='sinkhorn', learn_weights=False), got {self.weights!r}"
            )
        if self.learn_weights and self.method != "em":
            raise ValueError("learn_weights=True requires method='em' (Sinkhorn-EM fixes weights)")
        if self.covariance_type not in ("full", "diag", "spherical"):
            raise ValueError(
                "covariance_type must be 'full', 'diag' or 'spherical', "
                f"got {self.covariance_type!r}"
            )
        reg = np.asarray(self.reg_covar, dtype=np.float64)
        if reg.ndim > 1 or (
            reg.ndim == 1 and (reg.size != D or self.covariance_type == "spherical")
        ):
            raise ValueError(
                f"reg_covar must be a number or (full/diag) one number per feature ({D}), "
                f"got {self.reg_covar!r}"
            )
        if not (np.all(np.isfinite(reg)) and np.all(reg >= 0)):
            raise ValueError(f"reg_covar must be non-negative, got {self.reg_covar}")
        if not (np.isfinite(self.tol) and self.tol >= 0):
            raise ValueError(f"tol must be a non-negative number, got {self.tol}")
        if not isinstance(self.max_iter, (int, np.integer)) or self.max_iter < 0:
            raise ValueError(f"max_iter must be an integer >= 0, got {self.max_iter!r}")
        if not isinstance(self.n_init, (int, np.integer)) or self.n_init < 1:
            raise ValueError(f"n_init must be an integer >= 1, got {self.n_init!r}")
        if self.covariance_bounds is not None:
            try:
                lo, hi = (float(v) for v in self.covariance_bounds)
            except (TypeError, ValueError):
                raise ValueError(
                    f"covariance_bounds must be a pair (lo, hi), got {self.covariance_bounds!r}"
                ) from None
            if not (0 < lo <= hi < np.inf):
                raise ValueError(f"covariance_bounds must satisfy 0 < lo <= hi, got ({lo}, {hi})")
        pd = self.position_dims
        if pd is not None and (
            isinstance(pd, bool) or not isinstance(pd, (int, np.integer)) or not 1 <= pd <= D
        ):
            raise ValueError(f"position_dims must be an integer in [1, {D}], got {pd!r}")
        m = self.n_neighbors
        if m is not None and (isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1):
            raise ValueError(f"n_neighbors must be a positive integer or None, got {m!r}")
        if isinstance(self.init, str) and self.init not in ("k-means++", "random"):
            raise ValueError(
                f"init must be 'k-means++', 'random' or an array of means, got {self.init!r}"
            )
        if self.callback is not None and not callable(self.callback):
            raise ValueError("callback must be callable or None")
        _check_marginal_penalty(self.marginal_penalty)
        if not (self.split_merge == "auto" or isinstance(self.split_merge, (bool, np.bool_))):
            raise ValueError(f"split_merge must be True, False or 'auto', got {self.split_merge!r}")
        if self.split_merge is True and not (
            (isinstance(self.weights, str) and self.weights == "estimate")
            or (self.method == "em" and self.learn_weights)
        ):
            raise ValueError(
                "split_merge=True needs weights='estimate' or method='em' with "
                "learn_weights=True (the moves change the weights)"
            )
        if not (self.fast_start == "auto" or isinstance(self.fast_start, (bool, np.bool_))):
            raise ValueError(f"fast_start must be True, False or 'auto', got {self.fast_start!r}")

    def _check_means(self, means, D, name):
        K = self.n_components
        mu = np.asarray(means, dtype=np.float64)
        if mu.shape != (K, D):
            raise ValueError(f"{name} must have shape ({K}, {D}), got {mu.shape}")
        if not np.all(np.isfinite(mu)):
            raise ValueError(f"{name} contains NaN or infinity")
        return mu.copy()

    def _check_covariances(self, cov, D):
        K = self.n_components
        cov = np.asarray(cov, dtype=np.float64)
        shape = {"full": (K, D, D), "diag": (K, D), "spherical": (K,)}[self.covariance_type]
        if cov.shape != shape:
            raise ValueError(
                f"covariances_init must have shape {shape} for covariance_type="
                f"'{self.covariance_type}', got {cov.shape}"
            )
        if not np.all(np.isfinite(cov)):
            raise ValueError("covariances_init contains NaN or infinity")
        if self.covariance_type == "full":
            if not np.allclose(cov, np.swapaxes(cov, 1, 2)):
                raise ValueError("covariances_init must be symmetric")
            if np.any(np.linalg.eigvalsh(cov)[:, 0] <= 0):
                raise ValueError("covariances_init must be positive definite")
        elif np.any(cov <= 0):
            raise ValueError("covariances_init must be positive")
        return cov.copy()

    # ------------------------------------------------------------------ parameters
    def _pos(self, X):
        d = self.position_dims
        return X if d is None else np.ascontiguousarray(X[:, :d])

    def _constrain(self, cov, D):
        """Add reg_covar, zero the cross-block covariance and clip eigenvalues (in place)."""
        d = self.position_dims
        bounds = self.covariance_bounds
        ct = self.covariance_type
        if ct == "full":
            cov += np.asarray(self.reg_covar) * np.eye(D)
            if d is not None and d < D:
                cov[:, :d, d:] = 0.0
                cov[:, d:, :d] = 0.0
            if bounds is not None:
                lo, hi = bounds
                db = D if d is None else d
                blk = cov[:, :db, :db]
                w, V = np.linalg.eigh(blk)
                w = np.clip(w, lo, hi)
                cov[:, :db, :db] = np.einsum("kij,kj,klj->kil", V, w, V)
        else:
            cov += np.asarray(self.reg_covar)
            if bounds is not None:
                lo, hi = bounds
                if ct == "diag":
                    db = D if d is None else d
                    cov[:, :db] = np.clip(cov[:, :db], lo, hi)
                else:
                    np.clip(cov, lo, hi, out=cov)
        return cov

    def _precisions(self, cov, D):
        """Kernel-form precisions and log-determinant terms; raise on collapse."""
        ct = self.covariance_type
        if ct == "full":
            K = cov.shape[0]
            P = np.empty_like(cov)
            log_det = np.empty(K)
            bad = _k.precision_cholesky(np.ascontiguousarray(cov), P, log_det)
            if bad >= 0:
                raise ValueError(
                    f"component {bad} collapsed: its covariance is not positive definite "
                    "(singleton or collapsed samples); increase reg_covar, set "
                    "covariance_bounds or decrease n_components"
                )
            return P, log_det
        var = cov if ct == "diag" else np.repeat(cov[:, None], D, axis=1)
        bad = np.flatnonzero(~(var > 0).all(axis=1))
        if bad.size:
            raise ValueError(
                f"component {bad[0]} collapsed: its variance is zero (singleton or collapsed "
                "samples); increase reg_covar, set covariance_bounds or decrease n_components"
            )
        ps = 1.0 / np.sqrt(var)
        return np.ascontiguousarray(ps), np.log(ps).sum(axis=1)

    def _log_prob(self, X, means, prec, log_det, idx, out):
        dense = idx is None
        ii = _DUMMY_IDX if dense else idx
        kern = _k.log_prob_full if self.covariance_type == "full" else _k.log_prob_diag
        kern(X, means, prec, log_det, ii, dense, out, _k.n_chunks_for(X.shape[0]))
        return out

    # ------------------------------------------------------------------ initialisation
    def _kmeans(self, Xs, ws, rng, kmeanspp):
        K = self.n_components
        n = Xs.shape[0]
        p = ws / ws.sum()
        if not kmeanspp:
            nz = np.flatnonzero(p > 0)
            pick = rng.choice(nz, size=K, replace=False, p=p[nz] / p[nz].sum())
            return Xs[pick].copy()
        centers = np.empty((K, Xs.shape[1]))
        first = rng.choice(n, p=p)
        centers[0] = Xs[first]
        best = np.full(n, np.inf)
        for k in range(1, K):
            _k.sq_dist_min_update(Xs, centers[k - 1], best)
            q = p * best
            tot = q.sum()
            if tot <= 0:  # fewer distinct points than components: reuse points
                centers[k] = Xs[rng.choice(n, p=p)]
            else:
                centers[k] = Xs[rng.choice(n, p=q / tot)]
        labels = np.empty(n, dtype=np.int64)
        for _ in range(10):
            _k.nearest_center(Xs, centers, labels)
            mass = np.bincount(labels, weights=ws, minlength=K)
            ok = mass > 0
            for d in range(Xs.shape[1]):
                s = np.bincount(labels, weights=ws * Xs[:, d], minlength=K)
                centers[ok, d] = s[ok] / mass[ok]
        return centers

    def _initialize(self, X, a, rng):
        N, D = X.shape
        K = self.n_components
        ct = self.covariance_type
        if N > _KMEANS_SUBSAMPLE:
            sub = rng.choice(N, size=_KMEANS_SUBSAMPLE, p=a)
            Xs, ws = X[sub], np.full(_KMEANS_SUBSAMPLE, 1.0 / _KMEANS_SUBSAMPLE)
        else:
            Xs, ws = X, a
        if self.means_init is not None:
            means = self._check_means(self.means_init, D, "means_init")
        elif not isinstance(self.init, str):
            means = self._check_means(self.init, D, "init")
        else:
            means = self._kmeans(Xs, ws, rng, self.init == "k-means++")
        Xs = np.ascontiguousarray(Xs)
        labels = np.empty(Xs.shape[0], dtype=np.int64)
        _k.nearest_center(Xs, means, labels)
        mass = np.bincount(labels, weights=ws, minlength=K)
        if self.covariances_init is not None:
            cov = self._check_covariances(self.covariances_init, D)
        else:
            full = np.empty((K, D, D))
            glob = np.cov(Xs.T, aweights=ws, bias=True).reshape(D, D)
            valid = np.zeros(K, dtype=bool)
            # each component's points in increasing index order (as a boolean mask would
            # select them) from one stable sort instead of K scans of the labels
            order = np.argsort(labels, kind="stable")
            ends = np.cumsum(np.bincount(labels, minlength=K))
            for k in range(K):
                sel = order[(ends[k - 1] if k else 0) : ends[k]]
                if sel.size > D and mass[k] > 0:
                    diff = Xs[sel] - means[k]
                    w = ws[sel] / mass[k]
                    full[k] = (diff * w[:, None]).T @ diff
                    valid[k] = True
            fill = full[valid].mean(axis=0) if valid.any() else glob
            full[~valid] = fill
            if ct == "full":
                cov = full
            elif ct == "diag":
                cov = np.ascontiguousarray(np.diagonal(full, axis1=1, axis2=2))
            else:
                cov = np.diagonal(full, axis1=1, axis2=2).mean(axis=1)
            cov = self._constrain(cov, D)
        if self.learn_weights and self.weights is None:
            alpha = (mass + 10 * np.finfo(float).eps) / (mass + 10 * np.finfo(float).eps).sum()
        else:
            alpha = self._alpha0.copy()
        return means, cov, alpha

    # ------------------------------------------------------------------ M-step
    def _m_step(self, X, es, g, col, means, cov, alpha, n_chunks, learn=None):
        """M-step from the responsibilities of ``es`` for potential ``g`` (column sums ``col``)."""
        D = X.shape[1]
        kind = 0 if self.covariance_type == "full" else 1
        cut = es.mstep_cut * col
        if es.stats is not None and es.stats[0] is g:
            # accumulated by the E-step's last pass (fast_start; see _EStep.newton)
            nk, s1, s2 = es.stats[1:]
        elif kind == 1 and D <= _k.MSTEP_LANES:
            nk, s1, s2 = _k.mstep_stats_diag(X, *es.rows(), g, es.a, means, cut, n_chunks)
        else:
            nk, s1, s2 = _k.mstep_stats(X, *es.rows(), g, es.a, means, cut, n_chunks, kind)
        ok = nk > 1e-250
        nko = nk[ok]
        delta = s1[ok] / nko[:, None]
        new_means = means.copy()
        new_means[ok] += delta
        new_cov = cov.copy()
        if self.learn_covariances and ok.any():
            if kind == 0:
                c = s2[ok] / nko[:, None, None] - delta[:, :, None] * delta[:, None, :]
                c = 0.5 * (c + np.swapaxes(c, 1, 2))
            else:
                c = s2[ok, :, 0] / nko[:, None] - delta**2
                c = np.maximum(c, 0.0)
                if self.covariance_type == "spherical":
                    c = c.mean(axis=1)
            new_cov[ok] = self._constrain(c, D)
        if self.learn_weights if learn is None else learn:
            w = nk + 10 * np.finfo(float).eps
            alpha = w / w.sum()
        return new_means, new_cov, alpha

    # ------------------------------------------------------------------ neighbours
    def _n_neigh(self):
        m = self.n_neighbors
        return None if m is None or m >= self.n_components else int(m)

    @staticmethod
    def _kdtree_neighbors(Xp, means_p, m):
        _, idx = cKDTree(means_p).query(Xp, k=m, workers=-1)
        return np.ascontiguousarray(idx.reshape(Xp.shape[0], m), dtype=np.int64)

    # ------------------------------------------------------------------ fit
    def _single_run(
        self, X, a, rng, n_chunks, start=None, method=None, learn=None, max_iter=None,
        want_mass=False,
    ):  # fmt: skip
        """One fit from ``self``'s initialisation, or from ``start = (means, cov, alpha)``
        with ``method`` / ``learn`` (weight learning) / ``max_iter`` overriding the
        estimator's. ``want_mass``: also return the component masses of the final
        responsibilities (``"mass"``)."""
        N, D = X.shape
        K = self.n_components
        means, cov, alpha = self._initialize(X, a, rng) if start is None else start
        method = self.method if method is None else method
        m = self._n_neigh()
        M = K if m is None else m
        A = np.empty((N, M))
        sinkhorn = method == "sinkhorn"
        table = (np.empty((N, M)), np.empty(N)) if sinkhorn else None
        lse = np.empty(N)
        idx = None
        if m is not None:
            grid = neighbor_search(self._pos(X), K, m)
            idx = grid.neighbors(self._pos(means), n_chunks)
        g = np.log(alpha)
        tol_final = float(np.clip(_ESTEP_TOL_FACTOR * self.tol, _ESTEP_TOL_MIN, _ESTEP_TOL_MAX))
        fast = sinkhorn and self._fast_start()
        # Hessian subsampling and Newton system carried over from the previous E-step
        carry = {"hess_stride": None, "system": None, "find_blocks": False}
        if fast:
            carry["hess_budget"] = _FAST_HESS_PER_ENTRY * N * M
        tol_used = [tol_final]

        # fast_start with diagonal statistics: the E-step's last pass also accumulates
        # the M-step's (see _EStep.newton)
        fuse = fast and self.covariance_type != "full" and D <= _k.MSTEP_LANES
        n_max = self.max_iter if max_iter is None else max_iter

        # whether the next E-step forms a fresh Newton system (see e_step)
        stale = [False]

        def e_step(means, cov, alpha, g, idx, tol_e=tol_final, last=False):
            prec, log_det = self._precisions(cov, D)
            self._log_prob(X, means, prec, log_det, idx, A)
            es = _EStep(
                A, idx, a, alpha, n_chunks=n_chunks, lse=lse, table=table,
                tau=self.marginal_penalty,
                fuse=(X, means) if fuse and not last else None, **carry,
            )  # fmt: skip
            tol_used[0] = tol_e
            if tol_e > tol_final:
                # a loose E-step: a pass that also formed the M-step's statistics ends it
                # when within _FAST_FUSE_SLACK of the tolerance (see _FAST_FUSE_SLACK)
                es.fuse_slack = _FAST_FUSE_SLACK
                # ... and its M-step skips the weights whose total is provably far below
                # the E-step's own marginal error (see _LOOSE_CUT)
                es.mstep_cut = max(_k.MSTEP_CUT, _LOOSE_CUT * tol_e / N)
            if sinkhorn:
                g0 = es.normalise(np.where(np.isfinite(g), g, 0.0))
                if stale[0]:
                    # the E-step after the cold one: the carried Newton system was
                    # formed at the initial means, which the first M-step moved far
                    # (from random means, by about the spread of the data); a chord step
                    # with it barely contracts and the next pass forms a Hessian anyway.
                    # Its first pass forms a fresh one instead (measured at N = 2e5,
                    # K = 100, D = 6, m = 16 from random means: 6-8 passes, 3-4 with a
                    # Hessian, instead of 7-9 with 2-5; E-step CPU -12% over a
                    # 5-iteration fit; see docs/method.md, "Fifth pass")
                    es.system = None
                    stale[0] = False
                    # ... and it starts from g = log alpha (the EM posteriors), not from
                    # the cold E-step's potential: that one balanced the random initial
                    # means, and once the first M-step has moved them to where the mass
                    # is it is far off (measured on the benchmark's data, seed 0:
                    # marginal error 0.05 instead of 0.66 at the first pass; 2 passes
                    # with 1 Hessian instead of 6 with 3 from random points, 6 with 2
                    # instead of 12 with 7 on the 100 clusters; see docs/method.md,
                    # "Sixth pass")
                    g0 = es.normalise(np.log(alpha))
                if fast and carry["system"] is None:
                    # cold E-step (no Newton system yet): a few log-domain Sinkhorn
                    # scaling passes first, each a plain pass (a Newton pass from
                    # g = log alpha forms a Hessian, ~10 plain passes when the
                    # responsibilities are spread)
                    for _ in range(_FAST_SCALING_PASSES):
                        col, _, _ = es.pass_(g0)
                        g0 = es._coordinate_step(g0, col)
                    stale[0] = True
                g, col, wlse, err, _, _, _ = es.solve(g0, tol_e, _ESTEP_MAX_ITER)
                es.last = (g, col, wlse)
                # once an E-step of this fit found unlinked blocks, later ones look for
                # them from the start
                carry.update(
                    hess_stride=es.hess_stride,
                    system=es.system,
                    rate=es.rate,
                    find_blocks=carry["find_blocks"] or es.block is not None,
                )
                obj = es.objective(g, wlse)
            else:
                g = np.log(alpha)
                g, col, wlse, err, _, _ = es.fixed(g)
                obj = float(wlse)
            return es, g, col, obj, err, prec

        def loose_tol(change):
            # inexact E-steps while the objective still moves a lot: an E-step solved to
            # a marginal error e is off in the objective by about e^2 K / 2 (see
            # _ESTEP_TOL_MIN), kept below _FAST_OBJ_FRACTION of the last change
            if change is None:
                return _FAST_TOL_MAX
            if abs(change) < self.tol:
                # about to converge: the change that decides it is measured exactly
                return tol_final
            e = np.sqrt(2.0 * _FAST_OBJ_FRACTION * abs(change) / K)
            if self.tol > 0:
                # and at most 10 tol: a marginal error e moves the M-step's parameters by
                # O(e) and the objective by about e / 10 per iteration (measured), so a
                # looser E-step keeps the changes above tol for many iterations (10
                # instead of 3 to tol = 1e-6 with e = 1.4e-4)
                e = min(e, _FAST_TOL_PER_OUTER * self.tol)
            return float(np.clip(e, tol_final, _FAST_TOL_MAX))

        es, g, col, obj, err, prec = e_step(
            means, cov, alpha, g, idx, loose_tol(None) if fast else tol_final, last=n_max == 0
        )
        history = [obj]
        converged = False
        stopped = False
        n_iter = 0
        change = None
        for it in range(1, n_max + 1):
            means, cov, alpha = self._m_step(X, es, g, col, means, cov, alpha, n_chunks, learn)
            if m is not None:
                idx = grid.neighbors(self._pos(means), n_chunks)  # updated in place
            es, g, col, obj, err, prec = e_step(
                means, cov, alpha, g, idx, loose_tol(change) if fast else tol_final,
                last=it == n_max,
            )  # fmt: skip
            n_iter = it
            change = obj - history[-1]
            history.append(obj)
            if self.verbose:
                print(f"  iteration {it}: objective {obj:.10g} (change {change:.3g})")
            if self.callback is not None and self.callback(it, obj):
                stopped = True
                break
            # with inexact E-steps, convergence needs a change measured by exact ones
            if abs(change) < self.tol and tol_used[0] <= tol_final:
                converged = True
                break
        if fast and tol_used[0] > tol_final:
            # the fit ended on an inexact E-step (max_iter, callback): finish it, so that
            # the returned potential, labels and objective are those of the exact E-step
            # (from the state of its last pass: no pass repeated)
            g0, col0, wlse0 = es.last
            g, col, wlse, err, _, _, _ = es.solve(g0, tol_final, _ESTEP_MAX_ITER, at=(col0, wlse0))
            history[-1] = es.objective(g, wlse)
        labels = self._labels_from(es, g)
        mass = None
        if want_mass:
            cols = np.broadcast_to(np.arange(es.A.shape[1]), es.A.shape) if es.dense else es.idx
            mass = np.bincount(
                cols.ravel().astype(np.int64),
                weights=(es.responsibilities(g) * es.a[:, None]).ravel(),
                minlength=K,
            )
        return {
            "means": means,
            "cov": cov,
            "alpha": alpha,
            "g": g,
            "prec": prec,
            "objective": history[-1],
            "history": history,
            "n_iter": n_iter,
            "converged": converged,
            "stopped": stopped,
            "marginal_error": err,
            "labels": labels,
            "mass": mass,
        }

    def _estimate_run(self, X, a, rng, n_chunks):
        """``weights="estimate"``: Sinkhorn-EM with uniform weights, then EM learning them.

        1. Sinkhorn-EM with uniform weights from the initialisation: every component must
           hold 1/K of the mass, which spreads the components over the data (EM from a
           random start keeps several components in one cluster and leaves others empty).
        2. EM with learned weights from that fit, the weights starting at the mean
           responsibilities of its last E-step: the returned model is a fixed point of
           classic EM (weights = mean responsibilities), so its likelihood is directly
           comparable with EM's and ``weights_`` are maximum-likelihood weights.

        Chosen by measurement (benchmarks/study_weights_estimate.py, docs/method.md): a
        variant with rounds in which components that share a cluster each claim its whole
        mass (the pipeline's nucleus weights without reference nuclei) was 10x slower and
        no better on clusters whose masses spread 10x.
        """
        res = self._single_run(
            X, a, rng, n_chunks, method="sinkhorn", learn=False, want_mass=True
        )  # fmt: skip
        n_iter = res["n_iter"]
        if not res["stopped"]:
            w = res["mass"] + 10 * np.finfo(float).eps
            start = (res["means"], res["cov"], w / w.sum())
            res = self._single_run(X, a, rng, n_chunks, start, method="em", learn=True)
            n_iter += res["n_iter"]
            if not res["stopped"] and self._use_split_merge():
                res, n_sm = self._split_merge(X, a, rng, n_chunks, res)
                n_iter += n_sm
        res["n_iter"] = n_iter
        return res

    def _split_merge(self, X, a, rng, n_chunks, res):
        """Split-and-merge moves after the EM phase of ``weights="estimate"``.

        Each round ranks the moves (merge the two components whose responsibilities
        overlap most, split the one a local two-component fit explains best; see
        mixture/_splitmerge.py) on a subsample, refits EM with learned weights from the
        moved parameters for the ``_SM_TRIES`` best ones in turn and keeps the first whose
        log-likelihood exceeds the current one by more than ``tol``; the rounds stop when
        none does (or after ``K`` accepted moves). Returns the best fit and the number of
        EM iterations run, rejected refits included.
        """
        N, D = X.shape
        K = self.n_components
        ct = self.covariance_type
        if N > _sm.SUBSAMPLE:
            sub = np.sort(rng.choice(N, size=_sm.SUBSAMPLE, replace=False, p=a))
            Xs, as_ = np.ascontiguousarray(X[sub]), np.full(sub.size, 1.0 / sub.size)
        else:
            Xs, as_ = X, a
        floor = np.diag(np.broadcast_to(np.asarray(self.reg_covar, dtype=np.float64), (D,)))
        floor = floor + np.eye(D) * 1e-12 * max(float(np.abs(np.diag(floor)).max()), 1.0)
        margin = max(float(self.tol), 1e-9)
        n_iter = 0
        for _ in range(K):
            prec, log_det = self._precisions(res["cov"], D)
            logp = self._log_prob(Xs, res["means"], prec, log_det, None, np.empty((Xs.shape[0], K)))
            moves = _sm.candidate_moves(
                Xs, as_, res["means"], res["cov"], res["alpha"], logp, ct, floor, _SM_TRIES
            )
            accepted = False
            for move in moves:
                start = _sm.apply_move(move, res["means"], res["cov"], res["alpha"], ct)
                try:
                    # a short trial first (EM's likelihood only grows: a trial above the
                    # current fit stays above it), the accepted one then to convergence
                    new = self._single_run(
                        X, a, rng, n_chunks, start, method="em", learn=True,
                        max_iter=min(self.max_iter, _SM_TRIAL_ITER),
                    )  # fmt: skip
                    n_iter += new["n_iter"]
                    if new["stopped"]:
                        return new, n_iter
                    if not new["objective"] > res["objective"] + margin:
                        continue
                    if not new["converged"]:
                        start = (new["means"], new["cov"], new["alpha"])
                        new = self._single_run(
                            X, a, rng, n_chunks, start, method="em", learn=True,
                            max_iter=self.max_iter - _SM_TRIAL_ITER,
                        )  # fmt: skip
                        n_iter += new["n_iter"]
                except ValueError:  # a half collapsed: not a move worth taking
                    continue
                res = new
                accepted = True
                if new["stopped"]:
                    return new, n_iter
                break
            if not accepted:
                break
        return res, n_iter

    @staticmethod
    def _labels_from(es, g):
        labels = np.empty(es.A.shape[0], dtype=np.int64)
        _k.most_responsible(*es.rows(), g, labels, es.n_chunks)
        return labels

    def fit(self, X, y=None, sample_weight=None):
        """Fit the mixture.

        Parameters
        ----------
        X : array_like of shape (N, D)
        y : ignored
        sample_weight : array_like of shape (N,), optional
            Non-negative point masses (e.g. voxel intensities), normalised internally.

        Returns
        -------
        self
        """
        X = _validate_X(X)
        N, D = X.shape
        self._check_params(D)
        K = self.n_components
        a = _as_sample_weight(sample_weight, N)
        n_mass = int(np.count_nonzero(a))
        if n_mass < K:
            raise ValueError(
                f"n_components={K} is larger than the number of points with positive mass "
                f"({n_mass})"
            )
        estimate = isinstance(self.weights, str) and self.weights == "estimate"
        if self.weights is None or estimate:
            self._alpha0 = np.full(K, 1.0 / K)
        else:
            self._alpha0 = _as_weights(self.weights, K)
        rng = (
            self.random_state
            if isinstance(self.random_state, np.random.Generator)
            else np.random.default_rng(self.random_state)
        )
        best = None
        m = self._n_neigh()
        with _k.threads_for(N * (K if m is None else m)):
            n_chunks = _k.n_chunks_for(N)
            for run in range(self.n_init):
                if self.verbose:
                    print(f"Initialisation {run}")
                if estimate:
                    res = self._estimate_run(X, a, rng, n_chunks)
                else:
                    res = self._single_run(X, a, rng, n_chunks)
                    if not res["stopped"] and self._use_split_merge():
                        res, n_sm = self._split_merge(X, a, rng, n_chunks, res)
                        res["n_iter"] += n_sm
                if best is None or res["objective"] > best["objective"]:
                    best = res
                if res["stopped"]:
                    break
        self.means_ = best["means"]
        self.covariances_ = best["cov"]
        self.weights_ = best["alpha"]
        self.potential_ = best["g"]
        self.precisions_cholesky_ = best["prec"]
        self._log_det = self._precisions(best["cov"], D)[1]
        self.objective_ = best["objective"]
        self.lower_bound_ = best["objective"]
        self.objective_history_ = list(best["history"])
        self.n_iter_ = best["n_iter"]
        self.converged_ = best["converged"]
        self.stopped_ = best["stopped"]
        self.marginal_error_ = best["marginal_error"]
        self.n_features_in_ = D
        self._fit_labels = best["labels"]
        if not self.converged_ and not self.stopped_ and self.max_iter > 0:
            warnings.warn(
                f"Best of {self.n_init} initialisation(s) did not converge within "
                f"max_iter={self.max_iter} iterations (tol={self.tol}); try a larger "
                "max_iter or tol, or another initialisation",
                ConvergenceWarning,
                stacklevel=2,
            )
        return self

    def fit_predict(self, X, y=None, sample_weight=None):
        """Fit and return the label of every point from the final E-step."""
        self.fit(X, sample_weight=sample_weight)
        return self._fit_labels.copy()

    # ------------------------------------------------------------------ inference
    def _check_fitted(self, X):
        if not hasattr(self, "means_"):
            raise ValueError("this SinkhornEM instance is not fitted yet; call fit first")
        X = _validate_X(X)
        if X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {X.shape[1]} features, but the model was fitted with {self.n_features_in_}"
            )
        return X

    def _dense_log_prob(self, X):
        out = np.empty((X.shape[0], self.n_components))
        return self._log_prob(X, self.means_, self.precisions_cholesky_, self._log_det, None, out)

    def _chunks(self, N):
        for s in range(0, N, _PREDICT_CHUNK):
            yield slice(s, min(N, s + _PREDICT_CHUNK))

    def _estimate_log_prob(self, X):
        """Log-densities log p_k(x) of every point under every component, shape (N, K)."""
        X = self._check_fitted(X)
        return self._dense_log_prob(X)

    def predict_proba(self, X):
        """Dense responsibilities ``softmax_k(log p_k(x) + potential_k)``, shape (N, K).

        For the training data this is the coupling of the final E-step (its rows divided
        by the point masses); for new data it uses the fitted potential.
        """
        X = self._check_fitted(X)
        out = np.empty((X.shape[0], self.n_components))
        with _k.threads_for(out.size):
            for sl in self._chunks(X.shape[0]):
                A = self._dense_log_prob(X[sl]) + self.potential_
                A -= A.max(axis=1, keepdims=True)
                np.exp(A, out=A)
                A /= A.sum(axis=1, keepdims=True)
                out[sl] = A
        return out

    def predict_proba_sparse(self, X, n_neighbors=None):
        """Responsibilities restricted to each point's nearest component means.

        Parameters
        ----------
        X : array_like of shape (N, D)
        n_neighbors : int, optional
            Number m of components per point; default the fitted ``n_neighbors`` (all
            K if that is None). Nearest by Euclidean distance over the position features.

        Returns
        -------
        indices : ndarray of int64, shape (N, m)
            Component indices, nearest mean first.
        resp : ndarray of shape (N, m)
            Responsibilities ``softmax_j(log p_{k_j}(x) + potential_{k_j})``; rows sum to 1.
        """
        X = self._check_fitted(X)
        K = self.n_components
        m = n_neighbors if n_neighbors is not None else self.n_neighbors
        if m is None:
            m = K
        if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
            raise ValueError(f"n_neighbors must be a positive integer, got {m!r}")
        m = min(int(m), K)
        idx = self._kdtree_neighbors(self._pos(X), self._pos(self.means_), m)
        A = np.empty((X.shape[0], m))
        with _k.threads_for(A.size):
            self._log_prob(X, self.means_, self.precisions_cholesky_, self._log_det, idx, A)
        A += self.potential_[idx]
        A -= A.max(axis=1, keepdims=True)
        np.exp(A, out=A)
        A /= A.sum(axis=1, keepdims=True)
        return idx, A

    def predict(self, X):
        """Index of the most responsible component for every point."""
        X = self._check_fitted(X)
        out = np.empty(X.shape[0], dtype=np.int64)
        with _k.threads_for(X.shape[0] * self.n_components):
            for sl in self._chunks(X.shape[0]):
                out[sl] = np.argmax(self._dense_log_prob(X[sl]) + self.potential_, axis=1)
        return out

    def score_samples(self, X):
        """Mixture log-density ``log sum_k weights_k p_k(x)`` of every point, shape (N,)."""
        X = self._check_fitted(X)
        out = np.empty(X.shape[0])
        lw = np.log(self.weights_)
        with _k.threads_for(X.shape[0] * self.n_components):
            for sl in self._chunks(X.shape[0]):
                A = self._dense_log_prob(X[sl])
                _k.row_logsumexp(A, _DUMMY_IDX, True, lw, out[sl], _k.n_chunks_for(A.shape[0]))
        return out

    def score(self, X, y=None, sample_weight=None):
        """Sample-weighted mean of :meth:`score_samples`."""
        s = self.score_samples(X)
        a = _as_sample_weight(sample_weight, s.shape[0])
        return float(np.dot(a, s))
