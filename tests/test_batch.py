"""Tests of the batch engine (napari_sinkhorn_em.batch), run in this process."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from napari_sinkhorn_em.batch import (
    RUN_JSON,
    BatchError,
    build_parameters,
    derive_seed,
    discover_inputs,
    input_fingerprint,
    output_paths,
    run_batch,
)
from napari_sinkhorn_em.io import write_image

# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------


def _touch_tiff(path: Path, shape=(8, 8), value=None) -> Path:
    rng = np.random.default_rng(len(path.name))
    data = rng.integers(0, 200, size=shape).astype(np.uint8) if value is None else value
    write_image(path, data, voxel_size=None, axes="ZYX"[3 - len(shape) :])
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------
# discovery
# ---------------------------------------------------------------------------------------


def test_discover_folders_files_sorted_and_filtered(tmp_path):
    d = tmp_path / "in"
    (d / "sub" / "deeper").mkdir(parents=True)
    for name in ("b.tif", "a.TIFF", "c.ome.tif", "sub/x.tif", "sub/deeper/y.tiff"):
        _touch_tiff(d / name)
    (d / "notes.txt").write_text("not an image")
    (d / ".hidden.tif").write_bytes(b"x")  # e.g. a temporary file
    (d / ".a_labels.tif.abc.tmp").write_bytes(b"x")
    # this tool's own outputs sitting in the folder are not inputs
    _touch_tiff(d / "a_labels.tif")
    (d / "a_nuclei.csv").write_text("label\n")
    # a *_labels.tif without its table is an ordinary input
    _touch_tiff(d / "z_labels.tif")

    flat = discover_inputs([d])
    assert [i.key for i in flat] == ["a", "b", "c", "z_labels"]
    assert all(i.path.is_absolute() for i in flat)
    assert flat[0].path == (d / "a.TIFF").resolve()

    deep = discover_inputs([d], recursive=True)
    assert [i.key for i in deep] == ["a", "b", "c", "sub/deeper/y", "sub/x", "z_labels"]

    # a file given by name is taken whatever its extension, and duplicates collapse
    explicit = discover_inputs([d / "notes.txt", d / "b.tif", d])
    assert [i.key for i in explicit] == ["a", "b", "c", "notes", "z_labels"]

    # same order whatever the order of the arguments
    assert discover_inputs([d / "b.tif", d / "c.ome.tif"]) == discover_inputs(
        [d / "c.ome.tif", d / "b.tif"]
    )


def test_discover_skips_output_folder_inside_input(tmp_path):
    d = tmp_path / "in"
    (d / "results").mkdir(parents=True)
    _touch_tiff(d / "a.tif")
    _touch_tiff(d / "results" / "b.tif")
    keys = [i.key for i in discover_inputs([d], recursive=True, output_dir=d / "results")]
    assert keys == ["a"]


def test_discover_errors(tmp_path):
    with pytest.raises(BatchError, match=r"input not found: .*missing"):
        discover_inputs([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(BatchError, match=r"no input files found.*--recursive"):
        discover_inputs([tmp_path / "empty"])
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    _touch_tiff(tmp_path / "one" / "w.tif")
    _touch_tiff(tmp_path / "two" / "w.tif")
    with pytest.raises(BatchError, match=r"same outputs.*w: "):
        discover_inputs([tmp_path / "one", tmp_path / "two"])


def test_output_paths(tmp_path):
    labels, table = output_paths(tmp_path, "sub/worm_001")
    assert labels == tmp_path / "sub" / "worm_001_labels.tif"
    assert table == tmp_path / "sub" / "worm_001_nuclei.csv"


# ---------------------------------------------------------------------------------------
# seeds and parameters
# ---------------------------------------------------------------------------------------


def test_derive_seed_depends_only_on_base_and_name():
    s = derive_seed(7, "worm_000")
    assert s == derive_seed(7, "worm_000")
    assert 0 <= s < 2**32
    others = {derive_seed(7, f"worm_{i:03d}") for i in range(1, 50)} | {derive_seed(8, "worm_000")}
    assert s not in others
    assert len(others) == 50
    for bad in (-1, 1.5, "3", True):
        with pytest.raises(BatchError, match="seed must be a non-negative integer"):
            derive_seed(bad, "x")


def test_build_parameters_flags_override_config():
    config = {
        "n_nuclei": 40,
        "method": "em",
        "nucleus_diameter": 2.5,
        "max_iter": 30,
        "voxel_size": [0.8, 0.35, 0.35],
        "channel_axis": 1,
        "channel_names": ["a", "b"],
        "random_state": 11,
    }
    p = build_parameters(config)
    assert p["segment"] == {"n_nuclei": 40, "method": "em", "nucleus_diameter": 2.5, "max_iter": 30}
    assert p["fallback_voxel_size"] == [0.8, 0.35, 0.35]
    assert p["voxel_size"] is None and p["channel_axis"] is None
    assert p["seed"] == 11

    q = build_parameters(
        config,
        n_nuclei="auto",
        method="sinkhorn",
        voxel_size=(1, 0.5, 0.5),
        channel_axis=0,
        nucleus_diameter=3,
        seed=5,
    )
    assert q["segment"] == {
        "n_nuclei": "auto",
        "method": "sinkhorn",
        "nucleus_diameter": 3.0,
        "max_iter": 30,
    }
    assert q["voxel_size"] == [1.0, 0.5, 0.5] and q["channel_axis"] == 0 and q["seed"] == 5
    # JSON-serialisable as is
    assert json.loads(json.dumps(q)) == q
    assert build_parameters()["segment"] == {"n_nuclei": "auto"}
    assert build_parameters()["seed"] == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_nuclei": 0}, "n_nuclei must be a positive integer or 'auto'"),
        ({"n_nuclei": "many"}, "n_nuclei must be a positive integer or 'auto'"),
        ({"voxel_size": (1, 2, 3, 4)}, "must have 2 .* or 3 .* values, got 4"),
        ({"voxel_size": (1, 0, 1)}, "must be positive and finite"),
        ({"nucleus_diameter": -1.0}, "nucleus diameter must be positive"),
        ({"seed": -3}, "seed must be a non-negative integer"),
        ({"channel_axis": 1.5}, "channel axis must be an integer"),
    ],
)
def test_build_parameters_errors(kwargs, message):
    with pytest.raises(BatchError, match=message):
        build_parameters(**kwargs)


def test_build_parameters_bad_config_voxel_size():
    with pytest.raises(BatchError, match="voxel_size in the config"):
        build_parameters({"voxel_size": [1.0]})


# ---------------------------------------------------------------------------------------
# set-up errors of a run (before any file is processed)
# ---------------------------------------------------------------------------------------


def test_run_batch_setup_errors(tmp_path):
    _touch_tiff(tmp_path / "a.tif")
    with pytest.raises(BatchError, match="either --jobs or --dask-scheduler"):
        run_batch([tmp_path / "a.tif"], tmp_path / "out", jobs=2, dask_scheduler="tcp://x:1")
    with pytest.raises(BatchError, match="jobs must be a positive integer"):
        run_batch([tmp_path / "a.tif"], tmp_path / "out", jobs=0)
    (tmp_path / "file").write_text("x")
    with pytest.raises(BatchError, match="exists and is not a folder"):
        run_batch([tmp_path / "a.tif"], tmp_path / "file")
    with pytest.raises(BatchError, match="input not found"):
        run_batch([tmp_path / "nope.tif"], tmp_path / "out")
    # an output that would replace an input
    _touch_tiff(tmp_path / "b.tif")
    _touch_tiff(tmp_path / "b_labels.tif")
    with pytest.raises(BatchError, match="would overwrite an input"):
        run_batch([tmp_path / "b.tif", tmp_path / "b_labels.tif"], tmp_path, overwrite=True)
    assert not (tmp_path / "out").exists()


def test_output_folder_is_locked_during_a_run(tmp_path):
    fcntl = pytest.importorskip("fcntl")
    _touch_tiff(tmp_path / "a.tif")
    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".napari-sinkhorn-em.lock", "a+") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(BatchError, match="another napari-sinkhorn-em run is writing to"):
            run_batch([tmp_path / "a.tif"], out, progress_bar=False)
    assert not (out / RUN_JSON).exists()


def test_input_fingerprint_changes_with_content_and_mtime(tmp_path):
    p = _touch_tiff(tmp_path / "a.tif")
    fp = input_fingerprint(p)
    assert fp == {"size": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns}
    os.utime(p, ns=(fp["mtime_ns"] + 10**9, fp["mtime_ns"] + 10**9))
    assert input_fingerprint(p) != fp
