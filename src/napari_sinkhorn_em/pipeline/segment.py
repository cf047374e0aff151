"""Nucleus segmentation: stack -> features -> Sinkhorn-EM -> labels, centres, table.

:func:`segment_nuclei` is the entry point used by the napari widget and the batch tool.
The steps (see docs/pipeline.md for the reasoning and the measured effect of each):

1. preprocess (:mod:`.preprocess`): channel axis last, background subtraction, robust
   per-channel normalisation, autofluorescent-granule suppression, foreground threshold;
2. detect nuclei as LoG peaks at the nucleus scale plus a smaller scale for nuclei
   pressed against bigger ones (:func:`.peaks.detect_nuclei`) -- the automatic nucleus
   count and the "peaks" initialisation;
3. voxel features (:mod:`.features`): position (um) + weighted intensities, voxel mass;
4. mixing weights estimated from the data: each component gets the voxel mass of the
   detected nucleus nearest to its mean (re-assigned around the fitted centres in an
   outer loop from random / k-means++ starts);
5. fit :class:`~napari_sinkhorn_em.mixture.SinkhornEM` (sparse E-step with a soft column
   marginal, block covariance position/intensity, position-covariance bounds from the
   nucleus diameter);
6. labels: each foreground voxel to its most responsible component if it lies within a
   Mahalanobis radius of it; one connected piece per label; tiny fragments removed;
7. per-nucleus table.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from .._json import jsonable
from ..io import atomic_write
from ..mixture import ConvergenceWarning, SinkhornEM
from ..mixture.estep import _check_marginal_penalty
from . import adaptive
from ._regions import foreground_boxes
from .features import voxel_features
from .peaks import detect_nuclei
from .preprocess import preprocess
from .scale import resolve_diameter

__all__ = [
    "SegmentationCancelled",
    "SegmentationResult",
    "fit_iteration_budget",
    "load_params",
    "save_params",
    "segment_nuclei",
]

METHODS = ("sinkhorn", "em", "em-learned")
INITS = ("peaks", "k-means++", "random")
# weight_refits="auto" for Sinkhorn-EM from random / k-means++ starts: 19 re-estimations of
# the weights, each after at most REFIT_ITER iterations (docs/study_random_starts.md)
AUTO_REFITS = 19
REFIT_ITER = 10
WEIGHT_MODES = ("nuclei", "voronoi", "uniform")


class SegmentationCancelled(Exception):
    """Raised by :func:`segment_nuclei` when the progress callback asks to stop."""


@dataclass
class SegmentationResult:
    """Output of :func:`segment_nuclei`.

    Attributes
    ----------
    labels : numpy.ndarray
        Integer label image over the spatial axes of the input (0 = background), uint16
        when the labels fit, else uint32.
    table : pandas.DataFrame
        One row per nucleus: ``label``, ``z`` (3-D only), ``y``, ``x`` (voxel
        coordinates), ``z_um`` (3-D only), ``y_um``, ``x_um``, ``volume_um3`` and
        ``mean_<channel>`` (mean raw intensity in the label) per channel.
    model : SinkhornEM or list of SinkhornEM
        The fitted mixture (features: position in um, then weighted intensities); a list
        of per-slab mixtures when the fit was tiled (see ``max_components_per_tile``).
    params : dict
        Every keyword argument used (JSON-serialisable); ``segment_nuclei(image,
        **params)`` reproduces the result.
    centres : numpy.ndarray
        ``(K, ndim)`` float voxel coordinates of the nuclei, in table order.
    info : dict
        Diagnostics: timings per stage, counts, threshold, convergence, weights.
    """

    labels: np.ndarray
    table: pd.DataFrame
    model: Any
    params: dict
    centres: np.ndarray
    info: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- params


def _param_defaults() -> dict:
    import inspect

    sig = inspect.signature(segment_nuclei)
    return {
        k: v.default
        for k, v in sig.parameters.items()
        if v.kind is inspect.Parameter.KEYWORD_ONLY and k != "progress"
    }


def save_params(path, params: dict) -> None:
    """Write segmentation parameters as JSON, atomically.

    The file holds ``{"napari_sinkhorn_em_version": ..., "parameters": {...}}``.

    Parameters
    ----------
    path : str or os.PathLike
        Destination file.
    params : dict
        Keyword arguments of :func:`segment_nuclei` (e.g. ``result.params``).
    """
    from .. import __version__

    _check_param_keys(params, str(path))
    doc = {"napari_sinkhorn_em_version": __version__, "parameters": jsonable(params)}
    text = json.dumps(doc, indent=2, sort_keys=True, allow_nan=False)
    with atomic_write(path, "w", encoding="utf-8") as fh:
        fh.write(text + "\n")


def load_params(path) -> dict:
    """Read parameters written by :func:`save_params` (or a bare parameters dict).

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    dict
        Keyword arguments for :func:`segment_nuclei`.

    Raises
    ------
    ValueError
        Naming the file, for unreadable or invalid JSON, a non-object document or
        unknown parameter names.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read parameter file {path}: {exc}") from exc
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"parameter file {path} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ValueError(f"parameter file {path} must hold a JSON object")
    params = doc.get("parameters", doc) if "parameters" in doc else doc
    if not isinstance(params, dict):
        raise ValueError(f"parameter file {path}: 'parameters' must be a JSON object")
    params = {k: v for k, v in params.items() if k != "napari_sinkhorn_em_version"}
    _check_param_keys(params, str(path))
    return params


