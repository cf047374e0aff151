"""Time per iteration of SinkhornEM (dense and sparse neighbours) vs scikit-learn.

For each N in {1e4, 1e5, 1e6} and K in {50, 200} (D = 7: 3 position + 4 intensity
features, one Gaussian blob per component) this measures, in the same run:

- ``sklearn``: ``sklearn.mixture.GaussianMixture(covariance_type="diag")`` started from the
  same parameters (``init_params="random_from_data"`` so that no k-means runs: with the
  default ``"kmeans"`` sklearn runs k-means even when all initial parameters are given),
  ``max_iter=5, tol=0``; time per iteration = total fit time / (n_iter_ + 1), since a fit
  also does an initial M-step-like pass and a final E-step (this favours sklearn);
- ``ours dense``: ``SinkhornEM(method="sinkhorn", covariance_type="diag")``;
- ``ours m=16``: the same with ``n_neighbors=16`` (and ``position_dims=3``);
- optionally ``ours m=16 full``: full covariances (what the segmentation pipeline uses).

Our time per iteration is the median gap between consecutive ``callback`` calls
(one M-step + neighbour refresh + log-densities + Sinkhorn E-step each) over a fit of
``--iters`` iterations (default 20, about the length of a real fit; the first
iterations from the perturbed start cost up to 2x more, because more points change
neighbours and the E-step needs more passes), with ``tol=0`` so that the fit runs all
iterations (its E-step then stops at a marginal error of 1e-8, the strictest setting).
The "whole fit" column is the fit's wall time divided by its iterations: it also
carries the initialisation and the cold first E-step (about ten iterations' worth at
N = 1e6), which sklearn's figure carries only as one extra E-step.

Timed runs are not traced; peak memory is the tracemalloc peak (NumPy allocations) of
a separate short fit (tracemalloc's hooks slow the run they trace: +40 ms per
iteration of ours at N = 1e6). The 1-minute load average is printed with every row:
other processes on the same cores slow both sides, and Numba's parallel regions more
than BLAS.

Usage::

    python benchmarks/bench_mixture.py            # full grid (several minutes)
    python benchmarks/bench_mixture.py --quick    # N = 1e4, 1e5 only
    python benchmarks/bench_mixture.py --n 1000000 --k 200 --no-dense
    python benchmarks/bench_mixture.py --n 1000000 --k 200 --stages   # where an iteration goes

``--stages`` times the Numba kernels of each stage of our m=16 run (wall time per
iteration, averaged over iterations 3 to ``--iters``; "other" is the rest: Python, the
K x K Newton solves, small NumPy work).
"""

from __future__ import annotations

import argparse
import os
import time
import tracemalloc
import warnings

import numba
import numpy as np

from napari_sinkhorn_em import SinkhornEM
from napari_sinkhorn_em.mixture import _kernels

# kernels of each stage of an iteration (see --stages)
STAGES = {
    "log-densities": ("log_prob_diag", "log_prob_full"),
    "exp table": ("row_max_exp",),
    "E-step passes": ("estep_pass", "log_colsum", "listed_mass"),
    "M-step": ("mstep_stats", "mstep_stats_diag"),
    "neighbours": ("spend_budget", "cell_candidates", "grid_neighbors"),
}


def make_data(n, k, seed=0):
    rng = np.random.default_rng(seed)
    side = k ** (1 / 3) * 4.0
    centers = np.concatenate(
        [rng.uniform(0, side, size=(k, 3)), rng.uniform(0, 3, size=(k, 4))], axis=1
    )
    lab = rng.integers(0, k, size=n)
    X = centers[lab] + rng.normal(size=(n, 7)) * np.array([0.8, 0.8, 0.8, 0.3, 0.3, 0.3, 0.3])
    var = np.tile([0.64, 0.64, 0.64, 0.09, 0.09, 0.09, 0.09], (k, 1))
    # perturbed starting means so that the iterations do real work
    start = centers + rng.normal(size=centers.shape) * 0.3
    return X, start, var


