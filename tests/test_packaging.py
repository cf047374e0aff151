"""Packaging: the core runs without napari/Qt, the manifest and console script are wired."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import napari_sinkhorn_em

ROOT = Path(__file__).resolve().parents[1]

# Imports of these top-level names are refused in the child interpreter below,
# as if napari and Qt were not installed.
GUI_PACKAGES = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "vispy", "magicgui")
GUI_MODULES = {
    "_napari.widget",
    "_napari.form",
    "_napari.runner",
    "_napari.layers",
    "_napari.timelapse",
}


def test_core_imports_without_gui_stack():
    code = textwrap.dedent(
        f"""
        import importlib, importlib.abc, pkgutil, sys

        class Refuse(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {GUI_PACKAGES!r}:
                    raise ImportError(f"{{name}} is not installed (refused by the test)")
                return None

        sys.meta_path.insert(0, Refuse())
        import napari_sinkhorn_em as pkg
        seen = 0
        for m in pkgutil.walk_packages(pkg.__path__, "napari_sinkhorn_em."):
            if m.name.split(".", 1)[1] not in {sorted(GUI_MODULES)!r}:
                importlib.import_module(m.name)
                seen += 1
        assert seen > 20, seen  # the walk reached into the subpackages
        print("ok")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_manifest_single_source():
    """The package's napari.yaml is the top-level one (symlink in the source tree)."""
    packaged = Path(napari_sinkhorn_em.__file__).parent / "napari.yaml"
    assert packaged.read_bytes() == (ROOT / "napari.yaml").read_bytes()


def test_manifest_entry_point_resolves():
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="napari.manifest") if e.name == "napari-sinkhorn-em"]
    assert ep.value == "napari_sinkhorn_em:napari.yaml"


@pytest.mark.parametrize("flag", ["--version", "--help"])
def test_console_script(flag):
    exe = shutil.which("napari-sinkhorn-em", path=str(Path(sys.executable).parent))
    assert exe is not None, "console script napari-sinkhorn-em is not installed"
    proc = subprocess.run([exe, flag], capture_output=True, text=True, check=True)
    if flag == "--version":
        assert proc.stdout.strip() == f"napari-sinkhorn-em {napari_sinkhorn_em.__version__}"
    else:
        assert "usage: napari-sinkhorn-em" in proc.stdout


def test_public_names_resolve_lazily():
    """``import napari_sinkhorn_em`` stays light; every name in __all__ resolves on use."""
    code = textwrap.dedent(
        """
        import sys
        import napari_sinkhorn_em as pkg
        assert "numba" not in sys.modules, "importing the package loaded numba"
        for name in pkg.__all__:
            getattr(pkg, name)
        try:
            pkg.no_such_name
        except AttributeError as exc:
            assert "no_such_name" in str(exc)
        else:
            raise AssertionError("unknown attribute did not raise")
        print("ok")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
