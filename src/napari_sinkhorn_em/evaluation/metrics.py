"""Accuracy metrics for nucleus detection and segmentation.

Two families of metrics are provided:

* **Centre matching** -- predicted and true nucleus centres are matched one-to-one
  (Hungarian assignment on physical distances) and a pair counts as a true positive when
  its distance is at most ``max_distance`` micrometres. From the matching follow
  precision, recall, F1 and the mean localisation error of the matched pairs.
* **Label overlap** -- the intersection-over-union (IoU) of every predicted label with
  every true label, computed from a sparse contingency table, and the average precision
  at an IoU threshold (``TP / (TP + FP + FN)``, the definition used by the cell-tracking /
  StarDist / Cellpose literature).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree

from .._validation import check_voxel_size

__all__ = [
    "CentreMatch",
    "average_precision",
    "label_centroids",
    "label_iou",
    "match_centres",
    "match_centres_nn",
    "nearest_neighbour_distance",
]


@dataclass(frozen=True)
class CentreMatch:
    """Result of one-to-one centre matching.

    Attributes
    ----------
    pred_index, true_index : numpy.ndarray
        Indices of matched predicted and true centres (same length, pairwise).
    distances : numpy.ndarray
        Physical distance (micrometres) of each matched pair.
    n_pred, n_true : int
        Number of predicted and true centres.
    """

    pred_index: np.ndarray
    true_index: np.ndarray
    distances: np.ndarray
    n_pred: int
    n_true: int

    @property
    def tp(self) -> int:
        """Number of matched pairs (true positives)."""
        return int(self.pred_index.size)

    @property
    def fp(self) -> int:
        """Unmatched predicted centres (false positives)."""
        return self.n_pred - self.tp

    @property
    def fn(self) -> int:
        """Unmatched true centres (false negatives)."""
        return self.n_true - self.tp

    @property
    def precision(self) -> float:
        """``TP / n_pred`` (1.0 when nothing was predicted and nothing was true)."""
        if self.n_pred == 0:
            return 1.0 if self.n_true == 0 else 0.0
        return self.tp / self.n_pred

    @property
    def recall(self) -> float:
        """``TP / n_true`` (1.0 when there is nothing to find)."""
        if self.n_true == 0:
            return 1.0
        return self.tp / self.n_true

    @property
    def f1(self) -> float:
        """Harmonic mean of precision and recall, ``2 TP / (n_pred + n_true)``."""
        denom = self.n_pred + self.n_true
        return 1.0 if denom == 0 else 2.0 * self.tp / denom

    @property
    def mean_error(self) -> float:
        """Mean distance (micrometres) of the matched pairs; NaN when none matched."""
        return float(self.distances.mean()) if self.distances.size else float("nan")

    def summary(self) -> dict:
        """Return the counts and scores as a plain dictionary."""
        return {
            "n_pred": self.n_pred,
            "n_true": self.n_true,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "mean_error_um": self.mean_error,
        }


def _as_points(a, name: str) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if arr.ndim == 1 and arr.size == 0:
        arr = arr.reshape(0, 0)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n_points, ndim), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite coordinates")
    return arr


def match_centres(
    pred,
    true,
    *,
    max_distance: float = 1.5,
    voxel_size=None,
) -> CentreMatch:
    """Match predicted to true centres one-to-one within a physical distance.

    The matching minimises the total distance over all pairs closer than
    ``max_distance`` (Hungarian algorithm, :func:`scipy.optimize.linear_sum_assignment`);
    pairs farther apart are never matched.

    Parameters
    ----------
    pred, true : array-like, shape (n, ndim)
        Centres. In micrometres when ``voxel_size`` is None, otherwise in voxel
        coordinates that are multiplied by ``voxel_size``.
    max_distance : float
        Largest distance (micrometres) of a true-positive pair.
    voxel_size : sequence of float, optional
        Physical size of a voxel along each axis.

    Returns
    -------
    CentreMatch
        Matched index pairs, their distances and the derived scores.
    """
    p = _as_points(pred, "pred")
    t = _as_points(true, "true")
    if max_distance <= 0:
        raise ValueError(f"max_distance must be > 0, got {max_distance}")
    n_pred, n_true = p.shape[0], t.shape[0]
    empty = np.zeros(0, dtype=np.intp)
    if n_pred == 0 or n_true == 0:
        return CentreMatch(empty, empty, np.zeros(0), n_pred, n_true)
    if p.shape[1] != t.shape[1]:
        raise ValueError(
            f"pred and true have different dimensionality ({p.shape[1]} vs {t.shape[1]})"
        )
    if voxel_size is not None:
        vs = np.asarray(check_voxel_size(voxel_size, p.shape[1]), dtype=np.float64)
        p = p * vs
        t = t * vs
    # Candidate pairs within max_distance (KD-tree), then the Hungarian assignment on
    # the block of rows/columns that have a candidate (a prohibitive cost elsewhere).
    lists = cKDTree(p).query_ball_tree(cKDTree(t), max_distance)
    rows = np.repeat(np.arange(n_pred), [len(x) for x in lists])
    cols = np.fromiter((j for x in lists for j in x), dtype=np.intp, count=rows.size)
    if rows.size == 0:
        return CentreMatch(empty, empty, np.zeros(0), n_pred, n_true)
    rows_u, row_inv = np.unique(rows, return_inverse=True)
    cols_u, col_inv = np.unique(cols, return_inverse=True)
    # larger than any sum of in-range distances: maximises the number of matches first
    big = max_distance * (min(rows_u.size, cols_u.size) + 1) + 1.0
    cost = np.full((rows_u.size, cols_u.size), big)
    cost[row_inv, col_inv] = np.linalg.norm(p[rows] - t[cols], axis=1)
    ri, ci = linear_sum_assignment(cost)
    keep = cost[ri, ci] <= max_distance
    pi = rows_u[ri[keep]]
    ti = cols_u[ci[keep]]
    dist = np.linalg.norm(p[pi] - t[ti], axis=1)
    order = np.argsort(pi, kind="stable")
    return CentreMatch(pi[order], ti[order], dist[order], n_pred, n_true)


def label_iou(pred_labels, true_labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Intersection-over-union of every predicted label with every true label.

    Parameters
    ----------
    pred_labels, true_labels : numpy.ndarray of int
        Label images of the same shape (0 = background).

    Returns
    -------
    iou : scipy.sparse.csr_matrix, shape (n_pred, n_true)
        IoU of each (predicted, true) pair that overlaps; non-overlapping pairs are 0.
    pred_ids, true_ids : numpy.ndarray
        The label values that index the rows and columns.
    """
    a = np.asarray(pred_labels)
    b = np.asarray(true_labels)
    if a.shape != b.shape:
        raise ValueError(f"label images differ in shape: {a.shape} vs {b.shape}")
    for name, arr in (("pred_labels", a), ("true_labels", b)):
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{name} must be an integer array, got dtype {arr.dtype}")
        if arr.size and arr.min() < 0:
            raise ValueError(f"{name} contains negative labels")
    a = a.ravel()
    b = b.ravel()
    pred_ids, a_idx = np.unique(a, return_inverse=True)
    true_ids, b_idx = np.unique(b, return_inverse=True)
    cont = sp.coo_matrix(
        (np.ones(a.size, dtype=np.int64), (a_idx.ravel(), b_idx.ravel())),
        shape=(pred_ids.size, true_ids.size),
    ).tocsr()
    cont.sum_duplicates()
    size_a = np.bincount(a_idx.ravel(), minlength=pred_ids.size)
    size_b = np.bincount(b_idx.ravel(), minlength=true_ids.size)
    # drop background rows/columns (label 0)
    ka = pred_ids != 0
    kb = true_ids != 0
    cont = cont[ka][:, kb].tocoo()
    size_a = size_a[ka]
    size_b = size_b[kb]
    inter = cont.data.astype(np.float64)
    union = size_a[cont.row] + size_b[cont.col] - inter
    iou = sp.csr_matrix((inter / union, (cont.row, cont.col)), shape=(ka.sum(), kb.sum()))
    return iou, pred_ids[ka], true_ids[kb]


