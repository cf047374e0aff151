"""The cheaper M-step after a loose E-step agrees with the exact computation.

The M-step after a loose ``fast_start`` E-step skips weights below
``_LOOSE_CUT * tol_e / N`` of their column: the fit agrees with the one that keeps them
(to far below its tolerance), and fits with exact E-steps (given means, the pipeline;
``fast_start=False``; EM) never use the raised cut. (The 6-lane kernels of the M-step and
of the neighbour scan are checked bit for bit against the generic ones in
tests/test_mixture.py.)
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from napari_sinkhorn_em import SinkhornEM
from napari_sinkhorn_em.mixture import estimator as est_mod


def _clusters(seed, K=12, D=5, n=4000, sep=4.0):
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, sep * K ** (1 / D), size=(K, D))
    y = rng.integers(0, K, size=n)
    return np.ascontiguousarray(centres[y] + rng.normal(size=(n, D))), centres


def _fit(X, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", est_mod.ConvergenceWarning)
        return SinkhornEM(12, covariance_type="diag", n_neighbors=6, **kw).fit(X)


def test_loose_m_step_cut_keeps_the_fit(monkeypatch):
    """fast_start from random means to convergence: the raised cut of the M-steps after
    loose E-steps (skipped weights at most 1e-3 of the E-step's marginal error) changes
    the fit by far less than its tolerance; the same fit with the exact cut
    (``_LOOSE_CUT = 0``) as reference."""
    X, _ = _clusters(5)
    kw = {"init": "random", "random_state": 3, "tol": 1e-5, "max_iter": 300}
    loose = _fit(X, **kw)
    monkeypatch.setattr(est_mod, "_LOOSE_CUT", 0.0)
    exact_cut = _fit(X, **kw)
    assert loose.converged_ and exact_cut.converged_
    assert loose.n_iter_ == exact_cut.n_iter_
    assert not np.array_equal(loose.means_, exact_cut.means_)  # the raised cut did skip
    np.testing.assert_allclose(loose.means_, exact_cut.means_, atol=1e-6)
    np.testing.assert_allclose(loose.covariances_, exact_cut.covariances_, rtol=1e-6)
    assert loose.objective_ == pytest.approx(exact_cut.objective_, abs=1e-8)
    assert np.array_equal(loose.predict(X), exact_cut.predict(X))
    # the cut does act (a cut a million times larger moves the fit visibly): the
    # comparison above can fail
    monkeypatch.setattr(est_mod, "_LOOSE_CUT", 1e6)
    coarse = _fit(X, **kw)
    assert np.abs(coarse.objective_history_[1] - exact_cut.objective_history_[1]) > 1e-7


@pytest.mark.parametrize(
    "kw",
    [
        {"means_init": "given"},  # the pipeline's fits: fast_start "auto" is off
        {"init": "random", "fast_start": False},
        {"init": "random", "method": "em", "learn_weights": True},
    ],
)
def test_exact_fits_never_use_the_loose_cut(monkeypatch, kw):
    """Fits whose E-steps are all exact are bit for bit the same whatever the loose cut."""
    X, centres = _clusters(6)
    kw = dict(kw, random_state=1, tol=0.0, max_iter=6)
    if kw.get("means_init") == "given":
        kw["means_init"] = centres + 0.4
    ref = _fit(X, **kw)
    monkeypatch.setattr(est_mod, "_LOOSE_CUT", 1e6)
    other = _fit(X, **kw)
    assert np.array_equal(ref.means_, other.means_)
    assert np.array_equal(ref.covariances_, other.covariances_)
    assert ref.objective_history_ == other.objective_history_
