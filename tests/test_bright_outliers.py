"""A few objects far brighter than every nucleus must not set the relative floor."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sinkhorn_em import segment_nuclei
from napari_sinkhorn_em.evaluation.metrics import match_centres_nn
from napari_sinkhorn_em.pipeline.peaks import strong_response
from napari_sinkhorn_em.synthetic import make_whole_brain, with_debris


def test_strong_response_leaves_out_only_far_outliers():
    rng = np.random.default_rng(0)
    # nuclei whose brightness spreads 10x (attenuation, expression): nothing left out
    nuclei = np.exp(rng.uniform(np.log(1.0), np.log(10.0), 200))
    assert strong_response(nuclei) == pytest.approx(np.percentile(nuclei, 95))
    # plus 20 spots 200x the dimmest: the 95th percentile is the nuclei' again
    spots = np.full(20, 200.0)
    got = strong_response(np.concatenate([nuclei, spots]))
    assert got == pytest.approx(np.percentile(nuclei, 95), rel=0.05)
    assert np.percentile(np.concatenate([nuclei, spots]), 95) == 200.0
    # too few values to tell: the plain percentile
    few = np.array([1.0, 2.0, 100.0])
    assert strong_response(few) == pytest.approx(np.percentile(few, 95))


def test_bright_debris_does_not_cost_the_nuclei():
    # 20 nucleus-sized spots 20x brighter than the neurons: they made up the blobs' 95th
    # percentile and the floor, a tenth of it, dropped most neurons (recall 0.44)
    w = with_debris(make_whole_brain(seed=1))
    r = segment_nuclei(w.image, voxel_size=w.voxel_size, channel_axis=0, random_state=0)
    m = match_centres_nn(r.centres, w.centres, voxel_size=w.voxel_size, fraction=0.5)
    assert m.recall >= 0.8, m.summary()
    # the spots themselves are counted: about 20 extra objects, not more
    assert r.info["n_nuclei"] <= len(w.centres) * m.recall + 20 + 10
