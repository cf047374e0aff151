"""Contrast-relative foreground: each nucleus at its own brightness.

One global threshold (Otsu) of an image whose nuclei differ 5-10x in brightness (depth
attenuation, interior cells of an embryo, weak expression) keeps the bright nuclei and
drops the dim ones. Here every detected nucleus gets its own level: the voxels within
``reach`` radii of a peak whose signal is at least ``fraction`` of that peak's smoothed
intensity (half maximum by default: for a blurred ball the half-maximum contour is its
edge). The union with the global foreground keeps everything the global threshold found.

Used by :func:`~napari_sinkhorn_em.segment_nuclei` in the local mode
(``nucleus_diameter="auto"`` or ``local_contrast=True``).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

__all__ = ["component_cap", "local_foreground"]


def local_foreground(
    signal: np.ndarray,
    voxel_size,
    centres_vox: np.ndarray,
    radii_um: np.ndarray,
    levels: np.ndarray,
    *,
    fraction: float = 0.5,
    reach: float = 1.25,
) -> np.ndarray:
    """Voxels that belong to a detected nucleus by its own brightness.

    Parameters
    ----------
    signal : numpy.ndarray
        Background-subtracted intensity (spatial shape).
    voxel_size : sequence of float
        Voxel size in micrometres.
    centres_vox : numpy.ndarray, shape (K, ndim)
        Detected nucleus centres (voxel coordinates).
    radii_um : numpy.ndarray, shape (K,)
        Radius of each nucleus (micrometres), e.g. from its LoG scale.
    levels : numpy.ndarray, shape (K,)
        Intensity of each nucleus (e.g. the smoothed signal at its peak).
    fraction : float
        Voxels at or above ``fraction * level`` of their nucleus are foreground.
    reach : float
        Only voxels within ``reach`` radii of a centre are considered; each goes with the
        nucleus it is closest to relative to the nucleus radius.

    Returns
    -------
    numpy.ndarray of bool
    """
    sig = np.asarray(signal)
    vs = np.asarray(voxel_size, dtype=np.float64)
    out = np.zeros(sig.shape, dtype=bool)
    K = centres_vox.shape[0]
    if K == 0:
        return out
    levels = np.maximum(np.asarray(levels, dtype=np.float64), 0.0)
    lo = fraction * float(levels[levels > 0].min()) if np.any(levels > 0) else 0.0
    radii = np.maximum(np.asarray(radii_um, dtype=np.float64), 1e-6)
    # candidate voxels: bright enough for the dimmest nucleus, inside the boxes of reach
    r_max = reach * radii.max()
    lo_b = np.maximum(np.floor(centres_vox.min(axis=0) - r_max / vs), 0).astype(int)
    hi_b = np.minimum(np.ceil(centres_vox.max(axis=0) + r_max / vs) + 1, sig.shape).astype(int)
    box = tuple(slice(a, b) for a, b in zip(lo_b, hi_b, strict=True))
    cand = np.argwhere(sig[box] >= lo) + lo_b
    if cand.size == 0:
        return out
    tree = cKDTree(centres_vox * vs)
    k = min(4, K)
    dist, idx = tree.query(cand * vs, k=k, distance_upper_bound=r_max, workers=-1)
    dist = dist.reshape(-1, k)
    idx = idx.reshape(-1, k)
    valid = idx < K
    rel = np.where(valid, dist / radii[np.minimum(idx, K - 1)], np.inf)
    j = np.argmin(rel, axis=1)
    best = idx[np.arange(idx.shape[0]), j]
    ok = rel[np.arange(idx.shape[0]), j] <= reach
    cand, best = cand[ok], best[ok]
    keep = sig[tuple(cand.T)] >= fraction * levels[best]
    out[tuple(cand[keep].T)] = True
    return out


def component_cap(foreground_volume_um3: float, diameter_um: float, ndim: int) -> int:
    """Most nuclei a foreground can hold: its volume over the volume of a nucleus of half
    the typical diameter (the smallest plausible one), at least 1.

    Parameters
    ----------
    foreground_volume_um3 : float
        Foreground volume (area in 2-D), micrometres^ndim.
    diameter_um : float
        Typical nucleus diameter.
    ndim : int
        Spatial dimensions.
    """
    r = 0.25 * diameter_um
    v = (4.0 / 3.0) * np.pi * r**3 if ndim == 3 else np.pi * r**2
    return max(1, int(foreground_volume_um3 / v))
