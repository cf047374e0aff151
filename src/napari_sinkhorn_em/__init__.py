"""Nuclei segmentation in C. elegans fluorescence stacks with Sinkhorn-EM.

The core (this package minus the napari plugin, subpackage ``_napari``) imports neither
napari nor Qt. The public names below are loaded on first use (PEP 562), so that
``import napari_sinkhorn_em`` and ``napari-sinkhorn-em --help`` stay fast and do not
load Numba.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0.dev0"

# public name -> submodule that defines it
_EXPORTS = {
    "ImageData": "io",
    "ImageReadError": "io",
    "read_image": "io",
    "write_image": "io",
    "write_labels": "io",
    "write_table": "io",
    "ConvergenceWarning": "mixture.estimator",
    "SinkhornEM": "mixture.estimator",
    "SegmentationCancelled": "pipeline.segment",
    "SegmentationResult": "pipeline.segment",
    "SegmentationWarning": "pipeline.segment",
    "SegmentationParams": "params",
    "load_params": "pipeline.segment",
    "save_params": "pipeline.segment",
    "segment_nuclei": "pipeline.segment",
    "sinkhorn_responsibilities": "mixture.estep",
    "TrackingCancelled": "pipeline.track",
    "TrackingResult": "pipeline.track",
    "track_nuclei": "pipeline.track",
    "save_tracking": "pipeline.track",
}

__all__ = [
    "ConvergenceWarning",
    "ImageData",
    "ImageReadError",
    "SegmentationCancelled",
    "SegmentationParams",
    "SegmentationResult",
    "SegmentationWarning",
    "SinkhornEM",
    "TrackingCancelled",
    "TrackingResult",
    "__version__",
    "load_params",
    "read_image",
    "save_params",
    "save_tracking",
    "segment_nuclei",
    "sinkhorn_responsibilities",
    "track_nuclei",
    "write_image",
    "write_labels",
    "write_table",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from .io import (
        ImageData,
        ImageReadError,
        read_image,
        write_image,
        write_labels,
        write_table,
    )
    from .mixture.estep import sinkhorn_responsibilities
    from .mixture.estimator import ConvergenceWarning, SinkhornEM
    from .params import SegmentationParams
    from .pipeline.segment import (
        SegmentationCancelled,
        SegmentationResult,
        SegmentationWarning,
        load_params,
        save_params,
        segment_nuclei,
    )
    from .pipeline.track import TrackingCancelled, TrackingResult, save_tracking, track_nuclei
