"""Tests for napari_sinkhorn_em.pipeline.preprocess."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_sinkhorn_em.pipeline.preprocess import (
    auto_threshold,
    granule_mask,
    normalize_channels,
    physical_voxel_size,
    preprocess,
    subtract_background,
    validate_image,
)

VS = (0.8, 0.35, 0.35)


def _balls(shape, voxel_size, centres_um, radius_um, amplitudes):
    grids = np.meshgrid(
        *[np.arange(n) * v for n, v in zip(shape, voxel_size, strict=True)],
        indexing="ij",
        sparse=True,
    )
    img = np.zeros(shape, np.float32)
    for c, a in zip(centres_um, amplitudes, strict=True):
        d2 = sum((g - ci) ** 2 for g, ci in zip(grids, c, strict=True))
        img[d2 < radius_um**2] += a
    return img


def test_validate_image_moves_channel_axis_last_and_converts():
    img = np.arange(2 * 3 * 4 * 5, dtype=np.uint16).reshape(2, 3, 4, 5)  # ZCYX
    data, vs, ax = validate_image(img, channel_axis=1, voxel_size=(1, 0.5, 0.5))
    assert data.shape == (2, 4, 5, 3)
    assert data.dtype == np.float32
    assert ax == 1
    assert vs == (1.0, 0.5, 0.5)
    np.testing.assert_array_equal(data[1, 2, 3], img[1, :, 2, 3])
    data2, vs2, ax2 = validate_image(img[:, 0], channel_axis=None)
    assert data2.shape == (2, 4, 5, 1) and vs2 == (1.0, 1.0, 1.0) and ax2 is None
    _, _, ax3 = validate_image(img, channel_axis=-3)
    assert ax3 == 1


@pytest.mark.parametrize(
    ("image", "kwargs", "match"),
    [
        (np.zeros((0, 4)), {}, "empty"),
        (np.ones((4, 4)), {}, "constant"),
        (np.array([[0.0, np.nan], [1.0, 2.0]]), {}, "NaN"),
        (np.ones(5), {}, "2 or 3 spatial axes"),
        (np.ones((2, 2, 2, 2)), {}, "2 or 3 spatial axes"),
        (np.ones((2, 2, 2, 2, 2)), {"channel_axis": 0}, "2 or 3 spatial axes"),
        (np.arange(16.0).reshape(4, 4), {"channel_axis": 3}, "out of range"),
        (np.arange(16.0).reshape(4, 4), {"voxel_size": (1.0,)}, "2 entries"),
        (np.arange(16.0).reshape(4, 4), {"voxel_size": (1.0, 0.0)}, "> 0"),
        (np.arange(16.0).reshape(4, 4), {"voxel_size": (1.0, -2)}, "> 0"),
        (np.array([["a", "b"], ["c", "d"]]), {}, "numeric"),
    ],
)
def test_validate_image_errors(image, kwargs, match):
    with pytest.raises(ValueError, match=match):
        validate_image(image, **kwargs)


def test_physical_voxel_size():
    assert physical_voxel_size(None, 2) == (1.0, 1.0)
    with pytest.raises(ValueError, match="3 entries"):
        physical_voxel_size((1, 1), 3)


def test_background_subtraction_removes_uneven_background():
    shape = (20, 60, 160)
    rng = np.random.default_rng(0)
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    background = (50 + 0.5 * xx + 0.3 * yy + 0.2 * zz).astype(np.float32)
    centres = rng.uniform([2, 2, 2], np.array(shape) * VS - 2, size=(25, 3))
    blobs = _balls(shape, VS, centres, 1.5, np.full(25, 100.0))
    img = (background + blobs)[..., None]
    out, levels = subtract_background(img.copy(), VS, scale_um=15.0, percentile=10.0)
    residual_bg = out[..., 0][blobs == 0]
    # the ramp spans 50..150 (spread p95 - p5 about 70); afterwards the background is flat
    # up to a small fraction of that (a low percentile sits a constant below the mean)
    spread = np.percentile(residual_bg, 95) - np.percentile(residual_bg, 5)
    raw = background[blobs == 0]
    assert spread < 0.15 * (np.percentile(raw, 95) - np.percentile(raw, 5))
    # nuclei keep their amplitude (100) up to the background error
    assert abs(np.median(out[..., 0][blobs > 0]) - 100.0) < 15.0
    assert 50 < levels[0] < 150


def test_normalize_channels_maps_percentiles():
    rng = np.random.default_rng(1)
    data = np.stack([rng.uniform(0, 10, 10000), rng.uniform(100, 300, 10000)], -1)
    data = data.reshape(100, 100, 2).astype(np.float32)
    out, lo, hi = normalize_channels(data.copy(), low=1, high=99)
    for c in range(2):
        assert np.percentile(out[..., c], 99) == pytest.approx(1.0, abs=1e-3)
        assert out[..., c].min() == 0.0
    assert lo[1] == pytest.approx(102.0, abs=1.0)
    assert hi[1] == pytest.approx(298.0, abs=1.0)
    with pytest.raises(ValueError, match="low < high"):
        normalize_channels(data, low=50, high=10)


def test_auto_threshold_separates_two_populations():
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(0.1, 0.02, 9000), rng.normal(0.8, 0.05, 1000)])
    for method in ("otsu", "triangle", "noise"):
        t = auto_threshold(x, method)
        assert 0.15 < t < 0.7, method
    with pytest.raises(ValueError, match="unknown threshold method"):
        auto_threshold(x, "magic")


def _granule_scene(n_channels):
    shape = (16, 60, 60)
    rng = np.random.default_rng(3)
    nuclei_c = np.array([[6.0, 5.0, 5.0], [6.0, 5.0, 12.0], [6.0, 12.0, 8.0]])
    granule_c = np.array([[6.4, 16.1, 16.1], [6.4, 3.15, 16.8]])  # on the voxel grid
    data = np.zeros((*shape, n_channels), np.float32)
    colours = rng.uniform(0.1, 1.0, size=(3, n_channels))
    colours[:, 0] = 1.0  # pan-nuclear channel
    for c, col in zip(nuclei_c, colours, strict=True):
        data += _balls(shape, VS, [c], 1.5, [1.0])[..., None] * col
    gran = _balls(shape, VS, granule_c, 0.45, [3.0, 3.0])
    data += gran[..., None]
    sigma = (0.5 / VS[0], 0.2 / VS[1], 0.2 / VS[2], 0)
    data = ndi.gaussian_filter(data, sigma) + rng.normal(0, 0.01, data.shape).astype(np.float32)
    return data, nuclei_c, granule_c


@pytest.mark.parametrize("n_channels", [1, 4])
def test_granules_are_masked_but_nuclei_are_not(n_channels):
    data, nuclei_c, granule_c = _granule_scene(n_channels)
    mask = granule_mask(np.maximum(data, 0), VS, nucleus_diameter=3.0)
    vs = np.asarray(VS)
    for c in granule_c:
        assert mask[tuple(np.round(c / vs).astype(int))], "granule centre not masked"
    for c in nuclei_c:
        i = tuple(np.round(c / vs).astype(int))
        assert not mask[i], "nucleus centre masked"
    # nuclei lose at most a sliver of their voxels
    nuclear = _balls(data.shape[:-1], VS, nuclei_c, 1.5, [1, 1, 1]) > 0
    assert (mask & nuclear).sum() < 0.05 * nuclear.sum()


def test_preprocess_pipeline_zcyx_and_threshold_override():
    data, nuclei_c, _ = _granule_scene(4)
    img = (np.moveaxis(data, -1, 1) * 1000 + 200).clip(0, 65535).astype(np.uint16)  # ZCYX
    pre = preprocess(img, voxel_size=VS, channel_axis=1, nucleus_diameter=3.0)
    assert pre.data.shape == (*data.shape[:-1], 4)
    assert pre.channel_axis == 1
    vs = np.asarray(VS)
    for c in nuclei_c:
        assert pre.foreground[tuple(np.round(c / vs).astype(int))]
    assert pre.granules is not None and pre.granules.any()
    assert not (pre.foreground & pre.granules).any()
    high = preprocess(img, voxel_size=VS, channel_axis=1, foreground_threshold=0.9)
    assert high.threshold == 0.9
    assert high.foreground.sum() < pre.foreground.sum()
    with pytest.raises(ValueError, match="no foreground voxels"):
        preprocess(img, voxel_size=VS, channel_axis=1, foreground_threshold=1e6)
    with pytest.raises(ValueError, match="nucleus_diameter"):
        preprocess(img, voxel_size=VS, channel_axis=1, nucleus_diameter=0)


@pytest.mark.parametrize(
    "dtype",
    [np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int64, np.float16, np.float32,
     np.float64, np.dtype(">u2"), np.dtype(">f4"), bool],
)  # fmt: skip
@pytest.mark.parametrize(
    ("shape", "channel_axis"),
    [((4, 5, 6), None), ((3, 5, 6), 0), ((4, 3, 5, 6), 1), ((4, 5, 6, 2), 3)],
)
def test_validate_image_channel_last_copy_any_dtype(dtype, shape, channel_axis):
    """The parallel channel-last float32 copy equals NumPy's for every input dtype and
    channel position (float16 and big-endian input take the NumPy path)."""
    rng = np.random.default_rng(0)
    raw = rng.random(shape) * 100
    arr = (raw > 50) if dtype is bool else raw.astype(dtype)
    data, _, _ = validate_image(arr, channel_axis=channel_axis)
    ref = arr[..., None] if channel_axis is None else np.moveaxis(arr, channel_axis, -1)
    assert data.dtype == np.float32 and data.flags.c_contiguous
    np.testing.assert_array_equal(data, ref.astype(np.float32))


def _background_reference(data, voxel_size, scale_um, percentile):
    """Slow reference: blockwise percentile on the stride-2 subsample, the coarse grid
    interpolated by explicit (n, n_blocks) weight matrices, subtracted, clipped at 0."""
    spatial = data.shape[:-1]
    block = [
        int(max(1, min(n, round(scale_um / v)))) for n, v in zip(spatial, voxel_size, strict=True)
    ]
    stride = [2 if b >= 4 else 1 for b in block]
    sub = data[tuple(slice(None, None, s) for s in stride)]
    bsub = [max(1, b // s) for b, s in zip(block, stride, strict=True)]
    nblocks = [-(-n // b) for n, b in zip(sub.shape[:-1], bsub, strict=True)]
    out = np.empty_like(data)
    for c in range(data.shape[-1]):
        coarse = np.empty(nblocks)
        for idx in np.ndindex(*nblocks):
            sl = tuple(slice(i * b, (i + 1) * b) for i, b in zip(idx, bsub, strict=True))
            vals = sub[..., c][sl]
            # edge replication to whole blocks, as the implementation pads
            pad = [(0, b - s) for b, s in zip(bsub, vals.shape, strict=True)]
            coarse[idx] = np.percentile(np.pad(vals, pad, mode="edge"), percentile)
        bg = coarse
        for ax, (n, b, nb) in enumerate(zip(spatial, block, nblocks, strict=True)):
            w = np.zeros((n, nb))
            if nb == 1:
                w[:, 0] = 1.0
            else:
                pos = np.clip((np.arange(n) - (b - 1) / 2.0) / b, -0.5, nb - 0.5)
                j0 = np.clip(np.floor(pos).astype(int), 0, nb - 2)
                w[np.arange(n), j0] += 1.0 - (pos - j0)
                w[np.arange(n), j0 + 1] += pos - j0
            bg = np.moveaxis(np.tensordot(w, bg, axes=([1], [ax])), 0, ax)
        out[..., c] = np.maximum(data[..., c] - bg, 0.0)
    return out


@pytest.mark.parametrize(("shape", "vs"), [((9, 40, 57, 2), VS), ((45, 61, 1), (0.3, 0.3))])
def test_background_subtraction_matches_slow_reference(shape, vs):
    rng = np.random.default_rng(2)
    data = (rng.random(shape) * 50 + np.linspace(0, 30, shape[-2])[:, None]).astype(np.float32)
    got, _ = subtract_background(data.copy(), vs, scale_um=4.0, percentile=10.0)
    ref = _background_reference(data, vs, 4.0, 10.0)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-3)
    assert (got == 0).any() and got.min() == 0.0


def _lost_fraction(granules, labels):
    """Fraction of each true nucleus' voxels inside the granule mask (by label id)."""
    ids, total = np.unique(labels[labels > 0], return_counts=True)
    taken = np.bincount(labels[granules].ravel(), minlength=int(labels.max()) + 1)
    return dict(zip(ids.tolist(), (taken[ids] / total).tolist(), strict=True))


