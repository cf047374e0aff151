"""The m nearest component means of every point, refreshed every Sinkhorn-EM iteration.

Two exact searches share one interface (``neighbors(means_p, n_chunks)`` returning the
(N, m) index array, updated in place): a uniform grid over the points for position
features of up to 3 dimensions (images: :class:`_NeighborGrid`) and a brute-force scan
for more (:class:`_BruteNeighbors`). Both keep a per-point budget, so that a point whose
m nearest means cannot have changed since its last search is skipped.
"""

from __future__ import annotations

import numpy as np

from . import _kernels as _k

# Neighbour grid: about this many points per cell, at most this many cells per component,
# blocks of this many cells per axis. Finer cells leave fewer uncertain candidates per
# point (those within a cell diagonal of the centre's m-th nearest-mean distance) but
# cost more per-cell work; blocks keep the per-cell work to a block's candidates.
_GRID_POINTS_PER_CELL = 16
_GRID_CELLS_PER_COMPONENT = 256
_GRID_BLOCK = 4
# Above this many position dimensions the brute-force scan replaces the grid: a grid of
# N / 16 cells has only (N / 16)^(1/d) cells per axis (5 at N = 2e5, d = 6), so a cell
# is as wide as the spacing of the means, nearly every mean is a candidate of every cell
# and the grid pays the brute-force cost plus its own (measured at N = 2e5, K = 100,
# d = 6 on a loaded machine, first refresh: grid 0.99-1.03 s, scan 0.73-0.79 s on uniform
# points; later refreshes of a fit, which rank the previous list first, cost about half).
_GRID_MAX_DIMS = 3
# Brute-force scan: means that moved more than _MOVER_FACTOR times the median move since
# the last refresh (at most _MAX_MOVERS of them) are measured directly by the points that
# keep their lists (see _BruteNeighbors).
_MOVER_FACTOR = 4.0
_MAX_MOVERS = 16


def neighbor_search(Xp, K, m):
    """The exact m-nearest-means search suited to the points ``Xp`` of shape (N, d)."""
    if Xp.shape[1] <= _GRID_MAX_DIMS:
        return _NeighborGrid(Xp, K, m)
    return _BruteNeighbors(Xp, K, m)


class _BruteNeighbors:
    """Exact m nearest means by scanning all K means (:func:`_kernels.brute_neighbors`).

    Points whose list provably still holds (per-point bounds, per-component moves; see
    the kernel) are not scanned. The means that moved more than ``_MOVER_FACTOR`` times
    the median move (at most ``_MAX_MOVERS``) are measured directly by such points
    instead of lowering every bound by their move.
    """

    def __init__(self, Xp, K, m):
        N = Xp.shape[0]
        self.Xp = Xp
        self.m = m
        self.idx = np.empty((N, m), dtype=np.min_scalar_type(K - 1))
        self.upper = np.full(N, np.inf)
        self.lower = np.full(N, -np.inf)
        self.last = None

    @property
    def budget(self):
        """Half the gap between a point's bounds: how far every mean may still move."""
        return 0.5 * (self.lower - self.upper)

    def neighbors(self, means_p, n_chunks):
        K = means_p.shape[0]
        have_old = self.last is not None
        step = np.zeros(K)
        movers = np.empty(0, dtype=np.int64)
        rest = 0.0
        if have_old:
            # (1 + 1e-9): the rounding of the distances and moves
            step = np.sqrt(((means_p - self.last) ** 2).sum(axis=1)) * (1 + 1e-9)
            order = np.argsort(-step, kind="stable")
            n_far = int(np.count_nonzero(step > _MOVER_FACTOR * np.median(step)))
            movers = order[: min(n_far, _MAX_MOVERS, K - 1)].astype(np.int64)
            rest = float(step[order[movers.size]])
        self.last = means_p.copy()
        d = means_p.shape[1]
        # up to 8 features: zero-padded to 8 rows for the written-out distances of
        # _kernels._sq_dists8
        means_t = np.zeros((8, K)) if d <= 8 else np.empty((d, K))
        means_t[:d] = means_p.T
        is_mover = np.zeros(K, dtype=np.bool_)
        is_mover[movers] = True
        _k.brute_neighbors(
            self.Xp, means_t, self.idx, self.upper, self.lower, step, movers, is_mover, rest,
            have_old, n_chunks,
        )  # fmt: skip
        return self.idx


