"""napari layers <-> the segmentation: what a run reads and what it shows.

* :func:`image_input` turns the chosen Image layer(s), the channel axis and the typed voxel
  size into an :class:`ImageInput` (validated, with clear messages);
* :func:`show_result` puts a :class:`~napari_sinkhorn_em.pipeline.segment.SegmentationResult`
  into the viewer: a Labels layer with the image's scale and translate, and a Points layer
  of the nucleus centres whose features are the nucleus table (new layers, or the data of
  the previous result layers replaced in place);
* :func:`points_to_init` goes back: the (edited) centre points in voxel coordinates of the
  segmented image, the ``init`` array of a refit.

Used only by the widget (imports napari, not Qt).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from napari.layers import Image, Labels, Points

from napari_sinkhorn_em._validation import check_voxel_size

__all__ = [
    "PARAMS_KEY",
    "ImageInput",
    "estimated_diameter",
    "image_input",
    "parse_voxel_size",
    "points_to_init",
    "show_result",
    "spatial_axes",
]

#: layer metadata key holding the parameters of the fit (``result.params``)
PARAMS_KEY = "sinkhorn_em_params"


def full_res(data: Any) -> Any:
    """Full-resolution level of (possibly multiscale) layer data."""
    return data[0] if isinstance(data, list | tuple) else data


@dataclass
class ImageInput:
    """What a run segments: the chosen layers and how to turn them into one array.

    Attributes
    ----------
    layers : list of napari.layers.Image
        One layer (with ``channel_axis`` or single-channel) or several layers of one shape
        used as the channels (stacked on axis 0).
    channel_axis : int or None
        Channel axis of the array :meth:`array` returns.
    channel_names : list of str or None
        Names for the ``mean_<name>`` columns.
    voxel_size : tuple of float
        Physical voxel size (um) per spatial axis, as typed in the widget.
    scale, translate : tuple of float
        The layer's scale and translate over the spatial axes (world units); the result
        layers get them so that they overlay the image.
    name : str
        Base name of the result layers and exported files.
    units : tuple of str, optional
        The layer's axis units (napari >= 0.6).
    """

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
            return np.asarray(full_res(self.layers[0].data))
        return np.stack([np.asarray(full_res(layer.data)) for layer in self.layers], axis=0)

    def geometry(self) -> dict[str, Any]:
        """``scale``, ``translate`` (and ``units``) keyword arguments for result layers."""
        out: dict[str, Any] = {"scale": self.scale, "translate": self.translate}
        if self.units is not None:
            out["units"] = self.units
        return out


def spatial_axes(layer: Image, channel_axis: int | None) -> list[int]:
    """Axes of ``layer`` other than the channel axis (napari keeps RGB out of ``ndim``)."""
    return [i for i in range(layer.ndim) if i != channel_axis]


def parse_voxel_size(text: str, n_axes: int) -> tuple[float, ...]:
    """Parse ``"0.8, 0.35, 0.35"`` (commas, spaces or semicolons) into positive floats.

    Raises
    ------
    ValueError
        Naming the text and the problem: not numbers, wrong count, not finite, outside
        1 nm .. 100 um (:func:`napari_sinkhorn_em._validation.check_voxel_size`).
    """
    text = text.strip()
    try:
        vs = tuple(float(v) for v in re.split(r"[,\s;]+", text) if v)
    except ValueError:
        raise ValueError(
            f"voxel size {text!r} is not a list of numbers; write e.g. '0.8, 0.35, 0.35'"
        ) from None
    # the package's one voxel-size check: count, finiteness, 1 nm .. 100 um, unit hints
    return check_voxel_size(vs, n_axes, name="voxel size")


def image_input(layers: list[Image], channel_axis: int | None, voxel_size_text: str) -> ImageInput:
    """Validate a layer choice and voxel size; raise ValueError with a clear message.

    Parameters
    ----------
    layers : list of napari.layers.Image
        The chosen layers (already filtered to those still in the viewer).
    channel_axis : int or None
        Channel axis of a single chosen layer (ignored for several layers: they are the
        channels; an RGB layer uses its colour axis).
    voxel_size_text : str
        The voxel size as typed, one number (um) per spatial axis.
    """
    if not layers:
        raise ValueError("select an image layer to segment")
    ref = layers[0]
    if len(layers) == 1:
        ca = ref.ndim if ref.rgb else channel_axis
        names = ref.metadata.get("channel_names") if ca is not None else None
        data_shape = np.shape(full_res(ref.data))
        if names is not None and (ca >= len(data_shape) or len(names) != data_shape[ca]):
            names = None
        spatial = spatial_axes(ref, None if ref.rgb else ca)
        name = ref.name
    else:
        shapes = {layer.name: tuple(np.shape(full_res(layer.data))) for layer in layers}
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
    vs = parse_voxel_size(voxel_size_text, len(spatial))
    scale = tuple(float(ref.scale[i]) for i in spatial)
    translate = tuple(float(ref.translate[i]) for i in spatial)
    units = getattr(ref, "units", None)  # napari >= 0.6
    if units is not None:
        units = tuple(str(units[i]) for i in spatial)
    return ImageInput(list(layers), ca, names, vs, scale, translate, str(name), units)


def estimated_diameter(result: Any) -> float | None:
    """The nucleus diameter (um) a run used: the estimate when it was automatic.

    ``result.info["nucleus_diameter_um"]`` when the pipeline recorded one, else the
    numeric ``result.params["nucleus_diameter"]``; None when neither is a number.
    """
    for value in (result.info.get("nucleus_diameter_um"), result.params.get("nucleus_diameter")):
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return float(value)
    return None


def points_size(diameter_um: float | None, voxel_size: tuple[float, ...]) -> float:
    """Point size (data units = voxels): half a nucleus diameter, at least 1."""
    diameter = 3.0 if diameter_um is None else float(diameter_um)
    return max(1.0, 0.5 * diameter / float(np.mean(voxel_size[-2:])))


def show_result(
    viewer: Any,
    result: Any,
    inp: ImageInput,
    *,
    replace: tuple[Labels, Points] | None = None,
) -> tuple[Labels, Points]:
    """Show a segmentation result: a Labels layer and a Points layer of the centres.

    Parameters
    ----------
    viewer : napari.viewer.Viewer
    result : SegmentationResult
        ``labels``, ``centres`` (voxels), ``table`` (one row per centre) and ``params``.
    inp : ImageInput
        The input of the run (layer geometry and name).
    replace : (Labels, Points), optional
        Previous result layers whose data are replaced in place (keeping their place in
        the layer list and display settings); None adds ``"<name> nuclei"`` and
        ``"<name> centres"``.

    Returns
    -------
    (napari.layers.Labels, napari.layers.Points)
        The layers showing the result; the points' features are the nucleus table (its
        rows follow the points).
    """
    labels = result.labels
    centres = np.asarray(result.centres, dtype=np.float64).reshape(-1, labels.ndim)
    table = result.table.reset_index(drop=True)
    meta = {PARAMS_KEY: result.params}
    geometry = inp.geometry()
    size = points_size(estimated_diameter(result), inp.voxel_size)
    if replace is not None:
        labels_layer, points_layer = replace
        labels_layer.data = labels
        for key, value in geometry.items():
            setattr(labels_layer, key, value)
        labels_layer.metadata.update(meta)
        # the features follow the rows of the new data
        points_layer.data = centres
        points_layer.features = table
        for key, value in geometry.items():
            setattr(points_layer, key, value)
        points_layer.size = size
        points_layer.metadata.update(meta)
        return labels_layer, points_layer
    labels_layer = viewer.add_labels(labels, name=f"{inp.name} nuclei", metadata=meta, **geometry)
    points_layer = viewer.add_points(
        centres,
        name=f"{inp.name} centres",
        features=table,
        size=size,
        face_color="transparent",
        border_color="yellow",
        border_width=0.15,
        metadata=meta,
        **geometry,
    )
    return labels_layer, points_layer


def update_points(points: Points, result: Any) -> None:
    """Move the centre points to a refit's centres, with its table as features."""
    ndim = np.asarray(result.labels).ndim
    points.data = np.asarray(result.centres, dtype=np.float64).reshape(-1, ndim)
    points.features = result.table.reset_index(drop=True)
    points.metadata[PARAMS_KEY] = result.params


def points_to_init(points: Points, inp: ImageInput) -> np.ndarray:
    """Point coordinates converted to voxel coordinates of the segmented image.

    The points may have been moved, added or deleted, and the layer may have its own
    scale and translate: the world coordinates are mapped through the image's.

    Returns
    -------
    numpy.ndarray
        ``(K, ndim)`` float voxel coordinates: the ``init`` of a refit.

    Raises
    ------
    ValueError
        If the layer's dimensionality differs from the image's spatial axes.
    """
    data = np.asarray(points.data, dtype=np.float64)
    ndim = len(inp.scale)
    if data.ndim != 2 or (len(data) and data.shape[1] != ndim):
        raise ValueError(
            f"the points layer {points.name!r} is {points.ndim}-D but the image has "
            f"{ndim} spatial axes"
        )
    world = data * np.asarray(points.scale)[-ndim:] + np.asarray(points.translate)[-ndim:]
    return (world - np.asarray(inp.translate)) / np.asarray(inp.scale)
