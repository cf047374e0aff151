"""TIFF input/output for nuclei segmentation: images, label images and tables.

Reads plain TIFF, ImageJ hyperstacks and OME-TIFF into an :class:`ImageData` with the
axes, voxel size (micrometres) and channel names found in the metadata. Writes label
images and multichannel images that Fiji/ImageJ and napari open with the right voxel
size, and CSV tables. Every writer is atomic: the data goes to a temporary file in the
destination folder which is renamed over the destination only once it is complete, so
an interrupted run never leaves a partial file behind.

This module imports neither napari nor Qt.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Any

import numpy as np
import tifffile

from ._validation import check_voxel_size

__all__ = [
    "ImageData",
    "ImageReadError",
    "atomic_write",
    "read_image",
    "read_image_axes",
    "write_image",
    "write_labels",
    "write_table",
]

#: Length units accepted in ImageJ ("unit") and OME ("PhysicalSize?Unit") metadata,
#: as factors to micrometres.
_UNIT_TO_UM: dict[str, float] = {
    "micron": 1.0,
    "microns": 1.0,
    "micrometer": 1.0,
    "micrometre": 1.0,
    "um": 1.0,
    "µm": 1.0,  # micro sign U+00B5
    "μm": 1.0,  # greek mu U+03BC
    "\\u00b5m": 1.0,  # ImageJ escapes the micro sign in its description
    "nm": 1e-3,
    "nanometer": 1e-3,
    "nanometre": 1e-3,
    "pm": 1e-6,
    "å": 1e-4,
    "angstrom": 1e-4,
    "mm": 1e3,
    "millimeter": 1e3,
    "millimetre": 1e3,
    "cm": 1e4,
    "centimeter": 1e4,
    "centimetre": 1e4,
    "m": 1e6,
    "meter": 1e6,
    "metre": 1e6,
    "inch": 25400.0,
    "in": 25400.0,
}

#: TIFF ResolutionUnit tag values with a physical meaning (2 inch, 3 centimetre, ...).
_RESUNIT_TO_UM = {2: 25400.0, 3: 1e4, 4: 1e3, 5: 1.0}

#: Dtypes ImageJ stores natively (8-bit, 16-bit, 32-bit float).
_IMAGEJ_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))

#: tifffile log messages that mean the file is damaged (tifffile logs, not raises).
_DAMAGE_PATTERNS = ("corrupt", "truncat", "invalid page offset", "invalid value offset", "failed")

_SPATIAL = "ZYX"


class ImageReadError(ValueError):
    """A file could not be read as an image; the message names the file and the reason."""


@dataclass
class ImageData:
    """An image read from disk with the metadata needed for segmentation.

    Attributes
    ----------
    data : numpy.ndarray
        Pixel data as stored (dtype unchanged), with a singleton time axis removed.
    axes : str
        One letter per axis of ``data``, from ``"Z"``, ``"C"``, ``"Y"``, ``"X"``, e.g.
        ``"ZCYX"`` for an ImageJ hyperstack, ``"ZYX"``, ``"CYX"`` or ``"YX"``; a
        time-lapse read with ``time_series=True`` also has a ``"T"`` (e.g. ``"TZCYX"``).
    voxel_size : tuple of float or None
        Size of a voxel along the spatial axes (in the order they appear in ``axes``,
        channel axis excluded) in micrometres; None when the file carries no
        physical calibration.
    channel_axis : int or None
        Index of the channel axis in ``data``, or None for single-channel images.
    channel_names : list of str or None
        One name per channel when the metadata provides them.
    path : pathlib.Path
        The file that was read.
    time_axis : int or None
        Index of the time axis in ``data`` (time-lapses read with ``time_series=True``),
        else None.
    pixel_size : tuple of float or None
        ``(y, x)`` pixel size in micrometres of a stack whose metadata calibrate the
        plane but not the z step (``voxel_size`` is then None); else None.
    """

    data: np.ndarray
    axes: str
    voxel_size: tuple[float, ...] | None
    channel_axis: int | None
    channel_names: list[str] | None
    path: Path
    time_axis: int | None = None
    pixel_size: tuple[float, ...] | None = None

    @property
    def spatial_axes(self) -> str:
        """The axes letters without the channel and time axes, e.g. ``"ZYX"``."""
        return self.axes.replace("C", "").replace("T", "")

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Shape of the spatial axes (channel and time axes removed)."""
        return tuple(n for n, a in zip(self.data.shape, self.axes, strict=True) if a not in "CT")

    @property
    def n_frames(self) -> int:
        """Number of time points (1 without a time axis)."""
        return 1 if self.time_axis is None else int(self.data.shape[self.time_axis])

    @property
    def n_channels(self) -> int:
        """Number of channels (1 when there is no channel axis)."""
        return 1 if self.channel_axis is None else int(self.data.shape[self.channel_axis])


