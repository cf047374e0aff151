"""The local (scale- and contrast-adaptive) mode of :func:`~napari_sinkhorn_em.segment_nuclei`.

On by default (``nucleus_diameter="auto"``). The steps that differ from the fixed-scale
pipeline, each in one function called from ``segment.py``:

* :func:`search_mask` -- where peaks are looked for: the global foreground plus every
  voxel above the noise level (median + 4 MAD), so that nuclei far dimmer than the
  global (Otsu) level are not excluded before detection;
* peak detection at each nucleus' own scale with local-contrast acceptance
  (:func:`~napari_sinkhorn_em.pipeline.peaks.detect_nuclei` with ``local=True``), then,
  when one scale fits the detected sizes, the fixed-scale pipeline's small-scale pass in
  the global foreground for nuclei pressed against others;
* :func:`refine` -- per-nucleus foreground (on the signal smoothed by one voxel) added
  to the global one: each resolved nucleus' extent half-way between its local background
  and its bulk, in its own watershed territory
  (:func:`~napari_sinkhorn_em.pipeline.contrast.nucleus_extents`), the half maximum for
  the others (:func:`~napari_sinkhorn_em.pipeline.contrast.local_foreground`); the
  per-nucleus diameters, and the cap of the component count by the foreground volume;
* :func:`covariance_model` -- covariance bounds from the spread of the detected sizes
  and the quantisation variance ``step^2 / 12`` of each axis added to every covariance
  (a nucleus sampled by one or two z-planes has no z-scatter of its own: without it the
  fit collapses onto the planes and crawls to ``max_iter``);
* :func:`clean` -- one compact, smooth object per label (:mod:`.cleanup`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .cleanup import clean_labels
from .contrast import (
    component_cap,
    foreground_is_mostly_nuclei,
    local_foreground,
    near_mask,
    nucleus_extents,
    voxel_noise,
)
from .peaks import Peaks, detect_nuclei
from .preprocess import auto_threshold
from .scale import diameter_from_blobs

__all__ = [
    "cap_count",
    "clean",
    "convergence_notes",
    "covariance_model",
    "detect",
    "diagnostics",
    "refine",
    "search_mask",
]


def search_mask(pre) -> np.ndarray:
    """Global foreground plus every voxel above the noise level of the signal: the lower
    of the whole image's median + 4 MAD and :func:`_difference_noise_level`."""
    noise_thr = min(auto_threshold(pre.signal, "noise"), _difference_noise_level(pre.signal))
    return pre.foreground | (pre.signal > noise_thr)


