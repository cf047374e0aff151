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
from .sinkhorn import sinkhorn_responsibilities

__all__ = [
    "ConvergenceWarning",
    "ImageData",
    "ImageReadError",
    "SinkhornEM",
    "__version__",
    "read_image",
    "sinkhorn_responsibilities",
    "write_image",
    "write_labels",
    "write_table",
]
