"""Acquisition artefacts added to a synthetic stack: what real data brings along.

Each function returns a new :class:`~napari_sinkhorn_em.synthetic.SyntheticWorm` (the
input is not modified) whose image is float32, with the truth unchanged and the
artefact described in ``params["artifacts"]``:

* :func:`with_registration_shift` -- registered (motion-corrected) data: a sub-pixel
  shift by linear interpolation averages each voxel's noise with its neighbours';
* :func:`with_hot_pixels` -- camera hot pixels: single voxels far above their neighbours;
* :func:`with_debris` -- a few nucleus-sized objects far brighter than every nucleus
  (debris, dust, beads);
* :func:`with_clipped_black_level` -- a black level set above the background and
  clipped at 0, as confocal and camera software leave it: much of the background is
  exactly 0.

Deterministic given ``seed``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage as ndi

from .worm import SyntheticWorm

__all__ = [
    "with_clipped_black_level",
    "with_debris",
    "with_hot_pixels",
    "with_registration_shift",
]


def _channels_first(w: SyntheticWorm) -> np.ndarray:
    img = np.asarray(w.image, dtype=np.float32)
    return img[None] if w.channel_axis is None else np.moveaxis(img, w.channel_axis, 0)


def _random_voxels(rng: np.random.Generator, shape, n: int) -> np.ndarray:
    """``(n, len(shape))`` uniformly random voxel coordinates in ``shape``."""
    return np.stack([rng.integers(0, s, int(n)) for s in shape], axis=1)


def _replace(w: SyntheticWorm, image_cf: np.ndarray, record: dict, **changes) -> SyntheticWorm:
    img = image_cf[0] if w.channel_axis is None else np.moveaxis(image_cf, 0, w.channel_axis)
    params = dict(w.params)
    params["artifacts"] = [*params.get("artifacts", []), record]
    return dataclasses.replace(w, image=np.ascontiguousarray(img), params=params, **changes)


def with_registration_shift(w: SyntheticWorm, shift_px: float = 0.5) -> SyntheticWorm:
    """Shift the image by ``shift_px`` voxels along y and x (the last two axes) by linear
    interpolation, as registration does. The true centres stay: they move by less than
    a voxel. The true labels are dropped (they would need the same shift)."""
    img = _channels_first(w)
    shift = [0.0] * img.ndim
    shift[-1] = shift[-2] = float(shift_px)
    out = ndi.shift(img, shift, order=1, mode="nearest").astype(np.float32)
    rec = {"kind": "registration_shift", "shift_px": float(shift_px)}
    return _replace(w, out, rec, labels=None)


def with_clipped_black_level(w: SyntheticWorm, percentile: float = 50.0) -> SyntheticWorm:
    """Subtract the ``percentile`` of each channel and clip at 0: that fraction of the
    voxels (mostly background) becomes exactly 0. The truth is unchanged."""
    if not 0.0 <= float(percentile) < 100.0:
        raise ValueError(f"percentile must be in [0, 100), got {percentile!r}")
    img = _channels_first(w)
    level = np.percentile(img.reshape(img.shape[0], -1), float(percentile), axis=1)
    level = level.astype(np.float32).reshape((-1,) + (1,) * (img.ndim - 1))
    out = np.maximum(img - level, 0.0)
    rec = {"kind": "clipped_black_level", "percentile": float(percentile)}
    return _replace(w, out.astype(np.float32), rec)


def with_hot_pixels(
    w: SyntheticWorm, n: int = 300, amplitude: float = 1000.0, seed: int = 5
) -> SyntheticWorm:
    """Raise ``n`` random single voxels by ``amplitude`` counts in every channel (one
    camera). Their voxel coordinates are ``params["artifacts"][-1]["at"]``."""
    img = _channels_first(w).copy()
    rng = np.random.default_rng(seed)
    at = _random_voxels(rng, img.shape[1:], n)
    img[(slice(None), *at.T)] += np.float32(amplitude)
    rec = {"kind": "hot_pixels", "n": int(n), "amplitude": float(amplitude), "at": at.tolist()}
    return _replace(w, img, rec)


def with_debris(
    w: SyntheticWorm, n: int = 20, brightness: float = 20.0, seed: int = 3
) -> SyntheticWorm:
    """Add ``n`` bright spots about 1.4 um across (a Gaussian of 0.6 um) at random
    positions, peaking ``brightness`` times the image's 99.9th percentile above its
    median, in every channel."""
    img = _channels_first(w).copy()
    spatial = img.shape[1:]
    vs = np.asarray(w.voxel_size, dtype=np.float64)
    rng = np.random.default_rng(seed)
    spot = np.zeros(spatial, np.float32)
    at = _random_voxels(rng, spatial, n)
    spot[tuple(at.T)] = 1.0
    spot = ndi.gaussian_filter(spot, 0.6 / vs)
    spot /= spot.max()
    for c in range(img.shape[0]):
        bg, top = np.median(img[c]), np.percentile(img[c], 99.9)
        img[c] += spot * np.float32(brightness * (top - bg))
    rec = {"kind": "debris", "n": int(n), "brightness": float(brightness), "at": at.tolist()}
    return _replace(w, img, rec)
