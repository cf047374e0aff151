"""Classical baseline: LoG peaks + marker-controlled watershed (scikit-image).

Used by ``benchmarks/bench_segmentation.py`` as the non-mixture reference. It shares the
preprocessing and the peak detector with :func:`~napari_sinkhorn_em.segment_nuclei`, so
the comparison isolates the clustering step.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from ..pipeline.peaks import detect_peaks, log_scales
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
    threshold_sd: float | None = None,
    centres: str = "regions",
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
    threshold_sd : float, optional
        Keep the peaks whose LoG response exceeds this many robust standard deviations
        (1.4826 x the median absolute deviation) of the response over the background
        (the voxels outside the foreground), as well as the default relative threshold
        (a tenth of the response's 99th percentile in the foreground). None = the
        relative threshold alone. A user tunes this number by eye; the benchmarks
        tune it on the truth to give the baseline its best showing.
    centres : {"regions", "peaks"}
        The centre of a nucleus: the intensity centroid of its watershed region, or
        the LoG peak itself (better where the foreground is mostly noise, as on dim
        whole-brain stacks: the regions then spread far beyond the nuclei).

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
    if centres not in ("regions", "peaks"):
        raise ValueError(f"centres must be 'regions' or 'peaks', got {centres!r}")
    vs = np.asarray(pre.voxel_size)
    if min_distance is None:
        min_distance = 0.5 * nucleus_diameter
    threshold = None
    if threshold_sd is not None:
        threshold = _noise_threshold(pre, vs, nucleus_diameter, float(threshold_sd))
    pk = detect_peaks(
        pre.signal,
        vs,
        nucleus_diameter=nucleus_diameter,
        foreground=pre.foreground,
        min_distance=min_distance,
        scale_factor=1.0,
        threshold=threshold,
    )
    coords = pk.coords if n_nuclei is None else pk.coords[: int(n_nuclei)]
    markers = np.zeros(pre.signal.shape, dtype=np.int32)
    idx = np.round(coords).astype(np.int64)
    markers[tuple(idx.T)] = np.arange(1, idx.shape[0] + 1)
    smooth = ndi.gaussian_filter(pre.signal, sigma=0.15 * nucleus_diameter / vs)
    labels = watershed(-smooth, markers=markers, mask=pre.foreground)
    n = idx.shape[0]
    if n and centres == "regions":
        # centre = intensity centroid of each watershed region (marker if the region is empty)
        com = np.asarray(ndi.center_of_mass(pre.signal, labels, np.arange(1, n + 1)))
        ok = np.all(np.isfinite(com), axis=1)
        centre_coords = np.where(ok[:, None], com, coords)
    else:
        centre_coords = coords
    return labels.astype(np.uint32), np.asarray(centre_coords, dtype=np.float64)


def _noise_threshold(pre, vs, nucleus_diameter: float, k: float) -> float:
    """``k`` robust standard deviations of the LoG response (the peak detector's scale)
    over the background voxels, and at least the detector's relative threshold."""
    sig = np.asarray(pre.signal, dtype=np.float32)
    s = log_scales(nucleus_diameter, sig.ndim, 1, 1.0)[0]
    r = -(s**2) * ndi.gaussian_laplace(sig, s / vs, mode="nearest")
    fg = np.asarray(pre.foreground, dtype=bool)
    bg = r[~fg] if np.count_nonzero(~fg) > 100 else r.ravel()
    med = float(np.median(bg))
    sd = 1.4826 * float(np.median(np.abs(bg - med)))
    ref = float(np.percentile(r[fg], 99.0)) if fg.any() else 0.0
    return max(med + k * sd, 0.1 * max(ref, 0.0))
