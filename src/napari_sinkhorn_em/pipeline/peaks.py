"""Multi-scale Laplacian-of-Gaussian nucleus detection.

Nuclei are blobs of about ``nucleus_diameter`` micrometres. The scale-normalised LoG
response ``-sigma^2 * LoG_sigma(signal)`` of a ball of radius ``r`` in ``d`` dimensions peaks
at ``sigma = r / sqrt(d)``; we evaluate a few scales around it (physical sigmas, converted
per axis with the voxel size, so anisotropic voxels are handled), take the maximum over
scales and keep local maxima that are at least ``min_distance`` micrometres apart, lie in
the foreground and respond strongly enough.

:func:`detect_peaks` returns the peak positions (voxel coordinates) together with the
best scale, the smoothed intensity at the peak and the LoG response -- the per-nucleus
size/brightness estimates that seed the mixing weights. The number of accepted peaks is
the automatic nucleus-count estimate.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi

from .._validation import check_voxel_size
from ._filters import box_filter
from ._regions import foreground_boxes
from .contrast import foreground_is_mostly_nuclei
from .noise import given_or_measured_blur, response_noise, white_noise_level
from .scale import high_outliers, scale_space_blobs, single_scale_blobs

__all__ = ["Peaks", "detect_nuclei", "detect_peaks", "log_scales"]


@dataclass
class Peaks:
    """Detected peaks, sorted by decreasing LoG response.

    Attributes
    ----------
    coords : numpy.ndarray, shape (K, ndim)
        Voxel coordinates (integers stored as float).
    sigma_um : numpy.ndarray, shape (K,)
        Physical LoG scale with the largest response at each peak.
    intensity : numpy.ndarray, shape (K,)
        Gaussian-smoothed signal at the peak (at the best scale).
    response : numpy.ndarray, shape (K,)
        Scale-normalised LoG response at the peak.
    threshold : float
        Response threshold that was applied.
    secondary : numpy.ndarray of bool, shape (K,), optional
        True for peaks found by the small-scale pass of :func:`detect_nuclei` (listed
        after all primary peaks); all False for :func:`detect_peaks`.
    """

    coords: np.ndarray
    sigma_um: np.ndarray
    intensity: np.ndarray
    response: np.ndarray
    threshold: float
    secondary: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.secondary is None:
            self.secondary = np.zeros(self.coords.shape[0], dtype=bool)

    def __len__(self) -> int:
        return int(self.coords.shape[0])

    def take(self, idx) -> Peaks:
        """The peaks ``idx`` (indices or a boolean mask), in that order."""
        return Peaks(
            self.coords[idx],
            self.sigma_um[idx],
            self.intensity[idx],
            self.response[idx],
            self.threshold,
            self.secondary[idx],
        )

    def radius_um(self, ndim: int) -> np.ndarray:
        """Nucleus radius implied by each peak's best scale (``sigma * sqrt(ndim)``)."""
        return self.sigma_um * np.sqrt(ndim)

    def mass(self, ndim: int) -> np.ndarray:
        """Relative intensity mass estimate per peak: intensity times radius**ndim."""
        return np.maximum(self.intensity, 0.0) * self.radius_um(ndim) ** ndim


def log_scales(
    nucleus_diameter: float, ndim: int, n_scales: int = 1, scale_factor: float = 0.8
) -> np.ndarray:
    """Physical LoG sigmas (micrometres) for a nucleus diameter.

    The optimum for an isolated ball of radius ``r`` is ``r / sqrt(ndim)``; touching
    nuclei are separated better slightly below it, hence ``scale_factor`` (0.8 measured
    best on dense synthetic heads, see docs/pipeline.md).

    Parameters
    ----------
    nucleus_diameter : float
        Typical nucleus diameter in micrometres.
    ndim : int
        Number of spatial dimensions.
    n_scales : int
        Number of scales, spread geometrically over a factor 0.8-1.25 of the centre scale.
    scale_factor : float
        Centre scale relative to the isolated-ball optimum.

    Returns
    -------
    numpy.ndarray
    """
    if nucleus_diameter <= 0:
        raise ValueError(f"nucleus_diameter must be > 0 um, got {nucleus_diameter}")
    if n_scales < 1:
        raise ValueError(f"n_scales must be >= 1, got {n_scales}")
    if scale_factor <= 0:
        raise ValueError(f"scale_factor must be > 0, got {scale_factor}")
    base = scale_factor * 0.5 * nucleus_diameter / np.sqrt(ndim)
    if n_scales == 1:
        return np.array([base])
    return base * np.geomspace(0.8, 1.25, n_scales)


def _footprint_size(voxel_size, distance_um: float) -> tuple[int, ...]:
    return tuple(2 * int(np.floor(distance_um / v)) + 1 for v in voxel_size)


