"""The local (scale- and contrast-adaptive) mode of :func:`~napari_sinkhorn_em.segment_nuclei`.

On by default (``nucleus_diameter="auto"``). The steps that differ from the fixed-scale
pipeline, each in one function called from ``segment.py``:

* :func:`search_mask` -- where peaks are looked for: the global foreground plus every
  voxel where the signal smoothed over a quarter diameter is above its noise, so that
  nuclei far dimmer than the global (Otsu) level are not excluded before detection;
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
)
from .noise import given_or_measured_blur, noise_blur, response_noise, voxel_sd, white_noise_level
from .peaks import Peaks, detect_nuclei
from .preprocess import auto_threshold, granule_mask, half_max_spot
from .scale import diameter_from_blobs, high_outliers

# the search mask (search_mask) tests the signal smoothed by a Gaussian of this many
# nucleus diameters (sigma): the noise falls by the filter's gain, a nucleus' mean stays
_SEARCH_SMOOTHING = 0.25
# granule peaks of a single-channel image (granule_peaks): at most this fraction of the
# nucleus diameter and this many um across, at least this many voxel-noise levels bright
_GRANULE_MAX_FRACTION = 0.7
_GRANULE_MAX_UM = 2.0
_GRANULE_SNR = 20.0
# ... and shorter in the lateral plane than this fraction of the nucleus diameter
# (spot_lengths): a mitotic nucleus is a small bright spot too, but its chromatin is a
# plate as wide as 0.7 of the nucleus. Measured with the automatic diameter: the
# granules of make_worm (one channel) reach it in 4 of 188 (3-D) and 11 of 120 (2-D;
# granules 0.4-0.8 um apart fuse into one spot) cases, the metaphase plates of
# make_embryo(mitotic_fraction=0.15) in 78 % (0.45: 4 / 20 granules, 88 %)
_GRANULE_MAX_LENGTH = 0.5
# ... and, in 3-D, holding less light than this many times the median nucleus (the
# signal summed over a ball of the nucleus diameter, ball_light): the plate holds its
# nucleus' chromatin, a granule a fraction (granules of the 3-D make_worm sets: median
# 0.4, at most 0.78-1.15 of a nucleus; plates: median 1.6-2.1). Not in 2-D, where a
# section holds a whole granule but a slab of a nucleus (2-D granules: median 0.85-1.0)
_GRANULE_MAX_LIGHT = 1.0

# marks cap_count's note (segment_nuclei folds it into its count warning)
CAP_NOTE_MARK = " components fitted for the "

__all__ = [
    "cap_count",
    "clean",
    "convergence_notes",
    "covariance_model",
    "detect",
    "diagnostics",
    "granule_peaks",
    "refine",
    "search_mask",
]


def search_mask(pre, blur=None, voxel_size=None, diameter: float | None = None) -> np.ndarray:
    """Global foreground plus every voxel where the signal, smoothed over a quarter of a
    nucleus diameter, stands above its noise: the lower of the smoothed image's median
    + 4 MAD and its background (25th percentile) + 4 standard deviations of the smoothed
    noise (``blur``: the signal's :func:`~.noise.noise_blur` if known). Without
    ``voxel_size`` and ``diameter`` the test is on single voxels.

    Single voxels of a dim nucleus under heavy noise cross a voxel-noise threshold only
    by chance, so its peak was searched or not by luck (real DSB 2018 image with 10 %
    noise: 22 of 125 nuclei missed); smoothed, the noise shrinks by the filter's gain and
    the nucleus' mean stands out. The whole image's MAD alone is no noise measure where
    nuclei cover a fifth of the image (real 2-D DSB image: median + 4 MAD = 0.27 above
    Otsu's 0.17, and the dim nuclei between the two were never searched), hence the
    background + noise test beside it."""
    sig = np.asarray(pre.signal)
    b = given_or_measured_blur(sig, blur)
    if voxel_size is None or diameter is None:
        sm, gain = sig, response_noise(np.ones((1,) * sig.ndim), 1.0, b)
    else:
        sv = _SEARCH_SMOOTHING * float(diameter) / np.asarray(voxel_size, dtype=np.float64)
        sm = ndi.gaussian_filter(sig.astype(np.float32, copy=False), sv, mode="nearest")
        gain = _gauss_gain(sv, b)
    flat = sm.reshape(-1)[:: max(1, sm.size // 1_000_000)]
    noise_thr = min(
        auto_threshold(flat, "noise"),
        float(np.percentile(flat, 25)) + 4.0 * white_noise_level(sig, b) * gain,
    )
    return pre.foreground | (sm > noise_thr)


def _gauss_gain(sigma_vox, blur) -> float:
    """Standard deviation of the response of a Gaussian filter (``sigma_vox`` per axis,
    as ``ndimage.gaussian_filter`` applies it) to unit white noise blurred by ``blur``."""
    sv = np.asarray(sigma_vox, dtype=np.float64)
    half = np.ceil(4.0 * sv).astype(int) + 1
    delta = np.zeros(tuple(2 * h + 1 for h in half))
    delta[tuple(half)] = 1.0
    return response_noise(ndi.gaussian_filter(delta, sv, mode="constant"), 1.0, blur)


def _peak_diameters(peaks: Peaks, diameter: float, ndim: int) -> np.ndarray:
    """Each peak's diameter: the typical diameter times its scale relative to the
    pass' centre scale (0.8 of the ball optimum for primary peaks, 0.6 for the
    small-scale pass)."""
    factor = np.where(peaks.secondary, 0.6, 0.8)
    centre = factor * 0.5 * diameter / np.sqrt(ndim)
    return diameter * peaks.sigma_um / centre


def refine(
    pre,
    peaks: Peaks,
    vs,
    diameter: float,
    notes: list,
    given: np.ndarray | None = None,
) -> tuple[Peaks, dict]:
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
    given : numpy.ndarray, optional
        ``(K, ndim)`` centres the user gave (``init``, voxels): each brings its half
        maximum region as a detected nucleus does, and keeps the global foreground
        within 0.75 diameters (hand-placed points on nuclei the detection did not
        accept: a real head with 83 annotated neurons kept 46 of them without this).

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
    has_given = given is not None and len(given) > 0
    if len(peaks) or has_given:
        # the level test on the signal smoothed by one voxel: voxel noise inside a
        # nucleus (photon speckle) otherwise punches its dim voxels out and the label
        # keeps the bright core (QCANet 8-cell AP50 0.23 -> 0.45; embryo 370 0.97 -> 0.95)
        smooth = ndi.gaussian_filter(pre.signal, 1.0, mode="nearest")
        # each resolved nucleus' extent: half-way between its local background and its
        # bulk, in its own watershed territory (a textured nucleus with a dim rim gets the
        # rim: QCANet 8-cell AP50 0.45 -> 1.00); territories reach 1.75 radii of at least
        # the typical diameter (the LoG scale of a textured nucleus is its bright core's)
        loc = np.zeros(smooth.shape, dtype=bool)
        rest = np.zeros(0, dtype=bool)
        if len(peaks):
            ext, levels = nucleus_extents(smooth, vs, peaks.coords, 0.5 * np.maximum(d_i, diameter))
            loc = ext > 0
            del ext
            # the others (blur-dominated, or not separable from a brighter neighbour by
            # a level) keep their half maximum
            rest = np.isnan(levels)
        if rest.any():
            loc |= local_foreground(
                smooth, vs, peaks.coords[rest], 0.5 * d_i[rest], peaks.intensity[rest]
            )
        near = (peaks.coords, 0.75 * d_i)
        if has_given:
            g = np.asarray(given, dtype=np.float64)
            at = tuple(np.clip(np.round(g).astype(np.int64), 0, np.array(smooth.shape) - 1).T)
            half_d = np.full(len(g), 0.5 * diameter)
            loc |= local_foreground(smooth, vs, g, half_d, smooth[at])
            near = (np.concatenate([peaks.coords, g]), np.concatenate([near[1], 1.5 * half_d]))
        del smooth
        # every detected nucleus brings its own foreground; the global threshold only
        # adds voxels near a nucleus (on a noisy sparse stack Otsu's level sits in the
        # noise, and components spread over it: measured F1 0.12 instead of 0.8)
        if len(peaks) and not foreground_is_mostly_nuclei(n_global, vs, d_i, ndim):
            # the global foreground is mostly not nuclei (tissue glow and noise around dim
            # neurons): near a nucleus it only inflates the label, to 0.75 diameters
            if has_given:  # but near a centre the user placed it is all there is
                pre.foreground &= near_mask(pre.foreground.shape, g, vs, 1.5 * half_d)
            else:
                pre.foreground[:] = False
        else:
            pre.foreground &= near_mask(pre.foreground.shape, near[0], vs, near[1])
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


def detect(
    pre,
    vs,
    diameter: float,
    notes: list,
    granules: bool = False,
    given: np.ndarray | None = None,
) -> tuple[Peaks, dict]:
    """Local-mode detection: blobs in :func:`search_mask` (and the small-scale pass in the
    global foreground), without :func:`granule_peaks` when ``granules``, then
    :func:`refine` (with the ``given`` centres);
    ``info["blob_diameter_um"]`` is the typical diameter of the blobs searched and
    ``info["n_granule_peaks"]`` the peaks dropped as granules."""
    blobs: list = []

    def find(blur) -> Peaks:
        blobs.clear()
        return detect_nuclei(
            pre.signal,
            vs,
            nucleus_diameter=diameter,
            foreground=search_mask(pre, blur, vs, diameter),
            local=True,
            small_foreground=pre.foreground,
            blobs_out=blobs,
            noise_blur_voxels=blur,
        )

    # the signal's noise model (noise.noise_blur), measured once per search: the same
    # signal feeds the search mask, every significance test and the granule test
    blur = noise_blur(pre.signal)
    peaks = find(blur)
    if _threshold_without_outliers(pre, blobs[0]):
        peaks = find(blur)
    n_granules = 0
    if granules and len(peaks):
        drop, spots = granule_peaks(pre, peaks, vs, diameter, blur)
        n_granules = int(drop.sum())
        if n_granules:
            # the spots go, as the voxel-level filter removes them, and the nuclei are
            # searched again: a bright granule beside a nucleus had suppressed its blob
            # (2-D single-channel worm heads: 27 / 31 of 40 nuclei found, 29 / 34 after)
            pre.data[spots] = 0.0
            pre.signal[spots] = 0.0
            pre.foreground &= ~spots
            pre.info["n_granule_voxels"] = int(spots.sum())
            method = pre.info.get("threshold_method")
            if method is not None:
                # an automatic threshold is taken again without them: granules 5x brighter
                # than the nuclei had set it (2-D single-channel worm head: a global
                # foreground of 19 um^2 for 40 nuclei of 2.7 um, empty once the spots went)
                _set_threshold(pre, auto_threshold(pre.signal, method), exclude=spots)
            blur = noise_blur(pre.signal)  # the signal changed
            peaks = find(blur)
            if len(peaks):
                again = granule_peaks(pre, peaks, vs, diameter, blur)[0]
                peaks = peaks.take(np.flatnonzero(~again))
    vs = np.asarray(vs, dtype=np.float64)
    peaks, info = refine(pre, peaks, vs, diameter, notes, given)
    info["n_granule_peaks"] = n_granules
    if len(blobs[0]):
        # the typical diameter of the blobs searched (0.5-2x ``diameter``), as the
        # automatic estimate takes it: the tracker's scale for the next frame
        info["blob_diameter_um"] = diameter_from_blobs(
            blobs[0], pre.signal.ndim, voxel_size=vs
        ).diameter_um
    return peaks, info


def _threshold_without_outliers(pre, blobs, min_contrast: float = 0.5) -> bool:
    """Take an automatic global threshold again without the blobs far brighter than the
    others (:func:`~.scale.high_outliers` of their responses: debris, dust, dead cells)
    when they had raised it; returns whether ``pre`` changed.

    Otsu's level separates such objects from everything else: 20 spots 20x brighter than
    the neurons of a whole-brain stack left a global foreground of 736 voxels (416,000
    without them), and the single-scale fill and the small-scale pass, which look there,
    found nothing (recall 0.96 -> 0.87). Each outlier takes the voxels within one of its
    diameters out of the threshold's histogram."""
    method = pre.info.get("threshold_method")
    if method is None or blobs is None or len(blobs) == 0:
        return False
    ok = blobs.contrast >= max(min_contrast, 1e-12)
    out = np.flatnonzero(ok)[high_outliers(blobs.response[ok])]
    if out.size == 0:
        return False
    vs = np.asarray(pre.voxel_size, dtype=np.float64)
    shape = np.array(pre.signal.shape)
    keep = np.ones(pre.signal.shape, dtype=bool)
    for i in out:
        r_um = 2.0 * np.sqrt(vs.size) * float(blobs.sigma_um[i])
        c = np.asarray(blobs.coords[i], dtype=np.float64)
        lo = np.clip(np.floor(c - r_um / vs).astype(np.int64), 0, shape)
        hi = np.clip(np.ceil(c + r_um / vs).astype(np.int64) + 1, 0, shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        grid = np.ogrid[box]
        d2 = sum(((g - ci) * v) ** 2 for g, ci, v in zip(grid, c, vs, strict=True))
        keep[box] &= d2 > r_um**2
    thr = auto_threshold(pre.signal[keep], method)
    if not thr < pre.threshold:
        return False
    _set_threshold(pre, thr)
    pre.info["n_threshold_outliers"] = int(out.size)
    return True


def _set_threshold(pre, thr: float, exclude: np.ndarray | None = None) -> None:
    """Make ``thr`` the global threshold of ``pre`` (in place): the foreground is the
    signal above it, without the granules and the voxels ``exclude``."""
    fg = pre.signal > thr
    if pre.granules is not None:
        fg &= ~pre.granules
    if exclude is not None:
        fg &= ~exclude
    pre.threshold = float(thr)
    pre.foreground = fg
    pre.info["n_foreground"] = int(fg.sum())


def granule_peaks(
    pre, peaks: Peaks, vs, diameter: float, blur=None
) -> tuple[np.ndarray, np.ndarray]:
    """Which peaks are autofluorescent granules, for an image with one channel (where the
    voxel-level filter of :func:`~.preprocess.granule_mask` has no colour to test).

    A peak is a granule when all four hold:

    * it lies in :func:`~.preprocess.granule_mask` (a top-hat spot whose half-maximum
      region is below 0.2 of a nucleus' volume);
    * its own LoG scale is small: a diameter at most 0.7 ``diameter`` and at most
      :data:`_GRANULE_MAX_UM` (an optical-resolution spot; on the real DSB 2-D image,
      in pixel units, the 0.7 rule alone took 9 small nuclei);
    * it is bright: at least :data:`_GRANULE_SNR` voxel-noise levels
      (:func:`~.noise.voxel_sd`). The granules of the synthetic single-channel
      worms stand 130-400 noise levels high; the dim small nuclei the first two rules
      took on dim synthetic embryos 2-12;
    * it is not a condensed nucleus: its spot is shorter in the lateral plane than
      :data:`_GRANULE_MAX_LENGTH` ``diameter`` (:func:`spot_lengths`) and, in 3-D, it
      holds less light than :data:`_GRANULE_MAX_LIGHT` x the median of the other peaks
      (:func:`ball_light`). A nucleus in mitosis is a small bright spot too, but a plate
      holding its chromatin: without these tests the granule test took 28 of the 30
      metaphase nuclei of a 200-nucleus synthetic embryo
      (``make_embryo(mitotic_fraction=0.15)``) and zeroed their voxels; 2 with them.

    Without the peak-level test the granules of a single-channel worm were nuclei (F1
    0.78 on a body, 0.68 on a head with as many granules as nuclei; 0.99-1.00 with it).
    The voxel-level filter alone took the speckle of textured nuclei on the real sets
    (QCANet 16-cell F1 0.97 -> 0.67); this test changes no real row of
    docs/benchmarks_real.md.

    Returns
    -------
    is_granule : numpy.ndarray of bool, shape (K,)
    spots : numpy.ndarray of bool, the image's spatial shape
        The connected pieces of the granule mask that hold those peaks.
    """
    vs = np.asarray(vs, dtype=np.float64)
    gm = granule_mask(pre.data, vs, nucleus_diameter=diameter)
    idx = np.clip(np.round(peaks.coords).astype(np.int64), 0, np.array(gm.shape) - 1)
    at = tuple(idx.T)
    d_peak = 2.0 * np.sqrt(vs.size) * peaks.sigma_um
    small = d_peak <= min(_GRANULE_MAX_FRACTION * diameter, _GRANULE_MAX_UM)
    bright = pre.signal[at] >= _GRANULE_SNR * voxel_sd(pre.signal, blur)
    is_granule = gm[at] & small & bright
    if is_granule.any():
        cand = np.flatnonzero(is_granule)
        length = spot_lengths(pre.signal, idx[cand], vs, diameter)
        spare = length >= _GRANULE_MAX_LENGTH * diameter
        others = np.flatnonzero(~is_granule)
        if vs.size == 3 and others.size >= 5:
            light = ball_light(pre.signal, idx, vs, diameter)
            spare |= light[cand] >= _GRANULE_MAX_LIGHT * np.median(light[others])
        is_granule[cand[spare]] = False
    lab, _ = ndi.label(gm)
    ids = np.unique(lab[at][is_granule])
    return is_granule, np.isin(lab, ids[ids > 0])


def ball_light(signal: np.ndarray, points: np.ndarray, vs, diameter: float) -> np.ndarray:
    """The summed ``signal`` (times the voxel volume) in a ball of ``diameter`` around
    each of ``points`` (voxel indices)."""
    vs = np.asarray(vs, dtype=np.float64)
    shape = np.array(signal.shape)
    half = np.ceil(0.5 * diameter / vs).astype(np.int64)
    grids = np.meshgrid(
        *[np.arange(-h, h + 1) * v for h, v in zip(half, vs, strict=True)], indexing="ij"
    )
    ball = sum(g**2 for g in grids) <= (0.5 * diameter) ** 2
    offs = np.argwhere(ball) - half
    out = np.zeros(len(points))
    for i, p in enumerate(np.asarray(points, dtype=np.int64)):
        q = p + offs
        ok = np.all((q >= 0) & (q < shape), axis=1)
        out[i] = float(signal[tuple(q[ok].T)].sum())
    return out * float(np.prod(vs))


def spot_lengths(signal: np.ndarray, points: np.ndarray, vs, diameter: float) -> np.ndarray:
    """The lateral length (um) of the bright spot at each of ``points`` (voxel indices).

    The spot (:func:`~.preprocess.half_max_spot`, as the granule mask's size test takes
    it) is that of the brightest voxel within a quarter ``diameter`` of the point; its
    voxels are projected onto the last two axes (a microscope's lateral plane, sampled
    finest) and the length is ``sqrt(12 x`` the larger principal variance ``)``: the
    length of a bar, 0.87 of a disk's diameter. Whatever its orientation, a thin disk
    (a metaphase plate) shows its full width in the lateral plane.
    """
    vs = np.asarray(vs, dtype=np.float64)
    shape = np.array(signal.shape)
    near = np.maximum(1, np.round(0.25 * diameter / vs)).astype(np.int64)
    far = np.maximum(2, np.ceil(diameter / vs)).astype(np.int64)
    out = np.zeros(len(points))
    for i, p in enumerate(np.asarray(points, dtype=np.int64)):
        lo, hi = np.maximum(p - near, 0), np.minimum(p + near + 1, shape)
        sub = signal[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
        top = lo + np.array(np.unravel_index(int(np.argmax(sub)), sub.shape))
        lo, hi = np.maximum(top - far, 0), np.minimum(top + far + 1, shape)
        box = signal[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
        pts = np.argwhere(half_max_spot(box, top - lo))[:, -2:] * vs[-2:]
        if len(pts) > 2:
            out[i] = float(np.sqrt(12.0 * max(np.linalg.eigvalsh(np.cov(pts.T)).max(), 0.0)))
    return out


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
        f"only {cap}{CAP_NOTE_MARK}{K} requested: the foreground holds at most {cap} "
        "nuclei of half the typical diameter"
    )
    return cap
