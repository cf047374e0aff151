"""The Sinkhorn-EM dock widget in a real napari viewer (Qt under Xvfb, no mocks)."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

napari = pytest.importorskip("napari")

from napari.utils.notifications import notification_manager  # noqa: E402
from qtpy.QtCore import QTimer  # noqa: E402

from napari_sinkhorn_em._napari._reader import read_tiff  # noqa: E402
from napari_sinkhorn_em._napari._sample_data import sample_path  # noqa: E402
from napari_sinkhorn_em._napari.runner import STAGES, Outcome, Progress  # noqa: E402
from napari_sinkhorn_em._napari.widget import SinkhornEMWidget  # noqa: E402
from napari_sinkhorn_em.evaluation.metrics import match_centres  # noqa: E402
from napari_sinkhorn_em.io import read_image  # noqa: E402
from napari_sinkhorn_em.pipeline.segment import load_params  # noqa: E402

VOXEL = (0.8, 0.35, 0.35)
CHANNELS = ["mNeptune2.5", "CyOFP1", "mTagBFP2", "pan-nuclear"]
FIT_TIMEOUT_MS = 120_000


@pytest.fixture
def viewer_widget(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-sinkhorn-em", "worm_head")
    # as a user opens it: napari builds the widget from the manifest (with its viewer proxy)
    _, widget = viewer.window.add_plugin_dock_widget("napari-sinkhorn-em", "Sinkhorn-EM nuclei")
    yield viewer, widget
    # never leave a worker thread behind
    widget.cancel()


def _wait(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.is_running, timeout=FIT_TIMEOUT_MS)


def _truth_centres() -> np.ndarray:
    with sample_path("worm_head_centres.csv") as p:
        return pd.read_csv(p)[["z", "y", "x"]].to_numpy()


def _n_labels(labels) -> int:
    ids = np.unique(np.asarray(labels))
    return int((ids > 0).sum())


def _last_message() -> str:
    return str(notification_manager.records[-1].message) if notification_manager.records else ""


# ---------------------------------------------------------------------------------------
# the picker and settings (no fit)
# ---------------------------------------------------------------------------------------


def test_picker_follows_viewer_and_prefills_voxel_size(viewer_widget):
    viewer, widget = viewer_widget
    # the sample's four channel layers are chosen together, voxel size from their scale
    assert [layer.name for layer in widget.image_layers.value] == [
        f"worm_head {c}" for c in CHANNELS
    ]
    assert widget.voxel_size.value == "0.8, 0.35, 0.35"
    assert not widget.channel_axis.enabled
    inp = widget._input()
    assert inp.channel_axis == 0 and inp.channel_names == CHANNELS and inp.name == "worm_head"
    assert inp.array().shape == (4, 39, 89, 135)

    extra = viewer.add_image(np.ones((20, 30)), name="other", scale=(0.5, 0.25))
    assert extra in widget.image_layers.choices
    extra.name = "renamed"
    shown = widget.image_layers.native
    assert "renamed" in [shown.item(i).text() for i in range(shown.count())]
    widget.image_layers.value = [extra]
    assert widget.voxel_size.value == "0.5, 0.25"
    widget.voxel_size.value = "0.6, 0.3"  # an edit is kept while layers come and go
    viewer.add_points(np.zeros((1, 2)))
    assert widget.voxel_size.value == "0.6, 0.3"
    viewer.layers.remove(extra)
    assert extra not in widget.image_layers.choices


def test_widget_from_the_plugin_menu_picks_the_sample_channels(make_napari_viewer):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-sinkhorn-em", "Sinkhorn-EM nuclei")
    assert isinstance(widget, SinkhornEMWidget)
    assert widget.image_layers.value == [] and widget.voxel_size.value == ""
    viewer.open_sample("napari-sinkhorn-em", "worm_head")
    assert [layer.name for layer in widget.image_layers.value] == [
        f"worm_head {c}" for c in CHANNELS
    ]
    # once the user has chosen, new layers do not change the choice
    widget.image_layers.value = [viewer.layers[1]]
    viewer.add_image(np.zeros((39, 89, 135), np.uint16), scale=VOXEL, name="more")
    assert widget.image_layers.value == [viewer.layers[1]]


def test_single_multichannel_layer_uses_its_channel_axis(make_napari_viewer):
    viewer = make_napari_viewer()
    with sample_path("worm_head.tif") as p:
        [(data, kwargs, _)] = read_tiff(p, split_channels=False)
    viewer.add_image(data, **kwargs)
    widget = SinkhornEMWidget(viewer)
    assert widget.channel_axis.enabled and widget.channel_axis.value == 0
    assert widget.voxel_size.value == "0.8, 0.35, 0.35"
    inp = widget._input()
    assert inp.channel_axis == 0 and inp.channel_names == CHANNELS
    assert inp.scale == pytest.approx(VOXEL) and inp.array().shape == data.shape

    rgb = viewer.add_image(np.zeros((10, 12, 3), np.uint8), rgb=True, name="rgb", scale=(0.5, 0.4))
    widget.image_layers.value = [rgb]
    assert widget.channel_axis.value == 2 and not widget.channel_axis.enabled
    assert widget.voxel_size.value == "0.5, 0.4"
    inp = widget._input()
    assert inp.channel_axis == 2 and inp.scale == pytest.approx((0.5, 0.4))


def test_bad_settings_become_notifications(viewer_widget):
    viewer, widget = viewer_widget
    n_layers = len(viewer.layers)
    widget.voxel_size.value = "0.8, abc, 0.35"
    widget.run_button.native.click()
    assert not widget.is_running
    assert "voxel size '0.8, abc, 0.35' is not a list of numbers" in _last_message()
    widget.voxel_size.value = "0.8, 0.35"
    widget.run()
    assert "voxel size must have 3 entries" in _last_message()
    widget.voxel_size.value = "0.8, 0.35, 0.35"
    widget.image_layers.value = [viewer.layers[0], viewer.add_image(np.ones((5, 5)), name="2d")]
    widget.run()
    assert "must all have the same shape" in _last_message()
    widget.refine()
    assert "run the segmentation first" in _last_message()
    assert len(viewer.layers) == n_layers + 1  # only the 2-D image we added


# ---------------------------------------------------------------------------------------
# fitting
# ---------------------------------------------------------------------------------------


def test_run_refine_export_on_sample(viewer_widget, qtbot, tmp_path):
    """Run -> accuracy and layers; delete k points + erase voxels -> Refine; Export."""
    viewer, widget = viewer_widget
    ticks = {"running": 0}

    def tick():
        if widget.is_running:
            ticks["running"] += 1

    timer = QTimer()
    timer.timeout.connect(tick)
    timer.start(5)
    stages = []
    widget.runner.progressed.connect(lambda p: stages.append(p.stage))
    widget.run_button.native.click()
    assert widget.is_running  # returned at once: the fit runs in a worker thread
    _wait(qtbot, widget)
    timer.stop()
    # the Qt event loop kept processing while the fit ran
    assert ticks["running"] >= 3
    # per-stage progress, in pipeline order, every stage reported
    assert list(dict.fromkeys(stages)) == list(STAGES)
    assert widget.runner.progress_bar is None  # closed

    labels = viewer.layers["worm_head nuclei"]
    points = viewer.layers["worm_head centres"]
    assert isinstance(labels, napari.layers.Labels) and isinstance(points, napari.layers.Points)
    assert labels.data.shape == (39, 89, 135)
    np.testing.assert_allclose(labels.scale, VOXEL, rtol=1e-6)
    np.testing.assert_allclose(points.scale, VOXEL, rtol=1e-6)
    np.testing.assert_allclose(labels.translate, viewer.layers[0].translate)
    # table columns as point features, one row per point, label ids present in the labels
    for col in ["label", "z", "y", "x", "z_um", "volume_um3", "mean_pan-nuclear"]:
        assert col in points.features.columns
    k_before = len(points.data)
    assert len(points.features) == k_before == _n_labels(labels.data)
    assert set(points.features["label"]) == set(np.unique(labels.data)) - {0}
    match = match_centres(points.data, _truth_centres(), max_distance=1.5, voxel_size=VOXEL)
    assert match.f1 >= 0.9, match.summary()
    assert widget.last_progress is not None
    assert widget.status.value == f"{k_before} nuclei"
    # the summary: nuclei found, convergence, what was estimated; the estimate is shown
    # in the greyed number box
    params = labels.metadata["sinkhorn_em_params"]
    summary = widget.summary.value
    lines = summary.splitlines()
    assert lines[0] == f"{k_before} nuclei (number estimated)"
    assert lines[1].startswith("fit converged in ")
    assert "threshold" in summary and "(auto)" in summary
    if params["nucleus_diameter"] == "auto":  # the default: estimated from the image
        assert re.search(r"nucleus diameter [0-9.]+ µm \(estimated\)", summary), summary
    else:
        assert f"nucleus diameter {params['nucleus_diameter']:.3g} µm" in summary
    n_control = widget.form["n_nuclei"]
    assert n_control.auto.value and n_control.box.value == k_before

    # the user deletes k centres and erases a small block of one nucleus by hand
    k = 4
    points.selected_data = set(range(k))
    points.remove_selected()
    zc, yc, xc = np.round(points.data[10]).astype(int)
    block = (slice(zc, zc + 1), slice(yc, yc + 2), slice(xc, xc + 2))
    edited = np.array(labels.data, copy=True)
    assert (edited[block] > 0).any()
    edited[block] = 0
    labels.data = edited

    widget.refine_button.native.click()
    _wait(qtbot, widget)
    assert viewer.layers["worm_head nuclei"] is labels  # updated in place
    assert len(viewer.layers) == 6
    assert len(points.data) == k_before - k
    assert _n_labels(labels.data) == k_before - k
    assert (labels.data[block] == 0).all()  # the painted edit survived the refit
    params = labels.metadata["sinkhorn_em_params"]
    assert params["n_nuclei"] == k_before - k
    assert np.asarray(params["init"]).shape == (k_before - k, 3)

    # export: labels TIFF + table CSV + parameter JSON the batch tool accepts
    paths = widget.export(tmp_path)
    assert [p.name for p in paths] == [
        "worm_head_labels.tif",
        "worm_head_nuclei.csv",
        "worm_head_params.json",
    ]
    img = read_image(paths[0])
    np.testing.assert_array_equal(img.data, labels.data)
    np.testing.assert_allclose(img.voxel_size, VOXEL, rtol=1e-6)
    table = pd.read_csv(paths[1])
    assert len(table) == k_before - k
    assert set(table["label"]) == set(np.unique(labels.data)) - {0}
    loaded = load_params(paths[2])
    assert loaded["n_nuclei"] == k_before - k
    assert loaded["voxel_size"] == pytest.approx(VOXEL)
    assert json.loads(paths[2].read_text())["parameters"]["method"] == widget.form.value("method")
    # the hand-erased voxels are in the TIFF; the user is told the table is the fit's
    assert (img.data[block] == 0).all()
    assert "table and parameters describe the last fit" in _last_message()


def test_rerun_replaces_results_unless_kept_and_overwrite_refine(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    with sample_path("worm_head.tif") as p:
        [(data, kwargs, _)] = read_tiff(p, split_channels=False)
    # a 14 um long crop keeps the fits short
    viewer.add_image(data[..., :40], **{**kwargs, "name": "crop"})
    widget = SinkhornEMWidget(viewer)
    widget.run()
    _wait(qtbot, widget)
    labels, points = viewer.layers["crop nuclei"], viewer.layers["crop centres"]
    k = len(points.data)
    assert k == _n_labels(labels.data) > 5

    # a painted edit is dropped when Refine is told to overwrite
    nucleus = labels.data == labels.data[tuple(np.round(points.data[0]).astype(int))]
    edited = np.array(labels.data, copy=True)
    edited[nucleus] = 0
    labels.data = edited
    widget.overwrite_edits.value = True
    widget.refine()
    _wait(qtbot, widget)
    assert _n_labels(labels.data) == k
    assert labels.data[nucleus].any()

    widget.form.set_value("n_nuclei", k - 2)
    assert not widget.form["n_nuclei"].auto.value and widget.form["n_nuclei"].box.enabled
    widget.run()
    _wait(qtbot, widget)
    assert [layer.name for layer in viewer.layers] == ["crop", "crop nuclei", "crop centres"]
    assert viewer.layers["crop nuclei"] is labels
    assert len(points.data) == k - 2 == _n_labels(labels.data)
    widget.keep_previous.value = True
    widget.run()
    _wait(qtbot, widget)
    assert len(viewer.layers) == 5
    assert sum(isinstance(layer, napari.layers.Labels) for layer in viewer.layers) == 2


def test_two_dimensional_uncalibrated_plane(make_napari_viewer, qtbot, tmp_path):
    viewer = make_napari_viewer()
    with sample_path("worm_head.tif") as p:
        [(data, _, _)] = read_tiff(p, split_channels=False)
    meta = {"channel_axis": 0, "channel_names": CHANNELS}
    viewer.add_image(data[:, 30], name="plane", metadata=meta)  # no calibration: scale 1
    widget = SinkhornEMWidget(viewer)
    assert widget.channel_axis.value == 0
    assert widget.voxel_size.value == "1, 1"
    widget.voxel_size.value = "0.35, 0.35"  # the user types the pixel size
    widget.run()
    _wait(qtbot, widget)
    labels, points = viewer.layers["plane nuclei"], viewer.layers["plane centres"]
    assert labels.data.shape == (89, 135)
    np.testing.assert_allclose(labels.scale, (1.0, 1.0))  # overlays the image
    assert points.data.shape[1] == 2
    assert "z" not in points.features.columns and "mean_CyOFP1" in points.features.columns
    np.testing.assert_allclose(points.features["x_um"], points.features["x"] * 0.35)
    assert len(points.data) == _n_labels(labels.data) >= 5
    # the exported TIFF carries the physical pixel size the fit used
    tif = widget.export(tmp_path)[0]
    assert tif.name == "plane_labels.tif"
    np.testing.assert_allclose(read_image(tif).voxel_size, (0.35, 0.35), rtol=1e-6)


def test_grey_rgba_image_layer_is_segmented(make_napari_viewer, qtbot):
    # a grey image saved as RGBA (as PNG files often are): napari opens it as an RGB
    # layer, whose colour axis the widget takes as channels; the alpha channel carries
    # no signal and G, B copy R: they are left out (with a note), not refused
    from napari_sinkhorn_em.synthetic import make_nuclei_field_2d

    w = make_nuclei_field_2d(seed=1)
    grey = np.moveaxis(np.asarray(w.image), w.channel_axis, -1)[..., 0]
    grey = (255.0 * grey / grey.max()).astype(np.uint8)
    rgba = np.stack([grey, grey, grey, np.full_like(grey, 255)], axis=-1)
    viewer = make_napari_viewer()
    layer = viewer.add_image(rgba, name="png", rgb=True)
    assert layer.rgb
    widget = SinkhornEMWidget(viewer)
    widget.voxel_size.value = ", ".join(str(v) for v in w.voxel_size)
    widget.run()
    _wait(qtbot, widget)
    labels, points = viewer.layers["png nuclei"], viewer.layers["png centres"]
    assert labels.data.shape == grey.shape
    m = match_centres(points.data, w.centres, max_distance=0.25 * 25.0, voxel_size=w.voxel_size)
    assert m.recall >= 0.95 and m.precision >= 0.95, m.summary()
    assert "no signal" in widget.summary.value and "copy an earlier channel" in widget.summary.value


def test_single_plane_stack_layer_is_segmented(make_napari_viewer, qtbot):
    # a (1, Y, X) layer (one plane saved as a stack): segmented in 2-D, labels (1, Y, X)
    from napari_sinkhorn_em.synthetic import make_nuclei_field_2d

    w = make_nuclei_field_2d(seed=1)
    grey = np.moveaxis(np.asarray(w.image), w.channel_axis, -1)[..., 0]
    viewer = make_napari_viewer()
    viewer.add_image(grey[None], name="plane", scale=(2.0, *w.voxel_size))
    widget = SinkhornEMWidget(viewer)
    assert widget.voxel_size.value == "2, 1, 1"
    widget.run()
    _wait(qtbot, widget)
    labels, points = viewer.layers["plane nuclei"], viewer.layers["plane centres"]
    assert labels.data.shape == (1, *grey.shape)
    assert points.data.shape[1] == 3 and np.all(points.data[:, 0] == 0)
    assert len(points.data) == _n_labels(labels.data) >= 0.9 * len(w.centres)
    assert "one plane along axis 0" in widget.summary.value


def test_cancel_returns_promptly_and_leaves_viewer_unchanged(viewer_widget, qtbot):
    viewer, widget = viewer_widget
    before = [layer.name for layer in viewer.layers]
    widget.form.set_value("n_nuclei", 75)
    widget.form.set_value("max_iter", 100_000)
    widget.form["tol"].box.value = "0"  # never converges: only Cancel ends this fit
    widget.run()
    qtbot.waitUntil(
        lambda: widget.last_progress is not None and widget.last_progress[0] == "fit",
        timeout=FIT_TIMEOUT_MS,
    )
    widget.cancel_button.native.click()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=5_000)
    assert [layer.name for layer in viewer.layers] == before
    assert "cancelled" in widget.status.value

    # the cancel button of napari's progress bar (activity panel) does the same
    widget.run()
    qtbot.waitUntil(
        lambda: widget.last_progress is not None and widget.last_progress[0] == "fit",
        timeout=FIT_TIMEOUT_MS,
    )
    widget.runner.progress_bar.cancel()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=5_000)
    assert [layer.name for layer in viewer.layers] == before


def test_errors_from_the_pipeline_are_notifications(viewer_widget, qtbot):
    viewer, widget = viewer_widget
    before = [layer.name for layer in viewer.layers]
    const = viewer.add_image(np.full((8, 20, 20), 7, np.uint16), name="flat", scale=VOXEL)
    widget.image_layers.value = [const]
    widget.run()
    _wait(qtbot, widget)
    assert [layer.name for layer in viewer.layers] == [*before, "flat"]
    assert widget.status.value.startswith("error:")
    assert "image is constant" in _last_message()


def test_exported_parameters_give_the_same_result_in_batch(make_napari_viewer, qtbot, tmp_path):
    """GUI -> Export -> ``segment --config``: the batch tool reproduces the widget's result."""
    from napari_sinkhorn_em.batch import build_parameters, run_batch
    from napari_sinkhorn_em.io import write_image

    viewer = make_napari_viewer()
    with sample_path("worm_head.tif") as p:
        [(data, kwargs, _)] = read_tiff(p, split_channels=False)
    crop = np.ascontiguousarray(data[..., :40])
    viewer.add_image(crop, **{**kwargs, "name": "crop"})
    widget = SinkhornEMWidget(viewer)
    # a start that depends on the seed, so the seed must travel with the parameters
    widget.form.set_value("init", "k-means++")
    widget.form.set_value("random_state", 5)
    widget.run()
    _wait(qtbot, widget)
    gui_labels = np.asarray(viewer.layers["crop nuclei"].data)
    assert _n_labels(gui_labels) > 5
    (tmp_path / "gui").mkdir()
    params_json = widget.export(tmp_path / "gui")[2]

    stack = tmp_path / "stacks" / "crop.tif"
    stack.parent.mkdir()
    write_image(stack, crop, voxel_size=VOXEL, axes="CZYX", channel_names=CHANNELS)
    out = tmp_path / "batch"
    params = build_parameters(load_params(params_json))
    report = run_batch([stack], out, parameters=params, progress_bar=False)
    assert report.ok == ["crop"], report.errors
    np.testing.assert_array_equal(read_image(out / "crop_labels.tif").data, gui_labels)
    gui_table = pd.read_csv(tmp_path / "gui" / "crop_nuclei.csv")
    pd.testing.assert_frame_equal(pd.read_csv(out / "crop_nuclei.csv"), gui_table)