def _check_param_keys(params: dict, where: str) -> None:
    known = _param_defaults()
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(
            f"{where}: unknown segmentation parameter(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(known))}"
        )


# --------------------------------------------------------------------------- helpers


def _check_choice(name, value, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def _resolve_refits(weight_refits, init: str, method: str) -> int:
    """Number of weight re-estimations: an int >= 0, or "auto" (see segment_nuclei)."""
    if isinstance(weight_refits, str):
        _check_choice("weight_refits", weight_refits, ("auto",))
        random_start = init in ("random", "k-means++")
        return AUTO_REFITS if (random_start and method == "sinkhorn") else 0
    if isinstance(weight_refits, bool) or not isinstance(weight_refits, (int, np.integer)):
        raise ValueError(f"weight_refits must be an int >= 0 or 'auto', got {weight_refits!r}")
    if weight_refits < 0:
        raise ValueError(f"weight_refits must be >= 0, got {weight_refits}")
    return int(weight_refits)


def fit_iteration_budget(
    *,
    method: str = "sinkhorn",
    init: str = "peaks",
    max_iter: int = 100,
    n_init: int = 1,
    weight_refits: int | str = "auto",
) -> int:
    """Upper bound of the fit iterations :func:`segment_nuclei` reports to ``progress``.

    Every weight re-estimation round runs at most ``min(max_iter, 10)`` iterations and the
    last fit at most ``max_iter``, once per start (random and k-means++ starts run
    ``n_init`` of them). A tiled fit (more than ``max_components_per_tile`` nuclei) runs
    this once per slab. Progress bars use it as their length.
    """
    init_name = init if isinstance(init, str) else "array"
    n_refits = _resolve_refits(weight_refits, init_name, method)
    starts = int(n_init) if init_name in ("random", "k-means++") else 1
    return starts * (n_refits * min(int(max_iter), REFIT_ITER) + int(max_iter))


def _voronoi_mass(positions: np.ndarray, mass: np.ndarray, centres_um: np.ndarray) -> np.ndarray:
    """Total mass of the voxels whose nearest centre (Euclidean, um) is each centre."""
    _, nearest = cKDTree(centres_um).query(positions, k=1, workers=-1)
    return np.bincount(nearest, weights=mass, minlength=centres_um.shape[0])


def _weights_from_mass(mass: np.ndarray, floor: float = 0.01) -> np.ndarray:
    """Normalise cell masses into mixing weights, flooring tiny cells at ``floor`` x median."""
    m = np.asarray(mass, dtype=np.float64)
    med = float(np.median(m[m > 0])) if np.any(m > 0) else 1.0
    m = np.maximum(m, floor * med)
    return m / m.sum()


def _add_seeds(positions, mass, centres_um, n_extra, rng) -> np.ndarray:
    """Add ``n_extra`` centres by D^2 sampling (mass x squared distance to the nearest
    centre), as k-means++ does: new seeds go where mass is far from every centre."""
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


def _peak_start(positions, mass, peaks, vs, K, rng) -> np.ndarray:
    """The first ``K`` detected nuclei (um), plus k-means++-style seeds if there are fewer."""
    c_um = peaks.coords[:K] * vs
    if len(peaks) < K:  # more nuclei than peaks: k-means++-style extra seeds
        c_um = _add_seeds(positions, mass, c_um, K - len(peaks), rng)
    return c_um


def _mahalanobis_pos(positions, labels_k, means, covs, n_pos):
    """Squared Mahalanobis distance of each point to its component (position block)."""
    prec = np.linalg.inv(covs[:, :n_pos, :n_pos])
    d = positions - means[labels_k, :n_pos]
    return np.einsum("ni,nij,nj->n", d, prec[labels_k], d)


def _label_dtype(n: int):
    return np.uint16 if n <= np.iinfo(np.uint16).max else np.uint32


# --------------------------------------------------------------------------- main


def segment_nuclei(
    image,
    *,
    voxel_size=None,
    channel_axis=None,
    channel_names=None,
    n_nuclei=None,
    nucleus_diameter: float | str = "auto",
    local_contrast: bool | None = None,
    method: str = "sinkhorn",
    init="peaks",
    n_init: int = 1,
    max_iter: int = 100,
    tol: float = 1e-5,
    intensity_weight: float = 1.0,
    n_neighbors: int = 16,
    foreground_threshold: float | None = None,
    random_state: int | None = None,
    weights: str = "nuclei",
    weight_refits: int | str = "auto",
    marginal_penalty: float | None = 1000.0,
    voxel_mass: str = "uniform",
    covariance_scale: tuple[float, float] = (0.25, 4.0),
    mahalanobis_radius: float = 3.0,
    min_size: float = 0.1,
    background_scale: float | None = None,
    threshold_method: str = "otsu",
    suppress_granules: bool = True,
    max_components_per_tile: int = 200,
    progress: Callable[[str, int, float | None], bool | None] | None = None,
) -> SegmentationResult:
    """Segment nuclei in a 2-D/3-D (multichannel) fluorescence image.

    Parameters
    ----------
    image : numpy.ndarray
        2-D or 3-D spatial data with an optional channel axis; any integer or float dtype.
    voxel_size : sequence of float, optional
        Spatial voxel lengths in micrometres in axis order (e.g. ``(z, y, x)``); None means
        1.0 um per axis.
    channel_axis : int, optional
        Axis of ``image`` holding channels (None = single channel).
    channel_names : list of str, optional
        Names for the ``mean_<name>`` table columns; default ``ch0``, ``ch1``, ...
    n_nuclei : int, "auto" or None
        Number of nuclei; None / "auto" = the number of LoG peaks found (two scales, see
        :func:`~napari_sinkhorn_em.pipeline.peaks.detect_nuclei`). A given count takes the strongest
        peaks, or all of them plus k-means++-style seeds when there are fewer.
    nucleus_diameter : float or "auto"
        Typical nucleus diameter in micrometres: sets the LoG scale, the minimum peak
        distance, the covariance bounds and the fragment size. "auto" (default)
        estimates it from the image by scale-space blob detection
        (:func:`~napari_sinkhorn_em.pipeline.scale.estimate_nucleus_diameter`); the
        value used is ``info["nucleus_diameter_um"]`` (``params`` keeps "auto": the
        estimate is deterministic, so a rerun reproduces the result).
    local_contrast : bool or None
        Scale- and contrast-adaptive detection (:mod:`~napari_sinkhorn_em.pipeline.adaptive`):
        peaks at each nucleus' own scale accepted by local contrast, a per-nucleus
        (half-maximum) foreground added to the global one, covariance bounds from the
        spread of the detected sizes, the component count capped by the foreground
        volume. None (default) = on when ``nucleus_diameter="auto"``, off for a given
        number (the fixed-scale pipeline of earlier versions).
    method : {"sinkhorn", "em", "em-learned"}
        Sinkhorn-EM with fixed weights, EM with the same fixed weights, or classic EM with
        learned weights.
    init : {"peaks", "k-means++", "random"} or array_like
        Initial centres: detected LoG peaks (nucleus scale by decreasing response, then
        the small-scale ones), weighted k-means++ on the
        features, random foreground voxels (probability proportional to mass), or a
        ``(K, ndim)`` array of centres in voxel coordinates.
    n_init : int
        Number of initialisations (the best by the method's objective is kept); only
        meaningful for the random initialisations.
    max_iter, tol : int, float
        Iteration limit and objective-change tolerance of the fit.
    intensity_weight : float
        Scale of the normalised channel intensities relative to position (micrometres per
        normalised unit); 0 clusters on position only.
    n_neighbors : int
        Components each voxel interacts with in the sparse E-step (memory O(N m)).
    foreground_threshold : float, optional
        Threshold on the mean normalised intensity; None = automatic (``threshold_method``).
    random_state : int, optional
        Seed; None draws one (recorded in ``params`` so the run can be repeated).
    weights : {"nuclei", "voronoi", "uniform"}
        Mixing weights. "nuclei": each component gets the mass of the reference nucleus
        nearest to its mean, so two components in one nucleus both claim all of it. The
        reference nuclei are the start centres of a peak or array start (so from there
        it equals "voronoi"), and for random / k-means++ starts the peak start (LoG
        nuclei plus D^2 seeds), each with the voxel mass of its Voronoi cell.
        "voronoi": the mass of each component's own Voronoi cell (around the current
        means). "uniform": equal.
    weight_refits : int or "auto"
        Outer iterations: re-estimate the weights around the fitted centres and refit
        (warm start) for at most ``min(max_iter, 10)`` iterations each, then a last fit of
        up to ``max_iter``. 0 = a single fit. "auto" = 19 for Sinkhorn-EM from a random or
        k-means++ start, whose components have not found their nuclei yet, and 0
        otherwise (detected peaks or an array start, and both EM methods, where refits do
        not help; docs/study_random_starts.md).
    marginal_penalty : float or None
        Sinkhorn-EM only: how strictly each component's share of the mass must equal its
        weight (``SinkhornEM(marginal_penalty=...)``: the penalty on the KL divergence of
        the column sums from the weights). None = exactly. The finite default keeps the
        E-step solvable when weights ask a crowded component for more mass than its
        neighbourhood holds; 1000 gave the best random-start accuracy measured.
    voxel_mass : {"uniform", "intensity"}
        Each voxel's mass (sample weight): equal for all foreground voxels, or its mean
        normalised intensity.
    covariance_scale : (float, float)
        Bounds of the position-covariance eigenvalues as multiples of the variance of a
        uniform ball of the nucleus diameter (``(d/2)^2 / 5``).
    mahalanobis_radius : float
        Voxels farther than this (position block) from their component stay background.
    min_size : float
        Pieces smaller than this fraction of a nominal nucleus volume are removed.
    background_scale : float, optional
        Block size (um) of the background estimate; default 5 nucleus diameters; 0 = off.
    threshold_method : {"otsu", "triangle", "noise"}
        Automatic foreground threshold method.
    suppress_granules : bool
        Remove small, bright, colourless autofluorescent granules before segmenting.
    max_components_per_tile : int
        With more components than this (and a peak or array initialisation) the
        foreground is cut into slabs along its longest axis, each with about this many
        components and a margin of two nucleus diameters, fitted one after the other;
        each nucleus is owned by the slab whose core holds its centre. Keeps the fit
        time linear in the number of nuclei (the E-step's Newton solve is cubic in K).
        ``model`` is then a list of the per-slab models.
    progress : callable, optional
        ``progress(stage, iteration, objective)``; stages "preprocess", "peaks", "init",
        "fit", "labels", "table". Returning True cancels: :class:`SegmentationCancelled`.

    Returns
    -------
    SegmentationResult

    Raises
    ------
    ValueError
        For invalid images or parameters (specific messages).
    SegmentationCancelled
        When ``progress`` returned True.
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    def report(stage: str, it: int = 0, obj: float | None = None) -> None:
        if progress is not None and progress(stage, it, obj):
            raise SegmentationCancelled(f"segmentation cancelled during {stage!r}")

    # ---- parameter checks (before any heavy work)
    _check_choice("method", method, METHODS)
    _check_choice("weights", weights, WEIGHT_MODES)
    _check_choice("voxel_mass", voxel_mass, ("intensity", "uniform"))
    init_array = None
    if isinstance(init, str):
        _check_choice("init", init, INITS)
    else:
        try:
            init_array = np.asarray(init, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"init must be a string or an array of centres: {exc}") from exc
    d_given = resolve_diameter(nucleus_diameter)
    if local_contrast is not None and not isinstance(local_contrast, (bool, np.bool_)):
        raise ValueError(f"local_contrast must be True, False or None, got {local_contrast!r}")
    local = bool(d_given is None if local_contrast is None else local_contrast)
    if n_nuclei is not None and n_nuclei != "auto":
        if isinstance(n_nuclei, bool) or not isinstance(n_nuclei, (int, np.integer)):
            raise ValueError(
                f"n_nuclei must be a positive integer, 'auto' or None, got {n_nuclei!r}"
            )
        if n_nuclei < 1:
            raise ValueError(f"n_nuclei must be >= 1, got {n_nuclei}")
    if isinstance(n_init, bool) or not isinstance(n_init, (int, np.integer)) or n_init < 1:
        raise ValueError(f"n_init must be an integer >= 1, got {n_init!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 0:
        raise ValueError(f"max_iter must be an integer >= 0, got {max_iter!r}")
    if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, (int, np.integer)):
        raise ValueError(f"n_neighbors must be a positive integer, got {n_neighbors!r}")
    if n_neighbors < 1:
        raise ValueError(f"n_neighbors must be >= 1, got {n_neighbors}")
    n_refits = _resolve_refits(weight_refits, init if init_array is None else "array", method)
    lo_s, hi_s = (float(v) for v in covariance_scale)
    if not 0 < lo_s <= hi_s:
        raise ValueError(f"covariance_scale must satisfy 0 < lo <= hi, got {covariance_scale}")
    if mahalanobis_radius <= 0:
        raise ValueError(f"mahalanobis_radius must be > 0, got {mahalanobis_radius}")
    _check_marginal_penalty(marginal_penalty)
    if random_state is None:
        random_state = int(np.random.SeedSequence().entropy % (2**31))
    elif isinstance(random_state, bool) or not isinstance(random_state, (int, np.integer)):
        raise ValueError(f"random_state must be an int or None, got {random_state!r}")
    random_state = int(random_state)

    # ---- preprocessing
    report("preprocess")
    pre = preprocess(
        image,
        voxel_size=voxel_size,
        channel_axis=channel_axis,
        nucleus_diameter="auto" if d_given is None else d_given,
        background_scale=background_scale,
        foreground_threshold=foreground_threshold,
        threshold_method=threshold_method,
        suppress_granules=suppress_granules,
    )
    vs = np.asarray(pre.voxel_size)
    ndim = vs.size
    n_ch = pre.data.shape[-1]
    fg_shape = pre.foreground.shape
    if channel_names is None:
        channel_names = [f"ch{i}" for i in range(n_ch)]
    else:
        channel_names = [str(c) for c in channel_names]
        if len(channel_names) != n_ch:
            raise ValueError(
                f"channel_names has {len(channel_names)} names but the image has {n_ch} channels"
            )
    timings["preprocess"] = time.perf_counter() - t0
    nucleus_diameter = pre.info["nucleus_diameter_um"]
    notes: list[str] = []

    # ---- peaks / number of nuclei
    report("peaks")
    t = time.perf_counter()
    need_peaks = init_array is None and (
        init == "peaks" or n_nuclei in (None, "auto") or weights == "nuclei"
    )
    peaks = None
    local_info = None
    if need_peaks or local:
        peaks = detect_nuclei(
            pre.signal,
            vs,
            nucleus_diameter=nucleus_diameter,
            foreground=adaptive.search_mask(pre) if local else pre.foreground,
            n_nuclei=None if n_nuclei in (None, "auto") else int(n_nuclei),
            local=local,
        )
    if local:
        # per-nucleus foreground, component cap (adaptive.py)
        peaks, local_info = adaptive.refine(pre, peaks, vs, nucleus_diameter, notes)
    timings["peaks"] = time.perf_counter() - t
    if init_array is not None:
        if init_array.ndim != 2 or init_array.shape[1] != ndim:
            raise ValueError(
                f"init array must have shape (K, {ndim}) (centres in voxel coordinates), "
                f"got {init_array.shape}"
            )
        if not np.all(np.isfinite(init_array)):
            raise ValueError("init array contains NaN or infinite centres")
        K = init_array.shape[0]
        if n_nuclei not in (None, "auto") and int(n_nuclei) != K:
            raise ValueError(f"n_nuclei={n_nuclei} differs from the {K} centres given in init")
    elif n_nuclei in (None, "auto"):
        K = len(peaks)
        if K == 0:
            raise ValueError("no nuclei detected (no LoG peaks in the foreground)")
    else:
        K = int(n_nuclei)
    # ---- features
    t = time.perf_counter()
    feats = voxel_features(
        pre.data,
        pre.foreground,
        vs,
        intensity_weight=intensity_weight,
        mass=voxel_mass,
        signal=pre.signal,
    )
    n_points = feats.n_points
    # The full normalised stack (C float32 copies of the volume) is not needed any more:
    # free it (and the granule mask) before the fit, the larger stage.
    pre.data = None
    pre.granules = None
    pre.signal = pre.foreground = None  # only the peak detection needed them
    timings["features"] = time.perf_counter() - t

    t = time.perf_counter()
    if n_points < K:
        raise ValueError(
            f"n_nuclei={K} is larger than the number of foreground voxels ({n_points}); "
            "lower n_nuclei or foreground_threshold"
        )
    timings["peaks"] += time.perf_counter() - t

    # ---- initial means
    report("init")
    t = time.perf_counter()
    X, a = feats.X, feats.sample_weight
    pos = feats.positions
    rng = np.random.default_rng(random_state)
    D = X.shape[1]
    tree = cKDTree(pos)
    means0 = None
    start_um = None  # the start centres of a peak or array start (um)
    if init_array is not None or init == "peaks":
        if init_array is not None:
            c_um = start_um = init_array * vs
        else:
            c_um = start_um = _peak_start(pos, a, peaks, vs, K, rng)
        kq = min(8, n_points)
        _, nn = tree.query(c_um, k=kq, workers=-1)
        nn = nn.reshape(K, kq)
        means0 = np.empty((K, D))
        means0[:, :ndim] = c_um
        if ndim < D:
            means0[:, ndim:] = X[nn, ndim:].mean(axis=1)
    timings["init"] = time.perf_counter() - t

    # ---- covariance bounds from the nucleus diameter
    var_nominal = (nucleus_diameter / 2.0) ** 2 / 5.0
    bounds = (lo_s * var_nominal, hi_s * var_nominal)
    reg_covar = 1e-6
    if local:
        bounds, reg_covar = adaptive.covariance_model(local_info, vs, D, lo_s, hi_s)
    cov0 = None
    if means0 is not None:
        cov0 = np.zeros((K, D, D))
        cov0[:, np.arange(ndim), np.arange(ndim)] = var_nominal
        if ndim < D:
            ivar = np.maximum(np.var(X[:, ndim:], axis=0), 1e-6) / 4.0
            cov0[:, np.arange(ndim, D), np.arange(ndim, D)] = ivar

    # ---- fit (possibly with weight re-estimation in an outer loop)
    t = time.perf_counter()
    n_fits = 1 + n_refits
    total_iter = [0]

    def callback(it: int, obj: float) -> bool:
        total_iter[0] += 1
        return bool(progress is not None and progress("fit", total_iter[0], float(obj)))

    if weights == "nuclei":
        # the reference nuclei, each with the voxel mass of its Voronoi cell: the start
        # centres of a peak or array start (e.g. hand-corrected centres), else the peak
        # start (detected nuclei, plus D^2 seeds when the count exceeds them)
        ref_um = start_um if start_um is not None else _peak_start(pos, a, peaks, vs, K, rng)
        ref_mass = _voronoi_mass(pos, a, ref_um)
        ref_tree = cKDTree(ref_um)

    def fit_block(Xb, ab, posb, means_b, cov_b, Kb):
        model_b = None
        alpha_b = None
        for fit_i in range(n_fits):
            if fit_i > 0:
                means_b = model_b.means_.copy()
                cov_b = model_b.covariances_.copy()
            if weights == "uniform":
                alpha_b = None
            elif weights == "nuclei":
                # each component claims the whole mass of the nucleus it sits in: two
                # components in one nucleus both claim it, so one is pushed out
                _, nearest = ref_tree.query(means_b[:, :ndim], workers=-1)
                alpha_b = _weights_from_mass(ref_mass[nearest])
            else:
                alpha_b = _weights_from_mass(_voronoi_mass(posb, ab, means_b[:, :ndim]))
            model_b = SinkhornEM(
                Kb,
                method="em" if method.startswith("em") else "sinkhorn",
                weights=alpha_b,
                learn_weights=method == "em-learned",
                covariance_type="full",
                covariance_bounds=bounds,
                tol=tol,
                max_iter=max_iter if fit_i == n_fits - 1 else min(max_iter, REFIT_ITER),
                init=means_b,
                covariances_init=cov_b,
                n_neighbors=min(int(n_neighbors), Kb),
                random_state=random_state,
                position_dims=ndim,
                reg_covar=reg_covar,
                callback=callback if progress is not None else None,
                marginal_penalty=marginal_penalty if method == "sinkhorn" else None,
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                comp_b = model_b.fit_predict(Xb, sample_weight=ab)
            if getattr(model_b, "stopped_", False):
                raise SegmentationCancelled("segmentation cancelled during 'fit'")
        return model_b, comp_b, alpha_b

    n_tiles = 1
    if means0 is not None and max_components_per_tile < K:
        n_tiles = int(np.ceil(K / max_components_per_tile))
    if means0 is None:
        # random / k-means++: the estimator draws each start (means and data-driven
        # covariances, max_iter=0) so that the weights can be set from it as for peak
        # starts; the best of n_init by the method's objective is kept.
        starts = np.random.default_rng(random_state)
        model = None
        for _ in range(int(n_init)):
            start = SinkhornEM(
                K,
                method="em",
                covariance_type="full",
                covariance_bounds=bounds,
                max_iter=0,
                init=init,
                n_neighbors=min(int(n_neighbors), K),
                random_state=starts,
                position_dims=ndim,
            ).fit(X, sample_weight=a)
            run = fit_block(X, a, pos, start.means_, start.covariances_, K)
            if model is None or run[0].objective_ > model.objective_:
                model, comp, alpha = run
        all_means, all_covs = model.means_, model.covariances_
        converged, n_iter, objective = model.converged_, model.n_iter_, model.objective_
    elif n_tiles == 1:
        model, comp, alpha = fit_block(X, a, pos, means0, cov0, K)
        all_means, all_covs = model.means_, model.covariances_
        converged, n_iter, objective = model.converged_, model.n_iter_, model.objective_
    else:
        model, comp, all_means, all_covs, alpha, stats = _fit_tiles(
            fit_block, X, a, pos, means0, cov0, n_tiles, ndim, 2.0 * nucleus_diameter
        )
        converged, n_iter, objective = stats
    timings["fit"] = time.perf_counter() - t

    # ---- labels
    report("labels")
    t = time.perf_counter()
    # fragments are measured against the smallest detected nuclei in the local mode
    d_small = nucleus_diameter if local_info is None else local_info["d_small_um"]
    labels, comp_ids = _labels_from_components(
        feats.indices,
        pos,
        comp,
        all_means,
        all_covs,
        fg_shape,
        ndim,
        vs,
        mahalanobis_radius,
        min_size * (np.pi / 6.0) * d_small**3 * (1 if ndim == 3 else 0)
        + min_size * (np.pi / 4.0) * d_small**2 * (1 if ndim == 2 else 0),
    )
    if local:
        labels = adaptive.clean(labels)
    timings["labels"] = time.perf_counter() - t

    # ---- table
    report("table")
    t = time.perf_counter()
    raw = np.asarray(image)
    raw = raw[..., None] if pre.channel_axis is None else np.moveaxis(raw, pre.channel_axis, -1)
    table, centres = _make_table(labels, comp_ids, all_means[:, :ndim] / vs, raw, vs, channel_names)
    timings["table"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0

    params = {
        "voxel_size": [float(v) for v in vs],
        "channel_axis": pre.channel_axis,
        "channel_names": channel_names,
        "n_nuclei": "auto" if n_nuclei in (None, "auto") else int(n_nuclei),
        "nucleus_diameter": "auto" if d_given is None else float(d_given),
        "local_contrast": local,
        "method": method,
        "init": init if isinstance(init, str) else init_array.tolist(),
        "n_init": int(n_init),
        "max_iter": int(max_iter),
        "tol": float(tol),
        "intensity_weight": float(intensity_weight),
        "n_neighbors": int(n_neighbors),
        "foreground_threshold": None
        if foreground_threshold is None
        else float(foreground_threshold),
        "random_state": random_state,
        "weights": weights,
        "weight_refits": weight_refits if isinstance(weight_refits, str) else n_refits,
        "marginal_penalty": None if marginal_penalty is None else float(marginal_penalty),
        "voxel_mass": voxel_mass,
        "covariance_scale": [lo_s, hi_s],
        "mahalanobis_radius": float(mahalanobis_radius),
        "min_size": float(min_size),
        "background_scale": None if background_scale is None else float(background_scale),
        "threshold_method": threshold_method,
        "suppress_granules": bool(suppress_granules),
        "max_components_per_tile": int(max_components_per_tile),
    }
    if not converged:
        notes.append(
            f"the fit did not converge within max_iter={int(max_iter)} iterations "
            f"({int(n_iter)} run); the result is usable but may improve with a larger max_iter"
        )
    info = {
        "nucleus_diameter_um": float(nucleus_diameter),
        "nucleus_diameter": "auto" if d_given is None else float(d_given),
        "local_contrast": local,
        "adaptive": local_info,
        "warnings": notes,
        "timings": timings,
        "n_components": K,
        "n_nuclei": len(table),
        "n_peaks": None if peaks is None else len(peaks),
        "n_foreground_voxels": n_points,
        "threshold": pre.threshold,
        "converged": bool(converged),
        "n_iter": int(n_iter),
        "objective": float(objective),
        "n_tiles": n_tiles,
        "weight_refits": n_refits,
        "weights": None if alpha is None else np.asarray(alpha).tolist(),
        "preprocess": pre.info,
    }
    return SegmentationResult(labels, table, model, params, centres, info)


def _fit_tiles(fit_block, X, a, pos, means0, cov0, n_tiles, ndim, margin):
    """Fit slabs along the longest axis of the foreground; merge into global components.

    Returns the list of models, the per-voxel global component index, the global means
    and covariances, the global weights and (converged, total iterations, mean objective).
    """
    ext = pos.max(axis=0) - pos.min(axis=0)
    ax = int(np.argmax(ext))
    c_ax = means0[:, ax]
    order = np.sort(c_ax)
    K = means0.shape[0]
    split = [round(j * K / n_tiles) for j in range(1, n_tiles)]
    cuts = [0.5 * (order[j - 1] + order[j]) for j in split]
    bounds = [-np.inf, *cuts, np.inf]
    models, results = [], []
    # a slab's voxels are the Voronoi cells (by starting centre) of its components, so no
    # nucleus at the slab's edge is cut by a plane (measured: 274 instead of 286
    # iterations over the 10 slabs of a 10x stack)
    near = cKDTree(means0[:, :ndim]).query(pos, k=1)[1]
    for t_i in range(n_tiles):
        lo, hi = bounds[t_i], bounds[t_i + 1]
        csel = np.flatnonzero((c_ax >= lo - margin) & (c_ax < hi + margin))
        member = np.zeros(K, dtype=bool)
        member[csel] = True
        vsel = np.flatnonzero(member[near])
        ab = a[vsel] / a[vsel].sum()
        m_b, comp_b, _ = fit_block(X[vsel], ab, pos[vsel], means0[csel], cov0[csel], csel.size)
        models.append(m_b)
        results.append((vsel, comp_b, lo, hi))
    # global components: those whose fitted centre lies in their slab's core
    g_means, g_covs, owner = [], [], []
    for t_i, m_b in enumerate(models):
        lo, hi = results[t_i][2], results[t_i][3]
        core = (m_b.means_[:, ax] >= lo) & (m_b.means_[:, ax] < hi)
        owner.append(np.full(core.size, -1, dtype=np.int64))
        owner[t_i][core] = np.arange(core.sum()) + sum(len(x) for x in g_means)
        g_means.append(m_b.means_[core])
        g_covs.append(m_b.covariances_[core])
    all_means = np.concatenate(g_means)
    all_covs = np.concatenate(g_covs)
    tree = cKDTree(all_means[:, :ndim])
    # a component centred outside its core maps to the nearest owned component
    for t_i, m_b in enumerate(models):
        miss = owner[t_i] < 0
        if miss.any():
            owner[t_i][miss] = tree.query(m_b.means_[miss, :ndim], k=1)[1]
    comp = np.full(pos.shape[0], -1, dtype=np.int64)
    for t_i, (vsel, comp_b, lo, hi) in enumerate(results):
        in_core = (pos[vsel, ax] >= lo) & (pos[vsel, ax] < hi)
        comp[vsel[in_core]] = owner[t_i][comp_b[in_core]]
    mass = np.bincount(comp, weights=a, minlength=all_means.shape[0])
    stats = (
        all(m.converged_ for m in models),
        sum(m.n_iter_ for m in models),
        float(np.mean([m.objective_ for m in models])),
    )
    return models, comp, all_means, all_covs, mass / mass.sum(), stats


def _labels_from_components(
    indices, positions, comp, means, covs, shape, ndim, vs, radius, min_volume_um3
):
    """Label image from per-voxel component assignments (see :func:`segment_nuclei`).

    Returns the label image (values 1..K', consecutive) and, for each label value ``l``,
    the component index ``comp_ids[l - 1]``.
    """
    K = means.shape[0]
    d2 = _mahalanobis_pos(positions, comp, means, covs, ndim)
    keep = d2 <= radius**2
    # connected pieces of equal value, labelled in boxes around the kept voxels (cut at
    # empty slabs, across which nothing connects); keep the largest piece per component
    from skimage.measure import label as cc_label

    kept_idx = indices[keep]
    kept_val = comp[keep] + 1
    boxes, groups = (
        foreground_boxes(kept_idx, shape, min_gap=1, return_groups=True)
        if kept_idx.size
        else ([], [])
    )
    piece_of = np.zeros(kept_idx.shape[0], dtype=np.int64)
    owner_parts, size_parts = [np.zeros(1, dtype=np.int64)], [np.zeros(1, dtype=np.int64)]
    n_pieces = 0
    for box, sel in zip(boxes, groups, strict=True):
        lo = np.array([b.start for b in box])
        local = tuple((kept_idx[sel] - lo).T)
        lab = np.zeros(tuple(b.stop - b.start for b in box), dtype=np.int32)
        lab[local] = kept_val[sel]
        pieces = cc_label(lab, background=0, connectivity=1)
        p_sel = pieces[local].astype(np.int64)
        k = int(pieces.max())
        owner = np.zeros(k, dtype=np.int64)
        owner[p_sel - 1] = kept_val[sel]
        piece_of[sel] = p_sel + n_pieces
        owner_parts.append(owner)
        size_parts.append(np.bincount(p_sel, minlength=k + 1)[1:])
        n_pieces += k
    owner = np.concatenate(owner_parts)
    size = np.concatenate(size_parts)
    # largest piece per component; among equal sizes the one whose first voxel comes first
    # in raster order (so the result does not depend on how the boxes were cut)
    first = np.full(n_pieces + 1, np.iinfo(np.int64).max, dtype=np.int64)
    if kept_idx.size:
        np.minimum.at(first, piece_of, np.ravel_multi_index(tuple(kept_idx.T), shape))
    best_piece = np.zeros(K + 1, dtype=np.int64)
    best_size = np.zeros(K + 1, dtype=np.int64)
    # ascending size, then descending first voxel: later entries overwrite earlier ones
    order = np.lexsort((-first[1:], size[1:])) + 1
    best_piece[owner[order]] = order
    best_size[owner[order]] = size[order]
    min_vox = max(1, int(np.ceil(min_volume_um3 / float(np.prod(vs)))))
    good = (best_size >= min_vox) & (np.arange(K + 1) > 0)
    comp_ids = np.flatnonzero(good) - 1
    new_value = np.zeros(n_pieces + 1, dtype=np.int64)
    new_value[best_piece[good]] = np.arange(1, comp_ids.size + 1)
    out = np.zeros(shape, dtype=_label_dtype(comp_ids.size))
    if kept_idx.size:
        out[tuple(kept_idx.T)] = new_value[piece_of]
    return out, comp_ids


def _make_table(labels, comp_ids, comp_centres_vox, raw, vs, channel_names):
    """Per-nucleus table; centres are the fitted means, snapped into their label if needed."""
    ndim = labels.ndim
    n = comp_ids.size
    idx = np.arange(1, n + 1)
    centres = comp_centres_vox[comp_ids].copy() if n else np.zeros((0, ndim))
    mask = labels > 0
    lab_vals = labels[mask].astype(np.intp)
    counts = np.bincount(lab_vals, minlength=n + 1)[1:]
    if n:
        rounded = np.clip(np.round(centres).astype(np.int64), 0, np.array(labels.shape) - 1)
        inside = labels[tuple(rounded.T)] == idx
        if not inside.all():
            boxes = ndi.find_objects(labels)
            for j in np.flatnonzero(~inside):
                box = boxes[j]
                offset = np.array([sl.start for sl in box])
                vox = np.argwhere(labels[box] == idx[j]) + offset
                dd = (((vox - centres[j]) * vs) ** 2).sum(axis=1)
                centres[j] = vox[np.argmin(dd)]
    cols: dict[str, Any] = {"label": idx.astype(np.int64)}
    axes = ("z", "y", "x")[-ndim:]
    for i, ax in enumerate(axes):
        cols[ax] = centres[:, i]
    for i, ax in enumerate(axes):
        cols[f"{ax}_um"] = centres[:, i] * vs[i]
    cols["volume_um3"] = counts * float(np.prod(vs))
    for c, name in enumerate(channel_names):
        vals = raw[..., c][mask].astype(np.float64)
        sums = np.bincount(lab_vals, weights=vals, minlength=n + 1)[1:]
        cols[f"mean_{name}"] = sums / np.maximum(counts, 1)
    return pd.DataFrame(cols), centres