class _NeighborGrid:
    """Exact m nearest component means of every point, through a uniform grid.

    The grid covers the bounding box of the points with cells of about
    ``_GRID_POINTS_PER_CELL`` points on average (at most ``_GRID_CELLS_PER_COMPONENT``
    per component); the cell of every point is found once per fit. A refresh lists, for
    the occupied cells, the means that can be among the m + 1 nearest of one of its
    points (:func:`_kernels.cell_candidates`; first for blocks of ``_GRID_BLOCK`` cells
    per axis among all K means, then for the cells among their block's candidates), and
    each point then ranks only the candidates that its distance to the cell centre leaves
    uncertain (:func:`_kernels.grid_neighbors`): O(blocks K + cells c + N u) for c
    candidates per cell and u uncertain ones per point, instead of O(N K). A point whose
    m nearest cannot have changed since its last search (the means moved by less than
    half its gap between the m-th and (m + 1)-th nearest distance) keeps them, and cells
    without such a point are skipped: late iterations, whose means barely move, search
    few points.
    """

    def __init__(self, Xp, K, m):
        N, d = Xp.shape
        self.Xp = Xp
        self.m = m
        self.lo = Xp.min(axis=0)
        ext = Xp.max(axis=0) - self.lo
        n_cells = max(1, min(N // _GRID_POINTS_PER_CELL, _GRID_CELLS_PER_COMPONENT * K))
        # cubic cells over the axes that are longer than a cell; one layer across the rest
        shape = np.ones(d, dtype=np.int64)
        live = ext > 0
        # the grid only needs the ratios of the extents: an extent product that under- or
        # overflows (coordinates of 1e-200 or 1e100) is formed from rescaled extents
        unit = 1.0
        if not 0.0 < np.prod(ext[ext > 0]) < np.inf:
            unit = float(ext.max())
        while live.any():
            side = (np.prod(ext[live] / unit) / n_cells) ** (1.0 / np.count_nonzero(live)) * unit
            thin = live & (ext < side)
            if not thin.any():
                shape[live] = np.ceil(ext[live] / side).astype(np.int64)
                break
            live &= ~thin
        self.size = ext / shape
        inv_size = np.divide(shape, ext, out=np.zeros(d), where=ext > 0)
        cell = np.empty(N, dtype=np.int64)
        _k.grid_cells(Xp, self.lo, inv_size, shape, cell)
        cells, slot = np.unique(cell, return_inverse=True)
        self.slot = slot.astype(np.int32)
        self.centres = _k.cell_centres(cells, self.lo, self.size, shape)
        bshape = (shape + _GRID_BLOCK - 1) // _GRID_BLOCK
        pos = np.unravel_index(cells, shape)
        block = np.ravel_multi_index(tuple(p // _GRID_BLOCK for p in pos), bshape)
        blocks, self.block_of = np.unique(block, return_inverse=True)
        self.bsize = self.size * _GRID_BLOCK
        self.bcentres = _k.cell_centres(blocks, self.lo, self.bsize, bshape)
        self.all_k = np.arange(K, dtype=np.int32)
        # the smallest index type for K: every E-step pass streams the indices
        self.idx = np.empty((N, m), dtype=np.min_scalar_type(K - 1))
        self.budget = np.full(N, -np.inf)
        self.last = None  # means of the previous refresh

    def neighbors(self, means_p, n_chunks):
        """Refresh and return the (N, m) indices of the m nearest means of every point."""
        K, m = means_p.shape[0], self.m
        moved = 0.0
        if self.last is not None:
            moved = float(np.sqrt(((means_p - self.last) ** 2).sum(axis=1)).max()) * (1 + 1e-9)
        self.last = means_p.copy()
        todo = np.flatnonzero(_k.spend_budget(self.budget, moved, self.slot, len(self.centres)))
        if todo.size == 0:
            return self.idx
        bsel, bpos = np.unique(self.block_of[todo], return_inverse=True)
        whole = (self.all_k, np.array([0, K]), np.zeros(bsel.size, dtype=np.int64))
        blists = _k.cell_candidates(self.bcentres[bsel], self.bsize, means_p, m, *whole)
        centres = self.centres[todo]
        lists = _k.cell_candidates(centres, self.size, means_p, m, blists[1], blists[0], bpos)
        pos = np.full(len(self.centres), -1, dtype=np.int64)
        pos[todo] = np.arange(todo.size)
        _k.grid_neighbors(
            self.Xp, self.slot, pos, centres, *lists, means_p, self.idx, self.budget, n_chunks
        )
        return self.idx
