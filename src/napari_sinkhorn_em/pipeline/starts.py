"""Starting points of the fit: the number of components, initial means and covariances.

A start is built from detected nuclei (``"peaks"``: the strongest LoG peaks, plus D^2
seeds when more nuclei are asked for than were found), from given centres (an array), or
drawn by the estimator itself (``"k-means++"``, ``"random"``: :func:`draw_start`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from ..mixture import SinkhornEM
from ..params import INITS
from .peaks import Peaks

__all__ = [
    "INITS",
    "Start",
    "add_seeds",
    "array_start",
    "covariance_bounds",
    "draw_start",
    "means_from_centres",
    "n_components",
    "nominal_covariances",
    "nominal_variance",
    "peak_centres",
    "peak_start",
]


@dataclass
class Start:
    """Initial parameters of the mixture.

    Attributes
    ----------
    means : numpy.ndarray, shape (K, D)
        Position (um) then weighted intensities.
    covariances : numpy.ndarray, shape (K, D, D)
    centres_um : numpy.ndarray or None, shape (K, ndim)
        The start centres of a peak or array start (they serve as reference nuclei for
        ``weights="nuclei"``); None for a drawn start.
    """

    means: np.ndarray
    covariances: np.ndarray
    centres_um: np.ndarray | None = None


def n_components(
    n_nuclei: int | str | None,
    peaks: Peaks | None,
    init_array: np.ndarray | None,
    n_points: int,
) -> int:
    """Number of mixture components.

    Parameters
    ----------
    n_nuclei : int, "auto" or None
        Requested count; None / "auto" = the number of detected peaks.
    peaks : Peaks or None
        Detected nuclei (needed for an automatic count).
    init_array : numpy.ndarray or None
        Given centres ``(K, ndim)``: their number is the count.
    n_points : int
        Foreground voxels (the count may not exceed it).

    Raises
    ------
    ValueError
        When no nuclei were detected, the count disagrees with the given centres, or it
        exceeds the foreground voxels.
    """
    auto = n_nuclei is None or n_nuclei == "auto"
    if init_array is not None:
        K = init_array.shape[0]
        if not auto and int(n_nuclei) != K:
            raise ValueError(f"n_nuclei={n_nuclei} differs from the {K} centres given in init")
    elif auto:
        K = len(peaks)
        if K == 0:
            raise ValueError("no nuclei detected (no LoG peaks in the foreground)")
    else:
        K = int(n_nuclei)
    if n_points < K:
        raise ValueError(
            f"n_nuclei={K} is larger than the number of foreground voxels ({n_points}); "
            "lower n_nuclei or foreground_threshold"
        )
    return K


def add_seeds(
    positions: np.ndarray,
    mass: np.ndarray,
    centres_um: np.ndarray,
    n_extra: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Add ``n_extra`` centres by D^2 sampling, as k-means++ does.

    Each new seed is a voxel drawn with probability proportional to its mass times its
    squared distance to the nearest centre so far: new seeds go where mass is far from
    every centre.

    Parameters
    ----------
    positions : numpy.ndarray, shape (N, ndim)
        Voxel positions (um).
    mass : numpy.ndarray, shape (N,)
    centres_um : numpy.ndarray, shape (K0, ndim)
        Existing centres (may be empty).
    n_extra : int
    rng : numpy.random.Generator

    Returns
    -------
    numpy.ndarray, shape (K0 + n_extra, ndim)
    """
    centres = [np.asarray(centres_um, dtype=np.float64)]
    if centres[0].shape[0]:
        d2 = cKDTree(centres[0]).query(positions, k=1, workers=-1)[0] ** 2
    else:
        d2 = np.ones(positions.shape[0])
    for _ in range(n_extra):
        p = mass * d2
        tot = p.sum()
        j = rng.choice(positions.shape[0], p=p / tot) if tot > 0 else rng.integers(len(p))
        c = positions[j]
        centres.append(c[None])
        d2 = np.minimum(d2, ((positions - c) ** 2).sum(axis=1))
    return np.vstack(centres)


