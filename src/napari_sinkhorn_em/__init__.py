"""Nuclei segmentation in C. elegans fluorescence stacks with Sinkhorn-EM.

The core (this package minus ``_widget``) imports neither napari nor Qt.
"""

__version__ = "0.1.0.dev0"

from .io import (
    ImageData,
    ImageReadError,
    read_image,
    write_image,
    write_labels,
    write_table,
)
from .mixture import ConvergenceWarning, SinkhornEM
from .segmentation import (
    SegmentationCancelled,
    SegmentationResult,
    load_params,
    save_params,
    segment_nuclei,
)
from .sinkhorn import sinkhorn_responsibilities

__all__ = [
    "ConvergenceWarning",
    "ImageData",
    "ImageReadError",
    "SegmentationCancelled",
    "SegmentationResult",
    "SinkhornEM",
    "__version__",
    "load_params",
    "read_image",
    "save_params",
    "segment_nuclei",
    "sinkhorn_responsibilities",
    "write_image",
    "write_labels",
    "write_table",
]