def test_open_as_one_multichannel_layer(make_napari_viewer, tmp_path):
    """File > IO Utilities > Open TIFF as one multichannel layer (channel axis kept)."""
    from napari_sinkhorn_em._napari.widget import open_multichannel

    viewer = make_napari_viewer()
    with sample_path("worm_head.tif") as p:
        [layer] = open_multichannel(viewer, p)
    assert len(viewer.layers) == 1 and layer.data.shape == (4, 39, 89, 135)
    assert layer.metadata["channel_axis"] == 0  # first: spatial axes align with results
    np.testing.assert_allclose(layer.scale[1:], VOXEL, rtol=1e-6)
    widget = SinkhornEMWidget(viewer)  # the widget takes the kept axis as its channel axis
    assert widget.channel_axis.value == 0
    # an unreadable file is a notification naming it, and adds nothing
    bad = tmp_path / "notes.tif"
    bad.write_text("not an image")
    assert open_multichannel(viewer, bad) == []
    assert len(viewer.layers) == 1
    assert "notes.tif" in _last_message()


def test_multichannel_open_is_in_the_file_menu(make_napari_viewer):
    """The command is in napari's File > IO Utilities menu and gets the viewer injected."""
    from napari._app_model import get_app_model

    viewer = make_napari_viewer()
    app = get_app_model()
    command = "napari-sinkhorn-em.open_multichannel"
    menu_ids = {
        item.command.id
        for item in app.menus.get_menu("napari/file/io_utilities")
        if hasattr(item, "command")
    }
    assert command in menu_ids
    # napari resolves the command's annotations and injects the current viewer
    from napari_sinkhorn_em._napari.widget import open_multichannel

    injected = app.injection_store.inject(open_multichannel)
    with sample_path("worm_head.tif") as p:
        injected(path=p)
    assert [layer.data.shape for layer in viewer.layers] == [(4, 39, 89, 135)]


