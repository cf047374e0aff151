"""Reliability of the batch tool against hostile conditions (issue 16).

A failed or interrupted rerun never deletes complete results; parameter errors are found
before anything is written; Ctrl-C / SIGTERM at any moment stop the run with 130 / 143 and
a resumable record; a full disk names the file; a killed worker fails only its file;
empty or thin results carry warnings. The CLI runs as a real subprocess where signals,
resource limits or killed processes are involved.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_helpers import installed_script as _script
from napari_sinkhorn_em.batch import RUN_JSON, BatchError, build_parameters, run_batch
from napari_sinkhorn_em.batch.executors import deferred, handle_interrupts
from napari_sinkhorn_em.batch.run import count_warning, process_file
from napari_sinkhorn_em.cli import main

N_WORMS = 5
SEGMENT = ["--n-nuclei", "20", "--quiet"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONWARNINGS": "default"}


def _snapshot(folder: Path) -> dict[str, bytes]:
    """Every visible file of a folder tree (relative path -> bytes)."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


def _outputs(folder: Path) -> dict[str, bytes]:
    return {k: v for k, v in _snapshot(folder).items() if k != RUN_JSON}


def _temporaries(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*.tmp")]


def _run_json(folder: Path) -> dict | None:
    try:
        return json.loads((folder / RUN_JSON).read_text())
    except (OSError, ValueError):  # not there yet (never partial: written atomically)
        return None


def _wait_for(predicate, timeout: float, interval: float = 0.01) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return False


@pytest.fixture(scope="module")
def worms(tmp_path_factory) -> Path:
    """Five small 3-D stacks (one channel, 20 nuclei, ~0.5 s each)."""
    d = tmp_path_factory.mktemp("worms")
    argv = ["synth", "-o", str(d), "--n", str(N_WORMS), "--n-nuclei", "20", "--channels", "1"]
    assert main([*argv, "--region", "body", "-q"]) == 0
    return d


@pytest.fixture(scope="module")
def reference(worms, tmp_path_factory) -> Path:
    """A complete run over the worms (in this process; the same bytes as the CLI)."""
    out = tmp_path_factory.mktemp("reference")
    assert main(["segment", str(worms), "-o", str(out), *SEGMENT]) == 0
    return out


def _complete_copy(reference: Path, dest: Path) -> Path:
    shutil.copytree(reference, dest)
    return dest


# ---------------------------------------------------------------------------------------
# 1. a failed rerun never deletes complete results
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("overwrite", [False, True])
def test_mistyped_voxel_size_is_refused_before_anything_is_touched(
    worms, reference, tmp_path, capsys, overwrite
):
    out = _complete_copy(reference, tmp_path / "R")
    before = _snapshot(out)
    argv = ["segment", str(worms), "-o", str(out), *SEGMENT, "--voxel-size", "0.8", "0.35"]
    assert main(argv + (["--overwrite"] if overwrite else [])) == 2
    err = capsys.readouterr().err
    assert "--voxel-size has 2 values [0.8, 0.35]" in err
    assert f"{N_WORMS} input(s)" in err and "worm_000.tif (3-D ZYX" in err
    assert "Z Y X for 3-D stacks" in err and "Nothing was written" in err
    assert "removed" not in err
    assert _snapshot(out) == before  # outputs and run.json byte for byte


def test_channel_axis_out_of_range_is_refused_before_anything_is_touched(
    worms, reference, tmp_path, capsys
):
    out = _complete_copy(reference, tmp_path / "R")
    before = _snapshot(out)
    assert main(["segment", str(worms), "-o", str(out), *SEGMENT, "--channel-axis", "5"]) == 2
    err = capsys.readouterr().err
    assert f"--channel-axis 5 is not an axis of {N_WORMS} input(s): worm_000.tif (shape" in err
    assert _snapshot(out) == before


def test_bad_segmentation_parameter_is_refused_before_anything_is_touched(
    worms, reference, tmp_path, capsys
):
    out = _complete_copy(reference, tmp_path / "R")
    before = _snapshot(out)
    with pytest.raises(BatchError, match="max_components_per_tile must be >= 1, got 0"):
        build_parameters({"max_components_per_tile": 0})
    with pytest.raises(BatchError, match=r"unknown segmentation parameter.*bogus"):
        build_parameters({"bogus": 1})
    config = tmp_path / "params.json"
    config.write_text(json.dumps({"n_nuclei": 20, "max_components_per_tile": 0}))
    assert main(["segment", str(worms), "-o", str(out), "-q", "--config", str(config)]) == 2
    assert "max_components_per_tile" in capsys.readouterr().err
    assert _snapshot(out) == before


def test_failing_overwrite_keeps_the_earlier_outputs(worms, reference, tmp_path, capsys):
    out = _complete_copy(reference, tmp_path / "R")
    before = _outputs(out)
    # a parameter that only fails inside the segmentation of each file
    argv = ["segment", str(worms), "-o", str(out), "--n-nuclei", "100000", "-q", "--overwrite"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("FAILED") == N_WORMS and "kept the earlier outputs of worm_000.tif" in err
    assert _outputs(out) == before
    run = _run_json(out)
    for key, rec in run["files"].items():
        assert rec["status"] == "failed" and rec["error"]["stage"] == "segment", key
        assert rec["previous"]["parameters"]["segment"]["n_nuclei"] == 20
    # the next good run redoes them (failed = not done) and gives the same bytes
    assert main(["segment", str(worms), "-o", str(out), *SEGMENT]) == 0
    assert _outputs(out) == before
    assert all(r["status"] == "ok" for r in _run_json(out)["files"].values())


# ---------------------------------------------------------------------------------------
# 3. disk full (RLIMIT_FSIZE in a child process)
# ---------------------------------------------------------------------------------------


def _limited(args: list[str], max_bytes: int) -> subprocess.CompletedProcess:
    """Run the CLI with a file size limit; SIGXFSZ ignored so writes fail with EFBIG."""
    resource = pytest.importorskip("resource")
    assert resource is not None
    code = (
        "import os, resource, signal, sys\n"
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({max_bytes}, {max_bytes}))\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "os.execv(sys.argv[1], sys.argv[1:])\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, _script(), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
    )


def test_disk_full_names_the_file_and_keeps_old_outputs(tmp_path):
    worms = tmp_path / "worms"
    # one stack with 60 nuclei: labels ~12 kB, table ~9 kB, run.json ~4 kB
    argv = ["synth", "-o", str(worms), "--n", "1", "--n-nuclei", "60", "--channels", "1"]
    assert main([*argv, "--region", "body", "-q"]) == 0
    out = tmp_path / "R"
    assert main(["segment", str(worms), "-o", str(out), "-q"]) == 0
    before = _outputs(out)
    labels_size = (out / "worm_000_labels.tif").stat().st_size
    table_size = (out / "worm_000_nuclei.csv").stat().st_size
    limit = (labels_size + table_size) // 2
    assert (out / RUN_JSON).stat().st_size < limit - 2000 and table_size < limit < labels_size

    r = _limited(["segment", str(worms), "-o", str(out), "-q", "--overwrite"], limit)
    assert r.returncode == 1, r.stderr
    labels_path = out / "worm_000_labels.tif"
    assert f"cannot write {labels_path}: File too large" in r.stderr
    assert "Traceback" not in r.stderr
    assert _outputs(out) == before  # the earlier outputs stay, byte for byte
    assert not _temporaries(out)
    rec = _run_json(out)["files"]["worm_000"]
    assert rec["status"] == "failed"
    assert rec["error"]["stage"] == "write" and rec["error"]["type"] == "OSError"
    assert str(labels_path) in rec["error"]["message"]
    assert "file size limit" in rec["error"]["message"]
    assert _run_json(out)["last_run"]["status"] == "finished"

    # into a fresh folder: nothing half-written, the failure recorded
    fresh = tmp_path / "fresh"
    r = _limited(["segment", str(worms), "-o", str(fresh), "-q"], limit)
    assert r.returncode == 1 and str(fresh / "worm_000_labels.tif") in r.stderr
    assert _outputs(fresh) == {} and not _temporaries(fresh)
    assert _run_json(fresh)["files"]["worm_000"]["status"] == "failed"


# ---------------------------------------------------------------------------------------
# 4. inputs: output folder around the inputs, broken links
# ---------------------------------------------------------------------------------------


def test_output_folder_containing_the_inputs_says_so(worms, tmp_path, monkeypatch, capsys):
    shutil.copytree(worms, tmp_path / "worms", ignore=shutil.ignore_patterns("truth"))
    monkeypatch.chdir(tmp_path)
    assert main(["segment", "worms", "--output", ".", "-q"]) == 2
    err = capsys.readouterr().err
    assert "no input files found" not in err
    assert f"all {N_WORMS} .tif/.tiff file(s) found lie inside the output folder" in err
    assert "choose an --output folder outside the input folders" in err
    assert not (tmp_path / RUN_JSON).exists()


def test_broken_symlinks_are_named(worms, tmp_path, caplog, capsys):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy2(worms / "worm_000.tif", src / "worm_000.tif")
    (src / "ghost.tif").symlink_to(tmp_path / "gone" / "ghost.tif")
    report = run_batch([src], tmp_path / "out", progress_bar=False)
    assert report.ok == ["worm_000"] and report.failed == []
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("broken symbolic link" in m and "ghost.tif ->" in m for m in warned), warned
    # given by name: an error that says what it is
    with pytest.raises(BatchError, match=r"input is a broken symbolic link: .*ghost.tif -> "):
        run_batch([src / "ghost.tif"], tmp_path / "out2")


def test_killed_worker_fails_only_its_file(tmp_path):
    worms = tmp_path / "worms"
    argv = ["synth", "-o", str(worms), "--n", "6", "--n-nuclei", "40", "--channels", "1"]
    assert main([*argv, "--region", "body", "-q"]) == 0
    out = tmp_path / "out"
    cmd = [_script(), "segment", str(worms), "-o", str(out), "--jobs", "2", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    victim: dict = {}

    def running_worker() -> bool:
        run = _run_json(out)
        for key, rec in (run or {}).get("files", {}).items():
            if rec.get("status") == "running" and rec.get("worker", "").startswith("pid:"):
                victim.update(key=key, pid=int(rec["worker"][4:]))
                return True
        return False

    try:
        assert _wait_for(running_worker, timeout=180), "no worker started"
        os.kill(victim["pid"], signal.SIGKILL)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:  # pragma: no cover - only if an assertion failed
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, err
    run = _run_json(out)
    failed = {k: r for k, r in run["files"].items() if r["status"] != "ok"}
    assert list(failed) == [victim["key"]], failed  # exactly the file it was running
    assert "killed by SIGKILL" in failed[victim["key"]]["error"]["message"]
    assert failed[victim["key"]]["error"]["stage"] == "worker"
    assert run["last_run"]["n_ok"] == 5 and run["last_run"]["n_failed"] == 1
    assert not _temporaries(out)
    # a rerun retries just that file
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=_env())
    assert r.returncode == 0, r.stderr
    assert _run_json(out)["last_run"]["n_skipped"] == 5


# ---------------------------------------------------------------------------------------
# 5. results with no or far fewer nuclei than requested
# ---------------------------------------------------------------------------------------


def test_count_warning():
    assert count_warning(0, "auto").startswith("no nuclei found")
    assert count_warning(0, 10).startswith("no nuclei found")
    assert count_warning(3, 130) == (
        "found 3 nuclei, far fewer than the 130 requested (too few foreground objects for "
        "n_nuclei, or a wrong voxel size)"
    )
    assert count_warning(4, 8) is None and count_warning(5, "auto") is None
    assert count_warning(3, 7) is not None and count_warning(1, True) is None


@pytest.fixture(scope="module")
def worm2d(tmp_path_factory) -> Path:
    from napari_sinkhorn_em.io import write_image
    from napari_sinkhorn_em.synthetic import make_worm

    worm = make_worm(
        seed=3, n_nuclei=12, region="body", voxel_size=(0.7, 0.7), n_channels=2, ndim=2
    )
    path = tmp_path_factory.mktemp("w2d") / "worm2d.tif"
    write_image(path, worm.image, voxel_size=worm.voxel_size, axes="CYX")
    return path


def test_few_or_no_nuclei_are_warnings_in_the_log_and_run_json(worm2d, tmp_path, capsys):
    from napari_sinkhorn_em.pipeline.segment import save_params

    out = tmp_path / "out"
    # 12 nuclei in the image, 130 asked for: a handful of labels survive
    assert main(["segment", str(worm2d), "-o", str(out), "--n-nuclei", "130", "-q"]) == 0
    err = capsys.readouterr().err
    rec = _run_json(out)["files"]["worm2d"]
    assert rec["status"] == "ok" and rec["n_nuclei"] < 65
    # (the message is segment_nuclei's SegmentationWarning, or the batch's own count check)
    assert any(" 130 requested" in w for w in rec["warnings"]), rec
    assert len(rec["warnings"]) == 1  # one message, not one per source
    assert "WARNING worm2d.tif:" in err and " 130 requested" in err
    # no nuclei at all (every label below min_size)
    config = tmp_path / "params.json"
    save_params(config, {"n_nuclei": 12, "min_size": 50.0})
    argv = ["segment", str(worm2d), "-o", str(out), "--config", str(config), "-q"]
    assert main(argv) == 0
    rec = _run_json(out)["files"]["worm2d"]
    assert rec["n_nuclei"] == 0 and any(w.startswith("no nuclei found") for w in rec["warnings"])
    assert "no nuclei found" in capsys.readouterr().err
    # a normal result has none
    report = run_batch([worm2d], tmp_path / "ok", parameters=build_parameters(n_nuclei=12))
    assert report.warnings == {} and _run_json(tmp_path / "ok")["files"]["worm2d"]["warnings"] == []


# ---------------------------------------------------------------------------------------
# 2. Ctrl-C / SIGTERM
# ---------------------------------------------------------------------------------------


def test_an_error_raised_while_an_interrupt_is_pending_is_the_interrupt(worms, tmp_path):
    """A real signal whose exception surfaces as an ordinary error (as Numba's
    ``SystemError`` does) is re-raised as the interrupt, never recorded as a failure."""
    broken = tmp_path / "broken.tif"
    broken.write_bytes((worms / "worm_000.tif").read_bytes()[:5000])
    task = {
        "input": str(broken),
        "key": "broken",
        "labels": str(tmp_path / "broken_labels.tif"),
        "table": str(tmp_path / "broken_nuclei.csv"),
        "seed": 0,
        "parameters": build_parameters(),
    }
    assert process_file(task)["status"] == "failed"  # no interrupt: a file error
    for signum, expected in ((signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, SystemExit)):
        # deferred(): the signal is held, so the read error comes first
        with handle_interrupts(), pytest.raises(expected) as info, deferred():
            os.kill(os.getpid(), signum)
            process_file(task)
        assert isinstance(info.value.__context__ or info.value.__cause__, Exception)
        if signum == signal.SIGTERM:
            assert info.value.code == 143
    assert not (tmp_path / "broken_labels.tif").exists()


def _signal_run(cmd: list[str], out: Path, signum: int, delay: float, group: bool) -> tuple:
    """Start ``cmd``, wait until run.json says running, wait ``delay``, send ``signum``."""
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        start_new_session=group,
    )
    try:
        started = _wait_for(
            lambda: (_run_json(out) or {}).get("last_run", {}).get("status") == "running",
            timeout=180,
        )
        assert started, "the run did not start"
        time.sleep(delay)
        sent = time.monotonic()
        if group:  # Ctrl-C in a terminal reaches the whole process group
            os.killpg(proc.pid, signum)
        else:
            proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
        return proc.returncode, err, time.monotonic() - sent
    finally:
        if proc.poll() is None:  # pragma: no cover - only if an assertion failed
            proc.kill()
            proc.wait()


