"""Real data and hard synthetic regimes: the default pipeline against LoG + watershed.

Every row runs, in the same process and on the same image,

* **ours**: ``segment_nuclei(image, voxel_size=..., channel_axis=...)`` -- defaults only,
  nothing else given (no diameter, no count): what a user opening their own stack gets;
* **baseline**: :func:`napari_sinkhorn_em.evaluation.baseline.log_watershed` (LoG peaks +
  marker watershed) with ONE scale given from the truth (``nucleus_diameter`` = median
  true diameter; 2 um for the targettrack heads, whose annotation has no masks), the count
  taken from its peaks;
* **tuned baseline**: the same LoG + watershed at its best for the row: the peak threshold
  (the relative default, or 3-12 robust noise standard deviations of the LoG response)
  and the centre (watershed-region centroid or LoG peak) that score highest against the
  truth. A user tuning the plain detector by eye gets at most this; on dim stacks, where
  the default threshold lets thousands of noise maxima through, it is the fair
  comparison.

Scores: centre F1 = Hungarian one-to-one matching within half the median nearest-neighbour
distance of the true centres (:func:`~napari_sinkhorn_em.evaluation.metrics.match_centres_nn`);
label AP@0.5 where true masks exist (QCANet, synthetic). The targettrack heads annotate
64-83 of the ~150 neurons in view, so precision (and F1) there is bounded by the
annotation; recall is the cleaner number.

Data (see :mod:`napari_sinkhorn_em.evaluation.realdata` for the voxel-size estimates):
targettrack frames (nuclear channel 0, voxel 2.0 x 0.5 x 0.5 um; one row also with both
channels; the "gt" frames' points corrected by the measured -0.75 plane z offset, the
score against the points as stored is in the JSON as ``f1_stored_truth``), QCANet 8- and 16-cell embryos (1.744 x 0.8 x 0.8 um), and the synthetic regimes
(``make_whole_brain``, ``make_embryo`` at 30 / 100 / 200 / 370 nuclei and dim at
60-80 / 40 photons,
``make_nuclei_field_2d``, one NeuroPAL-like head ``make_worm``, and 40-nucleus
``make_worm`` crops with as many gut granules as nuclei: 3-D with one channel, 2-D with
four and with one; textured nuclei; embryos with 15 % of the nuclei in mitosis;
whole-brain stacks with real-data artefacts: registered, hot pixels, bright debris, a
black level clipped at 0). Real rows are skipped
when ``../shared/realdata`` is absent; the real 2-D DSB 2018 image (125 nuclei with masks,
pixel units) when ``tools/fetch_external_data.py`` has fetched it
(:mod:`napari_sinkhorn_em.evaluation.external`).

Usage::

    python benchmarks/bench_real.py                 # everything (~20-40 min on 2 cores)
    python benchmarks/bench_real.py --quick         # one row per kind, a few minutes
    python benchmarks/bench_real.py --only qcanet   # rows whose name contains "qcanet"
    python benchmarks/bench_real.py --json out.json # also write machine-readable rows
    python benchmarks/bench_real.py --typed-diameter  # ours given the baseline's diameter
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_sinkhorn_em import segment_nuclei
from napari_sinkhorn_em.evaluation import external, realdata
from napari_sinkhorn_em.evaluation.baseline import log_watershed
from napari_sinkhorn_em.evaluation.metrics import (
    average_precision,
    label_centroids,
    match_centres_nn,
    nearest_neighbour_distance,
)
from napari_sinkhorn_em.synthetic import (
    make_embryo,
    make_nuclei_field_2d,
    make_whole_brain,
    make_worm,
    with_clipped_black_level,
    with_debris,
    with_hot_pixels,
    with_registration_shift,
)

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Case:
    """One benchmark row: an image, its sampling and its truth."""

    name: str
    kind: str  # "real" or "synthetic"
    image: np.ndarray
    voxel_size: tuple[float, ...]
    channel_axis: int | None
    centres: np.ndarray  # true centres, voxel coordinates
    labels: np.ndarray | None  # true instance labels (None = centres only)
    diameter: float  # the single scale given to the baseline (um)
    diameter_source: str
    centres_stored: np.ndarray | None = None  # truth as stored when `centres` is corrected


def _equiv_diameter(labels: np.ndarray, voxel_size) -> float:
    sizes = np.bincount(labels.ravel())[1:]
    vol = sizes[sizes > 0] * float(np.prod(voxel_size))
    if labels.ndim == 2:
        return float(np.median(2.0 * np.sqrt(vol / np.pi)))
    return float(np.median((6.0 * vol / np.pi) ** (1.0 / 3.0)))


def _masked_case(d) -> Case:
    """A real one-channel set with instance masks (``name``, ``image``, ``voxel_size``,
    ``centres``, ``labels``); the baseline gets the masks' median equivalent diameter."""
    return Case(
        name=d.name,
        kind="real",
        image=d.image,
        voxel_size=tuple(d.voxel_size),
        channel_axis=None,
        centres=d.centres,
        labels=d.labels,
        diameter=_equiv_diameter(d.labels, d.voxel_size),
        diameter_source="median equivalent diameter of the true masks",
    )


