"""The image's noise: its level and its correlation between neighbouring voxels.

The blob and peak tests compare a filter response with the response the noise alone
would give. For white noise that is the voxel noise times the filter's L2 norm
(:func:`voxel_noise`). Stacks that were interpolated (registered or resampled), binned
after acquisition, denoised or deconvolved have noise that is correlated between
neighbouring voxels: their differences underestimate the voxel noise, and a smoothing
filter averages it away far less than white noise. The white-noise prediction then
falls 1.2-2.6x below the true response noise at the blob scales, and noise blobs pass
as faint nuclei (synthetic whole-brain stack, noise blurred by 0.7 px in y and x:
precision 0.42).

The model here: the noise is white noise blurred by a Gaussian of width :func:`noise_blur`
voxels per axis (0 = white). The width comes from the ratio of the spread of the
lag-2 and lag-1 differences along each axis (1 for white noise, 1.47 for a 0.7-voxel
blur); :func:`response_noise` is then the noise level of any filter response.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "given_or_measured_blur",
    "noise_blur",
    "response_noise",
    "voxel_noise",
    "voxel_sd",
    "white_noise_level",
]

# a lag-2 / lag-1 spread ratio below this is taken as white noise: smooth signal raises
# the ratio of white-noise images to 1.00-1.14 (measured: every bench_real image, the
# coarse z-axis of the single-channel worm body the highest), a 0.5-voxel blur gives
# 1.25 and a 0.7-voxel blur 1.45-1.49
MIN_BLUR_RATIO = 1.2
# samples per axis for the ratio (its median's relative error is ~0.3 %)
_RATIO_SAMPLES = 200_000


def voxel_noise(signal: np.ndarray) -> float:
    """Standard deviation of the voxel noise, from the differences of neighbouring voxels
    along the last axis (blind to smooth signal): ``1.4826 x median |diff| / sqrt(2)`` on
    about a million voxels. Where the background is exactly zero (DoG-filtered
    recordings) the zero differences are left out. Exact for white noise; for
    correlated noise see :func:`white_noise_level`."""
    s = np.asarray(signal)
    rows = s.reshape(-1, s.shape[-1])
    rows = rows[:: max(1, rows.size // 1_000_000)].astype(np.float32)
    d = np.diff(rows, axis=-1).reshape(-1)
    if np.count_nonzero(d) > 100:
        d = d[d != 0]
    return 1.4826 * float(np.median(np.abs(d))) / np.sqrt(2.0) if d.size else 0.0


@lru_cache(maxsize=1)
def _ratio_table() -> tuple[np.ndarray, np.ndarray]:
    """Lag-2 / lag-1 difference spread of white noise blurred by ``b`` voxels."""
    b = np.round(np.arange(0.3, 4.0, 0.01), 2)
    r = np.array([_diff_norm(v, 2) / _diff_norm(v, 1) for v in b])
    return b, np.maximum.accumulate(r)


def _diff_norm(b: float, lag: int) -> float:
    k = _gauss1d(b)
    return float(np.sqrt(((k[lag:] - k[:-lag]) ** 2).sum()))


@lru_cache(maxsize=512)
def _gauss1d(b: float) -> np.ndarray:
    """The 1-D Gaussian of ``b`` voxels (scipy's, truncated at 4 sigma) applied to a unit
    impulse, with room for the differences."""
    h = int(np.ceil(4.0 * b)) + 3
    d = np.zeros(2 * h + 1)
    d[h] = 1.0
    return ndi.gaussian_filter1d(d, b, mode="constant") if b > 0 else d


def _line_step(s: np.ndarray) -> int:
    """Stride on all axes but one that leaves about :data:`_RATIO_SAMPLES` voxels in full
    lines along the remaining axis."""
    n_other = max(1, s.ndim - 1)
    return max(1, int(np.ceil((s.size / _RATIO_SAMPLES) ** (1.0 / n_other))))


def _axis_sample(s: np.ndarray, axis: int) -> np.ndarray:
    """Full lines along ``axis``, the other axes subsampled to about
    :data:`_RATIO_SAMPLES` voxels (a strided view, no copy of the image)."""
    step = _line_step(s)
    idx = [slice(None, None, step)] * s.ndim
    idx[axis] = slice(None)
    return np.moveaxis(s[tuple(idx)], axis, -1).astype(np.float32)


def _dithered(a: np.ndarray) -> np.ndarray:
    """``a`` (float32) plus a uniform dither of one quantisation step when its values are
    quantised (integer counts, also once scaled), so that medians of differences are not
    stuck on whole steps; seeded."""
    u = np.unique(a.reshape(-1)[:: max(1, a.size // 20_000)])
    if u.size > 1 and u.size < 0.25 * min(a.size, 20_000):
        q = float(np.median(np.diff(u)))
        rng = np.random.default_rng(0)
        return a + rng.uniform(-0.5 * q, 0.5 * q, a.shape).astype(np.float32)
    return a


def noise_blur(signal: np.ndarray) -> np.ndarray:
    """Per-axis width (voxels) of the Gaussian that turns white noise into the image's
    noise; 0 on axes whose noise is white (or cannot be told: fewer than 8 voxels, or a
    background that is mostly one value, such as the zeros of DoG-filtered recordings).

    From the median absolute lag-2 and lag-1 differences along each axis: their ratio is
    1 for white noise and grows with the blur. Ratios below :data:`MIN_BLUR_RATIO` are
    taken as white (smooth signal alone gives up to 1.14). Quantised intensities
    (integer counts, also once scaled) are dithered by a uniform half-step first
    (seeded), so that the medians are not stuck on whole steps.

    Parameters
    ----------
    signal : numpy.ndarray
        2-D/3-D image (one channel).

    Returns
    -------
    numpy.ndarray
        Float64, one width per axis.
    """
    s = np.asarray(signal)
    out = np.zeros(s.ndim)
    for axis in range(s.ndim):
        if s.shape[axis] < 8:
            continue
        rows = _axis_sample(s, axis)
        d1 = np.abs(np.diff(rows, axis=-1))
        if np.count_nonzero(d1) < 0.5 * d1.size:
            continue
        rows = _dithered(rows)
        d1 = np.abs(np.diff(rows, axis=-1))
        d2 = np.abs(rows[..., 2:] - rows[..., :-2])
        m1 = float(np.median(d1))
        if m1 <= 0:
            continue
        ratio = float(np.median(d2)) / m1
        if ratio < MIN_BLUR_RATIO:
            continue
        b, r = _ratio_table()
        out[axis] = float(np.interp(ratio, r, b))
    return out


def given_or_measured_blur(signal: np.ndarray, blur=None) -> np.ndarray:
    """``blur`` (a caller's :func:`noise_blur` of ``signal``, as float64) or, when None,
    :func:`noise_blur` measured here: the noise model is measured once per signal and
    handed down to every significance test."""
    return noise_blur(signal) if blur is None else np.asarray(blur, dtype=np.float64)


def white_noise_level(signal: np.ndarray, blur=None) -> float:
    """Standard deviation of the white noise that, blurred by ``blur`` (default
    :func:`noise_blur`), gives the image's noise; equal to :func:`voxel_noise` for
    white noise. With a blur it is larger than the voxel noise: the response of a filter
    ``k`` to the noise is this level times ``||G_blur * k||`` (:func:`response_noise`)."""
    s = np.asarray(signal)
    b = given_or_measured_blur(s, blur)
    v = voxel_noise(s)
    if not np.any(b > 0):
        return v
    # the lag-1 differences along the last axis of blurred white noise of unit level
    unit = _diff_norm(float(b[-1]), 1) * float(
        np.prod([np.sqrt((_gauss1d(float(x)) ** 2).sum()) for x in b[:-1]])
    )
    return v * np.sqrt(2.0) / unit


def response_noise(kernel: np.ndarray, level: float, blur) -> float:
    """Standard deviation of the response of the linear filter ``kernel`` (full-resolution
    weights) to noise of white level ``level`` (:func:`white_noise_level`) blurred by
    ``blur`` voxels per axis: ``level x ||G_blur * kernel||``."""
    k = np.asarray(kernel, dtype=np.float64)
    b = np.asarray(blur, dtype=np.float64)
    if np.any(b > 0):
        pad = [(int(np.ceil(4.0 * x)) + 1, int(np.ceil(4.0 * x)) + 1) for x in b]
        k = ndi.gaussian_filter(np.pad(k, pad), b, mode="constant")
    return float(level) * float(np.sqrt((k**2).sum()))


def voxel_sd(signal: np.ndarray, blur=None) -> float:
    """Standard deviation of one voxel's noise, correlated or not: :func:`voxel_noise`
    for white noise, larger where the noise is blurred (a 0.7-voxel blur in y and x:
    1.6x). ``blur``: :func:`noise_blur` of ``signal`` when the caller has it."""
    s = np.asarray(signal)
    b = given_or_measured_blur(s, blur)
    return response_noise(np.ones((1,) * s.ndim), white_noise_level(s, b), b)
