"""Time-lapse layers in the widget: track the nuclei through time with
:func:`~napari_sinkhorn_em.track_nuclei`.

* :func:`time_axis_of` says whether a layer has a time axis (automatic when the layer has
  more axes than 3 spatial ones plus the channel axis, or its metadata / axis labels
  name one) and which (the first axis that is not the channel axis: T first);
* :func:`timelapse_input` turns the chosen layer(s) into a :class:`TimeLapseInput`;
* :func:`run_tracking` is the job the runner executes in its worker thread;
* :class:`TrackingRunner` is the widget's runner, able to run a segmentation or a
  tracking (one at a time, cancelable, per-frame progress);
* :func:`show_tracks` adds (or replaces) a Labels layer over T, a napari Tracks layer
  (``track_id, t, [z,] y, x``, graph from ``parent_id``) and a Points layer of the
  centres over T (their ``track_id`` as a feature: edit them to refine a frame);
* :func:`refine_from_frame` re-tracks from one frame with edited centres and splices the
  result into the earlier one (frames before it unchanged, track ids kept).

Used only by the widget (imports napari and Qt).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from napari.layers import Image, Labels, Points, Tracks

from napari_sinkhorn_em._napari.layers import (
    PARAMS_KEY,
    ImageInput,
    full_res,
    parse_voxel_size,
    points_size,
)
from napari_sinkhorn_em._napari.runner import (
    Outcome,
    Progress,
    SegmentationRunner,
    run_guarded,
)
from napari_sinkhorn_em.pipeline.track import TrackingCancelled, TrackingResult, track_nuclei

__all__ = [
    "FrameProgress",
    "TimeLapseInput",
    "TrackingRunner",
    "refine_from_frame",
    "run_tracking",
    "show_tracks",
    "splice_tracking",
    "time_axis_of",
    "timelapse_input",
    "tracking_kwargs",
]

_TIME_LABELS = ("t", "time", "frame", "frames")


def tracking_kwargs(segment_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The widget's ``segment_nuclei`` settings that ``track_nuclei`` shares (the batch
    tool's rule: :func:`napari_sinkhorn_em.batch.parameters.tracking_kwargs`)."""
    from napari_sinkhorn_em.batch.parameters import tracking_kwargs as shared

    return shared({"segment": dict(segment_kwargs), "track": {}})


def time_axis_of(layer: Image, channel_axis: int | None) -> int | None:
    """The time axis of ``layer`` when it is recognisably a time-lapse, else None.

    A time-lapse has more axes than 3 spatial ones plus the channel axis, or says so:
    ``metadata["time_axis"]`` (this plugin's reader) or a first axis label ``t`` /
    ``time``. The time axis is the first axis that is not the channel axis (T first).
    """
    if layer.rgb:
        return None
    meta = layer.metadata.get("time_axis")
    if isinstance(meta, int) and 0 <= meta < layer.ndim and meta != channel_axis:
        return meta
    first = 1 if channel_axis == 0 else 0
    labels = [str(a).lower() for a in getattr(layer, "axis_labels", ())]
    if len(labels) > first and labels[first] in _TIME_LABELS:
        return first
    if layer.ndim - (channel_axis is not None) > 3:
        return first
    return None


@dataclass
class TimeLapseInput(ImageInput):
    """An :class:`ImageInput` with a time axis.

    Attributes
    ----------
    time_axis : int
        Time axis of the array :meth:`array` returns (``channel_axis`` is counted with
        it, as ``track_nuclei`` expects).
    time_scale, time_translate : float
        The layer's scale and translate along time (result layers get them).
    n_frames : int
    """

    time_axis: int = 0
    time_scale: float = 1.0
    time_translate: float = 0.0
    n_frames: int = 1

    def geometry(self) -> dict[str, Any]:
        """``scale``, ``translate`` (and ``units``) over (T, spatial axes)."""
        out: dict[str, Any] = {
            "scale": (self.time_scale, *self.scale),
            "translate": (self.time_translate, *self.translate),
        }
        if self.units is not None:
            out["units"] = ("pixel", *self.units)
        return out

    def frame(self, t: int) -> Callable[[], np.ndarray]:
        """Frames ``t..`` of the array (a callable, for the worker thread)."""

        def get() -> np.ndarray:
            arr = self.array()
            index = [slice(None)] * arr.ndim
            index[self.time_axis] = slice(int(t), None)
            return arr[tuple(index)]

        return get


