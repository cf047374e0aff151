"""napari reader for TIFF, OME-TIFF and ImageJ hyperstacks.

The reader turns a file into napari layer data with the voxel size (micrometres) from
the file's metadata as the layer ``scale``. By default a multichannel image is split into
one layer per channel (named after the channel, additive blending, one colour each).
:func:`read_tiff` with ``split_channels=False`` keeps the channel axis in a single layer
instead (the widget reads the axis from the layer metadata), e.g. in napari's console::

    from napari_sinkhorn_em._napari._reader import read_tiff
    for data, kwargs, _ in read_tiff("worm.tif", split_channels=False):
        viewer.add_image(data, **kwargs)

This module imports neither napari nor Qt: it returns plain ``(data, kwargs, type)``
tuples.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np

from napari_sinkhorn_em.io import ImageData, read_image

__all__ = ["contrast_limits", "get_reader", "image_layer_data", "is_label_file", "read_tiff"]

LayerData = tuple[Any, dict[str, Any], str]
PathLike = str | os.PathLike

#: Colormaps cycled over channel layers (NeuroPAL-like order for 4 channels).
CHANNEL_COLORMAPS = ("red", "green", "blue", "gray", "magenta", "cyan", "yellow")

_TIFF_SUFFIXES = (".tif", ".tiff")


@functools.cache
def _layer_units_supported() -> bool:
    """True when the installed napari accepts a ``units`` layer argument (napari >= 0.6)."""
    try:
        major, minor = (int(x) for x in version("napari").split(".")[:2])
    except (PackageNotFoundError, ValueError):
        return False
    return (major, minor) >= (0, 6)


def contrast_limits(data: np.ndarray, *, max_samples: int = 2_000_000) -> tuple[float, float]:
    """Display range from robust percentiles (0.1 and 99.95) of a strided sample of ``data``.

    A few very bright voxels (e.g. autofluorescent granules) otherwise squeeze the
    nuclei into the dark end of the colormap.

    Parameters
    ----------
    data : numpy.ndarray
        The channel's pixels.
    max_samples : int
        At most about this many voxels are looked at.

    Returns
    -------
    (float, float)
        Low and high limits, high > low.
    """
    flat = np.asarray(data).reshape(-1)
    step = max(1, flat.size // max_samples)
    lo, hi = (float(v) for v in np.percentile(flat[::step], (0.1, 99.95)))
    if not hi > lo:
        lo, hi = float(flat.min()), float(flat.max())
        if not hi > lo:
            hi = lo + 1.0
    return lo, hi


def _is_tiff(path: PathLike) -> bool:
    return str(path).lower().endswith(_TIFF_SUFFIXES)


def _paths(path: PathLike | Sequence[PathLike]) -> list[PathLike] | None:
    """Normalise napari's ``path`` argument; None unless every path is a TIFF file."""
    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    if not paths or not all(_is_tiff(p) for p in paths):
        return None
    return paths


def get_reader(path: PathLike | Sequence[PathLike]) -> Callable[..., list[LayerData]] | None:
    """Return a reader for TIFF files that splits channels into layers.

    Parameters
    ----------
    path : str, os.PathLike or sequence of them
        The file(s) napari wants to open.

    Returns
    -------
    callable or None
        A function ``reader(path) -> list of layer data``, or None when any path is
        not a ``.tif``/``.tiff`` file (napari then tries other readers).
    """
    if _paths(path) is None:
        return None
    return _read_split


def _read_split(path: PathLike | Sequence[PathLike], **_: Any) -> list[LayerData]:
    return [ld for p in _paths(path) or [] for ld in read_tiff(p, split_channels=True)]


def read_tiff(path: PathLike, *, split_channels: bool = True) -> list[LayerData]:
    """Read a TIFF into napari layer data with micrometre scale.

    Parameters
    ----------
    path : str or os.PathLike
        A TIFF, OME-TIFF or ImageJ hyperstack, 2-D or 3-D with at most one channel
        axis, optionally a time-lapse (ImageJ frames / OME T): its layers then have the
        time axis first (after the channel axis of an unsplit layer), scale 1 along it,
        and ``metadata["time_axis"]`` (the widget tracks such layers).
    split_channels : bool
        True (default): one image layer per channel, named ``"<stem> <channel>"``.
        False: a single layer holding the channel axis, moved first so the spatial axes
        align with 2-D/3-D result layers (recorded in the layer metadata as
        ``channel_axis``; the widget picks it up).

    Returns
    -------
    list of (data, kwargs, layer_type) tuples
        Image layers, or one Labels layer for a ``*_labels.tif`` integer file.

    Raises
    ------
    napari_sinkhorn_em.io.ImageReadError
        With the file name and the reason (not a TIFF, corrupt, wrong axes, ...).
    """
    return image_layer_data(read_image(path, time_series=True), split_channels=split_channels)