# --------------------------------------------------------------------------------------
# atomic writing
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", **open_kwargs: Any) -> Iterator[IO]:
    """Open a temporary file next to ``path`` and move it over ``path`` on success.

    The temporary file is created in the destination folder (so the final
    :func:`os.replace` is an atomic rename on the same file system), flushed and
    fsync-ed before the rename, and removed if the ``with`` block raises. Readers of
    ``path`` therefore only ever see the old complete file or the new complete file.

    Parameters
    ----------
    path : str or os.PathLike
        Destination file. Its folder must exist.
    mode : str, optional
        ``"wb"`` (default) for binary or ``"w"`` for text; must be a write mode.
    **open_kwargs
        Passed to :func:`open` (e.g. ``encoding="utf-8"``, ``newline=""``).

    Yields
    ------
    file object
        The open temporary file.

    Examples
    --------
    >>> with atomic_write("run.json", "w", encoding="utf-8") as f:  # doctest: +SKIP
    ...     json.dump(info, f)
    """
    if not mode.startswith("w"):
        raise ValueError(f"atomic_write needs a write mode ('w' or 'wb'), got {mode!r}")
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise FileNotFoundError(f"cannot write {path}: folder {folder} does not exist")
    tmp: Path | None = None
    try:
        # created inside the try: an interrupt (Ctrl-C / SIGTERM raised by the batch
        # runner's handler) right after the file exists must still remove it
        fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
        tmp = Path(tmp_name)
        os.close(fd)
        # mkstemp creates the file with mode 0600; give it the usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        with contextlib.suppress(OSError):
            os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()
        raise


# --------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------


class _LogCollector(logging.Handler):
    """Collect tifffile's log records (tifffile logs damage instead of raising)."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:  # pragma: no cover - trivial
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _capture_tifffile_log() -> Iterator[_LogCollector]:
    logger = logging.getLogger("tifffile")
    handler = _LogCollector()
    old_propagate = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.propagate = old_propagate


def _unit_factor(unit: str | None) -> float | None:
    """Factor converting ``unit`` to micrometres, or None if unknown / not physical."""
    if unit is None:
        return None
    key = str(unit).strip().lower()
    if key in _UNIT_TO_UM:
        return _UNIT_TO_UM[key]
    if key.endswith("m") and len(key) == 2 and key[0] in "uµμ":
        return 1.0
    return None


def _resolution_size(page: tifffile.TiffPage, tag: str) -> float | None:
    """Pixel size in the file's unit from an X/YResolution tag (pixels per unit)."""
    t = page.tags.get(tag)
    if t is None:
        return None
    value = t.value
    try:
        num, den = (float(value[0]), float(value[1])) if len(value) == 2 else (float(value), 1.0)
    except TypeError:
        num, den = float(value), 1.0
    if num <= 0 or den <= 0:
        return None
    return den / num


def _imagej_voxel_size(tif: tifffile.TiffFile, spatial_axes: str) -> tuple[float, ...] | None:
    meta = tif.imagej_metadata or {}
    factor = _unit_factor(meta.get("unit"))
    if factor is None:
        return None
    page = tif.pages.first
    sx = _resolution_size(page, "XResolution")
    sy = _resolution_size(page, "YResolution")
    if sx is None or sy is None:
        return None
    sizes = {"X": sx * factor, "Y": sy * factor}
    if "Z" in spatial_axes:
        spacing = meta.get("spacing")
        if spacing is None or float(spacing) <= 0:
            # ImageJ would assume 1 unit; an uncalibrated z is unknown, not 1.
            return None
        sizes["Z"] = float(spacing) * factor
    return tuple(sizes[a] for a in spatial_axes)


