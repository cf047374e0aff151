"""Foreground boxes: the peak filters and the labelling work only near the foreground."""

import numpy as np
import pytest
from skimage.measure import label as cc_label

from napari_sinkhorn_em.pipeline._regions import foreground_boxes
from napari_sinkhorn_em.pipeline.labels import labels_from_components
from napari_sinkhorn_em.pipeline.peaks import detect_peaks


def _balls(shape, centres, radius):
    grid = np.indices(shape).reshape(len(shape), -1).T
    img = np.zeros(shape, dtype=np.float32)
    for c in centres:
        d = np.sqrt(((grid - c) ** 2).sum(axis=1)).reshape(shape)
        img += np.exp(-0.5 * (d / radius) ** 2).astype(np.float32)
    return img


def test_boxes_split_at_wide_gaps_only_and_partition_the_voxels():
    mask = np.zeros((6, 20, 90), dtype=bool)
    mask[1:4, 2:8, 3:10] = True  # group A
    mask[2:5, 10:15, 5:9] = True  # group B: 2 empty rows from A along axis 1
    mask[1:3, 3:6, 40:50] = True  # group C: 30 empty columns from A and B along axis 2
    mask[1:3, 3:6, 53:60] = True  # 3 empty columns from C: below min_gap 4, not split
    idx = np.argwhere(mask)
    boxes, groups = foreground_boxes(idx, mask.shape, margin=1, min_gap=4, return_groups=True)
    assert len(boxes) == 2
    assert sorted(np.concatenate(groups).tolist()) == list(range(len(idx)))
    for box, sel in zip(boxes, groups, strict=True):
        lo = np.array([b.start for b in box])
        hi = np.array([b.stop for b in box])
        assert np.all(idx[sel] >= lo + np.array([1, 1, 1]) * (lo > 0))
        assert np.all(idx[sel] < hi)
    assert sum(len(g) for g in groups) == mask.sum()
    # min_gap 2 also splits A from B (2 empty rows) and C from its neighbour (3 columns)
    assert len(foreground_boxes(idx, mask.shape, min_gap=2)) == 4
    # the margin is clipped to the image
    for box in boxes:
        assert all(b.start >= 0 and b.stop <= n for b, n in zip(box, mask.shape, strict=True))


def test_peaks_in_boxes_equal_peaks_of_each_part():
    """Two separated groups of nuclei give the same peaks together as each alone."""
    vs = (0.8, 0.35, 0.35)
    left = _balls((14, 40, 60), [(7, 12, 15), (6, 25, 30), (8, 18, 45)], 3.0)
    right = _balls((14, 40, 60), [(7, 20, 20), (7, 28, 38)], 3.0) * 0.7
    both = np.concatenate([left, np.zeros((14, 40, 80), np.float32), right], axis=2)
    fg = both > 0.2
    kw = {"nucleus_diameter": 2.7, "threshold": 0.05}
    together = detect_peaks(both, vs, foreground=fg, **kw)
    a = detect_peaks(left, vs, foreground=left > 0.2, **kw)
    b = detect_peaks(right, vs, foreground=right > 0.2, **kw)
    expect = np.concatenate([a.coords, b.coords + np.array([0, 0, 140])])
    assert together.coords.shape == expect.shape == (5, 3)
    got = {tuple(c) for c in together.coords.astype(int).tolist()}
    assert got == {tuple(c) for c in expect.astype(int).tolist()}
    np.testing.assert_allclose(
        np.sort(together.response), np.sort(np.concatenate([a.response, b.response])), rtol=1e-6
    )


def _labels_reference(indices, comp, shape, K, min_vox):
    """Slow reference: label the whole image at once, keep each component's largest piece."""
    lab = np.zeros(shape, dtype=np.int32)
    lab[tuple(indices.T)] = comp + 1
    pieces = cc_label(lab, background=0, connectivity=1)
    out = np.zeros(shape, dtype=np.int64)
    kept = []
    for k in range(K):
        sizes = np.bincount(pieces[lab == k + 1], minlength=1)
        sizes[0] = 0
        if sizes.max() >= min_vox:
            kept.append((k, int(np.argmax(sizes))))
    for value, (_, piece) in enumerate(kept, start=1):
        out[pieces == piece] = value
    return out, np.array([k for k, _ in kept])


@pytest.mark.parametrize("seed", [0, 1])
def test_labels_in_boxes_match_whole_image_labelling(seed):
    rng = np.random.default_rng(seed)
    shape = (8, 30, 120)
    # 12 random blocks (some split in two pieces, some tiny), well apart or touching
    K = 12
    lab = np.zeros(shape, dtype=np.int64)
    for k in range(K):
        z, y, x = rng.integers(0, 6), rng.integers(0, 26), rng.integers(0, 112)
        dz, dy, dx = rng.integers(1, 3), rng.integers(1, 5), rng.integers(1, 9)
        lab[z : z + dz, y : y + dy, x : x + dx] = k + 1
        if k % 3 == 0:  # a second, detached piece of the same component
            lab[z : z + 1, (y + 12) % 28 : (y + 12) % 28 + 2, x : x + 2] = k + 1
    indices = np.argwhere(lab > 0)
    comp = lab[tuple(indices.T)] - 1
    pos = indices * np.array([0.8, 0.35, 0.35])
    means = np.zeros((K, 3))
    covs = np.tile(np.eye(3) * 1e6, (K, 1, 1))  # every voxel within the radius
    vs = (0.8, 0.35, 0.35)
    lab = labels_from_components(
        indices, pos, comp, means, covs, shape, vs, radius=3.0, min_volume=0.2
    )
    out, ids = lab.labels, lab.component_ids
    ref, ref_ids = _labels_reference(indices, comp, shape, K, int(np.ceil(0.2 / np.prod(vs))))
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(out, ref)