def timelapse_input(
    layers: list[Image], channel_axis: int | None, voxel_size_text: str, time_axis: int
) -> TimeLapseInput:
    """Validate a time-lapse layer choice (ValueError with a clear message).

    Parameters
    ----------
    layers : list of napari.layers.Image
        One layer (time axis ``time_axis``, optionally a channel axis), or several
        layers of one shape used as the channels (stacked on axis 0).
    channel_axis : int or None
        Channel axis of a single layer.
    voxel_size_text : str
        One number (um) per spatial axis (time and channel axes excluded).
    time_axis : int
        Time axis of the layer(s).
    """
    if not layers:
        raise ValueError("select an image layer to track")
    ref = layers[0]
    shape = tuple(np.shape(full_res(ref.data)))
    if any(layer.rgb for layer in layers):
        raise ValueError("RGB layers cannot be tracked through time")
    if not 0 <= time_axis < len(shape):
        raise ValueError(f"time axis {time_axis} is not an axis of {ref.name!r} {shape}")
    if len(layers) == 1:
        if channel_axis == time_axis:
            raise ValueError(f"the channel axis and the time axis are the same ({time_axis})")
        ca = channel_axis
        names = ref.metadata.get("channel_names") if ca is not None else None
        if names is not None and len(names) != shape[ca]:
            names = None
        ta = time_axis
        name = ref.name
    else:
        shapes = {layer.name: tuple(np.shape(full_res(layer.data))) for layer in layers}
        if len(set(shapes.values())) > 1:
            detail = ", ".join(f"{k!r} {v}" for k, v in shapes.items())
            raise ValueError(f"the selected channel layers must have the same shape; got {detail}")
        ca, ta = 0, time_axis + 1
        names = [str(layer.metadata.get("channel_name") or layer.name) for layer in layers]
        if len(set(names)) != len(names):
            names = [layer.name for layer in layers]
        sources = {layer.metadata.get("source_name") for layer in layers}
        name = sources.pop() if len(sources) == 1 and None not in sources else ref.name
        channel_axis = None
    spatial = [i for i in range(ref.ndim) if i not in (channel_axis, time_axis)]
    if len(spatial) not in (2, 3):
        raise ValueError(
            f"{ref.name!r} {shape} with time axis {time_axis} and channel axis "
            f"{channel_axis} leaves {len(spatial)} spatial axes; need 2 or 3"
        )
    vs = parse_voxel_size(voxel_size_text, len(spatial))
    scale = tuple(float(ref.scale[i]) for i in spatial)
    translate = tuple(float(ref.translate[i]) for i in spatial)
    units = getattr(ref, "units", None)
    if units is not None:
        units = tuple(str(units[i]) for i in spatial)
    return TimeLapseInput(
        list(layers),
        ca,
        names,
        vs,
        scale,
        translate,
        str(name),
        units,
        time_axis=ta,
        time_scale=float(ref.scale[time_axis]),
        time_translate=float(ref.translate[time_axis]),
        n_frames=int(shape[time_axis]),
    )


# ---------------------------------------------------------------------------- running


@dataclass(frozen=True)
class FrameProgress(Progress):
    """A progress report of a tracking run: ``iteration`` = frames done."""

    n_frames: int = 0

    def text(self) -> str:
        """``"Tracking: frame 2/5 done"`` (or ``"... fitting frame 3/5"``)."""
        if self.stage == "frame":
            return f"Tracking: frame {self.iteration}/{self.n_frames} done"
        return f"Tracking: fitting frame {min(self.iteration + 1, self.n_frames)}/{self.n_frames}"


def run_tracking(
    run_id: int,
    image: Callable[[], np.ndarray],
    kwargs: dict[str, Any],
    report: Callable[[str, int, int], bool] | None = None,
) -> Outcome:
    """``track_nuclei(image(), **kwargs)``; never raises for a user error (as
    :func:`~napari_sinkhorn_em._napari.runner.run_segmentation`)."""
    return run_guarded(
        run_id, lambda: track_nuclei(image(), progress=report, **kwargs), TrackingCancelled
    )


