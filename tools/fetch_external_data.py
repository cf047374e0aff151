"""Fetch the real data with truth that the tests and benchmarks take from PyPI.

    python tools/fetch_external_data.py            # into ~/.cache/napari-sinkhorn-em/external
    python tools/fetch_external_data.py --dest DIR

Today one set: the DSB 2018 test image (125 nuclei, masks) inside the stardist wheel, see
:mod:`napari_sinkhorn_em.evaluation.external`. Exit 0 also when the download fails
(no network): the tests that need the image then skip; the message says why.
"""

from __future__ import annotations

import argparse
import sys

from napari_sinkhorn_em.evaluation.external import fetch_dsb2018


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", default=None, help="folder for the data (default: the cache)")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a download fails")
    args = ap.parse_args(argv)
    try:
        where = fetch_dsb2018(args.dest)
    except RuntimeError as exc:
        print(f"fetch_external_data: DSB 2018 image not fetched: {exc}", file=sys.stderr)
        return 1 if args.strict else 0
    print(f"fetch_external_data: DSB 2018 image in {where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