def detect_peaks(
    signal: np.ndarray,
    voxel_size,
    *,
    nucleus_diameter: float = 3.0,
    foreground: np.ndarray | None = None,
    min_distance: float | None = None,
    n_scales: int = 1,
    scale_factor: float = 0.8,
    threshold: float | None = None,
    threshold_rel: float = 0.1,
    zero_sum: bool = False,
) -> Peaks:
    """Detect nucleus centres as local maxima of the multi-scale LoG response.

    Parameters
    ----------
    signal : numpy.ndarray
        2-D or 3-D intensity image (e.g. the mean of the normalised channels).
    voxel_size : sequence of float
        Voxel size in micrometres per axis.
    nucleus_diameter : float
        Typical nucleus diameter in micrometres.
    foreground : numpy.ndarray of bool, optional
        Peaks outside the mask are dropped; the computation is restricted to the mask's
        bounding box (plus a margin).
    min_distance : float, optional
        Smallest distance between two peaks in micrometres (non-maximum suppression
        by decreasing response); default ``0.4 * nucleus_diameter``.
    n_scales, scale_factor
        LoG scales (see :func:`log_scales`).
    threshold : float, optional
        Absolute response threshold; default ``threshold_rel`` times the 99th percentile
        of the response inside the foreground.
    threshold_rel : float
        Relative threshold used when ``threshold`` is None.
    zero_sum : bool
        LoG with a zero-sum kernel (:func:`_log`). Off by default: on an axis sampled
        coarser than about 0.6 sigma the sampled kernel's sum is negative, so the
        response also rises with the brightness. That makes a nucleus spanning 1-2
        coarse planes peak once, in its brightest plane; the zero-sum kernel has almost
        no curvature left along such an axis and gives a peak per plane (real
        targettrack frames at 1.5 um z-steps and a given 2 um diameter: 540-820 peaks
        for ~130 nuclei). The local mode's small-scale pass uses it (its peaks must
        stand above the noise, not the brightness).

    Returns
    -------
    Peaks
    """
    sig = np.asarray(signal, dtype=np.float32)
    ndim = sig.ndim
    vs = np.asarray(check_voxel_size(voxel_size, ndim), dtype=np.float64)
    if min_distance is None:
        min_distance = 0.4 * nucleus_diameter
    if min_distance <= 0:
        raise ValueError(f"min_distance must be > 0 um, got {min_distance}")
    sigmas = log_scales(nucleus_diameter, ndim, n_scales, scale_factor)
    margin = np.ceil(3.0 * sigmas.max() / vs).astype(int) + 1
    if foreground is not None:
        fg = np.asarray(foreground, dtype=bool)
        if fg.shape != sig.shape:
            raise ValueError(f"foreground shape {fg.shape} differs from signal {sig.shape}")
        if not fg.any():
            return _empty(ndim)
        # the filters run on boxes around the foreground (with a margin), cut at empty
        # stretches wider than two margins: their total volume follows the foreground
        boxes = foreground_boxes(np.argwhere(fg), sig.shape, margin=margin, min_gap=2 * margin + 1)
    else:
        fg = None
        boxes = [tuple(slice(0, n) for n in sig.shape)]
    # LoG response (best over scales) per box
    parts = []
    for box in boxes:
        sub = sig[box]
        best = np.full(sub.shape, -np.inf, dtype=np.float32)
        best_scale = np.zeros(sub.shape, dtype=np.int8)
        for i, s in enumerate(sigmas):
            if zero_sum:
                r = _log(sub, s / vs)
            else:
                r = ndi.gaussian_laplace(sub, sigma=s / vs, mode="nearest")
            r *= np.float32(-(s**2))
            better = r > best
            best[better] = r[better]
            best_scale[better] = i
        parts.append((box, sub, best, best_scale, None if fg is None else fg[box]))
    if threshold is None:
        ref_vals = np.concatenate(
            [best[fgs] if fgs is not None else best.ravel() for _, _, best, _, fgs in parts]
        )
        ref = float(np.percentile(ref_vals, 99.0)) if ref_vals.size else 0.0
        threshold = threshold_rel * max(ref, 0.0)
    # candidate maxima: local maxima in a box of at most the minimum distance (at least
    # one voxel either side), above the threshold; intensity at the peak's own scale (one
    # smoothing per used scale, evaluated at the candidates)
    size = tuple(max(3, s) for s in _footprint_size(vs, 0.5 * min_distance))
    all_coords, all_resp, all_scale, all_inten = [], [], [], []
    for box, sub, best, best_scale, fgs in parts:
        local_max = box_filter(best, size, maximum=True)
        is_peak = (best == local_max) & (best > 0) & (best > threshold)
        if fgs is not None:
            is_peak &= fgs
        coords = np.argwhere(is_peak)
        if coords.size == 0:
            continue
        scale_idx = best_scale[tuple(coords.T)]
        inten = np.empty(coords.shape[0])
        for i, s in enumerate(sigmas):
            sel = scale_idx == i
            if sel.any():
                sm = ndi.gaussian_filter(sub, sigma=s / vs, mode="nearest")
                inten[sel] = sm[tuple(coords[sel].T)]
        all_resp.append(best[tuple(coords.T)])
        all_coords.append(coords + np.array([b.start for b in box]))
        all_scale.append(scale_idx)
        all_inten.append(inten)
    if not all_coords:
        return _empty(ndim, threshold)
    coords = np.concatenate(all_coords)
    resp = np.concatenate(all_resp)
    scale_idx = np.concatenate(all_scale)
    inten = np.concatenate(all_inten)
    keep = _suppress_close(coords * vs, resp, min_distance)
    coords, resp, scale_idx, inten = coords[keep], resp[keep], scale_idx[keep], inten[keep]
    order = np.argsort(-resp, kind="stable")
    return Peaks(
        coords=coords[order].astype(np.float64),
        sigma_um=sigmas[scale_idx[order]],
        intensity=inten[order],
        response=resp[order].astype(np.float64),
        threshold=float(threshold),
    )


