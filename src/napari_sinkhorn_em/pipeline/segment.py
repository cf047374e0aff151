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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._json import jsonable
from .._validation import check_marginal_penalty
from ..io import atomic_write
from .features import VoxelFeatures, voxel_features
from .fit import (
    METHODS,
    FitCancelled,
    FitSettings,
    fit_iteration_budget,
    fit_mixture,
    resolve_refits,
)
from .labels import labels_from_components, min_label_volume
from .peaks import Peaks, detect_nuclei
from .preprocess import preprocess
from .progress import SegmentationCancelled, StageClock
from .starts import (
    INITS,
    Start,
    array_start,
    covariance_bounds,
    n_components,
    peak_centres,
    peak_start,
)
from .table import channels_last, nucleus_table
from .weights import WEIGHT_MODES, reference_nuclei

__all__ = [
    "SegmentationCancelled",
    "SegmentationResult",
    "fit_iteration_budget",
    "load_params",
    "save_params",
    "segment_nuclei",
]


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


# --------------------------------------------------------------------------- main


def segment_nuclei(
    image,
    *,
    voxel_size=None,
    channel_axis=None,
    channel_names=None,
    n_nuclei=None,
    nucleus_diameter: float = 3.0,
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
    nucleus_diameter : float
        Typical nucleus diameter in micrometres: sets the LoG scale, the minimum peak
        distance, the covariance bounds and the fragment size.
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
    clock = StageClock(progress)
    init_array, n_refits, random_state = _check_arguments(
        method=method, weights=weights, voxel_mass=voxel_mass, init=init,
        nucleus_diameter=nucleus_diameter, n_nuclei=n_nuclei, n_init=n_init,
        max_iter=max_iter, n_neighbors=n_neighbors, weight_refits=weight_refits,
        covariance_scale=covariance_scale, mahalanobis_radius=mahalanobis_radius,
        marginal_penalty=marginal_penalty, random_state=random_state,
    )  # fmt: skip
    # preprocess -> features -> peaks; the image-sized arrays live only in there
    found = _find_nuclei(
        image, clock, voxel_size=voxel_size, channel_axis=channel_axis,
        channel_names=channel_names, nucleus_diameter=nucleus_diameter,
        background_scale=background_scale, foreground_threshold=foreground_threshold,
        threshold_method=threshold_method, suppress_granules=suppress_granules,
        intensity_weight=intensity_weight, voxel_mass=voxel_mass, n_nuclei=n_nuclei,
        need_peaks=init_array is None
        and (init == "peaks" or n_nuclei in (None, "auto") or weights == "nuclei"),
        init_array=init_array,
    )  # fmt: skip
    feats, peaks, vs, K = found.features, found.peaks, found.voxel_size, found.n_components
    X, a, pos = feats.X, feats.sample_weight, feats.positions
    ndim = vs.size
    rng = np.random.default_rng(random_state)

    with clock.stage("init"):
        if init_array is not None:
            start = array_start(X, pos, init_array * vs, nucleus_diameter)
        elif init == "peaks":
            start = peak_start(X, pos, a, peaks, vs, K, nucleus_diameter, rng)
        else:
            start = init  # drawn by the estimator in the fit, n_init times

    settings = FitSettings(
        method=method, weights=weights, n_refits=n_refits,
        covariance_bounds=covariance_bounds(nucleus_diameter, covariance_scale),
        max_iter=max_iter, tol=tol, n_neighbors=n_neighbors,
        marginal_penalty=marginal_penalty, random_state=random_state, position_dims=ndim,
    )  # fmt: skip
    with clock.stage("fit", report=False):
        reference = None
        if weights == "nuclei":
            # the reference nuclei: the start centres of a peak or array start (e.g.
            # hand-corrected centres), else the peak start (detected nuclei, plus D^2
            # seeds when the count exceeds them)
            ref_um = start.centres_um if isinstance(start, Start) else None
            if ref_um is None:
                ref_um = peak_centres(pos, a, peaks, vs, K, rng)
            reference = reference_nuclei(pos, a, ref_um)
        try:
            fit = fit_mixture(
                X, a, pos, start, settings, n_components=K, n_init=n_init,
                reference=reference, max_components_per_tile=max_components_per_tile,
                tile_margin=2.0 * nucleus_diameter, callback=clock.iteration_callback("fit"),
            )  # fmt: skip
        except FitCancelled:
            raise clock.cancelled("fit") from None

    with clock.stage("labels"):
        lab = labels_from_components(
            feats.indices, pos, fit.components, fit.means, fit.covariances, found.shape, vs,
            radius=mahalanobis_radius,
            min_volume=min_label_volume(nucleus_diameter, ndim, min_size),
        )  # fmt: skip

    with clock.stage("table"):
        tab = nucleus_table(
            lab.labels, lab.component_ids, fit.means[:, :ndim] / vs,
            channels_last(image, found.channel_axis), vs, found.channel_names,
        )  # fmt: skip
    timings = clock.finish()

    params = {
        "voxel_size": [float(v) for v in vs],
        "channel_axis": found.channel_axis,
        "channel_names": found.channel_names,
        "n_nuclei": "auto" if n_nuclei in (None, "auto") else int(n_nuclei),
        "nucleus_diameter": float(nucleus_diameter),
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
        "covariance_scale": [float(v) for v in covariance_scale],
        "mahalanobis_radius": float(mahalanobis_radius),
        "min_size": float(min_size),
        "background_scale": None if background_scale is None else float(background_scale),
        "threshold_method": threshold_method,
        "suppress_granules": bool(suppress_granules),
        "max_components_per_tile": int(max_components_per_tile),
    }
    info = {
        "timings": timings,
        "n_components": K,
        "n_nuclei": len(tab.table),
        "n_peaks": None if peaks is None else len(peaks),
        "n_foreground_voxels": feats.n_points,
        "threshold": found.threshold,
        "converged": bool(fit.converged),
        "n_iter": int(fit.n_iter),
        "objective": float(fit.objective),
        "n_tiles": fit.n_tiles,
        "weight_refits": n_refits,
        "weights": None if fit.weights is None else np.asarray(fit.weights).tolist(),
        "preprocess": found.preprocess_info,
    }
    return SegmentationResult(lab.labels, tab.table, fit.model, params, tab.centres, info)


@dataclass
class _Found:
    """What the fit needs from the image: features, detected nuclei, geometry."""

    features: VoxelFeatures
    peaks: Peaks | None
    n_components: int
    voxel_size: np.ndarray
    shape: tuple[int, ...]
    channel_axis: int | None
    channel_names: list[str]
    threshold: float
    preprocess_info: dict


def _find_nuclei(image, clock, *, need_peaks, init_array, n_nuclei, **kw) -> _Found:
    """Preprocess -> features -> peaks. The normalised stack dies with
    :func:`_features` (before the peaks), the signal and the foreground mask here (before
    the fit): only the voxel features and the peaks go on."""
    feats, signal, foreground, meta = _features(image, clock, **kw)
    vs = meta["voxel_size"]
    with clock.stage("peaks"):
        peaks = None
        if need_peaks:
            peaks = detect_nuclei(
                signal,
                vs,
                nucleus_diameter=kw["nucleus_diameter"],
                foreground=foreground,
                n_nuclei=None if n_nuclei in (None, "auto") else int(n_nuclei),
            )
        if init_array is not None and (init_array.ndim != 2 or init_array.shape[1] != vs.size):
            raise ValueError(
                f"init array must have shape (K, {vs.size}) (centres in voxel coordinates), "
                f"got {init_array.shape}"
            )
        if init_array is not None and not np.all(np.isfinite(init_array)):
            raise ValueError("init array contains NaN or infinite centres")
        K = n_components(n_nuclei, peaks, init_array, feats.n_points)
    return _Found(feats, peaks, K, shape=foreground.shape, **meta)


def _features(
    image, clock, *, voxel_size, channel_axis, channel_names, nucleus_diameter,
    background_scale, foreground_threshold, threshold_method, suppress_granules,
    intensity_weight, voxel_mass,
):  # fmt: skip
    """Preprocess and voxel features; returns the features, the signal, the foreground
    mask and the image metadata (the normalised stack is dropped on return)."""
    with clock.stage("preprocess"):
        pre = preprocess(
            image,
            voxel_size=voxel_size,
            channel_axis=channel_axis,
            nucleus_diameter=nucleus_diameter,
            background_scale=background_scale,
            foreground_threshold=foreground_threshold,
            threshold_method=threshold_method,
            suppress_granules=suppress_granules,
        )
        vs = np.asarray(pre.voxel_size)
        names = _channel_names(channel_names, pre.data.shape[-1])
    with clock.stage("features", report=False):
        feats = voxel_features(
            pre.data,
            pre.foreground,
            vs,
            intensity_weight=intensity_weight,
            mass=voxel_mass,
            signal=pre.signal,
        )
    meta = {
        "voxel_size": vs,
        "channel_axis": pre.channel_axis,
        "channel_names": names,
        "threshold": pre.threshold,
        "preprocess_info": pre.info,
    }
    return feats, pre.signal, pre.foreground, meta


def _channel_names(channel_names, n_ch: int) -> list[str]:
    if channel_names is None:
        return [f"ch{i}" for i in range(n_ch)]
    names = [str(c) for c in channel_names]
    if len(names) != n_ch:
        raise ValueError(f"channel_names has {len(names)} names but the image has {n_ch} channels")
    return names


def _check_arguments(
    *, method, weights, voxel_mass, init, nucleus_diameter, n_nuclei, n_init, max_iter,
    n_neighbors, weight_refits, covariance_scale, mahalanobis_radius, marginal_penalty,
    random_state,
):  # fmt: skip
    """Parameter checks before any heavy work; returns the init array (or None), the
    number of weight refits and the seed (drawn when None)."""
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
    if not (np.isfinite(nucleus_diameter) and nucleus_diameter > 0):
        raise ValueError(
            f"nucleus_diameter must be a positive number of um, got {nucleus_diameter}"
        )
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
    n_refits = resolve_refits(weight_refits, init if init_array is None else "array", method)
    lo_s, hi_s = (float(v) for v in covariance_scale)
    if not 0 < lo_s <= hi_s:
        raise ValueError(f"covariance_scale must satisfy 0 < lo <= hi, got {covariance_scale}")
    if mahalanobis_radius <= 0:
        raise ValueError(f"mahalanobis_radius must be > 0, got {mahalanobis_radius}")
    check_marginal_penalty(marginal_penalty)
    if random_state is None:
        random_state = int(np.random.SeedSequence().entropy % (2**31))
    elif isinstance(random_state, bool) or not isinstance(random_state, (int, np.integer)):
        raise ValueError(f"random_state must be an int or None, got {random_state!r}")
    return init_array, n_refits, int(random_state)