@dataclass
class _Resampled:
    """A real set with masks as another set-up would have recorded it (see
    :func:`_resample`)."""

    name: str
    image: np.ndarray
    voxel_size: tuple[float, ...]
    labels: np.ndarray
    centres: np.ndarray


def _resample(d, name: str, *, z_step=1, bin_xy=1, photons=None, noise=None) -> _Resampled:
    """``d`` (``image``, ``voxel_size``, ``labels``) with every ``z_step``-th plane, ``bin_xy``
    x ``bin_xy`` in-plane binning, ``photons`` (a fraction: the counts above the 1st
    percentile scaled by it, then Poisson noise) or Gaussian ``noise`` (a fraction of the
    1st-99th percentile range); the masks sampled alike, the centres their centroids."""
    from skimage.segmentation import relabel_sequential

    rng = np.random.default_rng(0)
    img = np.asarray(d.image, dtype=np.float32)
    lab = np.asarray(d.labels)
    vs = np.asarray(d.voxel_size, dtype=np.float64).copy()
    if z_step > 1:
        img, lab = img[::z_step], lab[::z_step]
        vs[0] *= z_step
    if bin_xy > 1:
        b = int(bin_xy)
        ny, nx = img.shape[-2] // b, img.shape[-1] // b
        img = img[..., : ny * b, : nx * b]
        img = img.reshape(*img.shape[:-2], ny, b, nx, b).mean(axis=(-3, -1))
        lab = lab[..., : ny * b : b, : nx * b : b]
        vs[-2:] *= b
    lo, hi = np.percentile(img, [1.0, 99.0])
    if photons is not None:
        img = rng.poisson(np.maximum(lo + (img - lo) * photons, 0.0)).astype(np.float32)
    if noise is not None:
        img = img + rng.normal(0.0, noise * (hi - lo), img.shape).astype(np.float32)
    lab = relabel_sequential(lab)[0]
    return _Resampled(name, img, tuple(vs), lab, label_centroids(lab))


def _synthetic_case(name: str, w, source: str = "median true diameter") -> Case:
    return Case(
        name=name,
        kind="synthetic",
        image=w.image,
        voxel_size=tuple(w.voxel_size),
        channel_axis=w.channel_axis,
        centres=w.centres,
        labels=w.labels,
        diameter=float(np.median(w.diameters_um)),
        diameter_source=source,
    )


