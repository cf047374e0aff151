"""The "Sinkhorn-EM nuclei" dock widget for napari.

All algorithmic work is one call to :func:`napari_sinkhorn_em.segment_nuclei`, run in a
napari ``thread_worker`` so that the viewer stays responsive. The widget only wires the
viewer to it:

* **Run** segments the selected image layer(s) and adds (or replaces) a Labels layer
  ``"<image> nuclei"`` and a Points layer ``"<image> centres"`` whose features are the
  per-nucleus table.
* **Refine** re-fits warm-started from the (edited) centre points — K = number of points —
  and updates the labels in place, keeping the label edits painted since the last run
  unless "overwrite painted edits" is ticked.
* **Cancel** (also the cancel button of the napari progress bar) stops the fit at the
  next iteration and leaves the viewer unchanged.
* **Export** writes ``<name>_labels.tif``, ``<name>_nuclei.csv`` and ``<name>_params.json``
  (the parameter file the batch command accepts with ``--config``).

This is the only module of the package that imports napari and Qt.
"""

from __future__ import annotations

import inspect
import re
import threading
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
    FloatSpinBox,
    Label,
    LineEdit,
    PushButton,
    Select,
    SpinBox,
)
from napari.layers import Image, Labels, Points
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info, show_warning
from napari.utils.progress import cancelable_progress
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QVBoxLayout, QWidget
from superqt import QCollapsible

from napari_sinkhorn_em._validation import check_voxel_size
from napari_sinkhorn_em.io import write_labels, write_table
from napari_sinkhorn_em.pipeline.segment import (
    SegmentationCancelled,
    SegmentationResult,
    fit_iteration_budget,
    save_params,
    segment_nuclei,
)

__all__ = ["SinkhornEMWidget", "open_multichannel"]

_METHODS = (
    ("Sinkhorn-EM", "sinkhorn"),
    ("EM (fixed weights)", "em"),
    ("EM (learned weights)", "em-learned"),
)
_INITS = (("detected peaks", "peaks"), ("k-means++", "k-means++"), ("random voxels", "random"))


