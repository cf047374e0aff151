"""Nuclei segmentation in C. elegans fluorescence stacks with Sinkhorn-EM.

The core (this package minus ``_widget``) imports neither napari nor Qt.
"""

__version__ = "0.1.0.dev0"

__all__ = ["__version__"]