def detect_nuclei(
    signal: np.ndarray,
    voxel_size,
    *,
    nucleus_diameter: float = 3.0,
    foreground: np.ndarray | None = None,
    n_nuclei: int | None = None,
    small_scale_factor: float = 0.6,
    separation: float = 0.55,
    fill_separation: float = 0.4,
    local: bool = False,
    min_contrast: float = 0.5,
    small_foreground: np.ndarray | None = None,
    blobs_out: list | None = None,
    noise_blur_voxels=None,
) -> Peaks:
    """Nucleus centres from two LoG passes: the nucleus scale, then a smaller scale.

    At the nucleus scale (:func:`detect_peaks` defaults) a small or dim nucleus pressed
    against a bigger one gives no maximum of its own: the larger response swallows it.
    Those nuclei are the misses that remain on dense heads (measured on the synthetic
    heads: about 5-10 of 195, each 2-3 um from the nearest detected centre, diameters
    2.0-2.3 um against 2.7 um typical). A second pass at ``small_scale_factor`` times the
    nucleus-scale sigma (a lower relative threshold, 0.05) resolves them; its peaks are
    accepted, strongest first, when they lie at least ``separation x nucleus_diameter``
    from every accepted peak, so that a nucleus already found is not split.

    When ``n_nuclei`` is given and larger than that, further small-scale peaks down to
    ``fill_separation x nucleus_diameter`` are added until there are ``n_nuclei``
    (strongest first). When it is smaller, the caller takes the first ``n_nuclei``
    (primary peaks come first, by decreasing response).

    Parameters
    ----------
    signal, voxel_size, nucleus_diameter, foreground
        As for :func:`detect_peaks`.
    n_nuclei : int, optional
        Requested number of nuclei (only used to decide how far to fill).
    small_scale_factor : float
        Scale of the second pass relative to the isolated-ball optimum (the first pass
        uses 0.8).
    separation, fill_separation : float
        Minimum distance of an accepted small-scale peak to every accepted peak, in
        units of ``nucleus_diameter``, without and with a requested count.
    local : bool
        Scale- and contrast-adaptive mode (``nucleus_diameter="auto"``): the nuclei are
        the scale-space blobs of :func:`~napari_sinkhorn_em.pipeline.scale.scale_space_blobs`
        over 0.5-2x the nucleus diameter (each with its own scale; significant, round,
        prominent, local contrast >= ``min_contrast``), suppressed within half of each
        pair's mean diameter (each at least ``nucleus_diameter``). ``sigma_um`` holds
        0.8x each blob's scale, the convention of the fixed-scale pass. With
        ``small_foreground`` given (and when that foreground is mostly the detected
        nuclei), the small-scale pass follows in ``small_foreground``: peaks within one
        ``nucleus_diameter`` of a blob's edge, separated from every blob whose reach they
        lie in by a dip of the signal (see :func:`_add_small_scale`; measured on the
        synthetic NeuroPAL-like head: F1 0.93 -> 1.00, the nuclei pressed against bigger
        ones; on the real 2-D DSB image 0.85 -> 0.94).
    min_contrast : float
        Local contrast a blob needs in the local mode.
    small_foreground : numpy.ndarray of bool, optional
        Local mode only: where the small-scale pass looks (e.g. the global foreground,
        narrower than the blob search mask); None = no small-scale pass.
    blobs_out : list, optional
        Local mode only: the scale-space blobs searched are appended to it (for
        :func:`~napari_sinkhorn_em.pipeline.scale.diameter_from_blobs`).
    noise_blur_voxels : sequence of float, optional
        Local mode only: :func:`~napari_sinkhorn_em.pipeline.noise.noise_blur` of
        ``signal`` when the caller has it (it is measured once here otherwise).

    Returns
    -------
    Peaks
        Primary peaks first, then the accepted small-scale peaks (``secondary`` True).
    """
    if not 0 < fill_separation <= separation:
        raise ValueError(
            f"need 0 < fill_separation <= separation, got {fill_separation} and {separation}"
        )
    vs = np.asarray(voxel_size, dtype=np.float64)
    if local:
        return _detect_local(
            signal,
            vs,
            nucleus_diameter,
            foreground,
            min_contrast,
            separation,
            small_foreground,
            blobs_out,
            noise_blur_voxels,
        )
    primary = detect_peaks(signal, vs, nucleus_diameter=nucleus_diameter, foreground=foreground)
    small = detect_peaks(
        signal,
        vs,
        nucleus_diameter=nucleus_diameter,
        foreground=foreground,
        scale_factor=small_scale_factor,
        min_distance=0.3 * nucleus_diameter,
        threshold_rel=0.05,
    )
    from scipy.spatial import cKDTree

    small_um = small.coords * vs
    taken = np.zeros(len(small), dtype=bool)
    chosen = []  # per tier, by decreasing response
    tiers = [separation]
    if n_nuclei is not None and n_nuclei > len(primary):
        tiers.append(fill_separation)
    for tier, sep in enumerate(tiers):
        # greedy by decreasing response (small.coords is sorted so): a small-scale peak is
        # accepted if it is at least sep * diameter from every peak accepted so far
        r = sep * nucleus_diameter
        accepted = np.concatenate([primary.coords * vs, small_um[taken]])
        cand = np.flatnonzero(~taken)
        if accepted.shape[0] and cand.size:
            cand = cand[cKDTree(accepted).query(small_um[cand])[0] >= r]
        cand = cand[_suppress_close(small_um[cand], small.response[cand], r)]
        if tier > 0:
            cand = cand[: max(0, n_nuclei - len(primary) - int(taken.sum()))]
        taken[cand] = True
        chosen.append(cand)
    sel = np.concatenate(chosen).astype(np.intp)
    return _with_small(primary, small, sel)


# smallest blob response, relative to the 95th percentile of the blobs' responses
# (strong_response: outliers far above the rest left out)
_MIN_RELATIVE_RESPONSE = 0.1


def strong_response(response, q: float = 95.0) -> float:
    """The ``q``-th percentile of blob responses without the outliers far above them
    (:func:`~.scale.high_outliers`): the level of the strong nuclei, for the relative
    floor. 20 nucleus-sized spots 20x brighter than the nuclei of a whole-brain stack made
    up its 95th percentile, and the floor a tenth of it dropped most neurons (recall
    0.44; 0.87 with the outliers left out).

    The diameter estimate leaves out *intensity* outliers instead
    (:func:`~.scale.diameter_from_blobs`): response outliers there broke the real QCANet
    8-cell stack, whose 8 large nuclei are the response outliers among their own texture
    blobs (29 objects, F1 1.00 -> 0.22)."""
    r = np.asarray(response, dtype=np.float64)
    return float(np.percentile(r[~high_outliers(r)], q))


