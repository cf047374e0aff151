"""napari writers: Labels layer -> calibrated TIFF, Points layer -> per-nucleus CSV table.

Both are npe2 single-layer writers ``writer(path, data, attributes) -> [path]``. The voxel
size written into the TIFF is the layer's ``scale`` (micrometres), so the file opens in
Fiji/ImageJ and napari with the right calibration. This module imports neither napari nor
Qt.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from napari_sinkhorn_em.io import write_labels, write_table

__all__ = ["points_table", "write_labels_tiff", "write_points_csv"]

_COORD_NAMES = {1: ("x",), 2: ("y", "x"), 3: ("z", "y", "x")}


def _spatial_scale(attributes: Mapping[str, Any], ndim: int) -> tuple[float, ...] | None:
    scale = attributes.get("scale")
    if scale is None:
        return None
    scale = tuple(float(s) for s in scale)
    if len(scale) != ndim:
        raise ValueError(f"layer scale {scale} does not match its {ndim}-D data")
    return scale


def write_labels_tiff(
    path: str | os.PathLike, data: Any, attributes: Mapping[str, Any]
) -> list[str]:
    """Write a Labels layer as a TIFF whose voxel size is the layer's scale.

    Parameters
    ----------
    path : str or os.PathLike
        Destination ``.tif``/``.tiff`` file.
    data : array-like or list of arrays
        Label data (the full-resolution level is used for multiscale layers).
    attributes : mapping
        Layer attributes from napari; ``scale`` is read (micrometres per voxel).

    Returns
    -------
    list of str
        The written path.

    Raises
    ------
    ValueError
        If the labels are not 2-D/3-D non-negative integers, or the scale is not positive.
    """
    if isinstance(data, list | tuple):  # multiscale: keep the full resolution level
        data = data[0]
    labels = np.asarray(data)
    scale = _spatial_scale(attributes, labels.ndim)
    out = write_labels(path, labels, scale)
    return [str(out)]


def points_table(
    data: Any,
    attributes: Mapping[str, Any],
) -> pd.DataFrame:
    """Build the per-nucleus table of a Points layer.

    The layer's ``features`` (for result layers of the widget: the segmentation table)
    are kept, and the coordinate columns are refreshed from the current point positions
    so that moved points are exported where they are: ``z, y, x`` in voxel (data)
    coordinates and ``z_um, y_um, x_um`` = voxel coordinates times the layer scale.

    Parameters
    ----------
    data : array-like, shape (n_points, ndim)
        Point coordinates in data (voxel) units.
    attributes : mapping
        Layer attributes; ``features`` and ``scale`` are used when present.

    Returns
    -------
    pandas.DataFrame
        One row per point.
    """
    coords = np.asarray(data, dtype=np.float64)
    if coords.ndim != 2:
        raise ValueError(f"points must be an (n, ndim) array, got shape {coords.shape}")
    ndim = coords.shape[1]
    names = _COORD_NAMES.get(ndim, tuple(f"axis{i}" for i in range(ndim)))
    scale = _spatial_scale(attributes, ndim) or (1.0,) * ndim
    features = attributes.get("features")
    if features is None or len(features) != len(coords):
        table = pd.DataFrame(index=range(len(coords)))
    else:
        table = pd.DataFrame(features).reset_index(drop=True).copy()
    for i, name in enumerate(names):
        table[name] = coords[:, i]
        table[f"{name}_um"] = coords[:, i] * scale[i]
    if "label" not in table.columns:
        table.insert(0, "label", np.arange(1, len(coords) + 1))
    first = ["label", *names, *(f"{n}_um" for n in names)]
    return table[first + [c for c in table.columns if c not in first]]


def write_points_csv(
    path: str | os.PathLike, data: Any, attributes: Mapping[str, Any]
) -> list[str]:
    """Write a Points layer (e.g. the nucleus centres) with its features as CSV.

    Parameters
    ----------
    path : str or os.PathLike
        Destination ``.csv`` file.
    data : array-like, shape (n_points, ndim)
        Point coordinates in data (voxel) units.
    attributes : mapping
        Layer attributes from napari (``features``, ``scale``).

    Returns
    -------
    list of str
        The written path.
    """
    table = points_table(data, attributes)
    return [str(write_table(path, table))]
