"""Time-lapses in the dock widget, in a real napari viewer (Qt under Xvfb, no mocks):
tracking through time, a Labels layer over T, a Tracks layer, per-frame progress, cancel,
re-tracking from an edited frame (issue 14, item 2)."""

from __future__ import annotations

import numpy as np
import pytest

napari = pytest.importorskip("napari")

from napari_sinkhorn_em import track_nuclei  # noqa: E402
from napari_sinkhorn_em._napari._reader import read_tiff  # noqa: E402
from napari_sinkhorn_em._napari.timelapse import (  # noqa: E402
    FrameProgress,
    refine_from_frame,
    time_axis_of,
)
from napari_sinkhorn_em.io import read_image, write_image  # noqa: E402
from napari_sinkhorn_em.synthetic import make_moving_worm  # noqa: E402

TIMEOUT_MS = 180_000


@pytest.fixture(scope="module")
def series():
    # 3 frames of a small head crop: 8 nuclei, (Z, Y, X) = (39, 113, 73), one channel
    return make_moving_worm(
        n_frames=3, n_nuclei=8, motion_um=1.0, n_channels=1, seed=1, x_range=(60, 75)
    )


@pytest.fixture(scope="module")
def movie(series, tmp_path_factory):
    path = tmp_path_factory.mktemp("movie") / "movie.tif"
    write_image(path, series.image, voxel_size=series.voxel_size, axes="TCZYX")
    return path


@pytest.fixture(scope="module")
def direct(series):
    return track_nuclei(
        series.image[:, 0], voxel_size=series.voxel_size, nucleus_diameter=2.7, random_state=0
    )


@pytest.fixture
def viewer_widget(make_napari_viewer, movie):
    viewer = make_napari_viewer()
    viewer.open(str(movie), plugin="napari-sinkhorn-em")
    _, widget = viewer.window.add_plugin_dock_widget("napari-sinkhorn-em", "Sinkhorn-EM nuclei")
    widget.form.set_value("nucleus_diameter", 2.7)
    widget.form.set_value("random_state", 0)
    yield viewer, widget
    widget.cancel()


def _wait(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.is_running, timeout=TIMEOUT_MS)


def _constant_per_track(labels: np.ndarray, tracks) -> None:
    """Each frame's label values are exactly the tracks with a label in that frame."""
    for t in range(labels.shape[0]):
        present = set(np.unique(labels[t]).tolist()) - {0}
        rows = tracks[(tracks.t == t) & (tracks.volume_um3 > 0)]
        assert present == set(rows.track_id.tolist()), t


def test_reader_layer_is_a_time_lapse(viewer_widget, series):
    viewer, widget = viewer_widget
    (layer,) = viewer.layers
    assert layer.data.shape == series.image[:, 0].shape and layer.metadata["time_axis"] == 0
    assert widget.time_lapse.value  # automatic: the reader marked the time axis
    assert widget.voxel_size.value == "0.8, 0.35, 0.35"  # spatial axes only
    inp = widget._input()
    assert inp.time_axis == 0 and inp.n_frames == 3 and inp.channel_axis is None
    # unticked: the layer is a 4-D stack as before (4 voxel sizes asked for)
    widget.time_lapse.value = False
    assert widget.voxel_size.value == "1, 0.8, 0.35, 0.35"


def test_time_axis_detection(make_napari_viewer):
    viewer = make_napari_viewer()
    five = viewer.add_image(np.zeros((3, 2, 5, 8, 8)), name="tczyx")
    four = viewer.add_image(np.zeros((3, 5, 8, 8)), name="tzyx")
    labelled = viewer.add_image(np.zeros((3, 8, 8)), name="tyx", axis_labels=("t", "y", "x"))
    assert time_axis_of(five, 1) == 0  # 5 axes = T + C + ZYX
    assert time_axis_of(five, 0) == 1  # C first: T is the next axis
    assert time_axis_of(four, 1) is None  # ZCYX: a stack
    assert time_axis_of(four, None) == 0  # 4 axes, no channel axis: T + ZYX
    assert time_axis_of(labelled, None) == 0  # named t
    assert time_axis_of(five, None) == 0  # 5 axes without channels: T first


def test_tracking_from_the_widget(viewer_widget, qtbot, series, direct):
    viewer, widget = viewer_widget
    reports: list = []
    widget.runner.progressed.connect(reports.append)
    widget.run()
    assert widget.is_running
    _wait(qtbot, widget)
    names = [layer.name for layer in viewer.layers]
    assert names == ["movie", "movie tracked nuclei", "movie tracks", "movie track centres"]
    labels_layer, tracks_layer, points_layer = viewer.layers[1:]
    assert isinstance(labels_layer, napari.layers.Labels)
    assert isinstance(tracks_layer, napari.layers.Tracks)
    assert labels_layer.data.shape == (3, *series.image.shape[2:])
    np.testing.assert_allclose(labels_layer.scale, (1.0, *series.voxel_size))
    # the same result as track_nuclei called directly
    np.testing.assert_array_equal(labels_layer.data, direct.labels)
    expected = direct.tracks[["track_id", "t", "z", "y", "x"]].to_numpy()
    np.testing.assert_allclose(tracks_layer.data, expected)
    np.testing.assert_array_equal(tracks_layer.features["track_id"], direct.tracks["track_id"])
    assert tracks_layer.graph == direct.graph
    _constant_per_track(np.asarray(labels_layer.data), direct.tracks)
    assert points_layer.data.shape == (len(direct.tracks), 4)
    # progress per frame: 1, 2, 3 frames done
    frames = [p.iteration for p in reports if isinstance(p, FrameProgress) and p.stage == "frame"]
    assert frames == [1, 2, 3]
    assert "tracks over 3 frames" in widget.status.value