class TrackingRunner(SegmentationRunner):
    """The widget's runner: segmentations as before, plus :meth:`start_tracking`."""

    def start_tracking(
        self, image: Callable[[], np.ndarray], kwargs: dict[str, Any], n_frames: int
    ) -> int | None:
        """Start a tracking run (progress bar over the frames); None while one runs."""
        n = int(n_frames)

        def progress(run_id: int) -> Callable[[str, int, int], FrameProgress]:
            return lambda stage, done, total: FrameProgress(
                run_id, str(stage), int(done), None, int(total)
            )

        return self._launch(
            run_tracking, image, kwargs, progress, total=n, description="Tracking: frame 1"
        )

    def _on_progress(self, p: Progress) -> None:
        if not isinstance(p, FrameProgress):
            super()._on_progress(p)
            return
        pbar = self.progress_bar
        if p.run_id != self._run_id or pbar is None:
            return
        self.last_progress = p
        self.progressed.emit(p)
        if p.stage == "frame":
            pbar.n = min(p.iteration, pbar.total)
        pbar.set_description(p.text())


# ---------------------------------------------------------------------------- layers


def _track_columns(tracks: pd.DataFrame) -> list[str]:
    return ["track_id", "t", *[c for c in ("z", "y", "x") if c in tracks.columns]]


def tracks_layer_data(tracks: pd.DataFrame) -> np.ndarray:
    """The ``(N, 4|5)`` data of a napari Tracks layer: ``track_id, t, [z,] y, x``."""
    return tracks[_track_columns(tracks)].to_numpy(dtype=np.float64)


def graph_of(tracks: pd.DataFrame) -> dict[int, list[int]]:
    """``{track_id: [parent_id]}`` of the tracks with a parent still in the table."""
    ids = set(tracks["track_id"].astype(int))
    first = tracks.drop_duplicates("track_id")
    return {
        int(r.track_id): [int(r.parent_id)]
        for r in first.itertuples(index=False)
        if int(r.parent_id) > 0 and int(r.parent_id) in ids
    }


def show_tracks(
    viewer: Any,
    result: TrackingResult,
    inp: TimeLapseInput,
    *,
    replace: tuple[Labels, Tracks, Points] | None = None,
) -> tuple[Labels, Tracks, Points]:
    """Show a tracking result: Labels over T, a Tracks layer and the centres over T.

    Returns
    -------
    (napari.layers.Labels, napari.layers.Tracks, napari.layers.Points)
        ``"<name> tracked nuclei"`` (value = track id in every frame), ``"<name> tracks"``
        (features: the tracks table) and ``"<name> track centres"`` (``t, [z,] y, x``;
        feature ``track_id``).
    """
    tracks = result.tracks.reset_index(drop=True)
    data = tracks_layer_data(tracks)
    graph = graph_of(tracks)
    points = data[:, 1:]
    meta = {PARAMS_KEY: result.params}
    geometry = inp.geometry()
    diameter = result.frames[result.params.get("reference_frame", 0)].get("nucleus_diameter_um")
    size = points_size(diameter, inp.voxel_size)
    if replace is not None:
        labels_layer, tracks_layer, points_layer = replace
        labels_layer.data = result.labels
        labels_layer.metadata.update(meta)
        tracks_layer.data = data
        tracks_layer.graph = graph
        tracks_layer.features = tracks
        points_layer.data = points
        points_layer.features = tracks[["track_id"]]
        return labels_layer, tracks_layer, points_layer
    labels_layer = viewer.add_labels(
        result.labels, name=f"{inp.name} tracked nuclei", metadata=meta, **geometry
    )
    tracks_layer = viewer.add_tracks(
        data, graph=graph, features=tracks, name=f"{inp.name} tracks", metadata=meta, **geometry
    )
    points_layer = viewer.add_points(
        points,
        name=f"{inp.name} track centres",
        features=tracks[["track_id"]],
        size=size,
        face_color="transparent",
        border_color="yellow",
        border_width=0.15,
        metadata=meta,
        **geometry,
    )
    return labels_layer, tracks_layer, points_layer


# ---------------------------------------------------------------------------- refine


def frame_points(points: Points, inp: TimeLapseInput, t: int) -> tuple[np.ndarray, np.ndarray]:
    """The (edited) centre points of frame ``t`` in voxel coordinates, and their track
    ids (0 for points the user added).

    Raises
    ------
    ValueError
        When the points layer does not have the time-lapse's dimensionality.
    """
    data = np.asarray(points.data, dtype=np.float64)
    nd = len(inp.scale) + 1
    if data.ndim != 2 or (len(data) and data.shape[1] != nd):
        raise ValueError(
            f"the points layer {points.name!r} is {points.ndim}-D but the time-lapse has "
            f"{nd} axes (T + {nd - 1} spatial)"
        )
    geo = inp.geometry()
    world = data * np.asarray(points.scale)[-nd:] + np.asarray(points.translate)[-nd:]
    vox = (world - np.asarray(geo["translate"])) / np.asarray(geo["scale"])
    sel = np.rint(vox[:, 0]).astype(int) == int(t)
    feats = points.features
    if "track_id" in feats and len(feats) == len(data):
        ids = feats["track_id"].fillna(0).to_numpy()
        ids = np.where(np.isfinite(ids), ids, 0).astype(np.int64)
    else:
        ids = np.zeros(len(data), dtype=np.int64)
    return vox[sel, 1:], ids[sel]


