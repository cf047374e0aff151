"""Time-lapse TIFFs through the batch command line (issue 14, item 3).

Real ImageJ / OME / plain TIFF files written from the synthetic moving worm, run through
``napari-sinkhorn-em segment`` (in this process, and as a real subprocess where a signal
is involved): ``<stem>_labels.tif`` over T with its voxel size, ``<stem>_tracks.csv``,
per-frame status in run.json, resume, interruption.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from cli_helpers import installed_script as _script
from napari_sinkhorn_em import track_nuclei
from napari_sinkhorn_em.batch import RUN_JSON
from napari_sinkhorn_em.cli import main
from napari_sinkhorn_em.io import ImageReadError, read_image, read_image_axes, write_image
from napari_sinkhorn_em.synthetic import make_moving_worm

DIAMETER = ["--nucleus-diameter", "2.7", "-q"]


def _series(n_frames: int = 3, seed: int = 1):
    # a small head crop: 8 nuclei, (Z, Y, X) = (39, 113, 73), one channel
    return make_moving_worm(
        n_frames=n_frames, n_nuclei=8, motion_um=1.0, n_channels=1, seed=seed, x_range=(60, 75)
    )


@pytest.fixture(scope="module")
def series():
    return _series()


@pytest.fixture(scope="module")
def movie_dir(series, tmp_path_factory) -> Path:
    """One ImageJ hyperstack with 3 frames (TZCYX, calibrated)."""
    d = tmp_path_factory.mktemp("movies")
    write_image(
        d / "movie.tif",
        series.image,
        voxel_size=series.voxel_size,
        axes="TCZYX",
        channel_names=list(series.channel_names),
    )
    return d


@pytest.fixture(scope="module")
def reference(movie_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("out")
    assert main(["segment", str(movie_dir), "-o", str(out), *DIAMETER]) == 0
    return out


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.name: p.read_bytes()
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.name.startswith(".") and p.name != RUN_JSON
    }


# ---------------------------------------------------------------------------- reading


def test_time_axis_from_imagej_and_ome_metadata(series, tmp_path):
    ij = tmp_path / "ij.tif"
    write_image(ij, series.image, voxel_size=series.voxel_size, axes="TCZYX")
    with pytest.raises(ImageReadError, match=r"ij\.tif.*3 time points.*time_series=True"):
        read_image(ij)
    img = read_image(ij, time_series=True)  # (ImageJ drops the single channel)
    assert img.axes == "TZYX" and img.time_axis == 0 and img.channel_axis is None
    assert img.spatial_axes == "ZYX" and img.n_frames == 3
    assert img.voxel_size == pytest.approx(series.voxel_size)
    assert read_image_axes(ij, time_series=True)[0] == "TZYX"
    two = tmp_path / "two.tif"
    image2 = np.concatenate([series.image, series.image // 2], axis=1)  # (T, 2, Z, Y, X)
    write_image(two, image2, voxel_size=series.voxel_size, axes="TCZYX",
                channel_names=["red", "green"])  # fmt: skip
    img = read_image(two, time_series=True)
    assert img.axes == "TZCYX" and img.channel_axis == 2 and img.channel_names == ["red", "green"]
    np.testing.assert_array_equal(img.data, np.moveaxis(image2, 1, 2))

    ome = tmp_path / "movie.ome.tif"
    data = series.image[:, 0]  # (T, Z, Y, X)
    vs = series.voxel_size
    tifffile.imwrite(
        ome,
        data,
        ome=True,
        metadata={"axes": "TZYX", "PhysicalSizeZ": vs[0], "PhysicalSizeY": vs[1],
                  "PhysicalSizeX": vs[2]},
    )  # fmt: skip
    img = read_image(ome, time_series=True)
    assert img.axes == "TZYX" and img.time_axis == 0 and img.channel_axis is None
    assert img.voxel_size == pytest.approx(vs)
    np.testing.assert_array_equal(img.data, data)


def test_explicit_time_axis_on_a_plain_tiff(series, tmp_path):
    plain = tmp_path / "plain.tif"
    zt = np.moveaxis(series.image[:, 0], 0, 1)  # (Z, T, Y, X), no metadata
    tifffile.imwrite(plain, zt, photometric="minisblack")
    img = read_image(plain, time_axis=1)
    assert img.axes == "ZTYX" and img.time_axis == 1 and img.voxel_size is None
    with pytest.raises(ImageReadError, match=r"plain\.tif.*time_axis=4 is out of range"):
        read_image(plain, time_axis=4)


# ---------------------------------------------------------------------------- the CLI


def test_cli_tracks_a_time_lapse(series, movie_dir, reference):
    """Labels over T with the voxel size, the tracks table, per-frame status; the same
    result as track_nuclei called directly with the run's seed."""
    labels_path = reference / "movie_labels.tif"
    tracks_path = reference / "movie_tracks.csv"
    assert labels_path.is_file() and tracks_path.is_file()
    assert not (reference / "movie_nuclei.csv").exists()

    lab = read_image(labels_path, time_series=True)
    assert lab.axes == "TZYX" and lab.data.shape == (3, *series.image.shape[2:])
    assert lab.voxel_size == pytest.approx(series.voxel_size)

    direct = track_nuclei(
        series.image[:, 0], voxel_size=series.voxel_size, nucleus_diameter=2.7, random_state=0
    )
    np.testing.assert_array_equal(lab.data, direct.labels)
    tracks = pd.read_csv(tracks_path)
    assert list(tracks.columns[:6]) == ["track_id", "t", "z", "y", "x", "z_um"]
    assert "parent_id" in tracks.columns and "mean_ch0" in tracks.columns
    pd.testing.assert_frame_equal(tracks, direct.tracks, check_dtype=False)

    # one label per track, constant in time: the labels of frame t are the tracks at t
    for t in range(3):
        present = set(np.unique(lab.data[t])) - {0}
        rows = tracks[(tracks.t == t) & (tracks.volume_um3 > 0)]
        assert present == set(rows.track_id)
    # the nuclei are found: every true nucleus of frame 0 has a track within 1.5 um
    first = tracks[tracks.t == 0][["z_um", "y_um", "x_um"]].to_numpy()
    truth = series.centres[0] * np.asarray(series.voxel_size)
    d = np.sqrt(((truth[:, None] - first[None]) ** 2).sum(-1)).min(axis=1)
    assert (d < 1.5).all(), d

    run = json.loads((reference / RUN_JSON).read_text())
    rec = run["files"]["movie"]
    assert rec["status"] == "ok"
    assert rec["n_frames"] == 3 and rec["frames_done"] == 3 and rec["time_axis"] == 0
    assert rec["n_tracks"] == tracks.track_id.nunique() == rec["n_nuclei"]
    assert rec["nucleus_diameter_um"] == pytest.approx(direct.nucleus_diameter_um, abs=1e-4)
    assert [f["t"] for f in rec["frames"]] == [0, 1, 2]
    for f, info in zip(rec["frames"], direct.frames, strict=True):
        assert f["converged"] == info["converged"] and f["n_iter"] == info["n_iter"] > 0
        assert f["n_tracks"] == info["n_tracks"]
    assert rec["outputs"]["table"]["name"] == "movie_tracks.csv"
    assert rec["parameters_used"]["time_axis"] == 0
    assert rec["parameters_used"]["marginal_penalty"] == 10.0  # tracking's default


