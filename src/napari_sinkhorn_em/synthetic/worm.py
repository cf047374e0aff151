"""The NeuroPAL-like worm stack with ground truth (:func:`make_worm`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .._validation import check_int, check_voxel_size
from ._geometry import _nuclei_geometry, _stack_frame
from ._render import (
    _background,
    _channel_names,
    _granules,
    _neuropal_colours,
    _physical_grids,
    _rasterize_ellipsoids,
    _render,
)

__all__ = ["SyntheticWorm", "make_worm"]


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