def _ome_pixels(tif: tifffile.TiffFile) -> ET.Element | None:
    xml = tif.ome_metadata
    if not xml:
        return None
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    for el in root.iter():
        if el.tag.rsplit("}", 1)[-1] == "Pixels":
            return el
    return None


def _ome_voxel_size(pixels: ET.Element, spatial_axes: str) -> tuple[float, ...] | None:
    sizes = {}
    for a in spatial_axes:
        value = pixels.get(f"PhysicalSize{a}")
        if value is None:
            return None
        factor = _unit_factor(pixels.get(f"PhysicalSize{a}Unit", "µm"))
        if factor is None or float(value) <= 0:
            return None
        sizes[a] = float(value) * factor
    return tuple(sizes[a] for a in spatial_axes)


def _ome_channel_names(pixels: ET.Element) -> list[str] | None:
    names = [el.get("Name") for el in pixels if el.tag.rsplit("}", 1)[-1] == "Channel"]
    if not names or any(n is None for n in names):
        return None
    return [str(n) for n in names]


def _resolution_tag_voxel_size(
    tif: tifffile.TiffFile, spatial_axes: str
) -> tuple[float, ...] | None:
    """Voxel size from plain TIFF resolution tags with a physical ResolutionUnit (2-D only)."""
    if spatial_axes != "YX":
        return None
    page = tif.pages.first
    unit = page.tags.get("ResolutionUnit")
    factor = _RESUNIT_TO_UM.get(int(unit.value)) if unit is not None else None
    if factor is None:
        return None
    sx = _resolution_size(page, "XResolution")
    sy = _resolution_size(page, "YResolution")
    if sx is None or sy is None:
        return None
    return (sy * factor, sx * factor)


def _infer_axes(shape: tuple[int, ...], channel_axis: int | None) -> str | None:
    """Axes for data without usable metadata; None if the dimensionality is wrong."""
    ndim = len(shape)
    if channel_axis is not None:
        spatial = {2: "YX", 3: "ZYX"}.get(ndim - 1)
        if spatial is None:
            return None
        letters = list(spatial)
        letters.insert(channel_axis, "C")
        return "".join(letters)
    if ndim == 2:
        return "YX"
    if ndim == 3:
        return "ZYX"
    if ndim == 4:
        # ImageJ order is Z, C, Y, X; a channel axis is the shorter of the two leading axes.
        return "CZYX" if shape[0] < shape[1] else "ZCYX"
    return None


def _normalise_axes(raw: str) -> str:
    """Map tifffile axis codes to Z/C/Y/X (+T); unknown codes become '?'."""
    out = []
    for a in raw:
        if a in "ZYXCT":
            out.append(a)
        elif a == "S":  # samples (RGB): channels
            out.append("C")
        else:  # Q (unknown), I (image sequence), ...
            out.append("?")
    return "".join(out)


def _fail(path: Path, reason: str) -> ImageReadError:
    return ImageReadError(f"cannot read {path.name!r} ({path}): {reason}")


