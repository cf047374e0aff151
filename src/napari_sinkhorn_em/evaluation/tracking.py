"""Tracking metrics and the nearest-centre (Hungarian) baseline linker."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from scipy.spatial.distance import cdist

__all__ = ["link_accuracy", "link_nearest", "match_points"]


def match_points(a: np.ndarray, b: np.ndarray, max_distance: float) -> list[tuple[int, int]]:
    """One-to-one matching of two point sets (Hungarian on Euclidean distance).

    Returns the pairs ``(i, j)`` with ``|a_i - b_j| <= max_distance``.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if len(a) == 0 or len(b) == 0:
        return []
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    d = cdist(a, b)
    big = 1e6 + d.max()
    cost = np.where(d <= max_distance, d, big)
    r, c = linear_sum_assignment(cost)
    return [(int(i), int(j)) for i, j in zip(r, c, strict=True) if d[i, j] <= max_distance]


def link_accuracy(
    tracks: pd.DataFrame,
    truth_centres: list,
    truth_ids: list,
    max_distance: float,
    *,
    truth_parents: dict | None = None,
    columns=("z_um", "y_um", "x_um"),
    frames=None,
) -> dict:
    """Fraction of the truth links (same nucleus in consecutive frames) a tracker got right.

    In every frame the tracker's nuclei are matched one-to-one to the truth centres
    (Hungarian, at most ``max_distance`` apart). A truth link joins nucleus ``i`` in
    frame ``t`` to nucleus ``i`` in frame ``t + 1`` (or, across a division, to each
    child ``j`` with ``truth_parents[j] == i``). It is correct when the track matched to
    ``i`` at ``t`` is the track matched to the truth nucleus at ``t + 1`` (or, across a
    division, that track is the ``parent_id`` of the matched one). An unmatched end
    counts as wrong.

    Parameters
    ----------
    tracks : pandas.DataFrame
        ``track_id``, ``t``, ``parent_id`` and the position ``columns``.
    truth_centres : list of numpy.ndarray
        Per frame ``(N_t, ndim)`` true centres in the units of ``columns``.
    truth_ids : list of numpy.ndarray
        Per frame the truth identity of each centre.
    max_distance : float
        Matching radius (units of ``columns``).
    truth_parents : dict, optional
        ``{child id: parent id}``.
    columns : sequence of str
        Position columns of ``tracks`` (e.g. ``("y_um", "x_um")`` in 2-D).
    frames : sequence of int, optional
        Frame index of each entry of ``truth_centres`` (default 0, 1, ...).

    Returns
    -------
    dict
        ``accuracy`` (correct / links), ``n_links``, ``n_correct``, ``per_step`` (list of
        (t, correct, links)), ``detected`` (fraction of truth nuclei matched) and
        ``linked_given_found`` (correct / links whose two ends were both matched: the
        linking alone, without the detection misses).
    """
    truth_parents = truth_parents or {}
    frames = list(range(len(truth_centres))) if frames is None else list(frames)
    cols = list(columns)
    parent_of = tracks.drop_duplicates("track_id").set_index("track_id")["parent_id"].to_dict()
    match: list[dict] = []
    n_truth = n_found = 0
    for t, c, ids in zip(frames, truth_centres, truth_ids, strict=True):
        sub = tracks[tracks["t"] == t]
        pairs = match_points(c, sub[cols].to_numpy(), max_distance)
        tids = sub["track_id"].to_numpy()
        match.append({int(ids[i]): int(tids[j]) for i, j in pairs})
        n_truth += len(ids)
        n_found += len(pairs)
    per_step = []
    n_links = n_correct = n_both = n_both_ok = 0
    for s in range(len(frames) - 1):
        a_ids = {int(i) for i in truth_ids[s]}
        ok = links = 0
        for j in (int(x) for x in truth_ids[s + 1]):
            if j in a_ids:
                src, across = j, False
            elif truth_parents.get(j) in a_ids:
                src, across = truth_parents[j], True
            else:
                continue
            links += 1
            ta, tb = match[s].get(src), match[s + 1].get(j)
            if ta is None or tb is None:
                continue
            n_both += 1
            if tb == ta or (across and parent_of.get(tb, 0) == ta):
                ok += 1
                n_both_ok += 1
        per_step.append((frames[s], ok, links))
        n_links += links
        n_correct += ok
    return {
        "accuracy": n_correct / n_links if n_links else float("nan"),
        "n_links": n_links,
        "n_correct": n_correct,
        "per_step": per_step,
        "detected": n_found / n_truth if n_truth else float("nan"),
        "linked_given_found": n_both_ok / n_both if n_both else float("nan"),
    }


def link_nearest(
    centres: list, max_distance: float, *, columns=("z_um", "y_um", "x_um")
) -> pd.DataFrame:
    """Link per-frame detections by nearest centres (the Hungarian baseline).

    Consecutive frames are matched one-to-one by :func:`match_points` (no motion model);
    an unmatched nucleus starts a new track.

    Parameters
    ----------
    centres : list of numpy.ndarray
        Per frame ``(N_t, ndim)`` centres (units of ``columns``).
    max_distance : float
        Largest accepted link length.
    columns : sequence of str

    Returns
    -------
    pandas.DataFrame
        ``track_id``, ``t``, ``parent_id`` (always 0) and ``columns``.
    """
    rows = []
    prev_ids = np.zeros(0, dtype=np.int64)
    next_id = 1
    for t, c in enumerate(centres):
        c = np.asarray(c, dtype=np.float64)
        ids = np.zeros(len(c), dtype=np.int64)
        if t > 0:
            for i, j in match_points(centres[t - 1], c, max_distance):
                ids[j] = prev_ids[i]
        for j in np.flatnonzero(ids == 0):
            ids[j] = next_id
            next_id += 1
        d = {"track_id": ids, "t": np.full(len(c), t), "parent_id": np.zeros(len(c), np.int64)}
        for k, name in enumerate(columns):
            d[name] = c[:, k]
        rows.append(pd.DataFrame(d))
        prev_ids = ids
    return pd.concat(rows, ignore_index=True)
