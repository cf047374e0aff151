"""One parameter object for the segmentation: defaults, JSON, and the single source the
widget form, the command line and the config files derive from.

:class:`SegmentationParams` holds every keyword argument of
:func:`~napari_sinkhorn_em.segment_nuclei` (except ``progress``) with its default. The
field metadata carry a one-line help text (shown as widget tooltips and CLI help).
"""

# _p() returns dataclasses.field(...): not a shared mutable default
# ruff: noqa: RUF009

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "INITS",
    "METHODS",
    "THRESHOLD_METHODS",
    "VOXEL_MASSES",
    "WEIGHT_MODES",
    "SegmentationParams",
]

# the allowed values of the string parameters (the pipeline, the CLI and the widget use
# these, so that they cannot drift apart)
METHODS = ("sinkhorn", "em", "em-learned")
INITS = ("peaks", "k-means++", "random")
WEIGHT_MODES = ("nuclei", "voronoi", "uniform")
VOXEL_MASSES = ("uniform", "intensity")
THRESHOLD_METHODS = ("otsu", "triangle", "noise")
# random_state is a NumPy seed: 0 <= seed < 2**32
MAX_SEED = 2**32 - 1


def _p(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    """A field with a default, a one-line help text and (for strings) the allowed values."""
    if isinstance(default, (list, dict)):
        raise TypeError("mutable defaults are not allowed; use a tuple")
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class SegmentationParams:
    """Parameters of :func:`~napari_sinkhorn_em.segment_nuclei` (see its docstring).

    Frozen: derive variants with :meth:`replace`. ``to_dict`` / ``from_dict`` and
    ``to_json`` / ``from_json`` round-trip exactly.

    Every value is checked when the object is made (type, finiteness, range; one
    message naming the parameter and the reason) and normalised: numbers to ``int`` /
    ``float``, sequences to tuples (``voxel_size``, ``covariance_scale``,
    ``channel_names``, an ``init`` array to nested tuples of floats), ``n_nuclei=None`` to
    ``"auto"``, repeated channel names made unique (``GFP``, ``GFP_2``). Checks that need
    the image (voxel size per axis, diameter against the image extent, channel axis)
    happen in :func:`~napari_sinkhorn_em.segment_nuclei`. ``random_state=None`` stays
    None here; the seed is drawn at run time and recorded in ``result.params``.
    """

    voxel_size: tuple[float, ...] | None = _p(
        None, "voxel size in um per spatial axis, e.g. (z, y, x); None = 1 um"
    )
    channel_axis: int | None = _p(None, "axis holding the channels (None = one channel)")
    channel_names: tuple[str, ...] | None = _p(None, "names for the mean_<name> columns")
    n_nuclei: int | str | None = _p(None, "number of nuclei; None / 'auto' = estimated")
    nucleus_diameter: float | str = _p(
        "auto", "typical nucleus diameter (um); 'auto' = estimated from the image"
    )
    local_contrast: bool | None = _p(
        True, "scale/contrast-adaptive detection (False = the fixed-scale pipeline)"
    )
    method: str = _p("sinkhorn", "sinkhorn, em (same fixed weights) or em-learned", METHODS)
    init: Any = _p("peaks", "peaks, k-means++, random, or (K, ndim) centres in voxels")
    n_init: int = _p(1, "number of random starts (best kept)")
    max_iter: int = _p(100, "iteration limit of the fit")
    tol: float = _p(1e-4, "objective-change tolerance of the fit (per voxel)")
    intensity_weight: float = _p(1.0, "um per normalised intensity unit (0 = position only)")
    n_neighbors: int = _p(16, "components each voxel interacts with in the E-step")
    foreground_threshold: float | None = _p(None, "threshold on normalised intensity; None = auto")
    random_state: int | None = _p(None, "seed; None draws one (recorded)")
    weights: str = _p("nuclei", "mixing weights: nuclei, voronoi or uniform", WEIGHT_MODES)
    weight_refits: int | str = _p("auto", "weight re-estimations (int >= 0 or 'auto')")
    marginal_penalty: float | None = _p(1000.0, "Sinkhorn-EM soft marginal; None = exact")
    voxel_mass: str = _p("uniform", "voxel mass: uniform or intensity", VOXEL_MASSES)
    covariance_scale: tuple[float, float] = _p(
        (0.25, 4.0), "position-covariance bounds, multiples of the nominal nucleus variance"
    )
    mahalanobis_radius: float = _p(3.0, "voxels farther than this from their nucleus stay 0")
    min_size: float = _p(0.1, "smallest label, fraction of a nominal nucleus volume")
    background_scale: float | None = _p(None, "background block size (um); None = auto, 0 = off")
    threshold_method: str = _p(
        "otsu", "automatic threshold: otsu, triangle or noise", THRESHOLD_METHODS
    )
    suppress_granules: bool = _p(True, "remove small bright colourless granules")
    max_components_per_tile: int = _p(200, "fit in slabs above this many nuclei")

    # ------------------------------------------------------------------ validation
    def __post_init__(self) -> None:
        from ._validation import (
            check_choice,
            check_float,
            check_int,
            check_marginal_penalty,
            check_voxel_size,
        )

        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        def optional(name: str, check, **kw) -> None:
            value = getattr(self, name)
            put(name, None if value is None else check(name, value, **kw))

        put("voxel_size", check_voxel_size(self.voxel_size, (2, 3)))
        optional("channel_axis", check_int)
        put("channel_names", _channel_names(self.channel_names))
        n = self.n_nuclei
        if n is None or n == "auto":
            put("n_nuclei", "auto")
        elif isinstance(n, str):
            raise ValueError(f"n_nuclei must be a positive integer, 'auto' or None, got {n!r}")
        else:
            put("n_nuclei", check_int("n_nuclei", n, min=1))
        put("nucleus_diameter", _check_diameter(self.nucleus_diameter))
        for name in ("method", "weights", "voxel_mass", "threshold_method"):
            check_choice(name, getattr(self, name), self.choices(name))
        put("init", _check_init(self.init))
        put("n_init", check_int("n_init", self.n_init, min=1))
        put("max_iter", check_int("max_iter", self.max_iter, min=0))
        put("tol", check_float("tol", self.tol, min=0.0))
        put("intensity_weight", check_float("intensity_weight", self.intensity_weight, min=0.0))
        put("n_neighbors", check_int("n_neighbors", self.n_neighbors, min=1))
        optional("foreground_threshold", check_float, min=0.0)
        optional("random_state", check_int, min=0, max=MAX_SEED)
        if isinstance(self.weight_refits, str):
            check_choice("weight_refits", self.weight_refits, ("auto",))
        else:
            put("weight_refits", check_int("weight_refits", self.weight_refits, min=0))
        put("marginal_penalty", check_marginal_penalty(self.marginal_penalty))
        put("covariance_scale", _check_covariance_scale(self.covariance_scale))
        put(
            "mahalanobis_radius",
            check_float(
                "mahalanobis_radius", self.mahalanobis_radius, min=0.0, min_inclusive=False
            ),
        )
        put("min_size", check_float("min_size", self.min_size, min=0.0))
        optional("background_scale", check_float, min=0.0, unit="um")
        if self.local_contrast is None:
            put("local_contrast", True)  # as older parameter files have it: the default
        elif not isinstance(self.local_contrast, bool):
            if type(self.local_contrast).__name__ != "bool_":
                raise ValueError(
                    f"local_contrast must be True, False or None, got {self.local_contrast!r}"
                )
            put("local_contrast", bool(self.local_contrast))
        if not isinstance(self.suppress_granules, bool):
            if type(self.suppress_granules).__name__ != "bool_":  # numpy.bool_
                raise ValueError(
                    f"suppress_granules must be True or False, got {self.suppress_granules!r}"
                )
            put("suppress_granules", bool(self.suppress_granules))
        put(
            "max_components_per_tile",
            check_int("max_components_per_tile", self.max_components_per_tile, min=1),
        )

    # ------------------------------------------------------------------ conversion
    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Field names, in signature order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Default value of each field."""
        return {f.name: f.default for f in dataclasses.fields(cls)}

    @classmethod
    def help(cls, name: str) -> str:
        """One-line help text of a field."""
        return {f.name: f.metadata["help"] for f in dataclasses.fields(cls)}[name]

    @classmethod
    def choices(cls, name: str) -> tuple[str, ...] | None:
        """Allowed values of a string field (None for other fields)."""
        return {f.name: f.metadata["choices"] for f in dataclasses.fields(cls)}[name]

    def replace(self, **changes: Any) -> SegmentationParams:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable dict (tuples become lists)."""
        from ._json import jsonable

        return jsonable({n: getattr(self, n) for n in self.names()})

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, where: str | None = None) -> SegmentationParams:
        """Build from a dict of keyword arguments (missing ones take their defaults).

        Unknown names and invalid values are errors naming ``where`` (e.g. the config
        file) when given.
        """
        unknown = sorted(set(values) - set(cls.names()))
        if unknown:
            raise ValueError(
                f"{where or 'parameters'}: unknown segmentation parameter(s) "
                f"{', '.join(unknown)}; known: {', '.join(sorted(cls.names()))}"
            )
        try:
            return cls(**{k: _freeze(v) for k, v in values.items()})
        except ValueError as exc:
            if where is None:
                raise
            raise ValueError(f"{where}: {exc}") from None

    def to_json(self, keys: Sequence[str] | None = None) -> str:
        """JSON text ``{"napari_sinkhorn_em_version": ..., "parameters": {...}}``, the
        file format of :func:`~napari_sinkhorn_em.save_params`; ``keys`` = only these
        parameters (default all)."""
        from . import __version__

        values = self.to_dict()
        if keys is not None:
            values = {k: values[k] for k in keys}
        doc = {"napari_sinkhorn_em_version": __version__, "parameters": values}
        return json.dumps(doc, indent=2, sort_keys=True, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str, *, where: str = "parameters") -> SegmentationParams:
        """Parse :meth:`to_json` output (or a bare parameters object)."""
        return cls.from_dict(parse_json(text, where=where), where=where)