def case_builders() -> list[tuple[str, bool, Callable[[], Case]]]:
    """``(name, in_quick, build)`` for every row, real first."""
    out: list[tuple[str, bool, Callable[[], Case]]] = []
    if realdata.available("targettrack"):
        frames = {(f.name): f for f in realdata.targettrack_frames()}

        def truth(f):
            # the gt frames' points sit ~0.75 plane deeper than their nuclei (measured, see
            # evaluation.realdata); score against the corrected points, report both
            if f.name.endswith("/gt"):
                c = f.centres + np.array([realdata.TARGETTRACK_GT_Z_OFFSET, 0.0, 0.0])
                return c, f.centres
            return f.centres, None

        for nm, f in frames.items():

            def build(f=f):
                centres, stored = truth(f)
                return Case(
                    name=f"targettrack {f.name}",
                    kind="real",
                    image=f.nuclei,
                    voxel_size=f.voxel_size,
                    channel_axis=None,
                    centres=centres,
                    labels=None,
                    diameter=2.0,
                    diameter_source="2 um (stated nucleus size)",
                    centres_stored=stored,
                )

            out.append((f"targettrack {nm}", nm in ("ex2/gt", "ex6/tar"), build))

        def build_both(f=frames["ex2/gt"]):
            centres, stored = truth(f)
            return Case(
                name="targettrack ex2/gt, both channels",
                kind="real",
                image=f.image,
                voxel_size=f.voxel_size,
                channel_axis=0,
                centres=centres,
                labels=None,
                diameter=2.0,
                diameter_source="2 um (stated nucleus size)",
                centres_stored=stored,
            )

        out.append(("targettrack ex2/gt, both channels", False, build_both))
    if external.dsb2018_available():
        out.append(("dsb2018 2-D", True, lambda: _masked_case(external.load_dsb2018())))
    if realdata.available("qcanet"):
        for stage in realdata.QCANET_STAGES:

            def build_q(stage=stage):
                return _masked_case(realdata.load_qcanet(stage))

            out.append((f"qcanet {stage}-cell", stage == 16, build_q))
    # the real sets as other set-ups record them: coarser z, binned pixels, fewer photons,
    # more noise (the masks and centres sampled alike)
    variants = []
    if external.dsb2018_available():
        variants += [
            ("DSB 2-D binned 2x", external.load_dsb2018, {"bin_xy": 2}),
            ("DSB 2-D, noise 10 %", external.load_dsb2018, {"noise": 0.1}),
        ]
    if realdata.available("qcanet"):
        for stage in realdata.QCANET_STAGES:
            load = lambda stage=stage: realdata.load_qcanet(stage)  # noqa: E731
            variants += [
                (f"qcanet {stage}-cell, every 2nd plane", load, {"z_step": 2}),
                (f"qcanet {stage}-cell, every 3rd plane", load, {"z_step": 3}),
                (f"qcanet {stage}-cell, 5x fewer photons", load, {"photons": 0.2}),
            ]
    for name, load, kw in variants:
        out.append(
            (
                name,
                False,
                lambda name=name, load=load, kw=kw: _masked_case(_resample(load(), name, **kw)),
            )
        )
    out.append(
        (
            "whole brain 15x169x411",
            True,
            lambda: _synthetic_case("whole brain 15x169x411", make_whole_brain(seed=0)),
        )
    )
    for n in (30, 100, 200, 370):
        out.append(
            (
                f"embryo {n} nuclei",
                n == 100,
                lambda n=n: _synthetic_case(f"embryo {n} nuclei", make_embryo(n_nuclei=n, seed=0)),
            )
        )
    for n, photons in ((100, 60.0), (370, 80.0), (370, 40.0)):
        # dim embryos (a fifth to a tenth of the default photons; interior 5x dimmer)
        name = f"dim embryo {n} nuclei ({photons:g} photons)"
        out.append(
            (
                name,
                False,
                lambda n=n, p=photons, name=name: _synthetic_case(
                    name, make_embryo(n_nuclei=n, photons=p, seed=0)
                ),
            )
        )
    # stacks whose noise neighbouring voxels share: registered by a half-pixel shift in y
    # and x (linear interpolation), as motion-corrected whole-brain recordings are
    for name, build_w in (
        ("whole brain, registered (half-pixel shift)", lambda: make_whole_brain(seed=1)),
        (
            "dim embryo 370 nuclei, registered (half-pixel shift)",
            lambda: make_embryo(n_nuclei=370, photons=80.0, seed=1),
        ),
    ):
        out.append(
            (
                name,
                False,
                lambda name=name, build_w=build_w: _synthetic_case(
                    name, with_registration_shift(build_w())
                ),
            )
        )
    # chromatin-like texture (log-sd 0.4 at a quarter of the diameter): a large nucleus
    # shows 2-3 blobs of half its size (synthetic.make_embryo(texture=...))
    for name, build_w in (
        ("embryo 30 nuclei, textured", lambda: make_embryo(n_nuclei=30, texture=0.4, seed=1)),
        ("embryo 100 nuclei, textured", lambda: make_embryo(n_nuclei=100, texture=0.4, seed=1)),
        ("2-D field 125 nuclei, textured", lambda: make_nuclei_field_2d(texture=0.4, seed=1)),
    ):
        out.append(
            (name, False, lambda name=name, build_w=build_w: _synthetic_case(name, build_w()))
        )
    # dividing embryos: 15 % of the nuclei in metaphase, a bright plate holding the
    # nucleus' light (synthetic.make_embryo(mitotic_fraction=...))
    for n in (200, 370):
        name = f"embryo {n} nuclei, 15 % in mitosis"
        out.append(
            (
                name,
                False,
                lambda name=name, n=n: _synthetic_case(
                    name, make_embryo(n_nuclei=n, mitotic_fraction=0.15, seed=1)
                ),
            )
        )
    # a camera's hot pixels: 300 single voxels (0.03 %) raised by 1000 counts
    out.append(
        (
            "whole brain, 300 hot pixels",
            False,
            lambda: _synthetic_case(
                "whole brain, 300 hot pixels", with_hot_pixels(make_whole_brain(seed=1))
            ),
        )
    )
    # 20 nucleus-sized spots 20x brighter than the nuclei (debris, dust): they are
    # counted (no test tells them from nuclei), the nuclei must not be lost
    out.append(
        (
            "whole brain, 20 bright debris spots",
            False,
            lambda: _synthetic_case(
                "whole brain, 20 bright debris spots", with_debris(make_whole_brain(seed=1))
            ),
        )
    )
    # a black level set above the background and clipped at 0 (half the voxels exactly 0),
    # as confocal and camera software leave it
    out.append(
        (
            "whole brain, black level clipped at the median",
            False,
            lambda: _synthetic_case(
                "whole brain, black level clipped at the median",
                with_clipped_black_level(make_whole_brain(seed=1), 50.0),
            ),
        )
    )
    out.append(
        (
            "2-D field 125 nuclei",
            True,
            lambda: _synthetic_case("2-D field 125 nuclei", make_nuclei_field_2d(seed=0)),
        )
    )
    out.append(
        (
            "NeuroPAL-like head (make_worm)",
            True,
            lambda: _synthetic_case("NeuroPAL-like head (make_worm)", make_worm(seed=0)),
        )
    )
    # worms with as many gut granules (0.5-1 um, 6x brighter, alike in every channel) as
    # nuclei: one channel (no colour to tell them apart), and a 2-D head
    for name, kw in (
        ("worm body, 1 channel, granules", {"ndim": 3, "n_channels": 1, "region": "body"}),
        ("worm head, 1 channel, granules", {"ndim": 3, "n_channels": 1, "region": "head"}),
        ("2-D worm head, 4 channels, granules", {"ndim": 2, "n_channels": 4, "region": "head"}),
        ("2-D worm head, 1 channel, granules", {"ndim": 2, "n_channels": 1, "region": "head"}),
    ):
        out.append(
            (
                name,
                False,
                lambda name=name, kw=kw: _synthetic_case(
                    name, make_worm(n_nuclei=40, seed=1, **kw)
                ),
            )
        )
    return out