def test_cancel_leaves_the_viewer_unchanged(viewer_widget, qtbot):
    viewer, widget = viewer_widget

    def cancel_at_first_frame(p):
        if isinstance(p, FrameProgress) and p.stage == "frame":
            widget.cancel()

    widget.runner.progressed.connect(cancel_at_first_frame)
    widget.run()
    _wait(qtbot, widget)
    assert [layer.name for layer in viewer.layers] == ["movie"]
    assert "cancelled" in widget.status.value


def test_refine_a_frame_and_re_track_forward(viewer_widget, qtbot, direct, tmp_path):
    viewer, widget = viewer_widget
    widget.run()
    _wait(qtbot, widget)
    labels_layer, tracks_layer, points_layer = viewer.layers[1:]
    before = np.array(labels_layer.data, copy=True)
    # frame 1 on screen; delete the centre of one track there
    viewer.dims.set_current_step(0, 1)
    assert widget.current_frame() == 1
    ids = points_layer.features["track_id"].to_numpy()
    t = np.rint(points_layer.data[:, 0]).astype(int)
    gone = int(ids[(t == 1)][0])
    keep = [int(i) for i in ids[t == 1] if i != gone]
    points_layer.selected_data = {int(np.flatnonzero((t == 1) & (ids == gone))[0])}
    points_layer.remove_selected()
    # "auto" is passed on as "auto": each re-tracked frame gets its own scale
    state = widget._track_state
    _, kw, _ = refine_from_frame(state.inp, state.points_layer, 1, {"nucleus_diameter": "auto"})
    assert kw["nucleus_diameter"] == "auto" and kw["reference_frame"] == 0
    assert len(kw["init"]) == len(keep)
    widget.refine()
    assert widget.is_running
    _wait(qtbot, widget)
    assert [layer.name for layer in viewer.layers][1:] == [
        "movie tracked nuclei", "movie tracks", "movie track centres",
    ]  # fmt: skip
    after = np.asarray(labels_layer.data)
    np.testing.assert_array_equal(after[0], before[0])  # frames before: unchanged
    tracks = widget._track_state.result.tracks
    # the deleted track ends at frame 0; the kept ones go on with their ids
    assert set(tracks[tracks.track_id == gone].t) == {0}
    assert gone not in np.unique(after[1:])
    assert set(keep) <= set(np.unique(after[1]).tolist())
    _constant_per_track(after, tracks)
    np.testing.assert_allclose(
        tracks_layer.data, tracks[["track_id", "t", "z", "y", "x"]].to_numpy()
    )
    # export writes the labels over T and the tracks
    paths = widget.export(tmp_path)
    assert [p.name for p in paths] == ["movie_labels.tif", "movie_tracks.csv"]
    lab = read_image(paths[0], time_series=True)
    assert lab.axes == "TZYX" and lab.voxel_size == pytest.approx((0.8, 0.35, 0.35))
    np.testing.assert_array_equal(lab.data, after)
    assert read_tiff(paths[0])[0][2] == "labels"


def test_time_lapse_of_single_planes(make_napari_viewer, qtbot, series):
    """A 2-D time-lapse layer with a singleton z axis, (T, 1, Y, X): tracked in 2-D, the
    result layers keep the layer's four axes."""
    plane = series.image[:, 0, series.image.shape[2] // 2][:, None]  # (3, 1, 113, 73)
    viewer = make_napari_viewer()
    viewer.add_image(plane, name="planes", scale=(1.0, *series.voxel_size))
    _, widget = viewer.window.add_plugin_dock_widget("napari-sinkhorn-em", "Sinkhorn-EM nuclei")
    widget.form.set_value("nucleus_diameter", 2.7)
    widget.form.set_value("random_state", 0)
    assert widget.time_lapse.value and widget.voxel_size.value == "0.8, 0.35, 0.35"
    widget.run()
    _wait(qtbot, widget)
    direct = track_nuclei(plane, voxel_size=series.voxel_size, nucleus_diameter=2.7, random_state=0)
    assert len(direct.tracks) > 0
    labels_layer, tracks_layer, points_layer = viewer.layers[1:]
    assert labels_layer.data.shape == plane.shape
    np.testing.assert_array_equal(labels_layer.data, direct.labels)
    np.testing.assert_allclose(labels_layer.scale, (1.0, *series.voxel_size))
    np.testing.assert_allclose(
        tracks_layer.data, direct.tracks[["track_id", "t", "z", "y", "x"]].to_numpy()
    )
    assert points_layer.data.shape == (len(direct.tracks), 4)
    widget.cancel()
