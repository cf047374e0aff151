"""Fit the mixture: one block with weight re-estimation, several starts, or slabs.

:func:`fit_block` fits :class:`~napari_sinkhorn_em.mixture.SinkhornEM` on one block of
voxels, re-estimating the mixing weights around the fitted centres in an outer loop
(``weight_refits``); :func:`fit_mixture` runs it once (peak / array start), once per
drawn start (random / k-means++, the best kept) or once per slab
(:mod:`.tiling`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._validation import check_choice, check_int
from ..mixture import ConvergenceWarning, SinkhornEM
from ..params import METHODS
from .starts import Start, draw_start
from .tiling import merge_slabs, n_slabs, plan_slabs
from .weights import ReferenceNuclei, mixing_weights

__all__ = [
    "AUTO_REFITS",
    "METHODS",
    "REFIT_ITER",
    "BlockFit",
    "FitCancelled",
    "FitSettings",
    "MixtureFit",
    "fit_block",
    "fit_iteration_budget",
    "fit_mixture",
    "resolve_refits",
]

# weight_refits="auto" for Sinkhorn-EM from random / k-means++ starts: 19 re-estimations of
# the weights, each after at most REFIT_ITER iterations (docs/study_random_starts.md)
AUTO_REFITS = 19
REFIT_ITER = 10


class FitCancelled(Exception):
    """The iteration callback asked to stop (``SinkhornEM.stopped_``)."""


def resolve_refits(weight_refits: int | str, init: str, method: str) -> int:
    """Number of weight re-estimations.

    Parameters
    ----------
    weight_refits : int >= 0 or "auto"
        "auto" = :data:`AUTO_REFITS` for Sinkhorn-EM from a ``"random"`` or
        ``"k-means++"`` start, else 0.
    init : str
        ``"peaks"``, ``"k-means++"``, ``"random"`` or ``"array"``.
    method : str
    """
    if isinstance(weight_refits, str):
        check_choice("weight_refits", weight_refits, ("auto",))
        random_start = init in ("random", "k-means++")
        return AUTO_REFITS if (random_start and method == "sinkhorn") else 0
    return check_int("weight_refits", weight_refits, min=0)


def fit_iteration_budget(
    *,
    method: str = "sinkhorn",
    init: str = "peaks",
    max_iter: int = 100,
    n_init: int = 1,
    weight_refits: int | str = "auto",
) -> int:
    """Upper bound of the fit iterations :func:`~napari_sinkhorn_em.segment_nuclei`
    reports to ``progress``.

    Every weight re-estimation round runs at most ``min(max_iter, 10)`` iterations and the
    last fit at most ``max_iter``, once per start (random and k-means++ starts run
    ``n_init`` of them). A tiled fit (more than ``max_components_per_tile`` nuclei) runs
    this once per slab. Progress bars use it as their length.
    """
    init_name = init if isinstance(init, str) else "array"
    n_refits = resolve_refits(weight_refits, init_name, method)
    starts = int(n_init) if init_name in ("random", "k-means++") else 1
    return starts * (n_refits * min(int(max_iter), REFIT_ITER) + int(max_iter))


@dataclass(frozen=True)
class FitSettings:
    """Settings of every fit of a run (see :func:`~napari_sinkhorn_em.segment_nuclei`).

    Attributes
    ----------
    method : {"sinkhorn", "em", "em-learned"}
    weights : {"nuclei", "voronoi", "uniform"}
    n_refits : int
        Weight re-estimations before the last fit (each at most :data:`REFIT_ITER`
        iterations).
    covariance_bounds : (float, float)
        Position-covariance eigenvalue bounds (um^2).
    max_iter : int
    tol : float
    n_neighbors : int
    marginal_penalty : float or None
        Used by Sinkhorn-EM only.
    random_state : int
    position_dims : int
    """

    method: str
    weights: str
    n_refits: int
    covariance_bounds: tuple[float, float]
    max_iter: int
    tol: float
    n_neighbors: int
    marginal_penalty: float | None
    random_state: int
    position_dims: int


@dataclass
class BlockFit:
    """Result of :func:`fit_block`: the last model, each voxel's component and the
    weights it was fitted with (None = equal)."""

    model: SinkhornEM
    components: np.ndarray
    weights: np.ndarray | None


def fit_block(
    X: np.ndarray,
    sample_weight: np.ndarray,
    positions: np.ndarray,
    means: np.ndarray,
    covariances: np.ndarray,
    settings: FitSettings,
    *,
    reference: ReferenceNuclei | None = None,
    callback: Callable[[int, float], bool] | None = None,
) -> BlockFit:
    """Fit one block of voxels, re-estimating the weights ``settings.n_refits`` times.

    Each round sets the weights (:func:`~.weights.mixing_weights`) around the current
    means and fits warm-started for at most ``min(max_iter, REFIT_ITER)`` iterations; the
    last fit runs up to ``max_iter``.

    Parameters
    ----------
    X : numpy.ndarray, shape (N, D)
        Features of the block's voxels.
    sample_weight : numpy.ndarray, shape (N,)
    positions : numpy.ndarray, shape (N, ndim)
        Positions (um) of the block's voxels (``"voronoi"`` weights).
    means, covariances : numpy.ndarray
        Start, ``(K, D)`` and ``(K, D, D)``.
    settings : FitSettings
    reference : ReferenceNuclei, optional
        Required for ``settings.weights == "nuclei"``.
    callback : callable, optional
        ``callback(iteration, objective) -> bool`` for every iteration; True stops.

    Raises
    ------
    FitCancelled
        When ``callback`` returned True.
    """
    s = settings
    ndim = s.position_dims
    K = means.shape[0]
    n_fits = 1 + s.n_refits
    model = None
    alpha = None
    for fit_i in range(n_fits):
        if fit_i > 0:
            means = model.means_.copy()
            covariances = model.covariances_.copy()
        alpha = mixing_weights(s.weights, means[:, :ndim], positions, sample_weight, reference)
        model = SinkhornEM(
            K,
            method="em" if s.method.startswith("em") else "sinkhorn",
            weights=alpha,
            learn_weights=s.method == "em-learned",
            covariance_type="full",
            covariance_bounds=s.covariance_bounds,
            tol=s.tol,
            max_iter=s.max_iter if fit_i == n_fits - 1 else min(s.max_iter, REFIT_ITER),
            init=means,
            covariances_init=covariances,
            n_neighbors=min(int(s.n_neighbors), K),
            random_state=s.random_state,
            position_dims=ndim,
            callback=callback,
            marginal_penalty=s.marginal_penalty if s.method == "sinkhorn" else None,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            comp = model.fit_predict(X, sample_weight=sample_weight)
        if getattr(model, "stopped_", False):
            raise FitCancelled("fit stopped by the callback")
    return BlockFit(model, comp, alpha)


@dataclass
class MixtureFit:
    """Result of :func:`fit_mixture`.

    Attributes
    ----------
    model : SinkhornEM or list of SinkhornEM
        The fitted mixture, or the per-slab mixtures of a tiled fit.
    components : numpy.ndarray of int, shape (N,)
        Component of each voxel (index into ``means``).
    means, covariances : numpy.ndarray
        Of the (global) components.
    weights : numpy.ndarray or None
        Mixing weights of the last fit (a tiled fit: mass shares); None = equal.
    converged : bool
    n_iter : int
        Iterations of the kept fit (summed over slabs).
    objective : float
        Its objective (mean over slabs).
    n_tiles : int
    """

    model: Any
    components: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    weights: np.ndarray | None
    converged: bool
    n_iter: int
    objective: float
    n_tiles: int = 1


def _single(run: BlockFit) -> MixtureFit:
    m = run.model
    return MixtureFit(
        m, run.components, m.means_, m.covariances_, run.weights,
        m.converged_, m.n_iter_, m.objective_,
    )  # fmt: skip


def fit_mixture(
    X: np.ndarray,
    sample_weight: np.ndarray,
    positions: np.ndarray,
    start: Start | str,
    settings: FitSettings,
    *,
    n_components: int | None = None,
    n_init: int = 1,
    reference: ReferenceNuclei | None = None,
    max_components_per_tile: int = 200,
    tile_margin: float = 6.0,
    callback: Callable[[int, float], bool] | None = None,
) -> MixtureFit:
    """Fit the mixture from a start.

    Parameters
    ----------
    X, sample_weight, positions : numpy.ndarray
        Voxel features, masses and positions (um).
    start : Start or {"k-means++", "random"}
        A built start (peaks or array), or the name of a start the estimator draws:
        then ``n_init`` starts are drawn (from ``settings.random_state``) and fitted, and
        the best by the method's objective is kept.
    settings : FitSettings
    n_components : int
        Needed with a drawn start.
    n_init : int
        Drawn starts.
    reference : ReferenceNuclei, optional
        For ``weights="nuclei"``.
    max_components_per_tile : int
        A built start with more components is fitted in slabs (:mod:`.tiling`).
    tile_margin : float
        Slab margin (um).
    callback : callable, optional
        Iteration callback (see :func:`fit_block`).

    Raises
    ------
    FitCancelled
        When ``callback`` returned True.
    """
    fit_kw = {"reference": reference, "callback": callback}
    X_a_pos = (X, sample_weight, positions)
    if isinstance(start, str):
        rng = np.random.default_rng(settings.random_state)
        best = None
        for _ in range(int(n_init)):
            s0 = draw_start(
                X, sample_weight, n_components, start,
                covariance_bounds=settings.covariance_bounds,
                n_neighbors=settings.n_neighbors,
                position_dims=settings.position_dims, rng=rng,
            )  # fmt: skip
            run = fit_block(*X_a_pos, s0.means, s0.covariances, settings, **fit_kw)
            if best is None or run.model.objective_ > best.model.objective_:
                best = run
        return _single(best)
    K = start.means.shape[0]
    n = n_slabs(K, max_components_per_tile)
    if n == 1:
        return _single(fit_block(*X_a_pos, start.means, start.covariances, settings, **fit_kw))
    slabs = plan_slabs(positions, start.means, n, tile_margin)
    models, comps = [], []
    for slab in slabs:
        v, c = slab.voxels, slab.components
        ab = sample_weight[v] / sample_weight[v].sum()
        run = fit_block(
            X[v], ab, positions[v], start.means[c], start.covariances[c], settings, **fit_kw
        )
        models.append(run.model)
        comps.append(run.components)
    merged = merge_slabs(slabs, models, comps, positions, sample_weight)
    return MixtureFit(
        models, merged.components, merged.means, merged.covariances, merged.weights,
        all(m.converged_ for m in models), sum(m.n_iter_ for m in models),
        float(np.mean([m.objective_ for m in models])), n,
    )  # fmt: skip