def score(case: Case, centres: np.ndarray, labels: np.ndarray) -> dict:
    m = match_centres_nn(centres, case.centres, voxel_size=case.voxel_size, fraction=0.5)
    out = {
        "found": m.n_pred,
        "f1": m.f1,
        "precision": m.precision,
        "recall": m.recall,
        "ap50": None,
    }
    if case.labels is not None:
        out["ap50"] = average_precision(labels, case.labels, threshold=0.5)["ap"]
    if case.centres_stored is not None:
        ms = match_centres_nn(centres, case.centres_stored, voxel_size=case.voxel_size)
        out["f1_stored_truth"] = ms.f1
        out["recall_stored_truth"] = ms.recall
    return out


# the tuned baseline's search: peak thresholds in robust noise standard deviations of the
# LoG response (None = the detector's relative threshold) x the two centre choices
TUNE_THRESHOLDS_SD = (None, 3.0, 4.0, 5.0, 6.0, 8.0, 12.0)
TUNE_CENTRES = ("regions", "peaks")


def tuned_baseline(case: Case) -> dict:
    """The LoG + watershed baseline at its best on this row: the peak threshold and the
    centre choice that give the highest centre F1 against the truth (then AP50). An
    upper bound for a user who tunes the plain detector by eye, not a method."""
    best = None
    for centres in TUNE_CENTRES:
        for k in TUNE_THRESHOLDS_SD:
            lab, cen = log_watershed(
                case.image,
                voxel_size=case.voxel_size,
                channel_axis=case.channel_axis,
                nucleus_diameter=case.diameter,
                threshold_sd=k,
                centres=centres,
            )
            s = score(case, cen, lab)
            key = (s["f1"], -1.0 if s["ap50"] is None else s["ap50"])
            if best is None or key > best[0]:
                best = (key, {**s, "threshold_sd": k, "centres": centres})
    return best[1]