def peak_mem(fn):
    tracemalloc.start()
    tracemalloc.reset_peak()
    out = fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, peak / 2**20


def time_sklearn(X, start, var, k):
    from sklearn.exceptions import ConvergenceWarning as SkCW
    from sklearn.mixture import GaussianMixture

    def run(it):
        gm = GaussianMixture(
            k,
            covariance_type="diag",
            max_iter=it,
            tol=0,
            init_params="random_from_data",
            means_init=start,
            precisions_init=1 / var,
            weights_init=np.full(k, 1 / k),
        )
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SkCW)
            gm.fit(X)
        return (time.perf_counter() - t) / (gm.n_iter_ + 1)

    # timed without tracemalloc (its allocation hooks slow a run: measured +40 ms per
    # iteration of ours at N = 1e6); peak memory from a separate one-iteration fit
    per_it = run(5)
    _, mem = peak_mem(lambda: run(1))
    # OpenBLAS's worker threads keep spinning for a while after a call and would take
    # the cores from the Numba run that follows
    time.sleep(1.0)
    return per_it, mem


def time_ours(X, start, var, k, m, cov_type, n_iter):
    stamps = []

    def cb(it, obj):
        stamps.append(time.perf_counter())

    cov = var if cov_type == "diag" else np.stack([np.diag(v) for v in var])

    def make(it, callback):
        return SinkhornEM(
            k,
            method="sinkhorn",
            covariance_type=cov_type,
            means_init=start,
            covariances_init=cov,
            n_neighbors=m,
            position_dims=3,
            max_iter=it,
            tol=0,
            callback=callback,
        )

    est = make(n_iter, cb)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        est.fit(X)
        whole = (time.perf_counter() - t) / est.n_iter_
        # peak memory from a separate short fit: tracemalloc slows the timed one
        _, mem = peak_mem(lambda: make(2, None).fit(X))
    per_it = float(np.median(np.diff(stamps)))
    return per_it, mem, est, whole


