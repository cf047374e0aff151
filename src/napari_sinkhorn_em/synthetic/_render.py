"""Rendering shared by the synthetic generators: NeuroPAL-like colours, ellipsoid
rasterisation, granules, background, PSF and camera noise.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ._geometry import _WALL, _body_radius, _core_radius, _Frame, _Nuclei, _to_axes

__all__ = ["CHANNEL_NAMES"]

#: NeuroPAL-like channel names; the last one is the pan-nuclear marker.
CHANNEL_NAMES = ("mNeptune2.5", "CyOFP1", "mTagBFP2", "pan-nuclear")


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
