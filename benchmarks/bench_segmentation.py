"""Segmentation accuracy and speed benchmark on synthetic NeuroPAL-like worm heads.

Accuracy: on >= 5 synthetic heads (195 nuclei, 4 channels, voxel 0.8 x 0.35 x 0.35 um,
uneven background, autofluorescent granules), compares

* Sinkhorn-EM (``method="sinkhorn"``), EM with the same fixed weights (``"em"``) and
  classic EM with learned weights (``"em-learned"``), each from the same starts: the
  detected LoG peaks and random foreground voxels (several seeds);
* the classical scikit-image baseline (LoG peaks + watershed);
* the default pipeline with the nucleus count estimated;

by centre F1 (Hungarian one-to-one matching within 1.5 um), mean localisation error of
the matched centres and label AP at IoU 0.5. Ablations of the modelling choices follow.

Speed: the 40 x 90 x 470 x 4 stack (first call with an empty Numba cache in a fresh
process, then warm), peak traced memory vs input size, and a stack with 10x the voxels
(10 different heads side by side) against the same heads one by one.

Writes the markdown tables to docs/benchmarks_segmentation.md and prints them.

Usage::

    python benchmarks/bench_segmentation.py            # full (several minutes on 2 cores)
    python benchmarks/bench_segmentation.py --quick    # 2 worms, 1 random seed, no ablations
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from napari_sinkhorn_em import segment_nuclei
from napari_sinkhorn_em.evaluation.baseline import log_watershed
from napari_sinkhorn_em.evaluation.metrics import average_precision, match_centres
from napari_sinkhorn_em.synthetic import make_worm

ROOT = Path(__file__).resolve().parents[1]
DIAMETER = 2.7  # the generator's mean nucleus diameter


def score(w, centres, labels):
    m = match_centres(centres, w.centres, voxel_size=w.voxel_size, max_distance=1.5)
    ap = average_precision(labels, w.labels, threshold=0.5)["ap"]
    return {"f1": m.f1, "err": m.mean_error, "ap": ap, "n": m.n_pred}


def run_pipeline(w, **kw):
    kw.setdefault("nucleus_diameter", DIAMETER)
    # peak starts draw extra seeds when the given count exceeds the detected peaks:
    # seeded, so that two runs of this benchmark agree
    kw.setdefault("random_state", 0)
    t = time.perf_counter()
    r = segment_nuclei(w.image, voxel_size=w.voxel_size, channel_axis=w.channel_axis, **kw)
    s = score(w, r.centres, r.labels)
    s["time"] = time.perf_counter() - t
    s["iter"] = r.info["n_iter"]
    return s


def run_baseline(w, n_nuclei):
    t = time.perf_counter()
    lab, cen = log_watershed(
        w.image,
        voxel_size=w.voxel_size,
        channel_axis=w.channel_axis,
        nucleus_diameter=DIAMETER,
        n_nuclei=n_nuclei,
    )
    s = score(w, cen, lab)
    s["time"] = time.perf_counter() - t
    s["iter"] = 0
    return s


def fmt(vals, digits=3):
    v = np.asarray(vals, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return "n/a"
    if v.size == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std():.{digits}f}"


def table(rows, title):
    lines = [
        f"### {title}",
        "",
        "| configuration | runs | centre F1 | loc. error (um) | AP@0.5 | nuclei found | "
        "iterations | time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, res in rows:
        lines.append(
            f"| {name} | {len(res)} | {fmt([r['f1'] for r in res])} | "
            f"{fmt([r['err'] for r in res])} | {fmt([r['ap'] for r in res])} | "
            f"{fmt([r['n'] for r in res], 1)} | {fmt([r['iter'] for r in res], 1)} | "
            f"{fmt([r['time'] for r in res], 2)} |"
        )
    return "\n".join(lines) + "\n"


def accuracy(worm_seeds, init_seeds, ablations):
    worms = [make_worm(seed=s) for s in worm_seeds]
    out = []
    rows = []
    paired = {}
    res_base_k = [run_baseline(w, len(w.centres)) for w in worms]
    res_base_auto = [run_baseline(w, None) for w in worms]
    rows.append(("LoG + watershed (count given)", res_base_k))
    rows.append(("LoG + watershed (count from peaks)", res_base_auto))
    for method in ("sinkhorn", "em", "em-learned"):
        res = [run_pipeline(w, method=method, n_nuclei=len(w.centres)) for w in worms]
        rows.append((f"{method}, init peaks", res))
        paired[f"{method} peaks"] = np.array([r["f1"] for r in res])
        print(rows[-1][0], fmt([r["f1"] for r in res]), flush=True)
    for method in ("sinkhorn", "em", "em-learned"):
        res = [
            run_pipeline(w, method=method, n_nuclei=len(w.centres), init="random", random_state=s)
            for w in worms
            for s in init_seeds
        ]
        paired[method] = np.array([r["f1"] for r in res])
        rows.append((f"{method}, init random voxels", res))
        print(rows[-1][0], fmt([r["f1"] for r in res]), flush=True)
    for method in ("sinkhorn", "em-learned"):
        res = [
            run_pipeline(
                w, method=method, n_nuclei=len(w.centres), init="k-means++", random_state=s
            )
            for w in worms
            for s in init_seeds
        ]
        paired[f"{method} k-means++"] = np.array([r["f1"] for r in res])
        rows.append((f"{method}, init k-means++", res))
        print(rows[-1][0], fmt([r["f1"] for r in res]), flush=True)
    res = [
        run_pipeline(w, method="em", n_nuclei=len(w.centres), init="k-means++", random_state=s)
        for w in worms
        for s in init_seeds
    ]
    paired["em k-means++"] = np.array([r["f1"] for r in res])
    rows.append(("em, init k-means++", res))
    for init in ("random", "k-means++"):
        # control: the outer loop of nucleus weights around EM instead of Sinkhorn-EM
        res = [
            run_pipeline(
                w,
                method="em",
                n_nuclei=len(w.centres),
                init=init,
                random_state=s,
                weight_refits=19,
            )
            for w in worms
            for s in init_seeds
        ]
        name = "random voxels" if init == "random" else init
        rows.append((f"em + 19 weight refits (control), init {name}", res))
        print(rows[-1][0], fmt([r["f1"] for r in res]), flush=True)
    res = [run_pipeline(w) for w in worms]
    rows.append(("default pipeline, count estimated (sinkhorn, peaks)", res))
    out.append(
        table(
            rows,
            f"Accuracy: {len(worms)} synthetic heads (195 nuclei, 4 channels), "
            f"count given unless stated; random starts: seeds {list(init_seeds)}",
        )
    )
    lines = [
        "Paired per run (same worm, same seed, so the same start), centre F1 of Sinkhorn-EM "
        "minus that of EM with fixed weights:",
        "",
    ]
    for start, suffix in (
        ("detected peaks", " peaks"),
        ("random voxels", ""),
        ("k-means++", " k-means++"),
    ):
        d = paired["sinkhorn" + suffix] - paired["em" + suffix]
        lines.append(
            f"- {start}: mean {d.mean():+.3f}, Sinkhorn-EM better / tied / worse on "
            f"{int(np.sum(d > 1e-9))} / {int(np.sum(np.abs(d) <= 1e-9))} / "
            f"{int(np.sum(d < -1e-9))} of {d.size} runs"
        )
    out.append("\n".join(lines) + "\n")
    if ablations:
        arows = []
        base = {"n_nuclei": None}
        variants = [
            ("default (nucleus weights, uniform voxel mass, marginal_penalty 1000)", {}),
            ("uniform weights", {"weights": "uniform"}),
            ("intensity voxel mass", {"voxel_mass": "intensity"}),
            ("exact marginal (marginal_penalty None)", {"marginal_penalty": None}),
            ("positions only (intensity_weight 0)", {"intensity_weight": 0.0}),
            ("intensity_weight 3", {"intensity_weight": 3.0}),
            ("1 weight re-estimation (outer loop)", {"weight_refits": 1}),
            ("no granule suppression", {"suppress_granules": False}),
            ("no background subtraction", {"background_scale": 0.0}),
            ("nucleus_diameter 3.0 (default, 10% too large)", {"nucleus_diameter": 3.0}),
        ]
        for name, kw in variants:
            res = [run_pipeline(w, **{**base, **kw}) for w in worms]
            arows.append((name, res))
            print(name, fmt([r["f1"] for r in res]), flush=True)
        out.append(
            table(
                arows, "Ablations (Sinkhorn-EM from peaks with the count estimated unless stated)"
            )
        )
    return out


_FIRST_CALL = """
import time, numpy as np
from napari_sinkhorn_em.synthetic import make_worm
w = make_worm(seed=0, shape=(40, 90, 470))
from napari_sinkhorn_em import segment_nuclei
t = time.perf_counter()
segment_nuclei(w.image, voxel_size=w.voxel_size, channel_axis=0, nucleus_diameter=2.7,
               random_state=0)
