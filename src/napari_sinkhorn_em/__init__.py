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

__all__ = [
    "ImageData",
    "ImageReadError",
    "__version__",
    "read_image",
    "write_image",
    "write_labels",
    "write_table",
]
