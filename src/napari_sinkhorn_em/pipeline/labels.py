"""Label image from the per-voxel component assignments of the fit.

Each foreground voxel takes its component if it lies within a Mahalanobis radius of it
(position block); each component keeps its largest connected piece; pieces smaller than a
fraction of a nominal nucleus are removed; labels are renumbered 1..K'.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._regions import foreground_boxes

__all__ = [
    "NucleusLabels",
    "label_dtype",
    "labels_from_components",
    "mahalanobis_position",
    "min_label_volume",
]


@dataclass
class NucleusLabels:
    """Result of :func:`labels_from_components`.

    Attributes
    ----------
    labels : numpy.ndarray
        Label image (0 = background, then 1..K' consecutive), uint16 when it fits.
    component_ids : numpy.ndarray of int
        For each label value ``l``, the component ``component_ids[l - 1]``.
    """

    labels: np.ndarray
    component_ids: np.ndarray


def label_dtype(n: int) -> type:
    """uint16 for up to 65535 labels, else uint32."""
    return np.uint16 if n <= np.iinfo(np.uint16).max else np.uint32


def min_label_volume(nucleus_diameter: float, ndim: int, min_size: float) -> float:
    """Smallest label kept: ``min_size`` x the volume (3-D, um^3) or area (2-D, um^2) of a
    ball of the nucleus diameter."""
    if ndim == 3:
        return min_size * (np.pi / 6.0) * nucleus_diameter**3
    return min_size * (np.pi / 4.0) * nucleus_diameter**2


def mahalanobis_position(
    positions: np.ndarray, components: np.ndarray, means: np.ndarray, covariances: np.ndarray
) -> np.ndarray:
    """Squared Mahalanobis distance of each point to its component (position block).

    Parameters
    ----------
    positions : numpy.ndarray, shape (N, ndim)
        Positions (um).
    components : numpy.ndarray of int, shape (N,)
    means : numpy.ndarray, shape (K, D)
    covariances : numpy.ndarray, shape (K, D, D)
        The first ``ndim`` rows / columns are the position block.
    """
    n_pos = positions.shape[1]
    prec = np.linalg.inv(covariances[:, :n_pos, :n_pos])
    d = positions - means[components, :n_pos]
    return np.einsum("ni,nij,nj->n", d, prec[components], d)


def labels_from_components(
    indices: np.ndarray,
    positions: np.ndarray,
    components: np.ndarray,
    means: np.ndarray,
    covariances: np.ndarray,
    shape: tuple[int, ...],
    voxel_size,
    *,
    radius: float,
    min_volume: float,
) -> NucleusLabels:
    """Label image from per-voxel component assignments.

    Parameters
    ----------
    indices : numpy.ndarray of int, shape (N, ndim)
        Voxel indices of the foreground voxels.
    positions : numpy.ndarray, shape (N, ndim)
        Their positions (um).
    components : numpy.ndarray of int, shape (N,)
        Component of each voxel.
    means, covariances : numpy.ndarray
        Of the components (position block first, um).
    shape : tuple of int
        Spatial shape of the image.
    voxel_size : sequence of float
        Voxel size (um).
    radius : float
        Mahalanobis radius (position block); farther voxels stay background.
    min_volume : float
        Smallest piece kept (um^3 in 3-D, um^2 in 2-D), e.g. :func:`min_label_volume`.

    Returns
    -------
    NucleusLabels
    """
    K = means.shape[0]
    comp = components
    d2 = mahalanobis_position(positions, comp, means, covariances)
    keep = d2 <= radius**2
    # connected pieces of equal value, labelled in boxes around the kept voxels (cut at
    # empty slabs, across which nothing connects); keep the largest piece per component
    from skimage.measure import label as cc_label

    kept_idx = indices[keep]
    kept_val = comp[keep] + 1
    boxes, groups = (
        foreground_boxes(kept_idx, shape, min_gap=1, return_groups=True)
        if kept_idx.size
        else ([], [])
    )
    piece_of = np.zeros(kept_idx.shape[0], dtype=np.int64)
    owner_parts, size_parts = [np.zeros(1, dtype=np.int64)], [np.zeros(1, dtype=np.int64)]
    n_pieces = 0
    for box, sel in zip(boxes, groups, strict=True):
        lo = np.array([b.start for b in box])
        local = tuple((kept_idx[sel] - lo).T)
        lab = np.zeros(tuple(b.stop - b.start for b in box), dtype=np.int32)
        lab[local] = kept_val[sel]
        pieces = cc_label(lab, background=0, connectivity=1)
        p_sel = pieces[local].astype(np.int64)
        k = int(pieces.max())
        owner = np.zeros(k, dtype=np.int64)
        owner[p_sel - 1] = kept_val[sel]
        piece_of[sel] = p_sel + n_pieces
        owner_parts.append(owner)
        size_parts.append(np.bincount(p_sel, minlength=k + 1)[1:])
        n_pieces += k
    owner = np.concatenate(owner_parts)
    size = np.concatenate(size_parts)
    # largest piece per component; among equal sizes the one whose first voxel comes first
    # in raster order (so the result does not depend on how the boxes were cut)
    first = np.full(n_pieces + 1, np.iinfo(np.int64).max, dtype=np.int64)
    if kept_idx.size:
        np.minimum.at(first, piece_of, np.ravel_multi_index(tuple(kept_idx.T), shape))
    best_piece = np.zeros(K + 1, dtype=np.int64)
    best_size = np.zeros(K + 1, dtype=np.int64)
    # ascending size, then descending first voxel: later entries overwrite earlier ones
    order = np.lexsort((-first[1:], size[1:])) + 1
    best_piece[owner[order]] = order
    best_size[owner[order]] = size[order]
    min_vox = max(1, int(np.ceil(min_volume / float(np.prod(voxel_size)))))
    good = (best_size >= min_vox) & (np.arange(K + 1) > 0)
    comp_ids = np.flatnonzero(good) - 1
    new_value = np.zeros(n_pieces + 1, dtype=np.int64)
    new_value[best_piece[good]] = np.arange(1, comp_ids.size + 1)
    out = np.zeros(shape, dtype=label_dtype(comp_ids.size))
    if kept_idx.size:
        out[tuple(kept_idx.T)] = new_value[piece_of]
    return NucleusLabels(out, comp_ids)