def _crop_viewer(make_napari_viewer, width=40):
    viewer = make_napari_viewer()
    with sample_path("worm_head.tif") as p:
        [(data, kwargs, _)] = read_tiff(p, split_channels=False)
    viewer.add_image(np.ascontiguousarray(data[..., :width]), **{**kwargs, "name": "crop"})
    return viewer, SinkhornEMWidget(viewer)


def test_summary_says_when_the_fit_did_not_converge(make_napari_viewer, qtbot):
    viewer, widget = _crop_viewer(make_napari_viewer)
    widget.form.set_value("max_iter", 2)
    widget.form.set_value("nucleus_diameter", 2.8)
    widget.run()
    _wait(qtbot, widget)
    params = viewer.layers["crop nuclei"].metadata["sinkhorn_em_params"]
    assert params["max_iter"] == 2
    k = len(viewer.layers["crop centres"].data)
    assert widget.summary.value.splitlines()[:3] == [
        f"{k} nuclei (number estimated)",
        "fit did NOT converge in 2 iterations (raise max iterations)",
        "nucleus diameter 2.8 µm",  # given, not estimated
    ]
    assert "(estimated)" not in widget.summary.value


def test_reports_of_a_superseded_run_are_dropped(make_napari_viewer, qtbot):
    viewer, widget = _crop_viewer(make_napari_viewer)
    runner = widget.runner
    widget.run()
    _wait(qtbot, widget)
    first = runner.run_id
    labels = np.array(viewer.layers["crop nuclei"].data, copy=True)
    outcomes = []
    runner.finished.connect(outcomes.append)
    widget.form.set_value("n_nuclei", 3)
    widget.run()
    assert runner.run_id == first + 1
    # late signals of the first run, as its worker thread would deliver them now
    runner._relay.emit(Progress(first, "fit", 99, -1.0))
    assert runner.last_progress is None or runner.last_progress.run_id == first + 1
    runner._on_returned(Outcome(first, error="stale"))
    assert outcomes == [] and widget.is_running  # dropped: the second run goes on
    _wait(qtbot, widget)
    assert [o.run_id for o in outcomes] == [first + 1] and outcomes[0].result is not None
    assert _n_labels(viewer.layers["crop nuclei"].data) == 3
    assert not np.array_equal(viewer.layers["crop nuclei"].data, labels)