def peak_centres(
    positions: np.ndarray,
    mass: np.ndarray,
    peaks: Peaks,
    voxel_size: np.ndarray,
    n: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """The first ``n`` detected nuclei (um), plus :func:`add_seeds` seeds if there are
    fewer."""
    c_um = peaks.coords[:n] * voxel_size
    if len(peaks) < n:  # more nuclei than peaks: k-means++-style extra seeds
        c_um = add_seeds(positions, mass, c_um, n - len(peaks), rng)
    return c_um


def means_from_centres(
    X: np.ndarray, positions: np.ndarray, centres_um: np.ndarray, n_near: int = 8
) -> np.ndarray:
    """Initial means at ``centres_um``: the position, and the mean intensity features of
    the ``n_near`` foreground voxels nearest to it.

    Parameters
    ----------
    X : numpy.ndarray, shape (N, D)
        Voxel features (position in um first).
    positions : numpy.ndarray, shape (N, ndim)
    centres_um : numpy.ndarray, shape (K, ndim)
    n_near : int

    Returns
    -------
    numpy.ndarray, shape (K, D)
    """
    K, ndim = centres_um.shape
    D = X.shape[1]
    kq = min(n_near, positions.shape[0])
    _, nn = cKDTree(positions).query(centres_um, k=kq, workers=-1)
    nn = nn.reshape(K, kq)
    means = np.empty((K, D))
    means[:, :ndim] = centres_um
    if ndim < D:
        means[:, ndim:] = X[nn, ndim:].mean(axis=1)
    return means


def nominal_variance(nucleus_diameter: float) -> float:
    """Position variance of a uniform ball of the nucleus diameter, ``(d/2)^2 / 5``
    (um^2)."""
    return (nucleus_diameter / 2.0) ** 2 / 5.0


def covariance_bounds(
    nucleus_diameter: float, covariance_scale: tuple[float, float]
) -> tuple[float, float]:
    """Bounds of the position-covariance eigenvalues (um^2): ``covariance_scale`` times
    :func:`nominal_variance`."""
    var = nominal_variance(nucleus_diameter)
    lo_s, hi_s = (float(v) for v in covariance_scale)
    return (lo_s * var, hi_s * var)


def nominal_covariances(X: np.ndarray, n: int, ndim: int, nucleus_diameter: float) -> np.ndarray:
    """Initial covariances: the nominal nucleus variance on the position block, a quarter
    of each intensity feature's variance on the intensity block (diagonal)."""
    D = X.shape[1]
    cov = np.zeros((n, D, D))
    cov[:, np.arange(ndim), np.arange(ndim)] = nominal_variance(nucleus_diameter)
    if ndim < D:
        ivar = np.maximum(np.var(X[:, ndim:], axis=0), 1e-6) / 4.0
        cov[:, np.arange(ndim, D), np.arange(ndim, D)] = ivar
    return cov


def peak_start(
    X: np.ndarray,
    positions: np.ndarray,
    mass: np.ndarray,
    peaks: Peaks,
    voxel_size: np.ndarray,
    n: int,
    nucleus_diameter: float,
    rng: np.random.Generator,
) -> Start:
    """Start at the detected nuclei (:func:`peak_centres`)."""
    c_um = peak_centres(positions, mass, peaks, voxel_size, n, rng)
    return array_start(X, positions, c_um, nucleus_diameter)


def array_start(
    X: np.ndarray, positions: np.ndarray, centres_um: np.ndarray, nucleus_diameter: float
) -> Start:
    """Start at given centres (um), e.g. hand-corrected ones."""
    ndim = centres_um.shape[1]
    return Start(
        means_from_centres(X, positions, centres_um),
        nominal_covariances(X, centres_um.shape[0], ndim, nucleus_diameter),
        centres_um,
    )


def draw_start(
    X: np.ndarray,
    sample_weight: np.ndarray,
    n: int,
    init: str,
    *,
    covariance_bounds: tuple[float, float],
    n_neighbors: int,
    position_dims: int,
    rng: np.random.Generator,
) -> Start:
    """A ``"k-means++"`` or ``"random"`` start drawn by :class:`SinkhornEM` itself (means
    and data-driven covariances, no iteration), so that the weights can be set from it as
    for peak starts."""
    start = SinkhornEM(
        n,
        method="em",
        covariance_type="full",
        covariance_bounds=covariance_bounds,
        max_iter=0,
        init=init,
        n_neighbors=min(int(n_neighbors), n),
        random_state=rng,
        position_dims=position_dims,
    ).fit(X, sample_weight=sample_weight)
    return Start(start.means_, start.covariances_)
