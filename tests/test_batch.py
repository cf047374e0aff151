"""Tests of the batch engine (napari_sinkhorn_em.batch), run in this process."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from napari_sinkhorn_em import __version__
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
from napari_sinkhorn_em.io import read_image, write_image

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
        "init": [[1.0, 2.0, 3.0]],  # centres of one image: not for a batch
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
    assert build_parameters({"init": "k-means++"})["segment"]["init"] == "k-means++"
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


# ---------------------------------------------------------------------------------------
# whole runs on a folder of small synthetic worms plus bad files
# ---------------------------------------------------------------------------------------

SMALL_3D = {"n_nuclei": 12, "region": "body", "voxel_size": (1.0, 0.7, 0.7), "n_channels": 2}
SMALL_2D = {"n_nuclei": 12, "region": "body", "voxel_size": (0.7, 0.7), "n_channels": 2, "ndim": 2}
GOOD = ("worm2d", "worm3d_a", "worm3d_b")
BAD = {
    "constant": "constant",
    "corrupt": "corrupt",
    "empty": "empty",
    "notatiff": "not a TIFF",
    "truncated": "truncated",
    "wrong_axes": "wrong number of axes",
}


def _write_worm(path: Path, worm) -> None:
    axes = "C" + "ZYX"[3 - worm.ndim :]
    write_image(
        path, worm.image, voxel_size=worm.voxel_size, axes=axes, channel_names=worm.channel_names
    )


@pytest.fixture(scope="module")
def worm_dir(tmp_path_factory):
    """A folder of two small 3-D worms, one 2-D worm and six bad files (+ a text file)."""
    import tifffile

    from napari_sinkhorn_em.synthetic import make_worm

    d = tmp_path_factory.mktemp("worms")
    truth = {}
    for name, kwargs, seed in (
        ("worm3d_a", SMALL_3D, 1),
        ("worm3d_b", SMALL_3D, 2),
        ("worm2d", SMALL_2D, 3),
    ):
        worm = make_worm(seed=seed, **kwargs)
        _write_worm(d / f"{name}.tif", worm)
        truth[name] = worm
    good = (d / "worm3d_a.tif").read_bytes()
    (d / "truncated.tif").write_bytes(good[: len(good) // 2])
    rng = np.random.default_rng(0)
    (d / "corrupt.tif").write_bytes(good[:8] + rng.integers(0, 256, 4000, np.uint8).tobytes())
    (d / "notatiff.tif").write_text("this is a text file with a .tif name\n")
    (d / "empty.tif").write_bytes(b"")
    write_image(
        d / "constant.tif",
        np.full((8, 24, 24), 300, np.uint16),
        voxel_size=(1.0, 0.7, 0.7),
        axes="ZYX",
    )
    tifffile.imwrite(
        d / "wrong_axes.tif", np.ones((2, 2, 3, 16, 16), np.uint8), photometric="minisblack"
    )
    (d / "notes.txt").write_text("ignored: not a .tif")
    return d, truth


@pytest.fixture(scope="module")
def first_run(worm_dir, tmp_path_factory):
    """One in-process run (jobs=1) over the whole folder, through the CLI entry point."""
    from napari_sinkhorn_em.cli import main

    d, _ = worm_dir
    hashes = {p.name: _sha(p) for p in d.iterdir()}
    out = tmp_path_factory.mktemp("out1")
    code = main(["segment", str(d), "--output", str(out), "--seed", "7", "--quiet"])
    return code, out, hashes


def _run_json(out: Path) -> dict:
    return json.loads((out / RUN_JSON).read_text())


def test_good_files_segmented_bad_files_reported(first_run, worm_dir):
    code, out, hashes = first_run
    d, truth = worm_dir
    assert code == 1  # some inputs failed
    run = _run_json(out)
    assert run["napari_sinkhorn_em_version"] == __version__
    assert run["schema"] == 1
    assert run["last_run"]["status"] == "finished"
    assert run["last_run"]["n_inputs"] == len(GOOD) + len(BAD)
    assert run["last_run"]["n_ok"] == len(GOOD)
    assert run["last_run"]["n_failed"] == len(BAD)
    assert run["last_run"]["command"][:2] == ["napari-sinkhorn-em", "segment"]
    assert run["parameters"]["seed"] == 7
    assert sorted(run["files"]) == sorted([*GOOD, *BAD])
    for key, reason in BAD.items():
        rec = run["files"][key]
        assert rec["status"] == "failed", key
        assert reason in rec["error"]["message"], (key, rec["error"])
        assert rec["input"] == str(d / f"{key}.tif")
        assert not (out / f"{key}_labels.tif").exists()
        assert not (out / f"{key}_nuclei.csv").exists()
    for key in GOOD:
        rec = run["files"][key]
        assert rec["status"] == "ok" and rec["error"] is None, rec
        assert rec["voxel_size_source"] == "metadata"
        assert rec["voxel_size"] == pytest.approx(list(truth[key].voxel_size))
        assert rec["seed"] == 7  # the run's seed, as the widget would use it
        assert rec["parameters_used"]["random_state"] == rec["seed"]
        assert set(rec["timings"]) == {"read", "segment", "write", "total"}
        assert rec["fingerprint"] == input_fingerprint(d / f"{key}.tif")
    # no temporary files left, inputs untouched
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(
        [f"{k}_labels.tif" for k in GOOD] + [f"{k}_nuclei.csv" for k in GOOD] + [RUN_JSON]
    )
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert {p.name: _sha(p) for p in d.iterdir()} == hashes


@pytest.mark.parametrize("key", GOOD)
def test_outputs_match_input_and_truth(first_run, worm_dir, key):
    from napari_sinkhorn_em.evaluation.metrics import match_centres

    _, out, _ = first_run
    d, truth = worm_dir
    worm = truth[key]
    image = read_image(d / f"{key}.tif")
    labels = read_image(out / f"{key}_labels.tif")
    assert labels.data.shape == image.spatial_shape == worm.labels.shape
    assert labels.voxel_size == pytest.approx(worm.voxel_size)
    assert labels.channel_axis is None

    table = pd.read_csv(out / f"{key}_nuclei.csv")
    axes = "zyx"[3 - worm.ndim :]
    expected = ["label", *axes, *(f"{a}_um" for a in axes), "volume_um3"]
    expected += [f"mean_{n}" for n in worm.channel_names]
    assert list(table.columns) == expected

    # the table describes exactly the labels in the image
    ids, counts = np.unique(labels.data, return_counts=True)
    counts = dict(zip(ids.tolist(), counts.tolist(), strict=True))
    counts.pop(0, None)
    assert sorted(table["label"]) == sorted(counts)
    assert table["label"].is_unique
    vs = np.asarray(worm.voxel_size)
    for j, a in enumerate(axes):
        np.testing.assert_allclose(table[f"{a}_um"], table[a] * vs[j], rtol=1e-9)
    voxel_volume = float(np.prod(vs))
    np.testing.assert_allclose(
        table["volume_um3"], [counts[int(i)] * voxel_volume for i in table["label"]], rtol=1e-6
    )
    # mean_<channel> is the mean raw intensity of the channel over the label's voxels
    lab = labels.data.ravel().astype(np.int64)
    n = np.bincount(lab)
    for c, name in enumerate(worm.channel_names):
        channel = np.take(image.data, c, axis=image.channel_axis).astype(np.float64).ravel()
        means = np.bincount(lab, weights=channel) / np.maximum(n, 1)
        np.testing.assert_allclose(table[f"mean_{name}"], means[table["label"]], rtol=1e-9)
    # each centre lies inside the image
    for j, a in enumerate(axes):
        assert table[a].between(-0.5, labels.data.shape[j] - 0.5).all()

    # and the nuclei are found: centre F1 against the truth within 1.5 um
    pred_um = table[[f"{a}_um" for a in axes]].to_numpy()
    match = match_centres(pred_um, worm.centres_um, max_distance=1.5)
    assert match.f1 >= 0.8, match.summary()


def _outputs(out: Path, keys) -> dict[str, bytes]:
    res = {}
    for k in keys:
        for suffix in ("_labels.tif", "_nuclei.csv"):
            res[k + suffix] = (out / f"{k}{suffix}").read_bytes()
    return res


def _mtimes(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in out.iterdir() if not p.name.startswith(".")}


def test_resume_skips_complete_outputs_and_redoes_the_rest(worm_dir, tmp_path):
    d, _ = worm_dir
    src = tmp_path / "in"
    src.mkdir()
    for k in ("worm2d", "worm3d_a"):  # (2-D worm under a second name: a cheap second input)
        shutil.copy2(d / "worm2d.tif", src / f"{k}.tif")
    shutil.copy2(d / "notatiff.tif", src / "notatiff.tif")
    out = tmp_path / "out"
    params = build_parameters(seed=3)
    first = run_batch([src], out, parameters=params, progress_bar=False)
    assert (first.ok, first.failed, first.skipped) == (["worm2d", "worm3d_a"], ["notatiff"], [])
    assert first.exit_code == 1
    assert "not a TIFF" in first.errors["notatiff"]
    before = _mtimes(out)
    reference = _outputs(out, ["worm2d", "worm3d_a"])

    # same command again: nothing redone but the failed file; a stale temporary is removed
    stale = out / ".worm2d_labels.tif.k3j_x9.tmp"
    stale.write_bytes(b"half a file")
    again = run_batch([src], out, parameters=params, progress_bar=False)
    assert (again.ok, again.failed, again.skipped) == ([], ["notatiff"], ["worm2d", "worm3d_a"])
    assert not stale.exists()
    after = _mtimes(out)
    assert {k: v for k, v in after.items() if k != RUN_JSON} == {
        k: v for k, v in before.items() if k != RUN_JSON
    }
    run = _run_json(out)
    assert run["last_run"]["n_skipped"] == 2 and run["files"]["worm2d"]["status"] == "ok"

    # a changed input (new modification time) is redone, the other one skipped
    st = (src / "worm2d.tif").stat()
    os.utime(src / "worm2d.tif", ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))
    third = run_batch([src / "worm2d.tif", src / "worm3d_a.tif"], out, parameters=params)
    assert (third.ok, third.skipped) == (["worm2d"], ["worm3d_a"])
    assert _outputs(out, ["worm2d"]) == {k: v for k, v in reference.items() if "worm2d" in k}

    # a deleted output is redone
    (out / "worm3d_a_nuclei.csv").unlink()
    fourth = run_batch([src], out, parameters=params, progress_bar=False)
    assert (fourth.ok, fourth.skipped) == (["worm3d_a"], ["worm2d"])
    assert _outputs(out, ["worm3d_a"]) == {k: v for k, v in reference.items() if "worm3d_a" in k}

    # --overwrite redoes everything
    fifth = run_batch([src / "worm2d.tif"], out, parameters=params, overwrite=True)
    assert (fifth.ok, fifth.skipped) == (["worm2d"], [])

    # other parameters: redone (not skipped); a redo that fails never deletes the
    # complete outputs of the earlier run: they stay, byte for byte, and run.json says
    # the file failed (so the next run redoes it) and which run made the kept outputs
    kept = _outputs(out, ["worm2d"])
    too_many = build_parameters(seed=4, n_nuclei=100000)
    seventh = run_batch([src / "worm2d.tif"], out, parameters=too_many, progress_bar=False)
    assert seventh.failed == ["worm2d"]
    assert _outputs(out, ["worm2d"]) == kept
    rec = _run_json(out)["files"]["worm2d"]
    assert rec["status"] == "failed"
    assert rec["parameters"]["segment"]["n_nuclei"] == 100000
    assert rec["previous"]["parameters"]["seed"] == 3
    assert rec["previous"]["outputs"]["labels"]["size"] == len(kept["worm2d_labels.tif"])
    # ... and the same again with --overwrite
    eighth = run_batch([src / "worm2d.tif"], out, parameters=too_many, overwrite=True)
    assert eighth.failed == ["worm2d"] and _outputs(out, ["worm2d"]) == kept
    assert _run_json(out)["files"]["worm2d"]["previous"]["parameters"]["seed"] == 3
    # a successful redo replaces them and drops the "previous" entry
    ninth = run_batch([src / "worm2d.tif"], out, parameters=params, progress_bar=False)
    assert ninth.ok == ["worm2d"] and _outputs(out, ["worm2d"]) == kept
    assert "previous" not in _run_json(out)["files"]["worm2d"]
    # input files were never modified
    assert _sha(src / "worm3d_a.tif") == _sha(d / "worm2d.tif")


def test_jobs_2_and_dask_equal_jobs_1(first_run, worm_dir, tmp_path):
    """Same seed, same bytes: --jobs 1 (in-process), --jobs 2 (spawned) and Dask."""
    distributed = pytest.importorskip("distributed")

    _, out1, _ = first_run
    d, _ = worm_dir
    keys = ["worm2d", "worm3d_a"]  # a 2-D and a 3-D worm, one per worker
    inputs = [d / f"{k}.tif" for k in keys]
    params = build_parameters(seed=7)
    reference = _outputs(out1, keys)

    pool = run_batch(inputs, tmp_path / "jobs2", parameters=params, jobs=2, progress_bar=False)
    assert sorted(pool.ok) == keys and pool.exit_code == 0
    assert _outputs(tmp_path / "jobs2", keys) == reference
    assert _run_json(tmp_path / "jobs2")["last_run"]["executor"] == "processes:2"

    with distributed.LocalCluster(
        n_workers=1,
        processes=False,
        threads_per_worker=1,
        dashboard_address=None,
        scheduler_port=0,
    ) as cluster:
        report = run_batch(
            inputs,
            tmp_path / "dask",
            parameters=params,
            dask_scheduler=cluster.scheduler_address,
            progress_bar=False,
        )
    assert sorted(report.ok) == keys and report.exit_code == 0
    assert _outputs(tmp_path / "dask", keys) == reference
    assert _run_json(tmp_path / "dask")["last_run"]["executor"].startswith("dask:")


def test_dask_path_reports_bad_files(worm_dir, tmp_path):
    distributed = pytest.importorskip("distributed")
    d, _ = worm_dir
    with distributed.LocalCluster(
        n_workers=1, processes=False, threads_per_worker=1, dashboard_address=None
    ) as cluster:
        report = run_batch(
            [d / "empty.tif", d / "wrong_axes.tif"],
            tmp_path,
            dask_scheduler=cluster.scheduler_address,
            progress_bar=False,
        )
    assert report.failed == ["empty", "wrong_axes"] and report.exit_code == 1
    assert "empty" in report.errors["empty"]
    assert "wrong number of axes" in report.errors["wrong_axes"]


def test_voxel_size_from_flag_metadata_or_error(worm_dir, tmp_path):
    import tifffile

    d, truth = worm_dir
    worm = truth["worm3d_a"]
    # the same stack as a plain TIFF without calibration (ZCYX stored, no metadata)
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.moveaxis(worm.image, 0, 1))
    out = tmp_path / "out"
    report = run_batch([plain], out, progress_bar=False)
    assert report.failed == ["plain"]
    msg = report.errors["plain"]
    assert "voxel size unknown" in msg and "--voxel-size" in msg and "plain.tif" in msg

    flagged = build_parameters(voxel_size=(1.0, 0.7, 0.7), channel_axis=1, seed=7)
    report = run_batch([plain], out, parameters=flagged, progress_bar=False)
    assert report.ok == ["plain"]
    rec = _run_json(out)["files"]["plain"]
    assert rec["voxel_size_source"] == "--voxel-size" and rec["channel_axis"] == 1
    assert read_image(out / "plain_labels.tif").voxel_size == pytest.approx((1.0, 0.7, 0.7))

    # a flag overrides the metadata; one of the wrong length is a clear error
    other = build_parameters(voxel_size=(2.0, 0.7, 0.7), seed=7)
    report = run_batch([d / "worm3d_a.tif"], tmp_path / "o2", parameters=other)
    assert report.ok == ["worm3d_a"]
    labels = read_image(tmp_path / "o2" / "worm3d_a_labels.tif")
    assert labels.voxel_size == pytest.approx((2.0, 0.7, 0.7))
    # ... found from the headers before anything is written
    with pytest.raises(BatchError, match=r"--voxel-size has 3 values .*worm2d.tif \(2-D YX"):
        run_batch([d / "worm2d.tif"], tmp_path / "o3", parameters=other)
    assert not (tmp_path / "o3").exists()


def test_config_file_and_flags(worm_dir, tmp_path, capsys):
    from napari_sinkhorn_em.cli import main
    from napari_sinkhorn_em.pipeline.segment import save_params

    d, _ = worm_dir
    config = tmp_path / "params.json"
    save_params(
        config,
        {"n_nuclei": 11, "method": "em", "voxel_size": [9.0, 9.0], "random_state": 5},
    )
    out = tmp_path / "out"
    argv = ["segment", str(d / "worm2d.tif"), "-o", str(out), "--config", str(config)]
    assert main([*argv, "--n-nuclei", "12", "-q"]) == 0
    run = _run_json(out)
    assert run["parameters"]["segment"] == {"n_nuclei": 12, "method": "em"}
    assert run["parameters"]["seed"] == 5
    rec = run["files"]["worm2d"]
    # the metadata wins over the config's voxel size
    assert rec["voxel_size_source"] == "metadata" and rec["voxel_size"] == [0.7, 0.7]
    assert rec["parameters_used"]["method"] == "em"
    assert rec["n_nuclei"] == 12 == len(pd.read_csv(out / "worm2d_nuclei.csv"))
    # the scale used (estimated: "auto" is the default) and the single-pixel spikes
    # replaced (in this 2-D worm: one-pixel gut granules, 28)
    assert 1.5 < rec["nucleus_diameter_um"] < 4.5
    assert isinstance(rec["n_hot_pixels"], int) and 0 < rec["n_hot_pixels"] < 100
    # how the fit went, for spotting stacks that ran to max_iter
    assert rec["fit"]["n_components"] == 12 and rec["fit"]["n_tiles"] == 1
    assert 1 <= rec["fit"]["n_iter"] <= 100 and isinstance(rec["fit"]["converged"], bool)
    # a broken config is a set-up error (exit code 2) naming the file
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    capsys.readouterr()
    assert main(["segment", str(d / "worm2d.tif"), "-o", str(out), "--config", str(bad)]) == 2
    assert "bad.json" in capsys.readouterr().err


def test_nucleus_diameter_auto_flag_overrides_a_config_number(worm_dir, tmp_path):
    from napari_sinkhorn_em.cli import main
    from napari_sinkhorn_em.pipeline.segment import save_params

    d, _ = worm_dir
    config = tmp_path / "params.json"
    save_params(config, {"nucleus_diameter": 2.5, "n_nuclei": 12})
    assert build_parameters({"nucleus_diameter": 2.5}, nucleus_diameter="auto")["segment"] == {
        "n_nuclei": "auto"
    }
    with pytest.raises(BatchError, match="positive number or 'auto', got 'big'"):
        build_parameters(nucleus_diameter="big")
    out = tmp_path / "out"
    argv = ["segment", str(d / "worm2d.tif"), "-o", str(out), "--config", str(config), "-q"]
    assert main([*argv, "--nucleus-diameter", "auto"]) == 0
    run = _run_json(out)
    # "auto" is the default: not recorded, so runs with and without the flag agree
    assert run["parameters"]["segment"] == {"n_nuclei": 12}
    assert run["files"]["worm2d"]["parameters_used"]["nucleus_diameter"] == "auto"


def test_progress_bars_show_files_and_iterations(worm_dir, tmp_path, capsys):
    d, _ = worm_dir
    report = run_batch([d / "worm2d.tif", d / "empty.tif"], tmp_path, progress_bar=True)
    assert report.failed == ["empty"]
    err = capsys.readouterr().err
    assert "files: 100%" in err and "2/2" in err
    assert "fit" in err  # the current file's stage shown by the inner bar


def test_dask_missing_is_a_clear_error(worm_dir, tmp_path, monkeypatch, capsys):
    from napari_sinkhorn_em.cli import main

    d, _ = worm_dir
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'napari-sinkhorn-em\[dask\]'"):
        run_batch([d / "worm2d.tif"], tmp_path / "o", dask_scheduler="tcp://127.0.0.1:8786")
    assert not (tmp_path / "o").exists()
    argv = ["segment", str(d / "worm2d.tif"), "-o", str(tmp_path / "o")]
    assert main([*argv, "--dask-scheduler", "tcp://127.0.0.1:8786"]) == 2
    assert "--dask-scheduler needs dask.distributed" in capsys.readouterr().err


def test_recursive_outputs_mirror_the_input_tree(worm_dir, tmp_path):
    d, _ = worm_dir
    src = tmp_path / "in"
    (src / "day1").mkdir(parents=True)
    shutil.copy2(d / "worm2d.tif", src / "day1" / "worm2d.tif")
    shutil.copy2(d / "worm2d.tif", src / "top.tif")
    out = src / "results"  # inside the searched folder: never taken as input
    report = run_batch([src], out, recursive=True, parameters=build_parameters(seed=7))
    assert sorted(report.ok) == ["day1/worm2d", "top"]
    assert (out / "day1" / "worm2d_labels.tif").is_file()
    assert (out / "day1" / "worm2d_nuclei.csv").is_file()
    assert sorted(_run_json(out)["files"]) == ["day1/worm2d", "top"]
    # the same input under another name is the same segmentation
    top = read_image(out / "top_labels.tif").data
    np.testing.assert_array_equal(top, read_image(out / "day1" / "worm2d_labels.tif").data)
    again = run_batch([src], out, recursive=True, parameters=build_parameters(seed=7))
    assert sorted(again.skipped) == ["day1/worm2d", "top"] and again.ok == []
    # another file with the same name (same size and time) into the same folder: redone
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy2(src / "top.tif", other / "top.tif")
    moved = run_batch([other / "top.tif"], out, parameters=build_parameters(seed=7))
    assert moved.ok == ["top"] and moved.skipped == []
    assert _run_json(out)["files"]["top"]["input"] == str((other / "top.tif").resolve())


def test_a_zero_filled_border_is_filled_and_reported(tmp_path, capsys):
    # a registered image whose uncovered border the registration filled with zeros: the
    # batch record and the log line say how many voxels were filled with background
    from napari_sinkhorn_em.cli import main
    from napari_sinkhorn_em.synthetic import make_nuclei_field_2d

    w = make_nuclei_field_2d(seed=2)
    img = np.moveaxis(np.asarray(w.image), w.channel_axis, -1)[..., 0].copy()
    img[:30, :] = 0
    img[:, -40:] = 0
    (tmp_path / "in").mkdir()
    write_image(tmp_path / "in" / "registered.tif", img, voxel_size=w.voxel_size, axes="YX")
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "in"), "-o", str(out)]) == 0
    rec = _run_json(out)["files"]["registered"]
    assert rec["status"] == "ok"
    assert rec["n_no_data_voxels"] == int((img == 0).sum())
    assert f"{rec['n_no_data_voxels']} no-data voxels filled" in capsys.readouterr().err
    assert rec["n_nuclei"] >= 0.8 * len(w.centres)


def test_a_plain_tiff_of_one_plane_with_a_trailing_axis_is_segmented(tmp_path, capsys):
    # a 2-D image saved as (Y, X, 1) without calibration (tifffile's "YXQ"): one plane, so
    # only its pixel size matters (1 um assumed, as for a 2-D image, with a warning); the
    # labels keep the input's shape and can be read back (ImageJ cannot hold a plane one
    # voxel wide: they were written as a file no reader could open)
    import tifffile

    from napari_sinkhorn_em.cli import main
    from napari_sinkhorn_em.synthetic import make_nuclei_field_2d

    w = make_nuclei_field_2d(n_nuclei=20, shape=(200, 200), seed=0)
    img = np.moveaxis(np.asarray(w.image), w.channel_axis, -1)  # (200, 200, 1)
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "plane.tif", img.astype(np.uint16))
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "in"), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "plane.tif: a single plane (shape (200, 200, 1))" in err and "1 um per pixel" in err
    rec = _run_json(out)["files"]["plane"]
    assert rec["status"] == "ok" and rec["voxel_size_source"] == "default"
    labels = read_image(out / "plane_labels.tif")
    assert labels.data.shape == img.shape
    assert labels.voxel_size == pytest.approx((1.0, 1.0, 1.0))
    table = pd.read_csv(out / "plane_nuclei.csv")
    assert len(table) == rec["n_nuclei"] == len(np.unique(labels.data)) - 1
    assert (table["x"] == 0).all()
    assert rec["n_nuclei"] >= 0.9 * len(w.centres)


def test_a_stack_with_a_pixel_size_but_no_z_step_says_which_is_missing(tmp_path):
    # an ImageJ stack calibrated in the plane (unit and resolution) without "spacing":
    # the message names the pixel size it found and the z step it lacks
    import tifffile

    stack = np.random.default_rng(0).integers(100, 200, (6, 24, 24)).astype(np.uint16)
    path = tmp_path / "nospacing.tif"
    tifffile.imwrite(
        path, stack, imagej=True, resolution=(1 / 0.25, 1 / 0.25),
        metadata={"axes": "ZYX", "unit": "micron"},
    )  # fmt: skip
    report = run_batch([path], tmp_path / "out", progress_bar=False)
    assert report.failed == ["nospacing"]
    msg = report.errors["nospacing"]
    assert "pixel size (0.25 x 0.25 um) but no z step" in msg
    assert "--voxel-size Z 0.25 0.25" in msg and "nospacing.tif" in msg
