"""The "Sinkhorn-EM nuclei" dock widget for napari.

The widget only wires three parts to the viewer:

* :mod:`.form`: the parameter controls, generated from
  :class:`~napari_sinkhorn_em.params.SegmentationParams` (defaults, help texts);
* :mod:`.runner`: :func:`~napari_sinkhorn_em.segment_nuclei` in a thread worker, with a
  cancelable progress bar and a filter that drops reports of superseded runs;
* :mod:`.layers`: image layers -> input, result -> Labels + Points layers, edited points
  -> the ``init`` of a refit.

Actions:

* **Run** segments the selected image layer(s) and adds (or replaces) a Labels layer
  ``"<image> nuclei"`` and a Points layer ``"<image> centres"`` whose features are the
  per-nucleus table; a summary line says how many nuclei were found, whether the fit
  converged and which parameters were estimated; pipeline warnings (e.g. no nuclei) are
  shown as napari notifications.
* **Refine** re-fits warm-started from the (edited) centre points — K = number of points —
  and updates the labels in place, keeping the label edits painted since the last run
  unless "overwrite painted edits" is ticked (:func:`~napari_sinkhorn_em.pipeline.edits.
  merge_label_edits`).
* **Cancel** (also the cancel button of the napari progress bar) stops the fit at the
  next iteration and leaves the viewer unchanged.
* **Export** writes ``<name>_labels.tif``, ``<name>_nuclei.csv`` and ``<name>_params.json``
  (the parameter file the batch command accepts with ``--config``).

Time-lapses (:mod:`.timelapse`): with "time-lapse" ticked (automatic for a layer with
more axes than 3 spatial ones + the channel axis, or a reader layer with a time axis),
**Run** tracks the nuclei through time with :func:`~napari_sinkhorn_em.track_nuclei`: a
Labels layer over T (a nucleus keeps its label), a Tracks layer and the centres over T;
the progress bar counts frames; Cancel stops at the next report. **Refine** re-tracks
from the frame on screen, started at that frame's (edited) centre points; the frames
before it stay as they were and the tracks keep their ids. **Export** writes the labels
over T and ``<name>_tracks.csv``.

The widget modules are the only ones of the package that import napari and Qt.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import napari.viewer  # real import: napari resolves the annotations to inject the viewer
import numpy as np
import pandas as pd
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    LineEdit,
    PushButton,
    Select,
)
from napari.layers import Image, Labels, Points
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import QVBoxLayout, QWidget
from superqt import QCollapsible

from napari_sinkhorn_em._napari.form import ParameterForm
from napari_sinkhorn_em._napari.layers import (
    PARAMS_KEY,
    ImageInput,
    estimated_diameter,
    image_input,
    points_to_init,
    show_result,
    spatial_axes,
    update_points,
)
from napari_sinkhorn_em._napari.runner import (
    Outcome,
    Progress,
    result_summary,
)
from napari_sinkhorn_em._napari.timelapse import (
    TimeLapseInput,
    TrackingRunner,
    refine_from_frame,
    show_tracks,
    splice_tracking,
    time_axis_of,
    timelapse_input,
    tracking_kwargs,
)
from napari_sinkhorn_em.io import write_labels, write_table
from napari_sinkhorn_em.pipeline.edits import merge_label_edits
from napari_sinkhorn_em.pipeline.segment import save_params

__all__ = ["SinkhornEMWidget", "open_multichannel"]


def _file_stem(name: str) -> str:
    """A file-name-safe version of a layer name."""
    stem = re.sub(r"[^\w.-]+", "_", name).strip("._")
    return stem or "image"


@dataclass
class _State:
    """The last result shown in the viewer, for Refine and Export."""

    inp: ImageInput
    params: dict[str, Any]
    table: pd.DataFrame
    labels_layer: Labels
    points_layer: Points
    displayed: np.ndarray  # the labels array the widget last put in the layer
    centres: np.ndarray  # the centres the widget last put in the points layer
    edits: np.ndarray | None = field(default=None)  # voxels painted by the user (kept)
    diameter: float | None = None  # nucleus diameter (um) the fit used, estimated or given


@dataclass
class _TrackState:
    """The last tracking result shown in the viewer, for Refine and Export."""

    inp: TimeLapseInput
    kwargs: dict[str, Any]  # the track_nuclei keyword arguments of the run
    result: Any  # TrackingResult
    labels_layer: Labels
    tracks_layer: Any  # napari.layers.Tracks
    points_layer: Points


class SinkhornEMWidget(QWidget):
    """Dock widget that segments nuclei with Sinkhorn-EM.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer the widget is docked in (injected by napari).

    Attributes
    ----------
    form : ParameterForm
        The segmentation parameters (``form.values()`` are the keyword arguments of
        ``segment_nuclei``; ``form.set_value(name, value)`` sets one).
    runner : TrackingRunner
        The background run (progress bar: ``runner.progress_bar``).
    time_lapse : magicgui CheckBox
        Track through time (ticked automatically for a layer with a time axis).
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.runner = TrackingRunner(self)
        self.runner.progressed.connect(self._on_progress)
        self.runner.finished.connect(self._on_finished)
        self._state: _State | None = None
        self._track_state: _TrackState | None = None
        # a running tracking: ("track", None) or ("refine", (t0, point_ids, old result))
        self._tracking: tuple[str, Any] | None = None
        # the input, keyword arguments and kind (refine?) of the running segmentation
        self._pending: tuple[ImageInput, dict[str, Any], bool] | None = None
        self._auto_select = True  # pick the layers until the user chooses

        # --- input (from the layers) ------------------------------------------------
        self.image_layers = Select(
            label="image layers",
            choices=self._image_choices,
            allow_multiple=True,
            tooltip="One image layer (optionally with a channel axis), or several "
            "layers of the same shape used as channels (Ctrl/Shift-click).",
        )
        self.image_layers.native.setMaximumHeight(110)
        self.channel_axis = ComboBox(
            label="channel axis",
            choices=[("none", None)],
            tooltip="Axis of the selected layer that holds the channels "
            "(only for a single multichannel layer).",
        )
        self.voxel_size = LineEdit(
            label="voxel size (µm)",
            tooltip="Voxel size along the spatial axes (z, y, x) in micrometres, "
            "comma-separated. Prefilled from the layer scale.",
        )
        self.time_lapse = CheckBox(
            text="time-lapse: track nuclei through time",
            value=False,
            tooltip="The first axis (after a channel axis) is time: Run tracks the nuclei "
            "from frame to frame (labels over T + a Tracks layer). Ticked automatically "
            "for a layer with more axes than 3 spatial ones + channels.",
        )
        # --- parameters (generated from SegmentationParams) ---------------------------
        self.form = ParameterForm()
        # --- output options and actions ----------------------------------------------
        self.keep_previous = CheckBox(
            text="keep previous results",
            value=False,
            tooltip="Add new result layers instead of replacing the previous ones.",
        )
        self.overwrite_edits = CheckBox(
            text="refine overwrites painted edits",
            value=False,
            tooltip="Unticked: label edits painted since the last run survive Refine.",
        )
        self.run_button = PushButton(text="Run")
        self.refine_button = PushButton(text="Refine from points")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.export_folder = FileEdit(label="export folder", mode="d")
        self.export_button = PushButton(text="Export labels + table + parameters")
        self.status = Label(value="")
        #: what the last run found (nuclei, convergence, estimated parameters, warnings)
        # one part per line: a word-wrapped label gets too little height in the form
        self.summary = Label(value="")

        # the input controls head the main section, so that the label columns line up
        controls = (self.image_layers, self.channel_axis, self.voxel_size, self.time_lapse)
        for i, control in enumerate(controls):
            self.form.main.insert(i, control)
        actions = Container(
            widgets=[
                self.keep_previous,
                self.overwrite_edits,
                Container(
                    widgets=[self.run_button, self.refine_button, self.cancel_button],
                    layout="horizontal",
                    labels=False,
                ),
                self.export_folder,
                self.export_button,
                self.status,
                self.summary,
            ]
        )
        self.advanced = QCollapsible("Advanced settings")
        self.advanced.addWidget(self.form.advanced.native)
        self._containers = (self.form.main, actions)  # keep the magicgui wrappers alive
        layout = QVBoxLayout(self)
        layout.addWidget(self.form.main.native)
        layout.addWidget(self.advanced)
        layout.addWidget(actions.native)
        layout.addStretch(1)

        self.image_layers.changed.connect(self._on_user_selection)
        self.channel_axis.changed.connect(self._on_channel_axis_changed)
        self.time_lapse.changed.connect(self._prefill_voxel_size)
        self.run_button.changed.connect(self.run)
        self.refine_button.changed.connect(self.refine)
        self.cancel_button.changed.connect(self.cancel)
        self.export_button.changed.connect(self._export_clicked)
        events = self.viewer.layers.events
        events.inserted.connect(self._on_layers_changed)
        events.removed.connect(self._on_layers_changed)
        events.reordered.connect(self._on_layers_changed)
        for layer in self.viewer.layers:
            if isinstance(layer, Image):
                layer.events.name.connect(self._on_layer_renamed)
        self._on_layers_changed()

    # ----------------------------------------------------------------------------------
    # layer picker
    # ----------------------------------------------------------------------------------
    def _image_choices(self, _widget: Any = None) -> list[tuple[str, Image]]:
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Image)]

    def _on_layers_changed(self, event: Any = None) -> None:
        """Follow the viewer: refresh the choices; pick a default when nothing is chosen."""
        if event is not None and getattr(event, "type", "") == "inserted":
            layer = event.value
            if isinstance(layer, Image):
                layer.events.name.connect(self._on_layer_renamed)
        before = list(self.image_layers.value)
        previous = [layer for layer in before if layer in self.viewer.layers]
        if not previous:
            self._auto_select = True
        with self.image_layers.changed.blocked():
            self.image_layers.reset_choices()
            self.image_layers.value = self._default_selection() if self._auto_select else previous
        if list(self.image_layers.value) != before:
            # only a changed selection re-prefills (keeps a voxel size the user typed)
            self._on_selection_changed()

    def _on_user_selection(self, _value: Any = None) -> None:
        """The user picked layers: stop choosing them automatically."""
        self._auto_select = False
        self._on_selection_changed()

    def _on_layer_renamed(self, event: Any = None) -> None:
        self._on_layers_changed()

    def _default_selection(self) -> list[Image]:
        """The active image layer plus every image layer of the same shape and scale.

        A multichannel file opened as one layer per channel is thus selected whole.
        """
        images = [layer for layer in self.viewer.layers if isinstance(layer, Image)]
        if not images:
            return []
        active = self.viewer.layers.selection.active
        ref = active if isinstance(active, Image) else images[0]
        return [
            layer
            for layer in images
            if layer.data.shape == ref.data.shape
            and np.allclose(layer.scale, ref.scale)
            and not layer.rgb
        ] or [ref]

    def _on_selection_changed(self, _value: Any = None) -> None:
        layers = list(self.image_layers.value)
        if len(layers) == 1:
            layer = layers[0]
            shape = layer.data.shape
            if layer.rgb:  # napari keeps the colour axis (the last) out of layer.ndim
                self.channel_axis.choices = [(f"axis {layer.ndim} (RGB)", layer.ndim)]
                self.channel_axis.value = layer.ndim
                self.channel_axis.enabled = False
            else:
                choices: list[tuple[str, int | None]] = [("none", None)]
                choices += [(f"axis {i} (size {n})", i) for i, n in enumerate(shape)]
                guess = layer.metadata.get("channel_axis")
                if guess is None and layer.ndim == 4 and time_axis_of(layer, None) is None:
                    guess = int(np.argmin(shape[:2]))  # ZCYX or CZYX (not a TZYX time-lapse)
                self.channel_axis.choices = choices
                self.channel_axis.value = guess if guess in range(len(shape)) else None
                self.channel_axis.enabled = True
        else:
            self.channel_axis.choices = [("none (layers are the channels)", None)]
            self.channel_axis.value = None
            self.channel_axis.enabled = False
        self._auto_time_lapse()
        self._prefill_voxel_size()

    def _on_channel_axis_changed(self, _value: Any = None) -> None:
        self._auto_time_lapse()
        self._prefill_voxel_size()

    def _auto_time_lapse(self) -> None:
        """Tick "time-lapse" when the chosen layer has a time axis (untick otherwise)."""
        layers = list(self.image_layers.value)
        auto = bool(layers) and self._detected_time_axis(layers) is not None
        with self.time_lapse.changed.blocked():
            self.time_lapse.value = auto

    def _detected_time_axis(self, layers: list[Image]) -> int | None:
        ca = self.channel_axis.value if len(layers) == 1 else None
        return time_axis_of(layers[0], ca)

    def _time_axis(self, layers: list[Image]) -> int | None:
        """Time axis of the chosen layer(s) when "time-lapse" is ticked: the detected one,
        else the first axis that is not the channel axis."""
        if not self.time_lapse.value or not layers:
            return None
        found = self._detected_time_axis(layers)
        if found is not None:
            return found
        ca = self.channel_axis.value if len(layers) == 1 else None
        return 1 if ca == 0 else 0

    def _prefill_voxel_size(self, _value: Any = None) -> None:
        layers = list(self.image_layers.value)
        if not layers:
            self.voxel_size.value = ""
            return
        layer = layers[0]
        ca = self.channel_axis.value if len(layers) == 1 and not layer.rgb else None
        ta = self._time_axis(layers)
        scale = [float(layer.scale[i]) for i in spatial_axes(layer, ca) if i != ta]
        self.voxel_size.value = ", ".join(f"{s:g}" for s in scale)

    # ----------------------------------------------------------------------------------
    # running
    # ----------------------------------------------------------------------------------
    def _input(self) -> ImageInput:
        """The chosen layers and voxel size, validated (ValueError with a clear message)."""
        layers = [layer for layer in self.image_layers.value if layer in self.viewer.layers]
        ta = self._time_axis(layers)
        if ta is not None:
            ca = self.channel_axis.value if len(layers) == 1 else None
            return timelapse_input(layers, ca, self.voxel_size.value, ta)
        return image_input(layers, self.channel_axis.value, self.voxel_size.value)

    @property
    def is_running(self) -> bool:
        """True while a segmentation runs in the background."""
        return self.runner.is_running

    @property
    def last_progress(self) -> tuple[str, int, float | None] | None:
        """Last (stage, iteration, objective) reported by the running fit."""
        p = self.runner.last_progress
        return None if p is None else (p.stage, p.iteration, p.objective)

    def run(self) -> None:
        """Segment the selected image layer(s) in a background thread."""
        if self.is_running:
            return
        try:
            inp = self._input()
            kwargs = self.form.values()
        except ValueError as exc:
            show_error(f"Sinkhorn-EM: {exc}")
            return
        if isinstance(inp, TimeLapseInput):
            self._start_tracking(inp, tracking_kwargs(kwargs), None)
            return
        self._start(inp, kwargs, refine=False)

    def refine(self) -> None:
        """Re-fit warm-started from the current centre points (K = number of points);
        for a time-lapse, re-track from the frame on screen (see :meth:`refine_frame`)."""
        if self.is_running:
            return
        if self.time_lapse.value and self._track_state is not None:
            self.refine_frame()
            return
        try:
            state = self._require_state()
            inp = state.inp
            missing = [layer.name for layer in inp.layers if layer not in self.viewer.layers]
            if missing:
                raise ValueError(f"the image layer(s) of the last run were removed: {missing}")
            points = state.points_layer
            if points not in self.viewer.layers:
                raise ValueError(f"the centres layer {points.name!r} was removed")
            centres = points_to_init(points, inp)
            if len(centres) == 0:
                raise ValueError(
                    f"the points layer {points.name!r} is empty; add at least one centre"
                )
            kwargs = self.form.values()
            kwargs.update(init=centres, n_nuclei=len(centres), n_init=1)
            # refit at the scale the run estimated (and shows), not a new estimate
            if kwargs.get("nucleus_diameter") in (None, "auto") and state.diameter is not None:
                kwargs["nucleus_diameter"] = state.diameter
        except ValueError as exc:
            show_error(f"Sinkhorn-EM: {exc}")
            return
        self._start(inp, kwargs, refine=True)

    def refine_frame(self, t: int | None = None) -> None:
        """Re-track from frame ``t`` (default: the frame on screen), started at that
        frame's (edited) centre points; earlier frames and the track ids are kept."""
        if self.is_running:
            return
        try:
            state = self._track_state
            if state is None:
                raise ValueError("track the time-lapse first (Refine uses its result)")
            if state.points_layer not in self.viewer.layers:
                raise ValueError(f"the centres layer {state.points_layer.name!r} was removed")
            if t is None:
                t = self.current_frame()
            kwargs = {**tracking_kwargs(self.form.values())}
            image, kw, ids = refine_from_frame(state.inp, state.points_layer, t, kwargs)
        except ValueError as exc:
            show_error(f"Sinkhorn-EM: {exc}")
            return
        self._start_tracking(state.inp, kw, (int(t), ids, state.result), image=image)

    def current_frame(self) -> int:
        """The frame of the last tracking result shown by the viewer's time slider."""
        state = self._track_state
        if state is None:
            return 0
        point = self.viewer.dims.point
        data = state.labels_layer.world_to_data(point[-state.labels_layer.ndim :])
        return int(np.clip(np.rint(data[0]), 0, state.inp.n_frames - 1))

    def _start_tracking(
        self,
        inp: TimeLapseInput,
        kwargs: dict[str, Any],
        refine: tuple[int, np.ndarray, Any] | None,
        image: Any = None,
    ) -> None:
        kwargs = {
            **kwargs,
            "time_axis": inp.time_axis,
            "voxel_size": inp.voxel_size,
            "channel_axis": inp.channel_axis,
            "channel_names": inp.channel_names,
        }
        n_frames = inp.n_frames - (refine[0] if refine else 0)
        if self.runner.start_tracking(image or inp.array, kwargs, n_frames) is None:
            return
        self._pending = (inp, kwargs, refine is not None)
        self._tracking = ("refine", refine) if refine else ("track", None)
        self._set_busy(True, "re-tracking…" if refine else "tracking…")

    def _start(self, inp: ImageInput, kwargs: dict[str, Any], *, refine: bool) -> None:
        kwargs = {
            **kwargs,
            "voxel_size": inp.voxel_size,
            "channel_axis": inp.channel_axis,
            "channel_names": inp.channel_names,
        }
        if self.runner.start(inp.array, kwargs) is None:
            return
        self._pending = (inp, kwargs, refine)
        self._set_busy(True, "refining…" if refine else "segmenting…")

    def cancel(self) -> None:
        """Ask the running fit to stop; the viewer is left as it was."""
        if self.is_running and not self.runner.cancel_requested:
            self.runner.cancel()
            self.status.value = "cancelling…"

    def closeEvent(self, event: Any) -> None:
        """Stop a running fit when the dock widget is closed."""
        self.cancel()
        super().closeEvent(event)

    def _set_busy(self, busy: bool, text: str = "") -> None:
        self.run_button.enabled = not busy
        self.refine_button.enabled = not busy
        self.export_button.enabled = not busy
        self.cancel_button.enabled = busy
        if text:
            self.status.value = text

    def _on_progress(self, p: Progress) -> None:
        if not self.runner.cancel_requested:
            self.status.value = p.text()

    def _on_finished(self, outcome: Outcome) -> None:
        inp, kwargs, refine = self._pending or (None, {}, False)
        self._pending = None
        tracking, self._tracking = self._tracking, None
        self._set_busy(False)
        if outcome.cancelled:
            self.status.value = "cancelled; nothing changed"
            show_info("Sinkhorn-EM: cancelled, the viewer is unchanged")
            return
        messages = self._report_warnings(outcome)
        if outcome.error is not None:
            self.status.value = f"error: {outcome.error}"
            show_error(f"Sinkhorn-EM: {outcome.error}")
            return
        result = outcome.result
        if result is None or inp is None:
            return
        if tracking is not None:
            self._apply_tracking(result, inp, kwargs, tracking)
            return
        if refine:
            self._apply_refine(result)
        else:
            self._apply_run(result, inp)
        self._show_estimates(result, kwargs)
        n = len(result.table)
        self.status.value = f"{n} nuclei" + (" (refined)" if refine else "")
        self.summary.value = "\n".join(
            [result_summary(result, sep="\n", requested=kwargs)]
            + [f"warning: {m}" for m in messages]
        )
        # the summary grew by some lines: without this the dock keeps its old layout and
        # squeezes the button row (seen in the screenshot under Xvfb)
        for container in self._containers:
            container.native.adjustSize()
        self.adjustSize()

    def _report_warnings(self, outcome: Outcome) -> list[str]:
        """Show the run's warnings as napari warnings (each text once).

        UserWarnings the pipeline issued (e.g. no nuclei, far fewer than requested) and
        any texts it recorded in ``result.info["warnings"]``; other categories (library
        deprecations) are re-issued as ordinary Python warnings.
        """
        texts: list[str] = []
        for w in outcome.warnings:
            if issubclass(w.category, UserWarning):
                texts.append(str(w.message))
            else:  # e.g. a library DeprecationWarning: not the user's business here
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        info = getattr(outcome.result, "info", None) or {}
        recorded = info.get("warnings") or []
        texts += [str(t) for t in recorded] if isinstance(recorded, list | tuple) else []
        shown = list(dict.fromkeys(texts))
        for text in shown:
            show_warning(f"Sinkhorn-EM: {text}")
        return shown

    def _show_estimates(self, result: Any, requested: dict[str, Any]) -> None:
        """Put the numbers the run estimated into the greyed 'auto' boxes."""
        if requested.get("n_nuclei") in (None, "auto"):
            self.form["n_nuclei"].show_estimate(len(result.table) or 1)
        diameter = estimated_diameter(result)
        if diameter is not None and requested.get("nucleus_diameter") in (None, "auto"):
            self.form["nucleus_diameter"].show_estimate(diameter)

    # ----------------------------------------------------------------------------------
    # results into the viewer
    # ----------------------------------------------------------------------------------
    def _apply_run(self, result: Any, inp: ImageInput) -> None:
        old = self._state
        replace = None
        if (
            old is not None
            and not self.keep_previous.value
            and old.labels_layer in self.viewer.layers
            and old.points_layer in self.viewer.layers
        ):
            replace = (old.labels_layer, old.points_layer)
        labels_layer, points_layer = show_result(self.viewer, result, inp, replace=replace)
        self._state = _State(
            inp=inp,
            params=result.params,
            table=result.table.reset_index(drop=True),
            labels_layer=labels_layer,
            points_layer=points_layer,
            displayed=np.array(result.labels, copy=True),
            centres=np.array(points_layer.data, dtype=np.float64, copy=True),
            diameter=estimated_diameter(result),
        )

    def _apply_refine(self, result: Any) -> None:
        state = self._require_state()
        new = np.asarray(result.labels)
        layer = state.labels_layer
        current = np.asarray(layer.data)
        keep_edits = not self.overwrite_edits.value and current.shape == new.shape
        if keep_edits and current.shape == state.displayed.shape:
            edits = current != state.displayed
            if state.edits is not None:
                edits |= state.edits
            merged = merge_label_edits(new, current, edits)
        else:
            edits, merged = None, new
        if layer in self.viewer.layers:
            layer.data = merged
        else:  # the user deleted the labels layer: bring it back
            layer = self.viewer.add_labels(merged, name=layer.name, **state.inp.geometry())
        points = state.points_layer
        if points in self.viewer.layers:
            update_points(points, result)
        else:
            points.metadata[PARAMS_KEY] = result.params
        layer.metadata[PARAMS_KEY] = result.params
        state.labels_layer = layer
        state.params = result.params
        state.diameter = estimated_diameter(result) or state.diameter
        state.table = result.table.reset_index(drop=True)
        state.displayed = np.array(merged, copy=True)
        state.centres = np.asarray(result.centres, dtype=np.float64).reshape(-1, new.ndim).copy()
        state.edits = edits if edits is not None and edits.any() else None

    def _apply_tracking(
        self, result: Any, inp: TimeLapseInput, kwargs: dict[str, Any], tracking: tuple
    ) -> None:
        kind, refine = tracking
        old = self._track_state
        if kind == "refine" and old is not None:
            t0, ids, previous = refine
            result = splice_tracking(previous, result, t0, ids)
            kwargs = old.kwargs
        replace = None
        layers = (old.labels_layer, old.tracks_layer, old.points_layer) if old else ()
        if (
            old is not None
            and (kind == "refine" or not self.keep_previous.value)
            and all(layer in self.viewer.layers for layer in layers)
        ):
            replace = layers
        labels_layer, tracks_layer, points_layer = show_tracks(
            self.viewer, result, inp, replace=replace
        )
        self._track_state = _TrackState(
            inp, kwargs, result, labels_layer, tracks_layer, points_layer
        )
        n_tracks = int(result.tracks["track_id"].nunique()) if len(result.tracks) else 0
        frames = result.frames
        n_conv = sum(bool(f.get("converged")) for f in frames)
        done = f"re-tracked from frame {refine[0]}" if kind == "refine" else "tracked"
        self.status.value = f"{n_tracks} tracks over {len(frames)} frames ({done})"
        self.summary.value = "\n".join(
            [
                f"{n_tracks} tracks over {len(frames)} frames",
                f"fit converged in {n_conv} of {len(frames)} frames",
                f"{sum(f.get('n_iter', 0) for f in frames)} iterations in all",
            ]
        )

    def _require_state(self) -> _State:
        if self._state is None:
            raise ValueError("run the segmentation first (Refine and Export use its result)")
        return self._state

    # ----------------------------------------------------------------------------------
    # export
    # ----------------------------------------------------------------------------------
    def _export_clicked(self) -> None:
        folder = self.export_folder.value
        try:
            if folder is None or str(folder) in ("", "."):
                raise ValueError("choose an export folder first")
            paths = self.export(folder)
        except (ValueError, OSError) as exc:
            show_error(f"Sinkhorn-EM export: {exc}")
            return
        self.status.value = f"exported {len(paths)} files to {folder}"
        show_info(f"Sinkhorn-EM: wrote {', '.join(p.name for p in paths)}")

    def export(self, folder: str | Path, name: str | None = None) -> list[Path]:
        """Write the current result: labels TIFF, nucleus table CSV and parameter JSON.

        Parameters
        ----------
        folder : str or pathlib.Path
            Existing destination folder.
        name : str, optional
            File name stem; default: the image name. Files are ``<name>_labels.tif``,
            ``<name>_nuclei.csv`` and ``<name>_params.json``.

        Returns
        -------
        list of pathlib.Path
            The three written files.

        Raises
        ------
        ValueError
            If nothing was segmented yet or the result layers were removed.
        """
        if self.time_lapse.value and self._track_state is not None:
            return self._export_tracks(Path(folder), name)
        state = self._require_state()
        folder = Path(folder)
        if not folder.is_dir():
            raise ValueError(f"export folder {folder} does not exist")
        if state.labels_layer not in self.viewer.layers:
            raise ValueError(f"the labels layer {state.labels_layer.name!r} was removed")
        stem = _file_stem(name or state.inp.name)
        labels = np.asarray(state.labels_layer.data)
        # the physical voxel size the fit used (the layer scale may be uncalibrated)
        out_labels = write_labels(folder / f"{stem}_labels.tif", labels, state.inp.voxel_size)
        # the table and parameters describe the last fit, so the batch tool run with the
        # parameter file gives the same table (and the same labels, minus manual edits)
        out_table = write_table(folder / f"{stem}_nuclei.csv", state.table)
        out_params = folder / f"{stem}_params.json"
        save_params(out_params, state.params)
        edited = []
        if labels.shape != state.displayed.shape or not np.array_equal(labels, state.displayed):
            edited.append("labels were painted")
        points = np.asarray(state.points_layer.data)
        if points.shape != state.centres.shape or not np.allclose(points, state.centres):
            edited.append("centre points were edited")
        if edited or state.edits is not None:
            show_warning(
                "Sinkhorn-EM export: the labels TIFF holds your edits, but the table and "
                "parameters describe the last fit"
                + (f" ({' and '.join(edited)} since)" if edited else "")
                + "; press Refine to fit the edited centres."
            )
        return [Path(out_labels), Path(out_table), out_params]

    def _export_tracks(self, folder: Path, name: str | None) -> list[Path]:
        """Labels over T (``<name>_labels.tif``) and the tracks (``<name>_tracks.csv``)."""
        state = self._track_state
        assert state is not None
        if not folder.is_dir():
            raise ValueError(f"export folder {folder} does not exist")
        if state.labels_layer not in self.viewer.layers:
            raise ValueError(f"the labels layer {state.labels_layer.name!r} was removed")
        stem = _file_stem(name or state.inp.name)
        labels = np.asarray(state.labels_layer.data)
        out_labels = write_labels(
            folder / f"{stem}_labels.tif", labels, state.inp.voxel_size, time_axis=True
        )
        out_table = write_table(folder / f"{stem}_tracks.csv", state.result.tracks)
        return [Path(out_labels), Path(out_table)]