def test_pipeline_warnings_reach_the_user(make_napari_viewer, qtbot):
    """A run that finds no nuclei: the pipeline's warning is a napari notification and a
    summary line, and the empty result is shown (empty layers), not an error."""
    viewer, widget = _crop_viewer(make_napari_viewer)
    # every label is smaller than 1000 nominal nucleus volumes: all are removed
    widget.form.set_value("min_size", 1000.0)
    n_records = len(notification_manager.records)
    widget.run()
    _wait(qtbot, widget)
    assert _n_labels(viewer.layers["crop nuclei"].data) == 0
    assert len(viewer.layers["crop centres"].data) == 0
    assert widget.status.value == "0 nuclei"
    new = [str(r.message) for r in notification_manager.records[n_records:]]
    warned = [m for m in new if m.startswith("Sinkhorn-EM: ")]
    assert len(warned) == 1 and "no nuclei" in warned[0], new
    lines = widget.summary.value.splitlines()
    assert lines[0] == "0 nuclei (number estimated)"
    assert lines[-1] == "warning: " + warned[0].removeprefix("Sinkhorn-EM: ")


def test_run_warnings_become_notifications_once(make_napari_viewer, qtbot):
    """The display half of the warning path: UserWarnings of a run (and texts the pipeline
    recorded in ``info["warnings"]``) are napari notifications and summary lines, each
    once; other categories are re-issued as Python warnings."""
    import warnings

    from napari_sinkhorn_em._napari.runner import run_segmentation

    viewer, widget = _crop_viewer(make_napari_viewer, width=30)
    inp = widget._input()
    kwargs = {**widget.form.values(), "voxel_size": inp.voxel_size, "channel_axis": 0}
    outcome = run_segmentation(7, inp.array, kwargs)
    assert outcome.result is not None and outcome.warnings == []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.warn("only 3 nuclei found, 40 requested", UserWarning, stacklevel=1)
        warnings.warn("only 3 nuclei found, 40 requested", UserWarning, stacklevel=1)
        warnings.warn("old API", DeprecationWarning, stacklevel=1)
    outcome.warnings = list(caught)
    outcome.result.info["warnings"] = ["the fit did not converge"]
    n_records = len(notification_manager.records)
    with pytest.warns(DeprecationWarning, match="old API"):
        shown = widget._report_warnings(outcome)
    assert shown == ["only 3 nuclei found, 40 requested", "the fit did not converge"]
    new = [str(r.message) for r in notification_manager.records[n_records:]]
    assert new == [f"Sinkhorn-EM: {t}" for t in shown]
    assert len(viewer.layers) == 1  # reporting alone changes no layer
