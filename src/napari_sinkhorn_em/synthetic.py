"""Synthetic C. elegans-like fluorescence stacks with ground truth.

:func:`make_worm` draws a worm body (a tapered tube along x), places nuclei in dense
head ganglia around the pharynx (or along the ventral nerve cord for a mid-body
piece), gives each nucleus a NeuroPAL-like colour (a random mixture of three colour
channels) plus a pan-nuclear channel, adds autofluorescent gut granules (small, bright,
alike in every channel), an uneven background, an anisotropic Gaussian PSF (z blur
larger than xy) and Poisson + Gaussian camera noise. It returns the image together
with the true centres, label image, diameters and colours.

Everything is deterministic given ``seed``. No napari or Qt import.

Coordinates: the worm axis is x (nose at small x), dorsal-ventral is y and left-right
is z (worms lie on their side on the slide). Physical coordinates are micrometres.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from ._validation import check_int, check_voxel_size

__all__ = [
    "CHANNEL_NAMES",
    "SyntheticWorm",
    "make_worm",
    "write_sample_images",
    "write_synthetic_worms",
]

#: NeuroPAL-like channel names; the last one is the pan-nuclear marker.
CHANNEL_NAMES = ("mNeptune2.5", "CyOFP1", "mTagBFP2", "pan-nuclear")


@dataclass
class SyntheticWorm:
    """A synthetic worm stack and its ground truth.

    Attributes
    ----------
    image : numpy.ndarray
        The image, channel axis first: ``(C, Z, Y, X)`` in 3-D or ``(C, Y, X)`` in 2-D
        (the channel axis is present even for one channel).
    channel_axis : int
        Always 0.
    voxel_size : tuple of float
        Spatial voxel size in micrometres, ``(z, y, x)`` or ``(y, x)``.
    centres : numpy.ndarray
        ``(K, ndim)`` true nucleus centres in voxel coordinates (float).
    centres_um : numpy.ndarray
        ``(K, ndim)`` the same in micrometres (``centres * voxel_size``).
    labels : numpy.ndarray
        True label image over the spatial axes, 0 = background, label ``i + 1`` is
        nucleus ``i`` (``centres[i]``). uint16 (uint32 beyond 65535 nuclei).
    diameters_um : numpy.ndarray
        ``(K,)`` equivalent-sphere diameter of each nucleus (micrometres).
    semi_axes_um : numpy.ndarray
        ``(K, ndim)`` semi-axes of each (rotated) ellipsoidal nucleus.
    colours : numpy.ndarray
        ``(K, C)`` relative channel intensities of each nucleus (before the
        per-nucleus brightness factor); the pan-nuclear column is 1.
    brightness : numpy.ndarray
        ``(K,)`` per-nucleus brightness factor (intensity multiplier).
    channel_names : list of str
        One name per channel; the last is ``"pan-nuclear"``.
    granules : numpy.ndarray
        ``(G, ndim)`` centres of the autofluorescent granules (voxel coordinates).
    granule_diameters_um : numpy.ndarray
        ``(G,)`` granule diameters (micrometres).
    params : dict
        Every setting used (JSON-serialisable).
    """

    image: np.ndarray
    channel_axis: int
    voxel_size: tuple[float, ...]
    centres: np.ndarray
    centres_um: np.ndarray
    labels: np.ndarray
    diameters_um: np.ndarray
    semi_axes_um: np.ndarray
    colours: np.ndarray
    brightness: np.ndarray
    channel_names: list[str]
    granules: np.ndarray
    granule_diameters_um: np.ndarray
    params: dict = field(default_factory=dict)

    @property
    def n_nuclei(self) -> int:
        """Number of nuclei."""
        return int(self.centres.shape[0])

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions (2 or 3)."""
        return int(self.centres.shape[1])

    def table(self):
        """The ground truth as a pandas DataFrame (one row per nucleus).

        Columns: ``label``, voxel centre (``z``, ``y``, ``x``), centre in micrometres
        (``z_um``, ``y_um``, ``x_um``), ``diameter_um``, ``brightness`` and
        ``colour_<channel>`` for each channel (no z columns in 2-D).
        """
        import pandas as pd

        axes = "zyx"[3 - self.ndim :]
        data: dict[str, np.ndarray] = {"label": np.arange(1, self.n_nuclei + 1)}
        for k, a in enumerate(axes):
            data[a] = self.centres[:, k]
        for k, a in enumerate(axes):
            data[f"{a}_um"] = self.centres_um[:, k]
        data["diameter_um"] = self.diameters_um
        data["brightness"] = self.brightness
        for c, name in enumerate(self.channel_names):
            data[f"colour_{name}"] = self.colours[:, c]
        return pd.DataFrame(data)


# --------------------------------------------------------------------------------------
# worm anatomy (micrometres; x along the worm from the nose tip, y dorsal-ventral,
# z left-right)
# --------------------------------------------------------------------------------------

_HEAD_RADIUS = 14.0  # body radius behind the head taper
_NOSE_RADIUS = 4.0
_TAPER_LENGTH = 45.0
_BODY_RADIUS = 12.5
_WALL = 1.0  # cuticle + hypodermis + muscle layer without neuronal nuclei

# Head ganglia: (x centre, angle of the centre around the axis in degrees (0 = dorsal
# +y, 90 = left +z, 180 = ventral, None = all around), angular sd (deg), x sd,
# radial position as a fraction between pharynx and body wall, relative weight).
_HEAD_GANGLIA = (
    ("anterior", 40.0, None, 0.0, 4.0, 0.45, 0.16),
    ("lateral_left", 72.0, 90.0, 28.0, 9.0, 0.55, 0.22),
    ("lateral_right", 72.0, -90.0, 28.0, 9.0, 0.55, 0.22),
    ("dorsal", 64.0, 0.0, 25.0, 4.0, 0.5, 0.07),
    ("ventral", 68.0, 180.0, 25.0, 5.0, 0.5, 0.12),
    ("retrovesicular", 100.0, 180.0, 22.0, 5.0, 0.5, 0.11),
    ("posterior_lateral", 92.0, None, 0.0, 5.0, 0.6, 0.10),
)


def _body_radius(x: np.ndarray, region: str) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    if region == "body":
        return np.full_like(x, _BODY_RADIUS)
    t = np.clip(x / _TAPER_LENGTH, 0.0, 1.0)
    r = _NOSE_RADIUS + (_HEAD_RADIUS - _NOSE_RADIUS) * t**0.6
    return np.where(x < 0, 0.0, r)


def _core_radius(x: np.ndarray, region: str) -> np.ndarray:
    """Radius of the nucleus-free core: pharynx (head) or intestine (body)."""
    x = np.asarray(x, dtype=float)
    if region == "body":
        return np.full_like(x, 6.0)
    r = np.full_like(x, 2.5)  # procorpus / isthmus
    r = r + 2.8 * np.exp(-0.5 * ((x - 50.0) / 5.0) ** 2)  # metacorpus
    r = r + 3.8 * np.exp(-0.5 * ((x - 95.0) / 6.0) ** 2)  # terminal bulb
    gut = np.clip((x - 105.0) / 10.0, 0.0, 1.0) * 3.5  # intestine behind the bulb
    return np.maximum(r, 2.5 + gut)


def _random_rotation(rng: np.random.Generator, ndim: int) -> np.ndarray:
    if ndim == 2:
        a = rng.uniform(0, np.pi)
        c, s = np.cos(a), np.sin(a)
        return np.array([[c, -s], [s, c]])
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def _candidates_head(
    rng: np.random.Generator, n: int, ndim: int, radii: np.ndarray, spread: float
) -> np.ndarray:
    """Draw ``n`` candidate centres (um, (x, y, z)) from the head ganglia.

    ``spread`` scales the ganglia (x and angular extent) so that the nuclei pack
    equally densely whatever their number.
    """
    weights = np.array([g[6] for g in _HEAD_GANGLIA])
    which = rng.choice(len(_HEAD_GANGLIA), size=n, p=weights / weights.sum())
    out = np.empty((n, 3))
    for gi, (_, cx, ang, ang_sd, sx, frac, _) in enumerate(_HEAD_GANGLIA):
        m = which == gi
        k = int(m.sum())
        if k == 0:
            continue
        x = rng.normal(cx, sx * spread, size=k)
        if ang is None:
            theta = rng.uniform(-np.pi, np.pi, size=k)
        else:
            theta = np.deg2rad(rng.normal(ang, ang_sd * spread, size=k))
        inner = _core_radius(x, "head") + radii[m] + 0.3
        outer = _body_radius(x, "head") - _WALL - radii[m]
        f = np.clip(rng.normal(frac, 0.28 * spread, size=k), 0.0, 1.0)
        r = inner + f * np.maximum(outer - inner, 0.0)
        out[m, 0] = x
        out[m, 1] = r * np.cos(theta)
        out[m, 2] = r * np.sin(theta)
    if ndim == 2:
        out[:, 2] = 0.0
    return out


def _candidates_body(
    rng: np.random.Generator, n: int, ndim: int, radii: np.ndarray, length: float
) -> np.ndarray:
    """Candidate centres for a mid-body piece: ventral nerve cord + sublateral neurons."""
    out = np.empty((n, 3))
    cord = rng.random(n) < 0.8
    x = rng.uniform(0.0, length, size=n)
    # ventral cord: a bundle just inside the ventral body wall (-y)
    yc = -(_BODY_RADIUS - _WALL - radii) + np.abs(rng.normal(0, 1.2, size=n))
    zc = rng.normal(0, 2.0, size=n)
    # sublateral neurons anywhere in the shell outside the intestine
    theta = rng.uniform(-np.pi, np.pi, size=n)
    inner = _core_radius(x, "body") + radii + 0.3
    outer = _body_radius(x, "body") - _WALL - radii
    r = rng.uniform(inner, np.maximum(inner, outer))
    out[:, 0] = x
    out[:, 1] = np.where(cord, yc, r * np.cos(theta))
    out[:, 2] = np.where(cord, zc, r * np.sin(theta))
    if ndim == 2:
        out[:, 2] = 0.0
    return out


def _inside_body(
    p: np.ndarray,
    radii: np.ndarray,
    region: str,
    x_window: tuple[float, float] = (1.0, np.inf),
) -> np.ndarray:
    """Whether spheres of ``radii`` at ``p`` (um, (x, y, z)) lie in the neuronal shell."""
    rho = np.hypot(p[:, 1], p[:, 2])
    ok = rho + radii <= _body_radius(p[:, 0], region) - _WALL
    ok &= rho - radii >= _core_radius(p[:, 0], region)
    ok &= p[:, 0] - radii >= max(x_window[0], 1.0)
    return ok & (p[:, 0] + radii <= x_window[1])


