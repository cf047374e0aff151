"""Sample data contributions: the bundled worm head as channel layers plus its truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from napari_sinkhorn_em._napari._sample_data import sample_path, worm_head, worm_head_labels

VOXEL = (0.8, 0.35, 0.35)
CHANNELS = ["mNeptune2.5", "CyOFP1", "mTagBFP2", "pan-nuclear"]


def test_worm_head_is_four_channel_layers_in_micrometres():
    layers = worm_head()
    assert [kw["name"] for _, kw, _ in layers] == [f"worm_head {c}" for c in CHANNELS]
    shapes = {arr.shape for arr, _, _ in layers}
    assert len(shapes) == 1 and len(next(iter(shapes))) == 3
    for arr, kw, kind in layers:
        assert kind == "image"
        assert arr.dtype == np.uint16
        np.testing.assert_allclose(kw["scale"], VOXEL, rtol=1e-6)
        assert arr.std() > 0


def test_truth_labels_match_image_and_centres_table():
    (image, _, _), *_ = worm_head()
    [(labels, kw, kind)] = worm_head_labels()
    assert kind == "labels"
    assert labels.shape == image.shape
    np.testing.assert_allclose(kw["scale"], VOXEL, rtol=1e-6)
    with sample_path("worm_head_centres.csv") as p:
        table = pd.read_csv(p)
    ids = np.unique(labels)
    np.testing.assert_array_equal(ids[1:], table["label"].to_numpy())
    # label i is the nucleus of row i: its centroid lies near the tabulated centre
    centroids = np.array(ndi.center_of_mass(labels > 0, labels, table["label"].to_numpy()))
    err_um = np.linalg.norm((centroids - table[["z", "y", "x"]].to_numpy()) * VOXEL, axis=1)
    assert np.median(err_um) < 0.5


def test_missing_sample_names_the_file():
    with pytest.raises(FileNotFoundError, match=r"no_such\.tif"):
        sample_path("no_such.tif")


def test_samples_open_in_napari(make_napari_viewer):
    napari = pytest.importorskip("napari")
    viewer = make_napari_viewer()
    viewer.open_sample("napari-sinkhorn-em", "worm_head")
    assert [layer.name for layer in viewer.layers] == [f"worm_head {c}" for c in CHANNELS]
    viewer.open_sample("napari-sinkhorn-em", "worm_head_labels")
    truth = viewer.layers["worm_head truth"]
    assert isinstance(truth, napari.layers.Labels)
    np.testing.assert_allclose(truth.scale, VOXEL, rtol=1e-6)
    assert truth.data.shape == viewer.layers[0].data.shape
