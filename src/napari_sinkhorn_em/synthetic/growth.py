"""A growing embryo time-lapse with identity truth: rounds of divisions that halve the
nuclear volume, so that the nuclei shrink across the series (:func:`make_growing_embryo`).

A real C. elegans embryo recording goes from ~30 nuclei of 7 um to ~370 of 2.5 um; a
tracker that keeps the nucleus scale of its first frame is wrong by 2-3x at the end.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from .regimes import (
    _embryo_field,
    _embryo_stack,
    _regime_result,
    _rsa_in_region,
    embryo_nucleus_diameter,
)
from .timelapse import SyntheticTimeLapse

__all__ = ["make_growing_embryo"]


def _relax(pos: np.ndarray, radii: np.ndarray, mid, rho2, gap: float, n_iter: int = 200):
    """Push overlapping spheres apart (centres at least ``gap * (r_i + r_j)`` apart) and
    keep each inside the embryo (``rho2`` of :func:`.regimes._embryo_stack`)."""
    pos = pos.copy()
    for _ in range(n_iter):
        moved = False
        tree = cKDTree(pos)
        for i, j in tree.query_pairs(gap * 2.0 * float(radii.max())):
            need = gap * (radii[i] + radii[j])
            d = pos[j] - pos[i]
            dist = float(np.linalg.norm(d))
            if dist >= need:
                continue
            u = d / dist if dist > 1e-9 else np.array([0.0, 0.0, 1.0])
            push = 0.5 * (need - dist) * u
            pos[i] -= push
            pos[j] += push
            moved = True
        out = np.sqrt(rho2(pos, radii[:, None]))
        far = out > 1.0
        if far.any():
            pos[far] = mid + (pos[far] - mid) / out[far, None]
            moved = True
        if not moved:
            break
    return pos


def make_growing_embryo(
    *,
    n_frames: int = 6,
    n_start: int = 24,
    division_fraction: float = 0.6,
    voxel_size: tuple[float, float, float] = (1.0, 0.3, 0.3),
    embryo_semi_axes_um: tuple[float, float, float] = (14.0, 15.0, 25.0),
    nucleus_diameter: float | None = None,
    diameter_variation: float = 0.08,
    jitter_um: float = 0.5,
    attenuation: float = 5.0,
    brightness_variation: float = 0.3,
    psf_sigma_um: tuple[float, float] = (0.8, 0.2),
    photons: float = 300.0,
    background_photons: float = 20.0,
    cytoplasm: float = 0.08,
    read_noise: float = 3.0,
    camera_offset: float = 100.0,
    mitotic_fraction: float = 0.0,
    seed: int | None = 0,
) -> SyntheticTimeLapse:
    """An embryo-like series whose nuclei divide and shrink from frame to frame.

    Frame 0 holds ``n_start`` nuclei of mean diameter ``nucleus_diameter`` (default:
    :func:`~napari_sinkhorn_em.synthetic.embryo_nucleus_diameter` of ``n_start``, 7 um at
    ~30 nuclei) in an ellipsoidal embryo as :func:`~napari_sinkhorn_em.synthetic.make_embryo`
    renders it (depth attenuation, cytoplasmic glow, PSF, camera noise). Before each
    later frame, ``division_fraction`` of the nuclei divide: two children of half the
    parent's volume (diameter x 2^(-1/3)) touching along a random axis, with new ids and
    ``parents[child] = parent``; then the nuclei are pushed apart where they overlap,
    kept inside the embryo, and drift by up to ``jitter_um``. With the defaults the
    series goes from 24 nuclei of ~7 um to 251 of ~3 um. A nucleus keeps its brightness
    (children inherit it).

    Parameters
    ----------
    n_frames : int
        Number of frames (>= 2).
    n_start : int
        Nuclei in frame 0.
    division_fraction : float
        Fraction of the nuclei (of those that may) dividing before each frame, in [0, 1].
    voxel_size, embryo_semi_axes_um : tuple of float
        ``(z, y, x)`` in micrometres.
    nucleus_diameter : float, optional
        Mean diameter in frame 0 (um).
    diameter_variation : float
        Relative standard deviation of the frame-0 diameters.
    jitter_um : float
        Largest drift of a nucleus between frames (um).
    attenuation, brightness_variation, psf_sigma_um : float
        As for :func:`~napari_sinkhorn_em.synthetic.make_embryo`.
    photons, background_photons, cytoplasm, read_noise, camera_offset : float
        As for :func:`~napari_sinkhorn_em.synthetic.make_embryo`.
    mitotic_fraction : float
        Fraction of the nuclei that divide before the next frame shown in metaphase in
        this frame: the chromatin condensed into a bright plate, as
        :func:`~napari_sinkhorn_em.synthetic.make_embryo` draws it (the truth centre stays
        the nucleus'); their ids per frame are ``params["mitotic_ids"]``. With 0 (the
        default) the series is the same as before the option existed.
    seed : int, optional
        Generator seed.

    Returns
    -------
    SyntheticTimeLapse
        ``image`` ``(T, 1, Z, Y, X)`` uint16; ``params["n_nuclei"]`` and
        ``params["mean_diameter_um"]`` per frame.
    """
    if int(n_frames) < 2:
        raise ValueError(f"n_frames must be >= 2, got {n_frames!r}")
    if int(n_start) < 1:
        raise ValueError(f"n_start must be >= 1, got {n_start!r}")
    if not 0.0 <= float(division_fraction) <= 1.0:
        raise ValueError(f"division_fraction must be in [0, 1], got {division_fraction!r}")
    if not 0.0 <= float(mitotic_fraction) <= 1.0:
        raise ValueError(f"mitotic_fraction must be in [0, 1], got {mitotic_fraction!r}")
    vsz = np.asarray(voxel_size, dtype=float)
    semi_e = np.asarray(embryo_semi_axes_um, dtype=float)
    shape, mid, rho2 = _embryo_stack(semi_e, vsz)
    gain, bg = _embryo_field(
        shape, vsz, semi_e, attenuation, cytoplasm, photons, background_photons
    )
    rng = np.random.default_rng(seed)
    n = int(n_start)
    d0 = embryo_nucleus_diameter(n) if nucleus_diameter is None else float(nucleus_diameter)
    diam = d0 * np.clip(1.0 + diameter_variation * rng.standard_normal(n), 0.6, 1.5)
    order = np.argsort(-diam, kind="stable")
    pos = np.empty((n, 3))
    pos[order] = _rsa_in_region(
        rng, diam[order] / 2, mid - semi_e, mid + semi_e, lambda p, r: rho2(p, r) <= 1.0, 1.1,
        "embryo",
    )  # fmt: skip
    ids = np.arange(1, n + 1)
    bright = dict(
        zip(
            ids.tolist(),
            rng.uniform(1 - brightness_variation, 1 + brightness_variation, n).tolist(),
            strict=True,
        )
    )
    parents: dict[int, int] = {}
    next_id = n + 1
    images, labels_t, centres_t, ids_t, counts, means = [], [], [], [], [], []
    mitotic_ids: list[list[int]] = []
    pending = None  # the nuclei that divide before the next frame, when drawn ahead
    for t in range(int(n_frames)):
        if t > 0:
            if pending is None:
                k = round(float(division_fraction) * ids.size)
                split = np.sort(rng.choice(ids.size, size=k, replace=False))
            else:
                split = pending
            keep = np.setdiff1d(np.arange(ids.size), split)
            new_pos, new_d, new_ids = [pos[keep]], [diam[keep]], [ids[keep]]
            for i in split.tolist():
                u = rng.standard_normal(3)
                u /= np.linalg.norm(u)
                dc = diam[i] * 2.0 ** (-1.0 / 3.0)
                for sgn in (-1.0, 1.0):
                    new_pos.append((pos[i] + sgn * 0.55 * dc * u)[None])
                    new_d.append(np.array([dc]))
                    new_ids.append(np.array([next_id]))
                    parents[next_id] = int(ids[i])
                    bright[next_id] = bright[int(ids[i])]
                    next_id += 1
            pos, diam, ids = np.concatenate(new_pos), np.concatenate(new_d), np.concatenate(new_ids)
            step = rng.standard_normal(pos.shape)
            step *= (rng.uniform(0, jitter_um, len(pos)) / np.linalg.norm(step, axis=1))[:, None]
            pos = _relax(pos + step, diam / 2.0, mid, rho2, gap=1.05)
        mitotic = np.zeros(ids.size, dtype=bool)
        if mitotic_fraction > 0 and t < int(n_frames) - 1:
            # the next frame's divisions drawn ahead: some of them are in metaphase now
            k = round(float(division_fraction) * ids.size)
            pending = np.sort(rng.choice(ids.size, size=k, replace=False))
            m = round(float(mitotic_fraction) * k)
            mitotic[rng.choice(pending, size=m, replace=False)] = True
        mitotic_ids.append(ids[mitotic].tolist())
        frame = _regime_result(
            rng,
            shape=shape,
            voxel_size=tuple(vsz),
            centres_um=pos,
            diam=diam,
            elongation=0.08,
            brightness=np.array([bright[int(i)] for i in ids]),
            gain=gain,
            background=bg,
            psf_sigma_um=psf_sigma_um,
            photons=photons,
            read_noise=read_noise,
            camera_offset=camera_offset,
            params={},
            mitotic=mitotic,
        )
        # _regime_result shuffles the nuclei: label k + 1 is its centre row k
        row = cKDTree(pos / vsz - 0.5).query(frame.centres)[1]
        lut = np.concatenate([[0], ids[row]]).astype(np.uint16)
        images.append(frame.image)
        labels_t.append(lut[frame.labels])
        centres_t.append(pos / vsz - 0.5)
        ids_t.append(ids.copy())
        counts.append(int(ids.size))
        means.append(float(diam.mean()))
    params = {
        "regime": "growing_embryo",
        "n_frames": int(n_frames),
        "n_start": int(n_start),
        "division_fraction": float(division_fraction),
        "voxel_size": [float(v) for v in vsz],
        "embryo_semi_axes_um": [float(s) for s in semi_e],
        "nucleus_diameter": d0,
        "jitter_um": float(jitter_um),
        "attenuation": float(attenuation),
        "photons": float(photons),
        "n_nuclei": counts,
        "mean_diameter_um": means,
        "mitotic_fraction": float(mitotic_fraction),
        "mitotic_ids": mitotic_ids,
        "seed": seed,
    }
    return SyntheticTimeLapse(
        image=np.stack(images),
        time_axis=0,
        channel_axis=1,
        voxel_size=tuple(float(v) for v in vsz),
        centres=centres_t,
        ids=ids_t,
        labels=np.stack(labels_t),
        parents=parents,
        nucleus_diameter=d0,
        channel_names=["nuclear"],
        params=params,
    )
