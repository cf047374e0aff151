"""Study: can Sinkhorn-EM beat EM from *random* starts when nuclei differ in mass?

On synthetic NeuroPAL-like heads (``make_worm(n_nuclei=195, seed=s)``, 4 channels,
nucleus mass varying by about +-50%) Sinkhorn-EM from LoG peaks with Voronoi weights
ties or beats EM, but from random voxel starts it loses because the fixed mixing
weights (uniform, or the Voronoi masses of random centres) are wrong.  This script
compares weight strategies from the *same* random starts (same features, initial
means, covariances and covariance bounds as :func:`segment_nuclei` builds them; labels
and centres from the pipeline's own label step), scored by centre F1 (Hungarian
matching within 1.5 um, :func:`napari_sinkhorn_em.evaluation.metrics.match_centres`).

Variants (``w`` = mixing weights, "round" = a short warm-started fit of ``INNER``
iterations followed by a weight update):

- ``em-uniform``: EM, fixed uniform weights (the benchmark's EM baseline);
- ``em-learned``: classic EM, weights learned;
- ``sk-uniform``: Sinkhorn-EM, uniform weights;
- ``sk-voronoi``: Sinkhorn-EM, weights = intensity mass of each random start's Voronoi cell;
- ``sk-uniform-umass`` (d): uniform voxel mass and uniform weights;
- ``sk-voronoi-refit`` (a): rounds; w <- Voronoi intensity mass around the current means;
- ``sk-voronoi-refit-long``: the same with 20 rounds;
- ``em-voronoi-refit-long``: control, the same 20-round Voronoi outer loop around EM;
- ``sk-voronoi-refit-damped``: 10 rounds, w <- (1-eta) w + eta Voronoi, eta = 0.5;
- ``sk-voronoi-refit3``: 3 rounds of 10 iterations, then a fit of up to 100;
- ``sk-hard-refit-long``: 20 rounds, w <- intensity mass of the voxels whose most
  responsible component is k (a Voronoi cell in the model's own metric);
- ``sk-voronoi-then-hard``: 10 Voronoi rounds, then 10 MAP-mass rounds;
- ``sk-resp-refit`` (a): rounds; w <- (1-eta) w + eta m, m = EM posterior mass of
  each component at the current parameters (one classic-EM weight update), eta = 0.5;
- ``sk-anneal`` (b-like): rounds; geometric damping w <- w^(1-eta_t) m^eta_t with eta_t
  annealed from 1 to 0 (early rounds: EM-like free weights; last rounds: pure Sinkhorn-EM
  with frozen weights) -- the outer-loop form of a semi-relaxed column marginal whose
  penalty grows from 0 to infinity;
- ``sk-rank`` (c): rounds; the sorted multiset of Voronoi masses around LoG peaks is
  assigned to components rank-to-rank by their current EM posterior mass;
- ``em-then-sk``: EM (uniform weights) to convergence, then Sinkhorn-EM warm-started
  from it with Voronoi weights around the EM centres (the peak-start recipe applied
  to EM's output).

Run ``NUMBA_NUM_THREADS=1 python benchmarks/study_random_starts.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from napari_sinkhorn_em.evaluation.metrics import match_centres
from napari_sinkhorn_em.mixture import ConvergenceWarning, SinkhornEM
from napari_sinkhorn_em.pipeline.features import voxel_features
from napari_sinkhorn_em.pipeline.labels import labels_from_components, min_label_volume
from napari_sinkhorn_em.pipeline.peaks import detect_nuclei, detect_peaks
from napari_sinkhorn_em.pipeline.preprocess import preprocess
from napari_sinkhorn_em.pipeline.starts import (
    covariance_bounds,
    means_from_centres,
    nominal_covariances,
    peak_centres,
)
from napari_sinkhorn_em.pipeline.table import channels_last, nucleus_table
from napari_sinkhorn_em.pipeline.weights import voronoi_mass, weights_from_mass
from napari_sinkhorn_em.synthetic import make_worm

DIAMETER = 2.7  # the generator's mean nucleus diameter (as bench_segmentation.py)
TOL = 1e-5
MAX_ITER = 100
ROUNDS = 10
INNER = 10
ETA = 0.5


class Problem:
    """Features, starts and scoring for one worm, built as segment_nuclei builds them."""

    def __init__(self, worm_seed: int, n_nuclei: int = 195):
        self.w = make_worm(n_nuclei=n_nuclei, seed=worm_seed)
        w = self.w
        self.pre = preprocess(
            w.image, voxel_size=w.voxel_size, channel_axis=w.channel_axis,
            nucleus_diameter=DIAMETER,
        )  # fmt: skip
        self.vs = np.asarray(self.pre.voxel_size)
        self.ndim = self.vs.size
        self.feats = {
            m: voxel_features(
                self.pre.data,
                self.pre.foreground,
                self.vs,
                intensity_weight=1.0,
                mass=m,
                signal=self.pre.signal,
            )
            for m in ("intensity", "uniform")
        }
        f = self.feats["intensity"]
        self.X, self.a, self.pos = f.X, f.sample_weight, f.positions
        self.K = len(w.centres)
        self.D = self.X.shape[1]
        self.bounds = covariance_bounds(DIAMETER, (0.25, 4.0))
        self.cov0 = nominal_covariances(self.X, self.K, self.ndim, DIAMETER)
        self.peaks = detect_peaks(
            self.pre.signal, self.vs, nucleus_diameter=DIAMETER, foreground=self.pre.foreground
        )
        self.nuclei = detect_nuclei(
            self.pre.signal, self.vs, nucleus_diameter=DIAMETER, foreground=self.pre.foreground
        )

    def cell_masses(self, ref_um):
        """Intensity mass of each reference centre's Voronoi cell (reference nuclei)."""
        return ref_um, voronoi_mass(self.pos, self.a, ref_um)

    def mapped_weights(self, ref, means):
        """Each component gets the mass of the reference nucleus nearest to its mean (two
        components in one nucleus both get that nucleus's full mass), normalised."""
        ref_um, mass = ref
        _, j = cKDTree(ref_um).query(means[:, : self.ndim])
        return weights_from_mass(mass[j])

    def means_from_centres(self, c_um):
        """Initial means as segment_nuclei builds them from centres in um."""
        return means_from_centres(self.X, self.pos, c_um)

    def random_start(self, seed):
        """K distinct foreground voxels drawn with probability proportional to mass."""
        rng = np.random.default_rng(seed)
        j = rng.choice(self.pos.shape[0], size=self.K, replace=False, p=self.a)
        return self.means_from_centres(self.pos[j])

    def peak_start(self):
        # as segment_nuclei: k-means++-style extra seeds when there are fewer peaks
        rng = np.random.default_rng(0)
        c = peak_centres(self.pos, self.a, self.peaks, self.vs, self.K, rng)
        return self.means_from_centres(c)

    def peak_mass_multiset(self):
        """Sorted Voronoi intensity masses around the LoG peaks (padded to K by the median)."""
        c = self.peaks.coords * self.vs
        m = voronoi_mass(self.pos, self.a, c)
        m = np.sort(m)[::-1][: self.K]
        if m.size < self.K:
            m = np.concatenate([m, np.full(self.K - m.size, np.median(m))])
        return np.sort(m / m.sum())

    def fit(self, means, cov, weights, *, method="sinkhorn", max_iter=MAX_ITER,
            learn=False, mass="intensity"):  # fmt: skip
        f = self.feats[mass]
        model = SinkhornEM(
            self.K, method=method, weights=weights, learn_weights=learn,
            covariance_type="full", covariance_bounds=self.bounds, tol=TOL,
            max_iter=max_iter, init=means, covariances_init=cov,
            n_neighbors=16, random_state=0, position_dims=self.ndim,
        )  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            comp = model.fit_predict(f.X, sample_weight=f.sample_weight)
        return model, comp

    def em_mass(self, model):
        """Classic-EM weight update at the model's parameters (posterior mass)."""
        m, _ = self.fit(
            model.means_, model.covariances_, model.weights_, method="em", max_iter=1,
            learn=True,
        )  # fmt: skip
        return m.weights_

    def score(self, model, comp):
        f = self.feats["intensity"]
        lab = labels_from_components(
            f.indices, self.pos, comp, model.means_, model.covariances_,
            self.pre.foreground.shape, self.vs, radius=3.0,
            min_volume=min_label_volume(DIAMETER, self.ndim, 0.1),
        )  # fmt: skip
        raw = channels_last(self.w.image, self.w.channel_axis)
        centres = nucleus_table(
            lab.labels, lab.component_ids, model.means_[:, : self.ndim] / self.vs, raw,
            self.vs, [f"c{i}" for i in range(raw.shape[-1])],
        ).centres  # fmt: skip
        m = match_centres(centres, self.w.centres, voxel_size=self.w.voxel_size, max_distance=1.5)
        return float(m.f1)


