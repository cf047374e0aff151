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
   Mahalanobis radius of it; one connected piece per label; tiny fragments removed; in
   the local mode the labels are cleaned and a 2-D label holding two touching nuclei is
   cut at its outline's two notches (:mod:`.split`);
7. per-nucleus table.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .._validation import check_voxel_size, single_plane_axis
from ..io import atomic_write
from ..params import SegmentationParams, parse_json
from . import adaptive
from .features import VoxelFeatures, voxel_features
from .fit import FitCancelled, FitSettings, fit_iteration_budget, fit_mixture, resolve_refits
from .labels import labels_from_components, min_label_volume
from .peaks import Peaks, detect_nuclei
from .preprocess import preprocess
from .progress import SegmentationCancelled, StageClock
from .split import split_touching
from .starts import (
    Start,
    array_start,
    covariance_bounds,
    n_components,
    peak_centres,
    peak_start,
)
from .table import channels_last, nucleus_table
from .weights import reference_nuclei

__all__ = [
    "SegmentationCancelled",
    "SegmentationResult",
    "SegmentationWarning",
    "fit_iteration_budget",
    "load_params",
    "save_params",
    "segment_nuclei",
]


# a result with fewer labels than this fraction of the fitted components gets a warning
LOW_COUNT_FRACTION = 0.5


class SegmentationWarning(UserWarning):
    """The segmentation ran but its result looks wrong: no nuclei, or far fewer (below
    half) than the components fitted (``n_nuclei`` requested or detected). Also recorded
    in ``result.info["warnings"]``."""


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
        Diagnostics: timings per stage, counts, threshold, convergence, weights;
        ``low_count`` (True when no nuclei, or fewer than half the fitted components,
        were found; a :class:`SegmentationWarning` was issued) and ``warnings`` (their
        messages).
    """

    labels: np.ndarray
    table: pd.DataFrame
    model: Any
    params: dict
    centres: np.ndarray
    info: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- params


def save_params(path, params: dict | SegmentationParams) -> None:
    """Write segmentation parameters as JSON, atomically.

    The file holds ``{"napari_sinkhorn_em_version": ..., "parameters": {...}}`` with the
    given parameters (checked and normalised by :class:`SegmentationParams`).

    Parameters
    ----------
    path : str or os.PathLike
        Destination file.
    params : dict or SegmentationParams
        Keyword arguments of :func:`segment_nuclei` (e.g. ``result.params``).

    Raises
    ------
    ValueError
        Naming the file, for unknown parameter names or invalid values.
    """
    if isinstance(params, SegmentationParams):
        p, keys = params, SegmentationParams.names()
    else:
        p, keys = SegmentationParams.from_dict(params, where=str(path)), list(params)
    # only the given keys (as before the parameter object), in the normalised form
    text = p.to_json(keys=keys)
    with atomic_write(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def load_params(path) -> dict:
    """Read parameters written by :func:`save_params` (or a bare parameters dict).

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    dict
        Keyword arguments for :func:`segment_nuclei`: the parameters in the file, checked
        and normalised by :class:`SegmentationParams`.

    Raises
    ------
    ValueError
        Naming the file, for unreadable or invalid JSON, a non-object document, unknown
        parameter names or invalid values.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read parameter file {path}: {exc}") from exc
    where = f"parameter file {path}"
    values = parse_json(text, where=where)
    full = SegmentationParams.from_dict(values, where=where).to_dict()
    return {k: full[k] for k in values}


# --------------------------------------------------------------------------- main


