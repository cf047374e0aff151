"""Where the files of a batch run are processed: in this process, in a pool of worker
processes, or on a Dask cluster, all behind one signature (:func:`execute`); and how a
run is stopped by Ctrl-C / SIGTERM (:func:`handle_interrupts`).

Interrupts. While :func:`handle_interrupts` is active, SIGINT raises
:class:`KeyboardInterrupt` and SIGTERM raises :class:`Terminated` (a
:class:`SystemExit` with code 143), and both set a flag first. A signal that lands inside
a Numba kernel comes back as ``SystemError: CPUDispatcher(...) returned a result with an
exception set`` (an ordinary ``Exception``); :func:`raise_if_interrupted` turns such an
error back into the interrupt, so a stopped file is never recorded as a failed one.
:func:`deferred` holds the interrupt off during short critical steps (swapping a file's
outputs, saving ``run.json``) and raises it right after.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .inputs import FileTask

__all__ = [
    "Terminated",
    "check_interrupt",
    "deferred",
    "execute",
    "handle_interrupts",
    "ignore_further_interrupts",
    "interrupt_signal",
    "raise_if_interrupted",
]

logger = logging.getLogger("napari_sinkhorn_em.batch")

#: ``work(task, progress) -> record``: process one file (never raises for a bad file).
Work = Callable[[FileTask, Any], dict]


# ----------------------------------------------------------------------------------------
# Interrupts
# ----------------------------------------------------------------------------------------


class Terminated(SystemExit):
    """Raised in the main thread when the run receives SIGTERM (exit code 143)."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(128 + int(signum))
        self.signum = int(signum)


class _State:
    depth = 0  # nesting of handle_interrupts
    defer = 0  # nesting of deferred()
    signals: list[int] = []  # noqa: RUF012 - signals received (first one wins)
    raised = False  # the interrupt was raised at least once
    previous: dict[int, Any] = {}  # noqa: RUF012


def _exception_for(signum: int) -> BaseException:
    if signum == signal.SIGINT:
        return KeyboardInterrupt()
    return Terminated(signum)


# Python code that C calls back into (Numba's dispatcher, llvmlite's object cache): an
# exception raised there is printed as "Exception ignored in ..." with a traceback and
# lost, so a signal landing there only sets the flag; the next check raises it.
_NO_RAISE_IN = (f"{os.sep}numba{os.sep}", f"{os.sep}llvmlite{os.sep}")


def _handler(signum: int, frame: Any) -> None:
    _State.signals.append(int(signum))
    if _State.defer:
        return  # raised when the critical step ends
    filename = getattr(getattr(frame, "f_code", None), "co_filename", "")
    if any(part in filename for part in _NO_RAISE_IN):
        return  # raised at the next check_interrupt()
    _State.raised = True
    raise _exception_for(_State.signals[0])


@contextlib.contextmanager
def handle_interrupts(restore: bool = True) -> Iterator[None]:
    """Within the block, SIGINT / SIGTERM set the interrupt flag and raise.

    Only in the main thread (elsewhere it does nothing). Nested use is a no-op.

    Parameters
    ----------
    restore : bool, default True
        Restore the previous handlers on exit. The command line passes False (after
        :func:`ignore_further_interrupts`) so that a signal arriving while the process
        exits cannot change the exit code of a run that is already recorded.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _State.depth == 0:
        _State.signals = []
        _State.raised = False
        _State.previous = {s: signal.signal(s, _handler) for s in (signal.SIGINT, signal.SIGTERM)}
    _State.depth += 1
    try:
        yield
    finally:
        _State.depth -= 1
        if _State.depth == 0 and restore:
            for s, h in _State.previous.items():
                signal.signal(s, h)
            _State.defer = 0
            _State.signals = []


def ignore_further_interrupts(for_good: bool = False) -> None:
    """From now on Ctrl-C / SIGTERM are only recorded, never raised (the run is over).

    ``for_good=True`` (the command line, just before exiting) ignores them at the OS
    level, which also holds while the interpreter shuts down.
    """
    _State.defer += 1
    if for_good and threading.current_thread() is threading.main_thread():
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)


def interrupt_signal() -> int | None:
    """The signal that asked this run to stop, or None."""
    return _State.signals[0] if _State.signals else None


def check_interrupt() -> None:
    """Raise the pending interrupt, if any (call between stages and kernel calls)."""
    if _State.signals and not _State.defer:
        _State.raised = True
        raise _exception_for(_State.signals[0])


def raise_if_interrupted(exc: BaseException) -> None:
    """Re-raise a pending interrupt instead of ``exc`` (an error it caused, e.g. Numba's
    ``SystemError`` when the signal landed inside a kernel)."""
    if _State.signals:
        _State.raised = True
        raise _exception_for(_State.signals[0]) from exc


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold off Ctrl-C / SIGTERM during a short critical step; raise it right after."""
    _State.defer += 1
    try:
        yield
    finally:
        _State.defer -= 1
    check_interrupt()


# ----------------------------------------------------------------------------------------
# One signature for every executor
# ----------------------------------------------------------------------------------------


