"""Mixing weights from the data: Voronoi cell masses and the reference nuclei.

Each component's weight is a voxel mass: that of its own Voronoi cell (``"voronoi"``) or
that of the reference nucleus nearest to its mean (``"nuclei"``: two components in one
nucleus both claim all of it, so one is pushed out). See docs/study_random_starts.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree

from ..params import WEIGHT_MODES

__all__ = [
    "WEIGHT_MODES",
    "ReferenceNuclei",
    "mixing_weights",
    "reference_nuclei",
    "voronoi_mass",
    "weights_from_mass",
]


def voronoi_mass(positions: np.ndarray, mass: np.ndarray, centres_um: np.ndarray) -> np.ndarray:
    """Total mass of the voxels whose nearest centre (Euclidean) is each centre.

    Parameters
    ----------
    positions : numpy.ndarray, shape (N, ndim)
        Voxel positions (um).
    mass : numpy.ndarray, shape (N,)
        Voxel masses.
    centres_um : numpy.ndarray, shape (K, ndim)
        Centres (um).

    Returns
    -------
    numpy.ndarray, shape (K,)
        Mass of each centre's Voronoi cell (0 for an empty cell).
    """
    _, nearest = cKDTree(centres_um).query(positions, k=1, workers=-1)
    return np.bincount(nearest, weights=mass, minlength=centres_um.shape[0])


def weights_from_mass(mass: np.ndarray, floor: float = 0.01) -> np.ndarray:
    """Normalise cell masses into mixing weights.

    Cells lighter than ``floor`` x the median positive mass are raised to it, so that no
    component gets a zero weight.

    Parameters
    ----------
    mass : array_like, shape (K,)
    floor : float

    Returns
    -------
    numpy.ndarray, shape (K,)
        Weights summing to 1.
    """
    m = np.asarray(mass, dtype=np.float64)
    med = float(np.median(m[m > 0])) if np.any(m > 0) else 1.0
    m = np.maximum(m, floor * med)
    return m / m.sum()


@dataclass
class ReferenceNuclei:
    """Reference nuclei for ``weights="nuclei"``: centres with their Voronoi masses.

    Attributes
    ----------
    centres_um : numpy.ndarray, shape (R, ndim)
    mass : numpy.ndarray, shape (R,)
        Voxel mass of each centre's Voronoi cell.
    """

    centres_um: np.ndarray
    mass: np.ndarray
    _tree: cKDTree = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._tree = cKDTree(self.centres_um)

    def weights(self, means_um: np.ndarray) -> np.ndarray:
        """Each component gets the mass of the reference nucleus nearest to its mean
        (position block, um), normalised by :func:`weights_from_mass`."""
        _, nearest = self._tree.query(means_um, workers=-1)
        return weights_from_mass(self.mass[nearest])


def reference_nuclei(
    positions: np.ndarray, mass: np.ndarray, centres_um: np.ndarray
) -> ReferenceNuclei:
    """The reference nuclei at ``centres_um``, each with its Voronoi mass
    (:func:`voronoi_mass` over ``positions`` / ``mass``)."""
    centres_um = np.asarray(centres_um)
    return ReferenceNuclei(centres_um, voronoi_mass(positions, mass, centres_um))


def mixing_weights(
    mode: str,
    means_um: np.ndarray,
    positions: np.ndarray,
    mass: np.ndarray,
    reference: ReferenceNuclei | None = None,
) -> np.ndarray | None:
    """Mixing weights of components with position means ``means_um``.

    Parameters
    ----------
    mode : {"nuclei", "voronoi", "uniform"}
        See :func:`~napari_sinkhorn_em.segment_nuclei` (``weights``).
    means_um : numpy.ndarray, shape (K, ndim)
        Component position means (um).
    positions, mass : numpy.ndarray
        Voxel positions (um) and masses (``"voronoi"``).
    reference : ReferenceNuclei, optional
        Required for ``"nuclei"``.

    Returns
    -------
    numpy.ndarray or None
        Weights summing to 1; None for ``"uniform"`` (equal weights).
    """
    if mode == "uniform":
        return None
    if mode == "nuclei":
        if reference is None:
            raise ValueError("weights='nuclei' needs the reference nuclei")
        return reference.weights(means_um)
    if mode == "voronoi":
        return weights_from_mass(voronoi_mass(positions, mass, means_um))
    raise ValueError(f"weights must be one of {', '.join(map(repr, WEIGHT_MODES))}; got {mode!r}")
