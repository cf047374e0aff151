"""merge_label_edits: painted label edits carried over to a refit (pure NumPy, no Qt)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sinkhorn_em.pipeline.edits import merge_label_edits


def _two_nuclei():
    new = np.zeros((1, 6, 8), np.uint16)
    new[0, :3, :4] = 1  # refit numbering differs from the old one
    new[0, 3:, 4:] = 2
    current = np.zeros_like(new)
    current[0, :3, :4] = 5  # old label 5 ~ new 1
    current[0, 3:, 4:] = 9  # old label 9 ~ new 2
    return new, current


def test_keeps_erasures_and_extends_matching_nuclei():
    new, current = _two_nuclei()
    edits = np.zeros(new.shape, bool)
    current[0, 0, 0] = 0  # erased
    edits[0, 0, 0] = True
    current[0, 3, 0:2] = 5  # nucleus 5 extended by painting
    edits[0, 3, 0:2] = True
    current[0, 5, 0] = 40  # a brand-new nucleus painted from scratch
    edits[0, 5, 0] = True
    merged = merge_label_edits(new, current, edits)
    assert merged[0, 0, 0] == 0
    assert (merged[0, 3, 0:2] == 1).all()
    assert merged[0, 5, 0] == 3  # the next free label of the refit
    untouched = ~edits
    np.testing.assert_array_equal(merged[untouched], new[untouched])
    assert merged.dtype == new.dtype


def test_no_edits_returns_a_copy_of_the_refit():
    new, current = _two_nuclei()
    merged = merge_label_edits(new, current, np.zeros(new.shape, bool))
    np.testing.assert_array_equal(merged, new)
    merged[0, 0, 0] = 7
    assert new[0, 0, 0] == 1  # the input is not modified


def test_painted_voxels_follow_their_nucleus_and_fresh_nuclei_get_new_labels():
    new, current = _two_nuclei()
    edits = np.zeros(new.shape, bool)
    # a voxel of new nucleus 1 painted with old label 9: it follows 9's unpainted voxels,
    # which the refit calls 2
    current[0, 2, 3] = 9
    new_before = new.copy()
    current[0, 0, 6] = 70  # two separate nuclei painted from scratch
    current[0, 5, 1] = 71
    edits[0, 0, 6] = edits[0, 5, 1] = edits[0, 2, 3] = True
    merged = merge_label_edits(new, current, edits)
    assert merged[0, 2, 3] == 2
    assert {int(merged[0, 0, 6]), int(merged[0, 5, 1])} == {3, 4}
    np.testing.assert_array_equal(new, new_before)


def test_dtype_widens_when_fresh_labels_overflow():
    new = np.zeros((4, 70), np.uint8)
    new[0, :] = 255  # the refit already uses the largest uint8 label
    current = np.zeros_like(new)
    edits = np.zeros(new.shape, bool)
    current[3, 5] = 1
    edits[3, 5] = True
    merged = merge_label_edits(new, current, edits)
    assert merged.dtype == np.uint32
    assert merged[3, 5] == 256
    assert (merged[0] == 255).all()


def test_shape_mismatch_is_a_clear_error():
    new, current = _two_nuclei()
    with pytest.raises(ValueError, match=r"same shape, got \(1, 6, 8\), \(1, 6, 7\)"):
        merge_label_edits(new, current[..., :7], np.zeros(new.shape, bool))
