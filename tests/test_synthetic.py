"""Tests for the synthetic worm generator (napari_sinkhorn_em.synthetic)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from napari_sinkhorn_em.io import read_image
from napari_sinkhorn_em.synthetic import SyntheticWorm, make_worm, write_sample_images


@pytest.fixture(scope="module")
def head(worms) -> SyntheticWorm:
    """A full NeuroPAL-like head with the default settings (195 nuclei, 4 channels)."""
    return worms(seed=3)


@pytest.fixture(scope="module")
def clean_head(worms) -> SyntheticWorm:
    """A small head without background and with almost noise-free photon counts."""
    return worms(
        n_nuclei=60,
        x_range=(55.0, 100.0),
        background=None,
        photons=1e5,
        read_noise=0.0,
        camera_offset=0.0,
        dtype=np.float32,
        n_granules=25,
        seed=5,
    )


def _nn_um(worm: SyntheticWorm) -> np.ndarray:
    d, _ = cKDTree(worm.centres_um).query(worm.centres_um, k=2)
    return d[:, 1]


def test_deterministic_by_seed():
    a = make_worm(n_nuclei=30, x_range=(55.0, 90.0), n_channels=2, seed=11)
    b = make_worm(n_nuclei=30, x_range=(55.0, 90.0), n_channels=2, seed=11)
    c = make_worm(n_nuclei=30, x_range=(55.0, 90.0), n_channels=2, seed=12)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.centres, b.centres)
    np.testing.assert_array_equal(a.granules, b.granules)
    assert a.params == b.params
    assert not np.array_equal(a.centres, c.centres)
    json.dumps(a.params)  # JSON-serialisable


def test_default_head_shapes_and_metadata(head):
    assert head.image.ndim == 4
    assert head.channel_axis == 0
    assert head.image.dtype == np.uint16
    assert head.image.shape[0] == 4
    assert head.image.shape[1:] == head.labels.shape
    z, y, x = head.labels.shape
    # auto-sized around 40 x 90 x 470 at 0.8 x 0.35 x 0.35 um
    assert 34 <= z <= 46 and 80 <= y <= 100 and 400 <= x <= 520
    assert head.voxel_size == (0.8, 0.35, 0.35)
    assert head.channel_names == ["mNeptune2.5", "CyOFP1", "mTagBFP2", "pan-nuclear"]
    assert head.n_nuclei == 195
    assert head.centres.shape == (195, 3)
    assert head.colours.shape == (195, 4)
    np.testing.assert_allclose(head.centres_um, head.centres * np.array(head.voxel_size))


def test_labels_match_centres(head):
    k = head.n_nuclei
    assert set(np.unique(head.labels)) == set(range(k + 1))
    idx = tuple(np.rint(head.centres).astype(int).T)
    np.testing.assert_array_equal(head.labels[idx], np.arange(1, k + 1))
    # each label's centroid sits on its true centre (sub-voxel, in micrometres)
    com = np.array(ndimage.center_of_mass(head.labels > 0, head.labels, np.arange(1, k + 1)))
    err_um = np.linalg.norm((com - head.centres) * np.array(head.voxel_size), axis=1)
    assert np.median(err_um) < 0.2
    assert err_um.max() < 0.6
    # volumes agree with the drawn ellipsoids (touching nuclei lose a little overlap)
    counts = np.bincount(head.labels.ravel(), minlength=k + 1)[1:]
    vol = counts * np.prod(head.voxel_size)
    expected = 4 / 3 * np.pi * np.prod(head.semi_axes_um, axis=1)
    ratio = vol / expected
    assert 0.8 < np.median(ratio) < 1.1


def test_dense_head_geometry(head):
    nn = _nn_um(head)
    # touching nuclei in dense ganglia: nearest-neighbour centre distances mostly 2-3 um
    assert 2.3 <= np.median(nn) <= 3.0
    assert np.mean((nn >= 2.0) & (nn <= 3.2)) > 0.7
    # centres never closer than 0.9 * (r_i + r_j)
    r = head.diameters_um / 2
    d = np.linalg.norm(head.centres_um[:, None] - head.centres_um[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    assert (d >= 0.9 * (r[:, None] + r[None]) - 1e-9).all()
    # nucleus sizes ~2-3.5 um with variation
    assert 2.5 < head.diameters_um.mean() < 2.9
    assert head.diameters_um.min() >= 1.6 and head.diameters_um.max() <= 4.1
    assert head.diameters_um.std() > 0.15
    # elongated worm: nuclei spread along x far more than across
    spread = head.centres_um.max(0) - head.centres_um.min(0)
    assert spread[2] > 2 * spread[1] and spread[2] > 2 * spread[0]


def test_neuropal_colours_and_brightness(head):
    col = head.colours
    np.testing.assert_array_equal(col[:, -1], 1.0)  # pan-nuclear
    np.testing.assert_allclose(col[:, :3].max(axis=1), 1.0)  # strongest colour at full level
    assert (col[:, :3] == 0).mean() > 0.15  # fluorophores absent in some nuclei
    assert len(np.unique(np.round(col[:, :3], 2), axis=0)) > 100  # per-nucleus colours
    assert head.brightness.min() >= 0.5 and head.brightness.max() <= 1.5
    assert head.brightness.max() / head.brightness.min() > 2.0


def test_measured_channel_means_follow_colours(clean_head):
    w = clean_head
    k = w.n_nuclei
    idx = np.arange(1, k + 1)
    means = np.array([ndimage.mean(w.image[c], w.labels, idx) for c in range(4)]).T
    for c in range(3):
        rel = means[:, c] / means[:, 3]
        corr = np.corrcoef(rel, w.colours[:, c])[0, 1]
        assert corr > 0.9, (c, corr)
    # pan-nuclear mass follows brightness x volume (+-50 % brightness variation)
    mass = means[:, 3] * np.bincount(w.labels.ravel(), minlength=k + 1)[1:]
    expected = w.brightness * np.prod(w.semi_axes_um, axis=1)
    assert np.corrcoef(mass, expected)[0, 1] > 0.9


def test_granules_off_nuclei_and_alike_in_every_channel(clean_head):
    w = clean_head
    assert len(w.granules) == 25
    assert ((w.granule_diameters_um >= 0.5) & (w.granule_diameters_um <= 1.0)).all()
    idx = tuple(np.rint(w.granules).astype(int).T)
    assert (w.labels[idx] == 0).all()
    # a granule's footprint does not touch any nucleus
    d_nuc = ndimage.distance_transform_edt(w.labels == 0, sampling=w.voxel_size)
    assert (d_nuc[idx] > w.granule_diameters_um / 2).all()
    # same intensity in all channels at granules, unlike nuclei
    g = w.image[(slice(None), *idx)]  # (C, G)
    assert (g.std(axis=0) / g.mean(axis=0)).max() < 0.08
    n_idx = tuple(np.rint(w.centres).astype(int).T)
    n = w.image[(slice(None), *n_idx)]
    assert np.median(n.std(axis=0) / n.mean(axis=0)) > 0.2
    # bright: about as bright as the brightest nuclei or brighter
    assert np.median(g[3]) > np.median(n[3])


def _blur_sd_um(image: np.ndarray, centres: np.ndarray, voxel_size, axis: int) -> np.ndarray:
    """Intensity-weighted sd (um) along ``axis`` in a small window around each point."""
    out = []
    half = 4
    for c in np.rint(centres).astype(int):
        lo = np.maximum(c - half, 0)
        hi = np.minimum(c + half + 1, image.shape)
        win = image[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))].astype(float)
        prof = win.sum(axis=tuple(a for a in range(image.ndim) if a != axis))
        pos = (np.arange(lo[axis], hi[axis]) - c[axis]) * voxel_size[axis]
        w = prof / prof.sum()
        m = (w * pos).sum()
        out.append(np.sqrt((w * (pos - m) ** 2).sum()))
    return np.array(out)


def test_psf_is_anisotropic(clean_head):
    w = clean_head
    # isolated granules only (no nucleus within 3 um) act as point sources
    d_nuc = ndimage.distance_transform_edt(w.labels == 0, sampling=w.voxel_size)
    idx = tuple(np.rint(w.granules).astype(int).T)
    lone = w.granules[d_nuc[idx] > 3.0]
    assert len(lone) >= 5
    sd_z = _blur_sd_um(w.image[3], lone, w.voxel_size, 0)
    sd_x = _blur_sd_um(w.image[3], lone, w.voxel_size, 2)
    # PSF sigma 0.7 um in z vs 0.2 um in xy (plus granule size and voxel sampling)
    assert 0.55 < np.median(sd_z) < 0.95
    assert 0.15 < np.median(sd_x) < 0.4
    assert np.median(sd_z / sd_x) > 2.0


def test_noise_and_background(head):
    pan = head.image[3].astype(float)
    bg = pan[head.labels == 0]
    # camera offset 100, background photons ~25 (uneven), Poisson + read noise
    assert 100 < np.median(bg) < 180
    assert pan.max() < 65535
    # uneven background: tissue inside the worm is brighter than outside
    zc = pan.shape[0] // 2
    inside = pan[zc, pan.shape[1] // 2, 30:60].mean()
    outside = pan[zc, 2, 30:60].mean()
    assert inside > outside + 5
    # noise: two seeds with the same geometry differ only by noise of the right size
    flat = make_worm(n_nuclei=10, x_range=(60, 80), background="flat", seed=1)
    out = flat.image[3][flat.labels == 0].astype(float)
    far = out[out < np.percentile(out, 50)]
    assert 3.0 < far.std() < 9.0  # sqrt(25) Poisson with read noise 3


@pytest.mark.parametrize("n_channels", [1, 4])
def test_two_dimensional(n_channels):
    w = make_worm(n_nuclei=40, ndim=2, n_channels=n_channels, seed=2)
    assert w.image.shape[0] == n_channels
    assert w.image.ndim == 3
    assert w.image.shape[1:] == w.labels.shape
    assert w.voxel_size == (0.35, 0.35)
    assert w.centres.shape == (40, 2)
    idx = tuple(np.rint(w.centres).astype(int).T)
    np.testing.assert_array_equal(w.labels[idx], np.arange(1, 41))
    assert w.channel_names[-1] == "pan-nuclear"
    assert len(w.channel_names) == n_channels
    assert 2.2 <= np.median(_nn_um(w)) <= 3.2
    table = w.table()
    assert list(table.columns[:5]) == ["label", "y", "x", "y_um", "x_um"]


def test_single_channel_3d_and_float_dtype():
    w = make_worm(n_nuclei=25, x_range=(60, 90), n_channels=1, dtype=np.float32, seed=4)
    assert w.image.shape == (1, *w.labels.shape)
    assert w.image.dtype == np.float32
    assert w.channel_names == ["pan-nuclear"]
    np.testing.assert_array_equal(w.colours, 1.0)


def test_body_region():
    w = make_worm(n_nuclei=50, region="body", n_channels=2, seed=8)
    assert w.n_nuclei == 50
    idx = tuple(np.rint(w.centres).astype(int).T)
    np.testing.assert_array_equal(w.labels[idx], np.arange(1, 51))
    # most nuclei in the ventral nerve cord (negative y: below the worm axis)
    y_axis_um = w.labels.shape[1] * w.voxel_size[1] / 2
    assert np.mean(w.centres_um[:, 1] + 0.5 * w.voxel_size[1] < y_axis_um - 6) > 0.6
    assert w.image.shape[0] == 2


def test_given_shape_and_errors():
    w = make_worm(n_nuclei=20, x_range=(60, 85), shape=(40, 100, 90), seed=0)
    assert w.labels.shape == (40, 100, 90)
    with pytest.raises(ValueError, match="too small"):
        make_worm(n_nuclei=20, x_range=(60, 85), shape=(10, 30, 30), seed=0)
    with pytest.raises(ValueError, match="region"):
        make_worm(region="tail")
    with pytest.raises(ValueError, match="voxel_size"):
        make_worm(voxel_size=(0.8, -1, 0.3))
    with pytest.raises(ValueError, match="n_channels"):
        make_worm(n_channels=0)
    with pytest.raises(ValueError, match="x_range"):
        make_worm(region="body", x_range=(0, 10))
    with pytest.raises(ValueError, match=r"could only place \d+ of 300 nuclei"):
        make_worm(n_nuclei=300, x_range=(60, 64))


def test_truth_table(head):
    t = head.table()
    assert isinstance(t, pd.DataFrame)
    assert len(t) == head.n_nuclei
    assert list(t.columns[:7]) == ["label", "z", "y", "x", "z_um", "y_um", "x_um"]
    assert "colour_pan-nuclear" in t.columns
    np.testing.assert_allclose(t[["z", "y", "x"]].to_numpy(), head.centres)


def test_write_sample_images_matches_bundled_sample(tmp_path):
    from pathlib import Path

    paths = write_sample_images(tmp_path)
    img = read_image(paths["image"])
    assert img.axes == "ZCYX"
    assert img.data.dtype == np.uint16
    np.testing.assert_allclose(img.voxel_size, (0.8, 0.35, 0.35), rtol=1e-6)
    assert img.channel_names == ["mNeptune2.5", "CyOFP1", "mTagBFP2", "pan-nuclear"]
    lab = read_image(paths["labels"])
    centres = pd.read_csv(paths["centres"])
    assert 60 <= len(centres) <= 90
    assert lab.data.max() == len(centres)
    idx = tuple(np.rint(centres[["z", "y", "x"]].to_numpy()).astype(int).T)
    np.testing.assert_array_equal(lab.data[idx], centres["label"].to_numpy())
    assert paths["image"].stat().st_size < 4 * 2**20

    bundled = Path(__file__).resolve().parents[1] / "sample_images"
    if (bundled / "worm_head.tif").exists():  # the bundled files are this generator's output
        np.testing.assert_array_equal(read_image(bundled / "worm_head.tif").data, img.data)
        np.testing.assert_array_equal(read_image(bundled / "worm_head_labels.tif").data, lab.data)
