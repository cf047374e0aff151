"""Slabs for fits with many components: plan, then merge the per-slab fits.

With more components than ``max_components_per_tile`` the foreground is cut into slabs
along its longest axis, each with about that many components and a margin; each nucleus
is owned by the slab whose core holds its fitted centre. This keeps the fit time linear in
the number of nuclei (the E-step's Newton solve is cubic in K).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

__all__ = ["MergedSlabs", "Slab", "merge_slabs", "n_slabs", "plan_slabs"]


def n_slabs(n_components: int, max_components_per_tile: int) -> int:
    """Number of slabs: 1 up to ``max_components_per_tile`` components, else
    ``ceil(K / max_components_per_tile)``."""
    if max_components_per_tile >= n_components:
        return 1
    return int(np.ceil(n_components / max_components_per_tile))


@dataclass
class Slab:
    """One slab of a tiled fit.

    Attributes
    ----------
    axis : int
        Axis (of the positions) the slabs are cut along.
    lo, hi : float
        Core of the slab along ``axis`` (um); the outer slabs extend to infinity.
    components : numpy.ndarray of int
        Start components whose centre lies in the core plus the margin.
    voxels : numpy.ndarray of int
        Voxels in the Voronoi cells (by start centre) of those components.
    """

    axis: int
    lo: float
    hi: float
    components: np.ndarray
    voxels: np.ndarray


def plan_slabs(positions: np.ndarray, start_means: np.ndarray, n: int, margin: float) -> list[Slab]:
    """Cut the foreground into ``n`` slabs along its longest axis.

    The cuts split the start centres into groups of equal size; each slab fits the
    components within ``margin`` (um) of its core, on the voxels of their Voronoi cells,
    so no nucleus at the slab's edge is cut by a plane (measured: 274 instead of 286
    iterations over the 10 slabs of a 10x stack).

    Parameters
    ----------
    positions : numpy.ndarray, shape (N, ndim)
        Voxel positions (um).
    start_means : numpy.ndarray, shape (K, D)
        Start means (position block first).
    n : int
        Number of slabs.
    margin : float
        Margin (um), e.g. two nucleus diameters.

    Returns
    -------
    list of Slab
    """
    ndim = positions.shape[1]
    ext = positions.max(axis=0) - positions.min(axis=0)
    ax = int(np.argmax(ext))
    c_ax = start_means[:, ax]
    order = np.sort(c_ax)
    K = start_means.shape[0]
    split = [round(j * K / n) for j in range(1, n)]
    cuts = [0.5 * (order[j - 1] + order[j]) for j in split]
    bounds = [-np.inf, *cuts, np.inf]
    near = cKDTree(start_means[:, :ndim]).query(positions, k=1)[1]
    slabs = []
    for t_i in range(n):
        lo, hi = bounds[t_i], bounds[t_i + 1]
        csel = np.flatnonzero((c_ax >= lo - margin) & (c_ax < hi + margin))
        member = np.zeros(K, dtype=bool)
        member[csel] = True
        slabs.append(Slab(ax, lo, hi, csel, np.flatnonzero(member[near])))
    return slabs


@dataclass
class MergedSlabs:
    """Global components from per-slab fits (:func:`merge_slabs`).

    Attributes
    ----------
    components : numpy.ndarray of int, shape (N,)
        Global component of each voxel.
    means, covariances : numpy.ndarray
        Of the global components.
    weights : numpy.ndarray
        Mass share of each global component.
    """

    components: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    weights: np.ndarray


def merge_slabs(
    slabs: list[Slab],
    models: list,
    slab_components: list[np.ndarray],
    positions: np.ndarray,
    sample_weight: np.ndarray,
) -> MergedSlabs:
    """Merge per-slab fits into global components.

    A global component is a slab component whose fitted centre lies in its slab's core;
    a component centred outside its core maps to the nearest owned one. Each voxel takes
    the global component of its assignment in the slab whose core holds it.

    Parameters
    ----------
    slabs : list of Slab
    models : list of fitted SinkhornEM
        One per slab (``means_``, ``covariances_``).
    slab_components : list of numpy.ndarray
        Per slab, the component (slab index) of each of its voxels.
    positions : numpy.ndarray, shape (N, ndim)
    sample_weight : numpy.ndarray, shape (N,)
    """
    ndim = positions.shape[1]
    g_means, g_covs, owner = [], [], []
    for slab, m_b in zip(slabs, models, strict=True):
        core = (m_b.means_[:, slab.axis] >= slab.lo) & (m_b.means_[:, slab.axis] < slab.hi)
        own = np.full(core.size, -1, dtype=np.int64)
        own[core] = np.arange(core.sum()) + sum(len(x) for x in g_means)
        owner.append(own)
        g_means.append(m_b.means_[core])
        g_covs.append(m_b.covariances_[core])
    all_means = np.concatenate(g_means)
    all_covs = np.concatenate(g_covs)
    tree = cKDTree(all_means[:, :ndim])
    for own, m_b in zip(owner, models, strict=True):
        miss = own < 0
        if miss.any():
            own[miss] = tree.query(m_b.means_[miss, :ndim], k=1)[1]
    comp = np.full(positions.shape[0], -1, dtype=np.int64)
    for slab, own, comp_b in zip(slabs, owner, slab_components, strict=True):
        vsel = slab.voxels
        in_core = (positions[vsel, slab.axis] >= slab.lo) & (positions[vsel, slab.axis] < slab.hi)
        comp[vsel[in_core]] = own[comp_b[in_core]]
    # a voxel in one slab's core whose nearest start centre lies beyond the margin of
    # another slab's core was fitted by that other slab only: it keeps that assignment
    # (left at -1 it broke the mass count: real targettrack frame, 680 components)
    for slab, own, comp_b in zip(slabs, owner, slab_components, strict=True):
        left = comp[slab.voxels] < 0
        comp[slab.voxels[left]] = own[comp_b[left]]
    mass = np.bincount(comp, weights=sample_weight, minlength=all_means.shape[0])
    return MergedSlabs(comp, all_means, all_covs, mass / mass.sum())