def read_image(
    path: str | os.PathLike,
    *,
    channel_axis: int | None = None,
    time_series: bool = False,
    time_axis: int | None = None,
) -> ImageData:
    """Read a 2-D or 3-D (optionally multichannel, optionally time-lapse) TIFF with its
    calibration.

    Supports plain TIFF, ImageJ hyperstacks (voxel size from the X/YResolution tags,
    ``spacing`` and ``unit``) and OME-TIFF (``PhysicalSizeX/Y/Z`` with their units,
    ``DimensionOrder`` and channel names). Units (micron, um, µm, nm, mm, ...) are
    converted to micrometres. A singleton time axis is dropped (unless ``time_axis``
    names it).

    Parameters
    ----------
    path : str or os.PathLike
        The TIFF file.
    channel_axis : int, optional
        Index of the channel axis in the stored array (after dropping a singleton
        time axis). Overrides the metadata; needed for plain TIFFs whose channel axis
        cannot be recognised. Without metadata a 3-D array is taken as ``ZYX`` and a
        4-D array as ``ZCYX`` (or ``CZYX`` when the first axis is the shorter one).
        For a time-lapse: the index in the stored array, time axis included.
    time_series : bool, default False
        Accept a time-lapse: a time axis of more than one frame from the metadata
        (ImageJ ``frames``, OME ``SizeT``) is kept as ``"T"`` in ``axes`` and
        ``time_axis``. Without it such a file is an error.
    time_axis : int, optional
        Index of the time axis in the stored array (implies ``time_series``), for files
        whose metadata do not name it (e.g. a plain ``(T, Z, Y, X)`` TIFF); overrides
        the metadata. A length-1 axis is a one-frame time-lapse.

    Returns
    -------
    ImageData
        Data as stored plus axes, voxel size (micrometres, spatial axes only, or None
        when the file has no physical calibration), channel axis and names.

    Raises
    ------
    ImageReadError
        If the file does not exist, is empty, is not a TIFF, is truncated or corrupt,
        holds more than one time point (without ``time_series`` / ``time_axis``), or is
        not 2-D/3-D spatial plus at most one channel axis (and one time axis). A
        constant image is *not* an error here.
    """
    path = Path(path)
    if not path.exists():
        raise _fail(path, "file does not exist")
    if path.is_dir():
        raise _fail(path, "is a folder, not a file")
    size = path.stat().st_size
    if size == 0:
        raise _fail(path, "file is empty (0 bytes)")

    with _capture_tifffile_log() as log:
        try:
            tif = tifffile.TiffFile(path)
        except tifffile.TiffFileError as exc:
            with open(path, "rb") as f:
                magic = f.read(4)
            if magic[:2] in (b"II", b"MM"):
                raise _fail(path, f"truncated or corrupt TIFF ({exc})") from exc
            raise _fail(path, "not a TIFF file") from exc
        except Exception as exc:
            raise _fail(path, f"truncated or corrupt TIFF ({exc})") from exc
        with tif:
            try:
                if not tif.series:
                    raise _fail(path, "TIFF holds no image")
                series = tif.series[0]
                raw_axes = _normalise_axes(series.axes)
                data = series.asarray()
            except ImageReadError:
                raise
            except Exception as exc:
                raise _fail(path, f"truncated or corrupt TIFF ({exc})") from exc
            damage = [m for m in log.messages if any(p in m.lower() for p in _DAMAGE_PATTERNS)]
            if damage:
                raise _fail(path, f"truncated or corrupt TIFF ({damage[0]})")
            if data.size == 0 or 0 in data.shape:
                raise _fail(path, f"image is empty (shape {data.shape})")

            raw_axes, t_idx = _time_axis(path, raw_axes, data.shape, time_series, time_axis)
            if "T" in raw_axes and raw_axes.index("T") != t_idx:
                # a singleton time axis that is not the chosen one: dropped
                t = raw_axes.index("T")
                data = np.take(data, 0, axis=t)
                raw_axes = raw_axes[:t] + raw_axes[t + 1 :]
                if t_idx is not None and t_idx > t:
                    t_idx -= 1
            if t_idx is not None:
                raw_axes = raw_axes[:t_idx] + "T" + raw_axes[t_idx + 1 :]

            ndim = data.ndim
            if channel_axis is not None:
                if not -ndim <= channel_axis < ndim:
                    raise _fail(
                        path,
                        f"channel_axis={channel_axis} is out of range for an image with "
                        f"{ndim} axes (shape {data.shape})",
                    )
                channel_axis = channel_axis % ndim
                if channel_axis == t_idx:
                    raise _fail(path, f"channel_axis={channel_axis} is the time axis")

            # the axes of one frame, then the time axis put back in place
            frame_shape = (
                data.shape if t_idx is None else data.shape[:t_idx] + data.shape[t_idx + 1 :]
            )
            frame_raw = raw_axes if t_idx is None else raw_axes[:t_idx] + raw_axes[t_idx + 1 :]
            frame_ch = channel_axis
            if channel_axis is not None and t_idx is not None and channel_axis > t_idx:
                frame_ch = channel_axis - 1
            axes = _resolve_axes(frame_raw, frame_shape, frame_ch)
            if axes is None:
                raise _fail(
                    path,
                    f"wrong number of axes: expected a 2-D or 3-D image plus at most one "
                    f"channel axis{'' if t_idx is None else ' and the time axis'}, got "
                    f"{ndim}-D data with shape {data.shape} (axes {series.axes!r})",
                )
            if t_idx is not None:
                axes = axes[:t_idx] + "T" + axes[t_idx:]

            spatial = axes.replace("C", "").replace("T", "")
            channel_names: list[str] | None = None
            pixels = _ome_pixels(tif) if tif.is_ome else None
            if pixels is not None:
                calibration = partial(_ome_voxel_size, pixels)
                channel_names = _ome_channel_names(pixels)
            elif tif.is_imagej:
                calibration = partial(_imagej_voxel_size, tif)
                channel_names = _imagej_channel_names(tif.imagej_metadata or {}, data, axes)
            else:
                calibration = partial(_resolution_tag_voxel_size, tif)
            voxel_size = calibration(spatial)
            pixel_size = None
            if voxel_size is None and "Z" in spatial:
                # the plane calibrated, the z step not: the caller can say which is missing
                pixel_size = calibration("YX")

    c_axis = axes.index("C") if "C" in axes else None
    if channel_names is not None and (c_axis is None or len(channel_names) != data.shape[c_axis]):
        channel_names = None
    return ImageData(
        data=data,
        axes=axes,
        voxel_size=voxel_size,
        channel_axis=c_axis,
        channel_names=channel_names,
        path=path,
        time_axis=axes.index("T") if "T" in axes else None,
        pixel_size=pixel_size,
    )


