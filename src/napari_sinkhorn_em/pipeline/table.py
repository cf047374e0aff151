"""Per-nucleus table: centres, physical coordinates, volume and mean raw intensities."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

__all__ = ["NucleusTable", "channels_last", "nucleus_table"]


@dataclass
class NucleusTable:
    """Result of :func:`nucleus_table`.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per label (see :class:`~napari_sinkhorn_em.SegmentationResult`).
    centres : numpy.ndarray, shape (K, ndim)
        Voxel coordinates of the centres, in table order.
    """

    table: pd.DataFrame
    centres: np.ndarray


def channels_last(image, channel_axis: int | None) -> np.ndarray:
    """The raw image with its channels on the last axis (a length-1 axis for a single
    channel); a view, no copy."""
    raw = np.asarray(image)
    return raw[..., None] if channel_axis is None else np.moveaxis(raw, channel_axis, -1)


def nucleus_table(
    labels: np.ndarray,
    component_ids: np.ndarray,
    component_centres: np.ndarray,
    raw: np.ndarray,
    voxel_size,
    channel_names,
) -> NucleusTable:
    """Per-nucleus table.

    Centres are the fitted means, snapped to the nearest voxel (um) of their label when
    they fall outside it.

    Parameters
    ----------
    labels : numpy.ndarray of int
        Label image, values 1..K consecutive.
    component_ids : numpy.ndarray of int, shape (K,)
        Component of each label.
    component_centres : numpy.ndarray, shape (n_components, ndim)
        Component centres in voxel coordinates.
    raw : numpy.ndarray
        Raw image, channels last (:func:`channels_last`).
    voxel_size : sequence of float
        Voxel size (um).
    channel_names : sequence of str
        One per channel: the ``mean_<name>`` columns.

    Returns
    -------
    NucleusTable
    """
    vs = np.asarray(voxel_size, dtype=np.float64)
    ndim = labels.ndim
    n = component_ids.size
    idx = np.arange(1, n + 1)
    centres = component_centres[component_ids].copy() if n else np.zeros((0, ndim))
    mask = labels > 0
    lab_vals = labels[mask].astype(np.intp)
    counts = np.bincount(lab_vals, minlength=n + 1)[1:]
    if n:
        rounded = np.clip(np.round(centres).astype(np.int64), 0, np.array(labels.shape) - 1)
        inside = labels[tuple(rounded.T)] == idx
        if not inside.all():
            boxes = ndi.find_objects(labels)
            for j in np.flatnonzero(~inside):
                box = boxes[j]
                offset = np.array([sl.start for sl in box])
                vox = np.argwhere(labels[box] == idx[j]) + offset
                dd = (((vox - centres[j]) * vs) ** 2).sum(axis=1)
                centres[j] = vox[np.argmin(dd)]
    cols: dict[str, Any] = {"label": idx.astype(np.int64)}
    axes = ("z", "y", "x")[-ndim:]
    for i, ax in enumerate(axes):
        cols[ax] = centres[:, i]
    for i, ax in enumerate(axes):
        cols[f"{ax}_um"] = centres[:, i] * vs[i]
    cols["volume_um3"] = counts * float(np.prod(vs))
    for c, name in enumerate(channel_names):
        vals = raw[..., c][mask].astype(np.float64)
        sums = np.bincount(lab_vals, weights=vals, minlength=n + 1)[1:]
        cols[f"mean_{name}"] = sums / np.maximum(counts, 1)
    return NucleusTable(pd.DataFrame(cols), centres)