def test_rerun_skips_and_a_mixed_folder_gets_both_kinds(series, movie_dir, reference, tmp_path):
    out = tmp_path / "R"
    shutil.copytree(reference, out)
    before = _files(out)
    assert main(["segment", str(movie_dir), "-o", str(out), *DIAMETER]) == 0
    run = json.loads((out / RUN_JSON).read_text())
    assert run["last_run"]["n_skipped"] == 1 and run["last_run"]["n_ok"] == 0
    assert _files(out) == before

    # a single 3-D stack next to the movie: segmented as before (<stem>_nuclei.csv), the
    # movie skipped (complete), and no output taken for an input
    still = movie_dir / "still.tif"
    write_image(still, series.image[0, 0], voxel_size=series.voxel_size, axes="ZYX")
    try:
        assert main(["segment", str(movie_dir), "-o", str(out), *DIAMETER]) == 0
    finally:
        still.unlink()
    run = json.loads((out / RUN_JSON).read_text())
    assert run["last_run"]["n_skipped"] == 1 and run["last_run"]["n_ok"] == 1
    assert (out / "still_nuclei.csv").is_file() and not (out / "still_tracks.csv").exists()
    assert read_image(out / "still_labels.tif").axes == "ZYX"
    assert "frames" not in run["files"]["still"]
    assert _files(out)["movie_labels.tif"] == before["movie_labels.tif"]
    # the output folder as an input: its labels over T are outputs, not inputs
    again = tmp_path / "again"
    assert main(["segment", str(out), "-o", str(again), *DIAMETER]) == 2