def _time_axis(
    path: Path,
    raw_axes: str,
    shape: tuple[int, ...],
    time_series: bool,
    time_axis: int | None,
) -> tuple[str, int | None]:
    """The raw axes with the time axis marked ``"T"`` and its index (None: no time-lapse).

    ``time_axis`` (an index into the stored array) wins over the metadata; without it the
    metadata's T axis is the time axis when it has more than one frame and
    ``time_series`` is set. A metadata T axis of several frames that is not the chosen
    one, or one met without ``time_series``, is an error naming the file.
    """
    ndim = len(shape)
    meta_t = raw_axes.index("T") if "T" in raw_axes else None
    if time_axis is not None:
        if isinstance(time_axis, bool) or not isinstance(time_axis, (int, np.integer)):
            raise _fail(path, f"time_axis must be an integer, got {time_axis!r}")
        if not -ndim <= time_axis < ndim:
            raise _fail(
                path,
                f"time_axis={time_axis} is out of range for an image with {ndim} axes "
                f"(shape {shape})",
            )
        t = int(time_axis) % ndim
        if meta_t is not None and meta_t != t and shape[meta_t] != 1:
            raise _fail(
                path,
                f"time_axis={time_axis} but the metadata put the {shape[meta_t]} time "
                f"points on axis {meta_t} (axes {raw_axes}, shape {shape})",
            )
        if meta_t is not None and meta_t != t:
            return raw_axes, t  # the singleton metadata T is dropped by the caller
        return raw_axes[:t] + "T" + raw_axes[t + 1 :], t
    if meta_t is None or shape[meta_t] == 1:
        return raw_axes, None
    if not time_series:
        raise _fail(
            path,
            f"holds {shape[meta_t]} time points (axes {raw_axes}, shape {shape}); "
            "read time-lapses with time_series=True (the command line takes them as "
            "they are, or with --time-axis), or save one time point per file",
        )
    return raw_axes, meta_t


def _resolve_axes(raw_axes: str, shape: tuple[int, ...], channel_axis: int | None) -> str | None:
    """Final Z/C/Y/X axes string or None when the dimensionality is not supported."""
    ndim = len(shape)
    if ndim < 2 or ndim > 4:
        return None
    if raw_axes.count("?") == 1 and "Z" not in raw_axes and len(raw_axes) == ndim:
        # e.g. a sequence of RGB planes ('IYXS'): the unnamed axis is z
        raw_axes = raw_axes.replace("?", "Z")
    known = (
        len(raw_axes) == ndim
        and "?" not in raw_axes
        and len(set(raw_axes)) == ndim
        and raw_axes.replace("C", "") in ("YX", "ZYX")
    )
    if known and (channel_axis is None or raw_axes[channel_axis] == "C"):
        axes = raw_axes
    elif known and channel_axis is not None:
        # user override: the given axis is the channel axis, the others spatial
        axes = _infer_axes(shape, channel_axis)
    else:
        axes = _infer_axes(shape, channel_axis)
    if axes is None:
        return None
    spatial = axes.replace("C", "")
    if spatial not in ("YX", "ZYX") or axes.count("C") > 1:
        return None
    return axes


