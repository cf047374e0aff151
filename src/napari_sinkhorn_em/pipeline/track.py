"""Nucleus tracking through a time-lapse: the mixture of frame t starts frame t + 1.

:func:`track_nuclei` segments a reference frame with :func:`.segment.segment_nuclei` (and
refits it once as below, with no motion), then walks forward (and backward from the
reference) one frame at a time:

1. preprocess the frame and build its voxel features (the public
   :func:`.preprocess.preprocess` and :func:`.features.voxel_features`), detect its nuclei
   as ``segment_nuclei``'s local mode does (:func:`.adaptive.detect`);
2. estimate the global motion from the previous frame: a translation by phase
   correlation of the (downsampled) signals, then a trimmed rigid ICP of the previous
   fitted centres onto the new peaks (rotation + translation), then non-rigid coherent
   point drift (CPD; a smooth displacement field, so a bending head moves coherently);
3. before the fit: a component whose nucleus has vanished or left the field ends its
   track; a component with a peak on either side divides into two children
   (``parent_id``); a peak far from every component starts a track;
4. move the previous mixture (means; position covariances turned with the head) and
   refit it with Sinkhorn-EM on the voxels within a nucleus diameter of a component,
   the weights fixed at each component's share of the foreground: a component cannot
   give its nucleus away to a neighbour or take a second one;
5. after the fit: of two components on one nucleus, one ends; a peak still far from
   every component starts a track; if anything changed the mixture is refitted;
6. labels (each voxel to its most responsible component within ``mahalanobis_radius``)
   carry the track id, so a nucleus keeps its label value through time.
"""

from __future__ import annotations

import contextvars
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree
from scipy.special import logsumexp
from threadpoolctl import threadpool_limits

from .._validation import single_plane_axis
from ..mixture import ConvergenceWarning, SinkhornEM
from . import adaptive
from .features import voxel_features
from .labels import min_label_volume
from .preprocess import auto_threshold, granule_mask, preprocess
from .segment import (
    SegmentationCancelled,
    _plane_axis_columns,
    _without_plane_axis,
    segment_nuclei,
)

# The backfill pass reruns track_nuclei from the reference nuclei plus the ones it adds;
# of those given centres only the user's own (tracks 1..n) are protected from the
# vanished / duplicate rules. The count travels here, not as a keyword of the public
# function (None = every given centre is the user's).
_PROTECTED: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "napari_sinkhorn_em_track_protected", default=None
)

# ... and the first pass' result: the second pass re-tracks a frame only while its
# tracks differ from the first pass' there (see _match_frame).
_FIRST_PASS: contextvars.ContextVar[TrackingResult | None] = contextvars.ContextVar(
    "napari_sinkhorn_em_track_first_pass", default=None
)

__all__ = ["TrackingCancelled", "TrackingResult", "save_tracking", "track_nuclei"]

MOTIONS = ("none", "translation", "rigid", "deformable")
METHODS = ("sinkhorn", "em")
WEIGHTS = ("voronoi", "nuclei", "previous", "uniform")
REFIT_MAX_ITER = 30
# Frames where many nuclei divide (see track_nuclei's step): measured on the growing
# embryo, seeds 0-2 (docs/tracking.md, "Growing embryos"): a first fit of 15 iterations
# and a refit of 20 at tol kept the links (0.904 against 0.900 on average) and cut the
# fits' iterations from 30 + 30 to 15 + 12-20 in the frames of 150-250 nuclei
DIVIDING_FRACTION = 0.1
DIVIDING_FIRST_MAX_ITER = 15
DIVIDING_REFIT_MAX_ITER = 20


class TrackingCancelled(SegmentationCancelled):
    """Raised by :func:`track_nuclei` when the progress callback asks to stop."""


class _FirstPassStands(Exception):
    """The backfill's second pass kept none of the nuclei it added in the reference
    frame: the first pass is the result (raised by the second pass, caught by
    :func:`_backfill`)."""


@dataclass
class TrackingResult:
    """Output of :func:`track_nuclei`.

    Attributes
    ----------
    labels : numpy.ndarray
        ``(T, [Z,] Y, X)`` label image; the value of a nucleus is its ``track_id`` in
        every frame (0 = background). uint16 when the ids fit, else uint32.
    tracks : pandas.DataFrame
        One row per nucleus per frame: ``track_id``, ``t``, ``z`` (3-D only), ``y``, ``x``
        (voxel coordinates), ``z_um`` (3-D), ``y_um``, ``x_um``, ``parent_id`` (0 = none;
        a division ends the parent's track and starts two tracks whose ``parent_id`` is
        the parent's id), then the per-nucleus columns of
        :func:`~napari_sinkhorn_em.segment_nuclei`: ``label`` (= ``track_id``),
        ``volume_um3``, ``mean_<channel>``. Sorted by ``track_id`` then ``t``: the
        layout of a napari Tracks layer (``tracks[["track_id", "t", "z", "y", "x"]]``).
    params : dict
        Every keyword argument used (JSON-serialisable).
    frames : list of dict
        Per-frame fit information, in time order: ``t``, ``n_tracks``, ``new``,
        ``ended``, ``divided`` (track ids), ``reasons`` (which rule started or ended
        which track: "new", "vanished", "duplicate", "divided_after_fit",
        "divided_adopted"), ``motion`` (phase shift, rotation
        and translation of the global estimate, residual after it, how far the fit moved
        the components), ``n_iter``, ``converged``, ``objective``, ``timings`` (s),
        ``reference``, ``nucleus_diameter_um`` (the frame's scale), ``dividing``
        (the frame's fits were those of a frame where many nuclei divide, see
        :data:`DIVIDING_FRACTION`). The reference frame also holds ``segment_nuclei``'s
        info (``segmentation``) and the backfill's (``backfilled``; after a second
        pass ``first_pass`` and ``retracked``, the frames that pass tracked; a frame
        it took from the first pass has ``spliced: True``; ``backfill_ended``: the
        carried-back nuclei whose second pass ended them in the reference frame, so
        the first pass was kept).
    """

    labels: np.ndarray
    tracks: pd.DataFrame
    params: dict
    frames: list = field(default_factory=list)

    @property
    def nucleus_diameter_um(self) -> float:
        """The nucleus diameter of the reference frame (um): the given number, or the
        one estimated on it when ``nucleus_diameter="auto"`` (each frame's own is
        ``frames[t]["nucleus_diameter_um"]``)."""
        ref = int(self.params.get("reference_frame", 0))
        return float(self.frames[ref]["nucleus_diameter_um"])

    @property
    def graph(self) -> dict[int, list[int]]:
        """``{track_id: [parent_id]}`` for the tracks with a parent (napari Tracks graph)."""
        first = self.tracks.drop_duplicates("track_id")
        return {
            int(r.track_id): [int(r.parent_id)]
            for r in first.itertuples(index=False)
            if int(r.parent_id) > 0
        }


# --------------------------------------------------------------------------- state


@dataclass
class _State:
    """The mixture carried from frame to frame (position block in micrometres)."""

    ids: np.ndarray  # (K,) track ids
    means: np.ndarray  # (K, D) features: position um, then weighted intensities
    covs: np.ndarray  # (K, D, D)
    mass: np.ndarray  # (K,) relative mass (nucleus volume share) from the last frame
    peaks_um: np.ndarray  # (P, ndim) LoG peaks of the last frame (um)
    signal: np.ndarray  # downsampled signal of the last frame (phase correlation)
    diameter: float = 0.0  # nucleus diameter of the last frame (um)


#: The tracker's fits stop at this fraction of ``tol`` (see :func:`track_nuclei`).
REFIT_TOL_FACTOR = 0.1


# --------------------------------------------------------------------------- motion


def _kabsch(src: np.ndarray, dst: np.ndarray, w: np.ndarray | None = None):
    """Rotation R and translation t minimising sum w |R src + t - dst|^2."""
    if w is None:
        w = np.ones(src.shape[0])
    w = w / w.sum()
    cs = (w[:, None] * src).sum(0)
    cd = (w[:, None] * dst).sum(0)
    H = ((src - cs) * w[:, None]).T @ (dst - cd)
    U, _, Vt = np.linalg.svd(H)
    d = np.sign(np.linalg.det(Vt.T @ U.T)) or 1.0
    S = np.eye(src.shape[1])
    S[-1, -1] = d
    R = Vt.T @ S @ U.T
    return R, cd - R @ cs


