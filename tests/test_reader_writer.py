"""The napari reader and writers: TIFF layers with micrometre scale, labels TIFF, points CSV."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_sinkhorn_em._napari._reader import get_reader, read_tiff
from napari_sinkhorn_em._napari._writer import points_table, write_labels_tiff, write_points_csv
from napari_sinkhorn_em.io import ImageReadError, read_image, write_image

VOXEL = (0.8, 0.35, 0.3)
NAMES = ["mNeptune", "CyOFP", "BFP", "GCaMP"]


@pytest.fixture
def zcyx_file(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 4000, size=(5, 4, 12, 16), dtype=np.uint16)
    path = tmp_path / "worm.tif"
    write_image(path, data, voxel_size=VOXEL, axes="ZCYX", channel_names=NAMES)
    return path, data


def test_reader_splits_channels_with_scale_and_names(zcyx_file):
    path, data = zcyx_file
    reader = get_reader(str(path))
    assert callable(reader)
    layers = reader(str(path))
    assert len(layers) == 4
    for i, (arr, kwargs, kind) in enumerate(layers):
        assert kind == "image"
        np.testing.assert_array_equal(arr, data[:, i])
        assert kwargs["name"] == f"worm {NAMES[i]}"
        np.testing.assert_allclose(kwargs["scale"], VOXEL, rtol=1e-6)
        assert kwargs["metadata"]["channel_name"] == NAMES[i]
        assert kwargs["metadata"]["source_name"] == "worm"
        assert kwargs["blending"] == "additive"
    # one distinct colour per channel
    assert len({kw["colormap"] for _, kw, _ in layers}) == 4


def test_reader_keeps_channel_axis_on_request(zcyx_file):
    path, data = zcyx_file
    (arr, kwargs, kind), *rest = read_tiff(path, split_channels=False)
    assert rest == []
    assert kind == "image"
    np.testing.assert_array_equal(arr, np.moveaxis(data, 1, 0))  # channels first
    assert kwargs["metadata"]["channel_axis"] == 0
    assert kwargs["metadata"]["channel_names"] == NAMES
    np.testing.assert_allclose(kwargs["scale"], (1.0, 0.8, 0.35, 0.3), rtol=1e-6)


def test_reader_single_channel_2d(tmp_path):
    data = np.arange(20 * 30, dtype=np.float32).reshape(20, 30)
    path = tmp_path / "plane.tiff"
    write_image(path, data, voxel_size=(0.5, 0.25), axes="YX")
    [(arr, kwargs, kind)] = get_reader(path)(path)
    assert kind == "image"
    np.testing.assert_array_equal(arr, data)
    np.testing.assert_allclose(kwargs["scale"], (0.5, 0.25), rtol=1e-6)
    assert kwargs["name"] == "plane"


def test_reader_uncalibrated_file_gets_unit_scale(tmp_path):
    path = tmp_path / "raw.tif"
    write_image(path, np.ones((3, 8, 8), np.uint8), voxel_size=None, axes="ZYX")
    [(_, kwargs, _)] = read_tiff(path)
    assert kwargs["scale"] == (1.0, 1.0, 1.0)
    assert kwargs["metadata"]["voxel_size_um"] is None


@pytest.mark.parametrize("name", ["image.png", "stack.zarr", "notes.txt", "tif"])
def test_reader_declines_other_files(tmp_path, name):
    assert get_reader(str(tmp_path / name)) is None


def test_reader_declines_mixed_path_lists(zcyx_file, tmp_path):
    path, _ = zcyx_file
    assert get_reader([str(path), str(tmp_path / "a.png")]) is None
    assert len(get_reader([str(path), str(path)])([str(path), str(path)])) == 8


def test_reader_corrupt_tiff_gives_clear_error(tmp_path):
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"II*\x00" + b"\xff" * 50)
    reader = get_reader(bad)
    assert reader is not None  # it is a .tif: our reader takes it and explains the problem
    with pytest.raises(ImageReadError, match=r"broken\.tif.*(corrupt|truncated)"):
        reader(bad)
    fake = tmp_path / "fake.tif"
    fake.write_text("this is not an image")
    with pytest.raises(ImageReadError, match=r"fake\.tif.*not a TIFF"):
        get_reader(fake)(fake)


def test_labels_writer_round_trip_keeps_voxel_size_and_values(tmp_path):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 300, size=(6, 20, 24)).astype(np.uint16)
    out = write_labels_tiff(tmp_path / "seg.tif", labels, {"scale": VOXEL, "name": "seg"})
    assert out == [str(tmp_path / "seg.tif")]
    img = read_image(out[0])
    np.testing.assert_array_equal(img.data, labels)
    np.testing.assert_allclose(img.voxel_size, VOXEL, rtol=1e-6)
    # and through our reader: scale back in the layer; an image since not named *_labels
    [(arr, kwargs, kind)] = get_reader(out[0])(out[0])
    assert kind == "image"
    np.testing.assert_array_equal(arr, labels)
    np.testing.assert_allclose(kwargs["scale"], VOXEL, rtol=1e-6)


@pytest.mark.parametrize("name", ["worm_labels.tif", "worm_labels.ome.tif", "W_LABELS.TIFF"])
def test_label_files_open_as_labels(tmp_path, name):
    labels = np.zeros((3, 10, 12), np.uint16)
    labels[1, 2:5, 3:7] = 4
    [out] = write_labels_tiff(tmp_path / name, labels, {"scale": VOXEL})
    [(arr, kwargs, kind)] = read_tiff(out)
    assert kind == "labels"
    np.testing.assert_array_equal(arr, labels)
    np.testing.assert_allclose(kwargs["scale"], VOXEL, rtol=1e-6)
    assert "contrast_limits" not in kwargs and "colormap" not in kwargs


def test_float_file_named_labels_stays_an_image(tmp_path):
    path = tmp_path / "prob_labels.tif"
    write_image(path, np.ones((6, 7), np.float32), voxel_size=(1.0, 1.0), axes="YX")
    [(_, _, kind)] = read_tiff(path)
    assert kind == "image"


def test_labels_writer_large_label_values(tmp_path):
    labels = np.zeros((8, 9), np.int64)
    labels[2:4, 3:5] = 70_000
    labels[5, 5] = 3
    [out] = write_labels_tiff(tmp_path / "big.tif", labels, {"scale": (0.2, 0.1)})
    img = read_image(out)
    np.testing.assert_array_equal(img.data, labels)
    np.testing.assert_allclose(img.voxel_size, (0.2, 0.1), rtol=1e-6)


def test_labels_writer_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="integer dtype"):
        write_labels_tiff(tmp_path / "f.tif", np.zeros((4, 4), np.float32), {"scale": (1, 1)})
    with pytest.raises(ValueError, match="does not match"):
        write_labels_tiff(tmp_path / "f.tif", np.zeros((4, 4), np.uint8), {"scale": (1, 1, 1)})
    assert not list(tmp_path.iterdir())


def test_points_csv_keeps_features_and_refreshes_coordinates(tmp_path):
    coords = np.array([[1.0, 2.0, 3.0], [4.5, 5.0, 6.0]])
    features = pd.DataFrame(
        {
            "label": [1, 2],
            "z": [0.0, 0.0],  # stale: the points were moved after segmentation
            "y": [0.0, 0.0],
            "x": [0.0, 0.0],
            "volume_um3": [12.5, 30.0],
            "mean_GCaMP": [0.25, 0.75],
        }
    )
    [out] = write_points_csv(tmp_path / "c.csv", coords, {"features": features, "scale": VOXEL})
    table = pd.read_csv(out)
    assert list(table.columns[:7]) == ["label", "z", "y", "x", "z_um", "y_um", "x_um"]
    np.testing.assert_allclose(table[["z", "y", "x"]].to_numpy(), coords)
    np.testing.assert_allclose(table[["z_um", "y_um", "x_um"]].to_numpy(), coords * VOXEL)
    np.testing.assert_allclose(table["volume_um3"], [12.5, 30.0])
    np.testing.assert_allclose(table["mean_GCaMP"], [0.25, 0.75])


def test_points_table_without_features_numbers_points():
    table = points_table(np.array([[3.0, 4.0]]), {"scale": (2.0, 0.5)})
    assert table.to_dict("records") == [{"label": 1, "y": 3.0, "x": 4.0, "y_um": 6.0, "x_um": 2.0}]


def test_through_napari_open_and_save(make_napari_viewer, zcyx_file, tmp_path):
    """The manifest wiring: napari opens with our reader and saves with our writers."""
    napari = pytest.importorskip("napari")
    path, data = zcyx_file
    viewer = make_napari_viewer()
    opened = viewer.open(path, plugin="napari-sinkhorn-em")
    assert [layer.name for layer in opened] == [f"worm {n}" for n in NAMES]
    np.testing.assert_allclose(opened[2].scale, VOXEL, rtol=1e-6)
    np.testing.assert_array_equal(opened[2].data, data[:, 2])

    labels = np.zeros(data[:, 0].shape, np.uint16)
    labels[1:3, 2:6, 3:9] = 7
    layer = viewer.add_labels(labels, name="seg", scale=VOXEL)
    layer.save(str(tmp_path / "seg_labels.tif"), plugin="napari-sinkhorn-em")
    [back] = viewer.open(tmp_path / "seg_labels.tif", plugin="napari-sinkhorn-em")
    assert isinstance(back, napari.layers.Labels)  # *_labels.tif opens as labels again
    np.testing.assert_array_equal(back.data, labels)
    np.testing.assert_allclose(back.scale, VOXEL, rtol=1e-6)

    pts = viewer.add_points([[1, 2, 3]], scale=VOXEL, features={"label": [5]})
    pts.save(str(tmp_path / "pts.csv"), plugin="napari-sinkhorn-em")
    table = pd.read_csv(tmp_path / "pts.csv")
    assert list(table.columns) == ["label", "z", "y", "x", "z_um", "y_um", "x_um"]
    np.testing.assert_allclose(table.iloc[0], [5, 1, 2, 3, 0.8, 0.7, 0.9])

    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"II*\x00" + b"\xff" * 50)
    n_layers = len(viewer.layers)
    with pytest.raises(Exception, match=r"broken\.tif"):
        viewer.open(bad, plugin="napari-sinkhorn-em")
    assert len(viewer.layers) == n_layers