print(time.perf_counter() - t)
"""


def speed():
    lines = ["### Speed and memory", ""]
    env = dict(os.environ)
    with tempfile.TemporaryDirectory() as cache:
        env["NUMBA_CACHE_DIR"] = cache
        t = time.perf_counter()
        res = subprocess.run(
            [sys.executable, "-c", _FIRST_CALL], env=env, capture_output=True, text=True, check=True
        )
        first = float(res.stdout.strip().splitlines()[-1])
        lines.append(
            f"- First call in a fresh process with an empty Numba cache (includes JIT "
            f"compilation): {first:.2f} s (process wall {time.perf_counter() - t:.1f} s)."
        )
    w = make_worm(seed=0, shape=(40, 90, 470))
    kw = {
        "voxel_size": w.voxel_size,
        "channel_axis": 0,
        "nucleus_diameter": DIAMETER,
        "random_state": 0,
    }
    segment_nuclei(w.image, **kw)  # warm-up (JIT cache in this process)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        r = segment_nuclei(w.image, **kw)
        times.append(time.perf_counter() - t)
    warm = min(times)
    tim = r.info["timings"]
    lines.append(
        f"- Warm, 40 x 90 x 470 x 4 ({w.image.nbytes / 1e6:.1f} MB uint16, "
        f"{r.info['n_components']} components, {r.info['n_foreground_voxels']} foreground "
        f"voxels): best of 3 {warm:.2f} s (stages: "
        + ", ".join(f"{k} {v:.2f}" for k, v in tim.items() if k != "total")
        + ")."
    )
    tracemalloc.start()
    segment_nuclei(w.image, **kw)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    lines.append(
        f"- Peak traced memory (tracemalloc, NumPy buffers): {peak / 1e6:.1f} MB = "
        f"{peak / w.image.nbytes:.2f} x the uint16 input, "
        f"{peak / (w.image.size * 4):.2f} x the input as float32."
    )
    # scaling: 10 different heads side by side (10x the voxels and nuclei, same density)
    # against the same 10 heads one by one: single heads need 19-40 iterations, so one
    # head repeated 10 times would compare unlike fits
    heads = [w] + [make_worm(seed=s, shape=(40, 90, 470)) for s in range(1, 10)]
    singles = []
    for h in heads:
        t = time.perf_counter()
        segment_nuclei(h.image, **kw)
        singles.append(time.perf_counter() - t)
    big = np.concatenate([h.image for h in heads], axis=-1)
    big_times = []
    for _ in range(2):  # best of 2
        t = time.perf_counter()
        rb = segment_nuclei(big, **kw)
        big_times.append(time.perf_counter() - t)
    tb = min(big_times)
    tim = rb.info["timings"]
    lines.append(
        f"- 10x voxels: heads 0-9 side by side (40 x 90 x 4700 x 4, "
        f"{rb.info['n_components']} components, {rb.info['n_tiles']} slabs): best of 2 "
        f"{tb:.2f} s = {tb / np.mean(singles):.1f}x the mean time of the same heads one by "
        f"one ({np.mean(singles):.2f} s, range {min(singles):.2f}-{max(singles):.2f} s); "
        f"{tb / warm:.1f}x head 0's best time (stages of the 10x run: "
        + ", ".join(f"{k} {v:.2f}" for k, v in tim.items() if k != "total")
        + ")."
    )
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 worms, 1 random seed, no ablations")
    ap.add_argument("--no-speed", action="store_true", help="skip the speed section")
    ap.add_argument(
        "--speed-only",
        action="store_true",
        help="only the speed section; replaces that section of an existing output file",
    )
    ap.add_argument("--output", default=str(ROOT / "docs" / "benchmarks_segmentation.md"))
    args = ap.parse_args(argv)
    worm_seeds = range(2) if args.quick else range(5)
    init_seeds = (0,) if args.quick else (0, 1)
    t0 = time.perf_counter()
    out = Path(args.output)
    if args.speed_only:
        sec = speed()
        print(sec)
        old = out.read_text(encoding="utf-8") if out.exists() else ""
        head = old.split("### Speed and memory")[0] if old else "# Segmentation benchmark\n\n"
        _atomic_write(out, head + sec)
        return
    parts = accuracy(worm_seeds, init_seeds, ablations=not args.quick)
    if not args.no_speed:
        parts.append(speed())
    header = (
        "# Segmentation benchmark\n\n"
        "Generated by `python benchmarks/bench_segmentation.py"
        + (" --quick" if args.quick else "")
        + f"` on {platform.machine()} with {os.cpu_count()} CPU(s), "
        f"Python {platform.python_version()}; total {time.perf_counter() - t0:.0f} s. "
        "Mean ± standard deviation over worms (and random seeds).\n\n"
    )
    text = header + "\n".join(parts)
    print(text)
    _atomic_write(out, text)


def _atomic_write(out: Path, text: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)


if __name__ == "__main__":
    main()