@pytest.mark.parametrize("nucleus_diameter", [2.7, "auto"])
def test_granule_filter_takes_no_nucleus_of_a_granule_free_head(nucleus_diameter):
    # make_moving_worm seed 2 has no granule and four small nuclei (33-72 voxels, median
    # 101) that the top-hat and colour tests alone removed (> 86 % of their voxels) in
    # frame 0 with a 2.7 um diameter; the half-maximum size test keeps them
    from napari_sinkhorn_em.synthetic import make_moving_worm

    tl = make_moving_worm(n_frames=2, seed=2)
    pre = preprocess(
        tl.image[0], channel_axis=0, voxel_size=tl.voxel_size, nucleus_diameter=nucleus_diameter
    )
    lost = _lost_fraction(pre.granules, tl.labels[0])
    assert len(lost) == 60
    assert max(lost.values()) < 0.5, {k: round(v, 2) for k, v in lost.items() if v >= 0.5}
    for lab in (35, 48, 49, 57):  # the small nuclei the filter took before
        assert pre.foreground[tl.labels[0] == lab].mean() > 0.5, lab


@pytest.mark.parametrize("nucleus_diameter", [2.7, "auto"])
def test_granule_filter_still_removes_the_granules_of_a_head(worms, nucleus_diameter):
    w = worms(seed=0)
    pre = preprocess(
        w.image, channel_axis=0, voxel_size=w.voxel_size, nucleus_diameter=nucleus_diameter
    )
    centres = tuple(np.round(w.granules).astype(int).T)
    assert len(w.granules) == 40
    assert pre.granules[centres].all()
    assert not pre.foreground[centres].any()
    lost = _lost_fraction(pre.granules, w.labels)
    assert max(lost.values()) < 0.5


