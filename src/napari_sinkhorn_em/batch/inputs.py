"""Inputs of a batch run: discovery, output names, fingerprints, seeds and the file task.

Headless and light: imports neither napari, Qt nor the pipeline.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "LABELS_SUFFIX",
    "TABLE_SUFFIX",
    "TRACKS_SUFFIX",
    "BatchError",
    "BatchInput",
    "FileTask",
    "derive_seed",
    "discover_inputs",
    "input_fingerprint",
    "output_paths",
]

logger = logging.getLogger("napari_sinkhorn_em.batch")

#: Suffixes of the outputs written for an input ``<stem>.tif``.
LABELS_SUFFIX = "_labels.tif"
TABLE_SUFFIX = "_nuclei.csv"
#: Table of a time-lapse input (one row per nucleus per frame), instead of TABLE_SUFFIX.
TRACKS_SUFFIX = "_tracks.csv"
TIFF_EXTENSIONS = (".tif", ".tiff")


class BatchError(ValueError):
    """A batch run cannot start (bad inputs, bad output folder, bad parameters)."""


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
        key also seeds the file's random number generator. A time-lapse writes
        ``<key>_tracks.csv`` instead of ``<key>_nuclei.csv``.
    """

    path: Path
    key: str


@dataclass(frozen=True)
class FileTask:
    """Everything a worker needs to segment one file (plain, picklable data).

    Attributes
    ----------
    input : str
        Absolute path of the input file.
    key : str
        Output key (see :class:`BatchInput`).
    labels, table : str
        Absolute paths of the two outputs.
    seed : int
        Random seed of the segmentation.
    parameters : dict
        The run's parameters, as returned by :func:`~.build_parameters`.
    fingerprint : dict, optional
        ``{"size", "mtime_ns"}`` of the input when the run started.
    """

    input: str
    key: str
    labels: str
    table: str
    seed: int
    parameters: Mapping[str, Any]
    fingerprint: Mapping[str, int] | None = None

    @classmethod
    def from_mapping(cls, task: Mapping[str, Any]) -> FileTask:
        """Build a task from the plain dict accepted by earlier versions."""
        missing = [k for k in ("input", "key", "labels", "table", "parameters") if k not in task]
        if missing:
            raise BatchError(f"task is missing {', '.join(missing)}")
        seed = task.get("seed", task["parameters"].get("seed", 0))
        return cls(
            input=str(task["input"]),
            key=str(task["key"]),
            labels=str(task["labels"]),
            table=str(task["table"]),
            seed=int(seed),
            parameters=task["parameters"],
            fingerprint=task.get("fingerprint"),
        )


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
    """True for a ``<stem>_labels.tif`` that sits next to its ``<stem>_nuclei.csv`` (or,
    for a time-lapse, ``<stem>_tracks.csv``)."""
    if not path.name.endswith(LABELS_SUFFIX):
        return False
    stem = path.name[: -len(LABELS_SUFFIX)]
    return any(
        (path.parent / f"{stem}{suffix}").is_file() for suffix in (TABLE_SUFFIX, TRACKS_SUFFIX)
    )


def _is_relative_to(path: Path, other: Path) -> bool:
    try:
        path.relative_to(other)
    except ValueError:
        return False
    return True


def _broken_link(path: Path) -> str:
    """``"name -> target"`` of a symbolic link whose target does not exist."""
    try:
        target = os.readlink(path)
    except OSError:  # pragma: no cover - raced away
        target = "?"
    return f"{path} -> {target}"


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
        Symbolic links whose target does not exist are skipped with a warning naming
        them.
    recursive : bool, default False
        Also search the sub-folders of folder inputs. The sub-folder path becomes part of
        the output name (outputs mirror the input tree).
    output_dir : path-like, optional
        The output folder; files inside it are never inputs when it lies within (or
        contains) a searched folder.

    Returns
    -------
    list of BatchInput
        Unique files (by resolved path), sorted by output key then path; stable across
        runs and machines.

    Raises
    ------
    BatchError
        When an input does not exist (or is a broken symbolic link), when nothing was
        found (saying why: e.g. every file lies inside the output folder), or when two
        inputs would write the same outputs (same output key).
    """
    out = Path(output_dir).resolve() if output_dir is not None else None
    found: dict[Path, str] = {}
    inside_output: list[Path] = []
    for item in inputs:
        p = Path(item).expanduser()
        if not p.exists():
            if p.is_symlink():
                raise BatchError(f"input is a broken symbolic link: {_broken_link(p)}")
            raise BatchError(f"input not found: {str(item)!r}")
        rp = p.resolve()
        if rp.is_dir():
            pattern = "**/*" if recursive else "*"
            for f in sorted(rp.glob(pattern)):
                if not _is_tiff_name(f.name):
                    continue
                rel = f.relative_to(rp)
                if any(part.startswith(".") for part in rel.parts):
                    continue
                if f.is_symlink() and not f.exists():
                    logger.warning("skipping broken symbolic link %s", _broken_link(f))
                    continue
                if not f.is_file():
                    continue
                if out is not None and out != rp and _is_relative_to(f.resolve(), out):
                    inside_output.append(f)
                    continue
                if _is_own_output(f):
                    continue
                key = (rel.parent / _strip_tiff_suffix(f.name)).as_posix()
                found.setdefault(f.resolve(), key)
        else:
            found.setdefault(rp, _strip_tiff_suffix(rp.name))
    if not found:
        if inside_output:
            raise BatchError(
                f"no input files: all {len(inside_output)} .tif/.tiff file(s) found lie "
                f"inside the output folder {out}, whose files are never taken as inputs "
                "(they could be outputs of this tool); choose an --output folder outside "
                "the input folders"
            )
        raise BatchError(
            "no input files found (folders are searched for .tif/.tiff files"
            + ("" if recursive else "; use --recursive for sub-folders")
            + ")"
        )
    if inside_output:
        logger.warning(
            "skipping %d file(s) inside the output folder %s (e.g. %s)",
            len(inside_output),
            out,
            inside_output[0],
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


def output_paths(
    output_dir: str | os.PathLike[str], key: str, *, time_lapse: bool = False
) -> tuple[Path, Path]:
    """Return ``(labels_path, table_path)`` of the input with output key ``key``: the
    table is ``<key>_nuclei.csv``, or ``<key>_tracks.csv`` for a time-lapse."""
    base = Path(output_dir) / key
    return (
        base.parent / f"{base.name}{LABELS_SUFFIX}",
        base.parent / f"{base.name}{TRACKS_SUFFIX if time_lapse else TABLE_SUFFIX}",
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