# the small-scale pass' valley test: a candidate inside a detected nucleus' reach is its
# own nucleus only when the signal (smoothed at the pass' scale) dips on the straight line
# to that nucleus' centre below (1 - _VALLEY_DEPTH) x the lower of the two centre levels.
# Measured on the real 2-D DSB image (125 nuclei of 11-28 px): the test lets the pass run
# on images of mixed sizes, where it used to add peaks inside large nuclei (synthetic 2-D
# field: 131 objects for 125 nuclei without the test, 125 with it)
_VALLEY_DEPTH = 0.1
# a detected nucleus' reach for the test, in units of its own diameter (at least the
# fixed `separation` x max(own, typical) diameter, beyond which candidates are accepted
# as before): the 2-D field's interior peaks lay at 0.40-0.56 of their nucleus' diameter,
# the head's pressed nuclei at 0.83-0.99
_VALLEY_REACH = 0.6
# ... and this far where the typical nucleus spans at least _VALLEY_MIN_SAMPLES samples
# of the coarsest axis. Chromatin texture puts peaks further out when the automatic
# diameter falls short (textured synthetic embryo of 100 nuclei: 3.4 um for 4.3, its six
# false small-scale peaks at 0.61-0.80 of their nucleus' blob diameter; the pressed
# nuclei the pass adds on every untextured benchmark row at 0.83-1.8, one at 0.69): F1
# 0.957 -> 0.985. Not on coarser sampling, where no texture is resolved and the dip
# between touching nuclei is barely sampled: the real targettrack heads (~1.2 samples)
# lost 1-5 objects per frame and a match on six of nine frames (mean F1 0.584 -> 0.574)
_VALLEY_REACH_FINE = 0.75
_VALLEY_MIN_SAMPLES = 2.0


def _valley_reach(diameter: float, vs) -> float:
    """The valley tests' reach in units of a nucleus' own diameter (see
    :data:`_VALLEY_REACH_FINE`)."""
    if diameter / float(np.max(vs)) >= _VALLEY_MIN_SAMPLES:
        return _VALLEY_REACH_FINE
    return _VALLEY_REACH


# candidates closer than this (units of max(own, typical) diameter) to a detected centre
# are never separate nuclei, valley or not
_SMALL_PASS_FLOOR = 0.4

# the small-scale pass' peaks must exceed this many standard deviations of the LoG
# response to the voxel noise (at 0.6x the nucleus scale the field is barely smoothed,
# and its noise maxima reach 5-6 of them)
_SMALL_PASS_SIGNIFICANCE = 6.0


def _valley_dips(smooth: np.ndarray, a: np.ndarray, b: np.ndarray, depth: float) -> np.ndarray:
    """For each pair of voxel positions ``a[i]``, ``b[i]``: does ``smooth`` dip below
    ``(1 - depth)`` times the lower of its two end values between them (linear
    interpolation, about one sample per voxel of the longest segment)?"""
    if a.shape[0] == 0:
        return np.zeros(0, dtype=bool)
    n = max(3, int(np.ceil(np.max(np.linalg.norm(b - a, axis=1)))) + 2)
    t = np.linspace(0.0, 1.0, n)
    pts = a[:, None, :] + t[None, :, None] * (b - a)[:, None, :]  # (P, n, ndim)
    vals = ndi.map_coordinates(smooth, pts.reshape(-1, a.shape[1]).T, order=1, mode="nearest")
    vals = vals.reshape(a.shape[0], n)
    ends = np.minimum(vals[:, 0], vals[:, -1])
    return vals[:, 1:-1].min(axis=1) < (1.0 - depth) * ends


def _valley_signal(sig, vs, diameter: float):
    """The signal smoothed at the small-scale pass' scale, computed on the first call
    only: the fill and the small-scale pass of one detection share it."""
    cache: list[np.ndarray] = []

    def smoothed() -> np.ndarray:
        if not cache:
            sigma = log_scales(diameter, sig.ndim, 1, 0.6)[0] / vs
            cache.append(ndi.gaussian_filter(np.asarray(sig, dtype=np.float32), sigma))
        return cache[0]

    return smoothed


def _no_valley(smoothed, cand_vox, prim_vox, pair_cand, pair_prim) -> np.ndarray:
    """Indices of the candidates of the pairs ``(pair_cand[i], pair_prim[i])`` with no dip
    of ``smoothed()`` (:func:`_valley_signal`) between the candidate and the primary
    (:func:`_valley_dips`)."""
    if not len(pair_cand):
        return np.zeros(0, dtype=np.intp)
    smooth = smoothed()
    pc = np.asarray(pair_cand, dtype=np.intp)
    a = np.asarray(cand_vox, dtype=np.float64)[pc]
    b = np.asarray(prim_vox, dtype=np.float64)[np.asarray(pair_prim, dtype=np.intp)]
    return np.unique(pc[~_valley_dips(smooth, a, b, _VALLEY_DEPTH)])


@lru_cache(maxsize=64)
def _log_dc(sigma_vox: tuple[float, ...]) -> float:
    """``ndi.gaussian_laplace``'s response to a constant 1 (its sampled kernel's sum):
    not 0 below ~0.6 voxel of sigma (-0.56 at 0.5, -3.1 at 0.4 voxel)."""
    half = tuple(int(4.0 * v + 0.5) + 2 for v in sigma_vox)
    one = np.ones(tuple(2 * h + 1 for h in half), dtype=np.float64)
    return float(ndi.gaussian_laplace(one, sigma=sigma_vox, mode="nearest")[half])


def _log(image: np.ndarray, sigma_vox) -> np.ndarray:
    """Laplacian of Gaussian (``ndi.gaussian_laplace``, voxel units) with a zero-sum
    kernel: where an axis' sigma is below about 0.6 voxel (a coarse z axis) the sampled
    kernel's sum is not 0 and the response follows the brightness itself (synthetic
    embryo at 1 um z-steps and 80 photons: the background gave 5 noise levels of LoG
    response, and noise maxima beside the nuclei were taken for small nuclei); the
    kernel's sum times the Gaussian-smoothed image is subtracted."""
    sv = tuple(float(v) for v in np.asarray(sigma_vox, dtype=np.float64))
    r = ndi.gaussian_laplace(image, sigma=sv, mode="nearest")
    dc = _log_dc(sv)
    if abs(dc) > 1e-4:
        r -= np.asarray(dc * ndi.gaussian_filter(image, sigma=sv, mode="nearest"), r.dtype)
    return r


