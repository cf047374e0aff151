"""Command-line interface: ``napari-sinkhorn-em``.

Headless: imports neither napari nor Qt.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``napari-sinkhorn-em`` command."""
    parser = argparse.ArgumentParser(
        prog="napari-sinkhorn-em",
        description=(
            "Segment nuclei in C. elegans fluorescence stacks by Gaussian-mixture "
            "clustering with Sinkhorn-EM."
        ),
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}"
    )
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return 0  # pragma: no cover - subcommands dispatch here


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