class Events:
    """What an executor reports: a file started (and where), a file finished, and (for a
    time-lapse, in-process and process-pool executors) the frames done so far."""

    def __init__(
        self,
        started: Callable[[FileTask, str], None],
        finished: Callable[[FileTask, dict], None],
        frame_done: Callable[[FileTask, int], None] | None = None,
    ) -> None:
        self.started = started
        self.finished = finished
        self.frame_done = frame_done


def execute(
    tasks: Sequence[FileTask],
    work: Work,
    events: Events,
    *,
    jobs: int = 1,
    dask_scheduler: str | None = None,
    progress_bar: bool = False,
) -> None:
    """Run ``work`` on every task, reporting through ``events``.

    Parameters
    ----------
    tasks : sequence of FileTask
        The files to process, in order.
    work : callable
        ``work(task, progress)``: a top-level function (it is sent to other processes)
        that returns the file's record and never raises for a bad file.
    events : Events
        ``started(task, where)`` when a file starts, ``finished(task, record)`` when it
        ends (in the calling thread, one at a time).
    jobs : int, default 1
        1 = in this process; N > 1 = N spawned worker processes.
    dask_scheduler : str, optional
        Address of a ``dask.distributed`` scheduler (excludes ``jobs``).
    progress_bar : bool, default False
        In-process only: show the current file's iterations in a tqdm bar.
    """
    if not tasks:
        return
    if dask_scheduler is not None:
        _run_dask(tasks, work, events, dask_scheduler)
    elif jobs == 1:
        _run_in_process(tasks, work, events, progress_bar)
    else:
        _run_pool(tasks, work, events, jobs)


def executor_name(jobs: int, dask_scheduler: str | None) -> str:
    """Name recorded in ``run.json``: ``in-process``, ``processes:N`` or ``dask:ADDRESS``."""
    if dask_scheduler is not None:
        return f"dask:{dask_scheduler}"
    return "in-process" if jobs == 1 else f"processes:{jobs}"


class _FileProgress:
    """Progress callback: checks for Ctrl-C, shows the iterations in a tqdm bar; stage
    ``"frame"`` (a time-lapse) reports the frames done to ``on_frame``."""

    def __init__(self, bar: Any, on_frame: Callable[[int], None] | None = None) -> None:
        self.bar = bar
        self.stage: str | None = None
        self.on_frame = on_frame

    def __call__(self, stage: str, iteration: int, objective: float | None = None) -> None:
        check_interrupt()
        if stage == "frame" and self.on_frame is not None:
            self.on_frame(int(iteration))
        if self.bar is None:
            return None
        if stage != self.stage or int(iteration) < self.bar.n:  # new stage or a new fit
            self.stage = stage
            self.bar.reset()
            self.bar.set_description_str(f"  {stage}", refresh=False)
            self.bar.set_postfix_str("", refresh=False)
        step = int(iteration) - self.bar.n
        if objective is not None:
            self.bar.set_postfix_str(f"objective {objective:.6g}", refresh=False)
        if step > 0:
            self.bar.update(step)
        return None


def _run_in_process(
    tasks: Sequence[FileTask], work: Work, events: Events, show_iterations: bool
) -> None:
    inner = None
    if show_iterations:
        from tqdm.auto import tqdm

        inner = tqdm(
            desc="  file", unit="it", file=sys.stderr, leave=False, position=1, dynamic_ncols=True
        )
    try:
        for task in tasks:
            check_interrupt()
            events.started(task, "in-process")
            on_frame = None
            if events.frame_done is not None:

                def on_frame(k: int, task: FileTask = task) -> None:
                    events.frame_done(task, k)

            rec = work(task, _FileProgress(inner, on_frame))
            events.finished(task, rec)
    finally:
        if inner is not None:
            inner.close()


def crashed_record(task: FileTask, message: str, kind: str = "WorkerDied") -> dict[str, Any]:
    """Record of a file whose worker died or whose task could not run."""
    return {
        "key": task.key,
        "status": "failed",
        "error": {"type": kind, "message": message, "stage": "worker"},
        "timings": {},
    }


# ---- process pool ----------------------------------------------------------------------


def _worker_main(conn: Any, work: Work) -> None:
    """Loop of a worker process: receive a task, send back its record, until None."""
    # The parent handles Ctrl-C / SIGTERM and stops its workers itself (SIGKILL), so a
    # signal sent to the whole process group does not kill a worker in the middle of
    # a file write, nor make it report a half-done file as failed.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if task is None:
            return
        conn.send(work(task, _PipeProgress(conn)))


