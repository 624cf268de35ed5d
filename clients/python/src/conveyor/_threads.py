"""Threads for sync handlers: a pool of daemon threads (so that a handler
stuck in C code never keeps the process from exiting) and a guard that can
raise an exception inside the thread running one handler, and only while
that handler runs."""

from __future__ import annotations

import ctypes
import logging
import platform
import queue
import threading
from collections.abc import Callable

log = logging.getLogger("conveyor.worker")

_CAN_INTERRUPT = platform.python_implementation() == "CPython"


def _set_async_exc(thread_id: int, exc_type: type[BaseException] | None) -> None:
    if not _CAN_INTERRUPT:
        return
    target = ctypes.c_ulong(thread_id)
    if exc_type is None:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(target, None)
    else:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(target, ctypes.py_object(exc_type))


class ThreadGuard:
    """Raises an exception asynchronously in the thread that runs one handler
    (CPython's PyThreadState_SetAsyncExc), as Celery raises
    SoftTimeLimitExceeded. Such an exception arrives when the thread next
    runs Python bytecode: a handler blocked in C (a long `time.sleep`, a
    socket read) sees it when that call returns.

    `enter` and `exit` bracket the handler in its thread; `interrupt` (from
    any thread) injects only between them, each exception type once, and
    `exit` clears whatever is still pending, so nothing leaks into the code
    that runs after the handler.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread_id: int | None = None
        self._done = False
        self._before_start: type[BaseException] | None = None
        self._sent: set[type[BaseException]] = set()

    def enter(self) -> None:
        with self._lock:
            self._thread_id = threading.get_ident()
            early = self._before_start
        if early is not None:
            raise early()

    def exit(self) -> None:
        with self._lock:
            if not self._done:
                self._done = True
                if self._sent and self._thread_id is not None:
                    _set_async_exc(self._thread_id, None)

    def interrupt(self, exc_type: type[BaseException]) -> None:
        with self._lock:
            if self._done or exc_type in self._sent:
                return
            if self._thread_id is None:
                self._before_start = self._before_start or exc_type
                return
            self._sent.add(exc_type)
            _set_async_exc(self._thread_id, exc_type)


class DaemonThreadPool:
    """At most `max_workers` daemon threads, started as work arrives and kept
    for the next job."""

    def __init__(self, max_workers: int, name: str = "conveyor-task") -> None:
        self._max = max_workers
        self._name = name
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0
        self._pending = 0
        self._closed = False

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            if self._closed:
                raise RuntimeError("the thread pool is shut down")
            self._pending += 1
            self._jobs.put(job)
            if self._pending > self._idle and self._threads < self._max:
                self._threads += 1
                thread = threading.Thread(
                    target=self._run, name=f"{self._name}-{self._threads}", daemon=True
                )
                thread.start()

    def shutdown(self) -> None:
        """Lets idle threads end; running jobs go on (they are daemons)."""
        with self._lock:
            self._closed = True
            threads = self._threads
        for _ in range(threads):
            self._jobs.put(None)

    def _run(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            job = self._jobs.get()
            with self._lock:
                self._idle -= 1
                if job is not None:
                    self._pending -= 1
                else:
                    self._threads -= 1
            if job is None:
                return
            try:
                job()
            except BaseException:  # noqa: BLE001 - a pool thread must survive anything
                log.exception("error in a task thread")