def _log_noise(sig, vs, sigma_um: float, blur=None) -> float:
    """Standard deviation of :func:`detect_peaks`' LoG response at ``sigma_um`` to the
    image's noise (:func:`~.noise.response_noise`: the voxel noise times the kernel's L2
    norm for white noise); ``blur``: the image's :func:`~.noise.noise_blur` if known."""
    sv = sigma_um / np.asarray(vs, dtype=np.float64)
    half = np.ceil(4.0 * sv).astype(int) + 2
    delta = np.zeros(tuple(2 * h + 1 for h in half), dtype=np.float64)
    delta[tuple(half)] = 1.0
    k = _log(delta, sv) * sigma_um**2
    b = given_or_measured_blur(sig, blur)
    return response_noise(k, white_noise_level(sig, b), b)


def _add_small_scale(
    primary: Peaks,
    sig,
    vs,
    diameter: float,
    foreground,
    d_primary,
    separation: float,
    smoothed,
    blur=None,
) -> Peaks:
    """The fixed-scale pipeline's second pass for the local mode (see :func:`detect_nuclei`):
    LoG peaks at 0.6x the ball-optimal scale of ``diameter`` in ``foreground`` (the global
    one) within one ``diameter`` of a primary's edge (the pass is for nuclei pressed
    against others; an isolated dim nucleus is the blob pass' job). A candidate is
    accepted when, for every primary it lies within the reach of (``separation`` x the
    larger of ``diameter`` and the primary's own diameter, and at least
    :func:`_valley_reach` x its own diameter), the smoothed signal dips between the two
    (:func:`_valley_dips`), and it is at least ``_SMALL_PASS_FLOOR`` x that diameter from
    every primary; then strongest first, at least ``separation x diameter`` apart. The
    primaries' diameters ``d_primary`` are their blob diameters (um)."""
    from scipy.spatial import cKDTree

    small = detect_peaks(
        sig,
        vs,
        nucleus_diameter=diameter,
        foreground=foreground,
        scale_factor=0.6,
        min_distance=0.3 * diameter,
        threshold_rel=0.05,
        zero_sum=True,
    )
    if len(small) == 0 or len(primary) == 0:
        return primary
    # significance, as the blobs': the relative threshold alone lets the noise of a dim
    # stack through (synthetic embryo at 60 photons: 123 noise maxima near the nuclei
    # accepted, precision 0.45)
    sig_ok = small.response > _SMALL_PASS_SIGNIFICANCE * _log_noise(
        sig, vs, float(small.sigma_um.max()), blur
    )
    if not sig_ok.all():
        small = small.take(np.flatnonzero(sig_ok))
        if len(small) == 0:
            return primary
    small_um = small.coords * vs
    pts = primary.coords * vs
    big = np.maximum(d_primary, diameter)
    reach = np.maximum(
        _merge_reach(diameter, vs, separation) * big, _valley_reach(diameter, vs) * d_primary
    )
    floor = _SMALL_PASS_FLOOR * big
    tree = cKDTree(pts)
    ok = np.zeros(len(small), dtype=bool)
    horizon = float(max(reach.max(), 0.5 * d_primary.max() + diameter))
    pair_small, pair_primary = [], []
    for j, nb in enumerate(tree.query_ball_point(small_um, horizon)):
        if not nb:
            continue
        nb = np.asarray(nb)
        dist = np.linalg.norm(pts[nb] - small_um[j], axis=1)
        if np.min(dist - 0.5 * d_primary[nb]) > diameter or np.any(dist < floor[nb]):
            continue
        ok[j] = True
        for k in nb[dist < reach[nb]]:
            pair_small.append(j)
            pair_primary.append(k)
    ok[_no_valley(smoothed, small.coords, primary.coords, pair_small, pair_primary)] = False
    cand = np.flatnonzero(ok)
    cand = cand[_suppress_close(small_um[cand], small.response[cand], separation * diameter)]
    sel = cand[np.argsort(-small.response[cand], kind="stable")]
    return _with_small(primary, small, sel)


