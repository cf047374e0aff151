"""Nucleus scale from the image: scale-space blob detection.

``nucleus_diameter="auto"`` (the default of :func:`~napari_sinkhorn_em.segment_nuclei`)
is resolved here. The scale-normalised Laplacian of Gaussian
``R_sigma = -sum_d s_d^2 d^2/dx_d^2 (G_s * I)`` of a ball of radius ``r`` in ``n``
dimensions is largest at ``sigma = r / sqrt(n)``, whatever the ball's brightness. We
evaluate it over a geometric ladder of physical scales (4 per octave), find the maxima in
space *and* scale (blobs, each with its own scale), keep the blobs that stand out of the
noise and of their neighbourhood (:func:`local_contrast`), and take the contrast-weighted
median of their diameters ``2 sqrt(n) sigma``.

Sampling is modelled, not assumed: every scale is a physical sigma converted per axis with
the voxel size, with a floor of half a voxel on each axis (a LoG narrower than that only
sees the voxel grid), so a 2 um z-step with 2 um nuclei works as well as 0.2 um. Large
scales run on a block-averaged copy (the grid factor keeps sigma >= 2 grid voxels), so
the cost of the whole ladder is about that of two full-resolution filters.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .noise import given_or_measured_blur, response_noise

__all__ = [
    "Blobs",
    "ScaleEstimate",
    "border_noise_ratio",
    "default_diameter_range",
    "estimate_nucleus_diameter",
    "local_contrast",
    "normalized_log",
    "resolve_diameter",
    "scale_space_blobs",
    "unclipped",
]

# LoG scales per octave of the ladder (sigma ratio 2**0.25 = 1.19: a diameter is
# resolved to within ~10 %, finer than the spread of real nucleus sizes)
_PER_OCTAVE = 4
# at most this many voxels go into the scale estimate (a central block of a bigger stack)
_MAX_VOXELS = 4_000_000
# smallest LoG sigma along any axis, in voxels
_MIN_SIGMA_VOX = 0.5
# a blob's response must exceed this many noise levels of its scale to count
_SIGNIFICANCE = 5.0
# smallest eigenvalue ratio of the Hessian at a blob (a 2:1 ellipsoid at its short
# axis' scale gives ~0.25; the edge of a large ball ~0.05)
_MIN_ROUNDNESS = 0.2
# smallest relative drop of the smoothed intensity from a blob's centre to the mean of the
# 2 ndim points 0.6 diameters away along the axes (touching nuclei of equal size: ~0.5)
_MIN_PROMINENCE = 0.25
# ... measured above the background floor, at most this many voxel-noise standard
# deviations (background_floor) on a background-subtracted signal
_FLOOR_NOISE_LEVELS = 1.0
# ... and at most this many on an image whose background is still in (the whole image's
# scale estimate, estimate_nucleus_diameter, on the image less its 1st percentile)
_RAW_FLOOR_NOISE_LEVELS = 2.5
# ... for maxima at least this many voxel-noise standard deviations above the floor
# (measured from zero below)
_FLOOR_MIN_HEIGHT = 0.5
# an estimate within this factor of the smallest diameter searched (on the two smallest
# scales of the ladder, 2**0.25 = 1.19 apart) is at the search's resolution
# (see diameter_from_blobs)
_FLOOR_STEPS = 1.25


@dataclass
class Blobs:
    """Scale-space maxima of the normalised LoG.

    Attributes
    ----------
    coords : numpy.ndarray, shape (n, ndim)
        Positions in voxel coordinates of the analysed array (float).
    sigma_um : numpy.ndarray, shape (n,)
        Physical LoG scale at which each blob's response is largest.
    response : numpy.ndarray, shape (n,)
        Scale-normalised LoG response (intensity units).
    contrast : numpy.ndarray, shape (n,)
        ``response`` divided by the local mean absolute response plus the noise level
        (see :func:`local_contrast`); dimensionless.
    intensity : numpy.ndarray, shape (n,)
        The image smoothed at each blob's own scale, at the blob (its brightness).
    """

    coords: np.ndarray
    sigma_um: np.ndarray
    response: np.ndarray
    contrast: np.ndarray
    intensity: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.coords.shape[0])

    def diameter_um(self, ndim: int) -> np.ndarray:
        """Ball diameter implied by each blob's scale (``2 sqrt(ndim) sigma``)."""
        return 2.0 * np.sqrt(ndim) * self.sigma_um


@dataclass
class ScaleEstimate:
    """Result of :func:`estimate_nucleus_diameter`.

    Attributes
    ----------
    diameter_um : float
        Estimated typical nucleus diameter (micrometres).
    spread : tuple of float
        10th and 90th percentiles of the accepted blobs' diameters (micrometres).
    n_blobs : int
        Number of blobs the estimate is based on.
    blobs : Blobs
        All scale-space blobs found (before the contrast selection).
    """

    diameter_um: float
    spread: tuple[float, float]
    n_blobs: int
    blobs: Blobs


