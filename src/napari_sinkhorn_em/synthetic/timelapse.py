"""Synthetic time-lapses with identity truth: a moving, bending head
(:func:`make_moving_worm`) and a dividing embryo (:func:`make_dividing_embryo`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ._render import _rasterize_ellipsoids
from .worm import make_worm

__all__ = ["SyntheticTimeLapse", "make_dividing_embryo", "make_moving_worm"]


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