def segment_nuclei(
    image,
    *,
    voxel_size=None,
    channel_axis=None,
    channel_names=None,
    n_nuclei=None,
    nucleus_diameter: float | str = "auto",
    local_contrast: bool | None = True,
    method: str = "sinkhorn",
    init="peaks",
    n_init: int = 1,
    max_iter: int = 100,
    tol: float = 1e-4,
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
        A repeated name gets a suffix (``GFP``, ``GFP_2``) so that no channel's column is
        lost.
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
        nuclei as scale-space blobs each with its own scale, accepted by significance,
        roundness, prominence and local contrast; a per-nucleus foreground (each
        nucleus' own level); covariance bounds from the spread of the detected sizes plus the
        quantisation variance of each axis; the component count capped by the
        foreground volume; labels cleaned (one compact piece, holes filled). True
        (default; None, as older parameter files have it, means the same), whether the
        diameter is "auto" or given: with a given number the blobs are searched around
        it. False = the fixed-scale pipeline (one LoG scale, one global threshold), the
        default for a given number until this release; of the rows of
        docs/benchmarks_real.md it is better only on a 2-D single-channel worm head (dim
        nuclei overlapping brighter ones), and takes minutes on dim, coarse stacks.
        ``params`` records the resolved value.
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
        Remove small, bright, colourless autofluorescent granules before segmenting. In
        the local mode only for images with several channels: with one channel nothing
        tells a granule's colour from a nucleus', and the remaining size test took the
        speckle of noisy or textured nuclei (measured on every single-channel set of
        docs/benchmarks_real.md); the blob tests keep most granules out there.
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
        For invalid images or parameters (specific messages naming the parameter; see
        :class:`~napari_sinkhorn_em.SegmentationParams`), a voxel size outside 1 nm ..
        100 um, a ``nucleus_diameter`` larger than the image, or an implausible
        ``channel_axis`` (more than 32 channels, or a long channel axis next to a short
        one).
    SegmentationCancelled
        When ``progress`` returned True.

    Warns
    -----
    SegmentationWarning
        When no nuclei, or fewer than half the fitted components, were found.
    """
    args = dict(locals())  # the keyword arguments, checked as one SegmentationParams
    plane_axis = single_plane_axis(np.shape(image), channel_axis)
    if plane_axis is not None:  # a (1, Y, X) stack: segmented in 2-D, the axis put back
        return _on_the_plane(args, plane_axis)
    # one validation step: the keywords become the checked, normalised parameter object
    p = SegmentationParams.from_dict({n: args[n] for n in SegmentationParams.names()})
    clock = StageClock(progress)
    init_array = None if isinstance(p.init, str) else np.asarray(p.init, dtype=np.float64)
    init_name = p.init if init_array is None else "array"
    n_refits = resolve_refits(p.weight_refits, init_name, p.method)
    seed = p.random_state
    if seed is None:  # drawn here and recorded, so that the run can be repeated
        seed = int(np.random.SeedSequence().entropy % (2**31))
    local = p.local_contrast  # (None, from older parameter files, validated to True)

    # preprocess -> features -> peaks; the image-sized arrays live only in there
    found = _find_nuclei(image, p, clock, init_array, local)
    feats, peaks, vs, K = found.features, found.peaks, found.voxel_size, found.n_components
    d = found.diameter  # the value used (estimated for "auto")
    X, a, pos = feats.X, feats.sample_weight, feats.positions
    ndim = vs.size
    rng = np.random.default_rng(seed)

    with clock.stage("init"):
        if init_array is not None:
            start = array_start(X, pos, init_array * vs, d)
        elif p.init == "peaks":
            start = peak_start(X, pos, a, peaks, vs, K, d, rng)
        else:
            start = p.init  # drawn by the estimator in the fit, n_init times

    settings = FitSettings(
        method=p.method, weights=p.weights, n_refits=n_refits,
        covariance_bounds=covariance_bounds(d, p.covariance_scale), max_iter=p.max_iter,
        tol=p.tol, n_neighbors=p.n_neighbors, marginal_penalty=p.marginal_penalty,
        random_state=seed, position_dims=ndim,
    )  # fmt: skip
    if local:  # bounds from the size spread, quantisation variance per axis
        bounds, reg = adaptive.covariance_model(found.local, vs, X.shape[1], *p.covariance_scale)
        settings = replace(settings, covariance_bounds=bounds, reg_covar=reg)
    with clock.stage("fit", report=False):
        reference = None
        if p.weights == "nuclei":
            # the start centres of a peak or array start (e.g. hand-corrected centres),
            # else the peak start (detected nuclei, plus D^2 seeds beyond them)
            ref_um = start.centres_um if isinstance(start, Start) else None
            ref_um = peak_centres(pos, a, peaks, vs, K, rng) if ref_um is None else ref_um
            reference = reference_nuclei(pos, a, ref_um)
        try:
            fit = fit_mixture(
                X, a, pos, start, settings, n_components=K, n_init=p.n_init,
                reference=reference, max_components_per_tile=p.max_components_per_tile,
                tile_margin=2.0 * d, callback=clock.iteration_callback("fit"),
            )  # fmt: skip
        except FitCancelled:
            raise clock.cancelled("fit") from None

    with clock.stage("labels"):
        lab = labels_from_components(
            feats.indices, pos, fit.components, fit.means, fit.covariances, found.shape, vs,
            radius=p.mahalanobis_radius,
            min_volume=min_label_volume(
                d, ndim, p.min_size
            ),
        )  # fmt: skip
        component_centres = fit.means[:, :ndim] / vs
        n_split = 0
        if local:
            adaptive.clean(lab.labels)
            # two touching nuclei without a dark seam fitted as one peanut-shaped label:
            # cut at the outline's two notches (2-D; DSB 2018 AP50 0.67 -> 0.73)
            cut = split_touching(lab.labels, lab.component_ids, component_centres, vs, d)
            lab = replace(lab, labels=cut.labels, component_ids=cut.component_ids)
            component_centres, n_split = cut.centres, cut.n_split

    with clock.stage("table"):
        tab = nucleus_table(
            lab.labels, lab.component_ids, component_centres,
            channels_last(image, found.channel_axis), vs, found.channel_names,
        )  # fmt: skip

    used = p.replace(
        voxel_size=tuple(vs.tolist()), channel_axis=found.channel_axis,
        channel_names=found.channel_names, random_state=seed,
        weight_refits=p.weight_refits if isinstance(p.weight_refits, str) else n_refits,
        local_contrast=bool(local),
    )  # fmt: skip
    # against the count asked for (the local mode may have capped it to the foreground)
    asked = K if p.n_nuclei == "auto" else max(K, int(p.n_nuclei))
    warn = _count_warnings(len(tab.table), asked, p.n_nuclei, capped=K if asked > K else None)
    for message in warn:
        warnings.warn(message, SegmentationWarning, stacklevel=2)
    info = _diagnostics(clock, found, fit, len(tab.table), n_refits, warn)
    info.update(adaptive.diagnostics(found.diameter, p.nucleus_diameter, local, found.local))
    info["n_split"] = n_split  # labels cut in two by split_touching (local mode)
    # one message per cause: the count warning already says the request was capped
    notes = [n for n in found.notes if not (warn and adaptive.CAP_NOTE_MARK in n)]
    info["warnings"] = warn + notes + adaptive.convergence_notes(fit, p.max_iter)
    return SegmentationResult(lab.labels, tab.table, fit.model, used.to_dict(), tab.centres, info)


def _on_the_plane(args: dict, axis: int) -> SegmentationResult:
    """:func:`segment_nuclei` of a single-plane stack: the plane in 2-D, then labels,
    centres and table with the plane axis back (coordinate 0; volumes times its voxel
    size, when given); ``params`` as given, so that they reproduce the result."""
    image = np.asarray(args["image"])
    ca = args["channel_axis"]
    ca = None if ca is None else int(ca) % image.ndim
    spatial = [a for a in range(image.ndim) if a != ca]
    k = spatial.index(axis)  # the plane axis among the spatial axes
    kw = {n: args[n] for n in SegmentationParams.names() if n in args}
    kw["channel_axis"] = None if ca is None else ca - (ca > axis)
    vs, plane_um, flat_kw = _without_plane_axis(args["voxel_size"], args["init"], k)
    kw.update(flat_kw)
    res = segment_nuclei(np.squeeze(image, axis=axis), progress=args["progress"], **kw)
    labels = np.expand_dims(res.labels, k)
    centres = np.insert(np.asarray(res.centres, dtype=np.float64), k, 0.0, axis=1)
    t = _plane_axis_columns(res.table, k, first=1, plane_um=plane_um)
    params = dict(res.params)
    params["voxel_size"] = vs
    params["channel_axis"] = args["channel_axis"]
    if not isinstance(args["init"], str):
        params["init"] = args["init"]
    info = dict(res.info)
    note = f"one plane along axis {axis}: segmented in 2-D"
    info["warnings"] = [*info.get("warnings", []), note]
    info["single_plane_axis"] = axis
    return SegmentationResult(labels, t, res.model, params, centres, info)


def _without_plane_axis(voxel_size, init, k: int) -> tuple[tuple | None, float, dict]:
    """For the 2-D call on a single-plane stack (plane along spatial axis ``k`` of 3):
    the checked 3-D voxel size (None when not given), the plane's voxel size (1 when not
    given) and the 2-D call's ``voxel_size`` / ``init`` keywords (given ``(K, 3)``
    centres without their plane coordinate)."""
    kw: dict = {}
    vs = check_voxel_size(voxel_size, 3)
    plane_um = 1.0
    if vs is not None:
        plane_um = vs[k]
        kw["voxel_size"] = tuple(v for i, v in enumerate(vs) if i != k)
    if not isinstance(init, str):
        init = np.asarray(init, dtype=np.float64)
        if init.ndim != 2 or init.shape[1] != 3:
            raise ValueError(
                f"init array must have shape (K, 3) (centres in voxel coordinates), "
                f"got {init.shape}"
            )
        kw["init"] = np.delete(init, k, axis=1)
    return vs, plane_um, kw


def _plane_axis_columns(table, k: int, *, first: int, plane_um: float):
    """A per-nucleus table of a 2-D segmentation as that of the (1, Y, X)-like stack it
    came from: the plane axis (spatial axis ``k`` of 3) back as a coordinate column and
    its ``_um`` column, both 0, and the 2-D ``y`` / ``x`` columns renamed to the stack's
    other two axes; ``first`` is the position of the first coordinate column. Areas in
    ``volume_um3`` become volumes (times the plane's voxel size ``plane_um``)."""
    names3 = ("z", "y", "x")
    names2 = [names3[i] for i in range(3) if i != k]
    rename = {}
    for old, new in zip(("y", "x"), names2, strict=True):
        rename[old], rename[f"{old}_um"] = new, f"{new}_um"
    t = table.rename(columns=rename)
    t.insert(first + k, names3[k], 0.0)
    t.insert(first + 3 + k, f"{names3[k]}_um", 0.0)
    t["volume_um3"] = t["volume_um3"] * plane_um
    return t


@dataclass
class _Found:
    """What the fit needs from the image: features, detected nuclei, geometry."""

    features: VoxelFeatures
    peaks: Peaks | None
    n_components: int
    voxel_size: np.ndarray
    shape: tuple[int, ...]
    channel_axis: int | None
    channel_names: tuple[str, ...]
    threshold: float
    preprocess_info: dict
    diameter: float = 0.0  # the nucleus diameter used (um)
    local: dict | None = None  # local-mode diagnostics (adaptive.refine)
    notes: list = field(default_factory=list)  # messages for info["warnings"]


def _find_nuclei(image, p: SegmentationParams, clock: StageClock, init_array, local) -> _Found:
    """Preprocess -> features -> peaks. The normalised stack dies with
    :func:`_features` (before the peaks), the signal and the foreground mask here (before
    the fit): only the voxel features and the peaks go on."""
    ndim_init = None if init_array is None else _spatial_ndim(image, p)
    if init_array is not None and (init_array.ndim != 2 or init_array.shape[1] != ndim_init):
        raise ValueError(
            f"init array must have shape (K, {ndim_init}) (centres in voxel coordinates), "
            f"got {init_array.shape}"
        )
    feats, signal, foreground, meta = _features(image, p, clock, local, init_array)
    vs = meta["voxel_size"]
    auto = p.n_nuclei == "auto"
    local_peaks = meta.pop("local_peaks", None)  # the local mode detected them already
    with clock.stage("peaks" if local_peaks is None else "count", report=local_peaks is None):
        peaks = local_peaks
        if peaks is None and (
            init_array is None and (p.init == "peaks" or auto or p.weights == "nuclei")
        ):
            peaks = detect_nuclei(
                signal,
                vs,
                nucleus_diameter=meta["diameter"],
                foreground=foreground,
                n_nuclei=None if auto else p.n_nuclei,
            )
        K = n_components(p.n_nuclei, peaks, init_array, feats.n_points)
        K = adaptive.cap_count(K, meta["local"], init_array, meta["notes"])
    return _Found(feats, peaks, K, shape=foreground.shape, **meta)


def _features(image, p: SegmentationParams, clock: StageClock, local: bool = False, given=None):
    """Preprocess and voxel features; returns the features, the signal, the foreground
    mask and the image metadata (the normalised stack is dropped on return). In the
    local mode the nuclei are detected before the features (their own foreground joins
    the mask, and so does that of the ``given`` init centres) and returned in
    ``meta["local_peaks"]``."""
    # one channel (or one with signal) in the local mode: the granules are dropped as
    # peaks, not by the voxel-level filter (decided once: it scans the channels)
    one = bool(p.suppress_granules and local and _one_channel(image, p))
    with clock.stage("preprocess"):
        pre = preprocess(
            image,
            voxel_size=p.voxel_size,
            channel_axis=p.channel_axis,
            nucleus_diameter=p.nucleus_diameter,
            background_scale=p.background_scale,
            foreground_threshold=p.foreground_threshold,
            threshold_method=p.threshold_method,
            suppress_granules=p.suppress_granules and not one,
        )
        vs = np.asarray(pre.voxel_size)
        constant = pre.info.get("constant_channels", [])
        duplicate = pre.info.get("duplicate_channels", [])
        names = _channel_names(p.channel_names, pre.data.shape[-1] + len(constant) + len(duplicate))
    diameter = float(pre.info["nucleus_diameter_um"])
    local_peaks, local_info, notes = None, None, []
    if constant:
        left = ", ".join(names[c] for c in constant)
        notes.append(f"constant channel(s) {left} carry no signal (an alpha channel?): left out")
    if duplicate:
        left = ", ".join(names[c] for c in duplicate)
        notes.append(f"channel(s) {left} copy an earlier channel (a grey image as RGB?): left out")
    if local:
        with clock.stage("peaks"):
            # one channel: bright optical-resolution spots (gut granules) are dropped as
            # peaks (the voxel-level granule filter above needs the colour test there)
            granules = one
            local_peaks, local_info = adaptive.detect(
                pre,
                vs,
                diameter,
                notes,
                granules,
                given=given,
            )
    with clock.stage("features", report=False):
        feats = voxel_features(
            pre.data,
            pre.foreground,
            vs,
            intensity_weight=p.intensity_weight,
            mass=p.voxel_mass,
            signal=pre.signal,
        )
    meta = {
        "voxel_size": vs,
        "channel_axis": pre.channel_axis,
        "channel_names": names,
        "threshold": pre.threshold,
        "preprocess_info": pre.info,
        "diameter": diameter,
        "local": local_info,
        "notes": notes,
    }
    if local:
        meta["local_peaks"] = local_peaks
    return feats, pre.signal, pre.foreground, meta


def _spatial_ndim(image, p: SegmentationParams) -> int:
    """Number of spatial axes (the channel axis, if any, left out)."""
    return np.ndim(image) - (p.channel_axis is not None)


def _one_channel(image, p: SegmentationParams) -> bool:
    """True when the image has a single channel (no channel axis, or one of length 1),
    or a single one that is neither constant nor a copy of another
    (:func:`~.preprocess._redundant_channels`: a grey RGBA image)."""
    if p.channel_axis is None:
        return True
    shape = np.shape(image)
    if not -len(shape) <= p.channel_axis < len(shape):
        return False  # preprocess names the bad axis
    if int(shape[p.channel_axis]) == 1:
        return True
    from .preprocess import _redundant_channels

    a = np.moveaxis(np.asarray(image), p.channel_axis, -1)
    constant, duplicate = _redundant_channels(a)
    return a.shape[-1] - len(constant) - len(duplicate) == 1


def _diagnostics(clock, found, fit, n_found: int, n_refits: int, warn: list[str]) -> dict:
    """``result.info``: timings, counts, threshold, convergence, weights, warnings."""
    return {
        "timings": clock.finish(),
        "n_components": found.n_components,
        "n_nuclei": n_found,
        "n_peaks": None if found.peaks is None else len(found.peaks),
        "n_foreground_voxels": found.features.n_points,
        "threshold": found.threshold,
        "converged": bool(fit.converged),
        "n_iter": int(fit.n_iter),
        "objective": float(fit.objective),
        "n_tiles": fit.n_tiles,
        "weight_refits": n_refits,
        "weights": None if fit.weights is None else np.asarray(fit.weights).tolist(),
        "preprocess": found.preprocess_info,
        "low_count": bool(warn),
        "warnings": warn,
    }


def _count_warnings(n_found: int, n_components: int, n_nuclei, capped=None) -> list[str]:
    """Messages for a result with no nuclei or fewer than half the components fitted
    (``capped``: the number fitted when the foreground capped the request)."""
    asked = "requested" if n_nuclei != "auto" else "detected"
    if capped is not None:
        asked += f", {capped} fitted: the foreground holds no more"
    if n_found == 0:
        return [
            f"no nuclei found ({n_components} {asked}): check nucleus_diameter, the voxel "
            "size and mahalanobis_radius / min_size"
        ]
    if n_found < LOW_COUNT_FRACTION * n_components:
        return [
            f"only {n_found} nuclei found for {n_components} {asked} (below "
            f"{LOW_COUNT_FRACTION:.0%}): check n_nuclei, nucleus_diameter and the voxel size"
        ]
    return []


def _channel_names(channel_names, n_ch: int) -> tuple[str, ...]:
    if channel_names is None:
        return tuple(f"ch{i}" for i in range(n_ch))
    if len(channel_names) != n_ch:
        raise ValueError(
            f"channel_names has {len(channel_names)} names but the image has {n_ch} channels"
        )
    return channel_names
