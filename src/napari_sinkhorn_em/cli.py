"""Command-line interface: ``napari-sinkhorn-em``.

Subcommands:

``segment``
    Segment the nuclei of TIFF files and folders into an output folder (labels TIFF +
    nuclei CSV per input, ``run.json``); resumable, parallel (``--jobs``) or on a Dask
    cluster (``--dask-scheduler``). See :mod:`napari_sinkhorn_em.batch`.
``synth``
    Write synthetic worm stacks with their ground truth, for trying things out.

Headless: imports neither napari nor Qt. The heavy modules (numpy, the pipeline, Dask)
are imported inside the subcommands so that ``--help`` and ``--version`` stay fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from . import __version__
from .params import SegmentationParams


def _param_help(name: str, default: str | None = None) -> str:
    """Help of the flag for a segmentation parameter: its help text and default, both
    from :class:`SegmentationParams` (so that they cannot drift from the API)."""
    value = SegmentationParams.defaults()[name] if default is None else default
    return f"{SegmentationParams.help(name)} (default: {value})"


def _int_at_least(minimum: int, what: str):
    """argparse type: an integer >= ``minimum`` (``what`` names it in the error)."""

    def convert(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {value!r}") from None
        if n < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {n}")
        return n

    return convert


_positive_int = _int_at_least(1, "a positive integer")
_seed = _int_at_least(0, "a non-negative integer")
_count = _int_at_least(1, "a positive integer or 'auto'")


def _n_nuclei(value: str) -> int | str:
    if value.strip().lower() == "auto":
        return "auto"
    return _count(value)


def _positive_float(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}") from None
    if not x > 0 or x == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value!r}")
    return x


def _diameter(text: str) -> float | str:
    """``--nucleus-diameter``: a positive number, or "auto" (estimated from each image;
    given explicitly, it overrides a number from ``--config``)."""
    if text.strip().lower() == "auto":
        return "auto"
    return _positive_float(text)


def _add_segment_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "segment",
        help="segment nuclei in TIFF files and folders",
        description=(
            "Segment nuclei in TIFF stacks. For each input <stem>.tif writes "
            "<stem>_labels.tif and <stem>_nuclei.csv into the output folder, and one run.json "
            "with version, parameters and per-file status, timings and errors. A time-lapse "
            "(ImageJ frames / OME T axis, or --time-axis) is tracked: <stem>_labels.tif "
            "over T (a nucleus keeps its label) and <stem>_tracks.csv. Rerunning "
            "skips inputs whose outputs are complete and were made with the same parameters. "
            "Exit code: 0 if every file succeeded, 1 if any failed, 2 for usage errors."
        ),
        epilog=(
            "Voxel size: --voxel-size, else the file's ImageJ/OME metadata, else the config's "
            "voxel_size; 2-D images without any default to 1 um per pixel, 3-D stacks "
            "without any fail with a message asking for --voxel-size. "
            "Flags override the --config file. Guide: docs/batch.md."
        ),
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="TIFF files and/or folders")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder")
    p.add_argument(
        "--recursive", action="store_true", help="also search sub-folders of folder inputs"
    )
    p.add_argument(
        "--n-nuclei",
        type=_n_nuclei,
        default=None,
        metavar="N|auto",
        help=_param_help("n_nuclei", "auto"),
    )
    p.add_argument(
        "--voxel-size",
        type=_positive_float,
        nargs="+",
        default=None,
        metavar="SIZE",
        help=(
            "voxel size in micrometres: Z Y X (3-D) or Y X (2-D); overrides the metadata "
            "(takes all numbers that follow: put it after the inputs)"
        ),
    )
    p.add_argument(
        "--channel-axis",
        type=int,
        default=None,
        metavar="A",
        help=f"{SegmentationParams.help('channel_axis')}, as an index into the stored array; "
        "overrides the metadata",
    )
    p.add_argument(
        "--method",
        choices=SegmentationParams.choices("method"),
        default=None,
        help=_param_help("method"),
    )
    p.add_argument(
        "--nucleus-diameter",
        type=_diameter,
        default=None,
        metavar="UM",
        help=_param_help("nucleus_diameter")
        + "; the value used is in each result's info.nucleus_diameter_um",
    )
    p.add_argument(
        "--time-axis",
        type=int,
        default=None,
        metavar="A",
        help="index of the time axis in the stored array: every input is a time-lapse, "
        "tracked through time (<stem>_labels.tif over T + <stem>_tracks.csv); default: "
        "from the metadata (ImageJ frames / OME T)",
    )
    p.add_argument(
        "--motion",
        choices=("deformable", "rigid", "translation", "none"),
        default=None,
        help="time-lapses: motion model between frames (default deformable)",
    )
    p.add_argument(
        "--reference-frame",
        type=_int_at_least(0, "a non-negative integer"),
        default=None,
        metavar="T",
        help="time-lapses: the frame segmented from scratch, tracked forward and back (default 0)",
    )
    p.add_argument(
        "--config",
        default=None,
        metavar="PARAMS.JSON",
        help="parameter file as exported by the napari widget (flags override it)",
    )
    p.add_argument(
        "--seed",
        type=_seed,
        default=None,
        metavar="S",
        help="base random seed; each file's seed derives from it and the file name (default 0)",
    )
    p.add_argument(
        "-j",
        "--jobs",
        type=_positive_int,
        default=1,
        metavar="N",
        help="number of worker processes on this machine (default 1)",
    )
    p.add_argument(
        "--dask-scheduler",
        default=None,
        metavar="ADDRESS",
        help="submit the files to a running dask.distributed scheduler (e.g. tcp://host:8786)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="redo inputs whose outputs are up to date"
    )
    p.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bars; one log line per file"
    )
    p.set_defaults(func=_cmd_segment)


def _add_synth_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth",
        help="write synthetic worm stacks with their ground truth",
        description=(
            "Write N synthetic C. elegans-like stacks as calibrated ImageJ TIFFs "
            "(worm_000.tif, ...) into DIR, and their ground truth into DIR/truth "
            "(worm_000_labels.tif, worm_000_centres.csv)."
        ),
    )
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder")
    p.add_argument("--n", type=_positive_int, required=True, metavar="N", help="number of worms")
    p.add_argument("--seed", type=_seed, default=0, metavar="S", help="base seed (default 0)")
    p.add_argument(
        "--n-nuclei",
        type=_positive_int,
        default=None,
        metavar="K",
        help="nuclei per worm (default: the generator's default)",
    )
    p.add_argument(
        "--channels",
        type=_positive_int,
        default=4,
        metavar="C",
        help="number of channels, 1-6 (default 4)",
    )
    p.add_argument("--2d", dest="two_d", action="store_true", help="2-D images instead of stacks")
    p.add_argument(
        "--region",
        choices=("head", "body"),
        default="head",
        help="dense head ganglia or a sparser mid-body piece (default head)",
    )
    p.add_argument(
        "--voxel-size",
        type=_positive_float,
        nargs="+",
        default=None,
        metavar="SIZE",
        help="voxel size in micrometres, Z Y X or Y X (default 0.8 0.35 0.35)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_synth)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``napari-sinkhorn-em`` command."""
    parser = argparse.ArgumentParser(
        prog="napari-sinkhorn-em",
        description=(
            "Segment nuclei in C. elegans fluorescence stacks by Gaussian-mixture "
            "clustering with Sinkhorn-EM."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_segment_parser(sub)
    _add_synth_parser(sub)
    return parser


class _TqdmHandler(logging.Handler):
    """Log handler that prints through tqdm so that progress bars stay intact."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def _setup_logging(quiet: bool) -> logging.Handler:
    if quiet:
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s"))
    else:
        handler = _TqdmHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    handler.setLevel(logging.INFO)
    log = logging.getLogger("napari_sinkhorn_em")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def _cmd_segment(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .batch import build_parameters, run_batch
    from .batch.executors import handle_interrupts, ignore_further_interrupts

    # Ctrl-C / SIGTERM from here on: the run stops, records the interruption and exits
    # 130 / 143; once run_batch has returned, the run is recorded and its exit code final
    # (called from Python, e.g. in tests, the previous handlers come back afterwards)
    console = getattr(args, "console_script", False)
    with handle_interrupts(restore=not console):
        try:
            return _segment(args, argv, build_parameters, run_batch)
        finally:
            if console:
                # the run is recorded (finished or interrupted): a late signal must not
                # change the exit code, also while the interpreter shuts down (signals
                # ignored at the OS level stay ignored there)
                ignore_further_interrupts(for_good=True)


def _segment(args: argparse.Namespace, argv: Sequence[str], build_parameters, run_batch) -> int:
    config = None
    if args.config is not None:
        from .pipeline.segment import load_params

        config = load_params(args.config)
    parameters = build_parameters(
        config,
        n_nuclei=args.n_nuclei,
        voxel_size=args.voxel_size,
        channel_axis=args.channel_axis,
        method=args.method,
        nucleus_diameter=args.nucleus_diameter,
        seed=args.seed,
        time_axis=args.time_axis,
        motion=args.motion,
        reference_frame=args.reference_frame,
    )
    report = run_batch(
        args.inputs,
        args.output,
        parameters=parameters,
        recursive=args.recursive,
        jobs=args.jobs,
        dask_scheduler=args.dask_scheduler,
        overwrite=args.overwrite,
        progress_bar=not args.quiet,
        command=["napari-sinkhorn-em", *argv],
    )
    for key in report.failed:
        print(f"failed: {key}: {report.errors[key]}", file=sys.stderr)
    return report.exit_code


def _cmd_synth(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from .batch import write_synthetic_worms

    write_synthetic_worms(
        args.output,
        args.n,
        seed=args.seed,
        n_nuclei=args.n_nuclei,
        n_channels=args.channels,
        ndim=2 if args.two_d else 3,
        region=args.region,
        voxel_size=args.voxel_size,
        progress_bar=not args.quiet,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code.

    Exit codes: 0 success, 1 some input failed, 2 usage or set-up error (bad
    arguments, no inputs, unreadable config, missing optional dependency), 130
    interrupted (Ctrl-C), 143 terminated (SIGTERM).
    """
    console_script = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.console_script = console_script
    if args.command is None:
        parser.print_help()
        return 0
    package_logger = logging.getLogger("napari_sinkhorn_em")
    old_level = package_logger.level
    handler = _setup_logging(getattr(args, "quiet", False))
    try:
        return int(args.func(args, argv))
    except (ValueError, ImportError, OSError) as exc:
        print(f"napari-sinkhorn-em {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except SystemExit as exc:
        from .batch.executors import Terminated

        if not isinstance(exc, Terminated):
            raise
        print("terminated; rerun the same command to resume", file=sys.stderr)
        return int(exc.code)
    finally:
        package_logger.removeHandler(handler)
        package_logger.setLevel(old_level)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