def _detect_local(
    signal,
    vs,
    diameter,
    foreground,
    min_contrast,
    separation=0.55,
    small_fg=None,
    blobs_out=None,
    blur=None,
) -> Peaks:
    """Local mode of :func:`detect_nuclei` (see there)."""
    sig = np.asarray(signal, dtype=np.float32)
    ndim = sig.ndim
    # the noise model of every significance test below, measured once
    blur = given_or_measured_blur(sig, blur)
    blobs = scale_space_blobs(
        sig, vs, diameter_range=(0.5 * diameter, 2.0 * diameter), noise_blur_voxels=blur
    )
    if blobs_out is not None:
        blobs_out.append(blobs)
    ok = blobs.contrast >= max(min_contrast, 1e-12)
    coords = np.round(blobs.coords[ok]).astype(np.int64)
    coords = np.clip(coords, 0, np.array(sig.shape) - 1)
    # each nucleus' level: the signal smoothed at its own scale, at its centre
    sigma, resp, inten = blobs.sigma_um[ok], blobs.response[ok], blobs.intensity[ok]
    con = blobs.contrast[ok]
    floor = 0.0
    if resp.size and _MIN_RELATIVE_RESPONSE > 0:
        # an absolute floor relative to the strong nuclei: where the background is exactly
        # zero (DoG-filtered recordings) the noise level is ~0 and texture would pass
        floor = _MIN_RELATIVE_RESPONSE * strong_response(resp)
        bright = resp >= floor
        coords, sigma, resp, inten = coords[bright], sigma[bright], resp[bright], inten[bright]
        con = con[bright]
    if foreground is not None and coords.size:
        inside = np.asarray(foreground)[tuple(coords.T)]
        coords, sigma, resp, inten = coords[inside], sigma[inside], resp[inside], inten[inside]
        con = con[inside]
    if coords.shape[0] == 0:
        return _empty(ndim)
    d_i = 2.0 * np.sqrt(ndim) * sigma
    # a pair closer than half its mean diameter is one nucleus, each diameter taken at
    # least the typical one: two small blobs inside one nucleus (texture, an uneven
    # interior) are closer than half a typical diameter; their own diameters let them
    # both through (synthetic embryo of 200 nuclei: 216 found, F1 0.94 -> 205, 0.99)
    d_pair = np.maximum(d_i, diameter)
    # of such a pair the blob kept is the one with the larger response x local contrast:
    # a texture blob inside a nucleus can respond as strongly as the nucleus' own blob
    # but stands out less (real QCANet 16-cell stack at 5.2 um z-steps: a 7.7 um texture
    # blob of response 0.445 and contrast 4.6 won over the nucleus' 15.2 um blob, 0.419
    # and 7.4, and the small-scale pass then split the nucleus in five; F1 0.84 -> 0.94)
    keep = _suppress_close(coords * vs, resp * con, 0.5 * diameter, scale=d_pair / diameter)
    smoothed = _valley_signal(sig, vs, diameter)
    merge = _merge_reach(diameter, vs, 0.0)
    if merge > 0:
        keep &= _merge_without_valley(coords, vs, resp * con, d_pair, keep, smoothed, merge)
    order = np.flatnonzero(keep)[np.argsort(-resp[keep], kind="stable")]
    coords, sigma, resp, inten = coords[order], sigma[order], resp[order], inten[order]
    d_i = d_i[order]
    # nuclei without a maximum in scale, from the LoG at one scale; each keeps the diameter
    # of that scale (_FILL_SCALE x the typical one: AP50 0.77 against 0.76 with the
    # typical diameter on the whole-brain stack at 2 um z-steps)
    # (in the global foreground where given: in the wider search mask a corner of QCANet's
    # 16-cell stack gave one)
    fill_fg = foreground if small_fg is None else small_fg
    fill = _single_scale_fill(
        sig, vs, diameter, fill_fg, min_contrast, coords, d_i, floor, smoothed, blur
    )
    if fill is not None:
        n_fill = fill[0].shape[0]
        coords = np.concatenate([coords, fill[0]])
        s_fill = _FILL_SCALE * diameter / (2.0 * np.sqrt(ndim))
        sigma = np.concatenate([sigma, np.full(n_fill, s_fill)])
        resp = np.concatenate([resp, fill[1]])
        inten = np.concatenate([inten, fill[2]])
        d_i = np.concatenate([d_i, np.full(n_fill, _FILL_SCALE * diameter)])
    primary = Peaks(
        coords=coords.astype(np.float64),
        sigma_um=0.8 * sigma,
        intensity=inten,
        response=resp,
        threshold=0.0,
    )
    if small_fg is None or len(primary) < 3:
        return _merge_plane_twins(primary, vs, diameter, d_i, smoothed)
    # only when the global foreground it searches is mostly the detected nuclei
    # (not on whole-brain stacks, whose Otsu foreground is noise)
    if not foreground_is_mostly_nuclei(np.count_nonzero(small_fg), vs, d_i, ndim):
        return _merge_plane_twins(primary, vs, diameter, d_i, smoothed)
    found = _add_small_scale(primary, sig, vs, diameter, small_fg, d_i, separation, smoothed, blur)
    d_all = np.concatenate([d_i, np.full(len(found) - len(primary), diameter)])
    return _merge_plane_twins(found, vs, diameter, d_all, smoothed)


# an axis is coarse when a typical nucleus spans fewer than this many of its samples: one
# nucleus centred between two of its planes peaks in both (the suppression distance, half
# a diameter, is shorter than the step); see _merge_plane_twins
_TWIN_MAX_SAMPLES = 4.0
# ... and the run test tells one nucleus from two stacked ones only where it spans at
# least this many: one nucleus of diameter d covers at most floor(d / step) + 1 planes,
# two stacked ones at least floor(2 d / step), which is more only from d = 1.5 steps on.
# Below, a nucleus between two planes and two nuclei on them both light 2 planes (whole
# brain registered, 1.9 um neurons at 2 um z-steps: 2 true neurons merged, F1 0.952 ->
# 0.944; real targettrack heads, ~2.5 um at 2 um: 2-5 objects per frame fewer, mean F1
# -0.004)
_TWIN_MIN_SAMPLES = 1.5


def _merge_plane_twins(peaks: Peaks, vs, diameter: float, d_i, smoothed) -> Peaks:
    """Drop the later of two peaks that are one nucleus seen on two neighbouring planes of
    a coarse axis (:data:`_TWIN_MAX_SAMPLES`).

    A nucleus centred between two planes gives each plane about half its signal and may
    peak on both (at different scales, or once in the scale-space pass and once in the
    fill or the small-scale pass): synthetic embryo, 4.3 um nuclei at 2.5 um z-steps, 10
    of 100 nuclei came out as two objects stacked one plane apart. Nothing between two
    neighbouring planes is sampled, so a dip of the signal cannot tell them from two
    nuclei stacked along the axis; the length of the bright run can. Along the axis
    through the pair (its mean position in the other axes) the smoothed signal is above
    half-way between its floor (the minimum within the pair's diameter plus a plane on
    either side) and the pair's brighter plane over a run of planes; one nucleus covers
    at most ``d / step + 1`` of them (``d`` the pair's mean diameter, at least the
    typical one), two stacked ones at least ``2 d / step`` (tested only where that is
    more: :data:`_TWIN_MIN_SAMPLES`). Pairs one plane apart whose
    other coordinates are within half a diameter and whose run is at most that long are
    one nucleus; the peak that comes first in ``peaks`` (primary before fill before
    small-scale; by response within each) stays."""
    n = len(peaks)
    vs = np.asarray(vs, dtype=np.float64)
    samples = diameter / vs
    coarse = np.flatnonzero((samples < _TWIN_MAX_SAMPLES) & (samples >= _TWIN_MIN_SAMPLES))
    if n < 2 or coarse.size == 0:
        return peaks
    c = np.rint(peaks.coords).astype(np.int64)
    d_pair = np.maximum(np.asarray(d_i, dtype=np.float64), diameter)
    smooth = None
    drop = np.zeros(n, dtype=bool)
    for ax in coarse.tolist():
        step = float(vs[ax])
        pairs = _close_pairs(c * vs, np.hypot(step, 0.5 * float(d_pair.max())))
        if not pairs.size:
            continue
        a, b = pairs[:, 0], pairs[:, 1]
        dc = c[b] - c[a]
        one_plane = np.abs(dc[:, ax]) == 1
        lateral = np.delete(dc, ax, axis=1) * np.delete(vs, ax)
        dp = 0.5 * (d_pair[a] + d_pair[b])
        near = one_plane & (np.linalg.norm(lateral, axis=1) < 0.5 * dp)
        if not near.any():
            continue
        if smooth is None:
            smooth = smoothed()
        size = smooth.shape[ax]
        for i, j, d in zip(a[near].tolist(), b[near].tolist(), dp[near].tolist(), strict=True):
            lo_p, hi_p = sorted((int(c[i, ax]), int(c[j, ax])))
            w = int(np.ceil(d / step)) + 1
            z0, z1 = max(lo_p - w, 0), min(hi_p + w, size - 1)
            at = np.rint(0.5 * (c[i] + c[j])).astype(np.int64)
            idx = [int(v) for v in at]
            idx[ax] = slice(z0, z1 + 1)
            prof = np.asarray(smooth[tuple(idx)], dtype=np.float64)
            top = max(prof[lo_p - z0], prof[hi_p - z0])
            level = 0.5 * (prof.min() + top)
            run_lo, run_hi = lo_p - z0, hi_p - z0
            while run_lo > 0 and prof[run_lo - 1] >= level:
                run_lo -= 1
            while run_hi < prof.size - 1 and prof[run_hi + 1] >= level:
                run_hi += 1
            if run_hi - run_lo + 1 <= d / step + 1.0:
                drop[max(i, j)] = True
    if not drop.any():
        return peaks
    return peaks.take(np.flatnonzero(~drop))