def _downsample(signal: np.ndarray, vs: np.ndarray, target_um: float):
    """Block-mean the signal to voxels of about ``target_um`` (phase correlation input)."""
    f = np.maximum(1, np.floor(target_um / vs).astype(int))
    shape = tuple(int(s // k) for s, k in zip(signal.shape, f, strict=True))
    if min(shape) < 2:
        f = np.ones_like(f)
        shape = signal.shape
    crop = signal[tuple(slice(0, s * k) for s, k in zip(shape, f, strict=True))]
    red = crop.reshape([x for s, k in zip(shape, f, strict=True) for x in (s, k)])
    out = red.mean(axis=tuple(range(1, 2 * len(shape), 2)))
    return out.astype(np.float32), f * vs


def _phase_shift(prev: np.ndarray, cur: np.ndarray, cell_um: np.ndarray) -> np.ndarray:
    """Translation (um) that moves ``prev`` onto ``cur`` (phase correlation)."""
    from skimage.registration import phase_cross_correlation

    if prev.shape != cur.shape or prev.max() <= 0 or cur.max() <= 0:
        return np.zeros(cur.ndim)
    shift, _, _ = phase_cross_correlation(cur, prev, normalization=None)
    return np.asarray(shift, dtype=np.float64) * cell_um


def _cpd_p(X, TY, sigma2, w):
    """CPD posterior P (M x N) of source points TY for target points X."""
    M, D = TY.shape
    N = X.shape[0]
    d2 = ((TY[:, None, :] - X[None, :, :]) ** 2).sum(-1)
    logk = -d2 / (2.0 * sigma2)
    log_c = (D / 2.0) * np.log(2.0 * np.pi * sigma2) + np.log(w / (1.0 - w) * M / N)
    log_den = np.logaddexp(logsumexp(logk, axis=0, keepdims=True), log_c)
    return np.exp(logk - log_den)


def _cpd_nonrigid(X, Y, beta, lam=2.0, w=0.2, n_iter=60, sigma2_min=1e-4, sigma2_init=None):
    """Non-rigid coherent point drift: displacements ``G W`` of the source points,
    smooth over a Gaussian kernel of width ``beta`` (um). ``sigma2_init`` (um^2) starts
    it locally (default: the CPD start, the mean squared distance of all pairs)."""
    M, D = Y.shape
    G = np.exp(-((Y[:, None, :] - Y[None, :, :]) ** 2).sum(-1) / (2.0 * beta**2))
    W = np.zeros((M, D))
    if sigma2_init is None:
        sigma2 = float(((X[None, :, :] - Y[:, None, :]) ** 2).sum()) / (D * M * X.shape[0])
    else:
        sigma2 = float(sigma2_init)
    TY = Y
    for _ in range(n_iter):
        P = _cpd_p(X, TY, sigma2, w)
        P1 = P.sum(1)
        Np = P1.sum()
        if Np < 1e-9:
            break
        PX = P @ X
        A = G * P1[:, None] + lam * sigma2 * np.eye(M)
        W = np.linalg.solve(A, PX - P1[:, None] * Y)
        TY = Y + G @ W
        new = (
            float((P.sum(0) * (X**2).sum(1)).sum())
            - 2.0 * float((PX * TY).sum())
            + float((P1 * (TY**2).sum(1)).sum())
        ) / (Np * D)
        converged = abs(new - sigma2) < 1e-6 * sigma2
        sigma2 = max(new, sigma2_min)
        if converged:
            break
    return TY


def _estimate_motion(
    src_um: np.ndarray,
    peaks_um: np.ndarray,
    shift_um: np.ndarray,
    diameter: float,
    motion: str,
    max_motion: float,
):
    """Move the previous centres onto the new frame's peaks.

    Phase-correlation translation, then a trimmed rigid ICP of the centres onto the LoG
    peaks ("rigid", "deformable"), then non-rigid coherent point drift ("deformable",
    kernel width 4 diameters, started at a variance of one diameter squared). Returns
    the moved centres, the rotation of the rigid part, a summary dict and the centres
    moved by the rigid part only.
    """
    ndim = src_um.shape[1]
    R = np.eye(ndim)
    t = np.zeros(ndim) if motion == "none" else shift_um.copy()
    info: dict[str, Any] = {"phase_shift_um": shift_um.tolist()}
    moved = src_um + t
    enough = peaks_um.shape[0] >= ndim + 1 and src_um.shape[0] >= ndim + 1
    if motion in ("rigid", "deformable") and enough:
        # trimmed ICP: the matching radius shrinks from the allowed motion to one
        # diameter; only mutual nearest pairs count (a peak claimed by two centres is
        # ambiguous). A local method on purpose: rigid CPD from a broad start turned a
        # synthetic head by 11 and 81 degrees instead of 2 (measured).
        tree = cKDTree(peaks_um)
        centre = src_um.mean(axis=0)
        R_cur, t_cur = np.eye(ndim), t.copy()
        n_it = 30
        for it in range(n_it):
            cur = (src_um - centre) @ R_cur.T + centre + t_cur
            cutoff = max(diameter, max_motion * (1.0 - it / (n_it / 2)))
            d, j = tree.query(cur, k=1)
            back = cKDTree(cur).query(peaks_um[j], k=1)[1]
            ok = (d <= cutoff) & (back == np.arange(cur.shape[0]))
            if ok.sum() < ndim + 1:
                break
            R_new, t_new = _kabsch(src_um[ok] - centre, peaks_um[j[ok]] - centre)
            change = np.abs(R_new - R_cur).max() + np.abs(t_new - t_cur).max()
            R_cur, t_cur = R_new, t_new
            if change < 1e-6 and cutoff <= diameter:
                break
        R, t = R_cur, t_cur
        moved = (src_um - centre) @ R.T + centre + t
        info["rotation"] = R.tolist()
        info["translation_um"] = t.tolist()
        info["rotation_deg"] = float(
            np.degrees(np.arccos(np.clip((np.trace(R) - (ndim - 2)) / 2.0, -1, 1)))
        )
    rigid = moved.copy()
    if motion == "deformable" and enough:
        centre = moved.mean(axis=0)
        moved = (
            _cpd_nonrigid(
                peaks_um - centre, moved - centre, beta=4.0 * diameter, sigma2_init=diameter**2
            )
            + centre
        )
    if motion != "none" and peaks_um.shape[0]:
        d = cKDTree(peaks_um).query(moved, k=1)[0]
        info["median_residual_um"] = float(np.median(d)) if d.size else None
    return moved, R, info, rigid


# --------------------------------------------------------------------------- helpers


def _weights(mass: np.ndarray) -> np.ndarray:
    m = np.asarray(mass, dtype=np.float64)
    med = float(np.median(m[m > 0])) if np.any(m > 0) else 1.0
    m = np.where(m > 0, m, med)
    m = np.maximum(m, 0.05 * med)
    return m / m.sum()


def _nominal_cov(D, ndim, var_pos, X):
    cov = np.zeros((D, D))
    cov[np.arange(ndim), np.arange(ndim)] = var_pos
    if ndim < D:
        ivar = np.maximum(np.var(X[:, ndim:], axis=0), 1e-6) / 4.0
        cov[np.arange(ndim, D), np.arange(ndim, D)] = ivar
    return cov


def _intensity_at(X, tree, c_um, ndim, k=8):
    """Mean feature vector of the ``k`` voxels nearest each centre (a new component)."""
    kq = min(k, X.shape[0])
    _, nn = tree.query(c_um, k=kq)
    nn = np.asarray(nn).reshape(len(c_um), kq)
    out = X[nn].mean(axis=1)
    out[:, :ndim] = c_um
    return out


def _label_frame(feats, comp, means, covs, ids, shape, ndim, vs, radius, min_vox):
    """Label image (values = track ids) and per-component voxel counts."""
    fitted = comp >= 0
    comp = np.where(fitted, comp, 0)
    pos = feats.positions
    prec = np.linalg.inv(covs[:, :ndim, :ndim])
    d = pos - means[comp, :ndim]
    d2 = np.einsum("ni,nij,nj->n", d, prec[comp], d)
    keep = (d2 <= radius**2) & fitted
    K = means.shape[0]
    counts = np.bincount(comp[keep], minlength=K)
    good = counts >= min_vox
    keep &= good[comp]
    dtype = np.uint16 if (ids.max(initial=0) <= np.iinfo(np.uint16).max) else np.uint32
    out = np.zeros(shape, dtype=dtype)
    out[tuple(feats.indices[keep].T)] = ids[comp[keep]]
    return out, np.where(good, counts, 0)


def _frame_rows(t, ids, parents, means, labels, raw, vs, channel_names, counts):
    """Rows of the tracks table for one frame."""
    ndim = vs.size
    centres = means[:, :ndim] / vs
    axes = ("z", "y", "x")[-ndim:]
    cols: dict[str, Any] = {
        "track_id": ids.astype(np.int64),
        "t": np.full(ids.size, t, dtype=np.int64),
    }
    for i, ax in enumerate(axes):
        cols[ax] = centres[:, i]
    for i, ax in enumerate(axes):
        cols[f"{ax}_um"] = centres[:, i] * vs[i]
    cols["parent_id"] = np.array([parents.get(int(i), 0) for i in ids], dtype=np.int64)
    cols["label"] = ids.astype(np.int64)
    cols["volume_um3"] = counts * float(np.prod(vs))
    mask = labels > 0
    lab = labels[mask].astype(np.int64)
    pos = np.searchsorted(np.sort(ids), lab)
    order = np.argsort(ids)
    row_of = order[np.clip(pos, 0, ids.size - 1)]
    n_in = np.bincount(row_of, minlength=ids.size) if lab.size else np.zeros(ids.size)
    for c, name in enumerate(channel_names):
        vals = raw[..., c][mask].astype(np.float64)
        sums = np.bincount(row_of, weights=vals, minlength=ids.size) if lab.size else 0.0
        cols[f"mean_{name}"] = np.where(n_in > 0, sums / np.maximum(n_in, 1), np.nan)
    return pd.DataFrame(cols)


def _find_divisions(centres, peaks, diam, can_divide=None):
    """``[(component, (peak_a, peak_b)), ...]`` for the components that look divided.

    A component divides when two LoG peaks whose nearest component it is lie on opposite
    sides of it (cosine of the angle between them < -0.3), each 0.25-1 diameters from
    it and the two at least 0.8 diameters apart, and no other component is within 0.6
    diameters of either peak. ``can_divide`` (bool per component) excludes the others.
    """
    K = centres.shape[0]
    dk, owner = cKDTree(centres).query(peaks, k=min(2, K))
    dk = dk.reshape(len(peaks), -1)
    owner = owner.reshape(len(peaks), -1)
    alone = dk[:, -1] > 0.6 * diam if K > 1 else np.ones(len(peaks), dtype=bool)
    ok = (dk[:, 0] >= 0.25 * diam) & (dk[:, 0] <= 1.0 * diam) & alone
    out = []
    for k in np.unique(owner[ok, 0]):
        if can_divide is not None and not can_divide[k]:
            continue
        sel = np.flatnonzero(ok & (owner[:, 0] == k))
        if sel.size < 2:
            continue
        v = peaks[sel] - centres[k]
        best = None
        for i in range(sel.size):
            for j in range(i + 1, sel.size):
                sep = float(np.linalg.norm(peaks[sel[i]] - peaks[sel[j]]))
                cos = v[i] @ v[j] / (np.linalg.norm(v[i]) * np.linalg.norm(v[j]))
                if sep >= 0.8 * diam and cos < -0.3 and (best is None or sep > best[0]):
                    best = (sep, int(sel[i]), int(sel[j]))
        if best is not None:
            out.append((int(k), (best[1], best[2])))
    return out


def _pair_nearest(a, b, radius):
    """Rows of ``a`` and ``b`` paired one-to-one, nearest pairs first, at most ``radius``
    apart: per row of ``a`` the index of its row of ``b`` (-1: none)."""
    out = np.full(a.shape[0], -1, dtype=np.int64)
    if a.shape[0] == 0 or b.shape[0] == 0:
        return out
    pairs = cKDTree(a).sparse_distance_matrix(cKDTree(b), radius, output_type="ndarray")
    taken = np.zeros(b.shape[0], dtype=bool)
    for i, j, _ in sorted(pairs.tolist(), key=lambda r: r[2]):
        i, j = int(i), int(j)
        if out[i] < 0 and not taken[j]:
            out[i] = j
            taken[j] = True
    return out


# how far (in diameters) a peak no component claims after a fit must be from every
# claimed peak to be a nucleus of its own; nearer in a frame where many nuclei divide
# (DIVIDING_FRACTION): there two daughters sit closer than their mother's scale, which
# the frame's lags by one division (growing embryo, seeds 0-2: 16 of 251 nuclei of the
# last frame shared a component with a neighbour 1.3-2.1 um away, 0.5-0.75 of the
# frame's diameter, with 0.8; correct links 0.888 / 0.901 / 0.921 -> 0.922 / 0.921 /
# 0.922). Not in other frames: on the dense moving heads (spacing 2.6 um, 2.7 um nuclei),
# where nothing divides, 0.6 started tracks at the second peaks of pressed nuclei and
# cost identities (0.971 -> 0.964 correct links)
UNCLAIMED_GAP = 0.8
UNCLAIMED_GAP_DIVIDING = 0.6


def _unclaimed_peaks(centres, peaks, diam, used, gap=UNCLAIMED_GAP):
    """``[(peak, component, its peak), ...]`` for the peaks no component claims after a fit.

    Components and peaks are paired one-to-one, nearest first, at most 0.6 diameters
    apart. A peak left over that is at least ``gap`` diameters from every paired peak is
    a nucleus of its own; ``component`` is its nearest component and ``its peak`` the
    peak paired with that component (-1 if none). Peaks in ``used`` are skipped.
    """
    if centres.shape[0] == 0 or peaks.shape[0] == 0:
        return []
    comp = _pair_nearest(peaks, centres, 0.6 * diam)
    taken = comp >= 0
    peak_of = np.full(centres.shape[0], -1, dtype=np.int64)
    peak_of[comp[taken]] = np.flatnonzero(taken)
    left = np.flatnonzero(~taken & ~used)
    if left.size == 0:
        return []
    if taken.any():
        far = cKDTree(peaks[taken]).query(peaks[left], k=1)[0] >= gap * diam
        left = left[far]
    nearest = cKDTree(centres).query(peaks[left], k=1)[1]
    return [(int(p), int(k), int(peak_of[k])) for p, k in zip(left, nearest, strict=True)]


def _find_duplicates(centres, ids, peaks, diam):
    """Indices of components that share a nucleus with another one (see track_nuclei)."""
    pairs = cKDTree(centres).query_pairs(0.6 * diam, output_type="ndarray")
    if len(pairs) == 0:
        return []
    ptree = cKDTree(peaks) if len(peaks) else None
    drop: list[int] = []
    gap = np.linalg.norm(centres[pairs[:, 0]] - centres[pairs[:, 1]], axis=1)
    for i, j in pairs[np.argsort(gap)]:
        if i in drop or j in drop:
            continue
        near = set()
        if ptree is not None:
            for q in (i, j):
                near.update(ptree.query_ball_point(centres[q], 0.5 * diam))
        if len(near) >= 2:
            continue  # two nuclei close together, one component each
        if len(near) == 1:
            p = peaks[next(iter(near))]
            far = i if np.linalg.norm(centres[i] - p) > np.linalg.norm(centres[j] - p) else j
        else:
            far = i if ids[i] > ids[j] else j
        drop.append(int(far))
    return drop


def _suppress_granules(pre, pre_kw, centres_um, diam, protect_um):
    """Granule suppression of :func:`.preprocess.preprocess` (run with
    ``suppress_granules=False``) that spares the nuclei being tracked; in place.

    The granule filter (a small top-hat, flat spectrum) also takes real nuclei: small ones
    pressed between neighbours, differently from frame to frame with the noise (measured
    on synthetic moving heads without any granule: 1-3 of 60 nuclei per frame lost their
    foreground, e.g. one with a normalised signal of 0.74 in frame 0 and 0.005 in frame 1,
    which ended its track). Here a connected granule piece with a tracked component's
    predicted centre within ``protect_um`` of one of its voxels is kept as nucleus; the
    other pieces are removed as ``preprocess`` removes them, and the foreground threshold
    is computed afterwards, as there. Returns the number of pieces spared.
    """
    vs = np.asarray(pre.voxel_size, dtype=np.float64)
    gran = granule_mask(pre.data, vs, nucleus_diameter=diam)
    n_spared = 0
    if gran.any() and len(centres_um):
        from scipy import ndimage as ndi

        pieces, _ = ndi.label(gran)
        idx = np.argwhere(gran)
        d = cKDTree(centres_um).query(idx * vs, k=1, distance_upper_bound=protect_um)[0]
        hit = np.unique(pieces[tuple(idx[np.isfinite(d)].T)])
        if hit.size:
            n_spared = int(hit.size)
            gran &= ~np.isin(pieces, hit)
    pre.data[gran] = 0.0
    pre.signal[gran] = 0.0
    pre.granules = gran
    pre.info["n_granule_voxels"] = int(gran.sum())
    pre.info["n_granules_spared"] = n_spared
    thr = pre_kw.get("foreground_threshold")
    if thr is None:
        thr = auto_threshold(pre.signal, pre_kw.get("threshold_method", "otsu"))
    pre.threshold = float(thr)
    pre.foreground = pre.signal > pre.threshold
    if not pre.foreground.any():
        raise ValueError(
            f"no foreground voxels above the threshold {pre.threshold:.4g} (normalised "
            "units); lower foreground_threshold"
        )
    return n_spared


def _check_int(name, value, lo=None):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if lo is not None and value < lo:
        raise ValueError(f"{name} must be >= {lo}, got {value}")
    return int(value)


# --------------------------------------------------------------------------- main


def track_nuclei(
    stack,
    *,
    time_axis: int = 0,
    voxel_size=None,
    channel_axis=None,
    channel_names=None,
    reference_frame: int = 0,
    init="peaks",
    n_nuclei=None,
    nucleus_diameter: float | str = "auto",
    method: str = "sinkhorn",
    max_iter: int = 100,
    tol: float = 1e-4,
    intensity_weight: float = 1.0,
    n_neighbors: int = 16,
    foreground_threshold: float | None = None,
    random_state: int | None = None,
    marginal_penalty: float | None = 10.0,
    voxel_mass: str = "uniform",
    covariance_scale: tuple[float, float] = (0.25, 4.0),
    mahalanobis_radius: float = 3.0,
    min_size: float = 0.1,
    background_scale: float | None = None,
    threshold_method: str = "otsu",
    suppress_granules: bool = True,
    motion: str = "deformable",
    max_motion: float | None = None,
    new_tracks: bool = True,
    divisions: bool = True,
    weights: str = "voronoi",
    weight_refits: int = 0,
    backfill: bool = True,
    progress: Callable[[str, int, int], bool | None] | None = None,
) -> TrackingResult:
    """Segment and track nuclei through a time-lapse; labels keep their value in time.

    Parameters
    ----------
    stack : numpy.ndarray
        Time series of 2-D or 3-D (multichannel) images: a time axis plus the axes that
        :func:`~napari_sinkhorn_em.segment_nuclei` accepts. Single planes saved as
        stacks, ``(T, 1, Y, X)``, are tracked in 2-D with the plane axis put back
        (labels ``(T, 1, Y, X)``, ``z = 0`` in the tracks).
    time_axis : int
        Axis of ``stack`` holding time (negative values count from the end).
    voxel_size : sequence of float, optional
        Spatial voxel lengths in micrometres (``(z, y, x)`` or ``(y, x)``); None = 1 um.
    channel_axis : int, optional
        Axis of ``stack`` (counted in ``stack``, including the time axis) holding the
        channels; None = single channel.
    channel_names : list of str, optional
        Names for the ``mean_<channel>`` columns (default ``ch0``, ``ch1``, ...).
    reference_frame : int
        Frame segmented from scratch with :func:`~napari_sinkhorn_em.segment_nuclei`;
        tracking runs forward from it to the last frame and backward to the first.
    init : str or array_like
        ``segment_nuclei``'s ``init`` for the reference frame: "peaks" (default),
        "k-means++", "random", or a ``(K, ndim)`` array of nucleus centres in voxel
        coordinates (e.g. hand-placed or corrected points): the reference nuclei, and so
        the tracks, are then exactly these (track ``i + 1`` starts at row ``i``).
    nucleus_diameter : float or "auto"
        Nucleus diameter in micrometres, used for every frame, or "auto" (default, as
        ``segment_nuclei``): then each frame has its own, estimated on the reference
        frame as ``segment_nuclei`` does and on every other frame within 0.5-1.5 times
        the diameter of the frame before (an embryo's nuclei halve their volume at each
        division). Either way each frame's nuclei are detected as ``segment_nuclei``'s
        local mode detects them (each at its own scale and contrast). The reference frame's
        value is :attr:`TrackingResult.nucleus_diameter_um`; each frame's is
        ``frames[t]["nucleus_diameter_um"]``.
    n_nuclei, intensity_weight, n_neighbors, foreground_threshold, \
voxel_mass, covariance_scale, mahalanobis_radius, min_size, background_scale, \
threshold_method, suppress_granules, max_iter
        As for :func:`~napari_sinkhorn_em.segment_nuclei` (``n_nuclei`` applies to the
        reference frame; later frames keep their tracks plus the new ones).
    tol : float
        As for ``segment_nuclei`` (same default), but every fit of the tracker (the
        reference frame's segmentation and the warm-started refits) stops at a tenth of
        it (:data:`REFIT_TOL_FACTOR`): identities need settled centres. Measured on a
        real head frame tracked onto itself: with the fits stopped at 1e-4, 0.966 of the
        tracks stayed within 1 um (the next frame's refit went on moving centres the
        reference fit had left unsettled), >= 0.98 at 1e-5. Except the refit after the
        bookkeeping of a frame where many nuclei divide (``frames[t]["dividing"]``):
        it stops at ``tol`` (and after 20 iterations; the first fit there after 15).
    marginal_penalty : float or None
        As for ``segment_nuclei`` (the reference frame is segmented with it too), but
        10 by default: from motion-compensated warm starts the stiffer 1000 kept no more
        identities on moving heads and needed up to 1.7 times the iterations
        (docs/tracking.md).
    method : {"sinkhorn", "em"}
        Refit each frame with Sinkhorn-EM or with EM with the same fixed weights and the
        same warm starts (the comparison of docs/tracking.md).
    random_state : int, optional
        Seed (None draws one and records it in ``params``).
    motion : {"deformable", "rigid", "translation", "none"}
        Global motion model between consecutive frames: phase-correlation translation
        ("translation"), then a trimmed rigid ICP of the previous centres onto the new LoG
        peaks ("rigid"), then non-rigid coherent point drift (CPD, Myronenko & Song 2010)
        with a Gaussian kernel of 4 nucleus diameters ("deformable").
    max_motion : float, optional
        Largest expected displacement of a nucleus between frames after the phase
        correlation, micrometres: the first ICP matching radius (default 3 nucleus
        diameters).
    new_tracks : bool
        Start and end tracks. Before the fit, a moved component with (almost) no
        foreground within 0.4 diameters (its nucleus vanished or left the field) ends,
        and a LoG peak farther than one diameter from every moved component starts a
        track. After the fit, of two components closer than 0.6 diameters with at most
        one peak near them, the one farther from the peak ends; a peak farther than
        0.8 diameters from every fitted component starts a track, and so does a peak
        that no component claims when components and peaks are paired one-to-one (at
        most 0.6 diameters apart), that is 0.8 diameters or more from every paired peak,
        unless the previous frame (moved with the motion estimate) had a counterpart for
        it and for its nearest component's peak (then the mixture is refitted).
    divisions : bool
        Forward in time only: a component (moved by the rigid part of the motion) with
        two LoG peaks on opposite sides of it, each 0.25-1 diameters away and 0.8
        diameters apart, and no other component within 0.6 diameters of them, ends and
        two children start at the peaks with ``parent_id`` = its track. After the fit,
        an unclaimed new peak (see ``new_tracks``) on the far side of a component from
        that component's own peak is a division too, and so are new tracks without a
        parent that straddle an older track's previous centre (two of them, or one and
        the older track's new centre) where the previous frame had one peak.
    weights : {"voronoi", "nuclei", "previous", "uniform"}
        Fixed mixing weights of each frame's fit: the foreground mass of each moved
        component's Voronoi cell in the new frame (default); the mass of the LoG peak's
        cell each component sits in (``segment_nuclei``'s "nuclei"); the weights of the
        previous frame's fit, carried per track; or equal. Measured on moving heads
        (docs/tracking.md): "voronoi" keeps the most identities (0.931 of the links,
        "previous" 0.911, "uniform" 0.856).
    weight_refits : int
        Extra fits per frame with the Voronoi weights re-estimated around the fitted
        centres (0 = one fit).
    backfill : bool
        Nuclei the reference frame missed: when tracks started after the reference
        (before it, going backward) without a parent and lasted at least two frames,
        each is carried back to the reference frame along the motion of its
        neighbouring tracks; those that land inside the field, on signal and 0.8
        diameters or more from every reference nucleus (:data:`BACKFILL_MIN_GAP`) are
        added to the reference nuclei, and the series is tracked once more from them (the
        reference nuclei of the first pass plus these, as ``init`` centres). The second
        pass runs only then; it reports progress as stage "fit". It stops at the first
        frame (in each direction from the reference) whose tracks pair one-to-one with
        the first pass' there (within a quarter diameter), and the first pass' later
        frames are taken on, their tracks renamed to the second pass' ids: the nuclei
        it added change only the frames before the late tracks started. When its
        reference frame ends every nucleus it added, the first pass is the result.
        ``frames[reference_frame]["backfilled"]`` lists the track ids added.
    progress : callable, optional
        ``progress(stage, frame, n_frames)`` with stage ``"frame"`` after each frame
        (``frame`` = frames done) and ``"fit"`` during each fit; returning True cancels
        with :class:`TrackingCancelled`.

    Returns
    -------
    TrackingResult

    Raises
    ------
    ValueError
        For an invalid stack or parameters (specific messages).
    TrackingCancelled
        When ``progress`` returned True.
    """
    call = dict(locals())
    n_protected = _PROTECTED.get()  # set only around the backfill pass' second run
    t_start = time.perf_counter()
    if not isinstance(backfill, bool):
        raise ValueError(f"backfill must be True or False, got {backfill!r}")
    if not isinstance(motion, str) or motion not in MOTIONS:
        raise ValueError(f"motion must be one of {', '.join(map(repr, MOTIONS))}; got {motion!r}")
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"method must be 'sinkhorn' or 'em' for tracking; got {method!r}")
    if not isinstance(weights, str) or weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(map(repr, WEIGHTS))}; got {weights!r}")
    weight_refits = _check_int("weight_refits", weight_refits, 0)
    arr = np.asarray(stack)
    if arr.ndim < 3:
        raise ValueError(
            f"stack must have a time axis plus 2 or 3 spatial axes (and optionally channels); "
            f"got {arr.ndim} dimension(s)"
        )
    time_axis = _check_int("time_axis", time_axis)
    if not -arr.ndim <= time_axis < arr.ndim:
        raise ValueError(f"time_axis={time_axis} is out of range for a {arr.ndim}-D stack")
    time_axis %= arr.ndim
    frame_ch = None
    if channel_axis is not None:
        channel_axis = _check_int("channel_axis", channel_axis)
        if not -arr.ndim <= channel_axis < arr.ndim:
            raise ValueError(
                f"channel_axis={channel_axis} is out of range for a {arr.ndim}-D stack"
            )
        channel_axis %= arr.ndim
        if channel_axis == time_axis:
            raise ValueError(f"time_axis and channel_axis are the same axis ({time_axis})")
        frame_ch = channel_axis - (1 if channel_axis > time_axis else 0)
    n_spatial = arr.ndim - 1 - (frame_ch is not None)
    if n_spatial not in (2, 3):
        raise ValueError(
            f"stack of shape {arr.shape} with time_axis={time_axis} and "
            f"channel_axis={channel_axis} leaves {n_spatial} spatial axes; need 2 or 3"
        )
    T = arr.shape[time_axis]
    if T < 1:
        raise ValueError("stack has no frames (time axis of length 0)")
    plane_axis = single_plane_axis(arr.shape[:time_axis] + arr.shape[time_axis + 1 :], frame_ch)
    if plane_axis is not None:  # a time-lapse of single planes, (T, 1, Y, X): tracked in 2-D
        return _track_on_the_plane(call, arr, time_axis, frame_ch, plane_axis)
    ref = _check_int("reference_frame", reference_frame)
    if not 0 <= ref < T:
        raise ValueError(f"reference_frame={ref} is outside the {T} frames")
    auto_diameter = isinstance(nucleus_diameter, str)
    if auto_diameter and nucleus_diameter != "auto":
        raise ValueError(
            f"nucleus_diameter must be 'auto' or a number of um, got {nucleus_diameter!r}"
        )
    if not auto_diameter and not (np.isfinite(nucleus_diameter) and nucleus_diameter > 0):
        raise ValueError(
            f"nucleus_diameter must be a positive number of um, got {nucleus_diameter}"
        )
    if max_motion is not None and not (np.isfinite(max_motion) and max_motion > 0):
        raise ValueError(f"max_motion must be a positive number of um, got {max_motion}")
    _check_int("max_iter", max_iter, 0)
    if random_state is None:
        random_state = int(np.random.SeedSequence().entropy % (2**31))
    random_state = _check_int("random_state", random_state)
    frames = np.moveaxis(arr, time_axis, 0)

    def report(stage, k):
        if progress is not None and progress(stage, k, T):
            raise TrackingCancelled(f"tracking cancelled during {stage!r} (frame {k} of {T})")

    pre_kw = {
        "voxel_size": voxel_size,
        "channel_axis": frame_ch,
        "nucleus_diameter": nucleus_diameter,
        "background_scale": background_scale,
        "foreground_threshold": foreground_threshold,
        "threshold_method": threshold_method,
        "suppress_granules": suppress_granules,
    }
    seg_kw = {
        **{k: v for k, v in pre_kw.items() if k != "channel_axis"},
        "n_nuclei": n_nuclei,
        "method": method,
        "max_iter": max_iter,
        "tol": REFIT_TOL_FACTOR * tol,
        "intensity_weight": intensity_weight,
        "n_neighbors": n_neighbors,
        "random_state": random_state,
        "marginal_penalty": marginal_penalty,
        "voxel_mass": voxel_mass,
        "covariance_scale": covariance_scale,
        "mahalanobis_radius": mahalanobis_radius,
        "min_size": min_size,
        "max_components_per_tile": 1 << 30,
    }

    # ---- reference frame: the ordinary segmentation
    try:
        seg = segment_nuclei(
            frames[ref],
            init=init,
            channel_axis=frame_ch,
            channel_names=channel_names,
            progress=None if progress is None else (lambda s, i, o: progress("fit", 0, T)),
            **seg_kw,
        )
    except SegmentationCancelled as exc:
        raise TrackingCancelled(str(exc)) from exc
    vs = np.asarray(seg.params["voxel_size"], dtype=np.float64)
    ndim = vs.size
    if auto_diameter:
        # the diameter segment_nuclei estimated on the reference frame, kept for all
        # frames (a nucleus does not change size from one frame to the next)
        d_est = seg.info.get("nucleus_diameter_um")
        if d_est is None:
            raise ValueError("nucleus_diameter='auto' is not supported by segment_nuclei here")
        diam = float(d_est)
    else:
        diam = float(nucleus_diameter)
    pre_kw["nucleus_diameter"] = diam
    max_motion_um = 3.0 * diam if max_motion is None else float(max_motion)
    fit_radius = 1.0 * diam
    channel_names = list(seg.params["channel_names"])
    model = seg.model
    m_means = model.means_
    m_covs = model.covariances_
    K0 = len(seg.table)
    c_um = seg.centres * vs
    near = cKDTree(m_means[:, :ndim]).query(c_um, k=1)[1] if K0 else np.zeros(0, int)
    means = m_means[near].copy()
    means[:, :ndim] = c_um
    lo_s, hi_s = (float(v) for v in covariance_scale)
    var_nominal = (diam / 2.0) ** 2 / 5.0
    bounds = (lo_s * var_nominal, hi_s * var_nominal)
    weights0 = np.asarray(model.weights_, dtype=np.float64)[near]
    covs0 = m_covs[near].copy()
    # given centres (voxels) of the reference frame; None for "peaks" and the like
    init_centres = None if isinstance(init, str) else np.asarray(init, dtype=np.float64)
    if isinstance(init, str):
        ids = np.arange(1, K0 + 1, dtype=np.int64)
    else:
        # given centres: track i + 1 is the nucleus started from row i (component i)
        ids = near.astype(np.int64) + 1
        # a given centre whose component got no label of the minimum size in the
        # reference segmentation (e.g. its voxels taken as a granule) is kept as a
        # track, started at the given centre: the user (or the backfill) placed it
        init_um = np.asarray(init, dtype=np.float64).reshape(-1, ndim) * vs
        lost = np.setdiff1d(np.arange(min(len(init_um), m_means.shape[0])), near)
        if lost.size:
            add = m_means[lost].copy()
            add[:, :ndim] = init_um[lost]
            means = np.concatenate([means, add])
            covs0 = np.concatenate([covs0, m_covs[lost]])
            weights0 = np.concatenate([weights0, np.asarray(model.weights_)[lost]])
            ids = np.concatenate([ids, lost.astype(np.int64) + 1])
        # and every reference component starts at its given centre, not where the
        # reference segmentation moved it: with a subset of the nuclei given (the
        # annotated neurons of a targettrack head, 64-83 of 100-130 nuclei) the fixed
        # weights made each component take a share of the others' mass, and only 46 %
        # of the tracks stayed within a diameter of their point (95 % from the points,
        # with the far LoG peaks started as tracks in the reference step as usual)
        means[:, :ndim] = init_um[ids - 1]
    # the tracks started at given centres: kept in the reference frame whatever the
    # rules for vanished and duplicate nuclei say (the user placed them)
    # (the backfill pass protects only the user's rows, not the nuclei it adds)
    given_ids = ids.copy() if not isinstance(init, str) else np.zeros(0, dtype=np.int64)
    if n_protected is not None:
        given_ids = given_ids[given_ids <= n_protected]
    given_set = set(given_ids.tolist())
    ref_labels = seg.labels
    spatial_shape = ref_labels.shape
    all_labels = np.zeros((T, *spatial_shape), dtype=np.uint32)
    rows: list[pd.DataFrame] = []
    frame_info: dict[int, dict] = {}
    parents: dict[int, int] = {}
    next_id = [int(ids.max(initial=0)) + 1]
    # the cell of the downsampled signals (phase correlation): from the frame's shape
    # (a 2-voxel dummy fell back to the voxel size, so the phase-correlation shift came
    # out 3x too small in y and x on the synthetic heads, 2x on targettrack)
    cell_um = _downsample(np.zeros(spatial_shape, dtype=np.float32), vs, diam / 2.0)[1]
    state0 = _State(
        ids=ids,
        means=means,
        covs=covs0,
        mass=weights0,
        peaks_um=np.zeros((0, ndim)),
        signal=np.zeros((1,) * ndim, dtype=np.float32),
    )
    done = [0]

    def step(t: int, state: _State, forward: bool, reference: bool = False) -> _State:
        tf = time.perf_counter()
        timings: dict[str, float] = {}
        raw = frames[t]
        # preprocessed without granule suppression first: the phase correlation of the
        # coarse signals moves the tracked components, and granule pieces under a moved
        # component are nuclei (spared); the other granules are removed as
        # segment_nuclei removes them
        # each frame has its own nucleus scale with "auto" (an embryo's nuclei halve their
        # volume at each division: with the reference frame's scale kept for every frame
        # a growing embryo of 24 -> 251 nuclei was tracked with recall 0.28 in its last
        # frame, against 0.99 segmented frame by frame). The preprocessing and the search
        # use the last frame's; the frame's own comes from the blobs searched (below)
        d = (state.diameter or diam) if auto_diameter else diam
        frame_kw = {**pre_kw, "suppress_granules": False, "nucleus_diameter": d}
        pre = preprocess(raw, **frame_kw)
        # the motion estimate's downsampled signals keep the reference frame's cell
        small, _ = _downsample(pre.signal, vs, diam / 2.0)
        mode = "none" if reference else motion
        shift = _phase_shift(state.signal, small, cell_um) if mode != "none" else np.zeros(ndim)
        n_spared = 0
        if suppress_granules:
            n_spared = _suppress_granules(pre, pre_kw, state.means[:, :ndim] + shift, d, 0.5 * d)
        # segment_nuclei's local mode: each nucleus at its own scale and contrast (dim
        # interior nuclei of an attenuated embryo), their own foreground added; in the
        # reference frame too, so that consecutive frames' peaks compare
        # the reference frame's given centres (hand-placed points) bring their own
        # foreground, as in segment_nuclei: the refit onto itself keeps them there
        given = init_centres if reference else None
        peaks, linfo = adaptive.detect(pre, vs, d, [], given=given)
        if auto_diameter and not reference and "blob_diameter_um" in linfo:
            # this frame's scale: the typical diameter of the blobs searched over 0.5-2x
            # the last frame's, as the automatic estimate takes it (nuclei that divide
            # shrink by 2^(1/3); a separate estimate on every frame cost as much as the
            # detection)
            d = float(np.clip(linfo["blob_diameter_um"], 0.5 * d, 1.5 * d))
        var_d = (d / 2.0) ** 2 / 5.0
        bounds_d = (lo_s * var_d, hi_s * var_d)
        feats = voxel_features(
            pre.data,
            pre.foreground,
            vs,
            intensity_weight=intensity_weight,
            mass=voxel_mass,
            signal=pre.signal,
        )
        shape = pre.foreground.shape
        pre.data = pre.granules = None
        peaks_um = peaks.coords * vs
        timings["preprocess"] = time.perf_counter() - tf

        # ---- global motion
        tm = time.perf_counter()
        # the reference frame is fitted onto itself (mode "none" above): its
        # segmentation becomes a mixture of this function's own kind (weights, fitted
        # voxels, new and ended tracks), so that the next frames continue the same model
        moved, R, minfo, rigid = _estimate_motion(
            state.means[:, :ndim], peaks_um, shift, d, mode, max_motion_um
        )
        timings["motion"] = time.perf_counter() - tm
        # the previous frame's peaks, each moved as its nearest component: by the whole
        # motion estimate and by its rigid part (on a real frame tracked onto itself the
        # non-rigid step moved two peaks' components by over 1 um)
        prev_peaks = [state.peaks_um]
        if state.peaks_um.shape[0] and state.means.shape[0]:
            k_prev = cKDTree(state.means[:, :ndim]).query(state.peaks_um, k=1)[1]
            prev_peaks = [
                state.peaks_um + (m - state.means[:, :ndim])[k_prev] for m in (moved, rigid)
            ]
        X, a = feats.X, feats.sample_weight
        D = X.shape[1]
        ids = state.ids.copy()
        means = state.means.copy()
        means[:, :ndim] = moved
        moved_of = dict(zip(ids.tolist(), moved, strict=True))
        # position covariances turn with the head; the intensity block restarts from the
        # nominal spread of this frame, which is normalised on its own (carrying the
        # previous block over kept the same links on moving heads: 0.939 vs 0.933)
        covs = np.repeat(_nominal_cov(D, ndim, var_d, X)[None], ids.size, axis=0)
        covs[:, :ndim, :ndim] = R @ state.covs[:, :ndim, :ndim] @ R.T
        mass = state.mass.copy()
        if state.peaks_um.shape[0]:
            gap = cKDTree(state.peaks_um).query(state.means[:, :ndim], k=1)[0]
            single = gap < 0.35 * d
        else:
            single = np.zeros(ids.size, dtype=bool)
        single_ids = set(ids[single].tolist())
        ended: list[int] = []
        new: list[int] = []
        divided: list[int] = []
        reasons: dict[str, list] = {}
        # components whose nucleus has left the field (centre outside the stack)
        extent = (np.asarray(shape) - 0.5) * vs
        inside = np.all((moved >= -0.5 * vs - 0.25 * d) & (moved <= extent + 0.25 * d), 1)
        if new_tracks and not inside.all():
            ended += ids[~inside].tolist()
            ids, means, covs, mass = ids[inside], means[inside], covs[inside], mass[inside]
            rigid = rigid[inside]
            single = single[inside]
        tree_vox = cKDTree(feats.positions)
        n_iter_total = 0
        nominal = _nominal_cov(D, ndim, var_d, X)

        def far_peaks(means, covs, threshold, used):
            """Peaks (strongest first) farther than ``threshold`` from every component and
            from each other, and outside every component's ``mahalanobis_radius``
            ellipsoid (position block): nuclei that no track explains."""
            if peaks_um.shape[0] == 0:
                return []
            K = means.shape[0]
            if K:
                kq = min(8, K)
                dist, nn = cKDTree(means[:, :ndim]).query(peaks_um, k=kq)
                dist, nn = dist.reshape(len(peaks_um), kq), nn.reshape(len(peaks_um), kq)
                prec = np.linalg.inv(covs[:, :ndim, :ndim])
                diff = peaks_um[:, None, :] - means[nn, :ndim]
                d2 = np.einsum("pki,pkij,pkj->pk", diff, prec[nn], diff)
                far = (dist[:, 0] > threshold) & (d2.min(axis=1) > mahalanobis_radius**2)
            else:
                far = np.ones(peaks_um.shape[0], dtype=bool)
            chosen: list[int] = []
            for p in np.flatnonzero(far & ~used):
                if all(np.linalg.norm(peaks_um[p] - peaks_um[q]) > threshold for q in chosen):
                    chosen.append(int(p))
            return chosen

        def add_tracks(chosen, ids, means, covs, mass):
            c = peaks_um[chosen]
            add = _intensity_at(X, tree_vox, c, ndim)
            cov_new = np.repeat(nominal[None], len(chosen), 0)
            med = float(np.median(mass)) if mass.size else 1.0
            new_ids = np.arange(next_id[0], next_id[0] + len(chosen), dtype=np.int64)
            next_id[0] += len(chosen)
            new.extend(new_ids.tolist())
            reasons.setdefault("new", []).append(new_ids.tolist())
            return (
                np.concatenate([ids, new_ids]),
                np.concatenate([means, add]) if means.size else add,
                np.concatenate([covs, cov_new]) if covs.size else cov_new,
                np.concatenate([mass, np.full(len(chosen), med)]),
            )

        def divide(k, pks, ids, means, mass, add):
            """Component ``k``'s nucleus divided: its track ends and a child starts at
            each peak of ``pks`` with half its mass; appended to ``add`` = (means, mass,
            ids) lists."""
            parent = int(ids[k])
            divided.append(parent)
            ended.append(parent)
            for pk in pks:
                used[pk] = True
                mu = means[k].copy()
                mu[:ndim] = peaks_um[pk]
                cid = next_id[0]
                next_id[0] += 1
                parents[cid] = parent
                new.append(cid)
                add[0].append(mu)
                add[1].append(mass[k] / 2.0)
                add[2].append(cid)

        def split_unclaimed(ids, means, covs, mass, used):
            """New tracks at the unclaimed peaks (:func:`_unclaimed_peaks`); one on the
            far side of an older component from that component's own peak (cosine < -0.3)
            is a division when ``divisions`` is on and the frame is tracked forward: the
            component ends, two children start at the two peaks. As for the divisions
            before the fit, only a component that sat on a single peak in the previous
            frame divides (one that covered two nuclei there is under-segmented)."""
            min_gap = UNCLAIMED_GAP_DIVIDING if dividing else UNCLAIMED_GAP
            found = _unclaimed_peaks(means[:, :ndim], peaks_um, d, used, min_gap)
            if not found:
                return ids, means, covs, mass, 0
            fresh = set(new)
            keep = np.ones(ids.size, dtype=bool)
            add_means, add_mass, add_ids, plain = [], [], [], []
            # only where this frame has a peak that the previous one (moved with the
            # motion estimate) had not: one nucleus became two, or a nucleus came. A pair
            # of peaks under one component in both frames is a nucleus pair the
            # segmentation took as one: it stays as it is (a real head frame tracked onto
            # itself otherwise gained 23 tracks and lost 2 to false divisions)
            had = np.any([_pair_nearest(peaks_um, pp, 0.5 * d) >= 0 for pp in prev_peaks], 0)
            for p, k, q in found:
                if had[p] and (q < 0 or had[q]):
                    continue
                c = means[k, :ndim]
                u, v = peaks_um[p] - c, peaks_um[q] - c if q >= 0 else None
                straddle = (
                    divisions
                    and forward
                    and q >= 0
                    and keep[k]
                    and int(ids[k]) not in fresh
                    and int(ids[k]) in single_ids
                    and int(ids[k]) not in given_set
                    and u @ v < -0.3 * np.linalg.norm(u) * np.linalg.norm(v)
                )
                if not straddle:
                    # the pair (p, q) has fewer counterparts in the previous frame
                    # than it has peaks now (tested above): p is the new one, or q is
                    # and p took its counterpart (a child next to its parent's old
                    # peak: 12 of 19 unclaimed peaks of the growing embryo's last frame
                    # were skipped when p's own counterpart was asked for)
                    plain.append(p)
                    continue
                keep[k] = False
                divide(k, (q, p), ids, means, mass, (add_means, add_mass, add_ids))
            n = len(add_ids) + len(plain)
            if add_ids:
                reasons.setdefault("divided_after_fit", []).extend(
                    [parents[c] for c in add_ids[::2]]
                )
                ids = np.concatenate([ids[keep], add_ids])
                means = np.concatenate([means[keep], np.asarray(add_means)])
                covs = np.concatenate([covs[keep], np.repeat(nominal[None], len(add_ids), 0)])
                mass = np.concatenate([mass[keep], add_mass])
            if plain:
                used[plain] = True
                ids, means, covs, mass = add_tracks(plain, ids, means, covs, mass)
            return ids, means, covs, mass, n

        def adopt_orphans(ids, means, covs, mass, relabel_only=False):
            """Divisions seen only after the bookkeeping: new tracks without a parent
            (orphans) that straddle an older track's previous centre ``c0``, which had one
            peak of the previous frame within 0.75 diameters. Either two orphans lie on
            opposite sides of ``c0`` (cosine < -0.3), each at least 0.3 diameters from
            it, at least 0.8 diameters apart with their midpoint within 0.6 diameters of
            ``c0``: the older track ends (its component, left between the children, is
            dropped) and both orphans become its children; or one orphan and the older
            track's own new centre do: the older track ends there and its component
            continues as a child. (In a growing embryo 36 of 474 division links were an
            orphan next to a continued or a stranded parent track.) With
            ``relabel_only`` (after the last fit) only the second kind is taken: it
            changes ids, not components."""
            if not prev_peaks[0].shape[0]:
                return ids, means, covs, mass
            orphans = set(new) - set(parents)
            born = [k for k in range(ids.size) if int(ids[k]) in orphans]
            old_k = [
                k
                for k in range(ids.size)
                if int(ids[k]) in moved_of and int(ids[k]) not in given_set
            ]
            if not born or not old_k:
                return ids, means, covs, mass
            prev_tree = cKDTree(prev_peaks[0])
            c0 = np.array([moved_of[int(ids[k])] for k in old_k])
            # each orphan belongs to the older track whose previous centre is nearest
            dist, j = cKDTree(c0).query(means[born, :ndim], k=1)
            ids = ids.copy()
            drop = np.zeros(ids.size, dtype=bool)

            def straddle(x, y, c):
                u, v = x - c, y - c
                return (
                    min(np.linalg.norm(u), np.linalg.norm(v)) >= 0.3 * d
                    and np.linalg.norm(x - y) >= 0.8 * d
                    and np.linalg.norm(0.5 * (x + y) - c) <= 0.6 * d
                    and u @ v < -0.3 * np.linalg.norm(u) * np.linalg.norm(v)
                )

            for jj in np.unique(j[dist <= 1.5 * d]):
                k = old_k[int(jj)]
                if len(prev_tree.query_ball_point(c0[jj], 0.75 * d)) != 1:
                    continue
                mine = [born[i] for i in np.flatnonzero((j == jj) & (dist <= 1.5 * d))]
                parent = int(ids[k])
                pair = next(
                    (
                        (n1, n2)
                        for ii, n1 in enumerate(mine)
                        for n2 in mine[ii + 1 :]
                        if straddle(means[n1, :ndim], means[n2, :ndim], c0[jj])
                    ),
                    None,
                )
                if pair is not None:
                    if relabel_only:
                        continue
                    drop[k] = True
                    kids = [int(ids[n]) for n in pair]
                else:
                    n = next(
                        (n for n in mine if straddle(means[n, :ndim], means[k, :ndim], c0[jj])),
                        None,
                    )
                    if n is None:
                        continue
                    cid = next_id[0]
                    next_id[0] += 1
                    ids[k] = cid
                    new.append(cid)
                    kids = [cid, int(ids[n])]
                for c in kids:
                    parents[c] = parent
                divided.append(parent)
                ended.append(parent)
                reasons.setdefault("divided_adopted", []).append(parent)
            if drop.any():
                ids, means, covs, mass = ids[~drop], means[~drop], covs[~drop], mass[~drop]
            return ids, means, covs, mass

        used = np.zeros(peaks_um.shape[0], dtype=bool)
        if divisions and forward and peaks_um.shape[0] >= 2 and means.shape[0]:
            # a moved component with a peak on either side of it (each 0.25-1 diameters
            # away, the two at least 0.8 diameters apart, no other component near them):
            # its nucleus has split; the component ends and two children start there
            # (on the rigidly moved centres: the non-rigid step pulls a dividing
            # nucleus' centre onto one of the children)
            # only a component that sat on a single peak in the previous frame: one that
            # covered two nuclei there (under-segmented) is not a division (measured: 3
            # false divisions on a real frame tracked onto itself without this)
            split = _find_divisions(rigid, peaks_um, d, single)
            if split:
                keep = np.ones(means.shape[0], dtype=bool)
                add_means, add_mass, add_ids = [], [], []
                for k, pair in split:
                    keep[k] = False
                    divide(k, pair, ids, means, mass, (add_means, add_mass, add_ids))
                ids = np.concatenate([ids[keep], add_ids])
                means = np.concatenate([means[keep], np.asarray(add_means)])
                rigid = np.concatenate([rigid[keep], np.asarray(add_means)[:, :ndim]])
                covs = np.concatenate([covs[keep], np.repeat(nominal[None], len(add_ids), 0)])
                mass = np.concatenate([mass[keep], add_mass])
        if new_tracks and ids.size:
            # nuclei that vanished (or faded below the foreground threshold): almost no
            # foreground within 0.4 diameters of the moved centre -> the track ends
            # rather than its component taking a neighbour's mass
            # (at least 0.6 voxels: with 1.5 um planes and 2 um nuclei a ball of 0.4
            # diameters can fall between two planes -- 3 of 101 real nuclei "vanished"
            # from a frame tracked onto itself)
            r_core = max(0.4 * d, 0.6 * float(vs.max()))
            ball = (4.0 / 3.0 * np.pi * r_core**3) if ndim == 3 else np.pi * r_core**2
            n_ball = ball / float(np.prod(vs))
            # ... at the non-rigid and at the rigid estimate (on a real frame tracked
            # onto itself the non-rigid step moved a few centres by over 1 um)
            thr = max(1.0, 0.1 * n_ball)
            gone = np.ones(ids.size, dtype=bool)
            for pos in (means[:, :ndim], rigid):
                gone &= np.asarray(tree_vox.query_ball_point(pos, r_core, return_length=True)) < thr
            if reference:
                gone &= ~np.isin(ids, given_ids)  # given centres are nuclei there
            if gone.any():
                ended += ids[gone].tolist()
                reasons["vanished"] = ids[gone].tolist()
                ids, means, covs, mass = ids[~gone], means[~gone], covs[~gone], mass[~gone]
        if new_tracks:
            # before the fit: nuclei that no moved component is near (entering the field,
            # or missed so far) get their own component, so that their mass is not forced
            # onto the neighbours
            chosen = far_peaks(means, covs, 1.0 * d, used)
            if chosen:
                ids, means, covs, mass = add_tracks(chosen, ids, means, covs, mass)

        def fit(means, covs, mass, iters, tol_factor=REFIT_TOL_FACTOR):
            K = means.shape[0]
            comp = np.full(X.shape[0], -1, dtype=np.int64)
            if K == 0:
                return None, comp
            # only the voxels within a nucleus diameter of a component take part: the
            # nuclei being tracked. Foreground far from all of them is a new nucleus (the
            # peaks above) or no nucleus; with fixed weights some component would have to
            # take its mass.
            dist, near = cKDTree(means[:, :ndim]).query(feats.positions, k=1)
            sel = dist <= 1.0 * d
            if np.count_nonzero(sel) < K:
                sel[:] = True
            a_s = a[sel] / a[sel].sum()
            if weights == "voronoi":
                alpha = _weights(np.bincount(near[sel], weights=a_s, minlength=K))
            elif weights == "nuclei":
                # as segment_nuclei's "nuclei" weights: each component claims the mass of
                # the nucleus (LoG peak's Voronoi cell) it sits in; components without a
                # peak within half a diameter count as their own nucleus
                m_pos = means[:, :ndim]
                if peaks_um.shape[0]:
                    dpk = cKDTree(peaks_um).query(m_pos, k=1)[0]
                    ref = np.concatenate([peaks_um, m_pos[dpk > 0.5 * d]])
                else:
                    ref = m_pos
                rtree = cKDTree(ref)
                cell = rtree.query(feats.positions[sel], k=1)[1]
                ref_mass = np.bincount(cell, weights=a_s, minlength=ref.shape[0])
                alpha = _weights(ref_mass[rtree.query(m_pos, k=1)[1]])
            elif weights == "uniform":
                alpha = None
            else:
                alpha = _weights(mass)
            model = SinkhornEM(
                K,
                method=method,
                weights=alpha,
                covariance_type="full",
                covariance_bounds=bounds_d,
                tol=tol_factor * tol,
                max_iter=iters,
                init=means,
                covariances_init=covs,
                n_neighbors=min(int(n_neighbors), K),
                random_state=random_state,
                position_dims=ndim,
                callback=None if progress is None else (lambda i, o: progress("fit", done[0], T)),
                marginal_penalty=marginal_penalty if method == "sinkhorn" else None,
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                comp[sel] = model.fit_predict(X[sel], sample_weight=a_s)
            if model.stopped_:
                raise TrackingCancelled(f"tracking cancelled during 'fit' (frame {t})")
            return model, comp

        tfit = time.perf_counter()
        # at most REFIT_MAX_ITER iterations before the bookkeeping, finished after it if
        # nothing changed: where nuclei divided the components spread over two children
        # until the bookkeeping splits them (growing embryo: 70-100 iterations of the
        # first fit, to convergence, in the frames of 150-250 nuclei; the heads converge
        # in 10-22)
        # a dividing frame: the bookkeeping before the fit divided at least
        # DIVIDING_FRACTION of the components (growing embryo: 14-78 divisions, a third of
        # the components, per frame; the heads: none; new tracks do not count: a
        # reference frame started from a subset of its nuclei gets dozens). Its first
        # fit only has to show which components cover two nuclei, and its refit stops
        # at tol, segment_nuclei's own
        # (DIVIDING_* below: the growing embryo's fits took 30 + 30 iterations in the
        # frames of 150-250 nuclei, 1.6-2.3x a segmentation of the frame)
        dividing = len(divided) >= DIVIDING_FRACTION * max(1, means.shape[0])
        first_iters = min(int(max_iter), DIVIDING_FIRST_MAX_ITER if dividing else REFIT_MAX_ITER)
        model, comp = fit(means, covs, mass, first_iters)
        n_iter_total += 0 if model is None else model.n_iter_
        for _ in range(int(weight_refits)):
            if model is None:
                break
            model, comp = fit(model.means_.copy(), model.covariances_.copy(), mass, int(max_iter))
            n_iter_total += model.n_iter_
        timings["fit"] = time.perf_counter() - tfit

        # ---- bookkeeping: divisions, duplicates, new nuclei
        tb = time.perf_counter()
        changed = False
        if model is not None:
            shift_fit = np.sqrt(((model.means_[:, :ndim] - means[:, :ndim]) ** 2).sum(1))
            minfo["fit_shift_um"] = {
                "median": float(np.median(shift_fit)),
                "max": float(shift_fit.max()),
                "over_half_diameter": ids[shift_fit > 0.5 * d].tolist(),
            }
            means, covs = model.means_.copy(), model.covariances_.copy()
        if new_tracks and means.shape[0] > 1:
            # two components on one nucleus (a nucleus that disappeared leaves its
            # component on a neighbour's): closer than 0.6 diameters with at most one
            # peak near them -> the one farther from that peak (or the younger) ends
            drop = _find_duplicates(means[:, :ndim], ids, peaks_um, d)
            if reference:  # two given centres close together are two nuclei there
                drop = [k for k in drop if ids[k] not in given_set]
            if drop:
                changed = True
                keep = np.ones(means.shape[0], dtype=bool)
                keep[drop] = False
                ended.extend(ids[~keep].tolist())
                reasons["duplicate"] = ids[~keep].tolist()
                ids, means, covs, mass = ids[keep], means[keep], covs[keep], mass[keep]
        if new_tracks:
            # a peak that started a component before the fit (a division's child) but
            # that no component is near after it is free again: the fit moved that
            # component onto a neighbour (growing embryo with 15 % of its nuclei in
            # metaphase, seed 0: a child started at its peak ended 5.3 um away, between
            # two nuclei, and its own nucleus was never tracked; correct links 0.833 ->
            # 0.883, nuclei found 0.948 -> 0.970)
            if used.any() and means.shape[0]:
                left = cKDTree(means[:, :ndim]).query(peaks_um[used], k=1)[0] > 0.6 * d
                used[np.flatnonzero(used)[left]] = False
            chosen = far_peaks(means, covs, 0.8 * d, used)
            if chosen:
                changed = True
                used[chosen] = True
                ids, means, covs, mass = add_tracks(chosen, ids, means, covs, mass)
            # peaks that no component claims one-to-one although one is near (a fitted
            # component spread over two nuclei: in a growing embryo, where most nuclei
            # divide between frames, the second child of a division ended up here); not
            # in the reference frame, whose nuclei are its segmentation's
            if not reference:
                ids, means, covs, mass, n_split = split_unclaimed(ids, means, covs, mass, used)
                changed |= n_split > 0
                if divisions and forward:
                    n_before = ids.size
                    ids, means, covs, mass = adopt_orphans(ids, means, covs, mass)
                    changed |= ids.size != n_before
        timings["bookkeeping"] = time.perf_counter() - tb
        if changed:
            tfit = time.perf_counter()
            # a warm refit: the components already sit on their nuclei (measured: 5-20
            # iterations); capped so that a frame costs no more than a segmentation
            # (a dividing frame's refit: fewer iterations, at tol itself)
            cap, tol_factor = (
                (DIVIDING_REFIT_MAX_ITER, 1.0) if dividing else (REFIT_MAX_ITER, REFIT_TOL_FACTOR)
            )
            model, comp = fit(means, covs, mass, min(int(max_iter), cap), tol_factor)
            n_iter_total += 0 if model is None else model.n_iter_
            if model is not None:
                means, covs = model.means_.copy(), model.covariances_.copy()
            timings["refit"] = time.perf_counter() - tfit
        elif model is not None and not model.converged_ and int(max_iter) > first_iters:
            tfit = time.perf_counter()
            model, comp = fit(means, covs, mass, int(max_iter) - first_iters)
            n_iter_total += model.n_iter_
            means, covs = model.means_.copy(), model.covariances_.copy()
            timings["fit"] += time.perf_counter() - tfit

        if new_tracks and divisions and forward and not reference and means.shape[0]:
            # the orphans once more, on the fitted centres: before the refit the older
            # track's component often still lay between the two children (it covered
            # both, which left the second child's peak unclaimed), so one orphan and it
            # did not straddle the old centre; after the refit it sits on the first child
            # (growing embryo, seeds 0-2: correct links 0.922 / 0.921 / 0.922 -> 0.931 /
            # 0.931 / 0.927). Only the relabelling here (no component is dropped: the
            # frame is not fitted again)
            ids = adopt_orphans(ids, means, covs, mass, relabel_only=True)[0]

        # ---- labels and table rows
        tl = time.perf_counter()
        min_vol = min_label_volume(d, ndim, min_size)
        min_vox = max(1, int(np.ceil(min_vol / float(np.prod(vs)))))
        if means.shape[0]:
            labels, counts = _label_frame(
                feats, comp, means, covs, ids, shape, ndim, vs, mahalanobis_radius, min_vox
            )
        else:
            labels, counts = np.zeros(shape, dtype=np.uint16), np.zeros(0, dtype=np.int64)
        model_w = np.asarray(model.weights_, dtype=np.float64) if model is not None else mass
        if new_tracks and means.shape[0]:
            # a new track whose nucleus has no label of the minimum size is no nucleus
            # (as segment_nuclei drops such fragments): it is not started
            fresh = np.isin(ids, np.asarray(new, dtype=np.int64)) & (counts == 0)
            fresh &= np.array([int(i) not in parents for i in ids], dtype=bool)
            if fresh.any():
                gone_ids = set(ids[fresh].tolist())
                new[:] = [i for i in new if i not in gone_ids]
                ids, means, covs = ids[~fresh], means[~fresh], covs[~fresh]
                counts = counts[~fresh]
                model_w = model_w[~fresh]
        all_labels[t] = labels
        raw_c = raw[..., None] if frame_ch is None else np.moveaxis(raw, frame_ch, -1)
        rows.append(_frame_rows(t, ids, parents, means, labels, raw_c, vs, channel_names, counts))
        # weights="previous": the next frame's weights are this frame's, per track
        new_mass = model_w
        timings["labels"] = time.perf_counter() - tl
        timings["total"] = time.perf_counter() - tf
        frame_info[t] = {
            "t": t,
            "n_tracks": int(ids.size),
            "new": [int(i) for i in new],
            "ended": [int(i) for i in ended],
            "divided": [int(i) for i in divided],
            "reasons": reasons,
            "motion": minfo,
            "n_iter": int(n_iter_total),
            "dividing": bool(dividing),
            "converged": bool(model.converged_) if model is not None else True,
            "objective": float(model.objective_) if model is not None else None,
            "n_foreground_voxels": int(feats.n_points),
            "n_peaks": len(peaks),
            "n_granules_spared": int(n_spared),
            "foreground_threshold": float(pre.threshold),
            "timings": timings,
            "reference": reference,
            "nucleus_diameter_um": d,
        }
        if reference:
            frame_info[t]["segmentation"] = seg.info
            frame_info[t]["nucleus_diameter_um"] = diam
            frame_info[t]["timings"]["segmentation"] = seg.info["timings"]["total"]
            frame_info[t]["new"] = [int(i) for i in ids]
        done[0] += 1
        report("frame", done[0])
        return _State(ids, means, covs, new_mass, peaks_um, small, d)

    # BLAS on one thread: the per-frame linear algebra is small (CPD's K x K solves,
    # 3 x 3 inverses) and OpenBLAS's worker threads made it 10-100x slower on a busy
    # machine (a 154 x 154 solve: 19 ms against 0.25 ms; the growing embryo's last frame
    # spent 4 s in its motion estimate). The mixture kernels use Numba's own threads.
    # the backfill's second pass: a direction stops at the first frame whose tracks are
    # the first pass's (every track one-to-one on one of them), the first pass is spliced
    # on for the frames beyond it (the same frames tracked from the same mixture)
    first = _FIRST_PASS.get() if _SPLICE else None
    splice_at: dict[int, tuple[int, dict[int, int]]] = {}
    with threadpool_limits(limits=1, user_api="blas"):
        state0 = step(ref, state0, forward=False, reference=True)
        if first is not None and _match_frame(first, rows[-1], ref, diam, given_set) is not None:
            # the reference frame ended the nuclei the backfill added (e.g. as a duplicate
            # of a neighbour): every frame would be tracked as in the first pass
            raise _FirstPassStands
        for direction, span in ((1, range(ref + 1, T)), (-1, range(ref - 1, -1, -1))):
            state = state0
            for t in span:
                state = step(t, state, forward=direction > 0)
                if first is None or t == span[-1]:
                    continue
                same = _match_frame(first, rows[-1], t, state.diameter, given_set)
                if same is not None:
                    splice_at[direction] = (t, same)
                    break
    for direction, (t_s, same) in splice_at.items():
        span = range(t_s + 1, T) if direction > 0 else range(t_s - 1, -1, -1)
        _splice(first, span, same, next_id, rows, all_labels, frame_info)

    tracks = pd.concat(rows, ignore_index=True)
    tracks = tracks.sort_values(["track_id", "t"], kind="stable").reset_index(drop=True)
    max_id = int(tracks["track_id"].max()) if len(tracks) else 0
    if max_id <= np.iinfo(np.uint16).max:
        all_labels = all_labels.astype(np.uint16)
    params = {
        "time_axis": int(time_axis),
        "voxel_size": [float(v) for v in vs],
        "channel_axis": channel_axis,
        "channel_names": channel_names,
        "reference_frame": ref,
        "init": seg.params["init"],
        "n_nuclei": seg.params["n_nuclei"],
        "nucleus_diameter": "auto" if auto_diameter else diam,
        "method": method,
        "max_iter": int(max_iter),
        "tol": float(tol),
        "intensity_weight": float(intensity_weight),
        "n_neighbors": int(n_neighbors),
        "foreground_threshold": None
        if foreground_threshold is None
        else float(foreground_threshold),
        "random_state": random_state,
        "marginal_penalty": None if marginal_penalty is None else float(marginal_penalty),
        "voxel_mass": voxel_mass,
        "covariance_scale": [lo_s, hi_s],
        "mahalanobis_radius": float(mahalanobis_radius),
        "min_size": float(min_size),
        "background_scale": None if background_scale is None else float(background_scale),
        "threshold_method": threshold_method,
        "suppress_granules": bool(suppress_granules),
        "motion": motion,
        "max_motion": None if max_motion is None else float(max_motion),
        "new_tracks": bool(new_tracks),
        "divisions": bool(divisions),
        "weights": weights,
        "weight_refits": int(weight_refits),
        "backfill": backfill,
    }
    info_list = [frame_info[t] for t in range(T)]
    info_list[ref]["timings"]["tracking_total"] = time.perf_counter() - t_start
    result = TrackingResult(all_labels, tracks, params, info_list)
    if backfill:
        result = _backfill(
            result, call, frames.shape[0], spatial_shape, diam, vs, t_start, state0.signal, cell_um
        )
    return result


def _carry_to_reference(tracks, ref, diam, vs):
    """Reference-frame positions (um) of the tracks that started without a parent after
    (or, going backward, before) the reference frame: each is moved frame by frame
    towards the reference by the mean displacement of its neighbouring tracks present in
    both frames (the 8 nearest, Gaussian weights of 2 diameters). Returns
    ``(track_ids, positions_um)``."""
    ndim = vs.size
    cols = ["z_um", "y_um", "x_um"][-ndim:]
    by_t = {int(t): g for t, g in tracks.groupby("t")}
    at_ref = set(by_t.get(ref, tracks.iloc[:0])["track_id"].tolist())
    out_ids, out_pos = [], []
    for tid, g in tracks.groupby("track_id"):
        if int(g["parent_id"].iloc[0]) != 0 or int(tid) in at_ref:
            continue
        ts = g["t"].to_numpy()
        if ts.size < 2:
            # seen in one frame only: not enough evidence of a nucleus (on a real frame
            # tracked onto itself, 6 such one-frame tracks carried back made the other
            # tracks less stable: 92 % instead of 98 % moved < 1 um)
            continue
        if ts.min() > ref:
            t0, step = int(ts.min()), -1
        elif ts.max() < ref:
            t0, step = int(ts.max()), 1
        else:
            continue
        p = g.loc[g["t"] == t0, cols].to_numpy()[0].astype(np.float64)
        ok = True
        for s in range(t0, ref, step):
            a, b = by_t.get(s), by_t.get(s + step)
            if a is None or b is None:
                ok = False
                break
            both = np.intersect1d(a["track_id"].to_numpy(), b["track_id"].to_numpy())
            both = both[both != tid]
            if both.size < 1:
                ok = False
                break
            pa = a.set_index("track_id").loc[both, cols].to_numpy()
            pb = b.set_index("track_id").loc[both, cols].to_numpy()
            k = min(8, both.size)
            d, nn = cKDTree(pa).query(p, k=k)
            d, nn = np.atleast_1d(d), np.atleast_1d(nn)
            w = np.exp(-(d**2) / (2.0 * (2.0 * diam) ** 2)) + 1e-12
            p = p + (w[:, None] * (pb[nn] - pa[nn])).sum(0) / w.sum()
        if ok:
            out_ids.append(int(tid))
            out_pos.append(p)
    return out_ids, np.asarray(out_pos, dtype=np.float64).reshape(-1, ndim)


# False: the backfill's second pass tracks every frame again (the tests compare)
_SPLICE = True

#: A nucleus carried back to the reference frame is added there only this many nucleus
#: diameters or more from every reference nucleus (see :func:`_backfill`).
BACKFILL_MIN_GAP = 0.8

#: Two passes' tracks of one frame are the same when they pair one-to-one within this
#: many nucleus diameters (see :func:`_match_frame`).
SPLICE_RADIUS = 0.25


def _match_frame(first, rows, t, diam, given_set):
    """The backfill's second pass against its first at frame ``t``: ``{first-pass track
    id: second-pass track id}`` when both have the same number of tracks there and they
    pair one-to-one, nearest first, within :data:`SPLICE_RADIUS` diameters (and the
    user's given tracks keep their ids); else None.

    ``rows``: the second pass' rows of frame ``t``. Both passes track the same frame
    from mixtures that agree on every nucleus, so the second would continue as the
    first did: the frames beyond ``t`` are the first pass' (:func:`_splice`).
    """
    a = first.tracks[first.tracks["t"] == t]
    if len(a) != len(rows) or len(a) == 0:
        return None
    cols = ["z_um", "y_um", "x_um"][-len(first.params["voxel_size"]) :]
    j = _pair_nearest(a[cols].to_numpy(float), rows[cols].to_numpy(float), SPLICE_RADIUS * diam)
    if (j < 0).any():
        return None
    same = dict(
        zip(
            a["track_id"].astype(int).tolist(),
            rows["track_id"].to_numpy()[j].astype(int).tolist(),
            strict=True,
        )
    )
    if any(same.get(i, i) != i for i in given_set):
        return None
    return same


def _splice(first, span, same, next_id, rows, all_labels, frame_info):
    """The first pass' frames ``span`` added to the second pass' ``rows``, labels and
    frame info, their track ids renamed: a track of the splice frame takes its id
    there (``same``, :func:`_match_frame`), a track started later a new id (in the first
    pass' order); in place. Each spliced frame's info gets ``spliced: True``."""
    sub = first.tracks[first.tracks["t"].isin(list(span))]
    later = np.union1d(sub["track_id"].to_numpy(), sub["parent_id"].to_numpy())
    rename = {0: 0, **same}
    for i in later.astype(int).tolist():
        if i not in rename:
            rename[i] = next_id[0]
            next_id[0] += 1
    lut = np.zeros(max(int(first.labels.max(initial=0)), max(rename)) + 1, dtype=np.int64)
    for a, b in rename.items():
        if a < lut.size:
            lut[a] = b

    def ren(v):
        if isinstance(v, list):
            return [ren(x) for x in v]
        return int(rename.get(int(v), v))

    for t in span:
        part = sub[sub["t"] == t].copy()
        for c in ("track_id", "label", "parent_id"):
            if c in part:
                part[c] = part[c].map(lambda i: rename[int(i)]).astype(np.int64)
        rows.append(part)
        all_labels[t] = lut[np.asarray(first.labels[t], dtype=np.int64)]
        info = dict(first.frames[t])
        for k in ("new", "ended", "divided"):
            info[k] = ren(list(info[k]))
        info["reasons"] = {k: ren(list(v)) for k, v in info["reasons"].items()}
        motion = dict(info["motion"])
        if "fit_shift_um" in motion:
            shift = dict(motion["fit_shift_um"])
            shift["over_half_diameter"] = ren(list(shift["over_half_diameter"]))
            motion["fit_shift_um"] = shift
        info["motion"] = motion
        info["spliced"] = True
        frame_info[t] = info


def _backfill(result, call, T, shape, diam, vs, t_start, ref_signal, cell_um):
    """Second pass of :func:`track_nuclei` from the reference nuclei plus the nuclei it
    missed (see ``backfill`` there); ``result`` unchanged when there are none.
    ``ref_signal``: the reference frame's signal (before granule suppression) in cells of
    ``cell_um``."""
    ref = int(result.params["reference_frame"])
    late_ids, late_um = _carry_to_reference(result.tracks, ref, diam, vs)
    if not late_ids:
        result.frames[ref]["backfilled"] = []
        return result
    ndim = vs.size
    cols = ["z_um", "y_um", "x_um"][-ndim:]
    at_ref = result.tracks[result.tracks["t"] == ref].sort_values("track_id")
    ref_um = at_ref[cols].to_numpy()
    extent = (np.asarray(shape) - 0.5) * vs
    inside = np.all((late_um >= -0.5 * vs) & (late_um <= extent), axis=1)
    if len(ref_um):
        # at least 0.8 diameters from every reference nucleus, where the tracker starts a
        # track at a peak after a fit: the growing embryo's carried-back nuclei, 0.51-0.74
        # diameters from one, were all ended in the second pass' reference frame (as
        # duplicates of it), a pass for nothing; a head's missed nucleus lay 1.0 away
        inside &= cKDTree(ref_um).query(late_um, k=1)[0] > BACKFILL_MIN_GAP * diam
    # ... and with signal there in the reference frame: a nucleus that appeared later
    # (entered the field, or the embryo's new nucleus) is carried back onto nothing
    # (measured: the appearing nucleus of both synthetic embryos, a second pass for nothing)
    cells = np.clip(np.floor(late_um / cell_um).astype(int), 0, np.asarray(ref_signal.shape) - 1)
    thr = float(result.frames[ref]["foreground_threshold"])
    inside &= ref_signal[tuple(cells.T)] > 0.5 * thr
    # two late tracks carried onto one place: one nucleus
    keep: list[int] = []
    for i in np.flatnonzero(inside):
        if all(np.linalg.norm(late_um[i] - late_um[j]) > 0.5 * diam for j in keep):
            keep.append(int(i))
    if not keep:
        result.frames[ref]["backfilled"] = []
        return result
    init = np.concatenate([ref_um, late_um[keep]]) / vs
    progress = call["progress"]
    kw = {k: v for k, v in call.items() if k not in ("stack", "progress")}
    # the user's given centres (tracks 1..n, first in the reference rows) stay protected
    n_user = 0 if isinstance(call["init"], str) else len(np.asarray(call["init"]))
    # the caller's nucleus_diameter: with "auto" every frame keeps its own scale (the
    # reference frame's estimate is the same number again)
    kw.update(init=init, backfill=False)
    token = _PROTECTED.set(n_user)
    token_first = _FIRST_PASS.set(result)
    try:
        again = track_nuclei(
            call["stack"],
            progress=None if progress is None else (lambda s, i, n: progress("fit", T, T)),
            **kw,
        )
    except _FirstPassStands:
        info = result.frames[ref]
        info["backfilled"] = []
        # the carried-back nuclei that the second pass' reference frame ended
        info["backfill_ended"] = [late_ids[i] for i in keep]
        info["retracked"] = [ref]
        info["timings"]["tracking_total"] = time.perf_counter() - t_start
        return result
    finally:
        _FIRST_PASS.reset(token_first)
        _PROTECTED.reset(token)
    # the run is described by the caller's arguments (``track_nuclei(stack, **params)``
    # repeats it)
    again.params.update(
        init=result.params["init"],
        nucleus_diameter=result.params["nucleus_diameter"],
        backfill=True,
    )
    info = again.frames[ref]
    info["backfilled"] = list(range(len(ref_um) + 1, len(ref_um) + len(keep) + 1))
    info["first_pass"] = {
        "n_tracks": int(result.tracks["track_id"].nunique()),
        "late_tracks": late_ids,
        "seconds": float(result.frames[ref]["timings"]["tracking_total"]),
    }
    # the frames the second pass tracked; the others are the first pass' (_splice)
    info["retracked"] = [t for t, f in enumerate(again.frames) if not f.get("spliced")]
    info["timings"]["tracking_total"] = time.perf_counter() - t_start
    return again


def _track_on_the_plane(call: dict, arr, time_axis: int, frame_ch, axis: int) -> TrackingResult:
    """:func:`track_nuclei` of a time-lapse of single planes (a 2-D time-lapse saved with
    a z axis of length 1, e.g. an ImageJ TZYX hyperstack): the planes tracked in 2-D,
    then labels and tracks with the plane axis back (coordinate 0; volumes times its
    voxel size, when given). ``axis`` is the plane axis in a frame; ``params`` are as
    given, so that they reproduce the result."""
    kw = {n: v for n, v in call.items() if n != "stack"}
    spatial = [a for a in range(arr.ndim - 1) if a != frame_ch]
    k = spatial.index(axis)  # the plane axis among the spatial axes
    at = axis + (axis >= time_axis)  # ... and in the stack
    kw["time_axis"] = time_axis - (time_axis > at)
    ca = call["channel_axis"]
    if ca is not None:
        ca = int(ca) % arr.ndim
        kw["channel_axis"] = ca - (ca > at)
    _, plane_um, flat_kw = _without_plane_axis(call["voxel_size"], call["init"], k)
    kw.update(flat_kw)
    res = track_nuclei(np.squeeze(arr, axis=at), **kw)
    params = dict(res.params)
    params["voxel_size"] = [float(v) for v in np.insert(res.params["voxel_size"], k, plane_um)]
    params["time_axis"] = int(time_axis)
    params["channel_axis"] = call["channel_axis"]
    if not isinstance(call["init"], str):
        params["init"] = call["init"]
    frames = [dict(f) for f in res.frames]
    ref = int(params["reference_frame"])
    frames[ref]["single_plane_axis"] = int(axis)
    return TrackingResult(
        np.expand_dims(res.labels, 1 + k),
        _plane_axis_columns(res.tracks, k, first=2, plane_um=plane_um),
        params,
        frames,
    )


def save_tracking(result: TrackingResult, folder, stem: str = "tracking") -> dict:
    """Write a tracking result: labels (TZYX / TYX TIFF), tracks (CSV), run info (JSON).

    Files, each written atomically (a temporary file renamed into place):

    - ``<stem>_labels.tif``: the labels, time first, calibrated (voxel size in
      micrometres); an ImageJ hyperstack when the track ids fit in 16 bits, else an
      OME-TIFF (uint32);
    - ``<stem>_tracks.csv``: :attr:`TrackingResult.tracks`;
    - ``<stem>_tracking.json``: ``{"parameters": params, "frames": per-frame info}``
      (``track_nuclei(stack, **parameters)`` repeats the run).

    Parameters
    ----------
    result : TrackingResult
    folder : str or os.PathLike
        Output folder (created if needed).
    stem : str
        File name prefix.

    Returns
    -------
    dict
        ``{"labels": path, "tracks": path, "info": path}``.
    """
    import json
    from pathlib import Path

    import tifffile

    from .._json import jsonable
    from ..io import atomic_write, write_table

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "labels": folder / f"{stem}_labels.tif",
        "tracks": folder / f"{stem}_tracks.csv",
        "info": folder / f"{stem}_tracking.json",
    }
    labels = np.asarray(result.labels)
    vs = [float(v) for v in result.params["voxel_size"]]
    axes = "TZYX" if labels.ndim == 4 else "TYX"
    if labels.max(initial=0) <= np.iinfo(np.uint16).max:
        meta: dict[str, Any] = {"axes": axes, "unit": "micron"}
        if labels.ndim == 4:
            meta["spacing"] = vs[0]
        kwargs: dict[str, Any] = {
            "imagej": True,
            "metadata": meta,
            "resolution": (1.0 / vs[-1], 1.0 / vs[-2]),
        }
        data = labels.astype(np.uint16)
    else:
        meta = {"axes": axes}
        for a, v in zip(axes[1:], vs, strict=True):
            meta[f"PhysicalSize{a}"] = v
            meta[f"PhysicalSize{a}Unit"] = "\u00b5m"
        kwargs = {"ome": True, "metadata": meta}
        data = labels.astype(np.uint32)
    with atomic_write(paths["labels"], "wb") as fh:
        tifffile.imwrite(fh, np.ascontiguousarray(data), compression="zlib", **kwargs)
    write_table(paths["tracks"], result.tracks)
    doc = {"parameters": jsonable(result.params), "frames": jsonable(result.frames)}
    text = json.dumps(doc, indent=1, allow_nan=True)
    with atomic_write(paths["info"], "w", encoding="utf-8") as fh:
        fh.write(text + "\n")
    return paths
