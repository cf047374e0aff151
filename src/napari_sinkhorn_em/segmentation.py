"""Former location of :func:`segment_nuclei`; kept so that old imports keep working.

Use :func:`napari_sinkhorn_em.segment_nuclei` (the pipeline lives in
:mod:`napari_sinkhorn_em.pipeline`).
"""

from .pipeline import *  # noqa: F403
from .pipeline import __all__  # noqa: F401