def _difference_noise_level(signal: np.ndarray) -> float:
    """The background (25th percentile) plus 4 voxel-noise standard deviations, the noise
    from the differences of neighbouring voxels along the last axis, which are blind to
    smooth signal. Where nuclei cover a fifth of the image the whole image's MAD measures
    the nuclei, not the noise (real 2-D DSB image: median + 4 MAD = 0.27 above Otsu's
    0.17, and the dim nuclei between the two were never searched)."""
    s = np.asarray(signal)
    rows = s.reshape(-1, s.shape[-1])[:: max(1, s.size // 1_000_000)]
    return float(np.percentile(rows, 25)) + 4.0 * voxel_noise(s)


def _peak_diameters(peaks: Peaks, diameter: float, ndim: int) -> np.ndarray:
    """Each peak's diameter: the typical diameter times its scale relative to the
    pass' centre scale (0.8 of the ball optimum for primary peaks, 0.6 for the
    small-scale pass)."""
    factor = np.where(peaks.secondary, 0.6, 0.8)
    centre = factor * 0.5 * diameter / np.sqrt(ndim)
    return diameter * peaks.sigma_um / centre


def refine(pre, peaks: Peaks, vs, diameter: float, notes: list) -> tuple[Peaks, dict]:
    """Add the per-nucleus foreground to ``pre.foreground`` (in place), cap the peaks by
    the foreground volume and return them with diagnostics.

    Parameters
    ----------
    pre : Preprocessed
        Its ``foreground`` is extended in place.
    peaks : Peaks
        Detected nuclei (local mode).
    vs : numpy.ndarray
        Voxel size (um).
    diameter : float
        Typical nucleus diameter (um).
    notes : list of str
        Messages for ``info["warnings"]`` are appended.

    Returns
    -------
    peaks : Peaks
        The first ``cap`` peaks when there were more.
    info : dict
        ``d_small_um``, ``d_large_um`` (10th / 90th percentile of the per-peak diameters,
        clipped to 0.5-2x the typical one), ``n_foreground_global`` (voxels above the
        global threshold), ``n_foreground_local`` (voxels of the per-nucleus foregrounds),
        ``n_foreground`` (the union used), ``component_cap``.
    """
    ndim = len(vs)
    d_i = np.clip(_peak_diameters(peaks, diameter, ndim), 0.5 * diameter, 2.0 * diameter)
    n_global = int(pre.foreground.sum())
    n_local = 0
    if len(peaks):
        # the level test on the signal smoothed by one voxel: voxel noise inside a
        # nucleus (photon speckle) otherwise punches its dim voxels out and the label
        # keeps the bright core (QCANet 8-cell AP50 0.23 -> 0.45; embryo 370 0.97 -> 0.95)
        smooth = ndi.gaussian_filter(pre.signal, 1.0, mode="nearest")
        # each resolved nucleus' extent: half-way between its local background and its
        # bulk, in its own watershed territory (a textured nucleus with a dim rim gets the
        # rim: QCANet 8-cell AP50 0.45 -> 1.00); territories reach 1.75 radii of at least
        # the typical diameter (the LoG scale of a textured nucleus is its bright core's)
        ext, levels = nucleus_extents(smooth, vs, peaks.coords, 0.5 * np.maximum(d_i, diameter))
        # the others (blur-dominated, or not separable from a brighter neighbour by a
        # level) keep their half maximum
        rest = np.isnan(levels)
        loc = ext > 0
        if rest.any():
            loc |= local_foreground(
                smooth, vs, peaks.coords[rest], 0.5 * d_i[rest], peaks.intensity[rest]
            )
        del smooth, ext
        # every detected nucleus brings its own foreground; the global threshold only
        # adds voxels near a nucleus (on a noisy sparse stack Otsu's level sits in the
        # noise, and components spread over it: measured F1 0.12 instead of 0.8)
        if not foreground_is_mostly_nuclei(n_global, vs, d_i, ndim):
            # the global foreground is mostly not nuclei (tissue glow and noise around dim
            # neurons): near a nucleus it only inflates the label, to 0.75 diameters
            pre.foreground[:] = False
        else:
            pre.foreground &= near_mask(pre.foreground.shape, peaks.coords, vs, 0.75 * d_i)
        n_local = int(loc.sum())
        pre.foreground |= loc
    n_fg = int(pre.foreground.sum())
    cap = component_cap(n_fg * float(np.prod(vs)), diameter, ndim)
    if len(peaks) > cap:
        notes.append(
            f"{len(peaks)} peaks but the foreground ({n_fg} voxels) holds at most {cap} "
            f"nuclei of half the typical diameter: the {cap} strongest kept"
        )
        keep = np.arange(cap)
        peaks = peaks.take(keep)
        d_i = d_i[keep]
    if d_i.size:
        d_small, d_large = (float(v) for v in np.percentile(d_i, [10, 90]))
    else:
        d_small = d_large = float(diameter)
    info = {
        "d_small_um": min(d_small, float(diameter)),
        "d_large_um": max(d_large, float(diameter)),
        "n_foreground_global": n_global,
        "n_foreground_local": n_local,
        "n_foreground": n_fg,
        "component_cap": cap,
    }
    return peaks, info


def covariance_model(info: dict, vs, n_features: int, lo_s: float, hi_s: float):
    """Position-covariance bounds and the per-feature ``reg_covar``.

    The bounds are ``lo_s`` times the nominal variance ``(d/2)^2 / 5`` of the smallest
    and ``hi_s`` times that of the largest detected nuclei (10th / 90th percentile), so
    that nuclei 2x apart in size in one image all fit. Each position axis gets the
    quantisation variance ``step^2 / 12`` added (intensities 1e-6, as before).

    Returns
    -------
    bounds : (float, float)
    reg_covar : numpy.ndarray, shape (n_features,)
    """
    ndim = len(vs)
    lo = lo_s * (info["d_small_um"] / 2.0) ** 2 / 5.0
    hi = hi_s * (info["d_large_um"] / 2.0) ** 2 / 5.0
    reg = np.full(n_features, 1e-6)
    reg[:ndim] = np.asarray(vs, dtype=np.float64) ** 2 / 12.0
    return (lo, hi), reg


def clean(labels: np.ndarray) -> np.ndarray:
    """One compact, smooth object per label (see :func:`.cleanup.clean_labels`)."""
    return clean_labels(labels)


def detect(pre, vs, diameter: float, notes: list) -> tuple[Peaks, dict]:
    """Local-mode detection: blobs in :func:`search_mask` (and the small-scale pass in the
    global foreground), then :func:`refine`; ``info["blob_diameter_um"]`` is the typical
    diameter of the blobs searched."""
    blobs: list = []
    peaks = detect_nuclei(
        pre.signal,
        vs,
        nucleus_diameter=diameter,
        foreground=search_mask(pre),
        local=True,
        small_foreground=pre.foreground,
        blobs_out=blobs,
    )
    peaks, info = refine(pre, peaks, np.asarray(vs, dtype=np.float64), diameter, notes)
    if len(blobs[0]):
        # the typical diameter of the blobs searched (0.5-2x ``diameter``), as the
        # automatic estimate takes it: the tracker's scale for the next frame
        info["blob_diameter_um"] = diameter_from_blobs(blobs[0], pre.signal.ndim).diameter_um
    return peaks, info


def diagnostics(diameter: float, requested, local: bool, local_info: dict | None) -> dict:
    """Entries of ``result.info`` about the scale and the mode."""
    return {
        "nucleus_diameter_um": float(diameter),
        "nucleus_diameter": requested,
        "local_contrast": bool(local),
        "adaptive": local_info,
    }


def convergence_notes(fit, max_iter: int) -> list[str]:
    """A message for ``info["warnings"]`` when the fit stopped at ``max_iter``."""
    if fit.converged:
        return []
    return [
        f"the fit did not converge within max_iter={int(max_iter)} iterations "
        f"({int(fit.n_iter)} run in all); the result is usable, a larger max_iter may "
        "refine it"
    ]


def cap_count(K: int, info: dict | None, init_array, notes: list) -> int:
    """A requested count capped like the detected one (:func:`refine`): never more
    components than the foreground can hold. Given centres (``init_array``) are kept."""
    if info is None or init_array is not None or info["component_cap"] >= K:
        return K
    cap = int(info["component_cap"])
    notes.append(
        f"only {cap} components fitted for the {K} requested: the foreground holds at "
        f"most {cap} nuclei of half the typical diameter"
    )
    return cap