def average_precision(pred_labels, true_labels, *, threshold: float = 0.5) -> dict:
    """Average precision of a label image at an IoU threshold.

    A predicted and a true label form a true positive when their IoU exceeds
    ``threshold``; for ``threshold >= 0.5`` such a match is necessarily unique. For lower
    thresholds the pairs are matched one-to-one by maximum total IoU.

    Parameters
    ----------
    pred_labels, true_labels : numpy.ndarray of int
        Label images of the same shape (0 = background).
    threshold : float
        IoU threshold in (0, 1).

    Returns
    -------
    dict
        ``ap`` = TP / (TP + FP + FN), plus ``tp``, ``fp``, ``fn``, ``precision``, ``recall``,
        ``f1`` and ``mean_matched_iou``.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    iou, pred_ids, true_ids = label_iou(pred_labels, true_labels)
    n_pred, n_true = pred_ids.size, true_ids.size
    coo = iou.tocoo()
    good = coo.data > threshold
    r, c, v = coo.row[good], coo.col[good], coo.data[good]
    if threshold < 0.5 and v.size:
        rows_u, ri_inv = np.unique(r, return_inverse=True)
        cols_u, ci_inv = np.unique(c, return_inverse=True)
        m = np.zeros((rows_u.size, cols_u.size))
        m[ri_inv, ci_inv] = v
        ri, ci = linear_sum_assignment(m, maximize=True)
        ok = m[ri, ci] > threshold
        v = m[ri[ok], ci[ok]]
    tp = int(v.size)
    fp = n_pred - tp
    fn = n_true - tp
    denom = tp + fp + fn
    return {
        "ap": 1.0 if denom == 0 else tp / denom,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": 1.0 if n_pred == 0 else tp / n_pred,
        "recall": 1.0 if n_true == 0 else tp / n_true,
        "f1": 1.0 if (n_pred + n_true) == 0 else 2 * tp / (n_pred + n_true),
        "mean_matched_iou": float(v.mean()) if v.size else float("nan"),
    }


def label_centroids(labels) -> np.ndarray:
    """``(n, ndim)`` voxel centroids of the labels ``1..n`` of a sequentially labelled
    image (row ``i`` = label ``i + 1``; a missing label gives a row of NaN)."""
    from scipy import ndimage as ndi

    lab = np.asarray(labels)
    ids = np.arange(1, int(lab.max()) + 1 if lab.size else 1)
    with np.errstate(invalid="ignore", divide="ignore"):  # a missing label: 0 / 0
        c = ndi.center_of_mass(lab > 0, lab, ids)
    return np.asarray(c, dtype=float).reshape(-1, lab.ndim)


def nearest_neighbour_distance(points, *, voxel_size=None, statistic: str = "median") -> float:
    """Typical nearest-neighbour distance (micrometres) among a set of centres.

    Parameters
    ----------
    points : array-like, shape (n, ndim)
        Centres; voxel coordinates when ``voxel_size`` is given, else micrometres.
    voxel_size : sequence of float, optional
        Physical size of a voxel along each axis (micrometres).
    statistic : {"median", "min", "mean"}
        How the per-point nearest-neighbour distances are summarised.

    Returns
    -------
    float
        The summarised distance in micrometres.
    """
    p = _as_points(points, "points")
    if p.shape[0] < 2:
        raise ValueError(
            f"need at least 2 points for a nearest-neighbour distance, got {p.shape[0]}"
        )
    if voxel_size is not None:
        vs = np.asarray(voxel_size, dtype=np.float64)
        if vs.shape != (p.shape[1],):
            raise ValueError(f"voxel_size must have {p.shape[1]} entries, got {vs.shape}")
        p = p * vs
    d = cKDTree(p).query(p, k=2)[0][:, 1]
    funcs = {"median": np.median, "min": np.min, "mean": np.mean}
    if statistic not in funcs:
        raise ValueError(f"statistic must be one of {sorted(funcs)}, got {statistic!r}")
    return float(funcs[statistic](d))


def match_centres_nn(pred, true, *, voxel_size=None, fraction: float = 0.5) -> CentreMatch:
    """:func:`match_centres` within ``fraction`` x the truth's median nearest-neighbour distance.

    The tolerance scales with the data (a nucleus of 2 um and one of 15 um are judged
    alike): with ``fraction=0.5`` a prediction can match at most one true centre's
    Voronoi neighbourhood core, the criterion used in ``benchmarks/bench_real.py``.

    Parameters
    ----------
    pred, true : array-like, shape (n, ndim)
        Centres (voxel coordinates when ``voxel_size`` is given, else micrometres).
    voxel_size : sequence of float, optional
        Physical size of a voxel along each axis (micrometres).
    fraction : float
        Tolerance as a fraction of the median nearest-neighbour distance of ``true``.

    Returns
    -------
    CentreMatch
        The matching; the tolerance used is ``fraction * nearest_neighbour_distance(true)``.
    """
    if fraction <= 0:
        raise ValueError(f"fraction must be > 0, got {fraction}")
    tol = fraction * nearest_neighbour_distance(true, voxel_size=voxel_size)
    return match_centres(pred, true, max_distance=tol, voxel_size=voxel_size)
