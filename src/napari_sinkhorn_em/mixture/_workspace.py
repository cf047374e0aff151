"""Large float64 work arrays of the mixture fits, reused from one fit to the next.

A fit writes an (N, m) log-density matrix and its exp table on every iteration. Fresh
arrays of that size cost their page faults on first write, and those are slow on a
shared machine: measured at N = 2e5, m = 16 (25.6 MB) on 2 cores, filling the exp table
took 4.4 ms in an array written before, 22 ms in a fresh one with 4 KiB pages and
70-83 ms in a fresh one with numpy's transparent-huge-page advice once free huge pages
ran short (the kernel compacts memory on the fault). Released arrays wait in a small
pool (at most ``MAX_BYTES`` in total, the most recently released kept) for the next fit
of the same shape: repeated fits (``n_init``, the phases of ``weights="estimate"``,
split-and-merge trials, a fit per frame, parameter searches) skip the faults. Every
array is written before it is read, so reuse changes no result. Thread-safe: an array
is handed to one fit at a time.
"""

from __future__ import annotations

import threading

import numpy as np

__all__ = ["MAX_BYTES", "give", "take"]

# The pool holds at most this many bytes after a fit (64 MiB: the two (N, m) arrays of
# a fit at N = 2e5, m = 16 and more; larger arrays are allocated fresh and freed).
MAX_BYTES = 64 << 20

_lock = threading.Lock()
_free: list[np.ndarray] = []


def take(shape) -> np.ndarray:
    """An uninitialised C-contiguous float64 array of ``shape`` (from the pool if one fits)."""
    shape = tuple(int(s) for s in shape)
    with _lock:
        for j in range(len(_free) - 1, -1, -1):
            if _free[j].shape == shape:
                return _free.pop(j)
    return np.empty(shape)


def give(*arrays) -> None:
    """Return arrays obtained from :func:`take`; the caller must not use them afterwards."""
    with _lock:
        for arr in arrays:
            if arr is None or arr.nbytes > MAX_BYTES:
                continue
            _free.append(arr)
        total = sum(x.nbytes for x in _free)
        while total > MAX_BYTES:
            total -= _free.pop(0).nbytes
