"""Parameters of a batch run: flags + config file, per-file voxel size, up-front checks."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .._json import jsonable
from .._validation import check_voxel_size, single_plane_axis
from .inputs import BatchError, BatchInput, derive_seed

__all__ = [
    "build_parameters",
    "check_parameters_against_inputs",
    "resolve_voxel_size",
    "tracking_kwargs",
]

logger = logging.getLogger("napari_sinkhorn_em.batch")

# Keys of ``segment_nuclei`` that the batch resolves per file (from metadata / flags).
_PER_FILE_KEYS = ("voxel_size", "channel_axis", "channel_names", "random_state", "progress")


def _normalise(value: Any) -> Any:
    """JSON round trip, so that recorded and requested parameters compare equal."""
    return json.loads(json.dumps(jsonable(value), sort_keys=True))


def _check_voxel_size(value: Any, what: str) -> list[float] | None:
    try:
        vs = check_voxel_size(value, (2, 3), name=what)
    except ValueError as exc:
        raise BatchError(str(exc)) from None
    return None if vs is None else list(vs)


def _check_segment_parameters(seg: Mapping[str, Any]) -> None:
    """Validate the segmentation parameters now (not once per file, after files were
    touched): unknown names, types, ranges, as :class:`SegmentationParams` does."""
    from ..params import SegmentationParams

    try:
        SegmentationParams.from_dict(dict(seg), where="segmentation parameters")
    except (TypeError, ValueError) as exc:
        raise BatchError(str(exc)) from None


def build_parameters(
    config: Mapping[str, Any] | None = None,
    *,
    n_nuclei: int | str | None = None,
    voxel_size: Sequence[float] | None = None,
    channel_axis: int | None = None,
    method: str | None = None,
    nucleus_diameter: float | str | None = None,
    seed: int | None = None,
    time_axis: int | None = None,
    motion: str | None = None,
    reference_frame: int | None = None,
) -> dict[str, Any]:
    """Merge a parameter file and command-line flags into the parameters of a batch run.

    Parameters
    ----------
    config : mapping, optional
        Keyword arguments of :func:`napari_sinkhorn_em.segment_nuclei`, e.g. as read by
        :func:`napari_sinkhorn_em.load_params` from the JSON the widget exports. Its
        ``voxel_size`` is only a fallback for files without voxel size metadata; its
        ``channel_axis``, ``channel_names`` and ``progress`` are ignored (they belong to
        the image the file was made for), and so are ``init`` centres given as an array;
        its ``random_state`` is the base seed unless ``seed`` is given.
    n_nuclei, voxel_size, channel_axis, method, nucleus_diameter, seed
        Command-line flags; ``None`` = not given. They override ``config``.
        ``voxel_size`` and ``channel_axis`` override the files' metadata.
        ``nucleus_diameter="auto"`` (``--nucleus-diameter auto``) replaces a number from
        ``config`` by the estimate from each image.
    time_axis : int, optional
        Index of the time axis in the stored arrays (``--time-axis``): every input is
        then a time-lapse, tracked with :func:`~napari_sinkhorn_em.track_nuclei`. None =
        from the metadata (ImageJ ``frames`` / OME ``T`` of more than one frame).
    motion, reference_frame : optional
        ``track_nuclei``'s ``motion`` and ``reference_frame`` for time-lapse inputs.

    Returns
    -------
    dict
        JSON-serialisable dict with keys ``"segment"`` (keyword arguments passed to
        ``segment_nuclei`` for every file), ``"voxel_size"`` / ``"channel_axis"``
        (overrides or None), ``"fallback_voxel_size"`` (from the config or None) and
        ``"seed"`` (base seed), ``"time_axis"`` (override or None) and ``"track"``
        (``track_nuclei``-only keyword arguments for time-lapse inputs). This dict is
        recorded in ``run.json`` and compared on resume.
    """
    seg = {k: v for k, v in dict(config or {}).items() if k not in _PER_FILE_KEYS}
    if "init" in seg and not isinstance(seg["init"], str):
        # centres for one particular image (e.g. after "Refine" in the widget)
        logger.warning("ignoring the config's init centres: they belong to one image")
        del seg["init"]
    fallback_vs = _check_voxel_size((config or {}).get("voxel_size"), "voxel_size in the config")
    base_seed = seed if seed is not None else (config or {}).get("random_state")
    if base_seed is None:
        base_seed = 0
    derive_seed(base_seed, "")  # validates the seed
    if n_nuclei is not None:
        seg["n_nuclei"] = n_nuclei
    if seg.get("n_nuclei") is None:
        seg["n_nuclei"] = "auto"
    nn = seg["n_nuclei"]
    if isinstance(nn, str):
        if nn != "auto":
            raise BatchError(f"n_nuclei must be a positive integer or 'auto', got {nn!r}")
    elif isinstance(nn, bool) or not isinstance(nn, (int, np.integer)) or nn < 1:
        raise BatchError(f"n_nuclei must be a positive integer or 'auto', got {nn!r}")
    if method is not None:
        seg["method"] = method
    if isinstance(nucleus_diameter, str):
        if nucleus_diameter != "auto":
            raise BatchError(
                f"nucleus diameter must be a positive number or 'auto', got {nucleus_diameter!r}"
            )
        # the default: dropped rather than recorded, so that a run with the flag and one
        # without it have the same parameters in run.json (and resume each other)
        seg.pop("nucleus_diameter", None)
    elif nucleus_diameter is not None:
        if not (math.isfinite(nucleus_diameter) and nucleus_diameter > 0):
            raise BatchError(f"nucleus diameter must be positive, got {nucleus_diameter}")
        seg["nucleus_diameter"] = float(nucleus_diameter)
    if channel_axis is not None and (
        isinstance(channel_axis, bool) or not isinstance(channel_axis, (int, np.integer))
    ):
        raise BatchError(f"channel axis must be an integer, got {channel_axis!r}")
    _check_segment_parameters(seg)
    track = _track_parameters(time_axis, motion, reference_frame)
    return _normalise(
        {
            "segment": seg,
            "voxel_size": _check_voxel_size(voxel_size, "--voxel-size"),
            "channel_axis": None if channel_axis is None else int(channel_axis),
            "fallback_voxel_size": fallback_vs,
            "seed": int(base_seed),
            "time_axis": None if time_axis is None else int(time_axis),
            "track": track,
        }
    )


def _track_parameters(time_axis: Any, motion: Any, reference_frame: Any) -> dict[str, Any]:
    """Check the time-lapse flags; return the ``track_nuclei``-only keyword arguments."""
    if time_axis is not None and (
        isinstance(time_axis, bool) or not isinstance(time_axis, (int, np.integer))
    ):
        raise BatchError(f"time axis must be an integer, got {time_axis!r}")
    track: dict[str, Any] = {}
    if motion is not None:
        from ..pipeline.track import MOTIONS

        if motion not in MOTIONS:
            raise BatchError(f"motion must be one of {', '.join(MOTIONS)}; got {motion!r}")
        track["motion"] = str(motion)
    if reference_frame is not None:
        if (
            isinstance(reference_frame, bool)
            or not isinstance(reference_frame, (int, np.integer))
            or reference_frame < 0
        ):
            raise BatchError(
                f"reference frame must be a non-negative integer, got {reference_frame!r}"
            )
        track["reference_frame"] = int(reference_frame)
    return track


#: ``segment_nuclei`` parameters that ``track_nuclei`` takes with another meaning or
#: default (its ``weights`` / ``weight_refits`` choose per-frame weights; its
#: ``marginal_penalty`` default, 10, kept more identities on moving heads than 1000:
#: docs/tracking.md) or not at all; a time-lapse uses ``track_nuclei``'s defaults.
_NOT_FOR_TRACKING = ("weights", "weight_refits", "marginal_penalty", "n_init",
                     "max_components_per_tile")  # fmt: skip


def tracking_kwargs(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments of ``track_nuclei`` for a time-lapse input of a batch run: the
    run's segmentation parameters that tracking shares, plus its ``track`` options."""
    import inspect

    from ..pipeline.track import track_nuclei

    accepted = set(inspect.signature(track_nuclei).parameters)
    kw = {
        k: v
        for k, v in parameters["segment"].items()
        if k in accepted and k not in _NOT_FOR_TRACKING
    }
    kw.update(parameters.get("track") or {})
    if isinstance(kw.get("covariance_scale"), list):
        kw["covariance_scale"] = tuple(kw["covariance_scale"])
    return kw


