"""Any sampling: the default pipeline over z-steps of 0.2-2.5 um and pixels of 0.1-1 um.

Issue 12 asks the pipeline to work for z-steps from 0.2 to 2.5 um and in-plane pixels
from 0.1 to 1 um with nothing but the voxel size given. This script renders the same
synthetic scenes at each sampling and runs, in the same process,

* **ours**: ``segment_nuclei(image, voxel_size=...)`` with defaults only;
* **baseline**: LoG + watershed (:func:`~napari_sinkhorn_em.evaluation.baseline.log_watershed`)
  given the true nucleus diameter.

Scenes: an embryo-like stack with 100 nuclei of about 4.3 um (``make_embryo``; the
z-step and the pixel varied one at a time around 1.0 x 0.3 x 0.3 um) and the whole-brain
stack (``make_whole_brain``, ~2 um neurons) at z-steps of 1.5, 2.0 and 2.5 um (the stack's
physical size kept). Scores: centre F1 (Hungarian matching within half the median
nearest-neighbour distance of the truth), label AP@0.5, fit iterations and convergence,
time.

Usage::

    python benchmarks/bench_sampling.py            # every row (~10 min on 2 cores)
    python benchmarks/bench_sampling.py --only brain
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

from napari_sinkhorn_em import segment_nuclei
from napari_sinkhorn_em.evaluation.baseline import log_watershed
from napari_sinkhorn_em.evaluation.metrics import average_precision, match_centres_nn
from napari_sinkhorn_em.synthetic import make_embryo, make_whole_brain

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_real import warm_up


def scenes():
    """``(name, build)`` for every row; ``build()`` returns a synthetic stack with truth."""
    out = []
    for dz in (0.2, 0.5, 1.0, 1.5, 2.5):
        out.append(
            (f"embryo, z-step {dz} um, pixel 0.3 um",
             lambda dz=dz: make_embryo(n_nuclei=100, voxel_size=(dz, 0.3, 0.3), seed=0))
        )  # fmt: skip
    for px in (0.1, 0.6, 1.0):
        out.append(
            (f"embryo, z-step 1.0 um, pixel {px} um",
             lambda px=px: make_embryo(n_nuclei=100, voxel_size=(1.0, px, px), seed=0))
        )  # fmt: skip
    for dz in (1.5, 2.0, 2.5):
        nz = round(30.0 / dz)  # the same 30 um of tissue
        out.append(
            (f"whole brain, z-step {dz} um",
             lambda dz=dz, nz=nz: make_whole_brain(shape=(nz, 169, 411),
                                                   voxel_size=(dz, 0.27, 0.27), seed=0))
        )  # fmt: skip
    return out


def _row(name, w) -> str:
    truth = w.table()
    cols = [c for c in ("z", "y", "x") if c in truth.columns]
    centres = truth[cols].to_numpy(float)
    d_true = float(np.median(truth["diameter_um"]))
    t = time.perf_counter()
    r = segment_nuclei(w.image, voxel_size=w.voxel_size, channel_axis=0, random_state=0)
    t_ours = time.perf_counter() - t
    mo = match_centres_nn(r.centres, centres, voxel_size=w.voxel_size, fraction=0.5)
    ap_o = average_precision(r.labels, w.labels, threshold=0.5)["ap"]
    t = time.perf_counter()
    lab, cen = log_watershed(
        w.image, voxel_size=w.voxel_size, channel_axis=0, nucleus_diameter=d_true
    )
    t_base = time.perf_counter() - t
    mb = match_centres_nn(cen, centres, voxel_size=w.voxel_size, fraction=0.5)
    ap_b = average_precision(lab, w.labels, threshold=0.5)["ap"]
    d_est = r.info.get("nucleus_diameter_um", float("nan"))
    shape = "x".join(map(str, w.image.shape[1:]))
    return (
        f"| {name} | {shape} | {len(centres)} | {d_true:.1f} / {d_est:.1f} | {mo.f1:.2f} "
        f"({mo.recall:.2f}) | {ap_o:.2f} | {r.info['n_iter']}{'' if r.info['converged'] else '*'}"
        f" | {t_ours:.1f} | {mb.f1:.2f} ({mb.recall:.2f}) | {ap_b:.2f} | {t_base:.1f} |"
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", metavar="NAME", help="rows whose name contains NAME")
    args = ap.parse_args(argv)
    rows = scenes()
    if args.only:
        rows = [r for r in rows if args.only.lower() in r[0].lower()]
    if not rows:
        print("no rows selected")
        return 1
    warm_up()
    lines = [
        "| data | shape | n true | diameter true / estimated (um) | ours F1 (recall) | "
        "ours AP50 | iterations (* = not converged) | ours time (s) | baseline F1 (recall) | "
        "baseline AP50 | baseline time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, build in rows:
        line = _row(name, build())
        lines.append(line)
        print(line, flush=True)
    print()
    print(f"{platform.processor() or platform.machine()}; ours: defaults, voxel size given; "
          "baseline: LoG + watershed given the true diameter")  # fmt: skip
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
