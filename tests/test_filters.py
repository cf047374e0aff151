"""The parallel min/max filters give exactly SciPy's results."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_sinkhorn_em.pipeline._filters import box_filter, minmax_filter1d


@pytest.mark.parametrize("shape", [(7, 13, 300), (50,), (5, 600), (3, 4, 5)])
def test_minmax_filter1d_matches_scipy(shape):
    a = np.random.default_rng(0).random(shape).astype(np.float32)
    for ax in range(a.ndim):
        for size in (1, 2, 3, 4, 7):
            for origin in range(-(size // 2), (size - 1) // 2 + 1):
                for maximum, ref_filter in (
                    (False, ndi.minimum_filter1d),
                    (True, ndi.maximum_filter1d),
                ):
                    ref = ref_filter(a, size, axis=ax, mode="nearest", origin=origin)
                    got = minmax_filter1d(a, size, ax, maximum=maximum, origin=origin)
                    np.testing.assert_array_equal(got, ref)
                    inplace = a.copy()
                    minmax_filter1d(inplace, size, ax, out=inplace, maximum=maximum, origin=origin)
                    np.testing.assert_array_equal(inplace, ref)


def test_box_filter_and_grey_opening_match_scipy():
    from napari_sinkhorn_em.pipeline.preprocess import _grey_opening

    a = np.random.default_rng(1).random((9, 40, 70)).astype(np.float32)
    for size in [(2, 4, 4), (1, 3, 3), (3, 1, 5)]:
        np.testing.assert_array_equal(
            box_filter(a, size, maximum=True), ndi.maximum_filter(a, size=size, mode="nearest")
        )
        np.testing.assert_array_equal(
            box_filter(a, size, maximum=False), ndi.minimum_filter(a, size=size, mode="nearest")
        )
        np.testing.assert_array_equal(
            _grey_opening(a, size, out=np.empty_like(a)),
            ndi.grey_opening(a, size=size, mode="nearest"),
        )


def test_bad_arguments():
    a = np.zeros((4, 5), np.float32)
    with pytest.raises(ValueError, match="size must be >= 1"):
        minmax_filter1d(a, 0, 0, maximum=True)
    with pytest.raises(ValueError, match="origin 2 is out of range for size 3"):
        minmax_filter1d(a, 3, 0, maximum=True, origin=2)
    with pytest.raises(ValueError, match="out must be a C-contiguous array"):
        minmax_filter1d(a, 3, 0, maximum=True, out=np.zeros((5, 4), np.float32).T)