def resolve_voxel_size(
    image: Any, parameters: Mapping[str, Any], name: str
) -> tuple[tuple[float, ...], str]:
    """Pick the voxel size of one file: flag > metadata > config > default.

    The default is 1 um per pixel for 2-D images; a 3-D stack without any voxel size is
    an error (ValueError naming the file).
    """
    data = image.data
    ndim = (
        data.ndim
        - (image.channel_axis is not None)
        - (getattr(image, "time_axis", None) is not None)
    )
    candidates = (
        ("--voxel-size", parameters.get("voxel_size")),
        ("metadata", image.voxel_size),
        ("config", parameters.get("fallback_voxel_size")),
    )
    for source, vs in candidates:
        if vs is None:
            continue
        vs = tuple(float(v) for v in vs)
        if len(vs) != ndim:
            raise ValueError(
                f"{name}: voxel size from {source} has {len(vs)} values "
                f"{list(vs)} but the image has {ndim} spatial axes (shape {data.shape})"
            )
        return vs, source
    # one frame's shape and channel axis (a time-lapse's time axis left out)
    t_axis, frame_ch = getattr(image, "time_axis", None), image.channel_axis
    frame = data.shape
    if t_axis is not None:
        frame = frame[:t_axis] + frame[t_axis + 1 :]
        if frame_ch is not None and frame_ch > t_axis:
            frame_ch -= 1
    if single_plane_axis(frame, frame_ch) is not None:
        # one plane saved as a stack (e.g. a 2-D image stored as (Y, X, 1)): segmented in
        # 2-D, so only its pixel size matters, as for a 2-D image
        logger.warning(
            "%s: a single plane (shape %s) without a pixel size in the metadata; assuming "
            "1 um per pixel",
            name,
            data.shape,
        )
        return (1.0,) * ndim, "default"
    if ndim == 3:
        # The z step of a fluorescence stack is almost never its pixel size: guessing
        # isotropic voxels would silently distort the nuclei, so ask instead.
        plane = getattr(image, "pixel_size", None)
        if plane is not None:
            y, x = (f"{v:g}" for v in plane)
            raise ValueError(
                f"{name}: the metadata give the pixel size ({y} x {x} um) but no z step "
                f"for a 3-D stack (shape {data.shape}); pass --voxel-size Z {y} {x} with "
                "the z step in micrometres"
            )
        raise ValueError(
            f"{name}: voxel size unknown (no ImageJ/OME calibration) for a 3-D stack "
            f"(shape {data.shape}), whose z step usually differs from its pixel size; "
            "pass --voxel-size Z Y X in micrometres"
        )
    logger.warning("%s: no pixel size in the metadata; assuming 1 um per pixel", name)
    return (1.0,) * ndim, "default"


