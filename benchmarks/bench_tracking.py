"""Tracking benchmark: correct links between consecutive frames, and time per frame.

For every series, in the same run:

* ``track_nuclei(method="sinkhorn")``: the default tracker (warm-started Sinkhorn-EM);
* ``track_nuclei(method="em")``: EM with the same fixed weights and the same warm starts
  (same motion estimate, same new/ended/division bookkeeping);
* Hungarian: ``segment_nuclei`` on every frame, consecutive frames linked one-to-one by
  nearest centres (no motion model), at most 2 nucleus diameters apart;

scored by the fraction of truth links (the same nucleus in consecutive frames, or a
parent and its child) whose track links the right nucleus
(:func:`napari_sinkhorn_em.evaluation.tracking.link_accuracy`: per frame the nuclei are
matched one-to-one to the truth within half a nucleus diameter; a missed nucleus makes
its links wrong).

Series:

* synthetic moving heads (:func:`napari_sinkhorn_em.synthetic.make_moving_worm`, 60
  nuclei, 2.7 um diameter, nearest-neighbour spacing about 2.7 um): the nucleus that moves
  most moves ``motion_um`` per frame (translation + rotation + bend), from small to a
  whole nucleus diameter; several seeds;
* synthetic dividing embryos (:func:`~napari_sinkhorn_em.synthetic.make_dividing_embryo`);
* synthetic growing embryos (:func:`~napari_sinkhorn_em.synthetic.make_growing_embryo`:
  24 -> 251 nuclei whose diameter shrinks from ~7 to ~3 um over 6 frames), with the
  default automatic scale, matched within half the last frame's mean diameter;
* the same heads with ``nucleus_diameter="auto"`` (the default) instead of the true
  2.7 um, at every motion;
* dense heads: the same head crop with 150 nuclei (``DENSE_NUCLEI``; a full 195-nucleus
  ``make_worm`` head has about 136 in this crop, nearest-neighbour spacing 2.6 um
  against 2.8 um for the 60-nucleus crop), ``nucleus_diameter="auto"``, motions from half
  a spacing (1.35 um) to a diameter (2.7 um) per frame;
* the real two-frame pairs ``../shared/realdata/targettrack/ex2..ex6`` (adult heads, 64-83
  annotated neurons, row i of ``pts_gt`` and ``pts_tar`` the same neuron), when present:
  from the LoG peaks (defaults), and started from the annotated neurons of frame gt
  (``init=``; the Hungarian linker starts from them too), with the defaults and with
  ``new_tracks=False``.

Time per frame: the tracker's frames after the reference (last pass) against
``segment_nuclei`` of the same frames (the Hungarian runs), same process; and the whole
``track_nuclei`` call (reference segmentation, a backfill pass if any) per frame.

Writes docs/tracking_benchmark.json and prints a markdown table.

Usage::

    python benchmarks/bench_tracking.py           # full (about 20-25 minutes on 2 cores)
    python benchmarks/bench_tracking.py --quick   # one seed, two motions (one dense)
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np

from napari_sinkhorn_em import segment_nuclei, track_nuclei
from napari_sinkhorn_em.evaluation.tracking import link_accuracy, link_nearest
from napari_sinkhorn_em.synthetic import make_dividing_embryo, make_growing_embryo, make_moving_worm

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "realdata" / "targettrack"
# targettrack: voxel size not stated. Nuclei are ~5 px wide in x and y at half maximum
# (median over 540 annotated neurons) and adult neuronal nuclei ~2 um: 0.4 um/px. The
# annotated neurons span ~10 of the 16 planes and ~60 px (24 um) dorsoventrally; a
# roughly round head makes the plane spacing ~1.5-2.5 um; 1.5 um chosen (docs/tracking.md).
REAL_VOXEL = (1.5, 0.4, 0.4)
REAL_DIAMETER = 2.0
# the images were already filtered by the recording's pipeline (difference of Gaussians,
# background 0): no background subtraction; the granule filter removes small bright
# nuclei there; Otsu keeps only the brightest third of the nuclei (measured on ex2: 1126
# foreground voxels, 44 nuclei of 82), a low fixed threshold keeps them
REAL_SETTINGS = {"background_scale": 0, "suppress_granules": False, "foreground_threshold": 0.02}
# annotations sit a median 0.6-0.8 planes (about 1 um) from the intensity centroid in z
# (all pairs): truth is matched within one nucleus diameter there
REAL_MATCH = 1.0
# dense heads: nuclei in make_moving_worm's head crop (x 55-100 um). A 195-nucleus
# make_worm head (seed 0) has 136 nuclei there; 150 gives a median nearest-neighbour
# spacing of 2.6 um (60 nuclei: 2.8 um; 200: 2.6 um), the ganglia being packed at any n
DENSE_NUCLEI = 150


def nn_spacing(centres_um) -> float:
    """Median nearest-neighbour distance of a set of centres (um)."""
    from scipy.spatial import cKDTree

    c = np.asarray(centres_um, dtype=np.float64)
    return float(np.median(cKDTree(c).query(c, k=2)[0][:, 1]))


def _score(tracks, truth_um, truth_ids, radius, parents=None):
    return link_accuracy(tracks, truth_um, truth_ids, radius, truth_parents=parents)


def run_series(
    image,
    vs,
    diam,
    truth_um,
    truth_ids,
    parents=None,
    channel_axis=1,
    seed=0,
    match=0.5,
    init=None,
    track_kw=None,
    **kw,
):
    """The three trackers on one series; accuracies and times per frame.

    ``match``: truth matching radius in nucleus diameters (``diam``, or the truth
    diameter ``truth_diameter`` in ``kw`` when ``diam`` is "auto"); ``init``: centres
    (voxels) of frame 0 to start from (the trackers' ``init``; the Hungarian linker's
    frame 0); ``track_kw``: settings for ``track_nuclei`` only; ``kw``: settings passed
    to both ``track_nuclei`` and ``segment_nuclei``.
    """
    out = {}
    truth_diameter = kw.pop("truth_diameter", diam)
    radius = match * truth_diameter
    T = image.shape[0]
    extra = dict(track_kw or {})
    if init is not None:
        extra["init"] = init
    for method in ("sinkhorn", "em"):
        t0 = time.perf_counter()
        r = track_nuclei(
            image,
            time_axis=0,
            channel_axis=channel_axis,
            voxel_size=vs,
            nucleus_diameter=diam,
            method=method,
            random_state=seed,
            **kw,
            **extra,
        )
        wall = time.perf_counter() - t0
        acc = _score(r.tracks, truth_um, truth_ids, radius, parents)
        per_frame = [f["timings"]["total"] for f in r.frames[1:]]
        out[method] = {
            "accuracy": acc["accuracy"],
            "linked_given_found": acc["linked_given_found"],
            "n_links": acc["n_links"],
            "detected": acc["detected"],
            # the frames after the reference, last pass only
            "s_per_frame": float(np.mean(per_frame)) if per_frame else None,
            # the whole run (reference segmentation, a backfill pass if any) / frames
            "s_per_frame_run": wall / T,
            "backfilled": len(r.frames[r.params["reference_frame"]].get("backfilled", [])),
            # the motion estimate: median distance of the moved centres to the nearest
            # LoG peak of the next frame, mean over the frames after the reference
            "motion_residual_um": _mean_residual(r.frames, r.params["reference_frame"]),
            "nucleus_diameter_um": r.nucleus_diameter_um,
            "wall_s": wall,
        }
    centres, seg_times = [], []
    ch = None if channel_axis is None else channel_axis - 1
    for t in range(T):
        if t == 0 and init is not None:
            # started from the given centres of frame 0, as the trackers
            centres.append(np.asarray(init, dtype=np.float64) * np.asarray(vs))
            continue
        t0 = time.perf_counter()
        s = segment_nuclei(
            image[t],
            channel_axis=ch,
            voxel_size=vs,
            nucleus_diameter=diam,
            random_state=seed,
            **kw,
        )
        seg_times.append(time.perf_counter() - t0)
        centres.append(s.centres * np.asarray(vs))
    tracks = link_nearest(centres, 2.0 * truth_diameter)
    acc = _score(tracks, truth_um, truth_ids, radius, parents)
    out["hungarian"] = {
        "accuracy": acc["accuracy"],
        "linked_given_found": acc["linked_given_found"],
        "n_links": acc["n_links"],
        "detected": acc["detected"],
        "s_per_frame": float(np.mean(seg_times)),
    }
    out["time_ratio"] = out["sinkhorn"]["s_per_frame"] / out["hungarian"]["s_per_frame"]
    out["time_ratio_run"] = out["sinkhorn"]["s_per_frame_run"] / out["hungarian"]["s_per_frame"]
    return out


def _mean_residual(frames, ref):
    res = [
        f["motion"].get("median_residual_um")
        for t, f in enumerate(frames)
        if t != ref and f["motion"].get("median_residual_um") is not None
    ]
    return float(np.mean(res)) if res else None


def load_targettrack(ex: int):
    """(2, C, Z, Y, X) stack, truth centres (um) and ids for the annotated rows."""
    d = REAL / f"ex{ex}"
    frames = [
        np.transpose(np.load(d / f"{n}.npy"), (0, 3, 2, 1)) for n in ("frame_gt", "frame_tar")
    ]
    pts = [np.load(d / f"{n}.npy") for n in ("pts_gt", "pts_tar")]
    vs = np.asarray(REAL_VOXEL)
    truth_um, truth_ids = [], []
    for p in pts:
        ok = ~np.isnan(p).any(axis=1)
        truth_um.append(p[ok][:, ::-1] * vs)  # (x, y, z) -> (z, y, x) um
        truth_ids.append(np.flatnonzero(ok) + 1)
    return np.stack(frames), truth_um, truth_ids


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "docs" / "tracking_benchmark.json"))
    args = ap.parse_args(argv)
    motions = [1.35, 2.7] if args.quick else [0.5, 1.35, 2.0, 2.7]
    seeds = [1] if args.quick else [1, 2]
    dense_motions = [2.7] if args.quick else [1.35, 2.0, 2.7]
    results: dict = {
        "synthetic": [],
        "synthetic_auto": [],
        "synthetic_dense": [],
        "embryo": [],
        "growing": [],
        "targettrack": [],
    }
    # warm the Numba kernels so no series pays the compilation
    w = make_moving_worm(n_frames=2, n_nuclei=20, motion_um=0.5, seed=0)
    track_nuclei(w.image, channel_axis=1, voxel_size=w.voxel_size, nucleus_diameter=2.7)
    for motion in motions:
        for seed in seeds:
            w = make_moving_worm(n_frames=4, n_nuclei=60, motion_um=motion, seed=seed)
            vs = np.asarray(w.voxel_size)
            r = run_series(
                w.image, w.voxel_size, w.nucleus_diameter, [c * vs for c in w.centres], w.ids
            )
            r.update(motion_um=motion, seed=seed)
            results["synthetic"].append(r)
            print(_row(f"head motion {motion} um seed {seed}", r), flush=True)
    for motion, seed in itertools.product(motions, seeds):
        # the default automatic nucleus scale (trackers and per-frame segmentations)
        w = make_moving_worm(n_frames=4, n_nuclei=60, motion_um=motion, seed=seed)
        vs = np.asarray(w.voxel_size)
        r = run_series(
            w.image,
            w.voxel_size,
            "auto",
            [c * vs for c in w.centres],
            w.ids,
            truth_diameter=w.nucleus_diameter,
        )
        r.update(motion_um=motion, seed=seed)
        results["synthetic_auto"].append(r)
        print(_row(f"head motion {motion} um seed {seed}, diameter auto", r), flush=True)
    for motion, seed in itertools.product(dense_motions, seeds):
        # dense heads (realistic packing), the defaults
        w = make_moving_worm(n_frames=4, n_nuclei=DENSE_NUCLEI, motion_um=motion, seed=seed)
        vs = np.asarray(w.voxel_size)
        truth_um = [c * vs for c in w.centres]
        r = run_series(
            w.image,
            w.voxel_size,
            "auto",
            truth_um,
            w.ids,
            truth_diameter=w.nucleus_diameter,
        )
        r.update(motion_um=motion, seed=seed, n_nuclei=DENSE_NUCLEI)
        r["nn_spacing_um"] = nn_spacing(truth_um[0])
        results["synthetic_dense"].append(r)
        print(
            _row(f"dense head ({DENSE_NUCLEI}) motion {motion} um seed {seed}", r)
            + f" spacing {r['nn_spacing_um']:.2f} um, motion residual SEM "
            f"{r['sinkhorn']['motion_residual_um']:.2f} um",
            flush=True,
        )
    for seed in seeds:
        e = make_dividing_embryo(
            n_frames=4, n_divisions=3, appear_frame=1, disappear_frame=3, seed=seed
        )
        vs = np.asarray(e.voxel_size)
        r = run_series(
            e.image,
            e.voxel_size,
            e.nucleus_diameter,
            [c * vs for c in e.centres],
            e.ids,
            parents=e.parents,
        )
        r.update(seed=seed)
        results["embryo"].append(r)
        print(_row(f"embryo seed {seed}", r), flush=True)
    for seed in seeds:
        # nuclei that shrink: 24 -> 251 nuclei of ~7 -> ~3 um over 6 frames (60 % of the
        # nuclei divide between frames), depth attenuation 5x, the default scale
        g = make_growing_embryo(seed=seed)
        vs = np.asarray(g.voxel_size)
        r = run_series(
            g.image,
            g.voxel_size,
            "auto",
            [c * vs for c in g.centres],
            g.ids,
            parents=g.parents,
            truth_diameter=g.params["mean_diameter_um"][-1],
        )
        r.update(seed=seed, n_nuclei=g.params["n_nuclei"])
        results["growing"].append(r)
        print(_row(f"growing embryo seed {seed}", r), flush=True)
    if REAL.is_dir():
        # (a) the defaults (frame gt segmented from its LoG peaks); (b) started from the
        # annotated neurons of frame gt (a user who annotated / corrected the first
        # frame and propagates), with the defaults and with new_tracks=False (exactly
        # the annotated tracks)
        starts = [
            ("peaks", None),
            ("points", {}),
            ("points, new_tracks=False", {"new_tracks": False}),
        ]
        for ex in (2, 3, 4, 5, 6):
            stack, truth_um, truth_ids = load_targettrack(ex)
            for start, track_kw in starts:
                r = run_series(
                    stack,
                    REAL_VOXEL,
                    REAL_DIAMETER,
                    truth_um,
                    truth_ids,
                    match=REAL_MATCH,
                    init=None if track_kw is None else truth_um[0] / np.asarray(REAL_VOXEL),
                    track_kw=track_kw,
                    **REAL_SETTINGS,
                )
                r.update(pair=f"ex{ex}", start=start)
                results["targettrack"].append(r)
                print(_row(f"targettrack ex{ex} from {start}", r), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(summary(results))


def _row(name, r):
    return (
        f"| {name} | {r['sinkhorn']['accuracy']:.3f} | {r['em']['accuracy']:.3f} | "
        f"{r['hungarian']['accuracy']:.3f} | {r['sinkhorn']['n_links']} | "
        f"{r['sinkhorn']['detected']:.3f} | {r['sinkhorn']['linked_given_found']:.3f} | "
        f"{r['em']['linked_given_found']:.3f} | {r['hungarian']['linked_given_found']:.3f} | "
        f"{r['sinkhorn']['s_per_frame']:.2f} | "
        f"{r['em']['s_per_frame']:.2f} | {r['hungarian']['s_per_frame']:.2f} | "
        f"{r['time_ratio']:.2f} | {r['sinkhorn']['s_per_frame_run']:.2f} | "
        f"{r['time_ratio_run']:.2f} |"
    )


def summary(results):
    head = (
        "| series | Sinkhorn-EM | EM | Hungarian | links | detected | found: SEM | found: EM "
        "| found: Hungarian | s/frame SEM | s/frame EM | s/frame segment | ratio "
        "| s/frame SEM run | ratio run |\n" + "|---" * 15 + "|"
    )
    lines = [head]
    for key, label in (
        ("synthetic", ""),
        ("synthetic_auto", ", diameter auto"),
        ("synthetic_dense", f", {DENSE_NUCLEI} nuclei, diameter auto"),
    ):
        by_motion: dict = {}
        for r in results.get(key, []):
            by_motion.setdefault(r["motion_um"], []).append(r)
        for m, rs in sorted(by_motion.items()):
            mean = {
                k: {
                    stat: float(np.mean([x[k].get(stat, np.nan) for x in rs]))
                    for stat in ("accuracy", "linked_given_found", "detected", "s_per_frame",
                                 "s_per_frame_run")
                } | {"n_links": int(sum(x[k]["n_links"] for x in rs))}
                for k in ("sinkhorn", "em", "hungarian")
            }  # fmt: skip
            mean["time_ratio"] = float(np.mean([x["time_ratio"] for x in rs]))
            mean["time_ratio_run"] = float(np.mean([x["time_ratio_run"] for x in rs]))
            lines.append(_row(f"heads, motion {m} um{label} (mean of {len(rs)})", mean))
    for r in results["embryo"]:
        lines.append(_row(f"embryo seed {r['seed']}", r))
    for r in results.get("growing", []):
        lines.append(_row(f"growing embryo seed {r['seed']}", r))
    for r in results["targettrack"]:
        lines.append(_row(f"targettrack {r['pair']} from {r['start']}", r))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
