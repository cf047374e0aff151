"""Batch segmentation of TIFF files and folders (the engine behind ``napari-sinkhorn-em segment``).

Headless: imports neither napari nor Qt. The command line interface in :mod:`.cli` only
parses arguments and calls :func:`run_batch`.

For every input file ``<stem>.tif`` the batch writes ``<stem>_labels.tif`` (nuclei labels
over the spatial axes, voxel size in the metadata) and ``<stem>_nuclei.csv`` (one row per
nucleus) into the output folder, plus one ``run.json`` per output folder that records the
package version, the parameters and, per file, its status, timings and error. Every file
is written atomically (temporary file in the same folder, then :func:`os.replace`), so a
run killed at any moment leaves only complete files, and rerunning the same command skips
the inputs whose outputs are complete and were made with the same parameters from the same
input (size and modification time).

Parallelism: ``jobs > 1`` runs the files in a pool of spawned worker processes; a Dask
scheduler address submits them to an existing ``dask.distributed`` cluster. Each file's
random seed is derived from the base seed and the file's name only, so the results do not
depend on the order, the number of workers or the executor.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import math
import os
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from .._json import jsonable
from .._validation import check_voxel_size

__all__ = [
    "RUN_JSON",
    "BatchError",
    "BatchInput",
    "BatchReport",
    "build_parameters",
    "derive_seed",
    "discover_inputs",
    "input_fingerprint",
    "output_paths",
    "process_file",
    "run_batch",
    "write_synthetic_worms",
]

logger = logging.getLogger("napari_sinkhorn_em.batch")

#: Name of the run record written into every output folder.
RUN_JSON = "run.json"
#: Version of the ``run.json`` layout (bumped on incompatible changes).
RUN_SCHEMA = 1
#: Suffixes of the outputs written for an input ``<stem>.tif``.
LABELS_SUFFIX = "_labels.tif"
TABLE_SUFFIX = "_nuclei.csv"
TIFF_EXTENSIONS = (".tif", ".tiff")

# Keys of ``segment_nuclei`` that the batch resolves per file (from metadata / flags).
_PER_FILE_KEYS = ("voxel_size", "channel_axis", "channel_names", "random_state", "progress")


class BatchError(ValueError):
    """A batch run cannot start (bad inputs, bad output folder, bad parameters)."""


# ----------------------------------------------------------------------------------------
# Inputs and outputs
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchInput:
    """One input file of a batch run.

    Attributes
    ----------
    path : pathlib.Path
        Absolute path of the input file.
    key : str
        Output name relative to the output folder, POSIX style and without suffix, e.g.
        ``"worm_000"`` or, for files found in sub-folders with ``recursive=True``,
        ``"day1/worm_000"``. Outputs are ``<key>_labels.tif`` and ``<key>_nuclei.csv``; the
        key also seeds the file's random number generator.
    """

    path: Path
    key: str


def _strip_tiff_suffix(name: str) -> str:
    """Return ``name`` without ``.tif``/``.tiff`` (and a preceding ``.ome``)."""
    lower = name.lower()
    for ext in (".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if lower.endswith(ext):
            return name[: -len(ext)]
    return Path(name).stem or name


def _is_tiff_name(name: str) -> bool:
    return name.lower().endswith(TIFF_EXTENSIONS)


def _is_own_output(path: Path) -> bool:
    """True for a ``<stem>_labels.tif`` that sits next to its ``<stem>_nuclei.csv``."""
    if not path.name.endswith(LABELS_SUFFIX):
        return False
    stem = path.name[: -len(LABELS_SUFFIX)]
    return (path.parent / f"{stem}{TABLE_SUFFIX}").is_file()


def _is_relative_to(path: Path, other: Path) -> bool:
    try:
        path.relative_to(other)
    except ValueError:
        return False
    return True


def discover_inputs(
    inputs: Iterable[str | os.PathLike[str]],
    *,
    recursive: bool = False,
    output_dir: str | os.PathLike[str] | None = None,
) -> list[BatchInput]:
    """Expand files and folders into the sorted list of TIFF inputs of a batch run.

    Parameters
    ----------
    inputs : iterable of path-like
        Files and folders. A file is taken as it is, whatever its extension (so a
        non-TIFF file given by name is reported as a bad input rather than silently
        dropped). A folder contributes its ``.tif``/``.tiff`` files (case-insensitive),
        skipping hidden files (names starting with ``.``, e.g. temporary files) and this
        tool's own outputs (a ``<stem>_labels.tif`` next to its ``<stem>_nuclei.csv``).
    recursive : bool, default False
        Also search the sub-folders of folder inputs. The sub-folder path becomes part of
        the output name (outputs mirror the input tree).
    output_dir : path-like, optional
        The output folder; files inside it are skipped when it lies within a searched
        folder.

    Returns
    -------
    list of BatchInput
        Unique files (by resolved path), sorted by output key then path; stable across
        runs and machines.

    Raises
    ------
    BatchError
        When an input does not exist, when nothing was found, or when two inputs would
        write the same outputs (same output key).
    """
    out = Path(output_dir).resolve() if output_dir is not None else None
    found: dict[Path, str] = {}
    for item in inputs:
        p = Path(item).expanduser()
        if not p.exists():
            raise BatchError(f"input not found: {str(item)!r}")
        rp = p.resolve()
        if rp.is_dir():
            pattern = "**/*" if recursive else "*"
            for f in sorted(rp.glob(pattern)):
                if not f.is_file() or not _is_tiff_name(f.name):
                    continue
                rel = f.relative_to(rp)
                if any(part.startswith(".") for part in rel.parts):
                    continue
                if out is not None and out != rp and _is_relative_to(f.resolve(), out):
                    continue
                if _is_own_output(f):
                    continue
                key = (rel.parent / _strip_tiff_suffix(f.name)).as_posix()
                found.setdefault(f.resolve(), key)
        else:
            found.setdefault(rp, _strip_tiff_suffix(rp.name))
    if not found:
        raise BatchError(
            "no input files found (folders are searched for .tif/.tiff files"
            + ("" if recursive else "; use --recursive for sub-folders")
            + ")"
        )
    by_key: dict[str, list[Path]] = {}
    for path, key in found.items():
        by_key.setdefault(key, []).append(path)
    clashes = {k: v for k, v in by_key.items() if len(v) > 1}
    if clashes:
        desc = "; ".join(
            f"{k}: " + ", ".join(str(p) for p in sorted(v)) for k, v in clashes.items()
        )
        raise BatchError(f"several inputs would write the same outputs ({desc}); rename them")
    return sorted((BatchInput(p, k) for p, k in found.items()), key=lambda b: (b.key, str(b.path)))


def output_paths(output_dir: str | os.PathLike[str], key: str) -> tuple[Path, Path]:
    """Return ``(labels_path, table_path)`` of the input with output key ``key``."""
    base = Path(output_dir) / key
    return (
        base.parent / f"{base.name}{LABELS_SUFFIX}",
        base.parent / f"{base.name}{TABLE_SUFFIX}",
    )


def input_fingerprint(path: str | os.PathLike[str]) -> dict[str, int]:
    """Return the fingerprint ``{"size": bytes, "mtime_ns": ns}`` of an input file.

    A rerun redoes an input when its fingerprint changed since its outputs were written.
    """
    st = os.stat(path)
    return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def derive_seed(base_seed: int, name: str) -> int:
    """Derive a per-item seed from a base seed and a name (used for synthetic worms).

    The seed depends on nothing else (not on the order of the items, the number of
    workers or the machine). Segmentation itself uses the run's seed unchanged for every
    file, as the widget does, so that exported widget parameters reproduce in batch.

    Parameters
    ----------
    base_seed : int
        Non-negative base seed of the run (``--seed``).
    name : str
        The file's output key (see :class:`BatchInput`).

    Returns
    -------
    int
        A seed in ``[0, 2**32)`` for :func:`numpy.random.default_rng`.
    """
    if isinstance(base_seed, bool) or not isinstance(base_seed, (int, np.integer)):
        raise BatchError(f"seed must be a non-negative integer, got {base_seed!r}")
    if base_seed < 0:
        raise BatchError(f"seed must be a non-negative integer, got {base_seed}")
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    ss = np.random.SeedSequence([int(base_seed), int.from_bytes(digest[:8], "little")])
    return int(ss.generate_state(1, dtype=np.uint32)[0])


# ----------------------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------------------


def _normalise(value: Any) -> Any:
    """JSON round trip, so that recorded and requested parameters compare equal."""
    return json.loads(json.dumps(jsonable(value), sort_keys=True))


def _check_voxel_size(value: Any, what: str) -> list[float] | None:
    try:
        vs = check_voxel_size(value, (2, 3), name=what)
    except ValueError as exc:
        raise BatchError(str(exc)) from None
    return None if vs is None else list(vs)


def build_parameters(
    config: Mapping[str, Any] | None = None,
    *,
    n_nuclei: int | str | None = None,
    voxel_size: Sequence[float] | None = None,
    channel_axis: int | None = None,
    method: str | None = None,
    nucleus_diameter: float | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """Merge a parameter file and command-line flags into the parameters of a batch run.

    Parameters
    ----------
    config : mapping, optional
        Keyword arguments of :func:`napari_sinkhorn_em.segment_nuclei`, e.g. as read by
        :func:`napari_sinkhorn_em.load_params` from the JSON the widget exports. Its
        ``voxel_size`` is only a fallback for files without voxel size metadata; its
        ``channel_axis``, ``channel_names`` and ``progress`` are ignored (they belong to
        the image the file was made for), and so are ``init`` centres given as an array;
        its ``random_state`` is the base seed unless ``seed`` is given.
    n_nuclei, voxel_size, channel_axis, method, nucleus_diameter, seed
        Command-line flags; ``None`` = not given. They override ``config``.
        ``voxel_size`` and ``channel_axis`` override the files' metadata.

    Returns
    -------
    dict
        JSON-serialisable dict with keys ``"segment"`` (keyword arguments passed to
        ``segment_nuclei`` for every file), ``"voxel_size"`` / ``"channel_axis"``
        (overrides or None), ``"fallback_voxel_size"`` (from the config or None) and
        ``"seed"`` (base seed). This dict is recorded in ``run.json`` and compared on
        resume.
    """
    seg = {k: v for k, v in dict(config or {}).items() if k not in _PER_FILE_KEYS}
    if "init" in seg and not isinstance(seg["init"], str):
        # centres for one particular image (e.g. after "Refine" in the widget)
        logger.warning("ignoring the config's init centres: they belong to one image")
        del seg["init"]
    fallback_vs = _check_voxel_size((config or {}).get("voxel_size"), "voxel_size in the config")
    base_seed = seed if seed is not None else (config or {}).get("random_state")
    if base_seed is None:
        base_seed = 0
    derive_seed(base_seed, "")  # validates the seed
    if n_nuclei is not None:
        seg["n_nuclei"] = n_nuclei
    if seg.get("n_nuclei") is None:
        seg["n_nuclei"] = "auto"
    nn = seg["n_nuclei"]
    if isinstance(nn, str):
        if nn != "auto":
            raise BatchError(f"n_nuclei must be a positive integer or 'auto', got {nn!r}")
    elif isinstance(nn, bool) or not isinstance(nn, (int, np.integer)) or nn < 1:
        raise BatchError(f"n_nuclei must be a positive integer or 'auto', got {nn!r}")
    if method is not None:
        seg["method"] = method
    if nucleus_diameter is not None:
        if not (math.isfinite(nucleus_diameter) and nucleus_diameter > 0):
            raise BatchError(f"nucleus diameter must be positive, got {nucleus_diameter}")
        seg["nucleus_diameter"] = float(nucleus_diameter)
    if channel_axis is not None and (
        isinstance(channel_axis, bool) or not isinstance(channel_axis, (int, np.integer))
    ):
        raise BatchError(f"channel axis must be an integer, got {channel_axis!r}")
    return _normalise(
        {
            "segment": seg,
            "voxel_size": _check_voxel_size(voxel_size, "--voxel-size"),
            "channel_axis": None if channel_axis is None else int(channel_axis),
            "fallback_voxel_size": fallback_vs,
            "seed": int(base_seed),
        }
    )


# ----------------------------------------------------------------------------------------
# One file
# ----------------------------------------------------------------------------------------


def _resolve_voxel_size(
    image: Any, parameters: Mapping[str, Any], name: str
) -> tuple[tuple[float, ...], str]:
    """Pick the voxel size of one file: flag > metadata > config > default.

    The default is 1 um per pixel for 2-D images; a 3-D stack without any voxel size is
    an error (ValueError naming the file).
    """
    data = image.data
    ndim = data.ndim - (image.channel_axis is not None)
    candidates = (
        ("--voxel-size", parameters.get("voxel_size")),
        ("metadata", image.voxel_size),
        ("config", parameters.get("fallback_voxel_size")),
    )
    for source, vs in candidates:
        if vs is None:
            continue
        vs = tuple(float(v) for v in vs)
        if len(vs) != ndim:
            raise ValueError(
                f"{name}: voxel size from {source} has {len(vs)} values "
                f"{list(vs)} but the image has {ndim} spatial axes (shape {data.shape})"
            )
        return vs, source
    if ndim == 3:
        # The z step of a fluorescence stack is almost never its pixel size: guessing
        # isotropic voxels would silently distort the nuclei, so ask instead.
        raise ValueError(
            f"{name}: voxel size unknown (no ImageJ/OME calibration) for a 3-D stack "
            f"(shape {data.shape}), whose z step usually differs from its pixel size; "
            "pass --voxel-size Z Y X in micrometres"
        )
    logger.warning("%s: no pixel size in the metadata; assuming 1 um per pixel", name)
    return (1.0,) * ndim, "default"


def process_file(
    task: Mapping[str, Any],
    progress: Callable[[str, int, float | None], bool | None] | None = None,
) -> dict[str, Any]:
    """Segment one input file and write its outputs (never raises for a bad file).

    This is the unit of work sent to worker processes and Dask workers, so it is a
    top-level function of plain data.

    Parameters
    ----------
    task : mapping
        ``{"input": str, "key": str, "labels": str, "table": str, "seed": int,
        "parameters": dict}`` with ``parameters`` as returned by
        :func:`build_parameters`.
    progress : callable, optional
        Passed to ``segment_nuclei`` (``progress(stage, iteration, objective)``).

    Returns
    -------
    dict
        ``{"key", "status": "ok" | "failed", "error": None | {"type", "message"},
        "timings": {"read", "segment", "write", "total"} (seconds), "n_nuclei",
        "fit": {"converged", "n_iter", "n_components", "n_tiles"},
        "shape", "voxel_size", "voxel_size_source", "channel_axis",
        "parameters_used", "outputs": {"labels": {"name", "size"}, "table": {...}}}``.
    """
    from ..io import read_image, write_labels, write_table
    from ..pipeline.segment import segment_nuclei

    t0 = time.perf_counter()
    params = task["parameters"]
    name = Path(task["input"]).name
    timings: dict[str, float] = {}
    record: dict[str, Any] = {"key": task["key"], "status": "failed", "error": None}
    stage = "read"
    try:
        image = read_image(task["input"], channel_axis=params.get("channel_axis"))
        timings["read"] = time.perf_counter() - t0
        stage = "segment"
        voxel_size, vs_source = _resolve_voxel_size(image, params, name)
        record.update(
            shape=list(image.data.shape),
            voxel_size=list(voxel_size),
            voxel_size_source=vs_source,
            channel_axis=image.channel_axis,
        )
        t1 = time.perf_counter()
        result = segment_nuclei(
            image.data,
            voxel_size=voxel_size,
            channel_axis=image.channel_axis,
            channel_names=image.channel_names,
            random_state=int(task["seed"]),
            progress=progress,
            **params["segment"],
        )
        timings["segment"] = time.perf_counter() - t1
        stage = "write"
        t2 = time.perf_counter()
        labels_path, table_path = Path(task["labels"]), Path(task["table"])
        labels_path.parent.mkdir(parents=True, exist_ok=True)
        write_labels(labels_path, result.labels, voxel_size)
        write_table(table_path, result.table)
        timings["write"] = time.perf_counter() - t2
        info = result.info
        record.update(
            status="ok",
            n_nuclei=len(result.table),
            fit={
                "converged": bool(info["converged"]),
                "n_iter": int(info["n_iter"]),
                "n_components": int(info["n_components"]),
                "n_tiles": int(info["n_tiles"]),
            },
            parameters_used=jsonable(result.params),
            outputs={
                "labels": {"name": labels_path.name, "size": labels_path.stat().st_size},
                "table": {"name": table_path.name, "size": table_path.stat().st_size},
            },
        )
    except Exception as exc:  # a bad file must not stop the batch
        record["error"] = {"type": type(exc).__name__, "message": str(exc), "stage": stage}
        if not isinstance(exc, ValueError):
            record["error"]["traceback"] = traceback.format_exc()
    timings["total"] = time.perf_counter() - t0
    record["timings"] = {k: round(v, 4) for k, v in timings.items()}
    return record


# ----------------------------------------------------------------------------------------
# run.json
# ----------------------------------------------------------------------------------------


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _write_json_atomic(path: Path, obj: Any) -> None:
    from ..io import atomic_write

    text = json.dumps(jsonable(obj), indent=2, sort_keys=False) + "\n"
    with atomic_write(path, "w", encoding="utf-8") as fh:
        fh.write(text)


class RunLog:
    """The ``run.json`` of one output folder, rewritten atomically after every change.

    Layout (``schema`` 1)::

        {"schema": 1, "napari_sinkhorn_em_version": "...", "created": ISO, "updated": ISO,
         "parameters": {...}              # of the latest run (see build_parameters)
         "last_run": {"started", "finished", "status": "running" | "finished" |
                      "interrupted", "command", "executor", "n_inputs", "n_ok",
                      "n_failed", "n_skipped"},
         "files": {key: {"input", "fingerprint": {"size", "mtime_ns"}, "seed",
                         "parameters", "napari_sinkhorn_em_version", "status":
                         "pending" | "ok" | "failed", "error", "timings", "n_nuclei",
                         "shape", "voxel_size", "voxel_size_source", "channel_axis",
                         "parameters_used", "outputs", "finished"}}}
    """

    def __init__(self, output_dir: Path) -> None:
        self.path = output_dir / RUN_JSON
        self.data: dict[str, Any] = {
            "schema": RUN_SCHEMA,
            "napari_sinkhorn_em_version": __version__,
            "created": _now(),
            "updated": None,
            "parameters": None,
            "last_run": None,
            "files": {},
        }
        if self.path.exists():
            try:
                old = json.loads(self.path.read_text(encoding="utf-8"))
                if not isinstance(old, dict) or not isinstance(old.get("files"), dict):
                    raise ValueError("not a run record")
            except (OSError, ValueError) as exc:
                logger.warning(
                    "%s is unreadable (%s); starting a fresh record, every input is redone",
                    self.path,
                    exc,
                )
            else:
                self.data["created"] = old.get("created", self.data["created"])
                self.data["files"] = old["files"]

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        """Per-input records, keyed by output key."""
        return self.data["files"]

    def save(self) -> None:
        """Write ``run.json`` atomically (temporary file + rename)."""
        self.data["updated"] = _now()
        self.data["napari_sinkhorn_em_version"] = __version__
        _write_json_atomic(self.path, self.data)


def _is_complete(
    record: Mapping[str, Any] | None,
    *,
    parameters: Mapping[str, Any],
    fingerprint: Mapping[str, int],
    seed: int,
    input_path: Path,
    labels_path: Path,
    table_path: Path,
) -> bool:
    """True when an input's outputs exist, are complete and match parameters and input."""
    if not record or record.get("status") != "ok":
        return False
    if record.get("napari_sinkhorn_em_version") != __version__:
        return False
    if _normalise(record.get("parameters")) != _normalise(parameters):
        return False
    if record.get("fingerprint") != dict(fingerprint) or record.get("seed") != seed:
        return False
    if record.get("input") != str(input_path):
        return False
    outputs = record.get("outputs") or {}
    for which, path in (("labels", labels_path), ("table", table_path)):
        info = outputs.get(which) or {}
        try:
            if not path.is_file() or path.stat().st_size != info.get("size"):
                return False
        except OSError:
            return False
    return True


