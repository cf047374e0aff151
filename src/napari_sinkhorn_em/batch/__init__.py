"""Batch segmentation of folders of stacks: resumable, in parallel or on a Dask cluster.

Modules: :mod:`.inputs` (discovery, output names, fingerprints, the file task),
:mod:`.parameters` (flags + config, up-front checks), :mod:`.runlog` (``run.json``, the
folder lock, outputs swapped in only when complete), :mod:`.executors` (in-process,
process pool, Dask; Ctrl-C / SIGTERM) and :mod:`.run` (:func:`run_batch`,
:func:`process_file`).
"""

from .executors import Terminated
from .inputs import (
    BatchError,
    BatchInput,
    FileTask,
    derive_seed,
    discover_inputs,
    input_fingerprint,
    output_paths,
)
from .parameters import build_parameters
from .run import BatchReport, process_file, run_batch
from .runlog import RUN_JSON

__all__ = [
    "RUN_JSON",
    "BatchError",
    "BatchInput",
    "BatchReport",
    "FileTask",
    "Terminated",
    "build_parameters",
    "derive_seed",
    "discover_inputs",
    "input_fingerprint",
    "output_paths",
    "process_file",
    "run_batch",
    "write_synthetic_worms",
]


def __getattr__(name: str):
    # lazy: synthetic imports scipy, which a batch run does not need up front
    if name == "write_synthetic_worms":
        from ..synthetic import write_synthetic_worms

        return write_synthetic_worms
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