def splice_tracking(
    old: TrackingResult, new: TrackingResult, t0: int, point_ids: np.ndarray
) -> TrackingResult:
    """Frames ``< t0`` of ``old`` plus ``new`` (tracked from frame ``t0`` on, started at
    the given centres), with the ids of ``new`` mapped onto ``old``'s.

    Track ``i + 1`` of ``new`` started at point ``i``: it takes ``point_ids[i]`` when
    that is an existing track, else a fresh id; tracks ``new`` started later (new nuclei,
    division children) get fresh ids too. Parents are mapped the same way.
    """
    next_id = int(old.tracks["track_id"].max()) + 1 if len(old.tracks) else 1
    mapping: dict[int, int] = {}
    used: set[int] = set()
    for i, pid in enumerate(np.asarray(point_ids, dtype=np.int64)):
        if pid > 0 and int(pid) not in used:
            mapping[i + 1] = int(pid)
            used.add(int(pid))
    for tid in sorted(set(new.tracks["track_id"].astype(int)) - set(mapping)):
        mapping[tid] = next_id
        next_id += 1
    lut = np.zeros(max(mapping, default=0) + 1, dtype=np.int64)
    for k, v in mapping.items():
        lut[k] = v
    dtype = np.uint16 if next_id <= np.iinfo(np.uint16).max else np.uint32
    labels = np.array(old.labels, dtype=dtype, copy=True)
    new_labels = np.asarray(new.labels)
    labels[t0:] = lut[np.clip(new_labels, 0, lut.size - 1)].astype(dtype)
    tail = new.tracks.copy()
    tail["t"] = tail["t"] + t0
    tail["track_id"] = tail["track_id"].map(mapping).astype(np.int64)
    if "label" in tail:
        tail["label"] = tail["track_id"]
    tail["parent_id"] = (
        tail["parent_id"].map(lambda p: mapping.get(int(p), 0) if p > 0 else 0).astype(np.int64)
    )
    head = old.tracks[old.tracks["t"] < t0]
    # a track that continues from before t0 keeps its parent
    first_parent = head.drop_duplicates("track_id").set_index("track_id")["parent_id"]
    cont = tail["track_id"].isin(first_parent.index)
    tail.loc[cont, "parent_id"] = tail.loc[cont, "track_id"].map(first_parent).to_numpy()
    tracks = pd.concat([head, tail], ignore_index=True)
    tracks = tracks.sort_values(["track_id", "t"], kind="stable").reset_index(drop=True)
    frames = list(old.frames[:t0]) + [
        {**f, "t": int(f["t"]) + t0, "refined_from": t0} for f in new.frames
    ]
    params = {**old.params, "refined_from_frame": int(t0)}
    return TrackingResult(labels, tracks, params, frames)


def refine_from_frame(
    inp: TimeLapseInput,
    points: Points,
    t: int,
    kwargs: dict[str, Any],
) -> tuple[Callable[[], np.ndarray], dict[str, Any], np.ndarray]:
    """What to run to re-track from frame ``t`` with the edited centres of that frame.

    Returns
    -------
    image : callable
        Frames ``t..`` of the input.
    kwargs : dict
        ``track_nuclei`` keyword arguments: the given ones (``nucleus_diameter`` as
        given, "auto" included), ``reference_frame=0`` (frame ``t`` of the input),
        ``init`` = the centres.
    point_ids : numpy.ndarray
        Track id of each centre (0 = added by the user), for :func:`splice_tracking`.
    """
    if not 0 <= int(t) < inp.n_frames:
        raise ValueError(f"frame {t} is outside the {inp.n_frames} frames")
    centres, ids = frame_points(points, inp, int(t))
    if len(centres) == 0:
        raise ValueError(f"no centre points in frame {t}; add at least one")
    # "auto" stays "auto": every frame from t on gets its own scale, as in the run being
    # refined (a number here would hold one scale for all of them, wrong for an embryo
    # whose nuclei divide and shrink)
    kw = {**kwargs, "init": centres, "reference_frame": 0, "n_nuclei": len(centres)}
    return inp.frame(int(t)), kw, ids