def _timed_run(cmd: list[str], out: Path) -> float:
    """Seconds from 'running' in run.json to the end of a complete run."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert _wait_for(
            lambda: (_run_json(out) or {}).get("last_run", {}).get("status") == "running",
            timeout=180,
        )
        t0 = time.monotonic()
        assert proc.wait(timeout=300) == 0
        return time.monotonic() - t0
    finally:
        if proc.poll() is None:  # pragma: no cover
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("jobs", [1, 2])
def test_ctrl_c_and_sigterm_at_many_timings(worms, reference, tmp_path, jobs):
    """Interrupt ``--overwrite`` runs over complete results at delays spread over a run.

    Every time: exit 130 (SIGINT) / 143 (SIGTERM) within seconds, run.json "interrupted"
    with the file being processed "interrupted" (never "failed"), every output present
    and byte-identical to the reference, no temporary left; the next run (no
    --overwrite) skips the files finished before the signal and completes.
    """
    out = _complete_copy(reference, tmp_path / "R")
    expected = _outputs(reference)
    base = [_script(), "segment", str(worms), "-o", str(out), *SEGMENT, "--jobs", str(jobs)]
    overwrite = [*base, "--overwrite"]
    duration = _timed_run(overwrite, out)
    n_cases = 12 if jobs == 1 else 4
    interrupted = 0
    for i in range(n_cases):
        signum = signal.SIGINT if i % 2 == 0 else signal.SIGTERM
        delay = 0.85 * duration * i / (n_cases - 1)
        code, err, took = _signal_run(overwrite, out, signum, delay, group=(jobs == 2))
        case = f"case {i}: {signal.Signals(signum).name} after {delay:.2f} s: {err[-2000:]}"
        run = _run_json(out)
        statuses = {k: r["status"] for k, r in run["files"].items()}
        assert "Traceback" not in err or jobs == 2, case  # (a spawning worker may print one)
        assert "FAILED" not in err and "failed" not in statuses.values(), case
        assert _outputs(out) == expected, case
        assert not _temporaries(out), case
        if run["last_run"]["status"] == "finished":  # the signal came after the run
            assert code == 0 and set(statuses.values()) == {"ok"}, case
        else:
            interrupted += 1
            assert code == 128 + signum, case
            assert took < 30, case  # promptly (generous: the machine may be loaded)
            assert run["last_run"]["status"] == "interrupted", case
            assert run["last_run"]["signal"] == signal.Signals(signum).name, case
            assert set(statuses.values()) <= {"ok", "pending", "interrupted"}, case
            assert list(statuses.values()).count("interrupted") <= jobs, case
            assert "rerun the same command to resume" in err, case
            done = sorted(k for k, s in statuses.items() if s == "ok")
            # the rerun resumes: finished files skipped, the others done, same bytes
            r = subprocess.run(base, capture_output=True, text=True, timeout=300, env=_env())
            assert r.returncode == 0, (case, r.stderr)
            rerun = _run_json(out)
            assert rerun["last_run"]["n_skipped"] == len(done), case
            assert rerun["last_run"]["n_ok"] == N_WORMS - len(done), case
            assert _outputs(out) == expected and not _temporaries(out), case
    assert interrupted >= n_cases // 2, f"only {interrupted} of {n_cases} signals landed mid-run"

    # kill -9 (no chance to clean up) at three moments: every output still complete, the
    # record says the run never finished, and the rerun cleans up and completes
    for delay in (0.2 * duration, 0.5 * duration, 0.8 * duration) if jobs == 1 else ():
        code, err, _ = _signal_run(overwrite, out, signal.SIGKILL, delay, group=False)
        case = f"SIGKILL after {delay:.2f} s"
        status = _run_json(out)["last_run"]["status"]
        if code == 0 or status == "finished":
            # finished before the kill, or killed while the interpreter shut down after
            # the run was recorded: the record and every output are complete
            assert _outputs(out) == expected and not _temporaries(out), case
            continue
        assert code == -signal.SIGKILL, case
        assert status == "running", case
        assert _outputs(out) == expected, case
        r = subprocess.run(base, capture_output=True, text=True, timeout=300, env=_env())
        assert r.returncode == 0, (case, r.stderr)
        assert _outputs(out) == expected and not _temporaries(out), case
