"""The noise model of the blob and peak tests: level and correlation (pipeline/noise.py)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_sinkhorn_em import segment_nuclei
from napari_sinkhorn_em.evaluation.metrics import match_centres_nn
from napari_sinkhorn_em.pipeline.noise import noise_blur, voxel_noise, voxel_sd
from napari_sinkhorn_em.pipeline.peaks import _log_noise
from napari_sinkhorn_em.pipeline.scale import _level, _level_norm, _noise_level
from napari_sinkhorn_em.synthetic import make_embryo, make_whole_brain, with_registration_shift

SHAPE = (24, 160, 200)


def _white(seed=0, sd=10.0):
    return np.random.default_rng(seed).normal(100.0, sd, SHAPE).astype(np.float32)


def test_white_noise_has_no_blur():
    assert np.array_equal(noise_blur(_white()), np.zeros(3))
    # integer photon counts: quantised medians must not fake a correlation
    counts = np.random.default_rng(1).poisson(12.0, SHAPE).astype(np.uint16)
    assert np.array_equal(noise_blur(counts), np.zeros(3))


@pytest.mark.parametrize("b", [0.7, 1.0, 1.5])
def test_blur_of_gaussian_filtered_noise_is_recovered(b):
    x = ndi.gaussian_filter(_white(), (0.0, b, b))
    got = noise_blur(x)
    assert got[0] == 0.0
    assert got[1:] == pytest.approx([b, b], abs=0.05)


def test_nucleus_images_with_white_noise_have_no_blur():
    # smooth signal raises the lag ratio a little (up to 1.14 measured): still white
    for img in (make_embryo(n_nuclei=30, seed=0).image[0], make_whole_brain(seed=0).image[0]):
        assert np.array_equal(noise_blur(img), np.zeros(3))


def test_mostly_constant_background_is_left_white():
    # DoG-filtered recordings: zeros almost everywhere, the differences are signal
    x = np.zeros(SHAPE, dtype=np.float32)
    x[:, 40:60, 40:60] = ndi.gaussian_filter(_white()[:, 40:60, 40:60], 1.0)
    assert np.array_equal(noise_blur(x), np.zeros(3))


@pytest.mark.parametrize("b", [0.0, 0.7, 1.2])
def test_voxel_sd_is_the_noise_standard_deviation(b):
    x = ndi.gaussian_filter(_white(), (0.0, b, b)) if b else _white()
    assert voxel_sd(x) == pytest.approx(float(x.std()), rel=0.03)
    if b:
        # the differences alone underestimate correlated noise
        assert voxel_noise(x) < 0.8 * float(x.std())


@pytest.mark.parametrize("b", [0.0, 0.7, 1.2])
@pytest.mark.parametrize("sigma_um", [0.6, 1.0])
def test_log_noise_of_correlated_noise_matches_measurement(b, sigma_um):
    # the small-scale pass' significance: predicted against measured LoG noise
    vs = np.array([1.0, 0.3, 0.3])
    x = ndi.gaussian_filter(_white(), (0.0, b, b)) if b else _white()
    r = -ndi.gaussian_laplace(x - 100.0, sigma_um / vs, mode="nearest") * sigma_um**2
    inner = tuple(slice(8, -8) for _ in SHAPE)
    assert _log_noise(x, vs, sigma_um) == pytest.approx(float(r[inner].std()), rel=0.05)


@pytest.mark.parametrize("b", [0.0, 0.7, 1.2])
def test_scale_space_noise_prediction_matches_measurement(b):
    # scale_space_blobs: pixel noise from its finest scale, each scale's noise from the
    # (blurred) filter norm; block-averaged grids included (sigma 1.2 um: 2x2 blocks)
    vs = np.array([1.0, 0.3, 0.3])
    x = ndi.gaussian_filter(_white(), (0.0, b, b)) if b else _white()
    blur = noise_blur(x)
    f0, r0, _, _ = _level(x, vs, 0.2)
    pixel = _noise_level(r0) / _level_norm(0.2, vs, f0, blur)
    for sigma in (0.4, 0.8, 1.2):
        f, r, _, _ = _level(x, vs, sigma)
        inner = tuple(slice(4, -4) for _ in r.shape)
        predicted = pixel * _level_norm(sigma, vs, f, blur)
        assert predicted == pytest.approx(float(r[inner].std()), rel=0.06), (sigma, f)


@pytest.mark.parametrize("shift", [0.25, 0.5])
def test_registered_whole_brain_stack_is_not_flooded_with_noise_blobs(shift):
    # a whole-brain stack registered by a sub-pixel shift (linear interpolation: the
    # noise of neighbouring pixels averaged, the first row and column left unaveraged):
    # with the white-noise model 289 objects for 135 neurons (precision 0.45); with the
    # correlation model 156 (0.83), the false ones on the first row and column; with
    # the border planes tested against their own noise 136 (0.5 px) and 134 (0.25 px)
    w = with_registration_shift(make_whole_brain(seed=1), shift)
    r = segment_nuclei(w.image, voxel_size=w.voxel_size, channel_axis=0, random_state=0)
    m = match_centres_nn(r.centres, w.centres, voxel_size=w.voxel_size, fraction=0.5)
    assert m.precision >= 0.93, m.summary()
    assert m.recall >= 0.93, m.summary()
    on_border = (np.round(r.centres[:, 1:]) == 0).any(axis=1)
    assert int(on_border.sum()) == 0


def test_border_noise_ratio():
    from napari_sinkhorn_em.pipeline.scale import border_noise_ratio

    rng = np.random.default_rng(0)
    r = rng.normal(0.0, 1.0, (10, 40, 50))
    r[:, 0, :] *= 3.0  # the first row three times as noisy
    r[:, :, 0] *= 2.0  # the first column twice
    pts = np.array([[5, 0, 20], [5, 20, 20], [0, 20, 20], [5, 20, 49], [5, 0, 0], [5, 20, 0]])
    got = border_noise_ratio(r, pts)
    assert got[0] == pytest.approx(3.0, rel=0.1)
    assert got[1] == 1.0  # inside
    assert got[2] == pytest.approx(1.0, abs=0.1)  # a border plane as noisy as the rest
    assert got[3] == pytest.approx(1.0, abs=0.15)
    assert got[5] == pytest.approx(2.0, rel=0.1)
    # a corner: the edge extension repeats the noise along both planes
    assert got[4] == pytest.approx(6.0, rel=0.1)
    # axes shorter than 8 are not borders; no points, no ratios
    assert border_noise_ratio(r[:5], np.array([[0, 20, 20]])).tolist() == [1.0]
    assert border_noise_ratio(r, np.zeros((0, 3), dtype=int)).shape == (0,)


def test_unclipped_voxels_of_a_clipped_black_level():
    from napari_sinkhorn_em.pipeline.scale import unclipped

    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 1.0, (12, 60, 70)).astype(np.float32)
    x[:, 10:40, 10:50] += 4.0  # tissue, well above the black level
    assert unclipped(x) is None  # nothing at the minimum
    assert unclipped(np.maximum(x, np.percentile(x, 10))) is None  # 10 %: as before
    clipped = np.maximum(x, np.percentile(x, 50))
    live = unclipped(clipped)
    assert live is not None
    floor = clipped == clipped.min()
    assert not live[floor].any()
    assert not live[1:][floor[:-1]].any()  # nor next to the floor
    assert live[:, 12:38, 12:48].mean() > 0.99  # the tissue
    assert unclipped(np.maximum(x, np.percentile(x, 95))) is None  # mostly zeros


def test_black_level_clipped_at_the_median_adds_no_noise_nuclei():
    # a whole-brain stack whose background was cut at its median and clipped at 0 (52 %
    # zeros): the clipped noise's weak response set the noise level, 182 objects for 135
    # neurons (53 false); measured off the floor, 131 (2)
    w = make_whole_brain(seed=1)
    img = w.image[0].astype(np.float32)
    img = np.clip(img - np.median(img), 0.0, None)
    r = segment_nuclei(img, voxel_size=w.voxel_size, random_state=0)
    m = match_centres_nn(r.centres, w.centres, voxel_size=w.voxel_size, fraction=0.5)
    assert m.precision >= 0.95, m.summary()
    assert m.recall >= 0.93, m.summary()


def test_fill_no_data_fills_a_zero_border_and_nothing_else():
    from napari_sinkhorn_em.pipeline.preprocess import fill_no_data

    rng = np.random.default_rng(0)
    x = rng.normal(100.0, 5.0, (10, 60, 80)).astype(np.float32)
    x[:, 20:30, 30:40] += 80.0  # a nucleus-like block
    border = x.copy()
    border[:, :12, :] = 0.0  # a registration's zero fill: 12 rows
    border[:, :, -9:] = 0.0  # and 9 columns
    data = border[..., None].copy()
    n = fill_no_data(data)
    zero = border == 0.0
    assert n == int(zero.sum())
    filled = data[..., 0][zero]
    assert filled.mean() == pytest.approx(100.0, abs=1.0)
    assert filled.std() == pytest.approx(5.0, rel=0.1)
    assert np.array_equal(data[..., 0][~zero], border[~zero])  # the data untouched
    again = border[..., None].copy()
    fill_no_data(again)
    assert np.array_equal(again, data)  # seeded
    # a clipped black level: the floor borders on values near it
    clipped = np.maximum(x - np.median(x), 0.0)[..., None]
    before = clipped.copy()
    assert fill_no_data(clipped) == 0 and np.array_equal(clipped, before)
    # DoG-filtered data: zero background around a few positive spots
    dog = np.zeros((10, 60, 80), dtype=np.float32)
    dog[4:6, 20:24, 30:34] = rng.uniform(0.5, 2.0, (2, 4, 4))
    dog = dog[..., None]
    assert fill_no_data(dog.copy()) == 0
    # no floor region at all
    assert fill_no_data(x[..., None].copy()) == 0
    # planes padded with a constant other than the floor (the mean): filled too
    padded = np.concatenate([np.full((3, 60, 80), 100.0, np.float32), x], axis=0)[..., None]
    assert fill_no_data(padded) == 3 * 60 * 80
    assert padded[:3].std() == pytest.approx(5.0, rel=0.1)
    # saturated voxels (the top value) are flat but data: left alone
    sat = np.minimum(x, 150.0)[..., None]
    sat[:, :, :2] = 150.0  # a saturated strip along the border
    before = sat.copy()
    assert fill_no_data(sat) == 0 and np.array_equal(sat, before)


def test_zero_filled_border_of_a_registered_stack_is_no_data():
    # a registration's zero fill (20 rows, 25 columns): the robust normalisation took the
    # zeros for the background, the tissue's background became an offset, and the scale
    # estimate fell to 1.34 um for 2 um neurons (F1 0.93); filled, as without the border
    w = make_whole_brain(seed=1)
    img = w.image[0].astype(np.float32)
    img[:, :20, :] = 0.0
    img[:, :, -25:] = 0.0
    r = segment_nuclei(img, voxel_size=w.voxel_size, random_state=0)
    assert r.info["preprocess"]["n_no_data_voxels"] == int((img == 0).sum())
    assert 1.6 <= r.info["nucleus_diameter_um"] <= 2.4
    m = match_centres_nn(r.centres, w.centres, voxel_size=w.voxel_size, fraction=0.5)
    assert m.f1 >= 0.96, m.summary()


def test_nan_border_of_a_registered_stack_is_no_data():
    # registration code that marks the uncovered border NaN: filled like a zero border;
    # NaN anywhere else, NaN in some channels only, or infinities stay errors
    w = make_whole_brain(seed=1)
    img = w.image[0].astype(np.float32)
    img[:, :20, :] = np.nan
    img[:, :, -25:] = np.nan
    r = segment_nuclei(img, voxel_size=w.voxel_size, random_state=0)
    assert r.info["preprocess"]["n_no_data_voxels"] == int(np.isnan(img).sum())
    m = match_centres_nn(r.centres, w.centres, voxel_size=w.voxel_size, fraction=0.5)
    assert m.f1 >= 0.96, m.summary()
    small = img[:, :60, -120:].copy()  # the NaN corner, a few neurons
    two = np.stack([small, small + 1.0])
    two[1, 5, 30, 30] = 7.0  # the channels differ
    two[0, 3:6, 25:35, 60:70] = np.nan  # NaN in one channel only
    with pytest.raises(ValueError, match="NaN or infinite"):
        segment_nuclei(two, voxel_size=w.voxel_size, channel_axis=0)
    inf = small.copy()
    inf[np.isnan(inf)] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        segment_nuclei(inf, voxel_size=w.voxel_size)
