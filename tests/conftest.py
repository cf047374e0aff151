"""Shared test fixtures: one session-wide cache of synthetic worms.

``make_worm`` takes 0.05-2 s per worm; tests in several files use the same ones, so they
are made once per session. The cached arrays are read-only, so that no test can change a
worm another test sees.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from napari_sinkhorn_em.synthetic import SyntheticWorm, make_worm


def _freeze(worm: SyntheticWorm) -> SyntheticWorm:
    for value in vars(worm).values():
        if isinstance(value, np.ndarray):
            value.flags.writeable = False
    return worm


@pytest.fixture(scope="session")
def worms() -> Callable[..., SyntheticWorm]:
    """``worms(**make_worm_kwargs)``: the synthetic worm, made once per session."""
    cache: dict[tuple, SyntheticWorm] = {}

    def get(**kwargs: Any) -> SyntheticWorm:
        key = tuple(sorted(kwargs.items()))
        if key not in cache:
            cache[key] = _freeze(make_worm(**kwargs))
        return cache[key]

    return get
