"""Former location of :func:`segment_nuclei`; kept so that old imports keep working.

Use :func:`napari_sinkhorn_em.segment_nuclei` (the pipeline lives in
:mod:`napari_sinkhorn_em.pipeline`).
"""

from .pipeline.segment import (
    SegmentationCancelled,
    SegmentationResult,
    fit_iteration_budget,
    load_params,
    save_params,
    segment_nuclei,
)

__all__ = [
    "SegmentationCancelled",
    "SegmentationResult",
    "fit_iteration_budget",
    "load_params",
    "save_params",
    "segment_nuclei",
]
