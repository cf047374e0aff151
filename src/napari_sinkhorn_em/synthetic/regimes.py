"""Acquisition regimes other than the NeuroPAL-like head (issue 12): a single-channel
whole-brain recording with coarse z, embryos with big -> small nuclei and depth
attenuation, and a 2-D field of mixed sizes. Each returns a
:class:`~napari_sinkhorn_em.synthetic.SyntheticWorm` (one channel, axis 0).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ._geometry import _random_rotation
from ._render import _rasterize_ellipsoids
from .worm import SyntheticWorm

__all__ = ["embryo_nucleus_diameter", "make_embryo", "make_nuclei_field_2d", "make_whole_brain"]


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


def _texture_field(rng, shape, vsz, texture: float, scale_um: float) -> np.ndarray:
    """A smooth log-normal brightness field (chromatin texture): median 1, log-sd ``texture``.

    Gaussian white noise smoothed to a correlation length of ``scale_um``, scaled to unit
    standard deviation, then ``exp(texture * g)``.
    """
    g = ndimage.gaussian_filter(
        rng.standard_normal(shape).astype(np.float32), np.asarray(scale_um) / vsz, mode="wrap"
    )
    g /= max(float(g.std()), 1e-12)
    return np.exp(np.float32(texture) * g)


# a metaphase plate's semi-axes relative to the nucleus radius (a disk; 2-D: a bar,
# the last two); its voxels are brighter by the inverse of its volume fraction, so that
# it holds the light of the interphase nucleus (the histone-bound label stays on the
# condensed chromatin)
_PLATE_SHAPE = (0.7, 0.7, 0.2)


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
    texture: float = 0.0,
    texture_scale_um: float | None = None,
    mitotic_fraction: float = 0.0,
    mitotic: np.ndarray | None = None,
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
    if not 0.0 <= mitotic_fraction <= 1.0:
        raise ValueError(f"mitotic_fraction must be in [0, 1], got {mitotic_fraction}")
    plate = np.array(_PLATE_SHAPE[-ndim:])
    if mitotic is not None:  # given per nucleus, in the order of ``centres_um``
        mitotic = np.asarray(mitotic, dtype=bool)[perm]
    else:
        mitotic = np.zeros(n, dtype=bool)
        if mitotic_fraction > 0 and n:
            mitotic[rng.choice(n, size=round(mitotic_fraction * n), replace=False)] = True
    if mitotic.any():
        # metaphase plates: the chromatin condensed into a randomly oriented disk
        semi[mitotic] = radii[mitotic, None] * plate[None, :]
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
    lut[1:] = brightness[perm] * np.where(mitotic, 1.0 / float(np.prod(plate)), 1.0)
    obj = lut[labels] * profile * np.asarray(gain, dtype=np.float32)
    if texture_scale_um is None:  # a quarter of the mean diameter
        texture_scale_um = 0.25 * float(np.mean(diam)) if n else 1.0
    if texture < 0 or texture_scale_um <= 0:
        raise ValueError(
            f"texture must be >= 0 and texture_scale_um > 0, got {texture} and {texture_scale_um}"
        )
    if texture > 0:
        obj *= _texture_field(rng, shape, vsz, texture, texture_scale_um)
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
        "texture": float(texture),
        "texture_scale_um": float(texture_scale_um),
        "mitotic_fraction": float(mitotic_fraction),
        # labels (1-based) of the nuclei drawn as metaphase plates
        "mitotic_labels": (np.flatnonzero(mitotic) + 1).tolist(),
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
    texture: float = 0.0,
    texture_scale_um: float | None = None,
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
    texture : float
        Chromatin-like texture: each nucleus' brightness is multiplied by a smooth
        log-normal field of log-sd ``texture`` (0 = uniform nuclei, 0.3-0.5 is
        typical of histone-labelled nuclei).
    texture_scale_um : float, optional
        Correlation length of the texture (um); default a quarter of the mean
        nucleus diameter.
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
        texture=texture,
        texture_scale_um=texture_scale_um,
    )


def embryo_nucleus_diameter(n_nuclei: int) -> float:
    """Mean nucleus diameter (um) of a C. elegans embryo with ``n_nuclei`` nuclei.

    A power law through 7 um at 29 nuclei and 2.5 um at 374 (the sizes of a real
    embryo time-lapse), clipped to [2.5, 7]: ``7 * (n / 29) ** -0.403``.
    """
    k = np.log(7.0 / 2.5) / np.log(374.0 / 29.0)
    return float(np.clip(7.0 * (max(int(n_nuclei), 1) / 29.0) ** -k, 2.5, 7.0))


def _embryo_stack(semi_e, vsz, margin: float = 2.0):
    """Geometry of an embryo (semi-axes ``semi_e`` um) centred in a stack with ``margin``
    um on each side: the stack shape, its centre (um) and ``rho2(p, r)``, the squared
    ellipsoidal radius of sphere centres ``p`` (um) of radius ``r`` in the embryo shrunk
    by ``r`` plus 0.3 um (<= 1: the sphere lies inside)."""
    shape = tuple(int(np.ceil((2 * s + 2 * margin) / v)) for s, v in zip(semi_e, vsz, strict=True))
    mid = np.asarray(shape) * vsz / 2.0

    def rho2(p, r):
        return (((p - mid) / np.maximum(semi_e - r - 0.3, 1e-6)) ** 2).sum(-1)

    return shape, mid, rho2


def _embryo_field(shape, vsz, semi_e, attenuation, cytoplasm, photons, background_photons):
    """Depth attenuation ``gain`` (``attenuation ** -(1 - rho)`` at ellipsoidal radius
    ``rho`` of an embryo centred in the stack) and the background in photons (the
    attenuated cytoplasmic glow, smoothed over 1 um, plus ``background_photons``), both
    float32 of ``shape``. ``attenuation`` must be >= 1."""
    if attenuation < 1.0:
        raise ValueError(f"attenuation must be >= 1, got {attenuation}")
    mid = np.asarray(shape) * vsz / 2.0
    q = [(np.arange(s) + 0.5) * v - m for s, v, m in zip(shape, vsz, mid, strict=True)]
    zz, yy, xx = np.meshgrid(*q, indexing="ij", sparse=True)
    rho = np.sqrt((zz / semi_e[0]) ** 2 + (yy / semi_e[1]) ** 2 + (xx / semi_e[2]) ** 2)
    gain = (float(attenuation) ** -(1.0 - np.clip(rho, 0.0, 1.0))).astype(np.float32)
    embryo = (rho <= 1.0).astype(np.float32)
    bg = background_photons + ndimage.gaussian_filter(
        cytoplasm * photons * embryo * gain, 1.0 / vsz, mode="nearest"
    )
    return gain, bg.astype(np.float32)


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
    texture: float = 0.0,
    texture_scale_um: float | None = None,
    mitotic_fraction: float = 0.0,
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
    texture, texture_scale_um : float
        Chromatin-like texture as in :func:`make_whole_brain`.
    mitotic_fraction : float
        Fraction of the nuclei drawn in metaphase: the chromatin condensed into a
        randomly oriented plate 0.7 of the nucleus wide and 0.2 thick,
        holding the nucleus' light (10x brighter voxels; a dividing embryo has 10-20 % of
        its nuclei in mitosis). Their labels are ``params["mitotic_labels"]``; the truth
        centre and mask are the plate's.
    seed : int, optional
        Generator seed.

    Returns
    -------
    SyntheticWorm
        ``image`` ``(1, Z, Y, X)`` uint16 and the truth.
    """
    vsz = np.asarray(voxel_size, dtype=float)
    semi_e = np.asarray(embryo_semi_axes_um, dtype=float)
    shape, mid, rho2 = _embryo_stack(semi_e, vsz)
    gain, bg = _embryo_field(
        shape, vsz, semi_e, attenuation, cytoplasm, photons, background_photons
    )
    rng = np.random.default_rng(seed)
    n = int(n_nuclei)
    d_mean = embryo_nucleus_diameter(n) if nucleus_diameter is None else float(nucleus_diameter)
    diam = d_mean * np.clip(1.0 + diameter_variation * rng.standard_normal(n), 0.6, 1.5)
    diam = np.sort(diam)[::-1]
    pos = _rsa_in_region(
        rng, diam / 2, mid - semi_e, mid + semi_e, lambda p, r: rho2(p, r) <= 1.0, 1.1, "embryo"
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
        background=bg,
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
        texture=texture,
        texture_scale_um=texture_scale_um,
        mitotic_fraction=mitotic_fraction,
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
    texture: float = 0.0,
    texture_scale_um: float | None = None,
    mitotic_fraction: float = 0.0,
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
    texture, texture_scale_um : float
        Chromatin-like texture as in :func:`make_whole_brain`.
    mitotic_fraction : float
        Fraction of the nuclei drawn in metaphase, as in :func:`make_embryo` (in 2-D the
        plate is a bar 0.7 of the nucleus long and 0.2 wide, 7x brighter).
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
        texture=texture,
        texture_scale_um=texture_scale_um,
        mitotic_fraction=mitotic_fraction,
    )
