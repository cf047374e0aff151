"""Batch segmentation of folders of stacks: resumable, in parallel or on a Dask cluster."""

from .run import (
    RUN_JSON,
    BatchError,
    BatchInput,
    BatchReport,
    build_parameters,
    derive_seed,
    discover_inputs,
    input_fingerprint,
    output_paths,
    process_file,
    run_batch,
    write_synthetic_worms,
)

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