def open_multichannel(viewer: napari.viewer.Viewer, path: str | Path | None = None) -> list:
    """*File > IO Utilities > Open TIFF as one multichannel layer*.

    napari's *Open* splits a multichannel stack into one layer per channel; this command
    keeps the channel axis in a single layer (the widget then uses it as its channel axis).

    Parameters
    ----------
    viewer : napari.viewer.Viewer
        The viewer to add the layer to (injected by napari).
    path : str or pathlib.Path, optional
        The TIFF to open; None asks with a file dialog.

    Returns
    -------
    list of napari.layers.Layer
        The layers added (none when the dialog was cancelled or the file is unreadable).
    """
    from napari_sinkhorn_em._napari._reader import read_tiff
    from napari_sinkhorn_em.io import ImageReadError

    if path is None:
        from qtpy.QtWidgets import QFileDialog

        path, _ = QFileDialog.getOpenFileName(
            None, "Open TIFF as one multichannel layer", "", "TIFF stacks (*.tif *.tiff)"
        )
        if not path:
            return []
    try:
        layer_data = read_tiff(path, split_channels=False)
    except ImageReadError as exc:
        show_error(str(exc))
        return []
    layers = []
    for data, kwargs, layer_type in layer_data:
        layers.append(getattr(viewer, f"add_{layer_type}")(data, **kwargs))
    return layers