def is_label_file(img: ImageData) -> bool:
    """True for a label image: a single-channel integer file named ``*_labels.tif``.

    That is how this plugin's writer, the widget's Export and the batch tool name their
    label images, so they open as a napari Labels layer again.

    Parameters
    ----------
    img : ImageData
        As returned by :func:`napari_sinkhorn_em.io.read_image`.

    Returns
    -------
    bool
    """
    stem = img.path.name.lower()
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return (
        img.channel_axis is None
        and np.issubdtype(img.data.dtype, np.integer)
        and stem.endswith("_labels")
    )


def _time_first(img: ImageData) -> ImageData:
    """The same image with its time axis moved to axis 0."""
    import dataclasses

    t = img.time_axis
    axes = "T" + img.axes[:t] + img.axes[t + 1 :]
    c = axes.index("C") if "C" in axes else None
    return dataclasses.replace(
        img, data=np.moveaxis(img.data, t, 0), axes=axes, channel_axis=c, time_axis=0
    )


def image_layer_data(img: ImageData, *, split_channels: bool = True) -> list[LayerData]:
    """Convert an :class:`~napari_sinkhorn_em.io.ImageData` into napari layer data.

    Parameters
    ----------
    img : ImageData
        As returned by :func:`napari_sinkhorn_em.io.read_image`.
    split_channels : bool
        Split the channel axis into one layer per channel (default) or keep it.

    Returns
    -------
    list of (data, kwargs, layer_type) tuples
        ``layer_type`` is ``"image"``, or ``"labels"`` for a label file (see
        :func:`is_label_file`). ``kwargs`` holds ``name``, ``scale`` (voxel size in
        micrometres, or 1 per axis when the file is uncalibrated), ``metadata`` (source
        path, voxel size, axes, channel name(s)) and, for channel layers, ``colormap``
        and ``blending``.
    """
    stem = img.path.stem
    if stem.lower().endswith(".ome"):
        stem = stem[:-4]
    if getattr(img, "time_axis", None) is not None:
        img = _time_first(img)
    n_spatial = len(img.spatial_axes)
    calibrated = img.voxel_size is not None
    spatial_scale = tuple(img.voxel_size) if calibrated else (1.0,) * n_spatial
    extra: dict[str, Any] = {}
    if calibrated and _layer_units_supported():
        extra["units"] = ("micrometer",) * n_spatial
    base_meta = {
        "source_path": str(img.path),
        "source_name": stem,
        "voxel_size_um": tuple(img.voxel_size) if calibrated else None,
        "spatial_axes": img.spatial_axes,
    }
    if img.time_axis is not None:
        # a time-lapse: the time axis leads the layer's axes (scale 1 = one frame)
        spatial_scale = (1.0, *spatial_scale)
        if "units" in extra:
            extra["units"] = ("pixel", *extra["units"])
        base_meta["time_axis"] = 0
    if img.channel_axis is None and is_label_file(img):
        kwargs = {"name": stem, "scale": spatial_scale, "metadata": dict(base_meta), **extra}
        return [(img.data, kwargs, "labels")]
    if img.channel_axis is None:
        kwargs = {
            "name": stem,
            "scale": spatial_scale,
            "metadata": dict(base_meta),
            "contrast_limits": contrast_limits(img.data),
            **extra,
        }
        return [(img.data, kwargs, "image")]

    n_ch = img.n_channels
    names = img.channel_names or [f"ch{i}" for i in range(n_ch)]
    if not split_channels:
        # The channel axis goes first: napari aligns layers by their trailing axes, so the
        # spatial axes of this layer then line up with the 2-D/3-D result layers (labels,
        # centres) instead of the channel axis standing in for z.
        data = np.moveaxis(img.data, img.channel_axis, 0)
        meta = {**base_meta, "channel_axis": 0, "channel_names": list(names)}
        if img.time_axis is not None:
            meta["time_axis"] = 1  # (C, T, ...): the T axis lines up with the labels' T
        kwargs = {"name": stem, "scale": (1.0, *spatial_scale), "metadata": meta}
        if "units" in extra:
            kwargs["units"] = ("pixel", *extra["units"])
        return [(data, kwargs, "image")]

    layers: list[LayerData] = []
    for i, ch_name in enumerate(names):
        data = np.take(img.data, i, axis=img.channel_axis)
        meta = {**base_meta, "channel_name": ch_name, "channel_index": i}
        kwargs = {
            "name": f"{stem} {ch_name}",
            "scale": spatial_scale,
            "metadata": meta,
            "colormap": CHANNEL_COLORMAPS[i % len(CHANNEL_COLORMAPS)] if n_ch > 1 else "gray",
            "blending": "additive",
            "contrast_limits": contrast_limits(data),
            **extra,
        }
        layers.append((data, kwargs, "image"))
    return layers