def _imagej_channel_names(meta: dict, data: np.ndarray, axes: str) -> list[str] | None:
    """Channel names from ImageJ slice ``Labels`` (one label per plane, C fastest)."""
    labels = meta.get("Labels")
    if not labels or "C" not in axes:
        return None
    n_c = data.shape[axes.index("C")]
    labels = [str(x) for x in labels]
    if len(labels) < n_c:
        return None
    names = labels[:n_c]
    if not all(names):
        return None
    return names


# --------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------


def _check_voxel_size(voxel_size: Sequence[float] | None, ndim: int, what: str):
    return check_voxel_size(voxel_size, ndim, where=what)


def _resolution_kwargs(voxel_size: tuple[float, ...] | None, spatial_axes: str) -> dict:
    if voxel_size is None:
        return {}
    size = dict(zip(spatial_axes, voxel_size, strict=True))
    return {"resolution": (1.0 / size["X"], 1.0 / size["Y"])}


def _write_tiff(
    path: Path,
    data: np.ndarray,
    axes: str,
    voxel_size: tuple[float, ...] | None,
    channel_names: list[str] | None,
) -> None:
    """Write ``data`` (axes in T, Z, C, Y, X order, a subset) as ImageJ or OME-TIFF."""
    spatial = axes.replace("C", "").replace("T", "")
    # ImageJ hyperstacks hold planes of at least 2 x 2: one of length 1 (a plane saved
    # along Y or X, e.g. labels of a (Y, X, 1) image) was written as a file that no reader
    # could open; OME-TIFF keeps the shape
    flat_plane = any(data.shape[axes.index(a)] == 1 for a in "YX")
    if data.dtype in _IMAGEJ_DTYPES and not flat_plane:
        metadata: dict[str, Any] = {"axes": axes}
        if voxel_size is not None:
            metadata["unit"] = "micron"
            if "Z" in spatial:
                metadata["spacing"] = voxel_size[spatial.index("Z")]
        if channel_names is not None:
            n_planes = int(
                np.prod([n for n, a in zip(data.shape, axes, strict=True) if a in "TZC"])
            )
            n_c = len(channel_names)
            metadata["Labels"] = [channel_names[i % n_c] for i in range(n_planes)]
        kwargs = {"imagej": True, "metadata": metadata, **_resolution_kwargs(voxel_size, spatial)}
        if voxel_size is None:
            kwargs.pop("resolution", None)
    else:
        # ImageJ cannot hold this dtype (e.g. uint32, int32, float64) or shape: OME-TIFF,
        # which Fiji opens through Bio-Formats, with the calibration also in resolution
        # tags.
        metadata = {"axes": axes}
        if voxel_size is not None:
            for a, v in zip(spatial, voxel_size, strict=True):
                metadata[f"PhysicalSize{a}"] = float(v)
                metadata[f"PhysicalSize{a}Unit"] = "µm"
        if channel_names is not None:
            metadata["Channel"] = {"Name": list(channel_names)}
        kwargs = {"ome": True, "metadata": metadata}
        if voxel_size is not None:
            size = dict(zip(spatial, voxel_size, strict=True))
            # pixels per centimetre
            kwargs["resolution"] = (1e4 / size["X"], 1e4 / size["Y"])
            kwargs["resolutionunit"] = "CENTIMETER"
    with atomic_write(path, "wb") as f:
        tifffile.imwrite(f, data, compression="zlib", **kwargs)