def stage_profile(X, start, var, k, m, n_iter):
    """Seconds per iteration spent in each stage's kernels (iterations 3..n_iter)."""
    totals = dict.fromkeys(STAGES, 0.0)
    originals = {}

    def timed(stage, fn):
        def run(*args):
            t = time.perf_counter()
            out = fn(*args)
            totals[stage] += time.perf_counter() - t
            return out

        return run

    for stage, names in STAGES.items():
        for name in names:
            originals[name] = getattr(_kernels, name)
            setattr(_kernels, name, timed(stage, originals[name]))
    stamps = []

    def cb(it, obj):
        stamps.append(time.perf_counter())
        if it == 2:
            for stage in totals:
                totals[stage] = 0.0

    est = SinkhornEM(
        k, covariance_type="diag", means_init=start, covariances_init=var, n_neighbors=m,
        position_dims=3, max_iter=n_iter, tol=0, callback=cb,
    )  # fmt: skip
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est.fit(X)
    finally:
        for name, fn in originals.items():
            setattr(_kernels, name, fn)
    n = len(stamps) - 2
    per_it = (stamps[-1] - stamps[1]) / n
    out = {stage: t / n for stage, t in totals.items()}
    out["other"] = per_it - sum(out.values())
    return per_it, out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="N in {1e4, 1e5} only")
    p.add_argument("--n", type=int, nargs="*", help="sample sizes (overrides the grid)")
    p.add_argument("--k", type=int, nargs="*", help="component counts (default 50 200)")
    p.add_argument("--no-dense", action="store_true", help="skip our dense run")
    p.add_argument("--no-sklearn", action="store_true", help="skip the sklearn baseline")
    p.add_argument("--full", action="store_true", help="also time m=16 with full covariances")
    p.add_argument("--iters", type=int, default=20, help="iterations timed for ours")
    p.add_argument("--stages", action="store_true", help="per-stage profile of ours, m=16")
    args = p.parse_args(argv)
    ns = args.n or ([10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000])
    ks = args.k or [50, 200]
    print(f"numba threads: {numba.get_num_threads()}, D = 7, float64")
    # warm up the JIT (cached kernels load from disk)
    Xw, sw, vw = make_data(2000, 10)
    time_ours(Xw, sw, vw, 10, 4, "diag", 2)
    time_ours(Xw, sw, vw, 10, 4, "full", 2)
    time_ours(Xw, sw, vw, 10, None, "diag", 2)
    if args.stages:
        for n in args.n or [1_000_000]:
            for k in args.k or [200]:
                per_it, stages = stage_profile(*make_data(n, k), k, 16, max(args.iters, 4))
                print(f"N={n} K={k} m=16: {per_it * 1e3:.1f} ms per iteration (iterations 3+)")
                for stage, t in stages.items():
                    print(f"  {stage:14s} {t * 1e3:7.1f} ms  {100 * t / per_it:5.1f}%")
        return

    rows = []
    for n in ns:
        for k in ks:
            X, start, var = make_data(n, k)
            sk, sk_mem = (np.nan, np.nan) if args.no_sklearn else time_sklearn(X, start, var, k)
            dn, dn_mem = (
                (np.nan, np.nan)
                if args.no_dense
                else time_ours(X, start, var, k, None, "diag", args.iters)[:2]
            )
            sp, sp_mem, _, sp_whole = time_ours(X, start, var, k, 16, "diag", args.iters)
            row = {
                "load": os.getloadavg()[0],
                "n": n,
                "k": k,
                "sk": sk,
                "sk_mem": sk_mem,
                "dn": dn,
                "dn_mem": dn_mem,
                "sp": sp,
                "sp_mem": sp_mem,
                "sp_whole": sp_whole,
            }
            if args.full:
                row["spf"], row["spf_mem"], _, _ = time_ours(
                    X, start, var, k, 16, "full", args.iters
                )
            rows.append(row)
            print(
                f"N={n:>8} K={k:>3}: sklearn {sk * 1e3:9.1f} ms  dense {dn * 1e3:8.1f} ms  "
                f"m=16 {sp * 1e3:8.1f} ms  ratio(sklearn/m=16) {sk / sp:6.1f}x  "
                f"(whole fit {sp_whole * 1e3:.1f} ms/it, {sk / sp_whole:.1f}x)  "
                f"(load {row['load']:.1f})",
                flush=True,
            )

    print()
    hdr = (
        "| N | K | sklearn diag ms/it | ours dense ms/it | ours m=16 ms/it | sklearn/dense "
        "| sklearn/m=16 | m=16 whole fit ms/it (ratio) |"
    )
    if args.full:
        hdr += " ours m=16 full ms/it |"
    hdr += " peak MB sklearn / dense / m=16 | load |"
    print(hdr)
    print("|" + "---|" * (hdr.count("|") - 1))
    for r in rows:
        line = (
            f"| {r['n']:.0e} | {r['k']} | {r['sk'] * 1e3:.1f} | {r['dn'] * 1e3:.1f} | {r['sp'] * 1e3:.1f} "
            f"| {r['sk'] / r['dn']:.1f}x | {r['sk'] / r['sp']:.1f}x "
            f"| {r['sp_whole'] * 1e3:.1f} ({r['sk'] / r['sp_whole']:.1f}x) |"
        )
        if args.full:
            line += f" {r['spf'] * 1e3:.1f} |"
        line += f" {r['sk_mem']:.0f} / {r['dn_mem']:.0f} / {r['sp_mem']:.0f} | {r['load']:.1f} |"
        print(line)
    # linearity in N of the sparse path
    for k in ks:
        sub = [r for r in rows if r["k"] == k]
        if len(sub) >= 2:
            a, b = sub[0], sub[-1]
            print(
                f"K={k}: m=16 time per point per iteration {a['sp'] / a['n'] * 1e9:.0f} ns "
                f"(N={a['n']:.0e}) -> {b['sp'] / b['n'] * 1e9:.0f} ns (N={b['n']:.0e})"
            )


if __name__ == "__main__":
    main()