@contextlib.contextmanager
def _folder_lock(output_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the output folder (released by the OS on kill)."""
    lock_path = output_dir / ".napari-sinkhorn-em.lock"
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock
        yield
        return
    fh = open(lock_path, "a+")  # noqa: SIM115 - held for the whole run
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise BatchError(
                f"another napari-sinkhorn-em run is writing to {output_dir}; "
                "wait for it to finish or choose another --output"
            ) from None
        yield
    finally:
        fh.close()


def _remove_stale_temporaries(names: Iterable[Path]) -> None:
    """Delete temporary files left by a killed run next to the given outputs."""
    by_folder: dict[Path, set[str]] = {}
    for path in names:
        by_folder.setdefault(path.parent, set()).add(path.name)
    for parent, wanted in by_folder.items():
        if not parent.is_dir():
            continue
        for f in parent.iterdir():
            # io.atomic_write's temporaries are ".<name>.<random>.tmp" next to <name>
            if not (f.name.startswith(".") and f.name.endswith(".tmp")):
                continue
            base = f.name[1:].rsplit(".", 2)[0]
            if base in wanted and f.is_file():
                with contextlib.suppress(OSError):
                    f.unlink()
                    logger.info("removed incomplete file %s left by an interrupted run", f)


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
    """

    output_dir: Path
    ok: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """0 when no input failed, else 1."""
        return 1 if self.failed else 0


class _FileProgress:
    """Progress callback that shows the current file's iterations in a tqdm bar."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar
        self.stage: str | None = None

    def __call__(self, stage: str, iteration: int, objective: float | None = None) -> None:
        if stage != self.stage or int(iteration) < self.bar.n:  # new stage or a new fit
            self.stage = stage
            self.bar.reset()
            self.bar.set_description_str(f"  {stage}", refresh=False)
            self.bar.set_postfix_str("", refresh=False)
        step = int(iteration) - self.bar.n
        if objective is not None:
            self.bar.set_postfix_str(f"objective {objective:.6g}", refresh=False)
        if step > 0:
            self.bar.update(step)
        return None


def _log_result(inp: BatchInput, rec: Mapping[str, Any]) -> None:
    if rec["status"] == "ok":
        logger.info(
            "ok      %s: %d nuclei in %.2f s",
            inp.path.name,
            rec.get("n_nuclei", 0),
            rec["timings"].get("total", 0.0),
        )
    else:
        err = rec.get("error") or {}
        logger.error("FAILED  %s: %s: %s", inp.path.name, err.get("type"), err.get("message"))


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
        Redo every input even when its outputs are complete and up to date.
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
        When the run cannot start: no inputs, bad parameters, an output would overwrite
        an input, the output folder is locked by another run, bad ``jobs``.
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
    input_paths = {i.path for i in items}
    tasks: dict[str, dict[str, Any]] = {}
    for inp in items:
        labels_path, table_path = output_paths(out, inp.key)
        for p in (labels_path, table_path):
            if p.resolve() in input_paths:
                raise BatchError(f"output {p} would overwrite an input; choose another --output")
        tasks[inp.key] = {
            "input": str(inp.path),
            "key": inp.key,
            "labels": str(labels_path),
            "table": str(table_path),
            # the run's seed as it is: a parameter file exported by the widget then
            # reproduces the widget's result exactly, file by file
            "seed": int(params["seed"]),
            "parameters": params,
        }
    if dask_scheduler is not None:
        _import_distributed()  # clear error before touching the output folder

    out.mkdir(parents=True, exist_ok=True)
    report = BatchReport(output_dir=out)
    with _folder_lock(out):
        _remove_stale_temporaries(
            [Path(t[k]) for t in tasks.values() for k in ("labels", "table")] + [out / RUN_JSON]
        )
        log = RunLog(out)
        todo: list[BatchInput] = []
        for inp in items:
            task = tasks[inp.key]
            fp = input_fingerprint(inp.path)
            task["fingerprint"] = fp
            rec = log.files.get(inp.key)
            if not overwrite and _is_complete(
                rec,
                parameters=params,
                fingerprint=fp,
                seed=task["seed"],
                input_path=inp.path,
                labels_path=Path(task["labels"]),
                table_path=Path(task["table"]),
            ):
                report.skipped.append(inp.key)
                continue
            todo.append(inp)
            log.files[inp.key] = {
                "input": str(inp.path),
                "fingerprint": fp,
                "seed": task["seed"],
                "parameters": params,
                "napari_sinkhorn_em_version": __version__,
                "status": "pending",
            }
        executor = (
            f"dask:{dask_scheduler}"
            if dask_scheduler is not None
            else ("in-process" if jobs == 1 else f"processes:{jobs}")
        )
        log.data["parameters"] = params
        log.data["last_run"] = {
            "started": _now(),
            "finished": None,
            "status": "running",
            "command": list(command) if command is not None else None,
            "executor": executor,
            "n_inputs": len(items),
            "n_ok": 0,
            "n_failed": 0,
            "n_skipped": len(report.skipped),
        }
        log.save()
        if report.skipped:
            logger.info(
                "skipping %d input(s) with complete, up-to-date outputs (--overwrite redoes them)",
                len(report.skipped),
            )

        by_key = {i.key: i for i in items}

        def finish(key: str, rec: dict[str, Any]) -> None:
            entry = log.files[key]
            entry.update({k: v for k, v in rec.items() if k != "key"})
            entry["finished"] = _now()
            (report.ok if rec["status"] == "ok" else report.failed).append(key)
            if rec["status"] != "ok":
                err = rec.get("error") or {}
                report.errors[key] = f"{err.get('type')}: {err.get('message')}"
                # outputs of an earlier run of this input no longer match run.json
                for p in (Path(tasks[key]["labels"]), Path(tasks[key]["table"])):
                    if p.is_file():
                        p.unlink()
                        logger.info("removed outdated %s", p)
            log.data["last_run"]["n_ok"] = len(report.ok)
            log.data["last_run"]["n_failed"] = len(report.failed)
            log.save()
            _log_result(by_key[key], rec)

        status = "interrupted"
        try:
            bar = _make_bar(progress_bar, total=len(items), initial=len(report.skipped))
            try:
                if not todo:
                    pass
                elif dask_scheduler is not None:
                    _run_dask(todo, tasks, dask_scheduler, finish, bar)
                elif jobs == 1:
                    _run_in_process(todo, tasks, finish, bar, progress_bar)
                else:
                    _run_pool(todo, tasks, jobs, finish, bar)
            finally:
                if bar is not None:
                    bar.close()
            status = "finished"
        finally:
            log.data["last_run"]["status"] = status
            log.data["last_run"]["finished"] = _now()
            log.save()
    logger.info(
        "%d segmented, %d skipped, %d failed; outputs and run.json in %s",
        len(report.ok),
        len(report.skipped),
        len(report.failed),
        out,
    )
    return report


def _make_bar(enabled: bool, **kwargs: Any) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(desc="files", unit="file", file=sys.stderr, dynamic_ncols=True, **kwargs)


def _run_in_process(
    todo: list[BatchInput],
    tasks: Mapping[str, dict[str, Any]],
    finish: Callable[[str, dict[str, Any]], None],
    bar: Any,
    show_iterations: bool,
) -> None:
    inner = None
    if show_iterations:
        from tqdm.auto import tqdm

        inner = tqdm(
            desc="  file",
            unit="it",
            file=sys.stderr,
            leave=False,
            position=1,
            dynamic_ncols=True,
        )
    try:
        for inp in todo:
            if bar is not None:
                bar.set_postfix_str(inp.path.name, refresh=True)
            cb = _FileProgress(inner) if inner is not None else None
            rec = process_file(tasks[inp.key], progress=cb)
            finish(inp.key, rec)
            if bar is not None:
                bar.update(1)
    finally:
        if inner is not None:
            inner.close()


def _run_pool(
    todo: list[BatchInput],
    tasks: Mapping[str, dict[str, Any]],
    jobs: int,
    finish: Callable[[str, dict[str, Any]], None],
    bar: Any,
) -> None:
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    # spawn (not fork): safe with Numba's threads and on every platform
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=min(jobs, len(todo)), mp_context=ctx)
    try:
        pending = {pool.submit(process_file, tasks[i.key]): i.key for i in todo}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                key = pending.pop(fut)
                try:
                    rec = fut.result()
                except Exception as exc:  # worker died (e.g. out of memory)
                    rec = _crashed(key, exc)
                finish(key, rec)
                if bar is not None:
                    bar.update(1)
    except BaseException:
        # Ctrl-C or an error here: drop the queued files, do not wait for them
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _crashed(key: str, exc: BaseException) -> dict[str, Any]:
    """Record of a file whose worker died or whose task could not run."""
    from concurrent.futures.process import BrokenProcessPool

    message = f"worker failed: {exc}"
    if isinstance(exc, BrokenProcessPool):
        message = (
            "a worker process died (killed, out of memory, or - when run_batch is called "
            "from a script - the script lacks an `if __name__ == '__main__':` guard); "
            "rerun to retry this file"
        )
    return {
        "key": key,
        "status": "failed",
        "error": {"type": type(exc).__name__, "message": message, "stage": "worker"},
        "timings": {},
    }


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise ImportError(
            "--dask-scheduler needs dask.distributed; install it with "
            "`pip install 'napari-sinkhorn-em[dask]'`"
        ) from exc
    return distributed


def _run_dask(
    todo: list[BatchInput],
    tasks: Mapping[str, dict[str, Any]],
    address: str,
    finish: Callable[[str, dict[str, Any]], None],
    bar: Any,
) -> None:
    distributed = _import_distributed()
    with distributed.Client(address, set_as_default=False) as client:
        futures = {}
        run_id = uuid.uuid4().hex[:8]
        for inp in todo:
            # a unique key per run: a scheduler never hands back an older run's result
            name = f"napari-sinkhorn-em-{inp.key}-{run_id}"
            fut = client.submit(process_file, tasks[inp.key], key=name, pure=False)
            futures[fut] = inp.key
        for fut in distributed.as_completed(list(futures), loop=client.loop):
            key = futures[fut]
            try:
                rec = fut.result()
            except Exception as exc:
                rec = _crashed(key, exc)
            finish(key, rec)
            if bar is not None:
                bar.update(1)


# ----------------------------------------------------------------------------------------
# Synthetic data (``napari-sinkhorn-em synth``)
# ----------------------------------------------------------------------------------------


def write_synthetic_worms(
    output_dir: str | os.PathLike[str],
    n: int,
    *,
    seed: int = 0,
    n_nuclei: int | None = None,
    n_channels: int = 4,
    ndim: int = 3,
    region: str = "head",
    voxel_size: Sequence[float] | None = None,
    progress_bar: bool = False,
) -> list[Path]:
    """Write synthetic worm images with their ground truth.

    For ``i = 0 .. n-1`` writes ``worm_<i>.tif`` (calibrated ImageJ TIFF, channels as
    ImageJ's C axis) into ``output_dir`` and, into ``output_dir/truth``,
    ``worm_<i>_labels.tif`` (true nuclei labels, same voxel size) and
    ``worm_<i>_centres.csv`` (:meth:`SyntheticWorm.table`: ``label``, ``z``, ``y``, ``x``
    in voxels, ``z_um``, ``y_um``, ``x_um``, ``diameter_um``, ``brightness``,
    ``colour_<channel>``; no z columns for 2-D). Worm ``i`` uses the seed
    ``derive_seed(seed, "worm_<i>")``, so worm ``i`` is the same whatever ``n``. The
    truth lives in a sub-folder so that ``segment DIR`` only picks up the images.

    Parameters
    ----------
    output_dir : path-like
        Output folder (created if needed).
    n : int
        Number of worms (>= 1).
    seed : int, default 0
        Base seed (>= 0).
    n_nuclei : int, optional
        Nuclei per worm; None = the generator's default.
    n_channels : int, default 4
        Number of channels (1-6; the last is the pan-nuclear marker).
    ndim : {2, 3}, default 3
        2-D images or 3-D stacks.
    region : {"head", "body"}, default "head"
        Dense head ganglia or a sparser mid-body piece.
    voxel_size : sequence of float, optional
        Voxel size in micrometres (``(z, y, x)`` or ``(y, x)``); None = the generator's
        default (0.8, 0.35, 0.35).
    progress_bar : bool, default False
        Show a tqdm bar on stderr.

    Returns
    -------
    list of pathlib.Path
        The image files written.
    """
    from ..io import write_image, write_labels, write_table
    from ..synthetic import make_worm

    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise BatchError(f"n must be a positive integer, got {n!r}")
    if ndim not in (2, 3):
        raise BatchError(f"ndim must be 2 or 3, got {ndim!r}")
    derive_seed(seed, "")  # validates the seed
    out = Path(output_dir).expanduser()
    truth = out / "truth"
    truth.mkdir(parents=True, exist_ok=True)
    width = max(3, len(str(n - 1)))
    kwargs: dict[str, Any] = {"ndim": ndim, "n_channels": n_channels, "region": region}
    if voxel_size is not None:
        kwargs["voxel_size"] = tuple(float(v) for v in voxel_size)
    if n_nuclei is not None:
        kwargs["n_nuclei"] = n_nuclei
    written = []
    names = [f"worm_{i:0{width}d}" for i in range(n)]
    iterator: Iterable[str] = names
    if progress_bar:
        from tqdm.auto import tqdm

        iterator = tqdm(names, desc="worms", unit="worm", file=sys.stderr)
    for name in iterator:
        worm = make_worm(seed=derive_seed(seed, name), **kwargs)
        spatial = "ZYX"[3 - ndim :]
        if worm.channel_axis is None:
            axes = spatial
        else:
            axes = spatial[: worm.channel_axis] + "C" + spatial[worm.channel_axis :]
        path = out / f"{name}.tif"
        write_image(
            path,
            worm.image,
            voxel_size=worm.voxel_size,
            axes=axes,
            channel_names=None if worm.channel_axis is None else list(worm.channel_names),
        )
        write_labels(truth / f"{name}_labels.tif", worm.labels, worm.voxel_size)
        write_table(truth / f"{name}_centres.csv", worm.table())
        written.append(path)
        logger.info("wrote %s (%d nuclei) and its truth", path, worm.n_nuclei)
    return written
