"""Tests of the ``napari-sinkhorn-em`` console script (run as a real subprocess)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cli_helpers import installed_script as _script
from napari_sinkhorn_em import __version__
from napari_sinkhorn_em.cli import main
from napari_sinkhorn_em.io import read_image


def _run(*args: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    return subprocess.run(
        [_script(), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        **kwargs,
    )


def test_help_and_version_of_installed_script():
    r = _run("--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"napari-sinkhorn-em {__version__}"
    r = _run("--help")
    assert r.returncode == 0, r.stderr
    assert "segment" in r.stdout and "synth" in r.stdout
    assert r.stderr == ""
    r = _run("segment", "--help")
    assert r.returncode == 0
    for flag in (
        "--output",
        "--n-nuclei",
        "--voxel-size",
        "--channel-axis",
        "--method",
        "--config",
        "--jobs",
        "--dask-scheduler",
        "--overwrite",
        "--quiet",
        "--recursive",
        "--seed",
    ):
        assert flag in r.stdout, flag
    r = _run("synth", "--help")
    assert r.returncode == 0
    for flag in ("--output", "--n", "--seed", "--n-nuclei", "--channels", "--2d"):
        assert flag in r.stdout, flag


def test_no_command_prints_help(capsys):
    assert main([]) == 0
    assert "usage: napari-sinkhorn-em" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["segment", "x.tif"], "the following arguments are required: -o/--output"),
        (["segment", "x.tif", "-o", "out", "--n-nuclei", "0"], "positive integer or 'auto'"),
        (["segment", "x.tif", "-o", "out", "--jobs", "0"], "expected a positive integer"),
        (["segment", "x.tif", "-o", "out", "--voxel-size", "-1"], "expected a positive number"),
        (["segment", "x.tif", "-o", "out", "--method", "kmeans"], "invalid choice: 'kmeans'"),
        (["segment", "x.tif", "-o", "out", "--seed", "-2"], "non-negative integer"),
        (["synth", "-o", "out"], "the following arguments are required: --n"),
    ],
)
def test_usage_errors_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_setup_errors_exit_2(tmp_path, capsys):
    assert main(["segment", str(tmp_path / "missing.tif"), "-o", str(tmp_path / "o"), "-q"]) == 2
    err = capsys.readouterr().err
    assert "error: input not found" in err and "missing.tif" in err
    assert not (tmp_path / "o").exists()


def test_synth_writes_worms_with_truth(tmp_path):
    out = tmp_path / "synth"
    args = ["synth", "-o", str(out), "--n", "2", "--n-nuclei", "9", "--channels", "2"]
    r = _run(*args, "--seed", "3", "--region", "body", "--voxel-size", "1", "0.7", "0.7", "-q")
    assert r.returncode == 0, r.stderr
    assert "Warning" not in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["truth", "worm_000.tif", "worm_001.tif"]
    assert sorted(p.name for p in (out / "truth").iterdir()) == [
        "worm_000_centres.csv",
        "worm_000_labels.tif",
        "worm_001_centres.csv",
        "worm_001_labels.tif",
    ]
    img = read_image(out / "worm_000.tif")
    assert img.axes == "ZCYX" and img.data.shape[1] == 2
    assert img.voxel_size == pytest.approx((1.0, 0.7, 0.7))
    assert img.channel_names == ["mNeptune2.5", "pan-nuclear"]
    truth = read_image(out / "truth" / "worm_000_labels.tif")
    assert truth.data.shape == img.spatial_shape
    assert truth.voxel_size == pytest.approx((1.0, 0.7, 0.7))
    centres = pd.read_csv(out / "truth" / "worm_000_centres.csv")
    assert list(centres["label"]) == list(range(1, 10))
    assert set(np.unique(truth.data)) == set(range(10))
    # each true centre lies in (or right next to) its own label
    for row in centres.itertuples():
        z, y, x = (round(row.z), round(row.y), round(row.x))
        patch = truth.data[max(z - 1, 0) : z + 2, max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2]
        assert row.label in patch
    # worms differ, and the same seed gives the same worm
    other = read_image(out / "worm_001.tif")
    assert other.data.shape != img.data.shape or not np.array_equal(other.data, img.data)
    again = tmp_path / "again"
    assert main([*args[:2], str(again), *args[3:], "--seed", "3", "--region", "body",
                 "--voxel-size", "1", "0.7", "0.7", "-q"]) == 0  # fmt: skip
    assert np.array_equal(read_image(again / "worm_000.tif").data, img.data)
    # 2-D, one channel
    flat = tmp_path / "flat"
    assert main(["synth", "-o", str(flat), "--n", "1", "--2d", "--channels", "1", "-q"]) == 0
    img2 = read_image(flat / "worm_000.tif")
    assert len(img2.spatial_shape) == 2
    assert read_image(flat / "truth" / "worm_000_labels.tif").data.ndim == 2
    assert "z" not in pd.read_csv(flat / "truth" / "worm_000_centres.csv").columns


def _wait_for(predicate, timeout: float, interval: float = 0.01) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return False


def _n_ok(run_json: Path) -> int:
    try:
        run = json.loads(run_json.read_text())
    except (OSError, ValueError):  # not there yet (never partial: written atomically)
        return 0
    return sum(f.get("status") == "ok" for f in run["files"].values())


def test_sigkill_mid_run_leaves_complete_files_and_rerun_resumes(tmp_path):
    n = 8  # small 3-D stacks, ~0.2 s each: a kill lands mid-run
    worms = tmp_path / "worms"
    synth = ["synth", "-o", str(worms), "--n", str(n), "--n-nuclei", "20", "--channels", "1"]
    assert main([*synth, "--region", "body", "-q"]) == 0
    whole = (worms / "worm_000.tif").read_bytes()
    (worms / "broken.tif").write_bytes(whole[: len(whole) // 2])
    out = tmp_path / "out"
    cmd = [_script(), "segment", str(worms), "-o", str(out), "--n-nuclei", "20", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert _wait_for(lambda: _n_ok(out / "run.json") >= 1, timeout=120), "no file finished"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:  # pragma: no cover - only if an assertion failed
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    run = json.loads((out / "run.json").read_text())
    assert run["last_run"]["status"] == "running"  # killed mid-run, not finished
    done = sorted(k for k, f in run["files"].items() if f["status"] == "ok")
    assert 1 <= len(done) < n
    # every visible file is complete: readable labels and tables; finished inputs have both
    for f in out.iterdir():
        if f.name.startswith("."):
            continue
        if f.name.endswith("_labels.tif"):
            assert read_image(f).data.ndim == 3
        elif f.name.endswith("_nuclei.csv"):
            assert len(pd.read_csv(f)) >= 1
        else:
            assert f.name == "run.json"
    for k in done:
        assert (out / f"{k}_labels.tif").is_file() and (out / f"{k}_nuclei.csv").is_file()
    mtimes = {k: (out / f"{k}_labels.tif").stat().st_mtime_ns for k in done}

    # rerun the same command: the finished inputs are skipped, the others done
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr  # broken.tif fails, the others succeed
    assert "Warning" not in r.stderr and "Traceback" not in r.stderr
    assert "broken.tif" in r.stderr and "truncated or corrupt TIFF" in r.stderr
    # --quiet: log lines, no progress bars
    assert "files:" not in r.stderr and "\r" not in r.stderr
    assert f"INFO    skipping {len(done)} input(s)" in r.stderr
    assert "ERROR   FAILED  broken.tif" in r.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["last_run"]["status"] == "finished"
    assert run["last_run"]["n_skipped"] == len(done)
    assert run["last_run"]["n_ok"] == n - len(done)
    assert run["last_run"]["n_failed"] == 1
    assert {k: (out / f"{k}_labels.tif").stat().st_mtime_ns for k in done} == mtimes
    keys = [f"worm_{i:03d}" for i in range(n)]
    assert sorted(k for k, f in run["files"].items() if f["status"] == "ok") == keys
    for k in keys:
        table = pd.read_csv(out / f"{k}_nuclei.csv")
        labels = read_image(out / f"{k}_labels.tif").data
        assert sorted(table["label"]) == sorted(set(np.unique(labels)) - {0})
    assert not [f for f in out.iterdir() if f.name.endswith(".tmp")]

    # a third run has nothing left to do but the broken file
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    assert json.loads((out / "run.json").read_text())["last_run"]["n_skipped"] == n


def test_sigterm_stops_cleanly_and_records_the_interruption(tmp_path):
    n = 6
    worms = tmp_path / "worms"
    synth = ["synth", "-o", str(worms), "--n", str(n), "--n-nuclei", "20", "--channels", "1"]
    assert main([*synth, "--region", "body", "-q"]) == 0
    out = tmp_path / "out"
    cmd = [_script(), "segment", str(worms), "-o", str(out), "--n-nuclei", "20", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def one_done_next_running() -> bool:
        # waits on run.json's state, not on timing: robust on a loaded machine
        try:
            files = json.loads((out / "run.json").read_text())["files"].values()
        except (OSError, ValueError):
            return False
        statuses = [f.get("status") for f in files]
        return statuses.count("ok") >= 1 and "running" in statuses

    try:
        assert _wait_for(one_done_next_running, timeout=120), "no file finished"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 143
    finally:
        if proc.poll() is None:  # pragma: no cover - only if an assertion failed
            proc.kill()
            proc.wait()
    run = json.loads((out / "run.json").read_text())
    assert run["last_run"]["status"] == "interrupted"
    assert run["last_run"]["signal"] == "SIGTERM"
    assert run["last_run"]["finished"] is not None
    assert 1 <= run["last_run"]["n_ok"] < n and run["last_run"]["n_failed"] == 0
    statuses = [f["status"] for f in run["files"].values()]
    assert statuses.count("interrupted") <= 1  # the file that was running: not "failed"
    assert set(statuses) <= {"ok", "interrupted", "pending"}
    assert not [f for f in out.iterdir() if f.name.endswith(".tmp")]
