"""Build the wheel and check what a user installing it from PyPI gets.

1. The wheel holds the npe2 manifest and the sample images, byte-identical to
   the top-level ``napari.yaml`` and ``sample_images/`` (their single source).
2. In a fresh virtual environment with only the runtime dependencies (no
   napari, no Qt binding) the package imports, every core module imports, and
   the console script answers ``--version``.
3. ``npe2 validate`` passes on the package installed in the current
   environment.

Run: ``python tools/check_wheel.py`` (from any environment with pip and npe2).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "napari_sinkhorn_em"
# Modules allowed to import napari / Qt (the widget and the modules only it uses);
# everything else is "core".
GUI_MODULES = {
    "_napari.widget",
    "_napari.form",
    "_napari.runner",
    "_napari.layers",
    "_napari.timelapse",
}

CORE_IMPORT_CHECK = f"""
import importlib, pkgutil, sys
for banned in ("napari", "PyQt5", "PyQt6", "PySide2", "PySide6"):
    try:
        importlib.import_module(banned)
    except ImportError:
        pass
    else:
        sys.exit(f"{{banned}} is importable: this venv should hold runtime deps only")
import {PACKAGE}
gui = {sorted(GUI_MODULES)!r}
names = [m.name.split(".", 1)[1]
         for m in pkgutil.walk_packages({PACKAGE}.__path__, "{PACKAGE}.")]
names = [n for n in names if n not in gui]
for name in names:
    importlib.import_module("{PACKAGE}." + name)
leaked = sorted(m for m in sys.modules if m.split(".")[0] in
                ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "vispy"))
if leaked:
    sys.exit(f"core modules imported GUI modules: {{leaked}}")
print("core modules import without napari/Qt:", ", ".join(names))
"""


def run(*cmd: str | Path, **kw) -> subprocess.CompletedProcess:
    shown = ["<script>" if "\n" in str(c) else str(c) for c in cmd]
    print("+", " ".join(shown), flush=True)
    return subprocess.run([str(c) for c in cmd], check=True, **kw)


def check_wheel_contents(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        manifest = f"{PACKAGE}/napari.yaml"
        if manifest not in names:
            sys.exit(f"{wheel.name} lacks {manifest}")
        if zf.read(manifest) != (ROOT / "napari.yaml").read_bytes():
            sys.exit(f"{manifest} in the wheel differs from the top-level napari.yaml")
        samples = sorted(p for p in (ROOT / "sample_images").iterdir() if p.is_file())
        if not samples:
            sys.exit("sample_images/ is empty")
        for path in samples:
            arc = f"{PACKAGE}/sample_images/{path.name}"
            if arc not in names:
                sys.exit(f"{wheel.name} lacks {arc}")
            if zf.read(arc) != path.read_bytes():
                sys.exit(f"{arc} in the wheel differs from sample_images/{path.name}")
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        text = zf.read(entry_points).decode()
        if "[napari.manifest]" not in text or f"{PACKAGE}:napari.yaml" not in text:
            sys.exit("the napari.manifest entry point is missing from the wheel")
    print(f"{wheel.name}: manifest, {len(samples)} sample file(s) and entry point present")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", tmp / "dist", ROOT)
        (wheel,) = (tmp / "dist").glob("*.whl")
        check_wheel_contents(wheel)

        env_dir = tmp / "core-venv"
        venv.EnvBuilder(with_pip=True).create(env_dir)
        py = env_dir / "bin" / "python"
        run(py, "-m", "pip", "install", "-q", wheel)
        run(py, "-c", CORE_IMPORT_CHECK)
        run(env_dir / "bin" / "napari-sinkhorn-em", "--version")

    run(sys.executable, "-m", "npe2", "validate", "napari-sinkhorn-em")
    print("wheel check passed")


if __name__ == "__main__":
    main()