def _rounds(p, means, cov, w0, update, n_rounds=ROUNDS, inner=INNER, last=None, method="sinkhorn"):
    """Alternate short warm-started Sinkhorn-EM fits with weight updates (the last fit
    runs ``last`` iterations, default ``inner``)."""
    w = w0
    model = comp = None
    it = 0
    for r in range(n_rounds):
        n = inner if (r < n_rounds - 1 or last is None) else last
        model, comp = p.fit(means, cov, w, max_iter=n, method=method)
        it += model.n_iter_
        means, cov = model.means_, model.covariances_
        if r < n_rounds - 1:
            w = update(model, w, r, comp)
            w = np.maximum(w, 1e-6)
            w = w / w.sum()
    return model, comp, it


def run_variant(p, name, means0):
    cov0 = p.cov0
    K = p.K
    uni = np.full(K, 1.0 / K)
    vor0 = weights_from_mass(voronoi_mass(p.pos, p.a, means0[:, : p.ndim]))
    if name == "em-uniform":
        m, c = p.fit(means0, cov0, uni, method="em")
        return m, c, m.n_iter_
    if name == "em-learned":
        m, c = p.fit(means0, cov0, uni, method="em", learn=True)
        return m, c, m.n_iter_
    if name == "em-voronoi":
        m, c = p.fit(means0, cov0, vor0, method="em")
        return m, c, m.n_iter_
    if name == "sk-uniform":
        m, c = p.fit(means0, cov0, uni)
        return m, c, m.n_iter_
    if name == "sk-voronoi":
        m, c = p.fit(means0, cov0, vor0)
        return m, c, m.n_iter_
    if name == "sk-uniform-umass":
        m, c = p.fit(means0, cov0, uni, mass="uniform")
        return m, c, m.n_iter_
    if name == "sk-voronoi-refit":

        def upd(model, w, r, comp):
            return weights_from_mass(voronoi_mass(p.pos, p.a, model.means_[:, : p.ndim]))

        return _rounds(p, means0, cov0, vor0, upd)
    if name == "sk-voronoi-refit-long":  # 20 rounds of 10 iterations

        def upd(model, w, r, comp):
            return weights_from_mass(voronoi_mass(p.pos, p.a, model.means_[:, : p.ndim]))

        return _rounds(p, means0, cov0, vor0, upd, n_rounds=2 * ROUNDS)
    if name == "em-voronoi-refit-long":  # control: the same outer loop around EM

        def upd(model, w, r, comp):
            return weights_from_mass(voronoi_mass(p.pos, p.a, model.means_[:, : p.ndim]))

        return _rounds(p, means0, cov0, vor0, upd, n_rounds=2 * ROUNDS, method="em")
    if name == "sk-voronoi-refit-damped":  # w <- (1-eta) w + eta Voronoi, 10 rounds

        def upd(model, w, r, comp):
            v = weights_from_mass(voronoi_mass(p.pos, p.a, model.means_[:, : p.ndim]))
            return (1 - ETA) * w + ETA * v

        return _rounds(p, means0, cov0, vor0, upd)
    if name == "sk-voronoi-refit3":  # 3 rounds of 10 iterations, then a full fit

        def upd(model, w, r, comp):
            return weights_from_mass(voronoi_mass(p.pos, p.a, model.means_[:, : p.ndim]))

        return _rounds(p, means0, cov0, vor0, upd, n_rounds=4, last=MAX_ITER)
    if name == "sk-hard-refit-long":  # 20 rounds; w <- mass of each component's MAP voxels

        def upd(model, w, r, comp):
            return weights_from_mass(np.bincount(comp, weights=p.a, minlength=K))

        return _rounds(p, means0, cov0, vor0, upd, n_rounds=2 * ROUNDS)
    if name == "sk-voronoi-then-hard":  # 10 Voronoi rounds, then 10 MAP-mass rounds

        def upd(model, w, r, comp):
            if r < ROUNDS - 1:
                v = voronoi_mass(p.pos, p.a, model.means_[:, : p.ndim])
            else:
                v = np.bincount(comp, weights=p.a, minlength=K)
            return weights_from_mass(v)

        return _rounds(p, means0, cov0, vor0, upd, n_rounds=2 * ROUNDS)
    if name == "sk-resp-refit":

        def upd(model, w, r, comp):
            return (1 - ETA) * w + ETA * p.em_mass(model)

        return _rounds(p, means0, cov0, vor0, upd)
    if name == "sk-anneal":

        def upd(model, w, r, comp):
            eta = 1.0 - (r + 1) / (ROUNDS - 1)  # 1 - 1/9 ... 0
            return np.exp((1 - eta) * np.log(w) + eta * np.log(p.em_mass(model)))

        return _rounds(p, means0, cov0, vor0, upd)
    if name == "sk-rank":
        ms = p.peak_mass_multiset()

        def upd(model, w, r, comp):
            order = np.argsort(p.em_mass(model), kind="stable")
            new = np.empty(K)
            new[order] = ms
            return new

        return _rounds(p, means0, cov0, vor0, upd)
    if name in ("sk-oracle", "em-oracle", "sk-detected", "em-detected"):
        # weights = mass of the reference nucleus under each component, re-mapped around
        # the current means every round (20 rounds x 10 iterations); "oracle" = the true
        # centres, "detected" = the LoG peaks of the pipeline (detect_nuclei)
        if name.endswith("oracle"):
            ref = p.cell_masses(p.w.centres_um)
        else:
            ref = p.cell_masses(p.nuclei.coords * p.vs)

        def upd(model, w, r, comp):
            return p.mapped_weights(ref, model.means_)

        method = "em" if name.startswith("em") else "sinkhorn"
        w0 = p.mapped_weights(ref, means0)
        return _rounds(p, means0, cov0, w0, upd, n_rounds=2 * ROUNDS, method=method)
    if name == "em-then-sk":
        m, _ = p.fit(means0, cov0, uni, method="em")
        w = weights_from_mass(voronoi_mass(p.pos, p.a, m.means_[:, : p.ndim]))
        m2, c2 = p.fit(m.means_, m.covariances_, w)
        return m2, c2, m.n_iter_ + m2.n_iter_
    raise ValueError(f"unknown variant {name!r}")


