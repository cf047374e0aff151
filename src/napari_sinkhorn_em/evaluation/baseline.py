"""Classical baseline: LoG peaks + marker-controlled watershed (scikit-image).

Used by ``benchmarks/bench_segmentation.py`` as the non-mixture reference. It shares the
preprocessing and the peak detector with :func:`~napari_sinkhorn_em.segment_nuclei`, so
the comparison isolates the clustering step.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ..pipeline.peaks import detect_peaks
from ..pipeline.preprocess import preprocess

__all__ = ["log_watershed"]


def log_watershed(
    image,
    *,
    voxel_size=None,
    channel_axis=None,
    nucleus_diameter: float = 3.0,
    n_nuclei: int | None = None,
    foreground_threshold: float | None = None,
    min_distance: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Segment nuclei by LoG peak detection and a watershed of the smoothed intensity.

    Parameters
    ----------
    image : numpy.ndarray
        2-D/3-D image with an optional channel axis.
    voxel_size : sequence of float, optional
        Spatial voxel size in micrometres.
    channel_axis : int, optional
        Channel axis of ``image``.
    nucleus_diameter : float
        Typical nucleus diameter (micrometres).
    n_nuclei : int, optional
        Keep the ``n_nuclei`` strongest peaks (all peaks when None).
    foreground_threshold : float, optional
        Foreground threshold (normalised units); None = automatic.
    min_distance : float, optional
        Minimum peak distance in micrometres (default ``0.5 * nucleus_diameter``, the
        usual choice for a plain LoG detector).

    Returns
    -------
    labels : numpy.ndarray
        Label image (uint32), one label per marker, restricted to the foreground.
    centres : numpy.ndarray
        ``(K, ndim)`` intensity centroids of the regions in voxel coordinates (row ``i``
        is label ``i + 1``).
    """
    from skimage.segmentation import watershed

    pre = preprocess(
        image,
        voxel_size=voxel_size,
        channel_axis=channel_axis,
        nucleus_diameter=nucleus_diameter,
        foreground_threshold=foreground_threshold,
    )
    vs = np.asarray(pre.voxel_size)
    if min_distance is None:
        min_distance = 0.5 * nucleus_diameter
    pk = detect_peaks(
        pre.signal,
        vs,
        nucleus_diameter=nucleus_diameter,
        foreground=pre.foreground,
        min_distance=min_distance,
        scale_factor=1.0,
    )
    coords = pk.coords if n_nuclei is None else pk.coords[: int(n_nuclei)]
    markers = np.zeros(pre.signal.shape, dtype=np.int32)
    idx = np.round(coords).astype(np.int64)
    markers[tuple(idx.T)] = np.arange(1, idx.shape[0] + 1)
    smooth = ndi.gaussian_filter(pre.signal, sigma=0.15 * nucleus_diameter / vs)
    labels = watershed(-smooth, markers=markers, mask=pre.foreground)
    n = idx.shape[0]
    if n:
        # centre = intensity centroid of each watershed region (marker if the region is empty)
        com = np.asarray(ndi.center_of_mass(pre.signal, labels, np.arange(1, n + 1)))
        ok = np.all(np.isfinite(com), axis=1)
        centres = np.where(ok[:, None], com, coords)
    else:
        centres = coords
    return labels.astype(np.uint32), np.asarray(centres, dtype=np.float64)
