"""Clean label shapes: each label one compact, smooth object.

The mixture assigns voxels one by one, so on noisy data a label's outline follows the
voxel noise: isolated voxels, one-voxel hairs along the boundary, pinholes. For each
label (in its bounding box, so the cost follows the labelled volume):

1. a binary opening with the face-connected cross (radius one voxel) along the axes on
   which the object is at least 5 voxels thick (a 2 um nucleus sampled at 2 um in z
   spans 1-2 planes: no opening along z), which removes hairs and speckle;
2. the largest face-connected piece;
3. holes filled plane by plane (every z-plane for 3-D) and then in 3-D.

A label that the opening would erase keeps its original largest piece. Voxels freed by
the opening become background; holes are only filled with voxels that were background or
the label itself (never taking a neighbour's voxels).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["clean_labels", "fill_holes"]


def _largest_piece(mask: np.ndarray) -> np.ndarray:
    lab, n = ndi.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(lab.ravel())[1:]
    return lab == (int(np.argmax(sizes)) + 1)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Holes filled plane by plane (3-D: every z-plane), then in all dimensions."""
    out = mask.copy()
    if mask.ndim == 3:
        for z in range(mask.shape[0]):
            if out[z].any():
                out[z] = ndi.binary_fill_holes(out[z])
    return ndi.binary_fill_holes(out)


def clean_labels(labels: np.ndarray, min_thickness: int = 5) -> np.ndarray:
    """Open, keep the largest piece and fill holes of every label (in place).

    Parameters
    ----------
    labels : numpy.ndarray
        Integer label image (0 = background); modified in place and returned.
    min_thickness : int
        An axis is opened only where the object spans at least this many voxels.

    Returns
    -------
    numpy.ndarray
        ``labels``; label values are unchanged (a label never disappears).
    """
    boxes = ndi.find_objects(labels)
    nd = labels.ndim
    for i, box in enumerate(boxes):
        if box is None:
            continue
        v = i + 1
        # one voxel of margin so that the opening and hole filling see the outside
        lo = [max(0, s.start - 1) for s in box]
        hi = [min(n, s.stop + 1) for s, n in zip(box, labels.shape, strict=True)]
        bb = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        sub = labels[bb]
        mask = sub == v
        ext = np.array([s.stop - s.start for s in box])
        axes = ext >= min_thickness
        new = mask
        if axes.any():
            st = np.zeros((3,) * nd, dtype=bool)
            c = (1,) * nd
            st[c] = True
            for d in np.flatnonzero(axes):
                idx = list(c)
                for o in (0, 2):
                    idx[d] = o
                    st[tuple(idx)] = True
            opened = ndi.binary_opening(mask, structure=st)
            if opened.any():
                new = opened
        new = _largest_piece(new)
        new = fill_holes(new) & ((sub == 0) | mask)
        sub[mask & ~new] = 0
        sub[new] = v
    return labels
