"""Shared by the tests that run the installed ``napari-sinkhorn-em`` console script."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest


def installed_script() -> str:
    """Path of the console script of the environment running the tests."""
    exe = Path(sys.executable).parent / "napari-sinkhorn-em"
    if exe.exists():
        return str(exe)
    found = shutil.which("napari-sinkhorn-em")
    if found is None:  # pragma: no cover - the package is installed for the tests
        pytest.fail("console script napari-sinkhorn-em is not installed")
    return found
