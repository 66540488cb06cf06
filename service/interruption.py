"""Stopping a running job within seconds, whatever stage it is in.

The loop asks ``should_stop()`` only between its steps, and a step may be minutes long (a
warm-up round, an Ultralytics epoch, an evaluation, an object NeRF's training). While a job
runs inside :func:`interruptible`, a watcher thread polls the job's cancellation flag; when it
has been set for ``GRACE_S`` without the job stopping by itself - or at once when the worker is
asked to stop (:func:`interrupt_current`, from its SIGTERM handler) - the job's thread gets an :class:`Interrupted` exception raised asynchronously at its
next Python bytecode (as RQ's own job timeouts raise theirs from a signal handler). The
interruptions derive from ``BaseException``, so the libraries' ``except Exception`` clauses
(checkpoint readers, Ultralytics' retries) do not swallow them.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

POLL_S = 0.5
"""How often the watcher reads the cancellation flag."""
GRACE_S = 3.0
"""After the flag is set, how long the job's own checks (the loop's ``should_stop`` between its
steps and after every batch of its final training) get to stop it cleanly, at a point of its
choosing, before it is interrupted wherever it is."""


class Interrupted(BaseException):
    """A running job was stopped from outside (not a failure of the job itself)."""


class JobCancelled(Interrupted):
    """The job's owner cancelled it."""


class WorkerStopping(Interrupted):
    """The worker was asked to shut down (SIGTERM/SIGINT): the job goes back to the queue."""


class _Region:
    """The job running in a thread, and whether it may still be interrupted."""

    def __init__(self, thread_id: int) -> None:
        self.thread_id = thread_id
        self.lock = threading.RLock()  # re-entrant: a SIGTERM handler may interrupt while close() holds it
        self.open = True
        self.raised: type[Interrupted] | None = None

    def interrupt(self, error: type[Interrupted]) -> bool:
        with self.lock:
            if not self.open or self.raised is not None:
                return False
            self.raised = error
            _set_async_exception(self.thread_id, error)
            return True

    def close(self) -> None:
        with self.lock:
            self.open = False
            if self.raised is not None:
                # Raised but not yet delivered (the region ended first): drop it.
                _set_async_exception(self.thread_id, None)


_current: _Region | None = None


def _set_async_exception(thread_id: int, error: type[BaseException] | None) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id),
                                               ctypes.py_object(error) if error is not None else None)


@contextmanager
def interruptible(cancelled: Callable[[], bool] | None = None) -> Iterator[None]:
    """Run the body so that it can be interrupted: :class:`JobCancelled` once ``cancelled()``
    has said so (polled every ``POLL_S`` in a thread) for ``GRACE_S`` without the body ending,
    :class:`WorkerStopping` at once on :func:`interrupt_current`."""
    global _current
    region = _Region(threading.get_ident())
    done = threading.Event()

    def watch() -> None:
        while not done.wait(POLL_S):
            try:
                if cancelled():
                    break
            except Exception as error:  # (Redis unreachable): the loop's own checks remain
                log.warning("could not read the cancellation flag", extra={"error": str(error)})
        else:
            return  # the body ended
        if not done.wait(GRACE_S):
            region.interrupt(JobCancelled)

    watcher = threading.Thread(target=watch, name="cancel-watch", daemon=True) if cancelled else None
    _current = region
    if watcher is not None:
        watcher.start()
    try:
        yield
    finally:
        try:
            region.close()
        finally:  # (an interruption delivered just before close(): it is the only one)
            _current = None
            done.set()
            if watcher is not None:
                watcher.join()


def interrupt_current(error: type[Interrupted] = WorkerStopping) -> bool:
    """Interrupt the job now running in this process, if any (True when one was)."""
    region = _current
    return region.interrupt(error) if region is not None else False