# two blobs closer than this many times their (mean, at least typical) diameter with no
# dip of the signal between them (:func:`_valley_dips` at the small-scale pass' smoothing
# and depth) are one nucleus: chromatin-like texture gives a large nucleus two or three
# blobs of half its size, 0.6-0.9 of a diameter apart, beyond the suppression distance
# (synthetic embryos with texture 0.4: every same-nucleus pair within one diameter had no
# dip, every pair of neighbouring nuclei had one). The same reach, instead of 0.55, for
# the valley tests of the single-scale fill and of the small-scale pass. Not 1.0: the
# pressed nuclei the small-scale pass is for sit 0.84-1.07 diameters from their
# brighter neighbour, often without a dip (NeuroPAL-like head: 13 of them lost at 1.0).
_TEXTURE_MERGE = 0.8
# ... only where a typical nucleus spans at least this many samples along every axis.
# On coarser axes the line between two centres is interpolated between a few planes and
# the dip of two touching nuclei is not seen: real targettrack heads (2 um nuclei at 2 um
# z-steps, ~1.3 samples) lost 2-5 neurons per frame to a neighbour; at 2 samples the
# 2.7 um nuclei of the moving synthetic heads (0.8 um z-steps) and the just-divided
# daughters of the growing embryo (1 um z-steps, 3.4 samples) were merged (tracking:
# growing embryo 0.901 -> 0.879 correct links, nuclei found 0.963 -> 0.941). Texture
# splits the large nuclei, which span many samples.
_MERGE_MIN_SAMPLES = 4.0


def _merge_reach(diameter: float, vs, default: float) -> float:
    """The valley tests' reach (in diameters): :data:`_TEXTURE_MERGE` where the typical
    nucleus is sampled finely enough (:data:`_MERGE_MIN_SAMPLES`), else ``default``."""
    if diameter / float(np.max(vs)) >= _MERGE_MIN_SAMPLES:
        return max(default, _TEXTURE_MERGE)
    return default


def _merge_without_valley(coords, vs, rank_score, d_pair, keep, smoothed, reach) -> np.ndarray:
    """Keep mask over ``coords`` (voxel positions, of which ``keep`` are still in):
    visiting the blobs by decreasing ``rank_score``, a kept blob removes every kept blob
    within ``reach`` x the pair's mean diameter (``d_pair``, um) that the
    smoothed signal does not dip between."""
    out = np.asarray(keep, dtype=bool).copy()
    idx = np.flatnonzero(out)
    pairs = idx[_close_pairs(coords[idx] * vs, reach, d_pair[idx])]
    if pairs.size:
        a, b = pairs[:, 0], pairs[:, 1]
        ca, cb = coords[a].astype(np.float64), coords[b].astype(np.float64)
        _drop_weaker(out, pairs[~_valley_dips(smoothed(), ca, cb, _VALLEY_DEPTH)], rank_score)
    return out


# the single-scale fill's scale, relative to the ball-optimal one of the typical diameter
# (0.8, the fixed-scale pass' convention; measured on the synthetic whole-brain stacks at
# 1.5 / 2 / 2.5 um z-steps, seeds 0-1: F1 0.97-0.98 / 0.91-0.92 / 0.80-0.82 without the
# fill, 0.97-0.99 / 0.95-0.97 / 0.85-0.86 with it; 1.0 gave 0.94-0.95 at 2 um)
_FILL_SCALE = 0.8


