"""The LoG + watershed baseline of the benchmarks (evaluation.baseline)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sinkhorn_em.evaluation.baseline import log_watershed
from napari_sinkhorn_em.evaluation.metrics import match_centres_nn
from napari_sinkhorn_em.synthetic import make_embryo, make_whole_brain


@pytest.fixture(scope="module")
def brain():
    return make_whole_brain(seed=1)


def test_noise_threshold_and_peak_centres_make_the_baseline_fair_on_a_dim_stack(brain):
    kw = {"voxel_size": brain.voxel_size, "channel_axis": 0, "nucleus_diameter": 2.0}
    _, cen = log_watershed(brain.image, **kw)
    # the relative threshold lets the noise maxima of a dim stack through
    assert len(cen) > 1000
    lab_t, cen_t = log_watershed(brain.image, threshold_sd=6.0, centres="peaks", **kw)
    assert 100 <= len(cen_t) <= 170
    assert int(lab_t.max()) == len(cen_t)
    m = match_centres_nn(cen_t, brain.centres, voxel_size=brain.voxel_size, fraction=0.5)
    assert m.f1 >= 0.85, m.summary()
    # region centroids spread over the noise foreground: worse than the peaks
    _, cen_r = log_watershed(brain.image, threshold_sd=6.0, **kw)
    mr = match_centres_nn(cen_r, brain.centres, voxel_size=brain.voxel_size, fraction=0.5)
    assert mr.f1 < m.f1 - 0.1


def test_noise_threshold_keeps_clear_nuclei():
    e = make_embryo(n_nuclei=30, seed=0)
    kw = {"voxel_size": e.voxel_size, "channel_axis": 0, "nucleus_diameter": 6.8}
    _, a = log_watershed(e.image, **kw)
    _, b = log_watershed(e.image, threshold_sd=5.0, **kw)
    # bright, clean nuclei: the relative threshold is the higher one, nothing changes
    np.testing.assert_allclose(a, b)


def test_bad_centres_choice_is_named(brain):
    with pytest.raises(ValueError, match="centres must be 'regions' or 'peaks'"):
        log_watershed(brain.image, voxel_size=brain.voxel_size, channel_axis=0, centres="mean")
