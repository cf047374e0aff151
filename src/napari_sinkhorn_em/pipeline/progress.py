"""Timing, progress reports and cancellation of the pipeline stages."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["SegmentationCancelled", "StageClock"]

ProgressCallback = Callable[[str, int, "float | None"], "bool | None"]


class SegmentationCancelled(Exception):
    """Raised by :func:`~napari_sinkhorn_em.segment_nuclei` when the progress callback asks
    to stop."""


class StageClock:
    """Times the stages of a run, reports them to a progress callback and cancels.

    Parameters
    ----------
    progress : callable, optional
        ``progress(stage, iteration, objective)``; returning True cancels the run
        (:class:`SegmentationCancelled` is raised at the next report).

    Attributes
    ----------
    timings : dict of str to float
        Wall time (s) of each finished stage, in order; ``"total"`` after :meth:`finish`.

    Examples
    --------
    >>> clock = StageClock()
    >>> with clock.stage("preprocess"):
    ...     pass
    >>> list(clock.timings)
    ['preprocess']
    """

    def __init__(self, progress: ProgressCallback | None = None) -> None:
        self.progress = progress
        self.timings: dict[str, float] = {}
        self._t0 = time.perf_counter()

    def report(self, stage: str, iteration: int = 0, objective: float | None = None) -> None:
        """Tell ``progress`` where the run is; raise :class:`SegmentationCancelled` if it
        returns True."""
        if self.progress is not None and self.progress(stage, iteration, objective):
            raise SegmentationCancelled(f"segmentation cancelled during {stage!r}")

    @contextmanager
    def stage(self, name: str, *, report: bool = True) -> Iterator[None]:
        """Run a block as stage ``name``: report its start (unless ``report=False``) and
        record its wall time in :attr:`timings` when it finishes."""
        if report:
            self.report(name)
        t = time.perf_counter()
        yield
        self.timings[name] = time.perf_counter() - t

    def iteration_callback(self, stage: str = "fit") -> Callable[[int, float], bool] | None:
        """A ``SinkhornEM(callback=...)`` that reports iterations counted over the whole
        stage (all starts, refits and slabs) and returns True to stop; None without a
        progress callback."""
        if self.progress is None:
            return None
        progress = self.progress
        count = [0]

        def callback(it: int, obj: float) -> bool:
            count[0] += 1
            return bool(progress(stage, count[0], float(obj)))

        return callback

    def cancelled(self, stage: str) -> SegmentationCancelled:
        """The exception to raise when a stage stopped because the callback asked."""
        return SegmentationCancelled(f"segmentation cancelled during {stage!r}")

    def finish(self) -> dict[str, float]:
        """Record the total wall time since the clock was made; return :attr:`timings`."""
        self.timings["total"] = time.perf_counter() - self._t0
        return self.timings