def parse_json(text: str, *, where: str = "parameters") -> dict[str, Any]:
    """The parameters object of a parameter file's text (``{"parameters": {...}}`` or a
    bare object), not yet checked; errors name ``where``."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ValueError(f"{where} must hold a JSON object")
    params = doc.get("parameters", doc)
    if not isinstance(params, dict):
        raise ValueError(f"{where}: 'parameters' must be a JSON object")
    return {k: v for k, v in params.items() if k != "napari_sinkhorn_em_version"}


def _check_diameter(value: Any) -> float | str:
    """The nucleus diameter: "auto" (None is read as "auto": estimated from the image,
    :mod:`~napari_sinkhorn_em.pipeline.scale`) or a positive, finite number of
    micrometres."""
    from ._validation import check_float

    if value is None or (isinstance(value, str) and value == "auto"):
        return "auto"
    return check_float("nucleus_diameter", value, min=0.0, min_inclusive=False, unit="um")


def _check_init(value: Any) -> Any:
    """An init name, or ``(K, ndim)`` centres as nested tuples of floats (all finite)."""
    from ._validation import check_choice

    if isinstance(value, str):
        return check_choice("init", value, INITS)
    import numpy as np

    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"init must be one of {', '.join(map(repr, INITS))} or an array of centres "
            f"(voxel coordinates): {exc}"
        ) from exc
    if not np.all(np.isfinite(arr)):
        raise ValueError("init array contains NaN or infinite centres")
    return _freeze(arr.tolist())


def _check_covariance_scale(value: Any) -> tuple[float, float]:
    from ._validation import check_float

    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise ValueError(f"covariance_scale must be two numbers (lo, hi), got {value!r}")
    lo, hi = (check_float("covariance_scale", v) for v in value)
    if not 0 < lo <= hi:
        raise ValueError(f"covariance_scale must satisfy 0 < lo <= hi, got {value}")
    return (lo, hi)


def _channel_names(names: Any) -> tuple[str, ...] | None:
    """Channel names as a tuple of strings; a repeated name gets a suffix (``GFP``,
    ``GFP_2``, ``GFP_3``) so that every ``mean_<name>`` table column is kept."""
    if names is None:
        return None
    if isinstance(names, (str, bytes)) or not hasattr(names, "__iter__"):
        raise ValueError(f"channel_names must be a sequence of names, got {names!r}")
    out: list[str] = []
    for name in (str(n) for n in names):
        unique, k = name, 2
        while unique in out:
            unique, k = f"{name}_{k}", k + 1
        out.append(unique)
    return tuple(out)


def _freeze(value: Any) -> Any:
    """Lists (from JSON) to tuples, so that the frozen object is hashable-ish and equal
    to one built from tuples."""
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value