def check_parameters_against_inputs(
    items: Sequence[BatchInput], parameters: Mapping[str, Any], *, max_listed: int = 5
) -> None:
    """Refuse a run whose parameters cannot fit its inputs, before any file is touched.

    Reads only the TIFF headers (no pixels). Checked: a ``--channel-axis`` override must
    be an axis of every input, and a ``--voxel-size`` override must have one value per
    spatial axis of every input (e.g. ``0.8 0.35`` for 3-D stacks is refused). Files
    whose header cannot be read are left to fail on their own during the run (a bad
    file never stops the others).

    Raises
    ------
    BatchError
        Naming the parameter, the offending files (up to ``max_listed``) and the reason.
    """
    from ..io import ImageReadError, read_image_axes

    vs = parameters.get("voxel_size")
    channel_axis = parameters.get("channel_axis")
    time_axis = parameters.get("time_axis")
    if vs is None and channel_axis is None and time_axis is None:
        return
    wrong_axis: list[str] = []
    wrong_vs: list[str] = []
    wrong_time: list[str] = []
    for inp in items:
        try:
            axes, shape = read_image_axes(
                inp.path, channel_axis=channel_axis, time_series=True, time_axis=time_axis
            )
        except ImageReadError as exc:
            if channel_axis is not None and f"channel_axis={channel_axis} is out" in str(exc):
                wrong_axis.append(f"{inp.path.name} ({str(exc).rsplit('for ', 1)[-1]})")
            if time_axis is not None and f"time_axis={time_axis} " in str(exc):
                wrong_time.append(f"{inp.path.name} ({str(exc).split('): ', 1)[-1]})")
            continue
        except OSError:
            continue
        spatial = axes.replace("C", "").replace("T", "")
        if vs is not None and len(spatial) != len(vs):
            wrong_vs.append(f"{inp.path.name} ({len(spatial)}-D {spatial}, shape {list(shape)})")

    def listed(names: list[str]) -> str:
        more = f" and {len(names) - max_listed} more" if len(names) > max_listed else ""
        return ", ".join(names[:max_listed]) + more

    if wrong_axis:
        raise BatchError(
            f"--channel-axis {channel_axis} is not an axis of {len(wrong_axis)} input(s): "
            f"{listed(wrong_axis)}; give the index of the channel axis in the stored array "
            "(0 = first), or leave it to the metadata. Nothing was written."
        )
    if wrong_time:
        raise BatchError(
            f"--time-axis {time_axis} does not fit {len(wrong_time)} input(s): "
            f"{listed(wrong_time)}; give the index of the time axis in the stored array "
            "(0 = first), or leave it to the metadata. Nothing was written."
        )
    if wrong_vs:
        want = "Z Y X for 3-D stacks" if len(vs) == 2 else "Y X for 2-D images"
        raise BatchError(
            f"--voxel-size has {len(vs)} values {list(vs)} but {len(wrong_vs)} input(s) have "
            f"another number of spatial axes: {listed(wrong_vs)}; give one value per "
            f"spatial axis ({want}), or run 2-D and 3-D inputs separately. Nothing was written."
        )