def write_labels(
    path: str | os.PathLike,
    labels: np.ndarray,
    voxel_size: Sequence[float] | None,
    *,
    time_axis: bool = False,
) -> Path:
    """Write a label image as a compressed, calibrated TIFF, atomically.

    Labels whose maximum fits in 16 bits are written as an ImageJ-compatible
    ``uint16`` TIFF: pixel size in the X/YResolution tags, z step in ``spacing`` and
    ``unit='micron'``. Larger labels need ``uint32``, which ImageJ's TIFF format cannot
    hold; they are written as an OME-TIFF (``PhysicalSizeX/Y/Z`` in µm, plus
    resolution tags in pixels per centimetre) which Fiji opens through Bio-Formats.
    Both are zlib-compressed and read back by :func:`read_image` with the same
    values and voxel size.

    Parameters
    ----------
    path : str or os.PathLike
        Destination ``.tif`` file (its folder must exist). Replaced if present.
    labels : numpy.ndarray
        2-D (YX) or 3-D (ZYX) array of non-negative integers (0 = background); with
        ``time_axis``, a time-lapse ``(T, [Z,] Y, X)`` (written as ImageJ frames / OME T).
    voxel_size : sequence of float or None
        Voxel size in micrometres, one value per spatial axis of ``labels``; None writes
        an uncalibrated file.
    time_axis : bool, default False
        The first axis of ``labels`` is time.

    Returns
    -------
    pathlib.Path
        The written file.

    Raises
    ------
    ValueError
        If ``labels`` is not 2-D/3-D, not integer-valued, negative, or ``voxel_size``
        does not match.
    """
    path = Path(path)
    labels = np.asarray(labels)
    what = f"cannot write labels to {path.name!r}"
    n_t = 1 if time_axis else 0
    if labels.ndim - n_t not in (2, 3):
        kind = "(T, [Z,] Y, X)" if time_axis else "2-D or 3-D"
        raise ValueError(f"{what}: labels must be {kind}, got shape {labels.shape}")
    if labels.size == 0:
        raise ValueError(f"{what}: labels are empty (shape {labels.shape})")
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{what}: labels must have an integer dtype, got {labels.dtype}")
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0:
        raise ValueError(f"{what}: labels must be >= 0, found {lo}")
    if hi >= 2**32:
        raise ValueError(f"{what}: label {hi} does not fit in uint32")
    vs = _check_voxel_size(voxel_size, labels.ndim - n_t, what)
    dtype = np.uint16 if hi < 2**16 else np.uint32
    axes = ("T" if time_axis else "") + ("ZYX" if labels.ndim - n_t == 3 else "YX")
    _write_tiff(path, np.ascontiguousarray(labels, dtype=dtype), axes, vs, None)
    return path


def write_image(
    path: str | os.PathLike,
    image: np.ndarray,
    *,
    voxel_size: Sequence[float] | None,
    axes: str,
    channel_names: Sequence[str] | None = None,
) -> Path:
    """Write an image as an ImageJ hyperstack (compressed, calibrated), atomically.

    The axes are reordered to ImageJ's Z, C, Y, X order. ``uint8``, ``uint16`` and
    ``float32`` images become ImageJ hyperstacks (channel names as slice labels);
    other dtypes, which ImageJ cannot store, are written unchanged as OME-TIFF.

    Parameters
    ----------
    path : str or os.PathLike
        Destination file (its folder must exist).
    image : numpy.ndarray
        The image.
    voxel_size : sequence of float or None
        Voxel size in micrometres for the spatial axes, in the order they appear in
        ``axes``; None writes an uncalibrated file.
    axes : str
        One letter per axis of ``image`` from T, Z, C, Y, X (each at most once; Y and X
        required), e.g. ``"ZCYX"``, ``"CZYX"``, ``"ZYX"``, ``"YX"``; ``"T"`` marks a
        time axis (ImageJ frames, e.g. ``"TCZYX"`` is stored as ``"TZCYX"``).
    channel_names : sequence of str, optional
        One name per channel.

    Returns
    -------
    pathlib.Path
        The written file.
    """
    path = Path(path)
    image = np.asarray(image)
    what = f"cannot write image to {path.name!r}"
    axes = str(axes).upper()
    if (
        len(axes) != image.ndim
        or len(set(axes)) != len(axes)
        or not set(axes) <= set("TZCYX")
        or "Y" not in axes
        or "X" not in axes
    ):
        raise ValueError(
            f"{what}: axes {axes!r} do not describe an image of shape {image.shape}; use "
            "one letter per axis from T, Z, C, Y, X with Y and X present (e.g. 'ZCYX')"
        )
    if image.size == 0:
        raise ValueError(f"{what}: image is empty (shape {image.shape})")
    if image.dtype == bool:
        image = image.astype(np.uint8)
    if image.dtype.kind not in "uif":
        raise ValueError(f"{what}: unsupported dtype {image.dtype}")
    order = [axes.index(a) for a in "TZCYX" if a in axes]
    ij_axes = "".join(axes[i] for i in order)
    spatial_in = axes.replace("C", "").replace("T", "")
    vs = _check_voxel_size(voxel_size, len(spatial_in), what)
    if vs is not None:
        size = dict(zip(spatial_in, vs, strict=True))
        vs = tuple(size[a] for a in ij_axes.replace("C", "").replace("T", ""))
    names = None
    if channel_names is not None:
        names = [str(n) for n in channel_names]
        if "C" not in axes or len(names) != image.shape[axes.index("C")]:
            n_c = image.shape[axes.index("C")] if "C" in axes else 1
            raise ValueError(f"{what}: {len(names)} channel names given for {n_c} channel(s)")
    data = np.ascontiguousarray(np.transpose(image, order))
    _write_tiff(path, data, ij_axes, vs, names)
    return path


