"""The npe2 manifest of the installed package: valid, importable, and declaring our parts."""

from __future__ import annotations

import subprocess
import sys

import pytest

npe2 = pytest.importorskip("npe2")

PLUGIN = "napari-sinkhorn-em"


@pytest.fixture(scope="module")
def manifest():
    return npe2.PluginManifest.from_distribution(PLUGIN)


def test_npe2_validate_with_imports():
    """``npe2 validate --imports`` as a user would run it (every python_name imports)."""
    proc = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", PLUGIN, "--imports"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "valid" in out.lower() and "invalid" not in out.lower(), out


def test_manifest_declares_widget_reader_writers_and_samples(manifest):
    c = manifest.contributions
    commands = {cmd.id: cmd.python_name for cmd in c.commands}
    [widget] = c.widgets
    assert widget.display_name == "Sinkhorn-EM nuclei"
    assert commands[widget.command] == "napari_sinkhorn_em._napari.widget:SinkhornEMWidget"
    segment_menu = manifest.contributions.menus["napari/layers/segment"]
    assert [item.command for item in segment_menu] == [widget.command]

    [reader] = c.readers
    assert set(reader.filename_patterns) == {"*.tif", "*.tiff"}
    assert commands[reader.command] == "napari_sinkhorn_em._napari._reader:get_reader"

    writers = {tuple(w.layer_types): w for w in c.writers}
    assert writers[("labels",)].filename_extensions[0] == ".tif"
    assert (
        commands[writers[("labels",)].command]
        == "napari_sinkhorn_em._napari._writer:write_labels_tiff"
    )
    assert writers[("points",)].filename_extensions == [".csv"]

    assert {s.key for s in c.sample_data} == {"worm_head", "worm_head_labels"}


def test_manifest_is_shipped_inside_the_package():
    from importlib.resources import files

    text = files("napari_sinkhorn_em").joinpath("napari.yaml").read_text(encoding="utf-8")
    assert f"name: {PLUGIN}" in text
