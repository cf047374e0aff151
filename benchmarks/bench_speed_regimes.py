"""No speed cliffs: each regime of ``bench_real.py`` against a synthetic head of the same
voxel count, in the same run.

Issue 12's speed target: "time stays within 2x of a synthetic head of the same voxel
count for every input". For every row of :mod:`bench_real` (real sets and synthetic
regimes) this script times ``segment_nuclei`` with defaults only (voxel size and channel
axis given, nothing else), then a NeuroPAL-like head (``synthetic.make_worm``, 4 channels,
the same number of spatial dimensions) with the same number of spatial voxels -- the
default head cut, or extended by mirrored copies, along the worm axis, so that its
nucleus density and sampling stay a head's -- also with defaults only. The ratio ``regime / head`` is the number
the target speaks of (<= 2). Each pair runs back to back, ``--repeat`` times (median), so
that a loaded machine slows both alike.

Usage::

    python benchmarks/bench_speed_regimes.py               # every row (~10-20 min)
    python benchmarks/bench_speed_regimes.py --only embryo # rows whose name contains it
    python benchmarks/bench_speed_regimes.py --repeat 3
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_real import case_builders, warm_up

from napari_sinkhorn_em import segment_nuclei
from napari_sinkhorn_em.synthetic import make_worm


def matched_head(n_voxels: int, ndim: int, seed: int = 0):
    """A NeuroPAL-like head (``make_worm``, 4 channels, channel axis 0) with ``n_voxels``
    spatial voxels: the default head cut or extended along the worm axis (x), extended by
    mirrored copies, so that the nucleus density and the sampling stay the head's.

    Returns ``(image, voxel_size)``."""
    w = make_worm(ndim=ndim, seed=seed)
    img = w.image
    cross = int(np.prod(img.shape[1:-1]))
    length = max(16, round(n_voxels / cross))
    pieces, total, flip = [], 0, False
    while total < length:
        piece = img[..., ::-1] if flip else img
        pieces.append(piece[..., : length - total])
        total += pieces[-1].shape[-1]
        flip = not flip
    return np.ascontiguousarray(np.concatenate(pieces, axis=-1)), w.voxel_size


def _time(image, voxel_size, channel_axis) -> tuple[float, int]:
    t = time.perf_counter()
    r = segment_nuclei(image, voxel_size=voxel_size, channel_axis=channel_axis, random_state=0)
    return time.perf_counter() - t, len(r.table)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", metavar="NAME", help="rows whose name contains NAME")
    ap.add_argument("--repeat", type=int, default=1, help="pairs per row (median)")
    args = ap.parse_args(argv)
    builders = case_builders()
    if args.only:
        builders = [b for b in builders if args.only.lower() in b[0].lower()]
    if not builders:
        print("no rows selected")
        return 1
    warm_up()

    lines = [
        "| data | spatial shape | voxels | time (s) | head shape | head time (s) | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    worst = 0.0
    for name, _, build in builders:
        case = build()
        ch = case.channel_axis
        spatial = tuple(
            n for i, n in enumerate(case.image.shape) if ch is None or i != ch % case.image.ndim
        )
        n_vox = int(np.prod(spatial))
        head, head_vs = matched_head(n_vox, len(spatial))
        t_case, t_head = [], []
        for _ in range(args.repeat):
            t_case.append(_time(case.image, case.voxel_size, ch)[0])
            t_head.append(_time(head, head_vs, 0)[0])
        tc, th = statistics.median(t_case), statistics.median(t_head)
        worst = max(worst, tc / th)
        hs = head.shape[1:]
        line = (
            f"| {name} | {'x'.join(map(str, spatial))} | {n_vox / 1e6:.2f} M | {tc:.1f} | "
            f"{'x'.join(map(str, hs))} | {th:.1f} | {tc / th:.2f} |"
        )
        lines.append(line)
        print(line, flush=True)
    print()
    print(f"{platform.processor() or platform.machine()}; defaults only; median of {args.repeat}")
    print("\n".join(lines))
    print(f"\nworst ratio {worst:.2f} (target <= 2)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
