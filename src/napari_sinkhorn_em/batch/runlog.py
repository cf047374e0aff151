"""The record and the safety of an output folder: ``run.json``, the folder lock,
outputs replaced only when complete, and clean-up of temporaries left by a killed run.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import logging
import os
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .. import __version__
from .._json import jsonable
from .inputs import BatchError
from .parameters import _normalise

__all__ = [
    "RUN_JSON",
    "RUN_SCHEMA",
    "RunLog",
    "folder_lock",
    "is_complete",
    "remove_stale_temporaries",
    "staged_outputs",
    "write_error",
]

logger = logging.getLogger("napari_sinkhorn_em.batch")

#: Name of the run record written into every output folder.
RUN_JSON = "run.json"
#: Version of the ``run.json`` layout (bumped on incompatible changes).
RUN_SCHEMA = 1


def now() -> str:
    """Current UTC time, ISO 8601 to the second."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


_OS_HINTS = {
    errno.ENOSPC: "no space left on the device: free some space, then rerun",
    errno.EFBIG: "file size limit reached (see `ulimit -f`)",
    errno.EDQUOT: "disk quota exceeded: free some space, then rerun",
    errno.EACCES: "permission denied: check the output folder's permissions",
    errno.EROFS: "read-only file system: choose another --output",
}


def write_error(path: Path, exc: OSError) -> OSError:
    """An OSError for a failed write that names the file and the likely cause."""
    reason = exc.strerror or str(exc)
    hint = _OS_HINTS.get(exc.errno or 0)
    message = f"cannot write {path}: {reason}" + (f" ({hint})" if hint else "")
    new = OSError(exc.errno, message)
    new.filename = str(path)
    return new


class RunLog:
    """The ``run.json`` of one output folder, rewritten atomically after every change.

    Layout (``schema`` 1)::

        {"schema": 1, "napari_sinkhorn_em_version": "...", "created": ISO, "updated": ISO,
         "parameters": {...}              # of the latest run (see build_parameters)
         "last_run": {"started", "finished", "status": "running" | "finished" |
                      "interrupted" | "error", "signal", "error", "command", "executor",
                      "n_inputs", "n_ok", "n_failed", "n_skipped"},
         "files": {key: {"input", "fingerprint": {"size", "mtime_ns"}, "seed",
                         "parameters", "napari_sinkhorn_em_version", "status":
                         "pending" | "running" | "ok" | "failed" | "interrupted",
                         "error", "warnings", "timings", "n_nuclei", "fit", "shape",
                         "voxel_size", "voxel_size_source", "channel_axis",
                         "parameters_used", "outputs", "previous", "finished",
                         # time-lapses only (tracked; the table is <key>_tracks.csv):
                         "time_axis", "n_frames", "frames_done" (updated while the file
                         runs, kept when it is interrupted), "n_tracks", "frames": [{"t",
                         "converged", "n_iter", "n_tracks", "new", "ended", "divided",
                         "seconds"}]}}}
    """

    def __init__(self, output_dir: Path) -> None:
        self.path = output_dir / RUN_JSON
        self.data: dict[str, Any] = {
            "schema": RUN_SCHEMA,
            "napari_sinkhorn_em_version": __version__,
            "created": now(),
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
        """Write ``run.json`` atomically (temporary file + rename).

        Raises
        ------
        OSError
            Naming ``run.json`` (e.g. disk full).
        """
        from ..io import atomic_write

        self.data["updated"] = now()
        self.data["napari_sinkhorn_em_version"] = __version__
        text = json.dumps(jsonable(self.data), indent=2, sort_keys=False) + "\n"
        try:
            with atomic_write(self.path, "w", encoding="utf-8") as fh:
                fh.write(text)
        except OSError as exc:
            raise write_error(self.path, exc) from exc


def is_complete(
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
def folder_lock(output_dir: Path) -> Iterator[None]:
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


# Temporaries next to an output <name>: io.atomic_write's ".<name>.<random>.tmp" and the
# staged new outputs ".<name>.new-<id>.tmp" (plus atomic_write's temporary of those,
# "..<name>.new-<id>.tmp.<random>.tmp"). All start with dots + "<name>." and end ".tmp".
def _is_temporary_of(filename: str, name: str) -> bool:
    return (
        filename.startswith(".")
        and filename.endswith(".tmp")
        and filename.lstrip(".").startswith(f"{name}.")
    )


def remove_stale_temporaries(names: Iterable[Path]) -> list[Path]:
    """Delete temporary files left by a killed run next to the given outputs.

    Returns
    -------
    list of pathlib.Path
        The files removed.
    """
    by_folder: dict[Path, set[str]] = {}
    for path in names:
        by_folder.setdefault(path.parent, set()).add(path.name)
    removed = []
    for parent, wanted in by_folder.items():
        if not parent.is_dir():
            continue
        for f in parent.iterdir():
            if not (f.name.startswith(".") and f.name.endswith(".tmp")):
                continue
            if any(_is_temporary_of(f.name, w) for w in wanted) and f.is_file():
                with contextlib.suppress(OSError):
                    f.unlink()
                    removed.append(f)
                    logger.info("removed incomplete file %s left by an interrupted run", f)
    return removed


@contextlib.contextmanager
def staged_outputs(*paths: Path, commit_guard: Any = None) -> Iterator[tuple[Path, ...]]:
    """Write new versions of several outputs under temporary names, then swap them in.

    Yields one temporary path per output, in the same folder. When the block completes,
    each temporary is renamed over its output (:func:`os.replace`, atomic per file), so
    an output is only ever replaced by a complete new file. When the block raises
    (including Ctrl-C), the temporaries are removed and the old outputs are left as
    they were.

    Parameters
    ----------
    *paths : pathlib.Path
        The final outputs; their folders are created if needed.
    commit_guard : context manager factory, optional
        Entered around the renames (e.g. to hold off Ctrl-C until both outputs are
        swapped).
    """
    token = uuid.uuid4().hex[:8]
    staged = []
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
        staged.append(p.parent / f".{p.name}.new-{token}.tmp")
    try:
        yield tuple(staged)
        with commit_guard() if commit_guard is not None else contextlib.nullcontext():
            for tmp, final in zip(staged, paths, strict=True):
                try:
                    os.replace(tmp, final)
                except OSError as exc:
                    raise write_error(final, exc) from exc
    finally:
        for tmp in staged:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