def _single_scale_fill(
    sig, vs, diameter, foreground, min_contrast, coords, d_i, floor, smoothed, blur=None
):
    """Nuclei without a maximum in scale: the maxima of the LoG at the typical scale
    (:func:`~napari_sinkhorn_em.pipeline.scale.single_scale_blobs`) that pass the blobs'
    tests (contrast, significance, roundness, prominence, the relative-response floor),
    lie in ``foreground`` and are farther from every detected nucleus than the
    suppression distance of the pair; strongest first. Returns ``(coords, response,
    intensity)`` or None."""
    from scipy.spatial import cKDTree

    b = single_scale_blobs(sig, vs, _FILL_SCALE * diameter, noise_blur_voxels=blur)
    ok = b.contrast >= max(min_contrast, 1e-12)
    if not ok.any():
        return None
    c = np.clip(np.round(b.coords[ok]).astype(np.int64), 0, np.array(sig.shape) - 1)
    resp, inten = b.response[ok], b.intensity[ok]
    keep = np.ones(len(c), dtype=bool)
    keep &= resp >= floor  # the primaries' floor (a tenth of their strong responses)
    if foreground is not None:
        keep &= np.asarray(foreground)[tuple(c.T)]
    # not on the image's first or last voxel of an axis (of 8 or more voxels): there the
    # LoG of a nucleus cut by the edge, or of the edge itself, peaks (whole brain at 2 um
    # z-steps: 4 such false nuclei on its first and last planes, F1 0.936 -> 0.950)
    long_axes = np.array(sig.shape) >= 8
    on_edge = ((c == 0) | (c == np.array(sig.shape) - 1))[:, long_axes].any(axis=1)
    keep &= ~on_edge
    if coords.shape[0] and keep.any():
        # the suppression rule of the primaries: half the pair's mean diameter
        tree = cKDTree(coords * vs)
        reach = 0.25 * (float(np.max(np.maximum(d_i, diameter))) + diameter)
        for j, nb in enumerate(tree.query_ball_point(c * vs, reach)):
            if keep[j] and nb:
                dist = np.linalg.norm(coords[nb] * vs - c[j] * vs, axis=1)
                lim = 0.25 * (np.maximum(d_i[nb], diameter) + diameter)
                keep[j] = bool(np.all(dist >= lim))
    if not keep.any():
        return None
    c, resp, inten = c[keep], resp[keep], inten[keep]
    if coords.shape[0]:
        # ... and, within a nucleus' reach, separated from it by a dip of the signal (the
        # valley test of the small-scale pass): texture at the rim of a large nucleus
        # is no nucleus (QCANet 16-cell: one such fill peak without the test)
        big = np.maximum(d_i, diameter)
        reach = np.maximum(
            _merge_reach(diameter, vs, 0.55) * big, _valley_reach(diameter, vs) * d_i
        )
        tree = cKDTree(coords * vs)
        pa, pb = [], []
        for j, nb in enumerate(tree.query_ball_point(c * vs, float(reach.max()))):
            for k in nb:
                if np.linalg.norm((coords[k] - c[j]) * vs) < reach[k]:
                    pa.append(j)
                    pb.append(k)
        ok2 = np.ones(len(c), dtype=bool)
        ok2[_no_valley(smoothed, c, coords, pa, pb)] = False
        c, resp, inten = c[ok2], resp[ok2], inten[ok2]
        if not len(c):
            return None
    sel = _suppress_close(c * vs, resp, 0.5 * diameter)
    order = np.flatnonzero(sel)[np.argsort(-resp[sel], kind="stable")]
    return c[order].astype(np.int64), resp[order], inten[order]


def _with_small(primary: Peaks, small: Peaks, sel: np.ndarray) -> Peaks:
    """``primary`` followed by the small-scale peaks ``small[sel]`` (marked secondary)."""
    return Peaks(
        coords=np.concatenate([primary.coords, small.coords[sel]]),
        sigma_um=np.concatenate([primary.sigma_um, small.sigma_um[sel]]),
        intensity=np.concatenate([primary.intensity, small.intensity[sel]]),
        response=np.concatenate([primary.response, small.response[sel]]),
        threshold=primary.threshold,
        secondary=np.concatenate([np.zeros(len(primary), bool), np.ones(sel.size, bool)]),
    )


def _suppress_close(
    points: np.ndarray, response: np.ndarray, min_distance: float, scale=None
) -> np.ndarray:
    """Non-maximum suppression: visit peaks by decreasing response, drop any peak closer
    than ``min_distance`` to one already kept. With ``scale`` (one factor per peak) the
    limit of a pair is ``min_distance`` times the mean of their factors. Returns a
    boolean keep mask."""
    keep = np.ones(points.shape[0], dtype=bool)
    _drop_weaker(keep, _close_pairs(points, min_distance, scale), response)
    return keep


def _close_pairs(points: np.ndarray, min_distance: float, scale=None) -> np.ndarray:
    """``(P, 2)`` index pairs of ``points`` closer than ``min_distance`` (with ``scale``:
    times the mean of the pair's two factors)."""
    from scipy.spatial import cKDTree

    if points.shape[0] < 2:
        return np.zeros((0, 2), dtype=np.intp)
    reach = min_distance if scale is None else min_distance * float(np.max(scale))
    pairs = cKDTree(points).query_pairs(reach, output_type="ndarray")
    if scale is not None and pairs.size:
        lim = min_distance * 0.5 * (scale[pairs[:, 0]] + scale[pairs[:, 1]])
        dist = np.linalg.norm(points[pairs[:, 0]] - points[pairs[:, 1]], axis=1)
        pairs = pairs[dist < lim]
    return pairs


def _drop_weaker(keep: np.ndarray, pairs: np.ndarray, score: np.ndarray) -> None:
    """Greedy suppression in place: visiting the indices by decreasing ``score``, each
    one still in ``keep`` drops the weaker member of every pair it is in."""
    if pairs.size == 0:
        return
    n = len(score)
    order = np.argsort(-score, kind="stable")
    rank = np.empty(n, dtype=np.intp)
    rank[order] = np.arange(n)
    # orient each pair from the stronger to the weaker peak
    first = rank[pairs[:, 0]] < rank[pairs[:, 1]]
    strong = np.where(first, pairs[:, 0], pairs[:, 1])
    weak = np.where(first, pairs[:, 1], pairs[:, 0])
    nbrs = [[] for _ in range(n)]
    for a, b in zip(strong.tolist(), weak.tolist(), strict=True):
        nbrs[a].append(b)
    for i in order.tolist():
        if keep[i]:
            for j in nbrs[i]:
                keep[j] = False


def _empty(ndim: int, threshold: float = 0.0) -> Peaks:
    return Peaks(np.zeros((0, ndim)), np.zeros(0), np.zeros(0), np.zeros(0), float(threshold))
