"""Results do not depend on the number of Numba threads (laptop, CI, cluster node)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np

SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from napari_sinkhorn_em import SinkhornEM

    rng = np.random.default_rng(3)
    centres = rng.uniform(0, 40, size=(40, 3))
    X = np.concatenate([c + rng.normal(0, 1.0, size=(1000, 3)) for c in centres])
    w = rng.uniform(0.5, 1.5, size=len(X))
    for kw in ({}, {"n_neighbors": 8}):
        m = SinkhornEM(n_components=40, max_iter=15, tol=0, random_state=0, **kw)
        m.fit(X, sample_weight=w)
        sys.stdout.write(m.means_.tobytes().hex() + "\\n")
        sys.stdout.write(np.float64(m.objective_).tobytes().hex() + "\\n")
    """
)


def _run(threads: int) -> list[str]:
    env = dict(os.environ, NUMBA_NUM_THREADS=str(threads))
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_fit_is_bit_identical_across_thread_counts():
    one, two = _run(1), _run(2)
    assert len(one) == 4
    assert one == two
    # and the fit did something: means are finite and spread over the data
    means = np.frombuffer(bytes.fromhex(one[0])).reshape(40, 3)
    assert np.isfinite(means).all() and means.std(axis=0).min() > 5
