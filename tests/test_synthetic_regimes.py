"""Tests for the synthetic regimes of issue 12 (whole brain, embryo, 2-D field)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from napari_sinkhorn_em.synthetic import (
    SyntheticWorm,
    embryo_nucleus_diameter,
    make_embryo,
    make_nuclei_field_2d,
    make_whole_brain,
)


def _check_truth(w: SyntheticWorm, n: int, shape: tuple[int, ...]):
    assert isinstance(w, SyntheticWorm)
    assert w.image.shape == (1, *shape) and w.image.dtype == np.uint16
    assert w.channel_axis == 0 and w.channel_names == ["nuclei"]
    assert w.n_nuclei == n and w.labels.shape == shape
    assert int(w.labels.max()) == n
    # every centre lies inside its own label
    idx = tuple(np.rint(w.centres).astype(int).T)
    np.testing.assert_array_equal(w.labels[idx], np.arange(1, n + 1))
    np.testing.assert_allclose(w.centres_um, w.centres * np.asarray(w.voxel_size))
    # no two nuclei closer than the sum of their radii (no overlap)
    d, j = cKDTree(w.centres_um).query(w.centres_um, k=2)
    r = w.diameters_um / 2
    assert np.all(d[:, 1] >= r + r[j[:, 1]] - 1e-9)


def test_whole_brain_regime():
    w = make_whole_brain(seed=1)
    _check_truth(w, 135, (15, 169, 411))
    assert w.voxel_size == (2.0, 0.27, 0.27)
    assert abs(np.mean(w.diameters_um) - 2.0) < 0.1
    # dim: the brightest voxel is a few tens of photons above the offset
    assert np.percentile(w.image, 99.99) < 100 + 4 * 60


def test_embryo_regime_sizes_follow_stage_and_interior_is_dim():
    assert embryo_nucleus_diameter(29) == pytest.approx(7.0)
    assert embryo_nucleus_diameter(374) == pytest.approx(2.5)
    early = make_embryo(n_nuclei=29, seed=2)
    late = make_embryo(n_nuclei=300, seed=2)
    shape = early.labels.shape
    _check_truth(early, 29, shape)
    _check_truth(late, 300, shape)
    assert 6.0 < np.mean(early.diameters_um) < 8.0
    assert 2.4 < np.mean(late.diameters_um) < 3.3
    assert np.mean(early.diameters_um) > 2 * np.mean(late.diameters_um)
    # depth attenuation: mean signal (above offset + background) in nuclei near the centre
    # is several times lower than in nuclei near the surface (gain 5**-(1 - rho): ~0.3 for
    # rho < 0.35 against ~0.8 for rho > 0.8, blur and cytoplasm lower the measured ratio)
    img = late.image[0].astype(float) - 100 - late.params["background_photons"]
    semi = np.asarray(late.params["embryo_semi_axes_um"])
    mid = np.asarray(shape) * np.asarray(late.voxel_size) / 2
    q = (late.centres_um + 0.5 * np.asarray(late.voxel_size) - mid) / semi
    rho = np.sqrt((q**2).sum(1))
    means = np.array([img[late.labels == i + 1].mean() for i in range(late.n_nuclei)])
    inner, outer = means[rho < 0.35].mean(), means[rho > 0.8].mean()
    assert outer / inner > 2.2


def test_field_2d_regime():
    w = make_nuclei_field_2d(seed=3)
    _check_truth(w, 125, (440, 440))
    assert w.voxel_size == (1.0, 1.0)
    d = w.diameters_um
    assert d.min() >= 16.0 and d.max() <= 32.0 and 22 < d.mean() < 26
    sizes = np.bincount(w.labels.ravel())[1:]
    assert sizes.max() / sizes.min() > 2.5  # areas vary ~4x for a 2x diameter range


@pytest.mark.parametrize(
    "make",
    [make_whole_brain, lambda seed: make_embryo(n_nuclei=60, seed=seed), make_nuclei_field_2d],
)
def test_regimes_deterministic_by_seed(make):
    a, b, c = make(seed=5), make(seed=5), make(seed=6)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.centres, b.centres)
    assert not np.array_equal(a.centres, c.centres)


def test_regime_errors_are_specific():
    with pytest.raises(ValueError, match="attenuation"):
        make_embryo(attenuation=0.5)
    with pytest.raises(ValueError, match="diameter_range"):
        make_nuclei_field_2d(diameter_range=(30.0, 10.0))
    with pytest.raises(ValueError, match="could only place"):
        make_nuclei_field_2d(n_nuclei=500, shape=(100, 100))


def test_artifacts_leave_the_input_and_record_themselves():
    from napari_sinkhorn_em.synthetic import (
        with_clipped_black_level,
        with_debris,
        with_hot_pixels,
        with_registration_shift,
    )

    w = make_whole_brain(seed=1)
    before = w.image.copy()
    hot = with_hot_pixels(w, n=50, amplitude=500.0, seed=2)
    at = np.array(hot.params["artifacts"][-1]["at"])
    assert at.shape == (50, 3)
    raised = hot.image[(0, *at.T)] - before[(0, *at.T)].astype(np.float32)
    assert np.all(raised >= 500.0)  # (a voxel drawn twice is raised twice)
    assert np.array_equal(w.image, before)  # the input is not modified
    again = with_hot_pixels(w, n=50, amplitude=500.0, seed=2)
    assert np.array_equal(again.image, hot.image)  # deterministic given the seed
    deb = with_debris(hot, n=5, brightness=10.0)
    assert [a["kind"] for a in deb.params["artifacts"]] == ["hot_pixels", "debris"]
    bg, top = np.median(before), np.percentile(before, 99.9)
    assert deb.image.max() - bg > 5.0 * (top - bg)
    reg = with_registration_shift(w)
    assert reg.labels is None and reg.image.shape == w.image.shape
    # the shift averages neighbouring voxels: the noise is smoother, the mean unchanged
    d_before = np.diff(before[0].astype(np.float32), axis=-1).std()
    assert np.diff(reg.image[0], axis=-1).std() < 0.8 * d_before
    assert reg.image.mean() == pytest.approx(before.mean(), rel=0.01)
    black = with_clipped_black_level(w, 50.0)
    assert black.params["artifacts"][-1] == {"kind": "clipped_black_level", "percentile": 50.0}
    assert black.image.min() == 0.0
    assert np.mean(black.image == 0.0) == pytest.approx(0.5, abs=0.02)
    kept = before > np.median(before)
    np.testing.assert_allclose(black.image[kept], before[kept] - np.median(before))
    assert np.array_equal(w.image, before)
    with pytest.raises(ValueError, match="percentile"):
        with_clipped_black_level(w, 100.0)


def test_texture_varies_the_nuclei_and_leaves_the_truth():
    plain = make_embryo(n_nuclei=30, seed=4)
    tex = make_embryo(n_nuclei=30, seed=4, texture=0.5)
    np.testing.assert_array_equal(plain.labels, tex.labels)
    np.testing.assert_array_equal(plain.centres, tex.centres)
    assert tex.params["texture"] == 0.5
    assert tex.params["texture_scale_um"] == pytest.approx(0.25 * np.mean(tex.diameters_um))
    assert plain.params["texture"] == 0.0

    def inner_cv(w):  # spread of the voxels in the inner half of each nucleus
        img = w.image[0].astype(float) - 100
        cvs = []
        for i in range(1, w.n_nuclei + 1):
            v = img[w.labels == i]
            v = v[v >= np.median(v)]
            cvs.append(v.std() / v.mean())
        return np.median(cvs)

    assert inner_cv(tex) > 1.3 * inner_cv(plain)  # 1.48 measured; 1.0 without texture
    with pytest.raises(ValueError, match="texture"):
        make_embryo(n_nuclei=30, texture=-0.1)


@pytest.mark.parametrize("ndim", [2, 3])
def test_mitotic_nuclei_are_condensed_plates_holding_the_nucleus_light(ndim):
    def make(frac):
        if ndim == 3:
            return make_embryo(n_nuclei=30, seed=4, mitotic_fraction=frac)
        return make_nuclei_field_2d(n_nuclei=60, seed=4, mitotic_fraction=frac)

    plain, mit = make(0.0), make(0.2)
    ids = np.array(mit.params["mitotic_labels"])
    assert ids.size == round(0.2 * mit.n_nuclei) and plain.params["mitotic_labels"] == []
    assert mit.params["mitotic_fraction"] == 0.2
    # the centres stay; a plate's mask is a fraction of its interphase nucleus' ...
    np.testing.assert_array_equal(plain.centres, mit.centres)
    vol = lambda w, i: np.count_nonzero(w.labels == i)  # noqa: E731
    frac = np.median([vol(mit, i) / vol(plain, i) for i in ids])
    expected = 0.7 * 0.7 * 0.2 if ndim == 3 else 0.7 * 0.2
    assert 0.5 * expected < frac < 2.0 * expected
    # ... and holds about its light (the noise-free sum is conserved; blur spills a little
    # into the neighbourhood, so the sum is taken over the dilated interphase mask)
    from scipy import ndimage as ndi

    def light(w, i):
        region = ndi.binary_dilation(plain.labels == i, iterations=2)
        return float((w.image[0].astype(float) - 100.0)[region].sum())

    ratio = np.median([light(mit, i) / light(plain, i) for i in ids])
    assert 0.85 < ratio < 1.15  # 0.93-1.05 measured; 0.45 if a plate held 0.3 of it
    with pytest.raises(ValueError, match="mitotic_fraction"):
        make_embryo(n_nuclei=30, mitotic_fraction=1.5)