def _place_nuclei(
    rng: np.random.Generator,
    n: int,
    ndim: int,
    radii: np.ndarray,
    region: str,
    min_factor: float,
    length: float,
    spread: float = 1.0,
    x_window: tuple[float, float] = (1.0, np.inf),
) -> np.ndarray:
    """Random sequential addition: centres (um, (x, y, z)) at least
    ``min_factor * (r_i + r_j)`` apart, drawn from the anatomical candidate density."""
    placed = np.empty((n, 3))
    placed_r = np.empty(n)
    k = 0
    stalled = 0  # consecutive batches without a placement
    max_spread = 4.0  # ganglia this wide cover the whole head
    while k < n:
        if stalled >= 4 and spread < max_spread:
            # the ganglia are full: let them grow a little (keeps the packing dense)
            spread = min(spread * 1.15, max_spread)
            stalled = 0
        elif stalled >= 150:
            raise ValueError(
                f"could only place {k} of {n} nuclei in the {region} without overlap; "
                "ask for fewer nuclei, smaller diameters or a wider x_range"
            )
        batch = 512
        r_next = radii[k]
        r_b = np.full(batch, r_next)
        if region == "head":
            cand = _candidates_head(rng, batch, ndim, r_b, spread)
        else:
            cand = _candidates_body(rng, batch, ndim, r_b, length)
        cand = cand[_inside_body(cand, r_b, region, x_window)]
        if k and len(cand):
            d = np.sqrt(((cand[:, None, :] - placed[None, :k, :]) ** 2).sum(-1))
            ok = (d >= min_factor * (r_next + placed_r[None, :k])).all(axis=1)
            cand = cand[ok]
        # accept candidates one by one (each is also checked against this batch's)
        k_before = k
        for c in cand:
            if k >= n:
                break
            r_c = radii[k]
            if k:
                d = np.sqrt(((placed[:k] - c) ** 2).sum(-1))
                if (d < min_factor * (r_c + placed_r[:k])).any():
                    continue
            placed[k] = c
            placed_r[k] = r_c
            k += 1
        stalled = stalled + 1 if k == k_before else 0
    return placed


def _neuropal_colours(rng: np.random.Generator, n: int, n_channels: int) -> np.ndarray:
    """Per-nucleus relative intensities: random mixtures of the colour channels, pan = 1."""
    colours = np.ones((n, n_channels))
    n_col = n_channels - 1
    if n_col <= 0:
        return colours
    levels = rng.uniform(0.15, 1.0, size=(n, n_col))
    levels[rng.random((n, n_col)) < 0.3] = 0.0  # each fluorophore absent in ~30%
    # every nucleus shows at least one colour, the strongest at full level
    empty = levels.max(axis=1) == 0
    levels[empty, rng.integers(0, n_col, size=int(empty.sum()))] = 1.0
    levels /= levels.max(axis=1, keepdims=True)
    colours[:, :n_col] = levels
    return colours


def _channel_names(n_channels: int) -> list[str]:
    if n_channels == 1:
        return ["pan-nuclear"]
    colours = list(CHANNEL_NAMES[:3])
    while len(colours) < n_channels - 1:
        colours.append(f"colour{len(colours) + 1}")
    return [*colours[: n_channels - 1], "pan-nuclear"]


