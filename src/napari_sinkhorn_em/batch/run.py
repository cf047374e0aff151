"""Batch segmentation of TIFF files and folders (the engine behind ``napari-sinkhorn-em segment``).

Headless: imports neither napari nor Qt. The command line interface in :mod:`..cli` only
parses arguments and calls :func:`run_batch`.

For every input file ``<stem>.tif`` the batch writes ``<stem>_labels.tif`` (nuclei labels
over the spatial axes, voxel size in the metadata) and ``<stem>_nuclei.csv`` (one row per
nucleus) into the output folder, plus one ``run.json`` per output folder that records the
package version, the parameters and, per file, its status, timings, warnings and error.
A time-lapse input (a time axis of several frames in the ImageJ / OME metadata, or
``--time-axis``) is tracked with :func:`~napari_sinkhorn_em.track_nuclei`: its
``<stem>_labels.tif`` is over T (a nucleus keeps its label value in every frame) and its
table is ``<stem>_tracks.csv``; ``run.json`` adds the frames done and each frame's fit.

Safety: parameter errors that can be seen from the files' headers stop the run before
anything is written. A file's new outputs are written under temporary names and swapped
in only when both are complete, so a failed, interrupted or killed run never deletes or
half-writes the outputs of an earlier run. Rerunning the same command skips the inputs
whose outputs are complete and were made with the same parameters from the same input
(size and modification time). Ctrl-C / SIGTERM stop the run (exit 130 / 143), recording
the file being processed as ``interrupted``.

Parallelism: ``jobs > 1`` runs the files in spawned worker processes; a Dask scheduler
address submits them to an existing ``dask.distributed`` cluster. The results do not
depend on the order, the number of workers or the executor.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import sys
import time
import traceback
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__
from .._json import jsonable
from .executors import (
    Events,
    Terminated,
    check_interrupt,
    deferred,
    execute,
    executor_name,
    handle_interrupts,
    import_distributed,
    interrupt_signal,
    raise_if_interrupted,
)
from .inputs import (
    BatchError,
    BatchInput,
    FileTask,
    discover_inputs,
    input_fingerprint,
    output_paths,
)
from .parameters import (
    _normalise,
    build_parameters,
    check_parameters_against_inputs,
    tracking_kwargs,
)
from .parameters import resolve_voxel_size as _resolve_voxel_size
from .runlog import (
    RUN_JSON,
    RunLog,
    folder_lock,
    is_complete,
    now,
    remove_stale_temporaries,
    staged_outputs,
    write_error,
)

__all__ = ["BatchReport", "count_warning", "process_file", "run_batch"]

logger = logging.getLogger("napari_sinkhorn_em.batch")

#: A result with fewer than this fraction of the requested nuclei gets a warning.
FEW_NUCLEI_FRACTION = 0.5


# ----------------------------------------------------------------------------------------
# One file
# ----------------------------------------------------------------------------------------


def count_warning(n_found: int, n_requested: Any) -> str | None:
    """A warning when a result has no nuclei or far fewer than requested, else None.

    Parameters
    ----------
    n_found : int
        Nuclei in the result (rows of its table).
    n_requested : int or "auto" or None
        The ``n_nuclei`` asked for; only an integer is compared.

    Returns
    -------
    str or None
        ``"no nuclei found ..."`` for 0, ``"found N nuclei, far fewer than the K
        requested ..."`` below :data:`FEW_NUCLEI_FRACTION` of an integer request.
    """
    if n_found == 0:
        return "no nuclei found (check the voxel size, nucleus_diameter and threshold)"
    integer = isinstance(n_requested, int) and not isinstance(n_requested, bool)
    if integer and n_found < math.ceil(FEW_NUCLEI_FRACTION * n_requested):
        return (
            f"found {n_found} nuclei, far fewer than the {n_requested} requested "
            "(too few foreground objects for n_nuclei, or a wrong voxel size)"
        )
    return None


def _result_warnings(result: Any, n_requested: Any, caught: list) -> list[str]:
    """Warnings of one segmentation: from ``segment_nuclei`` and the nucleus count."""
    out: list[str] = []
    seen: set[str] = set()
    for w in caught:
        message = str(w.message)
        if message in seen:
            continue
        seen.add(message)
        category = w.category.__name__
        out.append(message if category == "SegmentationWarning" else f"{category}: {message}")
    info = getattr(result, "info", None) or {}
    for message in map(str, info.get("warnings") or ()):
        if message not in seen:
            seen.add(message)
            out.append(message)
    if not info.get("low_count"):  # (segment_nuclei flags no / few nuclei itself)
        own = count_warning(len(result.table), n_requested)
        if own is not None and not out:
            out.append(own)
    return out


def _check_progress(stage: str, iteration: int, objective: float | None = None) -> None:
    check_interrupt()


def process_file(
    task: FileTask | Mapping[str, Any],
    progress: Any = None,
) -> dict[str, Any]:
    """Segment one input file and write its outputs (never raises for a bad file).

    This is the unit of work sent to worker processes and Dask workers, so it is a
    top-level function of plain data. Ctrl-C / SIGTERM (see
    :func:`.executors.handle_interrupts`) are raised, never recorded as a failure. The
    outputs are swapped in only when both are complete: on any failure the file's
    earlier outputs are left as they were.

    Parameters
    ----------
    task : FileTask or mapping
        The file; a mapping ``{"input", "key", "labels", "table", "seed", "parameters"}``
        is accepted too, with ``parameters`` as returned by :func:`build_parameters`.
    progress : callable, optional
        Passed to ``segment_nuclei`` (``progress(stage, iteration, objective)``); by
        default a callback that only checks for Ctrl-C / SIGTERM.

    Returns
    -------
    dict
        ``{"key", "status": "ok" | "failed", "error": None | {"type", "message",
        "stage"}, "warnings": [str], "timings": {"read", "segment", "write", "total"}
        (seconds), "n_nuclei", "fit": {"converged", "n_iter", "n_components",
        "n_tiles"}, "shape", "voxel_size", "voxel_size_source", "channel_axis",
        "parameters_used", "outputs": {"labels": {"name", "size"}, "table": {...}}}``.
    """
    from ..io import read_image, write_labels, write_table

    if not isinstance(task, FileTask):
        task = FileTask.from_mapping(task)
    t0 = time.perf_counter()
    params = task.parameters
    name = Path(task.input).name
    timings: dict[str, float] = {}
    record: dict[str, Any] = {"key": task.key, "status": "failed", "error": None, "warnings": []}
    stage = "read"
    try:
        check_interrupt()
        image = read_image(
            task.input,
            channel_axis=params.get("channel_axis"),
            time_series=True,
            time_axis=params.get("time_axis"),
        )
        timings["read"] = time.perf_counter() - t0
        time_lapse = image.time_axis is not None
        stage = "track" if time_lapse else "segment"
        check_interrupt()
        voxel_size, vs_source = _resolve_voxel_size(image, params, name)
        record.update(
            shape=list(image.data.shape),
            voxel_size=list(voxel_size),
            voxel_size_source=vs_source,
            channel_axis=image.channel_axis,
        )
        if time_lapse:
            record.update(time_axis=image.time_axis, n_frames=image.n_frames, frames_done=0)
        t1 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if time_lapse:
                result = _track(image, voxel_size, task, progress)
            else:
                from ..pipeline.segment import segment_nuclei

                result = segment_nuclei(
                    image.data,
                    voxel_size=voxel_size,
                    channel_axis=image.channel_axis,
                    channel_names=image.channel_names,
                    random_state=int(task.seed),
                    progress=progress if progress is not None else _check_progress,
                    **params["segment"],
                )
        check_interrupt()
        timings[stage] = time.perf_counter() - t1
        if time_lapse:
            record["warnings"] = _tracking_warnings(result, caught)
        else:
            n_req = params["segment"].get("n_nuclei")
            record["warnings"] = _result_warnings(result, n_req, caught)
        stage = "write"
        t2 = time.perf_counter()
        labels_path, table_path = Path(task.labels), Path(task.table)
        table = result.tracks if time_lapse else result.table
        with staged_outputs(labels_path, table_path, commit_guard=deferred) as (new_l, new_t):
            try:
                write_labels(new_l, result.labels, voxel_size, time_axis=time_lapse)
            except OSError as exc:
                raise write_error(labels_path, exc) from exc
            try:
                write_table(new_t, table)
            except OSError as exc:
                raise write_error(table_path, exc) from exc
            sizes = {"labels": new_l.stat().st_size, "table": new_t.stat().st_size}
        timings["write"] = time.perf_counter() - t2
        if time_lapse:
            record.update(_tracking_record(result))
        else:
            info = result.info
            record.update(
                n_nuclei=len(result.table),
                # the scale used (estimated with nucleus_diameter="auto") and the camera
                # spikes replaced, for the log and for spotting odd stacks
                nucleus_diameter_um=round(float(info["nucleus_diameter_um"]), 4),
                n_hot_pixels=int(info.get("preprocess", {}).get("n_hot_pixels", 0)),
                # a registration's zero-filled border, padding planes (filled with
                # background: preprocess.fill_no_data)
                n_no_data_voxels=int(info.get("preprocess", {}).get("n_no_data_voxels", 0)),
                fit={
                    "converged": bool(info["converged"]),
                    "n_iter": int(info["n_iter"]),
                    "n_components": int(info["n_components"]),
                    "n_tiles": int(info["n_tiles"]),
                },
            )
        record.update(
            status="ok",
            parameters_used=jsonable(result.params),
            outputs={
                "labels": {"name": labels_path.name, "size": sizes["labels"]},
                "table": {"name": table_path.name, "size": sizes["table"]},
            },
        )
    except Exception as exc:  # a bad file must not stop the batch; an interrupt must
        raise_if_interrupted(exc)
        record["error"] = {"type": type(exc).__name__, "message": str(exc), "stage": stage}
        if not isinstance(exc, (ValueError, OSError)):
            record["error"]["traceback"] = traceback.format_exc()
    timings["total"] = time.perf_counter() - t0
    record["timings"] = {k: round(v, 4) for k, v in timings.items()}
    return record


def _track(image: Any, voxel_size: Sequence[float], task: FileTask, progress: Any) -> Any:
    """Track the nuclei of a time-lapse input with ``track_nuclei`` (the run's
    parameters that tracking shares, plus ``--motion`` / ``--reference-frame``)."""
    from ..pipeline.track import track_nuclei

    def track_progress(stage: str, done: int, n_frames: int) -> None:
        check_interrupt()
        if progress is not None and stage == "frame":
            progress("frame", done, None)  # frames done (run.json, progress bar)
        return None

    return track_nuclei(
        image.data,
        time_axis=image.time_axis,
        voxel_size=voxel_size,
        channel_axis=image.channel_axis,
        channel_names=image.channel_names,
        random_state=int(task.seed),
        progress=track_progress,
        **tracking_kwargs(task.parameters),
    )


def _tracking_warnings(result: Any, caught: list) -> list[str]:
    """Warnings of one tracked time-lapse: raised ones, and frames without nuclei."""
    out: list[str] = []
    for w in caught:
        message = str(w.message)
        category = w.category.__name__
        text = message if category == "SegmentationWarning" else f"{category}: {message}"
        if text not in out:
            out.append(text)
    empty = [int(f["t"]) for f in result.frames if int(f.get("n_tracks", 0)) == 0]
    if len(result.tracks) == 0:
        out.append("no nuclei found (check the voxel size, nucleus_diameter and threshold)")
    elif empty:
        out.append(f"no nuclei in frame(s) {empty}")
    return out


def _tracking_record(result: Any) -> dict[str, Any]:
    """What run.json keeps of a tracked time-lapse: counts and per-frame fit status."""
    frames = [
        {
            "t": int(f["t"]),
            "converged": bool(f["converged"]),
            "n_iter": int(f["n_iter"]),
            "n_tracks": int(f["n_tracks"]),
            "new": len(f.get("new") or ()),
            "ended": len(f.get("ended") or ()),
            "divided": len(f.get("divided") or ()),
            "seconds": round(float((f.get("timings") or {}).get("total", 0.0)), 4),
        }
        for f in result.frames
    ]
    n_tracks = int(result.tracks["track_id"].nunique()) if len(result.tracks) else 0
    return {
        "n_nuclei": n_tracks,
        "nucleus_diameter_um": round(float(result.nucleus_diameter_um), 4),
        "n_tracks": n_tracks,
        "n_frames": len(frames),
        "frames_done": len(frames),
        "frames": frames,
        "fit": {
            "converged": all(f["converged"] for f in frames),
            "n_iter": sum(f["n_iter"] for f in frames),
            "frames_not_converged": [f["t"] for f in frames if not f["converged"]],
        },
    }


# ----------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------


@dataclass
class BatchReport:
    """Outcome of :func:`run_batch`.

    Attributes
    ----------
    output_dir : pathlib.Path
        The output folder (holds ``run.json``).
    ok, failed, skipped : list of str
        Output keys of the inputs segmented now, failed now, and skipped because their
        outputs were complete and up to date.
    errors : dict
        ``{key: "ErrorType: message"}`` of the failed inputs.
    warnings : dict
        ``{key: [message, ...]}`` of the inputs segmented with warnings (e.g. no nuclei,
        or far fewer than requested).
    """

    output_dir: Path
    ok: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    warnings: dict[str, list[str]] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """0 when no input failed, else 1."""
        return 1 if self.failed else 0


def _make_tasks(
    items: Sequence[BatchInput], out: Path, params: Mapping[str, Any]
) -> list[FileTask]:
    input_paths = {i.path for i in items}
    tasks = []
    for inp in items:
        time_lapse = _is_time_lapse(inp.path, params)
        labels_path, table_path = output_paths(out, inp.key, time_lapse=time_lapse)
        for p in (labels_path, table_path):
            if p.resolve() in input_paths:
                raise BatchError(f"output {p} would overwrite an input; choose another --output")
        # the run's seed as it is: a parameter file exported by the widget then
        # reproduces the widget's result exactly, file by file
        tasks.append(
            FileTask(
                str(inp.path),
                inp.key,
                str(labels_path),
                str(table_path),
                int(params["seed"]),
                params,
            )
        )
    return tasks


def _is_time_lapse(path: Path, params: Mapping[str, Any]) -> bool:
    """From the header: is this input a time-lapse (tracked, ``<key>_tracks.csv``)?"""
    from ..io import ImageReadError, read_image_axes

    try:
        axes, _ = read_image_axes(
            path,
            channel_axis=params.get("channel_axis"),
            time_series=True,
            time_axis=params.get("time_axis"),
        )
    except (ImageReadError, OSError):
        return params.get("time_axis") is not None  # fails on its own when run
    return "T" in axes


class _Recorder:
    """Keeps ``run.json``, the report, the progress bar and the log in step with the run."""

    def __init__(self, log: RunLog, report: BatchReport, bar: Any) -> None:
        self.log, self.report, self.bar = log, report, bar

    def plan(
        self, tasks: Sequence[FileTask], params: Mapping[str, Any], overwrite: bool
    ) -> list[FileTask]:
        """Skip complete, up-to-date files; mark the others pending. Returns the todo list."""
        todo = []
        for task in tasks:
            task = dataclasses.replace(task, fingerprint=input_fingerprint(task.input))
            old = self.log.files.get(task.key)
            if not overwrite and is_complete(
                old,
                parameters=params,
                fingerprint=task.fingerprint,
                seed=task.seed,
                input_path=Path(task.input),
                labels_path=Path(task.labels),
                table_path=Path(task.table),
            ):
                self.report.skipped.append(task.key)
                continue
            todo.append(task)
            entry: dict[str, Any] = {
                "input": task.input,
                "fingerprint": task.fingerprint,
                "seed": task.seed,
                "parameters": params,
                "napari_sinkhorn_em_version": __version__,
                "status": "pending",
            }
            previous = (old or {}).get("previous") or (
                old if (old or {}).get("status") == "ok" else None
            )
            if previous and (Path(task.labels).is_file() or Path(task.table).is_file()):
                # complete outputs of an earlier run: kept until this run replaces them
                entry["previous"] = {
                    k: previous.get(k)
                    for k in ("finished", "input", "fingerprint", "seed", "parameters",
                              "napari_sinkhorn_em_version", "n_nuclei", "outputs")
                }  # fmt: skip
            self.log.files[task.key] = entry
        return todo

    def started(self, task: FileTask, where: str) -> None:
        with deferred():
            entry = self.log.files[task.key]
            entry.update(status="running", worker=where, started=now())
            self.log.save()
        if self.bar is not None:
            self.bar.set_postfix_str(Path(task.input).name, refresh=True)

    def frame_done(self, task: FileTask, done: int) -> None:
        """A time-lapse file finished ``done`` frames: recorded in run.json."""
        with deferred():
            entry = self.log.files[task.key]
            entry["frames_done"] = int(done)
            self.log.save()
        if self.bar is not None:
            self.bar.set_postfix_str(f"{Path(task.input).name} frame {done}", refresh=True)

    def finished(self, task: FileTask, rec: Mapping[str, Any]) -> None:
        key = task.key
        with deferred():
            entry = self.log.files[key]
            entry.pop("worker", None)
            entry.update({k: v for k, v in rec.items() if k != "key"})
            entry["finished"] = now()
            if rec["status"] == "ok":
                entry.pop("previous", None)
                self.report.ok.append(key)
            else:
                err = rec.get("error") or {}
                self.report.failed.append(key)
                self.report.errors[key] = f"{err.get('type')}: {err.get('message')}"
            if rec.get("warnings"):
                self.report.warnings[key] = list(rec["warnings"])
            self.log.data["last_run"]["n_ok"] = len(self.report.ok)
            self.log.data["last_run"]["n_failed"] = len(self.report.failed)
            self.log.save()
        _log_result(task, rec, entry)
        if self.bar is not None:
            self.bar.update(1)

    def start_run(self, params: Mapping[str, Any], command: Any, executor: str, n: int) -> None:
        self.log.data["parameters"] = params
        self.log.data["last_run"] = {
            "started": now(),
            "finished": None,
            "status": "running",
            "command": list(command) if command is not None else None,
            "executor": executor,
            "n_inputs": n,
            "n_ok": 0,
            "n_failed": 0,
            "n_skipped": len(self.report.skipped),
        }
        with deferred():  # run.json is never left half-swapped by a signal
            self.log.save()
        if self.report.skipped:
            logger.info(
                "skipping %d input(s) with complete, up-to-date outputs (--overwrite redoes them)",
                len(self.report.skipped),
            )

    def end_run(self, exc: BaseException | None) -> None:
        last = self.log.data["last_run"]
        if exc is None:
            last["status"] = "finished"
        elif isinstance(exc, (KeyboardInterrupt, Terminated)):
            last["status"] = "interrupted"
            signum = interrupt_signal() or (
                signal.SIGINT if isinstance(exc, KeyboardInterrupt) else signal.SIGTERM
            )
            last["signal"] = signal.Signals(signum).name
        else:
            last["status"] = "error"
            last["error"] = f"{type(exc).__name__}: {exc}"
        last["finished"] = now()
        for key, entry in self.log.files.items():
            if entry.get("status") == "running":
                entry["status"] = "interrupted"
                entry.pop("worker", None)
                entry["interrupted"] = last["finished"]
                logger.warning("interrupted %s (not done; rerun to resume)", key)
        self.log.save()


def _log_result(task: FileTask, rec: Mapping[str, Any], entry: Mapping[str, Any]) -> None:
    name = Path(task.input).name
    if rec["status"] == "ok":
        extra = ""
        if rec.get("nucleus_diameter_um") is not None:
            extra = f" (diameter {rec['nucleus_diameter_um']:.2f} um"
            if rec.get("n_hot_pixels"):
                extra += f", {rec['n_hot_pixels']} hot pixels replaced"
            if rec.get("n_no_data_voxels"):
                extra += f", {rec['n_no_data_voxels']} no-data voxels filled"
            extra += ")"
        logger.info(
            "ok      %s: %d nuclei%s in %.2f s",
            name,
            rec.get("n_nuclei", 0),
            extra,
            rec["timings"].get("total", 0.0),
        )
    else:
        err = rec.get("error") or {}
        logger.error("FAILED  %s: %s: %s", name, err.get("type"), err.get("message"))
        if entry.get("previous"):
            logger.warning(
                "kept the earlier outputs of %s (from the run of %s); rerun to replace them",
                name,
                entry["previous"].get("finished"),
            )
    for w in rec.get("warnings") or ():
        logger.warning("%s: %s", name, w)


def _make_bar(enabled: bool, **kwargs: Any) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(desc="files", unit="file", file=sys.stderr, dynamic_ncols=True, **kwargs)


def run_batch(
    inputs: Iterable[str | os.PathLike[str]],
    output_dir: str | os.PathLike[str],
    *,
    parameters: Mapping[str, Any] | None = None,
    recursive: bool = False,
    jobs: int = 1,
    dask_scheduler: str | None = None,
    overwrite: bool = False,
    progress_bar: bool = True,
    command: Sequence[str] | None = None,
) -> BatchReport:
    """Segment TIFF files and folders, writing labels, tables and ``run.json``.

    Parameters
    ----------
    inputs : iterable of path-like
        Files and folders (see :func:`discover_inputs`). Inputs are only read.
    output_dir : path-like
        Output folder (created if needed).
    parameters : mapping, optional
        As returned by :func:`build_parameters`; default ``build_parameters()``.
    recursive : bool, default False
        Search sub-folders of folder inputs.
    jobs : int, default 1
        Number of worker processes on this machine (spawned). 1 = in this process, with
        the current file's iterations shown in the progress bar.
    dask_scheduler : str, optional
        Address of a running ``dask.distributed`` scheduler (e.g. ``tcp://host:8786``);
        the files are submitted to its workers, which must be able to import
        ``napari_sinkhorn_em`` and read/write the input/output paths. Excludes ``jobs``.
    overwrite : bool, default False
        Redo every input even when its outputs are complete and up to date (an output is
        still only replaced once its new version is complete).
    progress_bar : bool, default True
        Show tqdm progress bars on stderr (False: log lines only).
    command : sequence of str, optional
        The command line, recorded in ``run.json``.

    Returns
    -------
    BatchReport
        Which inputs succeeded, failed or were skipped; ``report.exit_code``.

    Raises
    ------
    BatchError
        When the run cannot start: no inputs, bad parameters (also a ``--voxel-size``
        that does not fit an input), an output would overwrite an input, the output
        folder is locked by another run, bad ``jobs``. Nothing has been written then.
    KeyboardInterrupt, Terminated
        On Ctrl-C / SIGTERM (in the main thread): the file being processed is recorded
        as ``interrupted``, finished outputs stay, ``run.json`` says ``interrupted``.
    ImportError
        When ``dask_scheduler`` is given and ``dask.distributed`` is not installed.
    """
    if dask_scheduler is not None and jobs != 1:
        raise BatchError("use either --jobs or --dask-scheduler, not both")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise BatchError(f"jobs must be a positive integer, got {jobs!r}")
    params = _normalise(parameters if parameters is not None else build_parameters())
    out = Path(output_dir).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise BatchError(f"output {out} exists and is not a folder")
    items = discover_inputs(inputs, recursive=recursive, output_dir=out)
    tasks = _make_tasks(items, out, params)
    check_parameters_against_inputs(items, params)
    if dask_scheduler is not None:
        import_distributed()  # clear error before touching the output folder

    out.mkdir(parents=True, exist_ok=True)
    report = BatchReport(output_dir=out)
    outputs = [Path(p) for t in tasks for p in (t.labels, t.table)]
    with handle_interrupts(), folder_lock(out):
        remove_stale_temporaries([*outputs, out / RUN_JSON])
        bar = _make_bar(progress_bar, total=len(tasks))
        rec = _Recorder(RunLog(out), report, bar)
        failure: BaseException | None = None
        try:
            todo = rec.plan(tasks, params, overwrite)
            if bar is not None:
                bar.update(len(report.skipped))
            rec.start_run(params, command, executor_name(jobs, dask_scheduler), len(tasks))
            execute(
                todo,
                process_file,
                Events(rec.started, rec.finished, rec.frame_done),
                jobs=jobs,
                dask_scheduler=dask_scheduler,
                progress_bar=progress_bar,
            )
        except BaseException as exc:
            failure = exc
            raise
        finally:
            with deferred():
                if bar is not None:
                    bar.close()
                if failure is None and interrupt_signal() is not None:
                    # the signal came after the last file: still record it (and raise
                    # it below), so that the exit code and run.json agree
                    sig = interrupt_signal()
                    failure = KeyboardInterrupt() if sig == signal.SIGINT else Terminated(sig)
                if rec.log.data.get("last_run") is not None:
                    rec.end_run(failure)
                # of workers stopped mid-write (we hold the lock: every temporary is ours)
                remove_stale_temporaries([*outputs, out / RUN_JSON])
    logger.info(
        "%d segmented, %d skipped, %d failed; outputs and run.json in %s",
        len(report.ok),
        len(report.skipped),
        len(report.failed),
        out,
    )
    return report
