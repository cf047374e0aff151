"""Tests for napari_sinkhorn_em.io: real TIFF files written with tifffile."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_sinkhorn_em.io import (
    ImageReadError,
    atomic_write,
    read_image,
    write_image,
    write_labels,
    write_table,
)


def _stack(shape=(3, 2, 12, 17), dtype=np.uint16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 4000, size=shape).astype(dtype)


# ------------------------------------------------------------------ ImageJ / OME / plain


@pytest.mark.parametrize(
    ("unit", "factor"),
    [("micron", 1.0), ("um", 1.0), ("\\u00B5m", 1.0), ("nm", 1e-3), ("mm", 1e3)],
)
def test_read_imagej_hyperstack_units(tmp_path, unit, factor):
    data = _stack()
    path = tmp_path / "hyper.tif"
    # sizes expressed in `unit` so that they are (0.8, 0.35, 0.3) micrometres
    xy = (0.3 / factor, 0.35 / factor)
    tifffile.imwrite(
        path,
        data,
        imagej=True,
        resolution=(1 / xy[0], 1 / xy[1]),
        metadata={"axes": "ZCYX", "spacing": 0.8 / factor, "unit": unit},
    )
    img = read_image(path)
    assert img.axes == "ZCYX"
    assert img.channel_axis == 1
    assert img.data.dtype == np.uint16
    np.testing.assert_array_equal(img.data, data)
    np.testing.assert_allclose(img.voxel_size, (0.8, 0.35, 0.3), rtol=1e-6)
    assert img.spatial_shape == (3, 12, 17)
    assert img.n_channels == 2


def test_read_imagej_without_unit_has_no_voxel_size(tmp_path):
    path = tmp_path / "nounit.tif"
    tifffile.imwrite(path, _stack((4, 10, 11)), imagej=True, metadata={"axes": "ZYX"})
    img = read_image(path)
    assert img.axes == "ZYX"
    assert img.voxel_size is None
    assert img.channel_axis is None


def test_read_imagej_stack_without_spacing_has_unknown_z(tmp_path):
    path = tmp_path / "nospacing.tif"
    tifffile.imwrite(
        path,
        _stack((4, 10, 11)),
        imagej=True,
        resolution=(1 / 0.2, 1 / 0.2),
        metadata={"axes": "ZYX", "unit": "micron"},
    )
    img = read_image(path)
    assert img.voxel_size is None
    assert img.pixel_size == pytest.approx((0.2, 0.2))  # the plane is calibrated


def test_read_imagej_2d_calibrated(tmp_path):
    path = tmp_path / "plane.tif"
    tifffile.imwrite(
        path,
        _stack((10, 11)),
        imagej=True,
        resolution=(1 / 0.25, 1 / 0.5),
        metadata={"axes": "YX", "unit": "um"},
    )
    img = read_image(path)
    assert img.axes == "YX"
    np.testing.assert_allclose(img.voxel_size, (0.5, 0.25), rtol=1e-6)


def test_read_imagej_singleton_time_dropped(tmp_path):
    data = _stack((1, 3, 2, 8, 9))
    path = tmp_path / "t1.tif"
    tifffile.imwrite(
        path,
        data,
        imagej=True,
        resolution=(1 / 0.35, 1 / 0.35),
        metadata={"axes": "TZCYX", "spacing": 0.8, "unit": "micron"},
    )
    img = read_image(path)
    assert img.axes == "ZCYX"
    np.testing.assert_array_equal(img.data, data[0])


def test_read_imagej_time_series_rejected(tmp_path):
    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, _stack((3, 2, 2, 8, 9)), imagej=True, metadata={"axes": "TZCYX"})
    with pytest.raises(ImageReadError, match=r"movie\.tif.*3 time points"):
        read_image(path)


@pytest.mark.parametrize("axes", ["ZCYX", "CZYX"])
def test_read_ome_tiff(tmp_path, axes):
    data = _stack((3, 2, 12, 17)) if axes == "ZCYX" else _stack((2, 3, 12, 17))
    path = tmp_path / "img.ome.tif"
    tifffile.imwrite(
        path,
        data,
        ome=True,
        metadata={
            "axes": axes,
            "PhysicalSizeX": 300.0,
            "PhysicalSizeXUnit": "nm",
            "PhysicalSizeY": 0.35,
            "PhysicalSizeYUnit": "µm",
            "PhysicalSizeZ": 0.0008,
            "PhysicalSizeZUnit": "mm",
            "Channel": {"Name": ["red", "pan"]},
        },
    )
    img = read_image(path)
    assert img.axes == axes
    assert img.channel_axis == axes.index("C")
    assert img.channel_names == ["red", "pan"]
    np.testing.assert_array_equal(img.data, data)
    np.testing.assert_allclose(img.voxel_size, (0.8, 0.35, 0.3), rtol=1e-9)


def test_read_ome_time_series_rejected_and_singleton_dropped(tmp_path):
    one = tmp_path / "one.ome.tif"
    two = tmp_path / "two.ome.tif"
    tifffile.imwrite(one, _stack((1, 3, 8, 9)), ome=True, metadata={"axes": "TZYX"})
    tifffile.imwrite(two, _stack((2, 3, 8, 9)), ome=True, metadata={"axes": "TZYX"})
    img = read_image(one)
    assert img.axes == "ZYX"
    assert img.data.shape == (3, 8, 9)
    assert img.voxel_size is None
    with pytest.raises(ImageReadError, match=r"two\.ome\.tif.*2 time points"):
        read_image(two)


def test_read_plain_tiff_inference_and_channel_axis_override(tmp_path):
    p2, p3, p4 = tmp_path / "p2.tif", tmp_path / "p3.tif", tmp_path / "p4.tif"
    tifffile.imwrite(p2, _stack((10, 11)))
    tifffile.imwrite(p3, _stack((5, 10, 11)), photometric="minisblack")
    tifffile.imwrite(p4, _stack((6, 2, 10, 11)), photometric="minisblack")
    assert read_image(p2).axes == "YX"
    img3 = read_image(p3)
    assert img3.axes == "ZYX"
    assert img3.voxel_size is None
    assert read_image(p4).axes == "ZCYX"
    over = read_image(p3, channel_axis=0)
    assert over.axes == "CYX"
    assert over.channel_axis == 0
    assert read_image(p4, channel_axis=0).axes == "CZYX"
    assert read_image(p3, channel_axis=-1).axes == "YXC"
    with pytest.raises(ImageReadError, match=r"p3\.tif.*channel_axis=3 is out of range"):
        read_image(p3, channel_axis=3)


def test_read_plain_tiff_resolution_in_centimetres(tmp_path):
    path = tmp_path / "cm.tif"
    # 0.5 um pixels = 20000 pixels per centimetre
    tifffile.imwrite(path, _stack((10, 11)), resolution=(20000.0, 20000.0), resolutionunit=3)
    np.testing.assert_allclose(read_image(path).voxel_size, (0.5, 0.5))


def test_constant_image_is_not_an_io_error(tmp_path):
    path = tmp_path / "flat.tif"
    tifffile.imwrite(path, np.full((4, 10, 11), 7, np.uint16), photometric="minisblack")
    img = read_image(path)
    assert img.data.min() == img.data.max() == 7


# ------------------------------------------------------------------ read errors


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(ImageReadError, match=r"nothere\.tif.*does not exist"):
        read_image(tmp_path / "nothere.tif")
    empty = tmp_path / "zero.tif"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"zero\.tif.*empty"):
        read_image(empty)


def test_text_file_named_tif(tmp_path):
    path = tmp_path / "notes.tif"
    path.write_text("these are not pixels\n" * 20)
    with pytest.raises(ImageReadError, match=r"notes\.tif.*not a TIFF"):
        read_image(path)
    assert isinstance(ImageReadError("x"), ValueError)


@pytest.mark.parametrize("compression", [None, "zlib"])
@pytest.mark.parametrize("kind", ["imagej", "plain", "ome"])
@pytest.mark.parametrize("fraction", [0.3, 0.7])
def test_truncated_file(tmp_path, compression, kind, fraction):
    data = _stack((4, 3, 20, 30))
    full = tmp_path / "full.tif"
    kwargs = {"imagej": {"imagej": True}, "plain": {}, "ome": {"ome": True}}[kind]
    tifffile.imwrite(
        full,
        data,
        compression=compression,
        photometric="minisblack",
        metadata={"axes": "ZCYX"},
        **kwargs,
    )
    raw = full.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(raw[: int(len(raw) * fraction)])
    with pytest.raises(ImageReadError, match=r"cut\.tif.*(truncated|corrupt)"):
        read_image(cut)


def test_one_dimensional_array(tmp_path):
    path = tmp_path / "line.tif"
    tifffile.imwrite(path, np.arange(50, dtype=np.uint16))
    with pytest.raises(ImageReadError, match=r"line\.tif.*wrong number of axes"):
        read_image(path)


def test_five_dimensional_array(tmp_path):
    path = tmp_path / "five.tif"
    tifffile.imwrite(path, _stack((2, 3, 2, 8, 9)), photometric="minisblack")
    with pytest.raises(ImageReadError, match=r"five\.tif.*wrong number of axes"):
        read_image(path)


def test_rgb_samples_are_channels(tmp_path):
    rgb = _stack((8, 9, 3), dtype=np.uint8)
    stack = _stack((2, 8, 9, 3), dtype=np.uint8, seed=1)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    tifffile.imwrite(tmp_path / "rgbz.tif", stack, photometric="rgb")
    img = read_image(tmp_path / "rgb.tif")
    assert img.axes == "YXC"
    assert img.channel_axis == 2
    np.testing.assert_array_equal(img.data, rgb)
    img = read_image(tmp_path / "rgbz.tif")
    assert img.axes == "ZYXC"
    np.testing.assert_array_equal(img.data, stack)


# ------------------------------------------------------------------ writers


def test_write_image_round_trip_zcyx(tmp_path):
    data = _stack((3, 4, 12, 17))
    path = write_image(
        tmp_path / "img.tif",
        data,
        voxel_size=(0.8, 0.35, 0.3),
        axes="ZCYX",
        channel_names=["a", "b", "c", "pan"],
    )
    img = read_image(path)
    assert img.axes == "ZCYX"
    assert img.channel_names == ["a", "b", "c", "pan"]
    np.testing.assert_array_equal(img.data, data)
    np.testing.assert_allclose(img.voxel_size, (0.8, 0.35, 0.3), rtol=1e-6)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej
        assert tif.imagej_metadata["unit"] == "micron"
        assert tif.pages.first.compression == tifffile.COMPRESSION.ADOBE_DEFLATE


def test_write_image_reorders_axes_and_keeps_other_dtypes(tmp_path):
    data = _stack((2, 3, 12, 17)).astype(np.float64) / 7.0  # CZYX, float64
    path = write_image(tmp_path / "f.tif", data, voxel_size=(0.8, 0.35, 0.3), axes="CZYX")
    img = read_image(path)
    assert img.axes == "ZCYX"
    assert img.data.dtype == np.float64
    np.testing.assert_array_equal(img.data, np.moveaxis(data, 0, 1))
    np.testing.assert_allclose(img.voxel_size, (0.8, 0.35, 0.3), rtol=1e-9)


@pytest.mark.parametrize(("axes", "shape"), [("YX", (12, 17)), ("CYX", (3, 12, 17))])
def test_write_image_2d(tmp_path, axes, shape):
    data = _stack(shape, dtype=np.uint8)
    path = write_image(tmp_path / "two.tif", data, voxel_size=(0.5, 0.25), axes=axes)
    img = read_image(path)
    assert img.axes == axes
    assert img.data.dtype == np.uint8
    np.testing.assert_array_equal(img.data, data)
    np.testing.assert_allclose(img.voxel_size, (0.5, 0.25), rtol=1e-6)


def test_write_image_errors(tmp_path):
    data = _stack((3, 12, 17))
    with pytest.raises(ValueError, match=r"bad\.tif.*axes 'ZCYX'"):
        write_image(tmp_path / "bad.tif", data, voxel_size=None, axes="ZCYX")
    with pytest.raises(ValueError, match=r"bad\.tif.*voxel_size must have 2 entries"):
        write_image(tmp_path / "bad.tif", data, voxel_size=(1, 1, 1), axes="CYX")
    with pytest.raises(ValueError, match=r"bad\.tif.*2 channel names given for 3"):
        write_image(tmp_path / "bad.tif", data, voxel_size=None, axes="CYX", channel_names="ab")
    assert not (tmp_path / "bad.tif").exists()


def test_write_labels_uint16_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 300, size=(5, 20, 30)).astype(np.int64)
    path = write_labels(tmp_path / "lab.tif", labels, (0.8, 0.35, 0.35))
    img = read_image(path)
    assert img.axes == "ZYX"
    assert img.data.dtype == np.uint16
    np.testing.assert_array_equal(img.data, labels)
    np.testing.assert_allclose(img.voxel_size, (0.8, 0.35, 0.35), rtol=1e-6)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej
        assert tif.imagej_metadata["spacing"] == pytest.approx(0.8)
        assert tif.imagej_metadata["unit"] == "micron"


def test_write_labels_uint32_round_trip(tmp_path):
    labels = np.zeros((4, 10, 12), np.int64)
    labels[1, 2, 3] = 70000
    labels[2, 5:7, 4:9] = 65535
    labels[3, 0, 0] = 3
    path = write_labels(tmp_path / "big.tif", labels, (1.0, 0.2, 0.25))
    img = read_image(path)
    assert img.data.dtype == np.uint32
    np.testing.assert_array_equal(img.data, labels)
    np.testing.assert_allclose(img.voxel_size, (1.0, 0.2, 0.25), rtol=1e-9)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
        unit = tif.pages.first.tags["ResolutionUnit"].value
        assert unit == tifffile.RESUNIT.CENTIMETER


def test_write_labels_2d_and_bool(tmp_path):
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:7] = True
    img = read_image(write_labels(tmp_path / "m.tif", mask, (0.5, 0.5)))
    assert img.data.dtype == np.uint16
    np.testing.assert_array_equal(img.data, mask.astype(np.uint16))


@pytest.mark.parametrize("shape", [(6, 1, 9), (6, 9, 1)])
def test_write_labels_with_a_plane_of_one_voxel_round_trip(tmp_path, shape):
    # ImageJ hyperstacks cannot hold a Y or X axis of length 1 (tifffile wrote a file
    # that no reader could open): those go to OME-TIFF with the same shape
    lab = np.arange(np.prod(shape), dtype=np.uint16).reshape(shape) % 4
    img = read_image(write_labels(tmp_path / "l.tif", lab, (2.0, 0.5, 0.25)))
    assert img.data.shape == shape
    np.testing.assert_array_equal(img.data, lab)
    assert img.voxel_size == pytest.approx((2.0, 0.5, 0.25))


def test_write_labels_errors(tmp_path):
    good = np.ones((4, 5, 6), np.int32)
    with pytest.raises(ValueError, match=r"l\.tif.*>= 0"):
        write_labels(tmp_path / "l.tif", -good, (1, 1, 1))
    with pytest.raises(ValueError, match=r"l\.tif.*integer dtype"):
        write_labels(tmp_path / "l.tif", good.astype(float), (1, 1, 1))
    with pytest.raises(ValueError, match=r"l\.tif.*2-D or 3-D"):
        write_labels(tmp_path / "l.tif", good[0, 0], (1,))
    with pytest.raises(ValueError, match=r"l\.tif.*voxel_size must have 3 entries"):
        write_labels(tmp_path / "l.tif", good, (1, 1))
    with pytest.raises(ValueError, match=r"l\.tif.*must be positive and finite"):
        write_labels(tmp_path / "l.tif", good, (1, 0, 1))
    assert list(tmp_path.iterdir()) == []


def test_write_table_round_trip(tmp_path):
    df = pd.DataFrame({"label": [1, 2, 3], "z_um": [0.5, 1.25, 2.0], "mean_pan": [1e3, 2.5, 7]})
    path = write_table(tmp_path / "t.csv", df)
    back = pd.read_csv(path)
    pd.testing.assert_frame_equal(back, df)


# ------------------------------------------------------------------ atomic writing


def test_atomic_write_replaces_only_on_success(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with atomic_write(target, "w", encoding="utf-8") as f:
        f.write("new")
        temps = [p for p in tmp_path.iterdir() if p.name != "out.txt"]
        assert len(temps) == 1
        assert temps[0].name.startswith(".out.txt.")
        assert temps[0].suffix == ".tmp"
        assert target.read_text() == "old"  # not visible until the block ends
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
    mode = os.stat(target).st_mode & 0o777
    assert mode & 0o044  # readable by others (not mkstemp's 0600)

    with pytest.raises(RuntimeError, match="boom"), atomic_write(target, "w") as f:
        f.write("partial")
        raise RuntimeError("boom")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_writer_error_leaves_no_temp_file(tmp_path):
    class Broken:
        def to_csv(self, fh, index):
            fh.write("label\n1\n")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_table(tmp_path / "t.csv", Broken())
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_rejects_read_mode_and_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="write mode"), atomic_write(tmp_path / "x", "r"):
        pass
    with (
        pytest.raises(FileNotFoundError, match="does not exist"),
        atomic_write(tmp_path / "no" / "x.tif"),
    ):
        pass