def test_time_axis_flag_for_files_without_metadata(series, reference, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    # (T, Z, Y, X), no metadata
    tifffile.imwrite(src / "raw.tif", series.image[:, 0], photometric="minisblack")
    out = tmp_path / "out"
    vs = [str(v) for v in series.voxel_size]
    # without --time-axis: a 4-D array is read as one Z/C stack and fails, naming it
    # (not tracked); with a wrong axis: refused before anything is written
    bad = ["segment", str(src), "-o", str(out), *DIAMETER, "--time-axis", "4", "--voxel-size", *vs]
    assert main(bad) == 2
    assert not out.exists()
    ok = ["segment", str(src), "-o", str(out), *DIAMETER, "--time-axis", "0", "--voxel-size", *vs]
    assert main(ok) == 0
    lab = read_image(out / "raw_labels.tif", time_series=True)
    ref = read_image(reference / "movie_labels.tif", time_series=True)
    np.testing.assert_array_equal(lab.data, ref.data)  # same pixels, same result
    rec = json.loads((out / RUN_JSON).read_text())["files"]["raw"]
    assert rec["voxel_size_source"] == "--voxel-size" and rec["n_frames"] == 3


def test_bad_tracking_flags_are_refused(movie_dir, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["segment", str(movie_dir), "-o", str(out), "--time-axis", "9", "-q"]) == 2
    err = capsys.readouterr().err
    assert "--time-axis 9" in err and "movie.tif" in err and "Nothing was written" in err
    assert not out.exists()


# ---------------------------------------------------------------------------- interrupt


def _run_json(folder: Path) -> dict:
    try:
        return json.loads((folder / RUN_JSON).read_text())
    except (OSError, ValueError):
        return {}


def test_interrupt_mid_time_lapse_is_recorded_and_resumed(tmp_path):
    """SIGINT after the first frames: exit 130, the file 'interrupted' with the frames
    done so far, no output nor temporary; the rerun tracks it from the start and
    writes the same outputs as an uninterrupted run."""
    series = _series(n_frames=6, seed=2)
    src = tmp_path / "in"
    src.mkdir()
    write_image(src / "long.tif", series.image, voxel_size=series.voxel_size, axes="TCZYX")
    out = tmp_path / "out"
    cmd = [_script(), "segment", str(src), "-o", str(out), *DIAMETER]
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env)  # fmt: skip
    try:
        end = time.monotonic() + 300
        while time.monotonic() < end:
            if _run_json(out).get("files", {}).get("long", {}).get("frames_done", 0) >= 1:
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:  # pragma: no cover - only if an assertion failed
            proc.kill()
            proc.wait()
    run = _run_json(out)
    rec = run["files"]["long"]
    if proc.returncode == 0:  # pragma: no cover - the file finished before the signal
        pytest.skip("the time-lapse finished before the signal landed")
    assert proc.returncode == 130, err
    assert run["last_run"]["status"] == "interrupted" and rec["status"] == "interrupted"
    assert 1 <= rec["frames_done"] < 6
    assert not (out / "long_labels.tif").exists() and not (out / "long_tracks.csv").exists()
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    assert "rerun the same command to resume" in err

    assert subprocess.run(cmd, capture_output=True, timeout=600, env=env).returncode == 0
    rec = _run_json(out)["files"]["long"]
    assert rec["status"] == "ok" and rec["frames_done"] == 6 and len(rec["frames"]) == 6
    fresh = tmp_path / "fresh"
    assert main(["segment", str(src), "-o", str(fresh), *DIAMETER]) == 0
    assert _files(out) == _files(fresh)


def test_worker_processes_give_the_same_outputs(movie_dir, reference, tmp_path):
    out = tmp_path / "jobs2"
    assert main(["segment", str(movie_dir), "-o", str(out), *DIAMETER, "--jobs", "2"]) == 0
    assert _files(out) == _files(reference)
    rec = json.loads((out / RUN_JSON).read_text())["files"]["movie"]
    assert rec["status"] == "ok" and rec["frames_done"] == 3 and len(rec["frames"]) == 3
