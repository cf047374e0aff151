"""The pipeline stages one by one: starts, weights, fit, tiling, labels, table, clock."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from napari_sinkhorn_em.evaluation.metrics import match_centres
from napari_sinkhorn_em.pipeline.features import voxel_features
from napari_sinkhorn_em.pipeline.fit import (
    FitCancelled,
    FitSettings,
    fit_block,
    fit_mixture,
    resolve_refits,
)
from napari_sinkhorn_em.pipeline.labels import (
    labels_from_components,
    mahalanobis_position,
    min_label_volume,
)
from napari_sinkhorn_em.pipeline.peaks import Peaks
from napari_sinkhorn_em.pipeline.progress import SegmentationCancelled, StageClock
from napari_sinkhorn_em.pipeline.starts import (
    add_seeds,
    array_start,
    covariance_bounds,
    means_from_centres,
    n_components,
    nominal_covariances,
    peak_centres,
)
from napari_sinkhorn_em.pipeline.table import channels_last, nucleus_table
from napari_sinkhorn_em.pipeline.tiling import merge_slabs, n_slabs, plan_slabs
from napari_sinkhorn_em.pipeline.weights import (
    mixing_weights,
    reference_nuclei,
    voronoi_mass,
    weights_from_mass,
)


def blobs(centres, shape=(40, 120), radius=3.5):
    """Uniform discs of intensity 1 at ``centres`` (voxels): a 2-D one-channel image."""
    yy, xx = np.indices(shape)
    img = np.zeros(shape)
    for cy, cx in centres:
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = 1.0
    return img


CENTRES = np.array(
    [[10.0, 10.0 + 12 * i] for i in range(9)] + [[28.0, 16.0 + 12 * i] for i in range(8)]
)


@pytest.fixture(scope="module")
def disc_features():
    img = blobs(CENTRES)
    fg = img > 0
    return voxel_features(img[..., None], fg, np.array([1.0, 1.0]), mass="uniform")


def settings(**kw):
    s = {
        "method": "sinkhorn", "weights": "voronoi", "n_refits": 0,
        "covariance_bounds": covariance_bounds(7.0, (0.25, 4.0)), "max_iter": 100,
        "tol": 1e-5, "n_neighbors": 8, "marginal_penalty": 1000.0, "random_state": 0,
        "position_dims": 2,
    }  # fmt: skip
    s.update(kw)
    return FitSettings(**s)


# ------------------------------------------------------------------------- clock


def test_stage_clock_times_reports_and_cancels():
    calls = []
    clock = StageClock(lambda s, i, o: calls.append((s, i, o)) or s == "labels")
    with clock.stage("preprocess"):
        pass
    with clock.stage("features", report=False):
        pass
    cb = clock.iteration_callback("fit")
    assert cb(5, 1.5) is False and cb(9, 2.0) is False  # counted over the stage
    with pytest.raises(SegmentationCancelled, match="'labels'"), clock.stage("labels"):
        raise AssertionError("a cancelled stage must not run")
    assert calls == [("preprocess", 0, None), ("fit", 1, 1.5), ("fit", 2, 2.0), ("labels", 0, None)]
    assert list(clock.timings) == ["preprocess", "features"]
    assert all(t >= 0 for t in clock.finish().values()) and "total" in clock.timings
    assert StageClock().iteration_callback() is None


# ------------------------------------------------------------------------- weights


def test_voronoi_mass_and_weights_from_mass():
    pos = np.array([[0.0], [1.0], [2.0], [10.0], [11.0]])
    m = voronoi_mass(pos, np.array([1.0, 1.0, 2.0, 1.0, 3.0]), np.array([[1.0], [10.0], [50.0]]))
    np.testing.assert_array_equal(m, [4.0, 4.0, 0.0])
    w = weights_from_mass(m)  # the empty cell is floored at 1 % of the median (4)
    np.testing.assert_allclose(w, np.array([4.0, 4.0, 0.04]) / 8.04)
    np.testing.assert_allclose(weights_from_mass(np.zeros(3)), np.full(3, 1 / 3))


def test_nuclei_weights_two_components_in_one_nucleus_both_claim_it():
    pos = np.array([[0.0], [1.0], [2.0], [10.0]])
    ref = reference_nuclei(pos, np.ones(4), np.array([[1.0], [10.0]]))
    np.testing.assert_array_equal(ref.mass, [3.0, 1.0])
    w = mixing_weights("nuclei", np.array([[0.2], [1.8], [9.0]]), pos, np.ones(4), ref)
    np.testing.assert_allclose(w, np.array([3.0, 3.0, 1.0]) / 7.0)
    assert mixing_weights("uniform", np.zeros((2, 1)), pos, np.ones(4)) is None
    np.testing.assert_allclose(
        mixing_weights("voronoi", np.array([[1.0], [10.0]]), pos, np.ones(4)), [0.75, 0.25]
    )
    with pytest.raises(ValueError, match="reference"):
        mixing_weights("nuclei", np.zeros((2, 1)), pos, np.ones(4))
    with pytest.raises(ValueError, match="weights must be one of"):
        mixing_weights("mass", np.zeros((2, 1)), pos, np.ones(4))


# ------------------------------------------------------------------------- starts


def test_add_seeds_go_to_mass_far_from_centres():
    pos = np.array([[0.0, 0.0], [0.5, 0.0], [20.0, 0.0], [20.5, 0.0]])
    mass = np.ones(4)
    c = add_seeds(pos, mass, np.array([[0.0, 0.0]]), 1, np.random.default_rng(0))
    assert c.shape == (2, 2) and c[1, 0] >= 20.0
    # deterministic given the generator's state; from no centre at all: mass-proportional
    a = add_seeds(pos, mass, np.zeros((0, 2)), 3, np.random.default_rng(3))
    b = add_seeds(pos, mass, np.zeros((0, 2)), 3, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert len({tuple(r) for r in a}) == 3


def test_peak_centres_and_n_components():
    peaks = Peaks(np.array([[1.0, 1.0], [5.0, 5.0]]), np.ones(2), np.ones(2), np.ones(2), 0.0)
    pos = np.argwhere(np.ones((10, 10))).astype(float) * 0.5
    c = peak_centres(pos, np.ones(len(pos)), peaks, np.array([0.5, 0.5]), 1, None)
    np.testing.assert_array_equal(c, [[0.5, 0.5]])
    c = peak_centres(
        pos, np.ones(len(pos)), peaks, np.array([0.5, 0.5]), 4, np.random.default_rng(0)
    )
    assert c.shape == (4, 2)
    np.testing.assert_array_equal(c[:2], [[0.5, 0.5], [2.5, 2.5]])
    assert n_components(None, peaks, None, 100) == 2
    assert n_components(7, peaks, None, 100) == 7
    assert n_components("auto", None, np.zeros((3, 2)), 100) == 3
    with pytest.raises(ValueError, match="differs from the 3 centres"):
        n_components(4, None, np.zeros((3, 2)), 100)
    with pytest.raises(ValueError, match="no nuclei detected"):
        n_components(None, Peaks(np.zeros((0, 2)), *[np.zeros(0)] * 3, 0.0), None, 100)
    with pytest.raises(ValueError, match="larger than the number of foreground voxels"):
        n_components(7, peaks, None, 5)


def test_means_and_covariances_from_centres(disc_features):
    f = disc_features
    means = means_from_centres(f.X, f.positions, CENTRES[:3])
    np.testing.assert_array_equal(means[:, :2], CENTRES[:3])
    np.testing.assert_allclose(means[:, 2], 1.0)  # inside a disc of intensity 1
    cov = nominal_covariances(f.X, 3, 2, 7.0)
    np.testing.assert_allclose(cov[0, :2, :2], np.eye(2) * 3.5**2 / 5)
    assert cov[0, 2, 2] == pytest.approx(max(np.var(f.X[:, 2]), 1e-6) / 4)
    assert covariance_bounds(2.0, (0.5, 2.0)) == (0.5 * 0.2, 2.0 * 0.2)


# ------------------------------------------------------------------------- fit, tiling


def test_fit_block_recovers_discs_and_refits_count(disc_features):
    f = disc_features
    rng = np.random.default_rng(0)
    start = array_start(f.X, f.positions, CENTRES + rng.normal(0, 1.5, CENTRES.shape), 7.0)
    run = fit_block(f.X, f.sample_weight, f.positions, start.means, start.covariances, settings())
    m = match_centres(run.model.means_[:, :2], CENTRES, max_distance=1.0)
    assert m.f1 == 1.0 and m.mean_error < 0.3
    np.testing.assert_allclose(run.weights, 1 / 17, rtol=0.2)  # equal discs, Voronoi mass
    iters = []
    fit_block(
        f.X, f.sample_weight, f.positions, start.means, start.covariances,
        settings(n_refits=2, max_iter=30), callback=lambda i, o: iters.append(i) and False,
    )  # fmt: skip
    assert iters.count(1) == 3  # three fits: two refits and the last one
    with pytest.raises(FitCancelled):
        fit_block(
            f.X, f.sample_weight, f.positions, start.means, start.covariances, settings(),
            callback=lambda i, o: i >= 2,
        )  # fmt: skip
    assert resolve_refits("auto", "random", "sinkhorn") == 19
    assert resolve_refits("auto", "peaks", "sinkhorn") == 0
    assert resolve_refits("auto", "random", "em") == 0


def test_tiled_fit_matches_the_discs_and_owns_each_once(disc_features):
    f = disc_features
    start = array_start(f.X, f.positions, CENTRES + 0.7, 7.0)
    assert n_slabs(17, 200) == 1 and n_slabs(17, 6) == 3
    slabs = plan_slabs(f.positions, start.means, 3, margin=14.0)
    assert [s.axis for s in slabs] == [1, 1, 1]  # the longest axis (x)
    cores = [(s.lo, s.hi) for s in slabs]
    assert cores[0][0] == -np.inf and cores[-1][1] == np.inf
    assert sum(s.components.size for s in slabs) > 17  # margins overlap
    fit = fit_mixture(
        f.X, f.sample_weight, f.positions, start, settings(),
        max_components_per_tile=6, tile_margin=14.0,
    )  # fmt: skip
    assert fit.n_tiles == 3 and len(fit.model) == 3
    assert fit.means.shape[0] == 17  # each nucleus owned by exactly one slab
    m = match_centres(fit.means[:, :2], CENTRES, max_distance=1.0)
    assert m.f1 == 1.0
    assert fit.components.min() >= 0 and fit.weights.sum() == pytest.approx(1.0)
    # merge_slabs on its own: the same result from the slab models
    merged = merge_slabs(
        slabs, fit.model, [m.predict(f.X[s.voxels]) for m, s in zip(fit.model, slabs, strict=True)],
        f.positions, f.sample_weight,
    )  # fmt: skip
    np.testing.assert_array_equal(merged.means, fit.means)


def test_fit_mixture_drawn_starts_keep_the_best(disc_features):
    f = disc_features
    one = fit_mixture(
        f.X, f.sample_weight, f.positions, "k-means++", settings(), n_components=17, n_init=1
    )
    three = fit_mixture(
        f.X, f.sample_weight, f.positions, "k-means++", settings(), n_components=17, n_init=3
    )
    assert three.objective >= one.objective
    assert match_centres(three.means[:, :2], CENTRES, max_distance=1.5).f1 >= 0.9


# ------------------------------------------------------------------------- labels, table


def test_labels_from_components_radius_and_min_volume():
    shape = (20, 40)
    idx = np.argwhere(blobs([[10, 10], [10, 30]], shape, radius=4) > 0)
    pos = idx.astype(float)
    comp = (idx[:, 1] > 20).astype(np.int64)
    means = np.array([[10.0, 10.0], [10.0, 30.0]])
    covs = np.tile(np.eye(2), (2, 1, 1))
    d2 = mahalanobis_position(pos, comp, means, covs)
    np.testing.assert_allclose(d2, ((pos - means[comp]) ** 2).sum(1))
    lab = labels_from_components(
        idx, pos, comp, means, covs, shape, (1.0, 1.0), radius=2.0, min_volume=1.0
    )
    assert lab.labels.dtype == np.uint16
    assert [(lab.labels == v).sum() for v in (1, 2)] == [13, 13]  # the radius-2 discs
    np.testing.assert_array_equal(lab.component_ids, [0, 1])
    lab = labels_from_components(
        idx, pos, comp, means, covs, shape, (1.0, 1.0), radius=2.0, min_volume=14.0
    )
    assert lab.labels.max() == 0 and lab.component_ids.size == 0
    assert min_label_volume(2.0, 3, 0.5) == pytest.approx(0.5 * np.pi / 6 * 8)
    assert min_label_volume(2.0, 2, 0.5) == pytest.approx(0.5 * np.pi / 4 * 4)


def test_nucleus_table_snaps_centres_and_measures_channels():
    labels = np.zeros((6, 8), dtype=np.uint16)
    labels[1:3, 1:3] = 1
    labels[4:6, 5:8] = 2
    raw = np.stack([np.full((6, 8), 2.0), np.arange(48.0).reshape(6, 8)])
    raw_last = channels_last(raw, 0)
    assert raw_last.shape == (6, 8, 2) and channels_last(raw[0], None).shape == (6, 8, 1)
    centres = np.array([[1.5, 1.5], [0.0, 0.0], [4.5, 6.0]])  # component 1 unused
    t = nucleus_table(labels, np.array([0, 2]), centres, raw_last, (0.5, 0.25), ["a", "b"])
    assert list(t.table.columns) == [
        "label",
        "y",
        "x",
        "y_um",
        "x_um",
        "volume_um3",
        "mean_a",
        "mean_b",
    ]
    np.testing.assert_array_equal(t.table["volume_um3"], [4 * 0.125, 6 * 0.125])
    np.testing.assert_array_equal(t.table["mean_a"], [2.0, 2.0])
    assert t.table["mean_b"][0] == pytest.approx(np.mean([9, 10, 17, 18]))
    np.testing.assert_array_equal(t.centres, centres[[0, 2]])  # inside their labels
    t = nucleus_table(labels, np.array([1, 2]), centres, raw_last, (0.5, 0.25), ["a", "b"])
    np.testing.assert_array_equal(t.centres[0], [1.0, 1.0])  # snapped into label 1


def test_no_private_names_imported_across_subpackages():
    """Outside a subpackage nobody imports its private modules or names (the studies and
    benchmarks call the public stages; ``bench_mixture`` times the kernels themselves)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    pkg = root / "src" / "napari_sinkhorn_em"
    offenders = []
    files = [*pkg.rglob("*.py"), *(root / "benchmarks").glob("*.py")]
    for path in files:
        if path.name == "bench_mixture.py":
            continue
        here = path.relative_to(pkg).parts[:-1] if pkg in path.parents else ("<outside>",)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom) or (node.module is None and node.level == 0):
                continue
            if node.level:  # relative: resolve against the file's package
                base = list(here)[: len(here) - (node.level - 1)] if node.level > 1 else list(here)
                parts = base + (node.module.split(".") if node.module else [])
            elif node.module.startswith("napari_sinkhorn_em"):
                parts = node.module.split(".")[1:]
            else:
                continue
            sub = parts[0] if parts and not parts[0].endswith(".py") else None
            if sub is None or sub.startswith("_") or here[:1] == (sub,):
                continue  # package-level private modules (_validation, _json), own subpackage
            private = [p for p in parts[1:] if p.startswith("_") and p != "__init__"]
            private += [
                a.name for a in node.names if a.name.startswith("_") and not a.name.endswith("__")
            ]
            if private:
                offenders.append(f"{path.relative_to(root)}: {'.'.join(parts)} {private}")
    assert offenders == []


