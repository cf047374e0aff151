"""Former location of the E-step; kept so that old imports keep working.

Use :func:`napari_sinkhorn_em.sinkhorn_responsibilities` (defined in
:mod:`napari_sinkhorn_em.mixture.estep`).
"""

from .mixture.estep import SinkhornInfo, sinkhorn_responsibilities

__all__ = ["SinkhornInfo", "sinkhorn_responsibilities"]
