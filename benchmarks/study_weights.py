"""Study: mixing weights, voxel mass and the soft marginal, through ``segment_nuclei``.

Every variant is a set of :func:`napari_sinkhorn_em.segment_nuclei` keywords, run on
synthetic heads (``make_worm(seed=w)``, 195 nuclei, 4 channels, count given) from the
same starts (``init`` with ``random_state=s``; the peak start does not depend on the
seed) and scored by centre F1 (Hungarian matching within 1.5 um). Differences are paired
per run against the reference variant (EM with fixed Voronoi-of-start weights and
uniform voxel mass). Results: docs/study_random_starts.md.

Run ``NUMBA_NUM_THREADS=1 python benchmarks/study_weights.py --init random`` (one
process per start type runs two in parallel on 2 cores); ``--out F`` appends JSON lines,
``--table F [F ...]`` prints the tables of earlier runs.
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path

import numpy as np

from napari_sinkhorn_em import segment_nuclei
from napari_sinkhorn_em.evaluation.metrics import match_centres
from napari_sinkhorn_em.synthetic import make_worm

UNIFORM = {"voxel_mass": "uniform"}
VARIANTS = {
    # EM
    "em-voronoi": dict(method="em", weights="voronoi", **UNIFORM),  # the reference
    "em-uniform": dict(method="em", weights="uniform", **UNIFORM),
    "em-learned": dict(method="em-learned", weights="voronoi", **UNIFORM),
    "em-nuclei": dict(method="em", weights="nuclei", **UNIFORM),
    "em-nuclei-refits": dict(method="em", weights="nuclei", weight_refits=19, **UNIFORM),
    "em-intensity": {"method": "em", "weights": "voronoi", "voxel_mass": "intensity"},
    # Sinkhorn-EM
    "sk-uniform-exact": {"weights": "uniform", "marginal_penalty": None, "weight_refits": 0},
    "sk-voronoi-exact": {"weights": "voronoi", "marginal_penalty": None, "weight_refits": 0},
    "sk-voronoi-refits-exact": {"weights": "voronoi", "marginal_penalty": None},
    "sk-nuclei-exact": {"weights": "nuclei", "marginal_penalty": None},
    "sk-nuclei-tau10": {"weights": "nuclei", "marginal_penalty": 10.0},
    "sk-nuclei-tau100": {"weights": "nuclei", "marginal_penalty": 100.0},
    "sk-default": {},  # nuclei weights, marginal_penalty 1000, uniform voxel mass
    "sk-default-intensity": {"voxel_mass": "intensity"},
    "sk-intensity-voronoi-exact": {
        "weights": "voronoi",
        "marginal_penalty": None,
        "voxel_mass": "intensity",
    },  # the defaults before this study (with 19 refits from random / k-means++)
}
REFERENCE = "em-voronoi"
DEFAULT_RUN = [
    "em-voronoi", "em-uniform", "em-learned", "em-nuclei", "em-nuclei-refits",
    "sk-uniform-exact", "sk-voronoi-refits-exact", "sk-nuclei-tau100", "sk-default",
    "sk-intensity-voronoi-exact",
]  # fmt: skip


def run(init, worms, seeds, names, out):
    rows = []
    for ws in worms:
        w = make_worm(seed=ws)
        for s in seeds if init != "peaks" else seeds[:1]:
            for name in names:
                t = time.perf_counter()
                r = segment_nuclei(
                    w.image, voxel_size=w.voxel_size, channel_axis=w.channel_axis,
                    nucleus_diameter=2.7, n_nuclei=len(w.centres), init=init,
                    random_state=s, **VARIANTS[name],
                )  # fmt: skip
                m = match_centres(r.centres, w.centres, voxel_size=w.voxel_size, max_distance=1.5)
                row = {
                    "init": init, "worm": ws, "seed": s, "variant": name, "f1": float(m.f1),
                    "iter": int(r.info["n_iter"]), "time": time.perf_counter() - t,
                }  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)
                if out is not None:
                    with open(out, "a", encoding="utf-8") as fh:
                        fh.write(json.dumps(row) + "\n")
    return rows


def table(rows, reference=REFERENCE):
    by = collections.defaultdict(dict)
    for r in rows:
        by[(r["init"], r["variant"])][(r["worm"], r["seed"])] = r
    lines = []
    for init in dict.fromkeys(r["init"] for r in rows):
        ref = by.get((init, reference), {})
        lines += [
            f"\n**{init} starts** (reference: {reference})\n",
            "| variant | runs | centre F1 | reference, same runs | paired diff | "
            "better/tied/worse | time (s) |",
            "|---|---|---|---|---|---|---|",
        ]
        for name in VARIANTS:
            d = by.get((init, name))
            if not d:
                continue
            keys = [k for k in d if k in ref]
            diff = np.array([d[k]["f1"] - ref[k]["f1"] for k in keys])
            refm = np.mean([ref[k]["f1"] for k in keys]) if keys else float("nan")
            lines.append(
                f"| {name} | {len(d)} | {np.mean([v['f1'] for v in d.values()]):.3f} | "
                f"{refm:.3f} | {diff.mean() if keys else float('nan'):+.3f} | "
                f"{np.sum(diff > 1e-9)}/{np.sum(np.abs(diff) <= 1e-9)}/{np.sum(diff < -1e-9)} | "
                f"{np.mean([v['time'] for v in d.values()]):.1f} |"
            )
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--init", default="random", choices=["random", "k-means++", "peaks"])
    ap.add_argument("--worms", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--variants", nargs="+", default=DEFAULT_RUN, choices=list(VARIANTS))
    ap.add_argument("--out", type=Path, default=None, help="append JSON lines here")
    ap.add_argument("--table", type=Path, nargs="+", default=None, help="only print tables")
    ap.add_argument("--reference", default=REFERENCE, choices=list(VARIANTS))
    args = ap.parse_args(argv)
    if args.table:
        rows = [
            json.loads(line)
            for f in args.table
            for line in f.read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
    else:
        rows = run(args.init, args.worms, args.seeds, args.variants, args.out)
    print(table(rows, args.reference))


if __name__ == "__main__":
    main()