def _rasterize_ellipsoids(
    shape: tuple[int, ...],
    voxel_size: np.ndarray,
    centres_vox: np.ndarray,
    semi_axes: np.ndarray,
    rotations: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Label image and normalised radius (0 at the centre, 1 at the surface).

    Each nucleus is drawn in its own cropped box; a voxel claimed by two ellipsoids
    goes to the one whose normalised radius there is smaller.
    """
    ndim = len(shape)
    k = len(centres_vox)
    dtype = np.uint16 if k < 2**16 else np.uint32
    labels = np.zeros(shape, dtype=dtype)
    best = np.full(shape, np.inf, dtype=np.float32)
    for i in range(k):
        ext = np.ceil(semi_axes[i].max() / voxel_size).astype(int) + 1
        c = centres_vox[i]
        lo = np.maximum(np.floor(c).astype(int) - ext, 0)
        hi = np.minimum(np.floor(c).astype(int) + ext + 1, shape)
        if np.any(hi <= lo):
            continue
        grids = np.meshgrid(
            *[(np.arange(lo[a], hi[a]) - c[a]) * voxel_size[a] for a in range(ndim)],
            indexing="ij",
        )
        p = np.stack(grids, axis=-1)  # physical offsets from the centre
        q = p @ rotations[i]  # coordinates in the ellipsoid's own frame
        d2 = ((q / semi_axes[i]) ** 2).sum(-1)
        sl = tuple(slice(lo[a], hi[a]) for a in range(ndim))
        b = best[sl]
        win = (d2 <= 1.0) & (d2 < b * b)
        b[win] = np.sqrt(d2[win])
        labels[sl][win] = i + 1
    best[labels == 0] = np.inf
    return labels, best


def make_worm(
    *,
    n_nuclei: int = 195,
    region: str = "head",
    ndim: int = 3,
    n_channels: int = 4,
    shape: tuple[int, ...] | None = None,
    x_range: tuple[float, float] | None = None,
    voxel_size: tuple[float, ...] = (0.8, 0.35, 0.35),
    nucleus_diameter: tuple[float, float] = (2.7, 0.12),
    elongation: float = 0.15,
    min_distance_factor: float = 0.9,
    brightness_variation: float = 0.5,
    background: str | None = "uneven",
    n_granules: int | None = None,
    granule_brightness: float = 6.0,
    psf_sigma_um: tuple[float, float] = (0.7, 0.2),
    photons: float = 600.0,
    background_photons: float = 25.0,
    read_noise: float = 3.0,
    camera_offset: float = 100.0,
    dtype: type | np.dtype = np.uint16,
    seed: int | None = 0,
) -> SyntheticWorm:
    """Generate a C. elegans-like fluorescence stack with ground truth.

    Parameters
    ----------
    n_nuclei : int
        Number of nuclei (a NeuroPAL head has about 195 neurons in view).
    region : {"head", "body"}
        ``"head"``: dense ganglia around the pharynx in a tapered head (nearest
        neighbour centre distances mostly 2-3 um, touching nuclei). ``"body"``: a
        straight mid-body piece with the ventral nerve cord and sparse sublateral
        neurons around the intestine.
    ndim : {2, 3}
        3 for a stack (Z, Y, X), 2 for a single optical section (Y, X) through a
        worm whose nuclei all lie in that plane.
    n_channels : int
        1 to 6. The last channel is the pan-nuclear marker; the others are
        NeuroPAL-like colour channels (mNeptune2.5, CyOFP1, mTagBFP2, ...).
    shape : tuple of int, optional
        Spatial shape of the stack. None (default) sizes it to the worm. A given
        shape must hold every nucleus (the worm is placed at its left edge, centred
        in y and z).
    x_range : (float, float), optional
        Head only: a window along the worm axis (micrometres from the nose tip; the
        ganglia span about 30-115 um) that holds all nuclei; the stack then covers
        just this window (a crop in which no nucleus is cut by the border).
    voxel_size : tuple of float
        Voxel size in micrometres, ``(z, y, x)`` or ``(y, x)`` (a 3-value tuple is
        accepted in 2-D and its z dropped).
    nucleus_diameter : (float, float)
        Mean equivalent diameter in micrometres and relative standard deviation.
    elongation : float
        Relative sd of the semi-axes around the equivalent radius (ellipsoids).
    min_distance_factor : float
        Centres are at least ``factor * (r_i + r_j)`` apart (0.9: touching, slight
        overlap resolved in the labels).
    brightness_variation : float
        Per-nucleus brightness factor drawn uniformly from ``1 +- variation``.
    background : {"uneven", "flat", None}
        ``"uneven"``: illumination gradient + tissue autofluorescence inside the
        body + a haze over the gut; ``"flat"``: a constant level; None: none.
    n_granules : int, optional
        Autofluorescent gut granules (0.5-1 um, bright, equal in every channel,
        never touching a nucleus). Default: 40 in a head with the anterior gut in
        view, 12 in a head crop without gut, ``length / 2`` in the
        body.
    granule_brightness : float
        Granule intensity relative to a nucleus of brightness 1.
    psf_sigma_um : (float, float)
        Gaussian PSF sigma along z and in xy, micrometres (z > xy: anisotropic).
    photons : float
        Expected photons at the centre of a nucleus of brightness 1 (before blur).
    background_photons : float
        Typical background level in photons.
    read_noise : float
        Sd of the Gaussian camera read noise (counts).
    camera_offset : float
        Constant camera baseline added to every pixel (counts).
    dtype : numpy dtype
        Output dtype (uint16 default, clipped; float dtypes keep fractional values).
    seed : int or None
        Seed for :func:`numpy.random.default_rng`; same seed, same worm.

    Returns
    -------
    SyntheticWorm
        Image (channel axis first) and ground truth.

    Raises
    ------
    ValueError
        For invalid parameters or a ``shape`` too small for the worm.
    """
    if region not in ("head", "body"):
        raise ValueError(f"region must be 'head' or 'body', got {region!r}")
    if ndim not in (2, 3):
        raise ValueError(f"ndim must be 2 or 3, got {ndim!r}")
    check_int("n_channels", n_channels, min=1, max=6)
    check_int("n_nuclei", n_nuclei, min=1)
    if background not in ("uneven", "flat", None):
        raise ValueError(f"background must be 'uneven', 'flat' or None, got {background!r}")
    vs = check_voxel_size(voxel_size, (2, 3))
    if ndim == 2 and len(vs) == 3:
        vs = vs[1:]
    vs = check_voxel_size(vs, ndim)
    if x_range is not None and (region != "head" or len(x_range) != 2 or x_range[1] <= x_range[0]):
        raise ValueError(f"x_range must be (start, stop) in um for the head, got {x_range!r}")
    if not 0 <= brightness_variation < 1:
        raise ValueError(f"brightness_variation must be in [0, 1), got {brightness_variation}")
    n = int(n_nuclei)
    n_channels = int(n_channels)
    rng = np.random.default_rng(seed)
    vsz = np.asarray(vs)
    # the random draws happen in this order (same seed, same worm): nuclei, colours and
    # brightness, granules, background, then photon and read noise per channel
    nuc = _nuclei_geometry(
        rng, n, ndim, region, nucleus_diameter, elongation, min_distance_factor, x_range
    )
    frame = _stack_frame(nuc, ndim, region, vs, shape, x_range)
    shape = frame.shape
    labels, rnorm = _rasterize_ellipsoids(shape, vsz, frame.centres_vox, nuc.semi, frame.rotations)

    colours = _neuropal_colours(rng, n, n_channels)
    brightness = rng.uniform(1.0 - brightness_variation, 1.0 + brightness_variation, size=n)
    channel_gain = np.ones(n_channels)
    if n_channels > 1:
        channel_gain[:-1] = rng.uniform(0.7, 1.0, size=n_channels - 1)
    if n_granules is None and region == "head":
        n_granules = 40 if frame.x_end >= 110.0 else 12  # many only where the gut is in view
    elif n_granules is None:
        n_granules = int(nuc.length / 2)
    gran_vox, gran_diam, gran_obj = _granules(
        rng, int(n_granules), ndim, region, nuc, frame, labels
    )
    grid_phys = _physical_grids(shape, vsz, frame.origin, frame.axes)
    bg = _background(background, grid_phys, region, shape, rng) * background_photons

    image = _render(
        rng, labels, rnorm, gran_obj, colours, brightness, channel_gain,
        vs=vs, psf_sigma_um=psf_sigma_um, granule_brightness=granule_brightness,
        photons=photons, background=bg, camera_offset=camera_offset, read_noise=read_noise,
        dtype=np.dtype(dtype),
    )  # fmt: skip

    d_mean, d_rel = nucleus_diameter
    sig = psf_sigma_um
    params = {
        "n_nuclei": n,
        "region": region,
        "ndim": ndim,
        "n_channels": n_channels,
        "shape": list(shape),
        "x_range": None if x_range is None else [float(x_range[0]), float(x_range[1])],
        "voxel_size": list(vs),
        "nucleus_diameter": [float(d_mean), float(d_rel)],
        "elongation": float(elongation),
        "min_distance_factor": float(min_distance_factor),
        "brightness_variation": float(brightness_variation),
        "background": background,
        "n_granules": len(gran_vox),
        "granule_brightness": float(granule_brightness),
        "psf_sigma_um": [float(sig[0]), float(sig[1])],
        "photons": float(photons),
        "background_photons": float(background_photons),
        "read_noise": float(read_noise),
        "camera_offset": float(camera_offset),
        "dtype": np.dtype(dtype).name,
        "seed": seed,
    }
    # micrometres in napari's world convention: voxel index * voxel size
    centres_um = frame.centres_vox * vsz
    return SyntheticWorm(
        image=image,
        channel_axis=0,
        voxel_size=vs,
        centres=frame.centres_vox,
        centres_um=centres_um,
        labels=labels,
        diameters_um=2.0 * nuc.radii,
        semi_axes_um=nuc.semi,
        colours=colours,
        brightness=brightness,
        channel_names=_channel_names(n_channels),
        granules=gran_vox,
        granule_diameters_um=gran_diam,
        params=params,
    )


# --------------------------------------------------------------------------- geometry


@dataclass
class _Nuclei:
    """Physical geometry of the nuclei: centres (x, y, z) um from the nose tip, radii,
    semi-axes and rotations (physical axes); ``length`` of a body piece (0 for a head)."""

    pos: np.ndarray
    radii: np.ndarray
    semi: np.ndarray
    rotations: np.ndarray
    length: float
    x_window: tuple[float, float]


def _nuclei_geometry(
    rng: np.random.Generator,
    n: int,
    ndim: int,
    region: str,
    nucleus_diameter: tuple[float, float],
    elongation: float,
    min_distance_factor: float,
    x_range: tuple[float, float] | None,
) -> _Nuclei:
    """Sizes, shapes and positions of the nuclei (random sequential addition)."""
    d_mean, d_rel = nucleus_diameter
    diam = d_mean * np.clip(1.0 + d_rel * rng.standard_normal(n), 0.6, 1.5)
    radii = diam / 2.0
    # sort large first: random sequential addition packs better that way
    order = np.argsort(-radii, kind="stable")
    radii = radii[order]
    length = max(40.0, 1.15 * n) if region == "body" else 0.0
    # ganglia extent for a dense packing whatever n (grown on the fly when full)
    spread = 0.35 * ((n / 195.0) ** (1.0 / 3.0) if ndim == 3 else (n / 60.0) ** 0.5)
    x_window = (1.0, np.inf) if x_range is None else (float(x_range[0]), float(x_range[1]))
    pos = _place_nuclei(rng, n, ndim, radii, region, min_distance_factor, length, spread, x_window)
    # shuffle so labels do not follow size
    perm = rng.permutation(n)
    pos, radii = pos[perm], radii[perm]

    aspect = np.exp(elongation * rng.standard_normal((n, ndim)))
    aspect /= np.prod(aspect, axis=1, keepdims=True) ** (1.0 / ndim)  # keep the volume
    semi = radii[:, None] * aspect
    rotations = np.stack([_random_rotation(rng, ndim) for _ in range(n)])
    return _Nuclei(pos, radii, semi, rotations, length, x_window)


@dataclass
class _Frame:
    """The stack around the worm: shape, origin (um, array axes), the nucleus centres in
    voxels and their rotations on the array axes."""

    shape: tuple[int, ...]
    voxel_size: np.ndarray
    axes: str
    origin: np.ndarray
    x_start: float
    x_end: float
    centres_vox: np.ndarray
    rotations: np.ndarray


def _to_axes(p: np.ndarray, ndim: int) -> np.ndarray:
    """Physical points (x, y, z) -> array axes (z, y, x) / (y, x)."""
    return p[:, [2, 1, 0]] if ndim == 3 else p[:, [1, 0]]


def _stack_frame(
    nuc: _Nuclei,
    ndim: int,
    region: str,
    vs: tuple[float, ...],
    shape: tuple[int, ...] | None,
    x_range: tuple[float, float] | None,
) -> _Frame:
    """Size the stack to the worm (or check a given shape holds every nucleus)."""
    vsz = np.asarray(vs)
    n = nuc.pos.shape[0]
    if region == "head":
        if x_range is None:
            x_start = -3.0
            x_end = float(nuc.pos[:, 0].max()) + 55.0  # plus the anterior gut
        else:
            x_start, x_end = nuc.x_window[0] - 1.0, nuc.x_window[1] + 1.0
        r_max = float(_body_radius(np.array([x_end]), "head")[0])
    else:
        x_start, x_end = -2.0, nuc.length + 2.0
        r_max = _BODY_RADIUS
    extent_um = {"x": x_end - x_start, "y": 2 * r_max + 3.0, "z": 2 * r_max + 3.0}
    axes_names = "zyx"[3 - ndim :]
    if shape is None:
        shape = tuple(int(np.ceil(extent_um[a] / v)) for a, v in zip(axes_names, vs, strict=True))
    else:
        shape = tuple(int(s) for s in shape)
        if len(shape) != ndim or min(shape) < 1:
            raise ValueError(f"shape must be {ndim} positive integers, got {shape!r}")
    shape_um = np.asarray(shape) * vsz
    # origin: nose (x_start) at the left edge, worm axis centred in y and z
    origin_phys = {"x": x_start, "y": -shape_um[axes_names.index("y")] / 2.0}
    if ndim == 3:
        origin_phys["z"] = -shape_um[0] / 2.0
    origin = np.array([origin_phys[a] for a in axes_names])

    centres_um_abs = _to_axes(nuc.pos, ndim)
    centres_vox = (centres_um_abs - origin) / vsz - 0.5  # voxel i covers [i-0.5, i+0.5]
    semi = nuc.semi
    lo_ok = (centres_vox - semi.max(axis=1)[:, None] / vsz) >= -0.5
    hi_ok = (centres_vox + semi.max(axis=1)[:, None] / vsz) <= np.asarray(shape) - 0.5
    if not (lo_ok & hi_ok).all():
        need = tuple(int(np.ceil(extent_um[a] / v)) for a, v in zip(axes_names, vs, strict=True))
        raise ValueError(
            f"shape {shape} is too small for this worm ({n} nuclei in the {region}); "
            f"it needs about {need} voxels — pass shape=None to size it automatically"
        )
    # rotations act on physical (x, y, z); express them on the array axes
    perm_axes = [2, 1, 0] if ndim == 3 else [1, 0]
    rot_axes = nuc.rotations[:, perm_axes, :]
    return _Frame(shape, vsz, axes_names, origin, x_start, x_end, centres_vox, rot_axes)


# --------------------------------------------------------------------------- rendering


def _granules(
    rng: np.random.Generator,
    n_granules: int,
    ndim: int,
    region: str,
    nuc: _Nuclei,
    frame: _Frame,
    labels: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Place the gut granules (physical, then voxels; those inside the stack) and draw
    them into an object image (float32, spatial shape)."""
    vsz = frame.voxel_size
    gran_pos, gran_diam = _place_granules(
        rng, n_granules, ndim, region, nuc.pos, nuc.semi.max(axis=1), frame.x_start, frame.x_end
    )
    gran_vox = (
        (_to_axes(gran_pos, ndim) - frame.origin) / vsz - 0.5
        if len(gran_pos)
        else np.empty((0, ndim))
    )
    inside = np.all((gran_vox >= 0) & (gran_vox <= np.asarray(frame.shape) - 1), axis=1)
    gran_vox, gran_diam = gran_vox[inside], gran_diam[inside]
    gran_obj = np.zeros(frame.shape, dtype=np.float32)
    _draw_granules(gran_obj, gran_vox, gran_diam, vsz, labels)
    return gran_vox, gran_diam, gran_obj


def _render(
    rng: np.random.Generator,
    labels: np.ndarray,
    rnorm: np.ndarray,
    gran_obj: np.ndarray,
    colours: np.ndarray,
    brightness: np.ndarray,
    channel_gain: np.ndarray,
    *,
    vs: tuple[float, ...],
    psf_sigma_um: tuple[float, float],
    granule_brightness: float,
    photons: float,
    background: np.ndarray,
    camera_offset: float,
    read_noise: float,
    dtype: np.dtype,
) -> np.ndarray:
    """Microscope image ``(C, *spatial)``: objects (nuclei with a brighter centre, and
    granules) blurred by the PSF, plus background, Poisson photon noise, camera offset and
    read noise, cast to ``dtype`` (integer dtypes rounded and clipped)."""
    shape = labels.shape
    ndim = labels.ndim
    n_channels = channel_gain.shape[0]
    n = colours.shape[0]
    # radial profile inside each nucleus: slightly brighter centre (chromatin)
    profile = np.zeros(shape, dtype=np.float32)
    fg = labels > 0
    profile[fg] = 1.0 - 0.35 * rnorm[fg] ** 2
    sig = psf_sigma_um
    if ndim == 3:
        sigma_vox = (sig[0] / vs[0], sig[1] / vs[1], sig[1] / vs[2])
    else:
        sigma_vox = (sig[1] / vs[0], sig[1] / vs[1])
    image = np.empty((n_channels, *shape), dtype=dtype)
    lut = np.zeros((n + 1,), dtype=np.float32)
    for c in range(n_channels):
        lut[1:] = colours[:, c] * brightness * channel_gain[c]
        obj = lut[labels] * profile
        obj += granule_brightness * gran_obj
        blurred = ndimage.gaussian_filter(obj * np.float32(photons), sigma_vox, mode="nearest")
        expected = np.maximum(blurred + background, 0.0)
        counts = rng.poisson(expected).astype(np.float32)
        counts += camera_offset + read_noise * rng.standard_normal(shape, dtype=np.float32)
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            counts = np.clip(np.rint(counts), info.min, info.max)
        image[c] = counts.astype(dtype)
    return image


def _place_granules(
    rng: np.random.Generator,
    n: int,
    ndim: int,
    region: str,
    nuclei: np.ndarray,
    nuclei_rmax: np.ndarray,
    x_start: float,
    x_end: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Granule centres (um, (x, y, z)) and diameters, mostly in the gut, off the nuclei."""
    if n <= 0:
        return np.empty((0, 3)), np.empty(0)
    out = []
    diam_out = []
    tries = 0
    while len(out) < n and tries < 200:
        tries += 1
        m = 4 * n
        diam = rng.uniform(0.5, 1.0, size=m)
        in_gut = rng.random(m) < 0.8
        if region == "head":
            if x_end < 110.0:  # no gut in view: granules in the head tissue
                in_gut[:] = False
            x_gut = rng.uniform(105.0, max(x_end, 106.0), size=m)
            x_any = rng.uniform(max(x_start, 5.0), x_end, size=m)
            x = np.where(in_gut, x_gut, x_any)
        else:
            x = rng.uniform(x_start, x_end, size=m)
        rho_max = _body_radius(x, region) - _WALL - diam / 2
        gut_r = 5.5 if region == "head" else 6.0
        rho = np.where(
            in_gut,
            gut_r * np.sqrt(rng.random(m)),
            np.sqrt(rng.random(m)) * np.maximum(rho_max, 0.0),
        )
        rho = np.minimum(rho, np.maximum(rho_max, 0.0))
        theta = rng.uniform(-np.pi, np.pi, size=m)
        p = np.stack([x, rho * np.cos(theta), rho * np.sin(theta)], axis=1)
        if ndim == 2:
            p[:, 2] = 0.0
        if region == "head":
            # not inside the pharynx lumen
            keep = (x >= 105.0) | (rho > _core_radius(x, "head"))
            p, diam = p[keep], diam[keep]
        d = np.sqrt(((p[:, None, :] - nuclei[None, :, :]) ** 2).sum(-1))
        clear = (d > nuclei_rmax[None, :] + diam[:, None] / 2 + 0.8).all(axis=1)
        for q, dq in zip(p[clear], diam[clear], strict=True):
            if len(out) >= n:
                break
            out.append(q)
            diam_out.append(dq)
    return np.asarray(out).reshape(-1, 3), np.asarray(diam_out)


def _draw_granules(
    obj: np.ndarray,
    centres_vox: np.ndarray,
    diam_um: np.ndarray,
    vsz: np.ndarray,
    labels: np.ndarray,
) -> None:
    """Draw granules as small solid spheres (at least their centre voxel), off nuclei."""
    ndim = obj.ndim
    for c, dg in zip(centres_vox, diam_um, strict=True):
        r = dg / 2.0
        ext = np.ceil(r / vsz).astype(int) + 1
        ci = np.rint(c).astype(int)
        lo = np.maximum(ci - ext, 0)
        hi = np.minimum(ci + ext + 1, obj.shape)
        grids = np.meshgrid(
            *[(np.arange(lo[a], hi[a]) - c[a]) * vsz[a] for a in range(ndim)], indexing="ij"
        )
        d2 = sum(g * g for g in grids)
        inside = d2 <= r * r
        centre_idx = tuple(ci - lo)
        inside[centre_idx] = True
        sl = tuple(slice(lo[a], hi[a]) for a in range(ndim))
        # intensity per voxel such that small granules are not dimmer than big ones
        inside &= labels[sl] == 0
        obj[sl][inside] = 1.0


def _physical_grids(
    shape: tuple[int, ...], vsz: np.ndarray, origin: np.ndarray, axes_names: str
) -> dict[str, np.ndarray]:
    """Broadcastable physical coordinate grids (um) keyed by 'x', 'y', 'z'."""
    ndim = len(shape)
    out = {}
    for a, name in enumerate(axes_names):
        g = (np.arange(shape[a]) + 0.5) * vsz[a] + origin[a]
        sh = [1] * ndim
        sh[a] = shape[a]
        out[name] = g.reshape(sh).astype(np.float32)
    if "z" not in out:
        out["z"] = np.zeros([1] * ndim, dtype=np.float32)
    return out


def _background(
    kind: str | None,
    g: dict[str, np.ndarray],
    region: str,
    shape: tuple[int, ...],
    rng: np.random.Generator,
) -> np.ndarray:
    """Background in units of ``background_photons`` (float32, spatial shape)."""
    if kind is None:
        return np.zeros(shape, dtype=np.float32)
    if kind == "flat":
        return np.ones(shape, dtype=np.float32)
    x, y, z = g["x"], g["y"], g["z"]
    x_span = float(x.max() - x.min()) or 1.0
    y_span = float(y.max() - y.min()) or 1.0
    # smooth illumination gradient (vignetting-like), random direction
    a, b = rng.uniform(-0.4, 0.4, size=2)
    illum = 0.6 + a * (x - x.min()) / x_span + b * (y - y.min()) / y_span
    rho = np.sqrt(y * y + z * z)
    radius = _body_radius(x, region)
    body = 1.0 / (1.0 + np.exp((rho - radius) / 0.8))  # tissue autofluorescence
    gut_x = 1.0 / (1.0 + np.exp(-(x - 108.0) / 4.0)) if region == "head" else np.ones_like(x)
    gut = gut_x * np.exp(-0.5 * (rho / 5.0) ** 2)
    bg = np.maximum(illum, 0.2) + 0.8 * body + 2.0 * gut
    return np.broadcast_to(bg, shape).astype(np.float32)


def write_sample_images(
    folder: str | os.PathLike,
    *,
    n_nuclei: int = 75,
    x_range: tuple[float, float] = (55.0, 100.0),
    seed: int = 2024,
) -> dict[str, Path]:
    """Write the bundled sample: a NeuroPAL-like head crop and its ground truth.

    Files (all written atomically):

    - ``worm_head.tif``: ImageJ hyperstack ZCYX uint16 with voxel size and
      channel names, zlib-compressed;
    - ``worm_head_labels.tif``: true labels (ZYX uint16, same voxel size);
    - ``worm_head_centres.csv``: the truth table (:meth:`SyntheticWorm.table`).

    Parameters
    ----------
    folder : str or os.PathLike
        Output folder (created if needed).
    n_nuclei : int
        Nuclei in the crop.
    x_range : (float, float)
        The crop along the worm (micrometres from the nose tip); the default is the
        nerve-ring region with the lateral, dorsal and ventral ganglia.
    seed : int
        Generator seed.

    Returns
    -------
    dict
        ``{"image": path, "labels": path, "centres": path}``.
    """
    from .io import write_image, write_labels, write_table

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    worm = make_worm(n_nuclei=n_nuclei, region="head", n_channels=4, x_range=x_range, seed=seed)
    image_zcyx = np.moveaxis(worm.image, 0, 1)
    paths = {
        "image": folder / "worm_head.tif",
        "labels": folder / "worm_head_labels.tif",
        "centres": folder / "worm_head_centres.csv",
    }
    write_image(
        paths["image"],
        image_zcyx,
        voxel_size=worm.voxel_size,
        axes="ZCYX",
        channel_names=worm.channel_names,
    )
    write_labels(paths["labels"], worm.labels, worm.voxel_size)
    write_table(paths["centres"], worm.table().round(4))
    return paths


# --------------------------------------------------------------------------------------
# time-lapses with identity truth (tracking)
# --------------------------------------------------------------------------------------


@dataclass
class SyntheticTimeLapse:
    """A synthetic time-lapse and its tracking truth.

    Attributes
    ----------
    image : numpy.ndarray
        ``(T, C, Z, Y, X)`` (time first, then channels).
    time_axis, channel_axis : int
        0 and 1.
    voxel_size : tuple of float
        ``(z, y, x)`` micrometres.
    centres : list of numpy.ndarray
        Per frame, ``(N_t, 3)`` true centres in voxel coordinates.
    ids : list of numpy.ndarray
        Per frame, the truth identity of each row of ``centres`` (>= 1); a nucleus keeps
        its id through time, a division's children get new ids.
    labels : numpy.ndarray
        ``(T, Z, Y, X)`` true labels; the value of a nucleus is its id.
    parents : dict
        ``{child id: parent id}`` for the children of divisions.
    nucleus_diameter : float
        Typical nucleus diameter (micrometres).
    channel_names : list of str
    params : dict
        Generator arguments and the measured per-frame displacements
        (``max_step_um``: the largest displacement of a nucleus between consecutive
        frames, per step).
    """

    image: np.ndarray
    time_axis: int
    channel_axis: int
    voxel_size: tuple[float, ...]
    centres: list
    ids: list
    labels: np.ndarray
    parents: dict
    nucleus_diameter: float
    channel_names: list[str]
    params: dict = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        """Number of frames."""
        return int(self.image.shape[0])

    def table(self):
        """Truth as a tracks table: ``track_id``, ``t``, ``z``, ``y``, ``x``, ``z_um``,
        ``y_um``, ``x_um``, ``parent_id`` (0 = none)."""
        import pandas as pd

        vs = np.asarray(self.voxel_size)
        parts = []
        for t, (c, i) in enumerate(zip(self.centres, self.ids, strict=True)):
            d = {"track_id": np.asarray(i, dtype=np.int64), "t": np.full(len(i), t)}
            for k, a in enumerate("zyx"):
                d[a] = c[:, k]
            for k, a in enumerate("zyx"):
                d[f"{a}_um"] = c[:, k] * vs[k]
            d["parent_id"] = np.array([self.parents.get(int(j), 0) for j in i], dtype=np.int64)
            parts.append(pd.DataFrame(d))
        return pd.concat(parts, ignore_index=True)


def _radial_profile(labels: np.ndarray, vs: np.ndarray) -> np.ndarray:
    """``1 - 0.35 r^2`` inside each nucleus (as :func:`make_worm`), with the normalised
    radius ``r`` taken as one minus the distance to the nucleus' boundary over its
    largest such distance."""
    prof = np.zeros(labels.shape, dtype=np.float32)
    for sl, lab in zip(ndimage.find_objects(labels), range(1, int(labels.max()) + 1), strict=False):
        if sl is None:
            continue
        sl = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
        inside = labels[sl] == lab
        dist = ndimage.distance_transform_edt(inside, sampling=vs)
        r = 1.0 - dist / max(float(dist.max()), 1e-9)
        prof[sl][inside] = 1.0 - 0.35 * r[inside] ** 2
    return prof


def _render_frame(
    labels, lut, vs, psf_sigma_um, photons, background_photons, read_noise, rng, profile=None
):
    """Channels of one frame from a label image: per-nucleus intensities, PSF, noise."""
    n_channels = lut.shape[1]
    sigma_vox = (psf_sigma_um[0] / vs[0], psf_sigma_um[1] / vs[1], psf_sigma_um[1] / vs[2])
    out = np.empty((n_channels, *labels.shape), dtype=np.uint16)
    for c in range(n_channels):
        obj = lut[:, c].astype(np.float32)[labels] * np.float32(photons)
        if profile is not None:
            obj *= profile
        blurred = ndimage.gaussian_filter(obj, sigma_vox, mode="nearest")
        counts = rng.poisson(np.maximum(blurred + background_photons, 0.0)).astype(np.float32)
        counts += 100.0 + read_noise * rng.standard_normal(labels.shape, dtype=np.float32)
        out[c] = np.clip(np.rint(counts), 0, 65535).astype(np.uint16)
    return out


def make_moving_worm(
    *,
    n_frames: int = 5,
    n_nuclei: int = 60,
    motion_um: float = 1.35,
    rotation_share: float = 0.4,
    bend_share: float = 0.2,
    x_range: tuple[float, float] = (55.0, 100.0),
    n_channels: int = 4,
    voxel_size: tuple[float, float, float] = (0.8, 0.35, 0.35),
    psf_sigma_um: tuple[float, float] = (0.7, 0.2),
    photons: float = 600.0,
    background_photons: float = 25.0,
    read_noise: float = 3.0,
    seed: int | None = 0,
) -> SyntheticTimeLapse:
    """A head crop (:func:`make_worm`) that translates, rotates and bends in the image plane.

    Between consecutive frames the head is translated in (y, x) in a random direction,
    rotated about z (the optical axis; the worm lies on its side and crawls in the
    image plane) about its centre, and bent (a y-displacement growing with the squared
    distance along x from the centre). The three increments are scaled together so that
    the nucleus that moves most between two frames moves exactly ``motion_um``;
    ``rotation_share`` and ``bend_share`` are the parts of that budget given to the
    rotation and the bend (the rest is translation). The canvas is padded so no nucleus
    leaves the field. Each frame is re-rendered from the moved true labels (flat
    per-nucleus intensities, NeuroPAL-like colours, the anisotropic PSF, Poisson and read
    noise), so frames differ in their noise as in a recording.

    Parameters
    ----------
    n_frames : int
        Number of frames (>= 2).
    n_nuclei, x_range, n_channels, voxel_size, psf_sigma_um, photons, \
background_photons, read_noise
        As for :func:`make_worm` (the head crop of frame 0).
    motion_um : float
        Largest displacement of any nucleus between consecutive frames (um); the nucleus
        diameter is 2.7 um and the nearest-neighbour spacing about 2.5-3 um.
    rotation_share, bend_share : float
        Parts of the motion budget (0..1, sum <= 1) from rotation and bending.
    seed : int or None
        Seed; same seed, same series.

    Returns
    -------
    SyntheticTimeLapse
    """
    if int(n_frames) < 2:
        raise ValueError(f"n_frames must be >= 2, got {n_frames!r}")
    if not (np.isfinite(motion_um) and motion_um >= 0):
        raise ValueError(f"motion_um must be a number >= 0, got {motion_um!r}")
    if not (rotation_share >= 0 and bend_share >= 0 and rotation_share + bend_share <= 1):
        raise ValueError(
            f"rotation_share and bend_share must be >= 0 with a sum <= 1, got "
            f"{rotation_share} and {bend_share}"
        )
    n_frames = int(n_frames)
    rng = np.random.default_rng(seed)
    base = make_worm(
        n_nuclei=n_nuclei,
        region="head",
        n_channels=n_channels,
        x_range=x_range,
        voxel_size=voxel_size,
        background=None,
        n_granules=0,
        psf_sigma_um=psf_sigma_um,
        seed=None if seed is None else int(rng.integers(2**31)),
    )
    vs = np.asarray(base.voxel_size)
    lut = np.zeros((base.n_nuclei + 1, n_channels))
    lut[1:] = base.colours * base.brightness[:, None]
    profile0 = _radial_profile(base.labels, vs)
    p0 = base.centres * vs  # (z, y, x) um on the base canvas
    centre = p0.mean(axis=0)
    half_len = max(float(np.abs(p0[:, 2] - centre[2]).max()), 1.0)
    r_max = max(float(np.sqrt(((p0[:, 1:] - centre[1:]) ** 2).sum(1)).max()), 1.0)

    def forward(p, theta, d, kappa):
        q = p - centre
        q = q.copy()
        q[:, 1] += kappa * q[:, 2] ** 2 / half_len
        c, s = np.cos(theta), np.sin(theta)
        y = c * q[:, 1] - s * q[:, 2]
        x = s * q[:, 1] + c * q[:, 2]
        q[:, 1], q[:, 2] = y, x
        return q + centre + np.array([0.0, d[0], d[1]])

    # motion parameters per frame (cumulative), increments scaled to the budget
    pad_um = min(n_frames - 1, 4) * motion_um + 1.0
    theta, d, kappa = 0.0, np.zeros(2), 0.0
    params_t = [(theta, d.copy(), kappa)]
    steps = []
    for _ in range(n_frames - 1):
        ang = rng.uniform(0, 2 * np.pi)
        u = np.array([np.sin(ang), np.cos(ang)])
        if np.linalg.norm(d + u) > np.linalg.norm(d) and np.linalg.norm(d) > 0.5 * pad_um:
            u = -u  # stay in the padded field
        s_rot = rng.choice([-1.0, 1.0])
        s_bend = -np.sign(kappa) if kappa != 0 else rng.choice([-1.0, 1.0])

        def candidate(scale, u=u, s_rot=s_rot, s_bend=s_bend, th=theta, d0=d, k0=kappa):
            return (
                th + s_rot * scale * rotation_share / r_max,
                d0 + u * scale * (1.0 - rotation_share - bend_share),
                k0 + s_bend * scale * bend_share / half_len,
            )

        prev = forward(p0, theta, d, kappa)

        def max_step(scale, prev=prev, candidate=candidate):
            th, dd, kk = candidate(scale)
            return float(np.sqrt(((forward(p0, th, dd, kk) - prev) ** 2).sum(1)).max())

        lo, hi = 0.0, 2.0 * motion_um + 1e-9
        for _ in range(40):  # bisection: the largest displacement equals motion_um
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if max_step(mid) < motion_um else (lo, mid)
        steps.append(max_step(0.5 * (lo + hi)))
        theta, d, kappa = candidate(0.5 * (lo + hi))
        params_t.append((theta, d.copy(), kappa))

    # canvas: the base stack padded in y and x
    pad_vox = np.array([0, *np.ceil((pad_um + half_len * 0.2) / vs[1:]).astype(int)])
    shape = tuple(int(s + 2 * p) for s, p in zip(base.labels.shape, pad_vox, strict=True))
    offset_um = pad_vox * vs
    grids = np.meshgrid(*[np.arange(s) * v for s, v in zip(shape, vs, strict=True)], indexing="ij")
    images, labels_t, centres_t, ids_t = [], [], [], []
    for theta, d, kappa in params_t:
        # exact inverse of forward(): undo the translation and the rotation, then the bend
        qz = grids[0] - offset_um[0] - centre[0]
        qy = grids[1] - offset_um[1] - centre[1] - d[0]
        qx = grids[2] - offset_um[2] - centre[2] - d[1]
        c, s = np.cos(theta), np.sin(theta)
        uy = c * qy + s * qx
        ux = -s * qy + c * qx
        uy = uy - kappa * ux**2 / half_len
        coords = (
            np.stack([qz + centre[0], uy + centre[1], ux + centre[2]]) / vs[:, None, None, None]
        )
        lab = ndimage.map_coordinates(base.labels, coords, order=0, cval=0).astype(np.uint16)
        prof = ndimage.map_coordinates(profile0, coords, order=1, cval=0.0)
        images.append(
            _render_frame(
                lab, lut, vs, psf_sigma_um, photons, background_photons, read_noise, rng, prof
            )
        )
        labels_t.append(lab)
        present = np.unique(lab[lab > 0]).astype(np.int64)
        c_um = forward(p0, theta, d, kappa) + offset_um
        centres_t.append(c_um[present - 1] / vs)
        ids_t.append(present)
    params = {
        "n_frames": n_frames,
        "n_nuclei": int(n_nuclei),
        "motion_um": float(motion_um),
        "rotation_share": float(rotation_share),
        "bend_share": float(bend_share),
        "x_range": [float(x_range[0]), float(x_range[1])],
        "n_channels": int(n_channels),
        "voxel_size": [float(v) for v in vs],
        "seed": seed,
        "max_step_um": [float(s) for s in steps],
        "rotation_deg": [float(np.degrees(p[0])) for p in params_t],
    }
    return SyntheticTimeLapse(
        image=np.stack(images),
        time_axis=0,
        channel_axis=1,
        voxel_size=tuple(float(v) for v in vs),
        centres=centres_t,
        ids=ids_t,
        labels=np.stack(labels_t),
        parents={},
        nucleus_diameter=float(base.params["nucleus_diameter"][0]),
        channel_names=base.channel_names,
        params=params,
    )


def make_dividing_embryo(
    *,
    n_frames: int = 4,
    n_nuclei: int = 12,
    nucleus_diameter: float = 5.0,
    division_frame: int = 2,
    n_divisions: int = 3,
    appear_frame: int | None = None,
    disappear_frame: int | None = None,
    jitter_um: float = 0.5,
    voxel_size: tuple[float, float, float] = (1.0, 0.5, 0.5),
    photons: float = 400.0,
    seed: int | None = 0,
) -> SyntheticTimeLapse:
    """An embryo-like series: round nuclei in an ellipsoid, some divide, one may come or go.

    Nuclei (spheres of about ``nucleus_diameter``) sit at least 2 diameters apart in an
    ellipsoidal embryo and drift by up to ``jitter_um`` per frame. At ``division_frame``
    ``n_divisions`` of them divide: each is replaced by two children (diameter 0.8 x the
    parent's) 1.1 parent diameters apart along a random direction, with new ids and
    ``parents[child] = parent``. With ``appear_frame`` a nucleus without parent appears
    in free space from that frame on; with ``disappear_frame`` one nucleus (not a
    dividing one) is gone from that frame on. Single channel; background, PSF and noise
    as for :func:`make_moving_worm`.

    Parameters
    ----------
    n_frames, n_nuclei : int
    nucleus_diameter : float
        Micrometres.
    division_frame, n_divisions : int
        First frame that shows the children, and how many nuclei divide.
    appear_frame, disappear_frame : int, optional
    jitter_um : float
        Largest drift of a nucleus between frames (um).
    voxel_size : tuple of float
        ``(z, y, x)`` micrometres.
    photons : float
        Photons at a nucleus (before blur).
    seed : int or None

    Returns
    -------
    SyntheticTimeLapse
    """
    if int(n_frames) < 2:
        raise ValueError(f"n_frames must be >= 2, got {n_frames!r}")
    if not 0 <= int(n_divisions) <= int(n_nuclei):
        raise ValueError(f"n_divisions must be in [0, n_nuclei], got {n_divisions!r}")
    for name, f in (
        ("division_frame", division_frame),
        ("appear_frame", appear_frame),
        ("disappear_frame", disappear_frame),
    ):
        if f is not None and not 1 <= int(f) < int(n_frames):
            raise ValueError(f"{name} must be in [1, n_frames - 1], got {f!r}")
    rng = np.random.default_rng(seed)
    n_frames = int(n_frames)
    vs = np.asarray(voxel_size, dtype=np.float64)
    dmin = 2.0 * nucleus_diameter
    radii_emb = np.array([0.6, 1.0, 1.2]) * nucleus_diameter * (n_nuclei ** (1 / 3)) * 1.8
    pts: list[np.ndarray] = []
    tries = 0
    while len(pts) < n_nuclei + 1 and tries < 100000:
        tries += 1
        p = rng.uniform(-1, 1, 3) * radii_emb
        if ((p / radii_emb) ** 2).sum() > 1:
            continue
        if all(np.linalg.norm(p - q) >= dmin for q in pts):
            pts.append(p)
    if len(pts) < n_nuclei + 1:
        raise ValueError(f"could not place {n_nuclei} nuclei {dmin} um apart")
    spare = pts.pop()  # free space for an appearing nucleus
    margin = radii_emb + 2.0 * nucleus_diameter + n_frames * jitter_um
    shape = tuple(int(np.ceil(2 * m / v)) for m, v in zip(margin, vs, strict=True))
    origin = margin
    # per identity: position, radius, frames alive
    nuclei = {
        i + 1: [pts[i] + origin, nucleus_diameter / 2.0, 0, n_frames] for i in range(n_nuclei)
    }
    parents: dict[int, int] = {}
    next_id = n_nuclei + 1
    dividers = (
        rng.choice(np.arange(1, n_nuclei + 1), size=int(n_divisions), replace=False)
        if division_frame is not None
        else np.array([], dtype=int)
    )
    leaver = None
    if disappear_frame is not None:
        others = [i for i in range(1, n_nuclei + 1) if i not in set(dividers.tolist())]
        leaver = int(rng.choice(others))
        nuclei[leaver][3] = int(disappear_frame)
    if appear_frame is not None:
        nuclei[next_id] = [spare + origin, nucleus_diameter / 2.0, int(appear_frame), n_frames]
        next_id += 1
    positions = {i: [None] * n_frames for i in nuclei}
    for i, (p, _, start, stop) in list(nuclei.items()):
        for t in range(n_frames):
            if start <= t < stop:
                positions[i][t] = p.copy()
                step = rng.standard_normal(3)
                p = p + step / np.linalg.norm(step) * rng.uniform(0, jitter_um)
    for parent in dividers.tolist():
        nuclei[parent][3] = int(division_frame)
        u = rng.standard_normal(3)
        u /= np.linalg.norm(u)
        at = positions[parent][division_frame - 1]
        for sgn in (-1.0, 1.0):
            cid = next_id
            next_id += 1
            parents[cid] = int(parent)
            nuclei[cid] = [None, 0.4 * nucleus_diameter, int(division_frame), n_frames]
            positions[cid] = [None] * n_frames
            p = at + sgn * 0.55 * nucleus_diameter * u
            for t in range(division_frame, n_frames):
                positions[cid][t] = p.copy()
                step = rng.standard_normal(3)
                p = p + step / np.linalg.norm(step) * rng.uniform(0, jitter_um)
        for t in range(division_frame, n_frames):
            positions[parent][t] = None
    images, labels_t, centres_t, ids_t = [], [], [], []
    lut_max = max(nuclei) + 1
    lut = np.zeros((lut_max, 1))
    lut[1:, 0] = rng.uniform(0.7, 1.3, size=lut_max - 1)
    for t in range(n_frames):
        alive = [i for i in sorted(nuclei) if positions[i][t] is not None]
        c_um = np.array([positions[i][t] for i in alive])
        r = np.array([nuclei[i][1] for i in alive])
        c_vox = c_um / vs - 0.0
        semi = np.repeat(r[:, None], 3, axis=1)
        rot = np.repeat(np.eye(3)[None], len(alive), axis=0)
        lab_idx, _ = _rasterize_ellipsoids(shape, vs, c_vox, semi, rot)
        ids_arr = np.array(alive, dtype=np.int64)
        lab = np.zeros(shape, dtype=np.uint16)
        lab[lab_idx > 0] = ids_arr[lab_idx[lab_idx > 0].astype(np.int64) - 1]
        images.append(_render_frame(lab, lut, vs, (1.0, 0.3), photons, 20.0, 3.0, rng))
        labels_t.append(lab)
        centres_t.append(c_vox)
        ids_t.append(ids_arr)
    params = {
        "n_frames": n_frames,
        "n_nuclei": int(n_nuclei),
        "nucleus_diameter": float(nucleus_diameter),
        "division_frame": division_frame,
        "n_divisions": int(n_divisions),
        "dividers": [int(i) for i in dividers],
        "appear_frame": appear_frame,
        "disappear_frame": disappear_frame,
        "disappeared": leaver,
        "jitter_um": float(jitter_um),
        "voxel_size": [float(v) for v in vs],
        "seed": seed,
    }
    return SyntheticTimeLapse(
        image=np.stack(images),
        time_axis=0,
        channel_axis=1,
        voxel_size=tuple(float(v) for v in vs),
        centres=centres_t,
        ids=ids_t,
        labels=np.stack(labels_t),
        parents=parents,
        nucleus_diameter=float(nucleus_diameter),
        channel_names=["nuclear"],
        params=params,
    )


__all__ += ["SyntheticTimeLapse", "make_dividing_embryo", "make_moving_worm"]
# Regimes other than the NeuroPAL-like head (issue 12): a single-channel whole-brain
# recording with coarse z, embryos with big -> small nuclei and depth attenuation, and a
# 2-D field of mixed sizes. Each returns a SyntheticWorm (one channel, axis 0).
# --------------------------------------------------------------------------------------


def _rsa_in_region(
    rng: np.random.Generator,
    radii: np.ndarray,
    box_lo: np.ndarray,
    box_hi: np.ndarray,
    inside,
    min_factor: float,
    what: str,
) -> np.ndarray:
    """Random sequential addition of spheres (radii in order) inside a region.

    ``inside(points, r)`` says whether spheres of radius ``r`` at ``points`` (um, array
    axis order) fit in the region; centres are at least ``min_factor * (r_i + r_j)`` apart.
    """
    n = radii.size
    ndim = box_lo.size
    placed = np.empty((n, ndim))
    k = 0
    misses = 0
    while k < n:
        if misses >= 400:
            raise ValueError(
                f"could only place {k} of {n} nuclei in the {what}; ask for fewer or smaller "
                "nuclei or a larger shape"
            )
        cand = rng.uniform(box_lo, box_hi, size=(256, ndim))
        cand = cand[inside(cand, radii[k])]
        k_before = k
        for c in cand:
            if k >= n:
                break
            if k:
                d = np.sqrt(((placed[:k] - c) ** 2).sum(-1))
                if (d < min_factor * (radii[k] + radii[:k])).any():
                    continue
            placed[k] = c
            k += 1
        misses = misses + 1 if k == k_before else 0
    return placed


def _regime_result(
    rng: np.random.Generator,
    *,
    shape: tuple[int, ...],
    voxel_size: tuple[float, ...],
    centres_um: np.ndarray,
    diam: np.ndarray,
    elongation: float,
    brightness: np.ndarray,
    gain,
    background: np.ndarray,
    psf_sigma_um: tuple[float, ...],
    photons: float,
    read_noise: float,
    camera_offset: float,
    params: dict,
) -> SyntheticWorm:
    """Rasterise, blur, add noise and pack one single-channel regime as a SyntheticWorm.

    ``centres_um`` are physical centres in array axis order with voxel ``i`` covering
    ``[i, i + 1) * voxel_size``; ``gain`` is a per-voxel intensity multiplier (e.g. depth
    attenuation) applied to the nuclei, ``background`` is in photons per voxel.
    """
    ndim = len(shape)
    vsz = np.asarray(voxel_size, dtype=float)
    n = centres_um.shape[0]
    perm = rng.permutation(n)  # labels do not follow size
    centres_um, diam = centres_um[perm], diam[perm]
    radii = diam / 2.0
    aspect = np.exp(elongation * rng.standard_normal((n, ndim)))
    aspect /= np.prod(aspect, axis=1, keepdims=True) ** (1.0 / ndim)
    semi = radii[:, None] * aspect
    rot = np.stack([_random_rotation(rng, ndim) for _ in range(n)]) if n else np.empty((0,))
    centres_vox = centres_um / vsz - 0.5
    labels, rnorm = _rasterize_ellipsoids(shape, vsz, centres_vox, semi, rot)
    # a nucleus thinner than the sampling still owns the voxel nearest its centre (with
    # 2 um planes a 2 um nucleus can fall between two planes)
    idx = np.clip(np.rint(centres_vox).astype(int), 0, np.asarray(shape) - 1)
    own = labels[tuple(idx.T)] != np.arange(1, n + 1)
    free = labels[tuple(idx[own].T)] == 0
    ids = np.flatnonzero(own)[free]
    labels[tuple(idx[ids].T)] = ids + 1
    rnorm[tuple(idx[ids].T)] = 1.0
    profile = np.zeros(shape, dtype=np.float32)
    fg = labels > 0
    profile[fg] = 1.0 - 0.35 * np.minimum(rnorm[fg], 1.0) ** 2
    lut = np.zeros(n + 1, dtype=np.float32)
    lut[1:] = brightness[perm]
    obj = lut[labels] * profile * np.asarray(gain, dtype=np.float32)
    if ndim == 3:
        sigma_vox = (psf_sigma_um[0] / vsz[0], psf_sigma_um[1] / vsz[1], psf_sigma_um[1] / vsz[2])
    else:
        sigma_vox = (psf_sigma_um[-1] / vsz[0], psf_sigma_um[-1] / vsz[1])
    blurred = ndimage.gaussian_filter(obj * np.float32(photons), sigma_vox, mode="nearest")
    counts = rng.poisson(np.maximum(blurred + background, 0.0)).astype(np.float32)
    counts += camera_offset + read_noise * rng.standard_normal(shape, dtype=np.float32)
    image = np.clip(np.rint(counts), 0, 65535).astype(np.uint16)[None]
    params = {
        **params,
        "shape": list(shape),
        "voxel_size": [float(v) for v in vsz],
        "n_nuclei": int(n),
        "elongation": float(elongation),
        "psf_sigma_um": [float(s) for s in psf_sigma_um],
        "photons": float(photons),
        "read_noise": float(read_noise),
        "camera_offset": float(camera_offset),
    }
    return SyntheticWorm(
        image=image,
        channel_axis=0,
        voxel_size=tuple(float(v) for v in vsz),
        centres=centres_vox,
        centres_um=centres_vox * vsz,
        labels=labels,
        diameters_um=diam,
        semi_axes_um=semi,
        colours=np.ones((n, 1)),
        brightness=brightness[perm],
        channel_names=["nuclei"],
        granules=np.empty((0, ndim)),
        granule_diameters_um=np.empty(0),
        params=params,
    )


def make_whole_brain(
    *,
    n_nuclei: int = 135,
    shape: tuple[int, int, int] = (15, 169, 411),
    voxel_size: tuple[float, float, float] = (2.0, 0.27, 0.27),
    nucleus_diameter: float = 2.0,
    diameter_variation: float = 0.1,
    brightness_variation: float = 0.5,
    psf_sigma_um: tuple[float, float] = (1.0, 0.25),
    photons: float = 60.0,
    background_photons: float = 12.0,
    read_noise: float = 3.0,
    camera_offset: float = 100.0,
    seed: int | None = 0,
) -> SyntheticWorm:
    """A single-channel whole-brain-style stack: coarse z, small dim neurons.

    Calcium-imaging recordings of the whole C. elegans brain sample z in 1.5-2.5 um steps
    (a ~2 um nucleus spans one or two planes) with fine xy pixels and one nuclear
    channel of low signal. The neurons fill an ellipsoidal head (semi-axes 45 % of the
    stack along x, 38 % along y, 42 % along z) outside a 4 um-radius pharynx core along x;
    the head tissue glows at 40 % of the background level.

    Parameters
    ----------
    n_nuclei : int
        Number of neurons.
    shape : (int, int, int)
        Stack shape ``(z, y, x)``.
    voxel_size : (float, float, float)
        ``(z, y, x)`` in micrometres.
    nucleus_diameter : float
        Mean nucleus diameter (um).
    diameter_variation : float
        Relative standard deviation of the diameters.
    brightness_variation : float
        Brightness factors uniform in ``1 +- brightness_variation``.
    psf_sigma_um : (float, float)
        Gaussian PSF standard deviation ``(axial, lateral)`` in um.
    photons : float
        Photons per voxel at the centre of a nucleus of brightness 1 (before blur).
    background_photons : float
        Background photons per voxel.
    read_noise, camera_offset : float
        Camera read noise (counts, Gaussian) and offset.
    seed : int, optional
        Generator seed.

    Returns
    -------
    SyntheticWorm
        ``image`` ``(1, Z, Y, X)`` uint16 and the truth.
    """
    rng = np.random.default_rng(seed)
    vsz = np.asarray(voxel_size, dtype=float)
    shape = tuple(int(s) for s in shape)
    ext = np.asarray(shape) * vsz
    mid = ext / 2.0
    semi_head = ext * np.array([0.42, 0.38, 0.45])
    n = int(n_nuclei)
    diam = nucleus_diameter * np.clip(1.0 + diameter_variation * rng.standard_normal(n), 0.6, 1.5)
    diam = np.sort(diam)[::-1]

    def inside(p, r):
        q = p - mid
        ok = (((q / np.maximum(semi_head - r, 1e-6)) ** 2).sum(-1)) <= 1.0
        return ok & (np.hypot(q[:, 0], q[:, 1]) >= 4.0 + r)

    pos = _rsa_in_region(rng, diam / 2, mid - semi_head, mid + semi_head, inside, 1.1, "head")
    q = [(np.arange(s) + 0.5) * v - m for s, v, m in zip(shape, vsz, mid, strict=True)]
    zz, yy, xx = np.meshgrid(*q, indexing="ij", sparse=True)
    head = ((zz / semi_head[0]) ** 2 + (yy / semi_head[1]) ** 2 + (xx / semi_head[2]) ** 2) <= 1
    bg = background_photons * (1.0 + 0.4 * head.astype(np.float32))
    brightness = rng.uniform(1 - brightness_variation, 1 + brightness_variation, size=n)
    return _regime_result(
        rng,
        shape=shape,
        voxel_size=tuple(vsz),
        centres_um=pos,
        diam=diam,
        elongation=0.1,
        brightness=brightness,
        gain=1.0,
        background=bg.astype(np.float32),
        psf_sigma_um=psf_sigma_um,
        photons=photons,
        read_noise=read_noise,
        camera_offset=camera_offset,
        params={
            "regime": "whole_brain",
            "nucleus_diameter": float(nucleus_diameter),
            "diameter_variation": float(diameter_variation),
            "brightness_variation": float(brightness_variation),
            "background_photons": float(background_photons),
            "seed": seed,
        },
    )


def embryo_nucleus_diameter(n_nuclei: int) -> float:
    """Mean nucleus diameter (um) of a C. elegans embryo with ``n_nuclei`` nuclei.

    A power law through 7 um at 29 nuclei and 2.5 um at 374 (the sizes of a real
    embryo time-lapse), clipped to [2.5, 7]: ``7 * (n / 29) ** -0.403``.
    """
    k = np.log(7.0 / 2.5) / np.log(374.0 / 29.0)
    return float(np.clip(7.0 * (max(int(n_nuclei), 1) / 29.0) ** -k, 2.5, 7.0))


def make_embryo(
    *,
    n_nuclei: int = 100,
    voxel_size: tuple[float, float, float] = (1.0, 0.3, 0.3),
    embryo_semi_axes_um: tuple[float, float, float] = (14.0, 15.0, 25.0),
    nucleus_diameter: float | None = None,
    diameter_variation: float = 0.1,
    attenuation: float = 5.0,
    brightness_variation: float = 0.3,
    psf_sigma_um: tuple[float, float] = (0.8, 0.2),
    photons: float = 300.0,
    background_photons: float = 20.0,
    cytoplasm: float = 0.08,
    read_noise: float = 3.0,
    camera_offset: float = 100.0,
    seed: int | None = 0,
) -> SyntheticWorm:
    """An embryo-like stack: nuclei from few and big to many and small, dim interior.

    The embryo is an ellipsoid (``embryo_semi_axes_um``, ``(z, y, x)``, C. elegans-like
    50 x 30 x 28 um) filled with ``n_nuclei`` nuclei whose mean diameter follows the stage
    (:func:`embryo_nucleus_diameter`: 7 um at 29 nuclei, 2.5 um at 374). Depth
    attenuation: the signal at ellipsoidal radius ``rho`` (0 at the centre, 1 at the
    surface) is multiplied by ``attenuation ** -(1 - rho)``, so interior nuclei are up to
    ``attenuation`` x dimmer than those at the surface. The cytoplasm glows at
    ``cytoplasm`` x the nuclear signal (equally attenuated). The stack is the embryo plus
    2 um on each side.

    Parameters
    ----------
    n_nuclei : int
        Number of nuclei (the stage).
    voxel_size : (float, float, float)
        ``(z, y, x)`` in micrometres.
    embryo_semi_axes_um : (float, float, float)
        Embryo semi-axes ``(z, y, x)`` in um.
    nucleus_diameter : float, optional
        Mean nucleus diameter (um); None = :func:`embryo_nucleus_diameter` of the stage.
    diameter_variation : float
        Relative standard deviation of the diameters.
    attenuation : float
        Surface-to-centre brightness ratio (>= 1).
    brightness_variation : float
        Per-nucleus brightness factors uniform in ``1 +- brightness_variation``.
    psf_sigma_um : (float, float)
        Gaussian PSF standard deviation ``(axial, lateral)`` in um.
    photons, background_photons, read_noise, camera_offset : float
        Photon and camera settings as in :func:`make_whole_brain`.
    cytoplasm : float
        Cytoplasmic signal relative to the nuclei.
    seed : int, optional
        Generator seed.

    Returns
    -------
    SyntheticWorm
        ``image`` ``(1, Z, Y, X)`` uint16 and the truth.
    """
    if attenuation < 1.0:
        raise ValueError(f"attenuation must be >= 1, got {attenuation}")
    rng = np.random.default_rng(seed)
    vsz = np.asarray(voxel_size, dtype=float)
    semi_e = np.asarray(embryo_semi_axes_um, dtype=float)
    margin = 2.0
    shape = tuple(int(np.ceil((2 * s + 2 * margin) / v)) for s, v in zip(semi_e, vsz, strict=True))
    mid = np.asarray(shape) * vsz / 2.0
    n = int(n_nuclei)
    d_mean = embryo_nucleus_diameter(n) if nucleus_diameter is None else float(nucleus_diameter)
    diam = d_mean * np.clip(1.0 + diameter_variation * rng.standard_normal(n), 0.6, 1.5)
    diam = np.sort(diam)[::-1]

    def inside(p, r):
        return ((((p - mid) / np.maximum(semi_e - r - 0.3, 1e-6)) ** 2).sum(-1)) <= 1.0

    pos = _rsa_in_region(rng, diam / 2, mid - semi_e, mid + semi_e, inside, 1.1, "embryo")
    q = [(np.arange(s) + 0.5) * v - m for s, v, m in zip(shape, vsz, mid, strict=True)]
    zz, yy, xx = np.meshgrid(*q, indexing="ij", sparse=True)
    rho = np.sqrt((zz / semi_e[0]) ** 2 + (yy / semi_e[1]) ** 2 + (xx / semi_e[2]) ** 2)
    gain = (float(attenuation) ** -(1.0 - np.clip(rho, 0.0, 1.0))).astype(np.float32)
    embryo = (rho <= 1.0).astype(np.float32)
    bg = background_photons + ndimage.gaussian_filter(
        cytoplasm * photons * embryo * gain, 1.0 / vsz, mode="nearest"
    )
    brightness = rng.uniform(1 - brightness_variation, 1 + brightness_variation, size=n)
    return _regime_result(
        rng,
        shape=shape,
        voxel_size=tuple(vsz),
        centres_um=pos,
        diam=diam,
        elongation=0.12,
        brightness=brightness,
        gain=gain,
        background=bg.astype(np.float32),
        psf_sigma_um=psf_sigma_um,
        photons=photons,
        read_noise=read_noise,
        camera_offset=camera_offset,
        params={
            "regime": "embryo",
            "embryo_semi_axes_um": [float(s) for s in semi_e],
            "nucleus_diameter": d_mean,
            "diameter_variation": float(diameter_variation),
            "attenuation": float(attenuation),
            "brightness_variation": float(brightness_variation),
            "background_photons": float(background_photons),
            "cytoplasm": float(cytoplasm),
            "seed": seed,
        },
    )


def make_nuclei_field_2d(
    *,
    n_nuclei: int = 125,
    shape: tuple[int, int] = (440, 440),
    voxel_size: tuple[float, float] = (1.0, 1.0),
    diameter_range: tuple[float, float] = (16.0, 32.0),
    elongation: float = 0.15,
    brightness_variation: float = 0.5,
    psf_sigma_um: float = 1.0,
    photons: float = 200.0,
    background_photons: float = 20.0,
    read_noise: float = 3.0,
    camera_offset: float = 100.0,
    seed: int | None = 0,
) -> SyntheticWorm:
    """A 2-D fluorescence field of nuclei of mixed sizes (cultured-cell-like).

    ``n_nuclei`` nuclei with diameters uniform in ``diameter_range`` (default 16-32 um at
    1 um per pixel: mean 24 px, a 2x range) are placed anywhere in the field without
    overlap (they may touch), about 30 % of the area by default; the background has a
    smooth illumination gradient (+-30 %).

    Parameters
    ----------
    n_nuclei : int
        Number of nuclei.
    shape : (int, int)
        Image shape ``(y, x)``.
    voxel_size : (float, float)
        Pixel size ``(y, x)`` in micrometres.
    diameter_range : (float, float)
        Smallest and largest nucleus diameter (um).
    elongation : float
        Log-normal spread of the semi-axes (0 = discs).
    brightness_variation : float
        Per-nucleus brightness factors uniform in ``1 +- brightness_variation``.
    psf_sigma_um : float
        Gaussian PSF standard deviation (um).
    photons, background_photons, read_noise, camera_offset : float
        Photon and camera settings as in :func:`make_whole_brain`.
    seed : int, optional
        Generator seed.

    Returns
    -------
    SyntheticWorm
        ``image`` ``(1, Y, X)`` uint16 and the truth.
    """
    rng = np.random.default_rng(seed)
    vsz = np.asarray(voxel_size, dtype=float)
    shape = tuple(int(s) for s in shape)
    ext = np.asarray(shape) * vsz
    n = int(n_nuclei)
    lo_d, hi_d = (float(d) for d in diameter_range)
    if not 0 < lo_d <= hi_d:
        raise ValueError(f"diameter_range must be (smallest, largest) > 0, got {diameter_range}")
    diam = np.sort(rng.uniform(lo_d, hi_d, size=n))[::-1]
    # room for the elongated semi-axis (exp(2 sd) covers 98 % of them)
    reach = float(np.exp(2 * elongation))

    def inside(p, r):
        return np.all((p - r * reach >= 0) & (p + r * reach <= ext), axis=1)

    pos = _rsa_in_region(rng, diam / 2 * reach, np.zeros(2), ext, inside, 1.0, "field")
    yy, xx = np.meshgrid(*[(np.arange(s) + 0.5) / s for s in shape], indexing="ij", sparse=True)
    a, b = rng.uniform(-0.3, 0.3, size=2)
    bg = background_photons * (1.0 + a * (yy - 0.5) * 2 + b * (xx - 0.5) * 2)
    brightness = rng.uniform(1 - brightness_variation, 1 + brightness_variation, size=n)
    return _regime_result(
        rng,
        shape=shape,
        voxel_size=tuple(vsz),
        centres_um=pos,
        diam=diam,
        elongation=elongation,
        brightness=brightness,
        gain=1.0,
        background=bg.astype(np.float32),
        psf_sigma_um=(psf_sigma_um,),
        photons=photons,
        read_noise=read_noise,
        camera_offset=camera_offset,
        params={
            "regime": "field_2d",
            "diameter_range": [lo_d, hi_d],
            "brightness_variation": float(brightness_variation),
            "background_photons": float(background_photons),
            "seed": seed,
        },
    )


__all__ += ["embryo_nucleus_diameter", "make_embryo", "make_nuclei_field_2d", "make_whole_brain"]


def write_synthetic_worms(
    output_dir: str | os.PathLike[str],
    n: int,
    *,
    seed: int = 0,
    n_nuclei: int | None = None,
    n_channels: int = 4,
    ndim: int = 3,
    region: str = "head",
    voxel_size: Sequence[float] | None = None,
    progress_bar: bool = False,
) -> list[Path]:
    """Write synthetic worm images with their ground truth.

    For ``i = 0 .. n-1`` writes ``worm_<i>.tif`` (calibrated ImageJ TIFF, channels as
    ImageJ's C axis) into ``output_dir`` and, into ``output_dir/truth``,
    ``worm_<i>_labels.tif`` (true nuclei labels, same voxel size) and
    ``worm_<i>_centres.csv`` (:meth:`SyntheticWorm.table`: ``label``, ``z``, ``y``, ``x``
    in voxels, ``z_um``, ``y_um``, ``x_um``, ``diameter_um``, ``brightness``,
    ``colour_<channel>``; no z columns for 2-D). Worm ``i`` uses the seed
    ``derive_seed(seed, "worm_<i>")``, so worm ``i`` is the same whatever ``n``. The
    truth lives in a sub-folder so that ``segment DIR`` only picks up the images.

    Parameters
    ----------
    output_dir : path-like
        Output folder (created if needed).
    n : int
        Number of worms (>= 1).
    seed : int, default 0
        Base seed (>= 0).
    n_nuclei : int, optional
        Nuclei per worm; None = the generator's default.
    n_channels : int, default 4
        Number of channels (1-6; the last is the pan-nuclear marker).
    ndim : {2, 3}, default 3
        2-D images or 3-D stacks.
    region : {"head", "body"}, default "head"
        Dense head ganglia or a sparser mid-body piece.
    voxel_size : sequence of float, optional
        Voxel size in micrometres (``(z, y, x)`` or ``(y, x)``); None = the generator's
        default (0.8, 0.35, 0.35).
    progress_bar : bool, default False
        Show a tqdm bar on stderr.

    Returns
    -------
    list of pathlib.Path
        The image files written.
    """
    import logging
    import sys
    from collections.abc import Iterable

    from .batch.inputs import BatchError, derive_seed
    from .io import write_image, write_labels, write_table

    logger = logging.getLogger("napari_sinkhorn_em.batch")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise BatchError(f"n must be a positive integer, got {n!r}")
    if ndim not in (2, 3):
        raise BatchError(f"ndim must be 2 or 3, got {ndim!r}")
    derive_seed(seed, "")  # validates the seed
    out = Path(output_dir).expanduser()
    truth = out / "truth"
    truth.mkdir(parents=True, exist_ok=True)
    width = max(3, len(str(n - 1)))
    kwargs: dict[str, Any] = {"ndim": ndim, "n_channels": n_channels, "region": region}
    if voxel_size is not None:
        kwargs["voxel_size"] = tuple(float(v) for v in voxel_size)
    if n_nuclei is not None:
        kwargs["n_nuclei"] = n_nuclei
    written = []
    names = [f"worm_{i:0{width}d}" for i in range(n)]
    iterator: Iterable[str] = names
    if progress_bar:
        from tqdm.auto import tqdm

        iterator = tqdm(names, desc="worms", unit="worm", file=sys.stderr)
    for name in iterator:
        worm = make_worm(seed=derive_seed(seed, name), **kwargs)
        spatial = "ZYX"[3 - ndim :]
        if worm.channel_axis is None:
            axes = spatial
        else:
            axes = spatial[: worm.channel_axis] + "C" + spatial[worm.channel_axis :]
        path = out / f"{name}.tif"
        write_image(
            path,
            worm.image,
            voxel_size=worm.voxel_size,
            axes=axes,
            channel_names=None if worm.channel_axis is None else list(worm.channel_names),
        )
        write_labels(truth / f"{name}_labels.tif", worm.labels, worm.voxel_size)
        write_table(truth / f"{name}_centres.csv", worm.table())
        written.append(path)
        logger.info("wrote %s (%d nuclei) and its truth", path, worm.n_nuclei)
    return written
