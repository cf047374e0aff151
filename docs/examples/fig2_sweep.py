"""Reproduce the 1-D experiment of Fig. 2 of Mena et al. (arXiv 2006.16548).

x ~ a* N(theta*, 1) + (1 - a*) N(-theta*, 1) with theta* = 1 and N = 1000 points. The
model has fixed weights (a*, 1 - a*), unit variances and symmetric means (+theta, -theta);
only theta is learned, starting from theta_0 = -2. EM (fixed weights) and Sinkhorn-EM use
the same symmetric-means M-step; Sinkhorn-EM's E-step is
``napari_sinkhorn_em.sinkhorn_responsibilities``. A run "reaches the global optimum" when
its final theta is positive (the spurious fixed point sits near theta = -1).

Prints a markdown table over a* (success rate over seeds, mean iterations of the
successful runs, mean final theta).

    python docs/examples/fig2_sweep.py [--seeds 20]
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy.special import log_softmax

from napari_sinkhorn_em import sinkhorn_responsibilities

LOG_NORM = -0.5 * np.log(2 * np.pi)


def sample(a_star, n=1000, seed=0, theta_star=1.0):
    rng = np.random.default_rng(seed)
    z = rng.random(n) < a_star
    return np.where(z, theta_star, -theta_star) + rng.normal(size=n)


def log_prob(x, theta):
    return np.stack([LOG_NORM - 0.5 * (x - theta) ** 2, LOG_NORM - 0.5 * (x + theta) ** 2], 1)


def fit(x, a_star, method, theta0=-2.0, max_iter=500, tol=1e-8):
    """Return (final theta, iterations)."""
    w = np.array([a_star, 1.0 - a_star])
    theta = theta0
    g = None
    for it in range(1, max_iter + 1):
        A = log_prob(x, theta)
        if method == "em":
            r = np.exp(log_softmax(A + np.log(w), axis=1))
        else:
            r, info = sinkhorn_responsibilities(A, w, init_potential=g, tol=1e-12, return_info=True)
            g = info.potential
        new = float(np.mean((r[:, 0] - r[:, 1]) * x))
        if abs(new - theta) < tol:
            return new, it
        theta = new
    return theta, max_iter


def sweep(a_values, seeds, n=1000):
    rows = []
    for a in a_values:
        row = {"a": a}
        for method in ("em", "sinkhorn"):
            th, its = zip(*(fit(sample(a, n, s), a, method) for s in range(seeds)), strict=True)
            th, its = np.array(th), np.array(its)
            ok = th > 0
            row[method] = (ok.mean(), its[ok].mean() if ok.any() else np.nan, th.mean())
        rows.append(row)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description="Fig. 2 sweep over a*")
    p.add_argument("--seeds", type=int, default=20)
    args = p.parse_args(argv)
    a_values = np.round(np.arange(0.60, 0.901, 0.02), 2)
    rows = sweep(a_values, args.seeds)
    print(f"theta0 = -2, N = 1000, {args.seeds} data sets per a*; success = final theta > 0\n")
    print(
        "| a* | EM success | EM iters | EM mean theta | Sinkhorn-EM success | Sinkhorn-EM iters | Sinkhorn-EM mean theta |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        e, s = r["em"], r["sinkhorn"]
        print(
            f"| {r['a']:.2f} | {e[0]:.0%} | {e[1]:.1f} | {e[2]:+.3f} | {s[0]:.0%} | {s[1]:.1f} | {s[2]:+.3f} |"
        )


if __name__ == "__main__":
    main()
