"""Contrast-relative foreground: each nucleus at its own brightness.

One global threshold (Otsu) of an image whose nuclei differ 5-10x in brightness (depth
attenuation, interior cells of an embryo, weak expression) keeps the bright nuclei and
drops the dim ones. Here every detected nucleus gets its own level:

* :func:`nucleus_extents` -- a resolved nucleus (radius at least
  :data:`MIN_RESOLVED_RADIUS` voxels of the coarsest axis) is the region of its own
  watershed territory above the level half-way between its local background and its
  bulk (the median of the region, iterated): a textured nucleus with a dim rim gets the
  rim, which its half maximum misses;
* :func:`local_foreground` -- the voxels within ``reach`` radii of a peak whose signal is
  at least ``fraction`` of that peak's smoothed intensity (half maximum by default: for a
  blurred ball the half-maximum contour is its edge), for the others.

The union with the global foreground keeps everything the global threshold found.

Used by :func:`~napari_sinkhorn_em.segment_nuclei` in the local mode
(``nucleus_diameter="auto"`` or ``local_contrast=True``).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from .cleanup import fill_holes

__all__ = [
    "component_cap",
    "foreground_is_mostly_nuclei",
    "local_foreground",
    "near_mask",
    "nucleus_extents",
]


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


def near_mask(shape, centres_vox, vs, radii_um) -> np.ndarray:
    """Voxels within ``radii_um`` of a centre (balls drawn in boxes around each)."""
    out = np.zeros(shape, dtype=bool)
    for c, r in zip(centres_vox, radii_um, strict=True):
        lo = np.maximum(np.floor(c - r / vs), 0).astype(int)
        hi = np.minimum(np.ceil(c + r / vs) + 1, shape).astype(int)
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        grids = np.ogrid[box]
        d2 = sum(((g - ci) * v) ** 2 for g, ci, v in zip(grids, c, vs, strict=True))
        out[box] |= d2 <= r * r
    return out


# Percentile of the smoothed signal in a nucleus' territory taken as its local background
# (the dark part of the territory: the gap around an isolated nucleus, the valleys
# between packed ones).
BACKGROUND_PERCENTILE = 10.0
# Steps of the plateau iteration (it converged within 3-6 on every benchmark image).
MAX_LEVEL_STEPS = 10
# Radius (in voxels of the coarsest axis) from which a nucleus has an interior of its own.
# Below it the nucleus is blur-dominated (its edge sits at or above half its maximum) and
# keeps the half-maximum foreground of :func:`local_foreground`. Measured with the plateau
# level on every nucleus (this limit 0): AP50 of the embryos of 100 / 200 / 370 nuclei
# (radius 2.1-1.2 z-steps) 1.00 / 0.98 / 0.95 -> 1.00 / 0.91 / 0.78, whole brain (0.5
# z-steps) 0.80 -> 0.69, NeuroPAL-like head (1.5) 0.95 -> 0.88; the labels grew 10-50 %
# past the true masks. QCANet (3.7 z-steps), the embryo of 30 nuclei (3.4), the 2-D field
# and DSB 2018 (>= 8 pixels) are above it.
MIN_RESOLVED_RADIUS = 2.5


def nucleus_extents(
    signal: np.ndarray,
    voxel_size,
    centres_vox: np.ndarray,
    radii_um: np.ndarray,
    *,
    reach: float = 1.75,
) -> tuple[np.ndarray, np.ndarray]:
    """Each resolved nucleus' own extent: half-way between its local background and the
    level of its bulk, inside its own territory.

    For a blurred flat-topped nucleus the edge is where the signal is half-way between
    the background and the plateau. Real nuclei are not flat-topped: chromatin makes the
    maximum a bright spot well above the bulk of the nucleus, and a dim rim surrounds it
    (QCANet mouse embryos: bulk median 0.33 of the maximum, mask edge at 0.16), so that a
    half-maximum level keeps the bright core only. Per nucleus ``i``:

    1. its territory: the watershed basin of its centre on the (negated) signal, within
       ``reach`` radii of the centre; no extent enters another nucleus' territory;
    2. its maximum ``p``: the largest signal of the territory within half a radius of the
       centre (the seed); its local background ``b``: the
       :data:`BACKGROUND_PERCENTILE` th percentile of the signal in the territory; its
       pass ``s``: the brightest voxel of the territory next to another territory;
    3. the level ``t``, starting at ``b + (p - b) / 2``, is iterated as
       ``t = max(b + (m(t) - b) / 2, s)`` with ``m(t)`` the median signal of the region
       at ``t`` (the connected part of the territory at or above ``t`` that holds the
       seed): half-way between the background and the bulk. The iteration only lowers
       ``t`` and stops when it no longer moves (or after :data:`MAX_LEVEL_STEPS`); it never
       goes below the pass, so a nucleus does not fill the gap towards a neighbour;
    4. the extent is the region at ``t`` with its holes filled (within the territory).
       Being connected at ``t``, it never crosses a gap darker than ``t``.

    For a flat-topped nucleus ``m`` stays near ``p`` and the level near the half maximum;
    a textured nucleus with a dim rim reaches out to half its bulk's level.

    Nuclei get no extent here (NaN level) when they are not resolved (radius below
    :data:`MIN_RESOLVED_RADIUS` voxels of the coarsest axis), when their pass is at or
    above their starting level (a dim nucleus on a bright neighbour's flank: no level
    separates it), or when their maximum is not above their background; the caller keeps
    the half-maximum foreground (:func:`local_foreground`) for those.

    Parameters
    ----------
    signal : numpy.ndarray
        Background-subtracted intensity (spatial shape), smoothed (voxel noise otherwise
        punches holes into the levels).
    voxel_size : sequence of float
        Voxel size in micrometres.
    centres_vox : numpy.ndarray, shape (K, ndim)
        Detected nucleus centres (voxel coordinates), strongest first (of two centres in
        one voxel the first keeps it).
    radii_um : numpy.ndarray, shape (K,)
        Radius of each nucleus (micrometres), e.g. from its LoG scale.
    reach : float
        Territories extend to ``reach`` radii from the centre.

    Returns
    -------
    extents : numpy.ndarray of int32
        0 = outside every extent, ``i + 1`` = the extent of nucleus ``i``.
    levels : numpy.ndarray, shape (K,)
        The level ``t`` of each nucleus' extent (signal units; NaN for a nucleus without
        one).
    """
    from skimage.segmentation import watershed

    sig = np.asarray(signal, dtype=np.float32)
    vs = np.asarray(voxel_size, dtype=np.float64)
    K = centres_vox.shape[0]
    out = np.zeros(sig.shape, dtype=np.int32)
    levels = np.full(K, np.nan)
    if K == 0:
        return out, levels
    radii = np.maximum(np.asarray(radii_um, dtype=np.float64), 1e-6)
    if not np.any(radii >= MIN_RESOLVED_RADIUS * vs.max()):
        return out, levels
    centre_idx = np.clip(np.rint(centres_vox).astype(int), 0, np.array(sig.shape) - 1)
    markers = np.zeros(sig.shape, dtype=np.int32)
    # the later (weaker) of two peaks in one voxel loses its marker and gets no extent
    markers[tuple(centre_idx[::-1].T)] = np.arange(K, 0, -1, dtype=np.int32)
    near = near_mask(sig.shape, centres_vox, vs, reach * radii)
    basins = watershed(-sig, markers=markers, mask=near)
    boxes = ndi.find_objects(basins, max_label=K)
    for i, box in enumerate(boxes):
        if box is None or radii[i] < MIN_RESOLVED_RADIUS * vs.max():
            # blur-dominated: no interior to take a plateau from (left to the caller)
            continue
        # one voxel of margin: the neighbours' basins next to this one
        box = tuple(
            slice(max(b.start - 1, 0), min(b.stop + 1, n))
            for b, n in zip(box, sig.shape, strict=True)
        )
        bas = basins[box]
        terr = bas == i + 1
        s = sig[box]
        c = centre_idx[i] - np.array([b.start for b in box])
        grids = np.ogrid[tuple(slice(0, b.stop - b.start) for b in box)]
        d2 = sum(((g - ci) * v) ** 2 for g, ci, v in zip(grids, c, vs, strict=True))
        core = terr & (d2 <= (0.5 * radii[i]) ** 2)
        core[tuple(c)] |= terr[tuple(c)]
        if not core.any():
            continue
        seed = np.unravel_index(np.argmax(np.where(core, s, -np.inf)), s.shape)
        p = float(s[seed])
        b = min(float(np.percentile(s[terr], BACKGROUND_PERCENTILE)), p)
        if p <= 0.0 or p <= b:
            continue
        # the pass to a neighbour: the brightest voxel of the territory next to another
        # nucleus' territory; below it the extent would fill the gap between the two
        touch = terr & ndi.binary_dilation((bas > 0) & ~terr)
        saddle = float(s[touch].max()) if touch.any() else -np.inf

        def region(level, terr=terr, s=s, seed=seed):
            lab, _ = ndi.label(terr & (s >= level))
            return lab == lab[seed]

        level = b + 0.5 * (p - b)
        if saddle >= level:
            # joined to a neighbour above its own half level (a dim nucleus on a bright
            # one's flank): no level separates it (left to the caller). Measured without
            # this test: the embryo of 30 nuclei lost a dim one (an 11-voxel extent), AP50
            # 0.97 -> 0.94; QCANet 8-cell 1.00 -> 0.78
            continue
        for _ in range(MAX_LEVEL_STEPS):
            new = min(b + 0.5 * (float(np.median(s[region(level)])) - b), level)
            if level - new <= 1e-3 * (p - b):
                level = new
                break
            level = new
        ext = fill_holes(region(level)) & terr
        levels[i] = level
        out[box][ext] = i + 1
    return out, levels


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


# The global (Otsu) foreground counts as "mostly nuclei" when its volume is at most this
# multiple of the detected nuclei' (balls of their diameters). Measured 1.1-2.0 on the
# heads, embryos, QCANet, the 2-D field and targettrack; 117-217 on whole-brain stacks,
# whose Otsu foreground is tissue glow and noise. There it flooded the local mode's
# small-scale pass (516 noise peaks for 129 neurons at 1.5 um z-steps: F1 0.33 instead of
# 0.98, the fit at max_iter) and, within 0.75 diameters of each nucleus, doubled its label
# (median 62 voxels for 30; IoU 0.52, AP50 0.41 at 2 um z-steps).
MAX_FOREGROUND_PER_NUCLEUS_VOLUME = 4.0


def foreground_is_mostly_nuclei(n_voxels: int, voxel_size, diameters_um, ndim: int) -> bool:
    """Whether a foreground of ``n_voxels`` is at most
    :data:`MAX_FOREGROUND_PER_NUCLEUS_VOLUME` times the volume (area in 2-D) of balls of
    the detected nuclei' diameters ``diameters_um``."""
    d = np.asarray(diameters_um, dtype=np.float64)
    ball = np.pi / 6.0 * d**3 if ndim == 3 else np.pi / 4.0 * d**2
    volume = float(n_voxels) * float(np.prod(voxel_size))
    return volume <= MAX_FOREGROUND_PER_NUCLEUS_VOLUME * float(ball.sum())