def test_merge_slabs_assigns_a_voxel_fitted_only_across_the_cut():
    # the voxel at x = 12.5 lies in the first slab's core (cut at x = 13) but its nearest
    # start centre (6, 16) belongs to the second slab only (margin 0.01): only the
    # second slab fits it; it was left without a component and the mass count raised
    from types import SimpleNamespace

    starts = np.array([[0.0, 0.0], [0.0, 10.0], [6.0, 16.0], [0.0, 30.0]])  # (y, x)
    positions = np.array([[0.0, 0.1], [0.0, 9.9], [6.0, 12.5], [6.0, 16.5], [0.0, 29.0]])
    slabs = plan_slabs(positions, starts, 2, margin=0.01)
    assert slabs[0].hi == pytest.approx(13.0)
    assert 2 not in slabs[0].voxels and 2 in slabs[1].voxels
    models = [
        SimpleNamespace(
            means_=starts[s.components], covariances_=np.stack([np.eye(2)] * len(s.components))
        )
        for s in slabs
    ]
    comps = [
        cKDTree(m.means_).query(positions[s.voxels], k=1)[1]
        for m, s in zip(models, slabs, strict=True)
    ]
    merged = merge_slabs(slabs, models, comps, positions, np.ones(5))
    assert merged.components.min() >= 0
    np.testing.assert_allclose(merged.means[merged.components[2]], [6.0, 16.0])
    assert merged.weights.sum() == pytest.approx(1.0)