def _axis_sigmas(sigma_um: float, vs: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """Per-axis sigma in grid voxels (grid = voxels block-averaged by ``factor``)."""
    return np.maximum(sigma_um / (vs * factor), _MIN_SIGMA_VOX)


def _second_diff(a: np.ndarray, axis: int) -> np.ndarray:
    """Central second difference along ``axis`` (edge values replicated)."""
    p = np.pad(a, [(1, 1) if d == axis else (0, 0) for d in range(a.ndim)], mode="edge")
    n = a.shape[axis]
    lo = [slice(None)] * a.ndim
    mid = [slice(None)] * a.ndim
    hi = [slice(None)] * a.ndim
    lo[axis], mid[axis], hi[axis] = slice(0, n), slice(1, n + 1), slice(2, n + 2)
    return p[tuple(lo)] + p[tuple(hi)] - 2.0 * p[tuple(mid)]


def normalized_log(image: np.ndarray, sigma_vox, smoothed: np.ndarray | None = None) -> np.ndarray:
    """Scale-normalised LoG ``-sum_d s_d^2 d^2/dx_d^2 (G_s * image)`` (float32).

    The Gaussian is applied once and the second derivatives are central differences of
    the smoothed image (one filter pass instead of one per axis; the difference from
    derivative-of-Gaussian kernels is below 3 % of the peak response for sigma >= 1
    voxel). Each axis is weighted by its own sigma squared (in voxels, so the result does
    not depend on the voxel size), which keeps the normalisation right when a coarse
    axis has its sigma floored at half a voxel.

    Parameters
    ----------
    image : numpy.ndarray
        2-D/3-D intensities.
    sigma_vox : sequence of float
        Gaussian sigma per axis, in voxels.
    smoothed : numpy.ndarray, optional
        ``G_s * image`` if already computed.

    Returns
    -------
    numpy.ndarray
    """
    s = np.asarray(sigma_vox, dtype=np.float64)
    if smoothed is None:
        smoothed = ndi.gaussian_filter(np.asarray(image, dtype=np.float32), s, mode="nearest")
    out = np.zeros(smoothed.shape, dtype=np.float32)
    for d in range(smoothed.ndim):
        out -= np.float32(s[d] ** 2) * _second_diff(smoothed, d)
    return out


def _hessian_at(smoothed: np.ndarray, points: np.ndarray, sigma_vox) -> np.ndarray:
    """Scale-normalised Hessians ``s_i s_j d_i d_j (G_s * I)`` at integer grid points
    (central differences), shape (n, ndim, ndim)."""
    nd = smoothed.ndim
    s = np.asarray(sigma_vox, dtype=np.float64)
    hi = np.array(smoothed.shape) - 1
    H = np.empty((points.shape[0], nd, nd))

    def val(off):
        q = np.clip(points + off, 0, hi)
        return smoothed[tuple(q.T)].astype(np.float64)

    c = val(np.zeros(nd, dtype=np.int64))
    for i in range(nd):
        e_i = np.eye(nd, dtype=np.int64)[i]
        H[:, i, i] = (val(e_i) + val(-e_i) - 2.0 * c) * s[i] ** 2
        for j in range(i + 1, nd):
            e_j = np.eye(nd, dtype=np.int64)[j]
            h = (val(e_i + e_j) - val(e_i - e_j) - val(-e_i + e_j) + val(-e_i - e_j)) / 4.0
            H[:, i, j] = H[:, j, i] = h * s[i] * s[j]
    return H


def _prominence(
    smoothed: np.ndarray, points: np.ndarray, offset_vox, floor: float = 0.0
) -> np.ndarray:
    """``1 - (mean(ring) - floor) / (centre - floor)`` of the smoothed intensity, the ring
    being the ``2 ndim`` points ``offset_vox`` away along the axes (clipped at the
    border) and ``floor`` the background level (:func:`background_floor`; a ring below
    it counts as the floor; a scalar or one value per point)."""
    nd = smoothed.ndim
    hi = np.array(smoothed.shape) - 1
    centre = smoothed[tuple(points.T)].astype(np.float64) - floor
    ring = np.zeros(points.shape[0])
    for d in range(nd):
        for sgn in (-1, 1):
            q = points.copy()
            q[:, d] = np.clip(q[:, d] + sgn * int(offset_vox[d]), 0, hi[d])
            ring += smoothed[tuple(q.T)]
    ring = np.maximum(ring / (2 * nd) - floor, 0.0)
    return 1.0 - ring / np.maximum(centre, 1e-30)


def _voxel_gain(ndim: int, blur) -> float:
    """One voxel's noise standard deviation per unit white-noise level (1 for white
    noise, more for noise blurred by ``blur`` voxels per axis)."""
    b = np.zeros(ndim) if blur is None else np.asarray(blur, dtype=np.float64)
    return response_noise(np.ones((1,) * ndim), 1.0, b)


def background_floor(smoothed: np.ndarray, noise_cap: float = np.inf) -> float:
    """The background level a nucleus' prominence is measured from: the 10th
    percentile of the smoothed intensity (on at most ~1e6 voxels), at most
    ``noise_cap`` (the plateau that noise alone leaves), 0 if negative.

    Background subtraction leaves the background near 0 on clean images, but under heavy
    noise it takes a low percentile of the raw voxels (noise pulls it 1.3 noise levels
    down) and clips at 0: the background becomes a plateau of rectified noise, and a dim
    nucleus measured from 0 is barely prominent above it (real DSB 2018 image with 10 %
    noise: 22 of 125 nuclei below the prominence bar, found above this floor). That
    plateau is about one voxel-noise standard deviation high (the 10th percentile of the
    smoothed background over the voxel noise: 1.0-1.1 on every noisy benchmark image), so
    the floor is capped there: a background of real light above it (out-of-focus haze
    around an embryo) stays part of the surroundings, and faint bumps on it are not
    prominent."""
    s = np.asarray(smoothed).reshape(-1)
    s = s[:: max(1, s.size // 1_000_000)]
    if not s.size:
        return 0.0
    return float(min(max(np.percentile(s, 10), 0.0), noise_cap))


def on_corner(points: np.ndarray, shape) -> np.ndarray:
    """Per point (integer grid coordinates): whether it lies on the border of every axis
    of at least 8 voxels (a corner of the image; False when no axis is that long)."""
    pts = np.asarray(points, dtype=np.int64).reshape(-1, len(shape))
    long_axes = [a for a, n in enumerate(shape) if n >= 8]
    out = np.full(pts.shape[0], bool(long_axes))
    for a in long_axes:
        out &= (pts[:, a] == 0) | (pts[:, a] == shape[a] - 1)
    return out


def blob_shape(hessians: np.ndarray) -> np.ndarray:
    """How round a maximum is: the smallest over the largest eigenvalue of ``-H``
    (1 for a ball at its own scale, ~0 on an edge or ridge, < 0 at a saddle)."""
    w = np.linalg.eigvalsh(-hessians)
    return w[:, 0] / np.maximum(w[:, -1], 1e-30)


def _block_mean(image: np.ndarray, factor) -> np.ndarray:
    """Average over non-overlapping blocks of ``factor`` voxels (border blocks cropped)."""
    f = tuple(int(v) for v in factor)
    if all(v == 1 for v in f):
        return image
    shp = tuple(max(1, n // v) for n, v in zip(image.shape, f, strict=True))
    crop = image[tuple(slice(0, n * v) for n, v in zip(shp, f, strict=True))]
    # axes with fewer voxels than the factor keep one (partial) block
    f = tuple(min(v, c) for v, c in zip(f, crop.shape, strict=True))
    new = []
    for n, v in zip(shp, f, strict=True):
        new += [n, v]
    return crop.reshape(new).mean(axis=tuple(range(1, 2 * image.ndim, 2)), dtype=np.float32)


def local_contrast(response: np.ndarray, window_vox, noise: float) -> np.ndarray:
    """Response relative to its neighbourhood: ``R / (mean_window |R| + noise)``.

    A nucleus 5x dimmer than its neighbours has a 5x smaller LoG response, but so has
    the whole neighbourhood of a dim region (depth attenuation, weak expression): divided
    by the local mean absolute response, nuclei score alike wherever they are. The noise
    term (the LoG response level of the background) keeps empty regions, where the local
    mean is noise only, from being amplified into detections.

    Parameters
    ----------
    response : numpy.ndarray
        LoG response (any sign).
    window_vox : sequence of int
        Box size per axis (voxels) of the local mean.
    noise : float
        Noise level of the response (same units), > 0.

    Returns
    -------
    numpy.ndarray
        float32 contrast, same shape.
    """
    m = ndi.uniform_filter(np.abs(response), size=tuple(int(w) for w in window_vox), mode="nearest")
    m += np.float32(max(noise, 1e-12))
    return (response / m).astype(np.float32, copy=False)


def _noise_level(response: np.ndarray, where: np.ndarray | None = None) -> float:
    """Robust noise level of a LoG response: 1.4826 x the median absolute value over the
    image (background dominates the median in nucleus images; blobs and their rings
    are a minority), floored at 1e-3 of the largest response; over ``where`` only when
    given (:func:`unclipped`)."""
    s = response.reshape(-1)
    step = max(1, s.size // 1_000_000)
    a = np.abs(s[::step])
    top = float(a.max()) if a.size else 0.0
    if where is not None:
        a = np.abs(response[where])
    return float(max(1.4826 * np.median(a), 1e-3 * top, 1e-12))


# unclipped: at least this fraction and at most this fraction of the voxels at the
# image's minimum, and at least this many voxels off it
_CLIP_MIN_FRACTION = 0.25
_CLIP_MAX_FRACTION = 0.9
_CLIP_MIN_LIVE = 2000


def unclipped(image: np.ndarray) -> np.ndarray | None:
    """The voxels neither at the image's minimum nor next to one, when
    25-90 % of the voxels sit exactly at the minimum (a black level set high and clipped
    at 0, as confocal and camera software leave it; our own background subtraction
    clips about 10 %, which the blob tests were measured with); None otherwise, or when
    fewer than 2000 voxels are left.

    The noise level of the blob tests is measured there: clipped noise is half zeros,
    its LoG response far weaker than that of the same noise in the tissue, where the
    signal lifts it above the floor. A whole-brain stack whose background was cut at its
    median (52 % zeros) gave 182 objects for 135 neurons (53 false); measured on the
    voxels off the floor, 131 (2). Mostly-zero images (DoG-filtered recordings, 93-98 %
    zeros) keep the whole image: what is off the floor there is the nuclei."""
    a = np.asarray(image)
    if a.size == 0:
        return None
    at = a == a.min()
    frac = float(at.mean())
    if not _CLIP_MIN_FRACTION <= frac <= _CLIP_MAX_FRACTION:
        return None
    live = ~ndi.binary_dilation(at)
    return live if int(live.sum()) >= _CLIP_MIN_LIVE else None


def _noise_where(image: np.ndarray, factor) -> np.ndarray | None:
    """:func:`unclipped` on the grid block-averaged by ``factor`` (blocks wholly off the
    floor)."""
    live = unclipped(image)
    if live is None:
        return None
    f = np.asarray(factor, dtype=np.int64)
    if np.all(f == 1):
        return live
    grid = _block_mean(live.astype(np.float32), f) >= 1.0 - 1e-6
    return grid if int(grid.sum()) >= _CLIP_MIN_LIVE // int(np.prod(f)) + 1 else None


def _log_kernel(sigma_vox) -> np.ndarray:
    """The :func:`normalized_log` kernel of ``sigma_vox`` (its response to a unit
    impulse, float64)."""
    s = np.asarray(sigma_vox, dtype=np.float64)
    half = np.ceil(4.0 * s).astype(int) + 2
    delta = np.zeros(tuple(2 * h + 1 for h in half), dtype=np.float32)
    delta[tuple(half)] = 1.0
    return normalized_log(delta, s).astype(np.float64)


def _central_block(image: np.ndarray, max_voxels: int) -> tuple[np.ndarray, np.ndarray]:
    """A block of at most ``max_voxels`` centred on the intensity centre of mass."""
    if image.size <= max_voxels:
        return image, np.zeros(image.ndim, dtype=np.int64)
    frac = (max_voxels / image.size) ** (1.0 / image.ndim)
    size = np.maximum(1, (np.array(image.shape) * frac).astype(np.int64))
    w = np.maximum(image - np.median(image[:: max(1, image.shape[0] // 8)]), 0)
    com = np.array(ndi.center_of_mass(w)) if w.sum() > 0 else np.array(image.shape) / 2.0
    lo = np.clip(np.round(com - size / 2).astype(np.int64), 0, np.array(image.shape) - size)
    return image[tuple(slice(a, a + s) for a, s in zip(lo, size, strict=True))], lo


def scale_space_blobs(
    image: np.ndarray,
    voxel_size,
    *,
    diameter_range: tuple[float, float] | None = None,
    contrast_window: float = 2.0,
    noise_blur_voxels=None,
    floor_noise_levels: float = _FLOOR_NOISE_LEVELS,
) -> Blobs:
    """Maxima of the scale-normalised LoG in space and scale.

    Parameters
    ----------
    image : numpy.ndarray
        2-D/3-D intensity image (e.g. the channel mean).
    voxel_size : sequence of float
        Voxel size in micrometres per axis.
    diameter_range : (float, float), optional
        Nucleus diameters (micrometres) to search. Default: from 3 voxels of the finest
        axis to a third of the smallest extent of the image (at most 40 voxels of the
        finest axis per sigma, beyond which nuclei would be 300+ voxels across).
    contrast_window : float
        Size of the local-contrast window in units of each scale's diameter.
    noise_blur_voxels : sequence of float, optional
        The image's :func:`~napari_sinkhorn_em.pipeline.noise.noise_blur`, when the
        caller has measured it; default: measured here.
    floor_noise_levels : float
        Cap of the background floor the prominence test measures from, in voxel-noise
        standard deviations (:func:`background_floor`): 1 for a background-subtracted
        signal, more for an image whose background is still in.

    Returns
    -------
    Blobs
    """
    img, vs = _image_and_voxel_size(image, voxel_size)
    ndim = img.ndim
    if diameter_range is None:
        d_lo, d_hi = default_diameter_range(img.shape, vs)
    else:
        d_lo, d_hi = (float(v) for v in diameter_range)
        if not 0 < d_lo < d_hi:
            raise ValueError(f"diameter_range must satisfy 0 < lo < hi, got {diameter_range}")
    s_lo = d_lo / (2.0 * np.sqrt(ndim))
    s_hi = d_hi / (2.0 * np.sqrt(ndim))
    n_scales = max(3, int(np.ceil(np.log2(s_hi / s_lo) * _PER_OCTAVE)) + 1)
    sigmas = s_lo * (s_hi / s_lo) ** (np.arange(n_scales) / (n_scales - 1))
    # one extra scale on each side so that the end scales can be maxima in scale
    ratio = sigmas[1] / sigmas[0]
    sigmas = np.concatenate([[sigmas[0] / ratio], sigmas, [sigmas[-1] * ratio]])

    levels = [_level(img, vs, s) for s in sigmas]
    # noise level of each scale: the pixel noise (from the finest scale, where the
    # background's response is noise) times the filter's L2 norm on its grid, divided by
    # the block averaging's sqrt(voxels per block); exact also for floored axes. For
    # correlated noise (noise.noise_blur) the norms are those of the blurred filters
    blur = given_or_measured_blur(img, noise_blur_voxels)
    where = _noise_where(img, levels[0][0])
    pixel_noise = _noise_level(levels[0][1], where) / _level_norm(sigmas[0], vs, levels[0][0], blur)
    parts = []
    for k in range(1, len(sigmas) - 1):
        factor, r, rmax, _ = levels[k]
        cand = np.argwhere((r == rmax) & (r > 0))
        if cand.size == 0:
            continue
        val = r[tuple(cand.T)]
        centre_vox = (cand + 0.5) * factor - 0.5  # in full-resolution voxels
        ok = np.ones(cand.shape[0], dtype=bool)
        for kk in (k - 1, k + 1):
            f2, _, rmax2, _ = levels[kk]
            j = np.clip(np.round((centre_vox + 0.5) / f2 - 0.5).astype(np.int64), 0,
                        np.array(rmax2.shape) - 1)  # fmt: skip
            ok &= val >= rmax2[tuple(j.T)]
        if ok.any():
            parts.append(
                _score(
                    levels[k],
                    sigmas[k],
                    vs,
                    cand[ok],
                    pixel_noise,
                    contrast_window,
                    blur,
                    floor_noise_levels,
                )
            )
    return _concat(parts, ndim)


def single_scale_blobs(
    image: np.ndarray,
    voxel_size,
    diameter: float,
    *,
    contrast_window: float = 2.0,
    noise_blur_voxels=None,
) -> Blobs:
    """Spatial maxima of the scale-normalised LoG at one scale (that of a ball of
    ``diameter`` um), scored like :func:`scale_space_blobs` (significance, roundness,
    prominence, local contrast) but without the test for a maximum across scales.

    A nucleus whose response keeps rising towards finer scales (a small neuron sampled by
    one or two z-planes, whose z-curvature the finest scales exaggerate) has no maximum
    in scale inside the searched range: measured on the synthetic whole-brain stack at
    2 um z-steps, 18 of 135 neurons, isolated ones too, had none.

    Parameters
    ----------
    image : numpy.ndarray
        2-D/3-D intensity image.
    voxel_size : sequence of float
        Voxel size in micrometres per axis.
    diameter : float
        Ball diameter (um) whose optimal scale ``diameter / (2 sqrt(ndim))`` is used.
    contrast_window : float
        Size of the local-contrast window in diameters.
    noise_blur_voxels : sequence of float, optional
        The image's :func:`~napari_sinkhorn_em.pipeline.noise.noise_blur`, when the
        caller has measured it; default: measured here.

    Returns
    -------
    Blobs
    """
    img, vs = _image_and_voxel_size(image, voxel_size)
    ndim = img.ndim
    if not diameter > 0:
        raise ValueError(f"diameter must be > 0 um, got {diameter}")
    sigma = diameter / (2.0 * np.sqrt(ndim))
    # the pixel noise from the scale that scale_space_blobs measures it at when searching
    # 0.5-2x this diameter (its finest, one step below the range)
    s_fine = 0.5 * sigma / 2.0 ** (1.0 / _PER_OCTAVE)
    fine = _level(img, vs, s_fine)
    blur = given_or_measured_blur(img, noise_blur_voxels)
    pixel_noise = _noise_level(fine[1], _noise_where(img, fine[0])) / _level_norm(
        s_fine, vs, fine[0], blur
    )
    del fine
    lev = _level(img, vs, sigma)
    _, r, rmax, _ = lev
    cand = np.argwhere((r == rmax) & (r > 0))
    if cand.size == 0:
        return _concat([], ndim)
    return _concat([_score(lev, sigma, vs, cand, pixel_noise, contrast_window, blur)], ndim)


def _image_and_voxel_size(image, voxel_size) -> tuple[np.ndarray, np.ndarray]:
    """``image`` as float32 and ``voxel_size`` as float64, one entry per axis."""
    img = np.asarray(image, dtype=np.float32)
    vs = np.asarray(voxel_size, dtype=np.float64)
    if vs.shape != (img.ndim,):
        raise ValueError(f"voxel_size must have {img.ndim} entries, got {vs.shape}")
    return img, vs


def default_diameter_range(shape, voxel_size) -> tuple[float, float]:
    """The diameters (um) :func:`scale_space_blobs` searches by default: from 3 voxels of
    the finest axis to a third of the smallest extent of the image (axes of at least 4
    voxels), at most 40 voxels of the finest axis per sigma."""
    vs = np.asarray(voxel_size, dtype=np.float64)
    ndim = vs.size
    extent = np.array(shape) * vs
    # axes with at least 4 voxels bound the search (a 2-plane stack says nothing in z)
    big = np.array(shape) >= 4
    d_lo = 3.0 * float(vs.min())
    d_hi = max(d_lo * 1.5, float(extent[big].min() if big.any() else extent.max()) / 3.0)
    d_hi = min(d_hi, 40.0 * 2.0 * np.sqrt(ndim) * float(vs.min()))
    return d_lo, d_hi


def _level(img: np.ndarray, vs: np.ndarray, sigma: float):
    """``(factor, response, max-filtered response, smoothed)`` of one scale, on the grid
    block-averaged by ``factor`` (about half a sigma per block)."""
    factor = np.maximum(1, np.floor(sigma / vs / 2.0)).astype(np.int64)
    factor = np.minimum(factor, np.maximum(1, np.array(img.shape) // 4))
    grid = _block_mean(img, factor)
    sv = _axis_sigmas(sigma, vs, factor)
    sm = ndi.gaussian_filter(grid, sv, mode="nearest")
    r = normalized_log(grid, sv, smoothed=sm)
    return factor, r, ndi.maximum_filter(r, size=3, mode="nearest"), sm


def _level_norm(sigma: float, vs: np.ndarray, factor: np.ndarray, blur=None) -> float:
    """Response of one scale's filter (block mean by ``factor``, then the LoG on the
    grid) to unit white noise blurred by ``blur`` voxels per axis (None or 0: white)."""
    k = _log_kernel(_axis_sigmas(sigma, vs, factor))
    if blur is None or not np.any(np.asarray(blur) > 0):
        return float(np.sqrt((k**2).sum())) / np.sqrt(np.prod(factor))
    f = np.asarray(factor, dtype=np.int64)
    # the weight of each full-resolution voxel: its block's grid weight over the block size
    for a in range(k.ndim):
        k = np.repeat(k, int(f[a]), axis=a)
    return response_noise(k / float(np.prod(f)), 1.0, blur)


def _score(
    level,
    sigma: float,
    vs,
    cand,
    pixel_noise: float,
    contrast_window: float,
    blur=None,
    floor_noise_levels: float = _FLOOR_NOISE_LEVELS,
):
    """``(coords, sigma, response, contrast, intensity)`` of the candidate maxima ``cand``
    (grid coordinates) of one scale: local contrast, zeroed when the maximum is not
    significant, not round or not prominent."""
    factor, r, _, sm = level
    ndim = r.ndim
    val = r[tuple(cand.T)]
    centre_vox = (cand + 0.5) * factor - 0.5  # in full-resolution voxels
    d_um = 2.0 * np.sqrt(ndim) * sigma
    win = np.maximum(1, np.round(contrast_window * d_um / (vs * factor))).astype(int) | 1
    noise_k = pixel_noise * _level_norm(sigma, vs, factor, blur)
    c = local_contrast(r, win, noise_k)[tuple(cand.T)]
    # significance: a maximum of pure noise rarely exceeds ~4 noise levels (on the
    # image's border planes, of that plane's noise)
    c = np.where(val > _SIGNIFICANCE * noise_k * border_noise_ratio(r, cand), c, 0.0)
    # roundness: edges of large nuclei and ridges are maxima of the LoG too
    shape = blob_shape(_hessian_at(sm, cand, _axis_sigmas(sigma, vs, factor)))
    c = np.where(shape >= _MIN_ROUNDNESS, c, 0.0)
    # prominence: a nucleus stands above its surroundings at ~0.6 diameters from its
    # centre; texture inside a larger nucleus (or on a plateau) does not. Measured above
    # the background floor: a noise plateau left by background subtraction is not part
    # of a nucleus' height
    offset = np.maximum(1, np.round(0.6 * d_um / (vs * factor)))
    voxel_noise = pixel_noise * _voxel_gain(ndim, blur)
    floor = background_floor(sm, floor_noise_levels * voxel_noise)
    # ... for maxima standing clearly above it; a faint swell of the background (the
    # rise of a background-subtracted stack towards its corners) is measured from zero
    high = sm[tuple(cand.T)] - floor >= _FLOOR_MIN_HEIGHT * voxel_noise
    prom = _prominence(sm, cand, offset, np.where(high, floor, 0.0))
    c = np.where(prom >= _MIN_PROMINENCE, c, 0.0)
    # a maximum in a corner of the image sees the filters' edge extension on every side:
    # a blur of noise there passed all tests (real QCANet embryo, 16-cell stage: one
    # false nucleus in a corner of pure background)
    c = np.where(on_corner(cand, r.shape), 0.0, c)
    return (
        centre_vox,
        np.full(cand.shape[0], sigma),
        val.astype(np.float64),
        c.astype(np.float64),
        sm[tuple(cand.T)].astype(np.float64),
    )


def border_noise_ratio(response: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Per point (integer grid coordinates of ``response``): how much noisier the LoG
    response is on the border plane the point lies on than over the whole image (the
    ratio of the median absolute responses, at least 1; on a corner the product of its
    planes' ratios, as the edge extension repeats the noise along each of them; 1 off
    the border and on axes shorter than 8).

    The filters extend the image by its edge voxels, so a border plane's noise enters the
    response twice; registered (motion-corrected) stacks also repeat or leave unaveraged
    their edge rows, whose noise is then up to 2x that of the interpolated interior.
    Tested against the interior's noise, noise maxima on the border pass as nuclei:
    synthetic whole-brain stacks shifted by half a pixel found 149-156 objects for 135
    neurons (F1 0.85-0.89), every false one on the first row or column; with this test
    122-136 (F1 0.93-0.95); unshifted (seeds 0-2) 0.95 / 0.98 / 0.95 against 0.95 /
    0.97 / 0.93."""
    r = np.asarray(response)
    pts = np.asarray(points, dtype=np.int64).reshape(-1, r.ndim)
    ratio = np.ones(pts.shape[0])
    if pts.shape[0] == 0:
        return ratio
    sub = r[tuple(slice(None, None, max(1, n // 64)) for n in r.shape)]
    whole = float(np.median(np.abs(sub)))
    if whole <= 0:
        return ratio
    for a, n in enumerate(r.shape):
        if n < 8:
            continue
        for end in (0, n - 1):
            on = pts[:, a] == end
            if on.any():
                plane = float(np.median(np.abs(np.take(r, end, axis=a))))
                ratio[on] *= max(plane / whole, 1.0)
    return ratio


def _concat(parts: list, ndim: int) -> Blobs:
    if not parts:
        z = np.zeros(0)
        return Blobs(np.zeros((0, ndim)), z, z.copy(), z.copy(), z.copy())
    return Blobs(*(np.concatenate([p[i] for p in parts]) for i in range(5)))


def estimate_nucleus_diameter(
    image: np.ndarray,
    voxel_size,
    *,
    diameter_range: tuple[float, float] | None = None,
    min_contrast: float = 1.0,
) -> ScaleEstimate:
    """Typical nucleus diameter of an image from its scale-space blobs.

    Blobs (:func:`scale_space_blobs`) whose local contrast is at least ``min_contrast``
    and whose response is at least a quarter of the 95th percentile of those are the
    nuclei; the estimate is the contrast-weighted median of their diameters (a nucleus
    counts by how much it stands out, whatever its brightness). Noise
    maxima fail the contrast test, and the few maxima of clusters of nuclei (the LoG of
    a clump at the clump's scale) are outweighed by the many nuclei.

    The image's background is still in (the pipeline passes the channels less their 1st
    percentile): a flat background with noise sits about 2.3 voxel-noise levels above
    zero there (the 1st percentile of Gaussian noise), so the prominence test measures
    from a floor of up to :data:`_RAW_FLOOR_NOISE_LEVELS` levels, not the one level of
    a background-subtracted signal. With one level, the nuclei of the real DSB 2018
    image at 2 % of its photons stood 0.07-0.17 above their ring (the bar is 0.25), and
    three noise blobs set the estimate: 6.0 um for 20 (5 % of the photons: 16.9).

    Parameters
    ----------
    image : numpy.ndarray
        2-D/3-D intensities (the channel mean for multichannel data).
    voxel_size : sequence of float
        Voxel size in micrometres.
    diameter_range : (float, float), optional
        Search range (micrometres); see :func:`scale_space_blobs`.
    min_contrast : float
        Smallest local contrast of a blob used for the estimate.

    Returns
    -------
    ScaleEstimate

    Raises
    ------
    ValueError
        When the image holds no blob at all (e.g. it is flat noise).
    """
    img = np.asarray(image, dtype=np.float32)
    vs = np.asarray(voxel_size, dtype=np.float64)
    block, _ = _central_block(img, _MAX_VOXELS)
    blobs = scale_space_blobs(
        block, vs, diameter_range=diameter_range, floor_noise_levels=_RAW_FLOOR_NOISE_LEVELS
    )
    if len(blobs) == 0:
        raise ValueError(
            "cannot estimate the nucleus diameter: no blob-like structure in the image; "
            "give nucleus_diameter (um)"
        )
    floor = diameter_range[0] if diameter_range is not None else None
    if floor is None:
        floor = default_diameter_range(block.shape, vs)[0]
    return diameter_from_blobs(
        blobs,
        img.ndim,
        min_contrast=min_contrast,
        floor_um=floor,
        leave_out_bright=True,
        voxel_size=vs,
    )


def diameter_from_blobs(
    blobs: Blobs,
    ndim: int,
    *,
    min_contrast: float = 1.0,
    floor_um: float | None = None,
    leave_out_bright: bool = False,
    voxel_size=None,
) -> ScaleEstimate:
    """The typical diameter of :func:`estimate_nucleus_diameter` from blobs already found
    (e.g. those of a detection over 0.5-2x a previous diameter): the contrast-weighted
    median diameter of the blobs with local contrast >= ``min_contrast`` and a response
    of at least a quarter of their 95th percentile. ``blobs`` must not be empty.

    ``floor_um``: the smallest diameter searched. When the estimate lands on the two
    smallest scales of the ladder, within 1.25x of it (the blobs there are at or below
    the search's resolution: bright sub-micrometre granules, noise) and at least 5
    selected blobs, and a fifth of them, are larger, the estimate is taken from those
    larger blobs alone (a 2-D worm head with as many gut granules as nuclei: 1.05 um,
    the floor, instead of 2.4 um).

    ``leave_out_bright``: blobs whose smoothed intensity is an outlier far above the rest
    (:func:`high_outliers`: debris, dust) neither set the strong level nor vote. A whole
    image's estimate (:func:`estimate_nucleus_diameter`) does this: 20 spots 20x brighter
    than the neurons of a whole-brain stack gave 1.58 um for 1.87, and an embryo of 100
    nuclei 1.74 um for 4.3. By intensity, not response: the large nuclei of the real
    QCANet 8-cell stack are response outliers among their own texture blobs. Not for the
    tracker's frame-to-frame estimate from the blobs around the previous diameter: on the
    DoG-filtered real targettrack frames the brightest neurons are such outliers, and the
    chained estimate fell 1.69 -> 1.20 -> 0.60 um over two frames.

    With ``voxel_size`` (also for the tracker's frame-to-frame estimate) the blobs that
    are local outliers do not vote: smoothed intensity above :data:`LOCAL_OUTLIER` x the
    median of their :data:`LOCAL_NEIGHBOURS` nearest blobs (a condensed mitotic nucleus,
    10x brighter than in interphase; a bright spot among dim nuclei). Local, so that
    depth attenuation and uneven expression are no outliers: 15 % of the nuclei of a
    synthetic 370-nucleus embryo in metaphase gave 2.05 um for 2.50 (2.42 without
    mitoses), 2.42 with the test; no row of the real-data benchmark changes, nor of
    ``bench_tracking.py --quick``."""
    sel = blobs.contrast >= min_contrast
    if sel.sum() < 3:  # a very clean or tiny image: the strongest blobs
        sel = blobs.response >= np.sort(blobs.response)[-min(len(blobs), 3)]
    vs = None if voxel_size is None else np.asarray(voxel_size, dtype=np.float64)
    est = _weighted_median_diameter(blobs, ndim, sel, leave_out_bright, vs)
    if floor_um is not None and est[0] <= _FLOOR_STEPS * floor_um:
        resolved = sel & (blobs.diameter_um(ndim) > _FLOOR_STEPS * floor_um)
        if resolved.sum() >= max(5, 0.2 * sel.sum()):
            est = _weighted_median_diameter(blobs, ndim, resolved, leave_out_bright, vs)
    med, (lo, hi), n = est
    return ScaleEstimate(med, (lo, hi), n, blobs)


def _weighted_median_diameter(
    blobs: Blobs, ndim: int, sel: np.ndarray, leave_out_bright: bool = False, vs=None
):
    """``(median, (p10, p90), n)`` of :func:`diameter_from_blobs` over the blobs ``sel``."""
    resp = blobs.response[sel]
    usual = np.ones(resp.shape, dtype=bool)
    if leave_out_bright and blobs.intensity is not None:
        usual = ~high_outliers(blobs.intensity[sel])
        if not usual.any():
            usual[:] = True
    strong = usual & (resp >= 0.25 * np.percentile(resp[usual], 95))
    idx = np.flatnonzero(sel)[strong]
    if vs is not None and blobs.intensity is not None:
        idx = idx[~_local_outliers(blobs.coords[idx] * vs, blobs.intensity[idx])]
    d = blobs.diameter_um(ndim)[idx]
    # weighted by local contrast, not by response: the response grows with brightness,
    # and two bright nuclei with textured cores outweighed six dim ones (QCANet 8-cell:
    # 7.8 um by response, 12.8 by contrast, masks 16.8; elsewhere within 0.05 um)
    w = blobs.contrast[idx]
    order = np.argsort(d)
    cw = np.cumsum(w[order])
    med = float(d[order][np.searchsorted(cw, 0.5 * cw[-1])])
    lo, hi = np.percentile(d, [10, 90])
    return med, (float(lo), float(hi)), int(idx.size)


# a blob brighter than this many times the median of its this many nearest blobs is a
# local outlier (diameter_from_blobs)
LOCAL_OUTLIER = 2.5
LOCAL_NEIGHBOURS = 6


def _local_outliers(points_um: np.ndarray, intensity: np.ndarray) -> np.ndarray:
    """Which blobs are local outliers (:data:`LOCAL_OUTLIER`); none when there are fewer
    than ``LOCAL_NEIGHBOURS + 2`` blobs, or when fewer than 3 would be left."""
    from scipy.spatial import cKDTree

    n = points_um.shape[0]
    if n < LOCAL_NEIGHBOURS + 2:
        return np.zeros(n, dtype=bool)
    nb = cKDTree(points_um).query(points_um, k=LOCAL_NEIGHBOURS + 1)[1][:, 1:]
    ref = np.median(intensity[nb], axis=1)
    out = intensity > LOCAL_OUTLIER * np.maximum(ref, 1e-12)
    return out if n - out.sum() >= 3 else np.zeros(n, dtype=bool)


# a value more than this many interquartile ranges of the log values (the range taken at
# least a factor 2 wide) above their upper quartile is an outlier: blobs of bright debris,
# dust, a bead (high_outliers)
OUTLIER_IQR = 2.0


def high_outliers(values) -> np.ndarray:
    """Which of ``values`` (blob responses or intensities) lie more than
    :data:`OUTLIER_IQR` interquartile ranges of the log values (taken at least log 2 wide)
    above the upper quartile: objects far brighter than the nuclei. None with fewer than
    8 positive values."""
    r = np.asarray(values, dtype=np.float64)
    pos = r[r > 0]
    if pos.size < 8:
        return np.zeros(r.shape, dtype=bool)
    q1, q3 = np.percentile(np.log(pos), [25, 75])
    return r > np.exp(q3 + OUTLIER_IQR * max(q3 - q1, np.log(2.0)))


def resolve_diameter(nucleus_diameter, name: str = "nucleus_diameter"):
    """Check a ``nucleus_diameter`` argument: a positive number or "auto".

    Returns
    -------
    float or None
        The number, or None for "auto" (None is accepted as "auto" too).
    """
    if nucleus_diameter is None or (
        isinstance(nucleus_diameter, str) and nucleus_diameter == "auto"
    ):
        return None
    if isinstance(nucleus_diameter, (bool, str)) or not isinstance(
        nucleus_diameter, (int, float, np.integer, np.floating)
    ):
        raise ValueError(
            f"{name} must be a positive number of um or 'auto', got {nucleus_diameter!r}"
        )
    d = float(nucleus_diameter)
    if not (np.isfinite(d) and d > 0):
        raise ValueError(
            f"{name} must be a positive number of um or 'auto', got {nucleus_diameter!r}"
        )
    return d
