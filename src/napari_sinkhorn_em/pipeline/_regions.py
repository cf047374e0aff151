"""Boxes around the foreground: image-sized work only where there is something.

A worm fills a fraction of its field, and a stack may hold several worms or a curled
one. Filters (LoG peaks) and connected-component labelling then only need the parts of
the image near the foreground. :func:`foreground_boxes` cuts the foreground's bounding
box at empty slabs (along any axis) until no box has an empty slab of ``min_gap`` voxels
inside, so that the boxes' total volume follows the foreground rather than its overall
extent (10 heads side by side: 1 box of 10x the volume of one head's box without the
cut, 10 boxes of 1x with it).
"""

from __future__ import annotations

import numpy as np


def _first_gap(occupied: np.ndarray, min_gap: int) -> int | None:
    """Index in the middle of the first run of ``min_gap`` or more False values, or None."""
    empty = ~occupied
    if not empty.any():
        return None
    # run boundaries of the empty stretches
    padded = np.concatenate(([False], empty, [False]))
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    starts, ends = edges[::2], edges[1::2]
    long = np.flatnonzero(ends - starts >= min_gap)
    if long.size == 0:
        return None
    j = long[0]
    return int((starts[j] + ends[j]) // 2)


def foreground_boxes(
    indices: np.ndarray, shape, *, margin=0, min_gap=1, return_groups: bool = False
):
    """Boxes covering the voxels ``indices``, split at empty slabs of ``min_gap`` voxels.

    Parameters
    ----------
    indices : (N, ndim) integer array
        Voxel indices of the foreground (N >= 1).
    shape : sequence of int
        Image shape (boxes are clipped to it).
    margin : int or sequence of int
        Voxels added on every side of each box (after splitting; clipped to the image).
    min_gap : int or sequence of int
        A box is split where its voxels leave ``min_gap`` or more consecutive slabs
        empty along an axis (per axis if a sequence). With ``min_gap >= 2 * margin + 1``
        the margins of two boxes never reach each other's voxels.
    return_groups : bool
        Also return, for each box, the rows of ``indices`` it was made from.

    Returns
    -------
    boxes : list of tuple of slice
        One box per group, in a deterministic order; every voxel lies in exactly one
        box's core (before the margin).
    groups : list of ndarray
        Only with ``return_groups``: the rows of ``indices`` of each box.
    """
    idx = np.asarray(indices)
    ndim = idx.shape[1]
    shape = np.asarray(shape, dtype=np.int64)
    margin = np.broadcast_to(np.asarray(margin, dtype=np.int64), (ndim,))
    min_gap = np.broadcast_to(np.maximum(np.asarray(min_gap, dtype=np.int64), 1), (ndim,))
    boxes, groups = [], []
    stack = [np.arange(idx.shape[0])]
    while stack:
        sel = stack.pop()
        sub = idx[sel]
        lo = sub.min(axis=0)
        hi = sub.max(axis=0) + 1
        for ax in range(ndim):
            occupied = np.zeros(int(hi[ax] - lo[ax]), dtype=bool)
            occupied[sub[:, ax] - lo[ax]] = True
            cut = _first_gap(occupied, int(min_gap[ax]))
            if cut is not None:
                below = sub[:, ax] - lo[ax] < cut
                # the upper part is pushed first so the lower part is processed first
                stack.append(sel[~below])
                stack.append(sel[below])
                break
        else:
            a = np.maximum(lo - margin, 0)
            b = np.minimum(hi + margin, shape)
            boxes.append(tuple(slice(int(u), int(v)) for u, v in zip(a, b, strict=True)))
            groups.append(sel)
    return (boxes, groups) if return_groups else boxes
