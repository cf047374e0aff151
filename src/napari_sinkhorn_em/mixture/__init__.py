"""The model: a Gaussian mixture fitted by Sinkhorn-EM (or EM), independent of images.

- :mod:`.estimator`: :class:`SinkhornEM`, the scikit-learn-shaped estimator;
- :mod:`.estep`: :func:`sinkhorn_responsibilities`, the (sparse) entropic-OT E-step;
- :mod:`._kernels`: the Numba kernels both use.
"""

from .estep import SinkhornInfo, sinkhorn_responsibilities
from .estimator import ConvergenceWarning, SinkhornEM

__all__ = ["ConvergenceWarning", "SinkhornEM", "SinkhornInfo", "sinkhorn_responsibilities"]
