"""The image pipeline: stack -> preprocess -> features -> peaks -> start -> fit -> labels -> table.

Each stage is a plain function in a module named after it; :func:`segment_nuclei`
(:mod:`.segment`) calls them in order.
"""

from .segment import (
    SegmentationCancelled,
    SegmentationResult,
    SegmentationWarning,
    fit_iteration_budget,
    load_params,
    save_params,
    segment_nuclei,
)

__all__ = [
    "SegmentationCancelled",
    "SegmentationResult",
    "SegmentationWarning",
    "fit_iteration_budget",
    "load_params",
    "save_params",
    "segment_nuclei",
]