VARIANTS = [
    "em-uniform",
    "em-learned",
    "em-voronoi",
    "sk-voronoi",
    "sk-uniform-umass",
    "sk-voronoi-refit",
    "sk-voronoi-refit-long",
    "em-voronoi-refit-long",
    "sk-voronoi-refit-damped",
    "sk-voronoi-refit3",
    "sk-hard-refit-long",
    "sk-voronoi-then-hard",
    "sk-resp-refit",
    "sk-anneal",
    "sk-rank",
    "em-then-sk",
    "sk-oracle",
    "em-oracle",
    "sk-detected",
    "em-detected",
    "sk-uniform",
]

# Slow (tens of seconds per run: the E-step struggles with badly wrong weights) and
# clearly worse in the study; run them explicitly with --variants.
SLOW = ["sk-uniform", "sk-uniform-umass", "sk-anneal", "sk-rank"]
VARIANTS = [v for v in VARIANTS if v not in SLOW] + SLOW
PEAK_VARIANTS = [
    "em-uniform", "em-learned", "sk-voronoi", "sk-voronoi-refit", "sk-voronoi-refit-long",
    "sk-resp-refit", "sk-hard-refit-long", "sk-voronoi-then-hard",
]  # fmt: skip
QUICK = ["em-uniform", "sk-voronoi", "sk-voronoi-refit-long"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick", action="store_true", help="1 worm, 1 random seed, the fast key variants"
    )
    ap.add_argument("--worms", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--variants", nargs="+", default=None, help=f"default: {VARIANTS}")
    ap.add_argument(
        "--peaks", nargs="*", default=None,
        help=f"variants also run from the LoG-peak start (default: {PEAK_VARIANTS})",
    )  # fmt: skip
    ap.add_argument("--no-random", action="store_true", help="only the peak starts")
    ap.add_argument("--out", type=Path, default=None, help="append JSON lines here")
    args = ap.parse_args(argv)
    worms, seeds = (args.worms[:1], args.seeds[:1]) if args.quick else (args.worms, args.seeds)
    if args.variants is None:
        args.variants = QUICK if args.quick else VARIANTS
    if args.peaks is None:
        args.peaks = QUICK if args.quick else PEAK_VARIANTS
    rows = []
    for ws in worms:
        p = Problem(ws)
        starts = [] if args.no_random else [(f"random{s}", p.random_start(1000 + s)) for s in seeds]
        if args.peaks:
            starts.append(("peaks", p.peak_start()))
        for start_name, means0 in starts:
            names = args.variants if start_name != "peaks" else args.peaks
            for name in names:
                t = time.perf_counter()
                model, comp, n_it = run_variant(p, name, means0)
                row = {
                    "worm": ws, "start": start_name, "variant": name,
                    "f1": p.score(model, comp), "iter": int(n_it),
                    "time": time.perf_counter() - t,
                }  # fmt: skip
                rows.append(row)
                print(json.dumps(row), flush=True)
                if args.out is not None:
                    with open(args.out, "a", encoding="utf-8") as fh:
                        fh.write(json.dumps(row) + "\n")
    print("\n| variant | start | runs | centre F1 (mean) | iterations | time (s) |")
    print("|---|---|---|---|---|---|")
    keys = []
    for r in rows:
        k = (r["variant"], "peaks" if r["start"] == "peaks" else "random")
        if k not in keys:
            keys.append(k)
    for k in keys:
        sel = [
            r for r in rows if (r["variant"], "peaks" if r["start"] == "peaks" else "random") == k
        ]
        print(
            f"| {k[0]} | {k[1]} | {len(sel)} | {np.mean([r['f1'] for r in sel]):.3f} | "
            f"{np.mean([r['iter'] for r in sel]):.0f} | {np.mean([r['time'] for r in sel]):.1f} |"
        )


if __name__ == "__main__":
    main()