def run_case(case: Case, typed_diameter: bool = False, tune_baseline: bool = True) -> dict:
    """One row; with ``typed_diameter`` ours is also given the baseline's scale."""
    tol = 0.5 * nearest_neighbour_distance(case.centres, voxel_size=case.voxel_size)
    kw = {"nucleus_diameter": case.diameter} if typed_diameter else {}
    t = time.perf_counter()
    r = segment_nuclei(case.image, voxel_size=case.voxel_size, channel_axis=case.channel_axis, **kw)
    t_ours = time.perf_counter() - t
    ours = score(case, r.centres, r.labels)
    ours["time_s"] = t_ours
    ours["n_iter"] = r.info.get("n_iter")
    ours["converged"] = r.info.get("converged")
    nd = r.params.get("nucleus_diameter")
    ours["nucleus_diameter"] = nd
    t = time.perf_counter()
    lab, cen = log_watershed(
        case.image,
        voxel_size=case.voxel_size,
        channel_axis=case.channel_axis,
        nucleus_diameter=case.diameter,
    )
    t_base = time.perf_counter() - t
    base = score(case, cen, lab)
    base["time_s"] = t_base
    base["nucleus_diameter"] = case.diameter
    tuned = tuned_baseline(case) if tune_baseline else None
    return {
        "name": case.name,
        "kind": case.kind,
        "shape": list(case.image.shape),
        "voxel_size": list(case.voxel_size),
        "channel_axis": case.channel_axis,
        "n_true": int(case.centres.shape[0]),
        "match_tolerance_um": tol,
        "baseline_diameter_source": case.diameter_source,
        "ours": ours,
        "baseline": base,
        "baseline_tuned": tuned,
    }


def _f(x, d=2):
    return "-" if x is None else f"{x:.{d}f}"