def _defaults() -> dict[str, Any]:
    """Keyword defaults of :func:`segment_nuclei`, so the widget starts where the API does."""
    return {
        name: p.default
        for name, p in inspect.signature(segment_nuclei).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def _file_stem(name: str) -> str:
    """A file-name-safe version of a layer name."""
    stem = re.sub(r"[^\w.-]+", "_", name).strip("._")
    return stem or "image"


class _Relay(QObject):
    """Carries progress reports from the worker thread to the GUI thread."""

    progressed = Signal(int, str, int, object)  # run id, stage, iteration, objective


@dataclass(frozen=True)
class _Failure:
    """A ValueError raised by the pipeline, carried back to the GUI thread as a value."""

    message: str


@dataclass
class _Input:
    """What a run segments: the chosen layers and how to turn them into one array."""

    layers: list[Image]
    channel_axis: int | None
    channel_names: list[str] | None
    voxel_size: tuple[float, ...]
    scale: tuple[float, ...]
    translate: tuple[float, ...]
    name: str
    units: tuple[str, ...] | None = None

    def array(self) -> np.ndarray:
        """The image as one array (called in the worker thread: may load lazy data)."""
        if len(self.layers) == 1:
            return np.asarray(_full_res(self.layers[0].data))
        return np.stack([np.asarray(_full_res(layer.data)) for layer in self.layers], axis=0)


@dataclass
class _State:
    """The last result shown in the viewer, for Refine and Export."""

    inp: _Input
    params: dict[str, Any]
    table: pd.DataFrame
    labels_layer: Labels
    points_layer: Points
    displayed: np.ndarray  # the labels array the widget last put in the layer
    centres: np.ndarray  # the centres the widget last put in the points layer
    edits: np.ndarray | None = field(default=None)  # voxels painted by the user (kept)


def _full_res(data: Any) -> Any:
    """Full-resolution level of (possibly multiscale) layer data."""
    return data[0] if isinstance(data, list | tuple) else data


class SinkhornEMWidget(QWidget):
    """Dock widget that segments nuclei with Sinkhorn-EM.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer the widget is docked in (injected by napari).
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        d = _defaults()
        self._worker = None
        self._pbar: cancelable_progress | None = None
        self._cancel = threading.Event()
        self._relay = _Relay()
        self._relay.progressed.connect(self._on_progress)
        self._state: _State | None = None
        self._run_id = 0
        self._auto_select = True  # pick the layers until the user chooses
        #: last (stage, iteration, objective) reported by the running fit
        self.last_progress: tuple[str, int, float | None] | None = None

        # --- input ---------------------------------------------------------------
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
        # --- main settings ---------------------------------------------------------
        n_default = d.get("n_nuclei")
        self.n_nuclei = SpinBox(
            label="number of nuclei",
            min=1,
            max=1_000_000,
            value=n_default if isinstance(n_default, int) else 100,
            tooltip="Number of nuclei to fit (used when 'auto' is unticked).",
        )
        self.n_auto = CheckBox(
            text="auto",
            value=not isinstance(n_default, int),
            tooltip="Estimate the number of nuclei from the image.",
        )
        self.n_nuclei.enabled = not self.n_auto.value
        self.n_auto.changed.connect(lambda auto: setattr(self.n_nuclei, "enabled", not auto))
        self.nucleus_diameter = FloatSpinBox(
            label="nucleus diameter (µm)",
            min=0.1,
            max=1000.0,
            step=0.1,
            value=float(d.get("nucleus_diameter", 3.0)),
            tooltip="Typical nucleus diameter; sets the peak detection scale and the "
            "bounds of the nucleus shapes.",
        )
        self.method = ComboBox(
            label="method",
            choices=list(_METHODS),
            value=d.get("method", "sinkhorn"),
            tooltip="Sinkhorn-EM (entropic optimal transport; each nucleus's weight "
            "estimated from the data), EM with the same fixed weights, or classic EM "
            "with learned weights.",
        )
        seed = d.get("random_state")
        self.seed = SpinBox(
            label="random seed",
            min=0,
            max=2**31 - 1,
            value=seed if isinstance(seed, int) else 0,
        )
        # --- advanced settings ---------------------------------------------------
        self.max_iter = SpinBox(
            label="max iterations", min=1, max=100_000, value=int(d.get("max_iter", 100))
        )
        self.tol = LineEdit(
            label="tolerance",
            value=repr(float(d.get("tol", 1e-4))),
            tooltip="Stop when the objective changes by less than this.",
        )
        self.intensity_weight = FloatSpinBox(
            label="intensity weight",
            min=0.0,
            max=1000.0,
            step=0.1,
            value=float(d.get("intensity_weight", 1.0)),
            tooltip="Weight of the channel intensities relative to position.",
        )
        self.n_neighbors = SpinBox(
            label="neighbours",
            min=1,
            max=1024,
            value=int(d.get("n_neighbors", 16)),
            tooltip="Nuclei each voxel interacts with (sparse E-step).",
        )
        init_default = d.get("init", "peaks")
        self.init = ComboBox(
            label="initialisation",
            choices=list(_INITS),
            value=init_default if isinstance(init_default, str) else "peaks",
        )
        self.n_init = SpinBox(
            label="restarts (n_init)", min=1, max=100, value=int(d.get("n_init", 1))
        )
        thr = d.get("foreground_threshold")
        self.foreground_threshold = LineEdit(
            label="foreground threshold",
            value="auto" if thr is None else repr(float(thr)),
            tooltip="'auto' or a number in normalised intensity units (0-1).",
        )
        # --- output options --------------------------------------------------------
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
        # --- actions ---------------------------------------------------------------
        self.run_button = PushButton(text="Run")
        self.refine_button = PushButton(text="Refine from points")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.export_folder = FileEdit(label="export folder", mode="d")
        self.export_button = PushButton(text="Export labels + table + parameters")
        self.status = Label(value="")

        main = Container(
            widgets=[
                self.image_layers,
                self.channel_axis,
                self.voxel_size,
                Container(
                    widgets=[self.n_nuclei, self.n_auto],
                    layout="horizontal",
                    labels=False,
                    label="number of nuclei",
                ),
                self.nucleus_diameter,
                self.method,
                self.seed,
            ]
        )
        advanced = Container(
            widgets=[
                self.max_iter,
                self.tol,
                self.intensity_weight,
                self.n_neighbors,
                self.init,
                self.n_init,
                self.foreground_threshold,
            ]
        )
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
            ]
        )
        self.advanced = QCollapsible("Advanced settings")
        self.advanced.addWidget(advanced.native)
        self._containers = (main, advanced, actions)  # keep the magicgui wrappers alive
        layout = QVBoxLayout(self)
        layout.addWidget(main.native)
        layout.addWidget(self.advanced)
        layout.addWidget(actions.native)
        layout.addStretch(1)

        self.image_layers.changed.connect(self._on_user_selection)
        self.channel_axis.changed.connect(self._prefill_voxel_size)
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
                if guess is None and layer.ndim == 4:
                    guess = int(np.argmin(shape[:2]))  # ZCYX or CZYX
                self.channel_axis.choices = choices
                self.channel_axis.value = guess if guess in range(len(shape)) else None
                self.channel_axis.enabled = True
        else:
            self.channel_axis.choices = [("none (layers are the channels)", None)]
            self.channel_axis.value = None
            self.channel_axis.enabled = False
        self._prefill_voxel_size()

    def _spatial_axes(self, layer: Image, channel_axis: int | None) -> list[int]:
        n = layer.ndim
        return [i for i in range(n) if i != channel_axis]

    def _prefill_voxel_size(self, _value: Any = None) -> None:
        layers = list(self.image_layers.value)
        if not layers:
            self.voxel_size.value = ""
            return
        layer = layers[0]
        ca = self.channel_axis.value if len(layers) == 1 and not layer.rgb else None
        scale = [float(layer.scale[i]) for i in self._spatial_axes(layer, ca)]
        self.voxel_size.value = ", ".join(f"{s:g}" for s in scale)

    # ----------------------------------------------------------------------------------
    # gathering the settings
    # ----------------------------------------------------------------------------------
    def _input(self) -> _Input:
        """Validate the layer choice and voxel size; raise ValueError with a clear message."""
        layers = [layer for layer in self.image_layers.value if layer in self.viewer.layers]
        if not layers:
            raise ValueError("select an image layer to segment")
        ref = layers[0]
        if len(layers) == 1:
            ca = self.channel_axis.value
            if ref.rgb:
                ca = ref.ndim
            names = ref.metadata.get("channel_names") if ca is not None else None
            data_shape = np.shape(_full_res(ref.data))
            if names is not None and (ca >= len(data_shape) or len(names) != data_shape[ca]):
                names = None
            spatial = self._spatial_axes(ref, None if ref.rgb else ca)
            name = ref.name
        else:
            shapes = {layer.name: tuple(np.shape(_full_res(layer.data))) for layer in layers}
            if len(set(shapes.values())) > 1:
                detail = ", ".join(f"{k!r} {v}" for k, v in shapes.items())
                raise ValueError(
                    f"the selected channel layers must all have the same shape; got {detail}"
                )
            if any(layer.rgb for layer in layers):
                raise ValueError("RGB layers cannot be combined with other layers as channels")
            ca = 0
            names = [str(layer.metadata.get("channel_name") or layer.name) for layer in layers]
            if len(set(names)) != len(names):
                names = [layer.name for layer in layers]
            spatial = list(range(ref.ndim))
            sources = {layer.metadata.get("source_name") for layer in layers}
            name = sources.pop() if len(sources) == 1 and None not in sources else ref.name
        text = self.voxel_size.value.strip()
        try:
            vs = tuple(float(v) for v in re.split(r"[,\s;]+", text) if v)
        except ValueError:
            raise ValueError(
                f"voxel size {text!r} is not a list of numbers; write e.g. '0.8, 0.35, 0.35'"
            ) from None
        vs = check_voxel_size(vs, len(spatial), name="voxel size")
        scale = tuple(float(ref.scale[i]) for i in spatial)
        translate = tuple(float(ref.translate[i]) for i in spatial)
        units = getattr(ref, "units", None)  # napari >= 0.6
        if units is not None:
            units = tuple(str(units[i]) for i in spatial)
        return _Input(list(layers), ca, names, vs, scale, translate, str(name), units)

    def _settings(self) -> dict[str, Any]:
        """Algorithm keyword arguments of segment_nuclei from the controls."""
        try:
            tol = float(self.tol.value)
        except ValueError:
            raise ValueError(f"tolerance {self.tol.value!r} is not a number") from None
        thr_text = self.foreground_threshold.value.strip().lower()
        if thr_text in ("", "auto", "none"):
            thr = None
        else:
            try:
                thr = float(thr_text)
            except ValueError:
                raise ValueError(
                    f"foreground threshold {self.foreground_threshold.value!r} is neither "
                    "'auto' nor a number"
                ) from None
        return {
            "n_nuclei": None if self.n_auto.value else int(self.n_nuclei.value),
            "nucleus_diameter": float(self.nucleus_diameter.value),
            "method": self.method.value,
            "init": self.init.value,
            "n_init": int(self.n_init.value),
            "max_iter": int(self.max_iter.value),
            "tol": tol,
            "intensity_weight": float(self.intensity_weight.value),
            "n_neighbors": int(self.n_neighbors.value),
            "foreground_threshold": thr,
            "random_state": int(self.seed.value),
        }

    # ----------------------------------------------------------------------------------
    # running
    # ----------------------------------------------------------------------------------
    @property
    def is_running(self) -> bool:
        """True while a segmentation runs in the background."""
        return self._worker is not None

    def run(self) -> None:
        """Segment the selected image layer(s) in a background thread."""
        if self.is_running:
            return
        try:
            inp = self._input()
            kwargs = self._settings()
        except ValueError as exc:
            show_error(f"Sinkhorn-EM: {exc}")
            return
        self._start(inp, kwargs, refine=False)

    def refine(self) -> None:
        """Re-fit warm-started from the current centre points (K = number of points)."""
        if self.is_running:
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
            centres = self._points_in_image_voxels(points, inp)
            if len(centres) == 0:
                raise ValueError(
                    f"the points layer {points.name!r} is empty; add at least one centre"
                )
            kwargs = self._settings()
            kwargs.update(init=centres, n_nuclei=len(centres), n_init=1)
        except ValueError as exc:
            show_error(f"Sinkhorn-EM: {exc}")
            return
        self._start(inp, kwargs, refine=True)

    def _points_in_image_voxels(self, points: Points, inp: _Input) -> np.ndarray:
        """Point coordinates converted to voxel coordinates of the segmented image."""
        data = np.asarray(points.data, dtype=np.float64)
        ndim = len(inp.scale)
        if data.ndim != 2 or (len(data) and data.shape[1] != ndim):
            raise ValueError(
                f"the points layer {points.name!r} is {points.ndim}-D but the image has "
                f"{ndim} spatial axes"
            )
        world = data * np.asarray(points.scale)[-ndim:] + np.asarray(points.translate)[-ndim:]
        return (world - np.asarray(inp.translate)) / np.asarray(inp.scale)

    def _start(self, inp: _Input, kwargs: dict[str, Any], *, refine: bool) -> None:
        self._cancel.clear()
        self.last_progress = None
        self._run_id += 1
        run_id = self._run_id
        total = fit_iteration_budget(
            method=kwargs["method"],
            init=kwargs["init"],
            max_iter=kwargs["max_iter"],
            n_init=kwargs.get("n_init", 1),
        )
        self._pbar = cancelable_progress(total=total, cancel_callback=self.cancel)
        self._pbar.set_description("Sinkhorn-EM: starting")
        relay = self._relay
        cancel = self._cancel
        pbar = self._pbar

        def report(stage: str, iteration: int, objective: float | None) -> bool:
            # worker thread: hand the numbers to the GUI thread, answer the cancel question
            relay.progressed.emit(run_id, str(stage), int(iteration), objective)
            if pbar.is_canceled:  # the cancel button of napari's progress bar
                cancel.set()
            return cancel.is_set()

        def job() -> SegmentationResult | _Failure | None:
            image = inp.array()
            try:
                return segment_nuclei(
                    image,
                    voxel_size=inp.voxel_size,
                    channel_axis=inp.channel_axis,
                    channel_names=inp.channel_names,
                    progress=report,
                    **kwargs,
                )
            except SegmentationCancelled:
                return None
            except ValueError as exc:
                # a user-facing problem: shown as a notification, not a traceback (a worker
                # re-raises exceptions it returns, so wrap it)
                return _Failure(str(exc))

        worker = create_worker(
            job,
            _connect={
                "returned": lambda res: self._on_returned(res, inp, refine),
                "errored": self._on_errored,
                "finished": self._on_finished,
            },
            _start_thread=False,
        )
        self._worker = worker
        self._set_busy(True, "refining…" if refine else "segmenting…")
        worker.start()

    def cancel(self) -> None:
        """Ask the running fit to stop; the viewer is left as it was."""
        if self.is_running and not self._cancel.is_set():
            self._cancel.set()
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

    def _on_progress(self, run_id: int, stage: str, iteration: int, objective: Any) -> None:
        pbar = self._pbar
        if run_id != self._run_id or pbar is None:
            return  # a late report of a finished run
        self.last_progress = (stage, iteration, objective)
        text = f"Sinkhorn-EM {stage}"
        if stage == "fit":
            text += f": iteration {iteration}"
            if objective is not None and np.isfinite(objective):
                text += f", objective {objective:.6g}"
        if not self._cancel.is_set():
            self.status.value = text
        # updating the bar can process events (and finish the run): do it last
        if stage == "fit":
            pbar.n = min(iteration, pbar.total)
        pbar.set_description(text)

    def _on_returned(self, result: Any, inp: _Input, refine: bool) -> None:
        if result is None or self._cancel.is_set():
            self.status.value = "cancelled; nothing changed"
            show_info("Sinkhorn-EM: cancelled, the viewer is unchanged")
            return
        if isinstance(result, _Failure):
            self.status.value = f"error: {result.message}"
            show_error(f"Sinkhorn-EM: {result.message}")
            return
        if refine:
            self._apply_refine(result)
        else:
            self._apply_run(result, inp)
        n = len(result.table)
        self.status.value = f"{n} nuclei" + (" (refined)" if refine else "")

    def _on_errored(self, exc: Exception) -> None:
        # napari's worker already shows the exception (with its traceback) as a notification
        self.status.value = f"error: {type(exc).__name__}: {exc}"

    def _on_finished(self) -> None:
        self._worker = None
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        self._set_busy(False)

    # ----------------------------------------------------------------------------------
    # results into the viewer
    # ----------------------------------------------------------------------------------
    def _points_size(self, inp: _Input) -> float:
        diameter = float(self.nucleus_diameter.value)
        return max(1.0, 0.5 * diameter / float(np.mean(inp.voxel_size[-2:])))

    def _apply_run(self, result: SegmentationResult, inp: _Input) -> None:
        labels = result.labels
        centres = np.asarray(result.centres, dtype=np.float64).reshape(-1, labels.ndim)
        table = result.table.reset_index(drop=True)
        old = self._state
        replace = (
            old is not None
            and not self.keep_previous.value
            and old.labels_layer in self.viewer.layers
            and old.points_layer in self.viewer.layers
        )
        meta = {"sinkhorn_em_params": result.params}
        geometry: dict[str, Any] = {"scale": inp.scale, "translate": inp.translate}
        if inp.units is not None:
            geometry["units"] = inp.units
        if replace:
            labels_layer, points_layer = old.labels_layer, old.points_layer
            labels_layer.data = labels
            for key, value in geometry.items():
                setattr(labels_layer, key, value)
            labels_layer.metadata.update(meta)
            # the features follow the rows of the new data
            points_layer.data = centres
            points_layer.features = table
            for key, value in geometry.items():
                setattr(points_layer, key, value)
            points_layer.size = self._points_size(inp)
            points_layer.metadata.update(meta)
        else:
            labels_layer = self.viewer.add_labels(
                labels,
                name=f"{inp.name} nuclei",
                metadata=meta,
                **geometry,
            )
            points_layer = self.viewer.add_points(
                centres,
                name=f"{inp.name} centres",
                features=table,
                size=self._points_size(inp),
                face_color="transparent",
                border_color="yellow",
                border_width=0.15,
                metadata=meta,
                **geometry,
            )
        self._state = _State(
            inp=inp,
            params=result.params,
            table=table,
            labels_layer=labels_layer,
            points_layer=points_layer,
            displayed=np.array(labels, copy=True),
            centres=centres.copy(),
        )

    def _apply_refine(self, result: SegmentationResult) -> None:
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
            layer = self.viewer.add_labels(
                merged, name=layer.name, scale=state.inp.scale, translate=state.inp.translate
            )
        table = result.table.reset_index(drop=True)
        centres = np.asarray(result.centres, dtype=np.float64).reshape(-1, new.ndim)
        points = state.points_layer
        if points in self.viewer.layers:
            points.data = centres
            points.features = table
        layer.metadata["sinkhorn_em_params"] = result.params
        points.metadata["sinkhorn_em_params"] = result.params
        state.labels_layer = layer
        state.params = result.params
        state.table = table
        state.displayed = np.array(merged, copy=True)
        state.centres = centres.copy()
        state.edits = edits if edits is not None and edits.any() else None

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


def merge_label_edits(new: np.ndarray, current: np.ndarray, edits: np.ndarray) -> np.ndarray:
    """Carry the user's painted label edits over to a re-fitted label image.

    Voxels outside ``edits`` take the new labels. Edited voxels keep the user's value:
    erased voxels stay background, and voxels painted with label ``p`` get the new label
    that overlaps most with the unedited part of ``p`` in ``current`` (so a nucleus that
    was extended by painting stays one nucleus), or a fresh label number when ``p`` has no
    unedited voxels left (a nucleus painted from scratch).

    Parameters
    ----------
    new : numpy.ndarray
        Label image of the re-fit.
    current : numpy.ndarray
        The labels as the user left them (same shape).
    edits : numpy.ndarray of bool
        Voxels the user changed.

    Returns
    -------
    numpy.ndarray
        The merged labels (dtype widened if fresh labels need it).
    """
    merged = np.array(new, copy=True)
    if not edits.any():
        return merged
    painted = current[edits]
    next_label = int(merged.max()) + 1
    mapping: dict[int, int] = {}
    for p in np.unique(painted):
        p = int(p)
        if p == 0:
            mapping[p] = 0
            continue
        unedited = (current == p) & ~edits
        under = new[unedited]
        under = under[under > 0]
        if under.size:
            ids, counts = np.unique(under, return_counts=True)
            mapping[p] = int(ids[np.argmax(counts)])
        else:
            mapping[p] = next_label
            next_label += 1
    if merged.dtype.kind in "ui" and next_label - 1 > np.iinfo(merged.dtype).max:
        merged = merged.astype(np.uint32)
    keys = np.fromiter(mapping.keys(), dtype=np.int64)
    vals = np.fromiter(mapping.values(), dtype=np.int64)
    idx = np.searchsorted(keys, painted.astype(np.int64))
    merged[edits] = vals[idx].astype(merged.dtype)
    return merged


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