class _PipeProgress:
    """A worker's progress callback: sends ``("frame", k)`` to the parent per frame done
    (time-lapses), so that run.json shows the frames done while the file runs."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def __call__(self, stage: str, iteration: int, objective: float | None = None) -> None:
        if stage == "frame":
            self.conn.send(("frame", int(iteration)))


class _Worker:
    def __init__(self, ctx: Any, work: Work) -> None:
        parent, child = ctx.Pipe()
        self.conn = parent
        self.process = ctx.Process(target=_worker_main, args=(child, work), daemon=True)
        self.process.start()
        child.close()
        self.task: FileTask | None = None

    def stop(self, kill: bool) -> None:
        if kill:
            self.process.kill()
        else:
            with contextlib.suppress(OSError, BrokenPipeError):
                self.conn.send(None)
        self.process.join(timeout=None if kill else 10)
        if self.process.is_alive():  # pragma: no cover - stuck worker
            self.process.kill()
            self.process.join()
        self.conn.close()


def _death_message(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            how = f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:  # pragma: no cover
            how = f"killed by signal {-exitcode}"
        if -exitcode == signal.SIGKILL:
            how += ", e.g. by the out-of-memory killer"
    else:
        how = f"exit code {exitcode}"
    return (
        f"the worker process running this file died ({how}); the other files were not "
        "affected; rerun to retry this file"
    )


def _run_pool(tasks: Sequence[FileTask], work: Work, events: Events, jobs: int) -> None:
    """N long-lived spawned workers, one file each at a time.

    Each worker has its own pipe, so when a worker dies (killed, out of memory) exactly
    the file it was running fails, and a new worker takes over the remaining files.
    (``concurrent.futures.ProcessPoolExecutor`` cannot tell which file a dead worker was
    running and fails every pending file.)
    """
    import multiprocessing
    from multiprocessing.connection import wait

    # spawn (not fork): safe with Numba's threads and on every platform
    ctx = multiprocessing.get_context("spawn")
    queue: deque[FileTask] = deque(tasks)
    workers: list[_Worker] = []
    stopped_cleanly = False
    try:
        while queue or any(w.task is not None for w in workers):
            # hand out work; start workers lazily, at most `jobs`, never more than needed
            while queue:
                idle = next((w for w in workers if w.task is None), None)
                if idle is None:
                    if len(workers) >= jobs:
                        break
                    idle = _Worker(ctx, work)
                    workers.append(idle)
                try:
                    idle.conn.send(queue[0])
                except OSError:  # it died while idle: replace it, the file is untouched
                    workers.remove(idle)
                    idle.stop(kill=True)
                    continue
                idle.task = queue.popleft()
                events.started(idle.task, f"pid:{idle.process.pid}")
            busy = [w for w in workers if w.task is not None]
            ready = set(wait([w.conn for w in busy] + [w.process.sentinel for w in busy]))
            check_interrupt()
            for w in busy:
                task = w.task
                assert task is not None
                if w.conn in ready:
                    try:
                        rec = w.conn.recv()
                    except (EOFError, OSError):
                        rec = None  # died while sending: handled below
                    if isinstance(rec, tuple):  # ("frame", k): progress, not the end
                        if events.frame_done is not None:
                            events.frame_done(task, int(rec[1]))
                        continue
                    if rec is not None:
                        w.task = None
                        events.finished(task, rec)
                        continue
                if w.conn in ready or w.process.sentinel in ready:
                    w.process.join(timeout=5)
                    code = w.process.exitcode
                    if code is not None and code < 0 and -code in (signal.SIGINT, signal.SIGTERM):
                        # most likely the same Ctrl-C / SIGTERM is on its way to us
                        time.sleep(0.2)
                        check_interrupt()
                    w.task = None
                    workers.remove(w)
                    w.conn.close()
                    logger.error("worker %s died running %s", w.process.pid, task.input)
                    events.finished(task, crashed_record(task, _death_message(code)))
        for w in workers:
            w.stop(kill=False)
        stopped_cleanly = True
    finally:
        if not stopped_cleanly:
            # Ctrl-C, SIGTERM or an error here: stop every worker now (their files stay
            # unfinished; the caller removes their temporaries)
            for w in workers:
                w.stop(kill=True)


# ---- Dask ------------------------------------------------------------------------------


def import_distributed() -> Any:
    """Import ``distributed`` or raise an ImportError that says how to install it."""
    try:
        import distributed
    except ImportError as exc:
        raise ImportError(
            "--dask-scheduler needs dask.distributed; install it with "
            "`pip install 'napari-sinkhorn-em[dask]'`"
        ) from exc
    return distributed


def _run_dask(tasks: Sequence[FileTask], work: Work, events: Events, address: str) -> None:
    distributed = import_distributed()
    with distributed.Client(address, set_as_default=False) as client:
        futures = {}
        run_id = uuid.uuid4().hex[:8]
        try:
            for task in tasks:
                # a unique key per run: a scheduler never hands back an older run's result
                name = f"napari-sinkhorn-em-{task.key}-{run_id}"
                fut = client.submit(work, task, None, key=name, pure=False)
                futures[fut] = task  # (stays "pending" in run.json until it finishes)
            for fut in distributed.as_completed(list(futures), loop=client.loop):
                task = futures[fut]
                try:
                    rec = fut.result()
                except Exception as exc:
                    raise_if_interrupted(exc)
                    rec = crashed_record(task, f"worker failed: {exc}", type(exc).__name__)
                events.finished(task, rec)
        except BaseException:
            # Ctrl-C / SIGTERM: do not leave the files running on the cluster
            with contextlib.suppress(Exception):
                client.cancel(list(futures))
            raise
