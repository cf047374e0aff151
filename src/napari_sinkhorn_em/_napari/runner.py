"""Running :func:`~napari_sinkhorn_em.segment_nuclei` off the GUI thread.

:func:`run_segmentation` is the job (plain Python): it calls the pipeline with a progress
callback and returns an :class:`Outcome` whatever happens (result, cancelled, a user-facing
error, and the warnings the pipeline gave). :class:`SegmentationRunner` runs it in a napari
thread worker, shows a cancelable napari progress bar (stage by stage, then the fit
iterations), relays progress to the GUI thread and drops everything a superseded run sends
late (the stale-run filter), so only the current run's results reach the viewer.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from napari.qt.threading import create_worker
from napari.utils.progress import cancelable_progress
from qtpy.QtCore import QObject, Signal

from napari_sinkhorn_em._napari.layers import estimated_diameter
from napari_sinkhorn_em.pipeline.segment import (
    SegmentationCancelled,
    fit_iteration_budget,
    segment_nuclei,
)

__all__ = [
    "STAGES",
    "Outcome",
    "Progress",
    "SegmentationRunner",
    "result_summary",
    "run_guarded",
    "run_segmentation",
]

#: the stages segment_nuclei reports, in order (an unknown stage is shown by name)
STAGES = ("preprocess", "peaks", "init", "fit", "labels", "table")


@dataclass(frozen=True)
class Progress:
    """One progress report of a run."""

    run_id: int
    stage: str
    iteration: int
    objective: float | None

    def text(self) -> str:
        """``"Sinkhorn-EM 4/6 fit: iteration 12, objective -3.2e+04"``."""
        step = f"{STAGES.index(self.stage) + 1}/{len(STAGES)} " if self.stage in STAGES else ""
        text = f"Sinkhorn-EM {step}{self.stage}"
        if self.stage == "fit":
            text += f": iteration {self.iteration}"
            if self.objective is not None and np.isfinite(self.objective):
                text += f", objective {self.objective:.6g}"
        return text


@dataclass
class Outcome:
    """How a run ended: exactly one of ``result``, ``error`` or ``cancelled``.

    Attributes
    ----------
    run_id : int
        The run this belongs to.
    result : SegmentationResult or None
    error : str or None
        The message of a ``ValueError`` from the pipeline (bad image or parameters).
    cancelled : bool
    warnings : list of warnings.WarningMessage
        Warnings the pipeline issued during the run (e.g. zero nuclei, or far fewer
        than requested).
    """

    run_id: int
    result: Any = None
    error: str | None = None
    cancelled: bool = False
    warnings: list[warnings.WarningMessage] = field(default_factory=list)


def run_segmentation(
    run_id: int,
    image: Callable[[], np.ndarray],
    kwargs: dict[str, Any],
    report: Callable[[str, int, float | None], bool] | None = None,
) -> Outcome:
    """Segment ``image()`` with ``segment_nuclei(**kwargs)``; never raises for a user error.

    Parameters
    ----------
    run_id : int
        Copied into the outcome.
    image : callable
        Returns the image array (called here, so lazy layer data load in the worker).
    kwargs : dict
        Keyword arguments of :func:`segment_nuclei`.
    report : callable, optional
        The ``progress`` callback; returning True cancels.

    Returns
    -------
    Outcome
        With the result, the ValueError message, or ``cancelled=True``, and the warnings.
        Other exceptions (bugs) propagate.
    """
    return run_guarded(
        run_id, lambda: segment_nuclei(image(), progress=report, **kwargs), SegmentationCancelled
    )


def run_guarded(run_id: int, compute: Callable[[], Any], cancelled: type[Exception]) -> Outcome:
    """``compute()`` as an :class:`Outcome`: its result, or ``cancelled=True`` when it
    raised ``cancelled``, or the message of a ValueError; the warnings it issued are
    recorded. Other exceptions (bugs) propagate."""
    # warnings.catch_warnings swaps process-wide state: a warning another thread issues
    # meanwhile is recorded here too (and then shown as this run's warning). Python 3.11
    # has no per-thread warning filters; the run is the only long computation in the GUI.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        try:
            result = compute()
        except cancelled:
            return Outcome(run_id, cancelled=True)
        except ValueError as exc:
            # a user-facing problem (bad image or parameter): a message, not a traceback
            return Outcome(run_id, error=str(exc), warnings=list(caught))
    return Outcome(run_id, result=result, warnings=list(caught))


def result_summary(result: Any, sep: str = " · ", requested: dict | None = None) -> str:
    """A short account of a run: nuclei found, convergence, estimated parameters.

    Parameters
    ----------
    result : SegmentationResult
    sep : str
        Separator of the parts (the widget shows one part per line).
    requested : dict, optional
        The keyword arguments the run was started with: a setting asked as None /
        ``"auto"`` there is reported as estimated even when ``result.params`` records the
        estimate as a number. Default: ``result.params``.

    Returns
    -------
    str
        E.g. ``"75 nuclei (number estimated) · fit converged in 23 iterations ·
        nucleus diameter 3 µm · threshold 0.21 (auto)"``.
    """
    params, info = result.params, result.info
    asked = {**params, **(requested or {})}
    n = len(result.table)
    parts = []
    if asked.get("n_nuclei") in (None, "auto"):
        parts.append(f"{n} nuclei (number estimated)")
    else:
        parts.append(f"{n} nuclei ({asked['n_nuclei']} requested)")
    converged, n_iter = info.get("converged"), info.get("n_iter")
    if converged is not None:
        its = f" in {n_iter} iterations" if n_iter is not None else ""
        if converged:
            parts.append(f"fit converged{its}")
        else:
            parts.append(f"fit did NOT converge{its} (raise max iterations)")
    diameter = estimated_diameter(result)
    if diameter is not None:
        auto = asked.get("nucleus_diameter") in (None, "auto")
        parts.append(f"nucleus diameter {diameter:.3g} µm" + (" (estimated)" if auto else ""))
    threshold = info.get("threshold")
    if asked.get("foreground_threshold") is None and isinstance(threshold, int | float):
        parts.append(f"threshold {threshold:.3g} (auto)")
    return sep.join(parts)


class SegmentationRunner(QObject):
    """Runs segmentations one at a time in a napari thread worker.

    Signals
    -------
    progressed(Progress)
        A progress report of the current run (GUI thread).
    finished(Outcome)
        The current run ended (GUI thread). Outcomes of superseded runs are dropped; a
        run cancelled by :meth:`cancel` always ends with ``cancelled=True``, even when the
        pipeline had already returned.
    """

    progressed = Signal(object)
    finished = Signal(object)
    _relay = Signal(object)  # worker thread -> GUI thread

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._worker: Any = None
        self._cancel = threading.Event()
        self._run_id = 0
        self.progress_bar: cancelable_progress | None = None
        #: last report of the current run
        self.last_progress: Progress | None = None
        self._relay.connect(self._on_progress)

    @property
    def is_running(self) -> bool:
        """True while a run is in progress (until its outcome was delivered)."""
        return self._worker is not None

    @property
    def run_id(self) -> int:
        """Number of the current (or last) run."""
        return self._run_id

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def start(
        self, image: Callable[[], np.ndarray], kwargs: dict[str, Any], *, description: str = ""
    ) -> int | None:
        """Start a run; returns its id, or None when a run is still in progress.

        Parameters
        ----------
        image : callable
            Returns the image array (called in the worker thread).
        kwargs : dict
            Keyword arguments of :func:`segment_nuclei` (``method``, ``init``,
            ``max_iter``, ``n_init``, ``weight_refits`` size the progress bar).
        description : str
            First text of the progress bar.
        """
        budget = {
            k: kwargs[k]
            for k in ("method", "init", "max_iter", "n_init", "weight_refits")
            if k in kwargs
        }

        def progress(run_id: int) -> Callable[[str, int, float | None], Progress]:
            return lambda stage, i, objective: Progress(run_id, str(stage), int(i), objective)

        return self._launch(
            run_segmentation, image, kwargs, progress,
            total=fit_iteration_budget(**budget),
            description=description or "Sinkhorn-EM: starting",
        )  # fmt: skip

    def _launch(
        self,
        function: Callable[..., Outcome],
        image: Callable[[], np.ndarray],
        kwargs: dict[str, Any],
        progress: Callable[[int], Callable[..., Progress]],
        *,
        total: int,
        description: str,
    ) -> int | None:
        """Run ``function(run_id, image, kwargs, report)`` in a thread worker, with a
        cancellable progress bar of ``total`` steps. ``progress(run_id)`` turns the
        arguments of a ``report`` call into the :class:`Progress` sent to the GUI thread.
        Returns the run id, or None while a run is in progress."""
        if self.is_running:
            return None
        self._cancel.clear()
        self.last_progress = None
        self._run_id += 1
        run_id = self._run_id
        pbar = cancelable_progress(total=total, cancel_callback=self.cancel)
        pbar.set_description(description)
        self.progress_bar = pbar
        cancel, relay, make = self._cancel, self._relay, progress(run_id)

        def report(*args: Any) -> bool:
            # worker thread: hand the numbers to the GUI thread, answer the cancel question
            relay.emit(make(*args))
            if pbar.is_canceled:  # the cancel button of napari's progress bar
                cancel.set()
            return cancel.is_set()

        worker = create_worker(
            function,
            run_id,
            image,
            kwargs,
            report,
            _connect={"returned": self._on_returned, "errored": self._on_errored},
            _start_thread=False,
        )
        self._worker = worker
        worker.start()
        return run_id

    def cancel(self) -> None:
        """Ask the current run to stop at its next progress report."""
        if self.is_running:
            self._cancel.set()

    # ------------------------------------------------------------------ GUI thread
    def _on_progress(self, p: Progress) -> None:
        pbar = self.progress_bar
        if p.run_id != self._run_id or pbar is None:
            return  # a late report of a finished or superseded run
        self.last_progress = p
        self.progressed.emit(p)
        # updating the bar can process events (and finish the run): do it last
        if p.stage == "fit":
            pbar.n = min(p.iteration, pbar.total)
        pbar.set_description(p.text())

    def _on_returned(self, outcome: Outcome) -> None:
        if outcome.run_id != self._run_id:
            return  # a superseded run
        if self._cancel.is_set() and not outcome.cancelled:
            # cancelled after the last report: the user asked for an unchanged viewer
            outcome = Outcome(outcome.run_id, cancelled=True)
        self._end(outcome)

    def _on_errored(self, exc: Exception) -> None:
        # a bug, not a user error: napari's worker already shows it with its traceback
        self._end(Outcome(self._run_id, error=f"{type(exc).__name__}: {exc}"))

    def _end(self, outcome: Outcome) -> None:
        self._worker = None
        if self.progress_bar is not None:
            self.progress_bar.close()
            self.progress_bar = None
        self.finished.emit(outcome)