def test_half_maximum_size_test_keeps_a_small_grey_nucleus():
    # a grey (flat-spectrum) nucleus of 2 um, three quarters of the nominal 2.7 um, passes
    # the top-hat and the colour test; its half-maximum spot is 27 voxels (0.26 of a
    # nominal nucleus), a 0.8 um granule's 7 (0.07); the limit is 0.2 (21 voxels)
    shape = (16, 40, 60)
    grey = _balls(shape, VS, [[6.4, 7.0, 7.0]], 1.0, [1.0])
    gran = _balls(shape, VS, [[6.4, 7.0, 14.0]], 0.4, [3.0])
    data = np.repeat((grey + gran)[..., None], 4, axis=-1)
    sigma = (0.7 / VS[0], 0.2 / VS[1], 0.2 / VS[2], 0)
    data = ndi.gaussian_filter(data, sigma)
    i_grey = (8, 20, 20)
    i_gran = (8, 20, 40)
    before = granule_mask(data, VS, nucleus_diameter=2.7, max_half_volume=np.inf)
    assert before[i_grey] and before[i_gran]  # the other tests alone take both
    mask = granule_mask(data, VS, nucleus_diameter=2.7)
    assert mask[i_gran] and not mask[i_grey]
    assert not mask[grey > 0].any()


