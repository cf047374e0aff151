"""Voxel features for mixture-model clustering.

Each foreground voxel becomes a point ``[position_um..., intensity_weight * channels...]``:
its physical position (voxel index times voxel size, micrometres) followed by its
normalised channel intensities scaled by ``intensity_weight`` (micrometres per normalised
intensity unit, so the two blocks are comparable). Its mass is its intensity (the mean of
the normalised channels) or uniform.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._validation import check_voxel_size

__all__ = ["VoxelFeatures", "voxel_features"]


@dataclass
class VoxelFeatures:
    """Features of the foreground voxels.

    Attributes
    ----------
    X : numpy.ndarray, shape (N, ndim + C)
        Position (micrometres) then weighted intensities.
    sample_weight : numpy.ndarray, shape (N,)
        Voxel masses, summing to 1.
    indices : numpy.ndarray, shape (N, ndim)
        Integer voxel coordinates of each point.
    n_spatial : int
        Number of position features (the first ``n_spatial`` columns of ``X``).
    intensity_weight : float
        Scale applied to the intensity block.
    """

    X: np.ndarray
    sample_weight: np.ndarray
    indices: np.ndarray
    n_spatial: int
    intensity_weight: float

    @property
    def n_points(self) -> int:
        """Number of voxels."""
        return int(self.X.shape[0])

    @property
    def positions(self) -> np.ndarray:
        """Position block of ``X`` (a view, micrometres)."""
        return self.X[:, : self.n_spatial]


def voxel_features(
    data: np.ndarray,
    foreground: np.ndarray,
    voxel_size,
    *,
    intensity_weight: float = 1.0,
    mass: str = "intensity",
    signal: np.ndarray | None = None,
    dtype=np.float64,
) -> VoxelFeatures:
    """Build the feature matrix, masses and voxel indices of the foreground voxels.

    Parameters
    ----------
    data : numpy.ndarray
        Normalised intensities ``(*spatial, C)``.
    foreground : numpy.ndarray of bool
        Spatial mask of the voxels to use.
    voxel_size : sequence of float
        Spatial voxel size (micrometres).
    intensity_weight : float
        Scale of the intensity features; 0 keeps only positions (the intensity columns
        are then omitted).
    mass : {"intensity", "uniform"}
        Voxel mass: the voxel's mean normalised intensity, or equal for all voxels.
    signal : numpy.ndarray, optional
        Precomputed mean of the channels (spatial shape), used for the intensity mass.
    dtype : numpy dtype
        Floating type of ``X``.

    Returns
    -------
    VoxelFeatures
    """
    fg = np.asarray(foreground, dtype=bool)
    spatial = data.shape[:-1]
    if fg.shape != spatial:
        raise ValueError(f"foreground shape {fg.shape} differs from the image's {spatial}")
    ndim = len(spatial)
    vs = np.asarray(check_voxel_size(voxel_size, ndim), dtype=np.float64)
    if not np.isfinite(intensity_weight) or intensity_weight < 0:
        raise ValueError(f"intensity_weight must be a finite number >= 0, got {intensity_weight}")
    if mass not in ("intensity", "uniform"):
        raise ValueError(f"mass must be 'intensity' or 'uniform', got {mass!r}")
    idx = np.argwhere(fg)
    n = idx.shape[0]
    if n == 0:
        raise ValueError("no foreground voxels to build features from")
    n_ch = data.shape[-1] if intensity_weight > 0 else 0
    X = np.empty((n, ndim + n_ch), dtype=dtype)
    X[:, :ndim] = idx * vs
    vals = data[fg]  # (N, C)
    if n_ch:
        X[:, ndim:] = vals * intensity_weight
    if mass == "intensity":
        w = (signal[fg] if signal is not None else vals.mean(axis=1)).astype(np.float64)
        w = np.maximum(w, 0.0)
        total = w.sum()
        if not total > 0:
            raise ValueError("foreground voxels have zero total intensity")
        w /= total
    else:
        w = np.full(n, 1.0 / n)
    return VoxelFeatures(X, w, idx, ndim, float(intensity_weight))
