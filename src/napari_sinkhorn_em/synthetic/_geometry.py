"""Worm anatomy and nucleus placement for :func:`~napari_sinkhorn_em.synthetic.make_worm`
(micrometres; x along the worm from the nose tip, y dorsal-ventral, z left-right).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
