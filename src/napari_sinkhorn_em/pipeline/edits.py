"""Carry hand-painted label edits over to a re-fitted label image (pure NumPy).

Used by the napari widget's *Refine*: the user paints or erases voxels in the labels of a
fit, moves the centre points, and re-fits; :func:`merge_label_edits` puts the painted
voxels back on top of the new labels, renumbered to the refit's labels.
"""

from __future__ import annotations

import numpy as np

__all__ = ["merge_label_edits"]


def merge_label_edits(new: np.ndarray, current: np.ndarray, edits: np.ndarray) -> np.ndarray:
    """Carry the user's painted label edits over to a re-fitted label image.

    Voxels outside ``edits`` take the new labels. Edited voxels keep the user's value:
    erased voxels stay background, and voxels painted with label ``p`` get the new label
    that overlaps most with the unedited part of ``p`` in ``current`` (so a nucleus that
    was extended by painting stays one nucleus), or a fresh label number when ``p`` has no
    unedited voxels left (a nucleus painted from scratch).

    Parameters
    ----------
    new : numpy.ndarray
        Label image of the re-fit.
    current : numpy.ndarray
        The labels as the user left them (same shape).
    edits : numpy.ndarray of bool
        Voxels the user changed.

    Returns
    -------
    numpy.ndarray
        The merged labels (dtype widened if fresh labels need it).

    Raises
    ------
    ValueError
        If the three arrays do not have the same shape.
    """
    new = np.asarray(new)
    current = np.asarray(current)
    edits = np.asarray(edits, dtype=bool)
    if not new.shape == current.shape == edits.shape:
        raise ValueError(
            "merge_label_edits: new labels, current labels and the edit mask must have the "
            f"same shape, got {new.shape}, {current.shape} and {edits.shape}"
        )
    merged = np.array(new, copy=True)
    if not edits.any():
        return merged
    painted = current[edits]
    next_label = int(merged.max()) + 1
    mapping: dict[int, int] = {}
    for p in np.unique(painted):
        p = int(p)
        if p == 0:
            mapping[p] = 0
            continue
        unedited = (current == p) & ~edits
        under = new[unedited]
        under = under[under > 0]
        if under.size:
            ids, counts = np.unique(under, return_counts=True)
            mapping[p] = int(ids[np.argmax(counts)])
        else:
            mapping[p] = next_label
            next_label += 1
    if merged.dtype.kind in "ui" and next_label - 1 > np.iinfo(merged.dtype).max:
        merged = merged.astype(np.uint32)
    keys = np.fromiter(mapping.keys(), dtype=np.int64)
    vals = np.fromiter(mapping.values(), dtype=np.int64)
    idx = np.searchsorted(keys, painted.astype(np.int64))
    merged[edits] = vals[idx].astype(merged.dtype)
    return merged