def table(rows: list[dict]) -> str:
    lines = [
        "| data | n true | ours found | ours F1 (recall) | ours AP50 | ours time (s) | "
        "baseline found | baseline F1 (recall) | baseline AP50 | baseline time (s) | "
        "ΔF1 | ΔAP50 | tuned baseline F1 (AP50) | ΔF1 tuned |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        o, b, bt = r["ours"], r["baseline"], r.get("baseline_tuned")
        dap = None if o["ap50"] is None else o["ap50"] - b["ap50"]
        tuned = "-" if bt is None else f"{bt['f1']:.2f} ({_f(bt['ap50'])})"
        dtuned = "-" if bt is None else f"{o['f1'] - bt['f1']:+.2f}"
        lines.append(
            f"| {r['name']} | {r['n_true']} | {o['found']} | {o['f1']:.2f} ({o['recall']:.2f}) "
            f"| {_f(o['ap50'])} | {o['time_s']:.1f} | {b['found']} | "
            f"{b['f1']:.2f} ({b['recall']:.2f}) | {_f(b['ap50'])} | {b['time_s']:.1f} | "
            f"{o['f1'] - b['f1']:+.2f} | {'-' if dap is None else f'{dap:+.2f}'} | "
            f"{tuned} | {dtuned} |"
        )
    return "\n".join(lines) + "\n"


def _git_rev() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _write_json(path, rows: list[dict], failed: list[dict]) -> None:
    from napari_sinkhorn_em.io import atomic_write

    text = json.dumps({"code": _git_rev(), "rows": rows, "failed": failed}, indent=1, default=float)
    with atomic_write(Path(path), "w") as fh:
        fh.write(text)


def warm_up() -> None:
    """Compile the Numba kernels once (a small head) so that no timed row pays the JIT."""
    w = make_worm(n_nuclei=20, x_range=(55.0, 70.0), seed=1)
    segment_nuclei(w.image, voxel_size=w.voxel_size, channel_axis=0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one row per kind (a few minutes)")
    ap.add_argument("--only", metavar="NAME", help="rows whose name contains NAME")
    ap.add_argument("--json", metavar="OUT", help="write the rows as JSON to OUT")
    ap.add_argument(
        "--typed-diameter",
        action="store_true",
        help="give ours the baseline's diameter too (a user who types the size in)",
    )
    args = ap.parse_args(argv)

    builders = case_builders()
    if args.quick:
        builders = [b for b in builders if b[1]]
    if args.only:
        builders = [b for b in builders if args.only.lower() in b[0].lower()]
    if not builders:
        print("no rows selected")
        return 1
    if not realdata.available():
        print(f"note: real data not found in {realdata.default_root()}; real rows skipped")

    warm_up()

    rows: list[dict] = []
    failed: list[dict] = []
    for name, _, build in builders:
        case = build()
        try:
            row = run_case(case, typed_diameter=args.typed_diameter)
        except Exception as exc:  # a failing row is a result too; the others still run
            print(f"{name}: FAILED: {type(exc).__name__}: {exc}", flush=True)
            failed.append({"name": name, "error": f"{type(exc).__name__}: {exc}"})
            continue
        rows.append(row)
        if args.json:  # after every row, so that an interrupted run keeps what it measured
            _write_json(args.json, rows, failed)
        o, b, bt = row["ours"], row["baseline"], row["baseline_tuned"]
        print(
            f"{name}: n={row['n_true']} ours F1 {o['f1']:.3f} AP50 {_f(o['ap50'], 3)} "
            f"found {o['found']} in {o['time_s']:.1f} s | baseline F1 {b['f1']:.3f} "
            f"AP50 {_f(b['ap50'], 3)} found {b['found']} in {b['time_s']:.1f} s | tuned "
            f"baseline F1 {bt['f1']:.3f} AP50 {_f(bt['ap50'], 3)} found {bt['found']} "
            f"(threshold_sd={bt['threshold_sd']}, centres={bt['centres']})",
            flush=True,
        )
    print()
    if args.typed_diameter:
        print("ours given nucleus_diameter = the baseline's (--typed-diameter); otherwise:")
    print(
        "ours = segment_nuclei(image, voxel_size=..., channel_axis=...) with defaults only; "
        "baseline = LoG + watershed given one scale from the truth (nucleus_diameter = "
        "median true diameter, 2 um for targettrack), count from its peaks; tuned baseline = "
        "the same at its best peak threshold and centre choice for the row, picked on the "
        "truth. Centre F1 within 0.5 x the median nearest-neighbour distance of the truth."
    )
    print(f"code: {_git_rev()}, {platform.processor() or platform.machine()}")
    print()
    print(table(rows))
    for f in failed:
        print(f"FAILED {f['name']}: {f['error']}")
    if args.json:
        _write_json(args.json, rows, failed)
        print(f"wrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
