"""Parameter checks shared by the whole package: one message per mistake.

Each checker names the parameter, says what was expected and what was given, and
returns the normalised value (a Python ``int`` / ``float``, a tuple of floats), so that
callers check and convert in one line. Booleans are never accepted as numbers, floats
never silently truncated to ints, strings never parsed as numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real
from typing import Any

import numpy as np

__all__ = [
    "VOXEL_SIZE_RANGE_UM",
    "check_choice",
    "check_float",
    "check_int",
    "check_marginal_penalty",
    "check_voxel_size",
    "single_plane_axis",
]

# plausible voxel lengths (um): 1 nm (beyond any light microscope) .. 100 um (beyond any
# stack with resolvable nuclei); outside it the unit is wrong (m, mm, nm) or the value is
# a typo, and filter sizes derived from it would run away or vanish
VOXEL_SIZE_RANGE_UM = (1e-3, 100.0)


def _prefix(where: str | None) -> str:
    return f"{where}: " if where else ""


def check_choice(name: str, value: Any, choices: Sequence[str], *, where: str | None = None) -> str:
    """``value`` must be one of the strings ``choices``; returns it."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(
            f"{_prefix(where)}{name} must be one of {', '.join(map(repr, choices))}; got {value!r}"
        )
    return value


def check_int(
    name: str,
    value: Any,
    *,
    min: int | None = None,
    max: int | None = None,
    where: str | None = None,
) -> int:
    """An integer (not a bool, not a float, not a string) in ``[min, max]``; returns it as
    ``int``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (Integral, np.integer)):
        kind = "a string" if isinstance(value, str) else type(value).__name__
        raise ValueError(f"{_prefix(where)}{name} must be an integer, got {value!r} ({kind})")
    v = int(value)
    if min is not None and v < min:
        raise ValueError(f"{_prefix(where)}{name} must be >= {min}, got {v}")
    if max is not None and v > max:
        raise ValueError(f"{_prefix(where)}{name} must be <= {max}, got {v}")
    return v


def check_float(
    name: str,
    value: Any,
    *,
    min: float | None = None,
    max: float | None = None,
    min_inclusive: bool = True,
    unit: str = "",
    where: str | None = None,
) -> float:
    """A finite real number (not a bool, not a string) in the given range; returns it as
    ``float``. ``min_inclusive=False`` asks for ``value > min``."""
    u = f" ({unit})" if unit else ""
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (Real, np.integer, np.floating)
    ):
        kind = "a string" if isinstance(value, str) else type(value).__name__
        raise ValueError(f"{_prefix(where)}{name} must be a number{u}, got {value!r} ({kind})")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{_prefix(where)}{name} must be a finite number{u}, got {v}")
    if min is not None and (v < min or (not min_inclusive and v == min)):
        op = ">=" if min_inclusive else ">"
        raise ValueError(f"{_prefix(where)}{name}{u} must be {op} {min:g}, got {v:g}")
    if max is not None and v > max:
        raise ValueError(f"{_prefix(where)}{name}{u} must be <= {max:g}, got {v:g}")
    return v


def _unit_hint(v: float) -> str:
    lo, hi = VOXEL_SIZE_RANGE_UM
    for factor, unit in ((1e6, "metres"), (1e3, "millimetres"), (1e-3, "nanometres")):
        if lo <= v * factor <= hi:
            return f"; {v:g} looks like {unit}: in micrometres that is {v * factor:g}"
    return ""


def check_voxel_size(
    value: Any,
    ndim: int | tuple[int, ...] | None = None,
    *,
    name: str = "voxel_size",
    where: str | None = None,
) -> tuple[float, ...] | None:
    """A voxel size: one length per spatial axis, in micrometres, each within
    :data:`VOXEL_SIZE_RANGE_UM` (1 nm .. 100 um).

    Parameters
    ----------
    value : sequence of real or None
        None is returned unchanged (callers supply their default).
    ndim : int or tuple of int, optional
        Number of spatial axes, or the allowed numbers (e.g. ``(2, 3)``).
    name : str
        Parameter name for the message (e.g. ``"--voxel-size"``).
    where : str, optional
        Context (a file name) put before the message.

    Returns
    -------
    tuple of float or None

    Raises
    ------
    ValueError
        For a non-sequence, non-numbers, the wrong number of values, non-finite or
        non-positive values, or values outside 1 nm .. 100 um (with a hint when the value
        looks like metres, millimetres or nanometres).
    """
    if value is None:
        return None
    p = _prefix(where)
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise ValueError(
            f"{p}{name} must be a sequence of numbers (um per spatial axis), got {value!r}"
        )
    seq = list(np.asarray(value).ravel()) if isinstance(value, np.ndarray) else list(value)
    if any(
        isinstance(v, (bool, np.bool_, str)) or not isinstance(v, (Real, np.integer, np.floating))
        for v in seq
    ):
        raise ValueError(
            f"{p}{name} must be a sequence of numbers (um per spatial axis), got {value!r}"
        )
    vs = tuple(float(v) for v in seq)
    if isinstance(ndim, int) and len(vs) != ndim:
        raise ValueError(
            f"{p}{name} must have {ndim} entries (one per spatial axis of the image, "
            f"e.g. (z, y, x) in micrometres), got {len(vs)}: {vs}"
        )
    if isinstance(ndim, tuple) and len(vs) not in ndim:
        allowed = " or ".join(f"{n} ({'Z Y X' if n == 3 else 'Y X'})" for n in ndim)
        raise ValueError(f"{p}{name} must have {allowed} values, got {len(vs)}: {vs}")
    if not all(math.isfinite(v) and v > 0 for v in vs):
        raise ValueError(f"{p}{name} values must be positive and finite (> 0 um), got {vs}")
    lo, hi = VOXEL_SIZE_RANGE_UM
    for v in vs:
        if not lo <= v <= hi:
            raise ValueError(
                f"{p}{name} {vs} is outside 1 nm .. 100 um per voxel: sizes are in "
                f"micrometres{_unit_hint(v)}"
            )
    return vs


def single_plane_axis(shape: Sequence[int], channel_axis: Any = None) -> int | None:
    """The spatial axis of length 1 of a 3-D stack whose two other spatial axes are
    longer (one plane saved as a stack, e.g. ``(1, Y, X)`` or ``(Y, X, 1)``), as an axis
    of ``shape``; None otherwise, and for a ``channel_axis`` that is not an axis of
    ``shape`` (the caller's own checks report that)."""
    shape = tuple(int(n) for n in shape)
    if channel_axis is not None:
        if isinstance(channel_axis, bool) or not isinstance(channel_axis, int | np.integer):
            return None
        if not -len(shape) <= int(channel_axis) < len(shape):
            return None
        ca = int(channel_axis) % len(shape)
        spatial = [a for a in range(len(shape)) if a != ca]
    else:
        spatial = list(range(len(shape)))
    if len(spatial) != 3:
        return None
    ones = [a for a in spatial if shape[a] == 1]
    if len(ones) == 1 and all(shape[a] >= 2 for a in spatial if a != ones[0]):
        return ones[0]
    return None


def check_marginal_penalty(tau: Any) -> float | None:
    """A soft-marginal penalty: None or a positive number (returned as float)."""
    if tau is None:
        return None
    if isinstance(tau, bool) or not isinstance(tau, (int, float, np.integer, np.floating)):
        raise ValueError(f"marginal_penalty must be a positive number or None, got {tau!r}")
    if not (tau > 0 and math.isfinite(tau)):
        raise ValueError(
            f"marginal_penalty must be a positive number or None (finite; None = exact "
            f"marginals), got {tau!r}"
        )
    return float(tau)
