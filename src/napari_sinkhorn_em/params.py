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
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SegmentationParams"]


def _p(default: Any, help: str) -> Any:
    """A field with a default and a one-line help text."""
    if isinstance(default, (list, dict)):
        raise TypeError("mutable defaults are not allowed; use a tuple")
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class SegmentationParams:
    """Parameters of :func:`~napari_sinkhorn_em.segment_nuclei` (see its docstring).

    Frozen: derive variants with :meth:`replace`. ``to_dict`` / ``from_dict`` and
    ``to_json`` / ``from_json`` round-trip exactly.
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
        None, "scale/contrast-adaptive detection; None = on with an 'auto' diameter"
    )
    method: str = _p("sinkhorn", "sinkhorn, em (same fixed weights) or em-learned")
    init: Any = _p("peaks", "peaks, k-means++, random, or (K, ndim) centres in voxels")
    n_init: int = _p(1, "number of random starts (best kept)")
    max_iter: int = _p(100, "iteration limit of the fit")
    tol: float = _p(1e-5, "objective-change tolerance of the fit")
    intensity_weight: float = _p(1.0, "um per normalised intensity unit (0 = position only)")
    n_neighbors: int = _p(16, "components each voxel interacts with in the E-step")
    foreground_threshold: float | None = _p(None, "threshold on normalised intensity; None = auto")
    random_state: int | None = _p(None, "seed; None draws one (recorded)")
    weights: str = _p("nuclei", "mixing weights: nuclei, voronoi or uniform")
    weight_refits: int | str = _p("auto", "weight re-estimations (int >= 0 or 'auto')")
    marginal_penalty: float | None = _p(1000.0, "Sinkhorn-EM soft marginal; None = exact")
    voxel_mass: str = _p("uniform", "voxel mass: uniform or intensity")
    covariance_scale: tuple[float, float] = _p(
        (0.25, 4.0), "position-covariance bounds, multiples of the nominal nucleus variance"
    )
    mahalanobis_radius: float = _p(3.0, "voxels farther than this from their nucleus stay 0")
    min_size: float = _p(0.1, "smallest label, fraction of a nominal nucleus volume")
    background_scale: float | None = _p(None, "background block size (um); None = auto, 0 = off")
    threshold_method: str = _p("otsu", "automatic threshold: otsu, triangle or noise")
    suppress_granules: bool = _p(True, "remove small bright colourless granules")
    max_components_per_tile: int = _p(200, "fit in slabs above this many nuclei")

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

    def replace(self, **changes: Any) -> SegmentationParams:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-serialisable dict (tuples become lists)."""
        from ._json import jsonable

        return jsonable({n: getattr(self, n) for n in self.names()})

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, where: str = "parameters") -> SegmentationParams:
        """Build from a dict of keyword arguments; unknown names are an error naming
        ``where`` (e.g. the config file)."""
        unknown = sorted(set(values) - set(cls.names()))
        if unknown:
            raise ValueError(
                f"{where}: unknown segmentation parameter(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(cls.names()))}"
            )
        return cls(**{k: _freeze(v) for k, v in values.items()})

    def to_json(self) -> str:
        """JSON text ``{"napari_sinkhorn_em_version": ..., "parameters": {...}}``."""
        from . import __version__

        doc = {"napari_sinkhorn_em_version": __version__, "parameters": self.to_dict()}
        return json.dumps(doc, indent=2, sort_keys=True, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str, *, where: str = "parameters") -> SegmentationParams:
        """Parse :meth:`to_json` output (or a bare parameters object)."""
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where} is not valid JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise ValueError(f"{where} must hold a JSON object")
        params = doc.get("parameters", doc)
        if not isinstance(params, dict):
            raise ValueError(f"{where}: 'parameters' must be a JSON object")
        params = {k: v for k, v in params.items() if k != "napari_sinkhorn_em_version"}
        return cls.from_dict(params, where=where)


def _freeze(value: Any) -> Any:
    """Lists (from JSON) to tuples, so that the frozen object is hashable-ish and equal
    to one built from tuples."""
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value
