"""Study: Sinkhorn-EM when the mixing weights are unknown (issue 15, ``weights="estimate"``).

Synthetic set-ups in the style of docs/method.md's random-start table: K spherical unit
Gaussians in d dimensions, means at least ``sep`` apart (rejection sampling in a box),
cluster masses either equal or spread 10x (geometric from 1 to 10, normalised), about
200 points per cluster on average. From ``--seeds`` random starts (``init="random"``:
K data points), each variant's fit counts as a success when every true mean has a
fitted mean within 0.5 (Hungarian matching): the global optimum, as the method's
paper frames it. All variants get the same starts (same ``random_state``).

Variants:

- ``em``: EM with learned weights (classic; the baseline to beat);
- ``em-sm``: the same EM fit followed by the split-and-merge moves of ``"estimate"``
  (``split_merge=True``: how much of ``"estimate"``'s result the moves alone give);
- ``sk-uniform``: Sinkhorn-EM with uniform weights;
- ``estimate-nosm``: ``weights="estimate", split_merge=False`` (Sinkhorn-EM with uniform
  weights, then EM learning them: the recipe before the split-and-merge moves);
- ``estimate``: ``SinkhornEM(weights="estimate")`` (see its docstring / docs/method.md);

Besides the fraction of starts at the global optimum, each cell gives the mean fraction
of true clusters recovered (a fitted mean within 0.5 after matching) and the mean
log-likelihood per point (the global optimum's, from EM started at the true means, in
the last column).

Run ``python benchmarks/study_weights_estimate.py [--seeds 20]``; prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from scipy.optimize import linear_sum_assignment

from napari_sinkhorn_em import SinkhornEM


def make_problem(K, d, spread, seed, sep=6.0, n_per=200):
    rng = np.random.default_rng(1000 + seed)
    side = sep * K ** (1.0 / d) * 1.6
    means = []
    while len(means) < K:
        c = rng.uniform(0, side, size=d)
        if all(np.linalg.norm(c - m) >= sep for m in means):
            means.append(c)
    means = np.array(means)
    w = np.geomspace(1.0, spread, K) if spread > 1 else np.ones(K)
    w = rng.permutation(w / w.sum())
    n = np.maximum(np.round(w * n_per * K).astype(int), 5)
    X = np.concatenate([m + rng.normal(size=(k, d)) for m, k in zip(means, n, strict=True)])
    return X, means


def recovered(found, truth, radius=0.5):
    """Fraction of true means with a fitted mean within ``radius`` (Hungarian matching)."""
    cost = np.linalg.norm(truth[:, None] - found[None], axis=2)
    r, c = linear_sum_assignment(cost)
    return float(np.mean(cost[r, c] < radius))


def run_variant(name, X, K, seed, truth=None):
    kw = {
        "covariance_type": "spherical",
        "init": "random",
        "random_state": seed,
        "max_iter": 500,
        "tol": 1e-6,
    }
    if name == "em":
        est = SinkhornEM(K, method="em", learn_weights=True, **kw).fit(X)
    elif name == "em-sm":
        est = SinkhornEM(K, method="em", learn_weights=True, split_merge=True, **kw).fit(X)
    elif name == "sk-uniform":
        est = SinkhornEM(K, **kw).fit(X)
    elif name == "estimate":
        est = SinkhornEM(K, weights="estimate", **kw).fit(X)
    elif name == "estimate-nosm":
        est = SinkhornEM(K, weights="estimate", split_merge=False, **kw).fit(X)
    elif name == "optimum":
        kw["init"] = truth
        est = SinkhornEM(K, method="em", learn_weights=True, **kw).fit(X)
    else:
        raise ValueError(name)
    return est


VARIANTS = ("em", "em-sm", "sk-uniform", "estimate-nosm", "estimate")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, default=20)
    p.add_argument("--variants", nargs="*", default=list(VARIANTS))
    p.add_argument(
        "--setups",
        nargs="*",
        default=["10,2,1", "10,2,3", "10,2,10", "25,2,10", "25,5,10", "50,5,10"],
    )
    args = p.parse_args(argv)
    print("| set-up (K, d, spread) | " + " | ".join(args.variants) + " | optimum |")
    print("|---|" + "---|" * (len(args.variants) + 1))
    for setup in args.setups:
        K, d, spread = (int(v) for v in setup.split(","))
        wins = dict.fromkeys(args.variants, 0)
        rec = {v: [] for v in args.variants}
        opt = []
        opt_ok = []
        secs = dict.fromkeys(args.variants, 0.0)
        ll = {v: [] for v in args.variants}
        for s in range(args.seeds):
            X, truth = make_problem(K, d, spread, s)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                best = run_variant("optimum", X, K, s, truth)
                opt.append(best.score(X))
                opt_ok.append(recovered(best.means_, truth) == 1.0)
            for v in args.variants:
                t = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    est = run_variant(v, X, K, s)
                secs[v] += time.perf_counter() - t
                r = recovered(est.means_, truth)
                wins[v] += r == 1.0
                rec[v].append(r)
                ll[v].append(est.score(X))
        cells = [
            f"**{wins[v] / args.seeds:.2f}** ({np.mean(rec[v]):.2f}, {np.mean(ll[v]):.3f}, "
            f"{secs[v] / args.seeds:.2f} s)"
            for v in args.variants
        ]
        print(
            f"| {K}, {d}, {spread}x | "
            + " | ".join(cells)
            + f" | {np.mean(opt):.3f} ({np.mean(opt_ok):.2f}) |",
            flush=True,
        )
    print(
        f"\nCells ({args.seeds} random starts): **fraction reaching the global optimum** "
        "(mean fraction of clusters recovered, mean log-likelihood per point, mean seconds "
        "per fit); optimum: mean log-likelihood of EM started at the true means (the "
        "fraction of seeds where even that fit passes the 0.5 test: a small cluster's "
        "sample mean can lie farther than 0.5 from its true mean in 5-D)."
    )


if __name__ == "__main__":
    main()
