"""docs/examples/osmfish_clustering.py on a subset of the real osmFISH data (skipped
when ../shared/realdata/osmfish is absent)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "docs" / "examples" / "osmfish_clustering.py"
DATA = ROOT / ".." / "shared" / "realdata" / "osmfish"

pytestmark = pytest.mark.skipif(
    not (DATA / "osmFISH_prep_expression.txt").is_file(),
    reason="osmFISH data absent (../shared/realdata/osmfish)",
)


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("osmfish_clustering", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_loader_matches_the_published_benchmark_set(example):
    counts, xy, region, ctype, genes = example.load_osmfish(DATA)
    assert counts.shape == (4839, 33) and xy.shape == (4839, 2) and len(genes) == 33
    assert len(set(region)) == 11 and "Excluded" not in set(region)
    assert len(set(ctype)) == 31
    assert np.all(counts >= 0) and np.all(counts.sum(axis=1) > 0)
    X = example.features(counts, xy, n_pcs=10, spatial=1.0)
    assert X.shape == (4839, 12) and np.all(np.isfinite(X))
    assert np.isclose(X[:, 0].std(), 1.0)


def test_missing_data_is_a_clear_error(example, tmp_path):
    with pytest.raises(FileNotFoundError, match="osmFISH data not found"):
        example.load_osmfish(tmp_path)


def test_small_run_clusters_by_region(example):
    """1500 cells, K = 11, one seed: every method finds structure (ARI > 0.05 against
    regions and cell types); with the coordinates appended the clustering follows the
    anatomy much more closely (measured on the full data: see docs/osmfish.md)."""
    methods = ("sinkhorn", "sinkhorn-estimate", "em", "sklearn")
    shape, rows = example.run(ks=(11,), seeds=1, cells=1500, methods=methods)
    assert shape == (1500, 10)
    assert [r["method"] for r in rows] == list(methods)
    for r in rows:
        assert r["ari_region"] > 0.05 and r["ari_type"] > 0.05, r
        assert np.isfinite(r["loglik"])
    _, rows_sp = example.run(ks=(11,), seeds=1, cells=1500, spatial=2.0, methods=methods[:2])
    for r, r_sp in zip(rows[:2], rows_sp, strict=True):
        assert r_sp["ari_region"] > r["ari_region"] + 0.05, (r, r_sp)
