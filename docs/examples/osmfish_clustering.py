"""Cluster osmFISH cells (mouse somatosensory cortex) with SinkhornEM, EM and scikit-learn.

Data: Codeluppi et al. 2018 (Nature Methods), as prepared in github RubD/spatial-datasets
(MIT): 33 genes x 6471 cells, of which 5328 have counts and coordinates; dropping the
region "Excluded" leaves 4839 cells in 11 anatomical regions (cortical layers, white
matter, hippocampus, ...; 106 to 1015 cells each) and 31 cell types.

Pipeline (every step is plain NumPy; any ``(n_cells, n_features)`` array works as input,
e.g. ``adata.obsm["X_pca"]`` of an AnnData object or ``df.to_numpy()`` of a DataFrame):

1. counts -> counts per 10^4 per cell -> log1p -> z-score per gene;
2. principal components (SVD of the z-scores), ``--pcs`` of them;
3. optionally the spatial coordinates, standardised and multiplied by ``--spatial``,
   appended as extra features (the regions are spatially contiguous: with a weight near
   1 the clustering follows the anatomy);
4. for each of ``--seeds`` seeds, K data points drawn at random are the start of every
   method (same initial means; data-driven initial covariances):
   ``SinkhornEM`` with uniform weights, ``SinkhornEM(weights="estimate")``, EM with
   learned weights (``SinkhornEM(method="em", learn_weights=True)``) and scikit-learn's
   ``GaussianMixture(means_init=...)``; full covariances, K = 11 (regions) and K = 31
   (cell types);
5. adjusted Rand index (ARI) of each clustering against the regions and the cell types.

Run from the project root (the data is read from ``../shared/realdata/osmfish``)::

    python docs/examples/osmfish_clustering.py                  # K = 11 and 31, 10 seeds
    python docs/examples/osmfish_clustering.py --spatial 1.0    # with coordinates
    python docs/examples/osmfish_clustering.py --k 11 --seeds 3 --cells 2000
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np

from napari_sinkhorn_em import SinkhornEM

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "realdata" / "osmfish"


def load_osmfish(root=DATA):
    """Counts (cells x genes), coordinates (cells x 2), regions, cell types, gene names.

    Cells without counts or coordinates and cells of the region "Excluded" are dropped.
    Raises FileNotFoundError naming the folder when the data is absent.
    """
    root = Path(root)
    files = {
        "expr": root / "osmFISH_prep_expression.txt",
        "xy": root / "osmFISH_prep_cell_coordinates.txt",
        "meta": root / "osmFISH_prep_cell_metadata.txt",
    }
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"osmFISH data not found: {', '.join(missing)}")
    with open(files["expr"]) as f:
        cells = f.readline().rstrip("\n").split("\t")
        genes, rows = [], []
        for line in f:
            parts = line.rstrip("\n").split("\t")
            # rows are "gene<TAB>count..." (one more field than the header)
            genes.append(parts[0])
            rows.append(np.asarray(parts[1:], dtype=np.float64))
    counts = np.stack(rows, axis=1)  # cells x genes
    cells = [c for c in cells if c]
    if counts.shape[0] != len(cells):
        raise ValueError(
            f"{files['expr']}: {len(cells)} cell names but {counts.shape[0]} count columns"
        )
    xy = {}
    with open(files["xy"]) as f:
        f.readline()
        for line in f:
            cid, x, y = line.rstrip("\n").split("\t")
            xy[cid] = (float(x), float(y))
    meta = {}
    with open(files["meta"]) as f:
        f.readline()
        for line in f:
            cid, ctype, _, region = line.rstrip("\n").split("\t")
            meta[cid] = (ctype, region)
    keep = [i for i, c in enumerate(cells) if c in xy and c in meta and meta[c][1] != "Excluded"]
    ids = [cells[i] for i in keep]
    return (
        counts[keep],
        np.array([xy[c] for c in ids]),
        np.array([meta[c][1] for c in ids]),
        np.array([meta[c][0] for c in ids]),
        genes,
    )


def features(counts, xy=None, n_pcs=10, spatial=0.0):
    """Normalised, log-transformed, z-scored counts -> ``n_pcs`` principal components.

    With ``spatial > 0`` the standardised coordinates times ``spatial`` are appended (in
    units of the standard deviation of a principal component: the first PC's is the
    largest, so ``spatial = 1`` gives space about the weight of a leading PC).
    """
    total = counts.sum(axis=1, keepdims=True)
    x = np.log1p(counts / np.maximum(total, 1.0) * 1e4)
    sd = x.std(axis=0)
    z = (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    u, s, _ = np.linalg.svd(z, full_matrices=False)
    pcs = u[:, :n_pcs] * s[:n_pcs]
    pcs /= pcs[:, 0].std()
    if spatial > 0 and xy is not None:
        pos = (xy - xy.mean(axis=0)) / xy.std(axis=0)
        pcs = np.hstack([pcs, spatial * pos])
    return np.ascontiguousarray(pcs)


def cluster(X, K, seed, method, covariance_type="full", max_iter=300):
    """Labels of one clustering of ``X`` (n_cells, n_features) from a seeded random start.

    The start is K distinct rows of ``X`` drawn with ``numpy.random.default_rng(seed)``,
    the same for every method. Returns ``(labels, log-likelihood per cell, seconds)``.
    """
    rng = np.random.default_rng(seed)
    start = X[rng.choice(X.shape[0], size=K, replace=False)]
    common = {"covariance_type": covariance_type, "max_iter": max_iter, "tol": 1e-4}
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if method == "sklearn":
            from sklearn.mixture import GaussianMixture

            est = GaussianMixture(
                K, means_init=start, init_params="random_from_data", random_state=seed,
                reg_covar=1e-6, **common,
            ).fit(X)  # fmt: skip
        else:
            kw = {
                "sinkhorn": {},
                "sinkhorn-estimate": {"weights": "estimate"},
                "em": {"method": "em", "learn_weights": True},
            }[method]
            est = SinkhornEM(K, init=start, fast_start=True, random_state=seed, **kw, **common)
            est.fit(X)
    secs = time.perf_counter() - t
    return est.predict(X), float(est.score(X)), secs


METHODS = {
    "sinkhorn": "Sinkhorn-EM, uniform weights",
    "sinkhorn-estimate": 'Sinkhorn-EM, weights="estimate"',
    "em": "EM, learned weights (same code)",
    "sklearn": "scikit-learn GaussianMixture",
}


def run(ks=(11, 31), seeds=10, n_pcs=10, spatial=0.0, cells=None, methods=tuple(METHODS)):
    """Table rows ``(K, method, ARI regions, ARI cell types, log-lik, seconds)`` (means)."""
    from sklearn.metrics import adjusted_rand_score

    counts, xy, region, ctype, _ = load_osmfish()
    if cells is not None and cells < counts.shape[0]:
        sub = np.random.default_rng(0).choice(counts.shape[0], size=cells, replace=False)
        counts, xy, region, ctype = counts[sub], xy[sub], region[sub], ctype[sub]
    X = features(counts, xy, n_pcs=n_pcs, spatial=spatial)
    rows = []
    for K in ks:
        for method in methods:
            res = [cluster(X, K, seed, method) for seed in range(seeds)]
            ari_r = [adjusted_rand_score(region, lab) for lab, _, _ in res]
            ari_c = [adjusted_rand_score(ctype, lab) for lab, _, _ in res]
            rows.append(
                {
                    "K": K,
                    "method": method,
                    "ari_region": float(np.mean(ari_r)),
                    "ari_region_sd": float(np.std(ari_r)),
                    "ari_type": float(np.mean(ari_c)),
                    "ari_type_sd": float(np.std(ari_c)),
                    "loglik": float(np.mean([r[1] for r in res])),
                    "seconds": float(np.mean([r[2] for r in res])),
                }
            )
    return X.shape, rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--k", type=int, nargs="*", default=[11, 31])
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--pcs", type=int, default=10)
    p.add_argument("--spatial", type=float, default=0.0)
    p.add_argument("--cells", type=int, default=None, help="random subset of cells")
    args = p.parse_args(argv)
    shape, rows = run(args.k, args.seeds, args.pcs, args.spatial, args.cells)
    print(
        f"{shape[0]} cells, {shape[1]} features ({args.pcs} PCs"
        + (f" + 2 coordinates x {args.spatial}" if args.spatial > 0 else "")
        + f"), {args.seeds} seeds, mean (sd) over seeds\n"
    )
    print("| K | method | ARI vs regions | ARI vs cell types | log-lik / cell | s / fit |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['K']} | {METHODS[r['method']]} | {r['ari_region']:.3f} ({r['ari_region_sd']:.3f}) "
            f"| {r['ari_type']:.3f} ({r['ari_type_sd']:.3f}) | {r['loglik']:.3f} "
            f"| {r['seconds']:.2f} |"
        )


if __name__ == "__main__":
    main()
