"""Fig. 2 of Mena et al. (arXiv 2006.16548): Sinkhorn-EM escapes the bad start, EM does not.

x ~ a N(1, 1) + (1 - a) N(-1, 1), N = 1000, fixed weights (a, 1 - a), unit variances,
symmetric means (+theta, -theta), start theta0 = -2. At a* = 0.73 Sinkhorn-EM (public
E-step + symmetric-means M-step) reaches the global optimum theta ~ +1 while EM with the
same fixed weights stays at the spurious fixed point theta < 0.
"""

import numpy as np
import pytest
from scipy.special import log_softmax

from napari_sinkhorn_em import sinkhorn_responsibilities


def run(a_star, method, seed, theta0=-2.0, n=1000, max_iter=300):
    rng = np.random.default_rng(seed)
    x = np.where(rng.random(n) < a_star, 1.0, -1.0) + rng.normal(size=n)
    w = np.array([a_star, 1 - a_star])
    theta, g, it = theta0, None, 0
    for it in range(1, max_iter + 1):  # noqa: B007
        A = np.stack([-0.5 * (x - theta) ** 2, -0.5 * (x + theta) ** 2], 1)
        if method == "em":
            r = np.exp(log_softmax(A + np.log(w), axis=1))
        else:
            r, info = sinkhorn_responsibilities(A, w, init_potential=g, tol=1e-12, return_info=True)
            g = info.potential
            np.testing.assert_allclose(r.mean(0), w, atol=1e-11)
        new = float(np.mean((r[:, 0] - r[:, 1]) * x))
        if abs(new - theta) < 1e-8:
            theta = new
            break
        theta = new
    return theta, it


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gap_at_073(seed):
    th_s, _it_s = run(0.73, "sinkhorn", seed)
    th_e, _ = run(0.73, "em", seed)
    assert th_s == pytest.approx(1.0, abs=0.1)  # global optimum
    assert th_e < -0.5  # spurious fixed point near -theta*


def test_both_succeed_at_085_sinkhorn_faster():
    th_s, it_s = run(0.85, "sinkhorn", 0)
    th_e, it_e = run(0.85, "em", 0)
    assert th_s == pytest.approx(1.0, abs=0.1) and th_e == pytest.approx(1.0, abs=0.1)
    assert it_s < it_e


def test_both_fail_at_060():
    assert run(0.60, "sinkhorn", 0)[0] < 0
    assert run(0.60, "em", 0)[0] < 0