def test_constant_and_duplicate_channels_are_left_out():
    # a grey image saved as RGBA (as the DSB 2018 images are): the alpha channel carries
    # no signal (it raised "channel 3 is constant" before) and G, B copy R (they weighed
    # the intensity three times: the real DSB image scored F1 0.934 against 0.954)
    from napari_sinkhorn_em import segment_nuclei
    from napari_sinkhorn_em.pipeline.preprocess import _redundant_channels
    from napari_sinkhorn_em.synthetic import make_nuclei_field_2d

    w = make_nuclei_field_2d(seed=1)
    grey = np.moveaxis(np.asarray(w.image), w.channel_axis, -1)[..., 0]  # (Y, X)
    assert grey.ndim == 2
    rgba = np.stack([grey, grey, grey, np.full_like(grey, 255)], axis=-1)
    assert _redundant_channels(rgba.astype(np.float32)) == ([3], [1, 2])
    assert _redundant_channels(grey[..., None].astype(np.float32)) == ([], [])
    a = segment_nuclei(grey, voxel_size=w.voxel_size, random_state=0)
    b = segment_nuclei(rgba, voxel_size=w.voxel_size, channel_axis=-1, random_state=0)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_allclose(a.centres, b.centres)
    assert b.info["preprocess"]["constant_channels"] == [3]
    assert b.info["preprocess"]["duplicate_channels"] == [1, 2]
    notes = " ".join(b.info["warnings"])
    assert "ch3" in notes and "no signal" in notes and "ch1, ch2" in notes
    # the table keeps every channel's mean
    assert [c for c in b.table.columns if c.startswith("mean_")] == [
        "mean_ch0",
        "mean_ch1",
        "mean_ch2",
        "mean_ch3",
    ]
    assert np.allclose(b.table["mean_ch3"], 255.0)