def write_table(path: str | os.PathLike, dataframe) -> Path:
    """Write a pandas DataFrame as CSV (no index column), atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Destination ``.csv`` file (its folder must exist).
    dataframe : pandas.DataFrame
        The table.

    Returns
    -------
    pathlib.Path
        The written file.
    """
    path = Path(path)
    with atomic_write(path, "w", encoding="utf-8", newline="") as f:
        dataframe.to_csv(f, index=False)
    return path


def read_image_axes(
    path: str | os.PathLike,
    *,
    channel_axis: int | None = None,
    time_series: bool = False,
    time_axis: int | None = None,
) -> tuple[str, tuple[int, ...]]:
    """Axes and shape of a TIFF's image as :func:`read_image` would see them, from the
    header only (no pixels are read; fast enough to check every input of a batch).

    Parameters
    ----------
    path : str or os.PathLike
        The TIFF file.
    channel_axis, time_series, time_axis
        As in :func:`read_image`.

    Returns
    -------
    axes : str
        T/Z/C/Y/X letters, e.g. ``"ZCYX"`` (a singleton time axis dropped) or
        ``"TZCYX"`` for a time-lapse.
    shape : tuple of int
        Shape of the stored array without the singleton time axis.

    Raises
    ------
    ImageReadError
        When the header cannot be read or the axes are not supported. A file that
        passes may still fail in :func:`read_image` (e.g. truncated pixel data).
    """
    path = Path(path)
    with _capture_tifffile_log():
        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                raw_axes = _normalise_axes(series.axes)
                shape = tuple(int(n) for n in series.shape)
        except Exception as exc:
            raise _fail(path, f"cannot read the TIFF header ({exc})") from exc
    raw_axes, t_idx = _time_axis(path, raw_axes, shape, time_series, time_axis)
    if "T" in raw_axes and raw_axes.index("T") != t_idx:
        t = raw_axes.index("T")
        shape = shape[:t] + shape[t + 1 :]
        raw_axes = raw_axes[:t] + raw_axes[t + 1 :]
        if t_idx is not None and t_idx > t:
            t_idx -= 1
    if channel_axis is not None:
        if not -len(shape) <= channel_axis < len(shape):
            raise _fail(path, f"channel_axis={channel_axis} is out of range for shape {shape}")
        channel_axis = channel_axis % len(shape)
        if channel_axis == t_idx:
            raise _fail(path, f"channel_axis={channel_axis} is the time axis")
    if t_idx is None:
        axes = _resolve_axes(raw_axes, shape, channel_axis)
    else:
        frame_ch = channel_axis
        if channel_axis is not None and channel_axis > t_idx:
            frame_ch = channel_axis - 1
        axes = _resolve_axes(
            raw_axes[:t_idx] + raw_axes[t_idx + 1 :], shape[:t_idx] + shape[t_idx + 1 :], frame_ch
        )
        if axes is not None:
            axes = axes[:t_idx] + "T" + axes[t_idx:]
    if axes is None:
        raise _fail(path, f"wrong number of axes (shape {shape})")
    return axes, shape
