"""Regenerate the bundled sample images in ``sample_images/`` (deterministic).

Usage::

    python tools/make_sample_images.py [OUTPUT_FOLDER]

Writes ``worm_head.tif`` (ImageJ hyperstack ZCYX uint16 with voxel size and channel
names), ``worm_head_labels.tif`` (true labels) and ``worm_head_centres.csv`` (truth
table) with :func:`napari_sinkhorn_em.synthetic.write_sample_images`; the same
generator version and seed always give the same pixels.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from napari_sinkhorn_em.io import read_image
from napari_sinkhorn_em.synthetic import write_sample_images

DEFAULT_FOLDER = Path(__file__).resolve().parents[1] / "sample_images"


def main(argv: list[str] | None = None) -> int:
    """Write the sample images and print a summary of each file."""
    argv = sys.argv[1:] if argv is None else argv
    folder = Path(argv[0]) if argv else DEFAULT_FOLDER
    paths = write_sample_images(folder)
    for kind, path in paths.items():
        size_kb = path.stat().st_size / 1024
        line = f"{kind:8s} {path}  {size_kb:8.1f} KiB"
        if path.suffix == ".tif":
            img = read_image(path)
            digest = hashlib.sha256(img.data.tobytes()).hexdigest()[:12]
            line += (
                f"  axes={img.axes} shape={img.data.shape} dtype={img.data.dtype}"
                f" voxel_size={img.voxel_size} sha256(pixels)={digest}"
            )
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
