"""Layer conversion of the widget: image layers -> input, points -> init (napari layers,
no viewer needed)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("napari")

from napari.layers import Image, Points

from napari_sinkhorn_em._napari.layers import (
    estimated_diameter,
    image_input,
    parse_voxel_size,
    points_size,
    points_to_init,
)


def _image(**kw):
    return Image(np.zeros((4, 10, 12), np.uint16), scale=(2.0, 0.5, 0.5), translate=(1, 2, 3), **kw)


def test_points_in_their_own_frame_become_image_voxels():
    inp = image_input([_image(name="img")], None, "0.8, 0.35, 0.35")
    assert inp.voxel_size == (0.8, 0.35, 0.35) and inp.scale == (2.0, 0.5, 0.5)
    voxels = np.array([[1.0, 4.0, 6.0], [3.0, 0.0, 11.0]])
    world = voxels * inp.scale + inp.translate
    # a points layer with its own scale and translate, at the same world positions
    pts = Points(
        (world - (0.0, 1.0, -1.0)) / (1.0, 0.25, 0.5), scale=(1.0, 0.25, 0.5), translate=(0, 1, -1)
    )
    np.testing.assert_allclose(points_to_init(pts, inp), voxels)
    with pytest.raises(ValueError, match="is 2-D but the image has 3 spatial axes"):
        points_to_init(Points(np.zeros((2, 2)), name="flat"), inp)


def test_layers_as_channels_and_voxel_size_text():
    a = _image(name="w GFP", metadata={"channel_name": "GFP", "source_name": "w"})
    b = _image(name="w RFP", metadata={"channel_name": "RFP", "source_name": "w"})
    inp = image_input([a, b], 2, "0.8 0.35;0.35")  # the channel axis box is ignored
    assert inp.channel_axis == 0 and inp.channel_names == ["GFP", "RFP"] and inp.name == "w"
    assert inp.array().shape == (2, 4, 10, 12)
    assert inp.geometry()["translate"] == (1.0, 2.0, 3.0)
    with pytest.raises(ValueError, match="select an image layer"):
        image_input([], None, "1")
    with pytest.raises(ValueError, match="voxel size must have 3 entries"):
        parse_voxel_size("1, 2", 3)
    with pytest.raises(ValueError, match="voxel size values must be positive"):
        parse_voxel_size("1, -2, 3", 3)
    with pytest.raises(ValueError, match="looks like metres"):
        parse_voxel_size("0.8e-6, 0.35e-6, 0.35e-6", 3)


def test_the_estimated_diameter_is_preferred_and_sizes_the_points():
    given = SimpleNamespace(info={}, params={"nucleus_diameter": 3.0})
    estimated = SimpleNamespace(
        info={"nucleus_diameter_um": 2.2}, params={"nucleus_diameter": "auto"}
    )
    unknown = SimpleNamespace(info={}, params={"nucleus_diameter": "auto"})
    assert estimated_diameter(given) == 3.0
    assert estimated_diameter(estimated) == 2.2
    assert estimated_diameter(unknown) is None
    assert points_size(2.2, (0.8, 0.5, 0.5)) == pytest.approx(2.2)
    assert points_size(1.0, (0.8, 1.0, 1.0)) == 1.0  # at least one voxel
