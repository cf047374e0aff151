"""Synthetic C. elegans-like fluorescence stacks with ground truth.

:func:`make_worm` draws a worm body (a tapered tube along x), places nuclei in dense
head ganglia around the pharynx (or along the ventral nerve cord for a mid-body
piece), gives each nucleus a NeuroPAL-like colour (a random mixture of three colour
channels) plus a pan-nuclear channel, adds autofluorescent gut granules (small, bright,
alike in every channel), an uneven background, an anisotropic Gaussian PSF (z blur
larger than xy) and Poisson + Gaussian camera noise. It returns the image together
with the true centres, label image, diameters and colours.

Also: :func:`make_moving_worm` / :func:`make_dividing_embryo` / :func:`make_growing_embryo`
(time-lapses with identity truth), :func:`make_whole_brain`, :func:`make_embryo`,
:func:`make_nuclei_field_2d` (other acquisition regimes),
:func:`with_registration_shift` / :func:`with_hot_pixels` / :func:`with_debris` /
:func:`with_clipped_black_level`
(artefacts of real data) and the writers of sample images and batches of worms.
Modules: ``worm`` (the head), ``timelapse``, ``growth``, ``regimes``, ``artifacts``,
``files``; ``_geometry`` (anatomy and nucleus placement) and ``_render``
(colours, rasterisation, granules, background, noise) are shared.

Everything is deterministic given ``seed``. No napari or Qt import.

Coordinates: the worm axis is x (nose at small x), dorsal-ventral is y and left-right
is z (worms lie on their side on the slide). Physical coordinates are micrometres.
"""

from __future__ import annotations

from ._render import CHANNEL_NAMES
from .artifacts import (
    with_clipped_black_level,
    with_debris,
    with_hot_pixels,
    with_registration_shift,
)
from .files import write_sample_images, write_synthetic_worms
from .growth import make_growing_embryo
from .regimes import embryo_nucleus_diameter, make_embryo, make_nuclei_field_2d, make_whole_brain
from .timelapse import SyntheticTimeLapse, make_dividing_embryo, make_moving_worm
from .worm import SyntheticWorm, make_worm

__all__ = [
    "CHANNEL_NAMES",
    "SyntheticTimeLapse",
    "SyntheticWorm",
    "embryo_nucleus_diameter",
    "make_dividing_embryo",
    "make_embryo",
    "make_growing_embryo",
    "make_moving_worm",
    "make_nuclei_field_2d",
    "make_whole_brain",
    "make_worm",
    "with_clipped_black_level",
    "with_debris",
    "with_hot_pixels",
    "with_registration_shift",
    "write_sample_images",
    "write_synthetic_worms",
]
