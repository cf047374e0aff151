"""Tests for napari_sinkhorn_em.evaluation.metrics."""

import itertools

import numpy as np
import pytest

from napari_sinkhorn_em.evaluation.metrics import average_precision, label_iou, match_centres


def test_match_centres_counts_and_errors():
    true = np.array([[0.0, 0.0], [10.0, 0.0], [20.0, 0.0]])
    pred = np.array([[0.5, 0.0], [10.0, 1.0], [40.0, 0.0], [20.0, 0.0]])
    m = match_centres(pred, true, max_distance=1.5)
    assert (m.tp, m.fp, m.fn) == (3, 1, 0)
    assert m.precision == pytest.approx(0.75)
    assert m.recall == pytest.approx(1.0)
    assert m.f1 == pytest.approx(6 / 7)
    assert m.mean_error == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    pairs = sorted(zip(m.pred_index.tolist(), m.true_index.tolist(), strict=True))
    assert pairs == [(0, 0), (1, 1), (3, 2)]


def test_match_centres_is_one_to_one_and_optimal():
    # two predictions near one truth: only one may match; greedy-nearest would pick the
    # wrong pair for truth 0 and leave truth 1 unmatched.
    true = np.array([[0.0], [1.4]])
    pred = np.array([[0.7], [2.0]])
    m = match_centres(pred, true, max_distance=1.0)
    assert m.tp == 2
    pairs = sorted(zip(m.pred_index.tolist(), m.true_index.tolist(), strict=True))
    assert pairs == [(0, 0), (1, 1)]
    dup = match_centres(np.array([[0.0], [0.1]]), np.array([[0.05]]), max_distance=1.0)
    assert (dup.tp, dup.fp, dup.fn) == (1, 1, 0)


def test_match_centres_matches_brute_force():
    rng = np.random.default_rng(0)
    true = rng.uniform(0, 6, size=(6, 2))
    pred = true[:5] + rng.normal(0, 0.6, size=(5, 2))
    m = match_centres(pred, true, max_distance=1.0)
    best = 0
    for perm in itertools.permutations(range(6), 5):
        d = np.linalg.norm(pred - true[list(perm)], axis=1)
        best = max(best, int((d <= 1.0).sum()))
    assert m.tp == best


def test_match_centres_voxel_size_scales_distances():
    true = np.array([[0.0, 0.0, 0.0]])
    pred = np.array([[2.0, 0.0, 0.0]])  # 2 voxels in z
    assert match_centres(pred, true, max_distance=1.5).tp == 0
    m = match_centres(pred, true, max_distance=1.5, voxel_size=(0.5, 0.2, 0.2))
    assert m.tp == 1
    assert m.mean_error == pytest.approx(1.0)


def test_match_centres_empty_and_bad_input():
    m = match_centres(np.zeros((0, 3)), np.ones((4, 3)))
    assert (m.tp, m.fn, m.f1, m.recall) == (0, 4, 0.0, 0.0)
    assert np.isnan(m.mean_error)
    with pytest.raises(ValueError, match="different dimensionality"):
        match_centres(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="NaN"):
        match_centres(np.array([[np.nan, 0.0]]), np.zeros((1, 2)))
    with pytest.raises(ValueError, match="voxel_size must have 2 entries"):
        match_centres(np.zeros((1, 2)), np.zeros((1, 2)), voxel_size=(1, 1, 1))


def _slow_iou(a, b):
    pa = [v for v in np.unique(a) if v]
    pb = [v for v in np.unique(b) if v]
    out = np.zeros((len(pa), len(pb)))
    for i, u in enumerate(pa):
        for j, v in enumerate(pb):
            inter = np.sum((a == u) & (b == v))
            union = np.sum((a == u) | (b == v))
            out[i, j] = inter / union
    return out


def test_label_iou_matches_slow_reference():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 5, size=(20, 17))
    b = rng.integers(0, 4, size=(20, 17)) * 3
    iou, pa, pb = label_iou(a, b)
    np.testing.assert_allclose(iou.toarray(), _slow_iou(a, b), atol=1e-12)
    assert pa.tolist() == [1, 2, 3, 4]
    assert pb.tolist() == [3, 6, 9]


def test_average_precision_known_case():
    true = np.zeros((10, 10), dtype=np.int32)
    true[0:4, 0:4] = 1
    true[5:9, 5:9] = 2
    true[0:2, 7:9] = 3
    pred = np.zeros_like(true)
    pred[0:4, 0:3] = 7  # IoU 12/16 = 0.75 with 1
    pred[5:9, 5:7] = 8  # IoU 8/16 = 0.5 with 2 -> not > 0.5
    pred[7:9, 0:2] = 9  # nothing
    r = average_precision(pred, true, threshold=0.5)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 2, 2)
    assert r["ap"] == pytest.approx(1 / 5)
    assert r["mean_matched_iou"] == pytest.approx(0.75)
    assert average_precision(true, true)["ap"] == 1.0
    low = average_precision(pred, true, threshold=0.3)
    assert (low["tp"], low["fp"], low["fn"]) == (2, 1, 1)


def test_label_iou_bad_input():
    with pytest.raises(ValueError, match="differ in shape"):
        label_iou(np.zeros((2, 2), int), np.zeros((2, 3), int))
    with pytest.raises(ValueError, match="integer array"):
        label_iou(np.zeros((2, 2)), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="threshold"):
        average_precision(np.zeros((2, 2), int), np.zeros((2, 2), int), threshold=1.0)


def test_nearest_neighbour_distance_and_scaled_matching():
    from napari_sinkhorn_em.evaluation.metrics import match_centres_nn, nearest_neighbour_distance

    # a 1-D row of truths 4 um apart (voxel 2 um): tolerance = 0.5 * 4 = 2 um
    true = np.array([[0.0, 0.0], [0.0, 2.0], [0.0, 4.0]])
    assert nearest_neighbour_distance(true, voxel_size=(1.0, 2.0)) == pytest.approx(4.0)
    assert nearest_neighbour_distance(true) == pytest.approx(2.0)
    pred = np.array([[0.0, 0.9], [0.0, 2.0], [0.0, 5.1]])  # 1.8 um, 0 um, 2.2 um off
    m = match_centres_nn(pred, true, voxel_size=(1.0, 2.0))
    assert (m.tp, m.fp, m.fn) == (2, 1, 1)
    # a wider fraction admits the 2.2 um pair
    assert match_centres_nn(pred, true, voxel_size=(1.0, 2.0), fraction=0.6).tp == 3
    with pytest.raises(ValueError, match="at least 2 points"):
        nearest_neighbour_distance(true[:1])
    with pytest.raises(ValueError, match="fraction"):
        match_centres_nn(pred, true, fraction=0.0)


def test_label_centroids_rows_follow_the_labels():
    from napari_sinkhorn_em.evaluation.metrics import label_centroids

    lab = np.zeros((6, 8), dtype=np.int32)
    lab[1:3, 1:3] = 2  # centroid (1.5, 1.5)
    lab[3:6, 4:8] = 1  # centroid (4, 5.5)
    np.testing.assert_allclose(label_centroids(lab), [[4.0, 5.5], [1.5, 1.5]])
    lab[lab == 1] = 3  # label 1 missing: a row of NaN
    got = label_centroids(lab)
    assert got.shape == (3, 2) and np.isnan(got[0]).all()
    np.testing.assert_allclose(got[1:], [[1.5, 1.5], [4.0, 5.5]])
