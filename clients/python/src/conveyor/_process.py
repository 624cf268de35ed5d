"""The process pool: sync handlers run in child processes, so CPU-bound tasks
use every core while the worker's stream and heartbeats stay in the parent.

Children are started with `spawn` (a fresh interpreter; never a fork of a
process whose gRPC threads are up) and talk to the parent over one pipe
each. A child runs one task at a time and arms the soft time limit itself
(SIGALRM), so `SoftTimeLimitExceeded` is raised even inside `time.sleep`.
A cancelled task (revoked, hard time limit) has its child killed and
replaced; a child that dies fails only its own task, reported at once.
`max_tasks_per_child` and `max_memory_per_child` (KiB of peak RSS, as
Celery) retire a child after the task that reaches them.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import pickle
import signal
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from conveyor import _tracing
from conveyor._context import TaskContext
from conveyor._handler import Handler, error, outcome_of, run_sync
from conveyor.errors import SoftTimeLimitExceeded
from conveyor.v1 import dispatch_service_pb2 as pb

__all__ = ["ProcessPool"]

log = logging.getLogger("conveyor.worker")

_SPAWN = multiprocessing.get_context("spawn")
# How often an orphaned child checks that its parent still lives.
_PARENT_CHECK = 1.0


class _Child:
    """One child process and the parent's end of its pipe."""

    def __init__(self, number: int, log_level: int):
        self.number = number
        parent_end, child_end = _SPAWN.Pipe(duplex=True)
        self.conn: Connection = parent_end
        self.process = _SPAWN.Process(
            target=_child_main,
            args=(child_end, log_level, os.getpid()),
            name=f"conveyor-child-{number}",
            daemon=True,
        )
        self.process.start()
        child_end.close()
        self.tasks = 0
        self.killed = False

    def kill(self) -> None:
        self.killed = True
        if self.process.exitcode is None:
            self.process.kill()

    def retire(self) -> None:
        """Asks an idle child to exit and reaps it in the background."""
        try:
            self.conn.send_bytes(pickle.dumps(None))
        except OSError:
            pass
        threading.Thread(target=self._reap, daemon=True).start()

    def _reap(self) -> None:
        self.process.join(5)
        if self.process.exitcode is None:
            self.process.kill()
            self.process.join()
        self.conn.close()


class ProcessPool:
    """`size` children, started at `start()` (or on first use), each running
    one task at a time."""

    def __init__(
        self,
        size: int,
        *,
        max_tasks_per_child: int | None = None,
        max_memory_per_child: int | None = None,
        worker_id: str = "",
    ):
        self.size = size
        self.max_tasks_per_child = max_tasks_per_child
        self.max_memory_per_child = max_memory_per_child
        self.worker_id = worker_id
        self._idle: list[_Child] = []
        self._busy: dict[int, _Child] = {}  # id(job) -> child
        self._started = 0
        self._closed = False
        self.replaced = 0  # children replaced after a kill, a crash or a limit

    def _spawn(self) -> _Child:
        self._started += 1
        return _Child(self._started, logging.getLogger("conveyor").getEffectiveLevel())

    def start(self) -> None:
        while len(self._idle) + len(self._busy) < self.size:
            self._idle.append(self._spawn())

    def pids(self) -> list[int]:
        return [c.process.pid for c in [*self._idle, *self._busy.values()] if c.process.pid is not None]

    async def run(self, job: Any, handler: Handler) -> pb.TaskOutcome:
        """Runs the job's handler in a child and returns its outcome; a
        `WorkerLostError` outcome when the child dies first."""
        if self._closed:
            raise RuntimeError("the process pool is closed")
        child = self._idle.pop() if self._idle else self._spawn()
        self._busy[id(job)] = child
        ctx: TaskContext = job.context
        try:
            child.conn.send_bytes(_frame(handler, ctx, self.worker_id, _tracing.carrier()))
            return await self._await_outcome(child, ctx)
        except (OSError, EOFError):
            return await self._lost(child, ctx)
        finally:
            self._busy.pop(id(job), None)

    def kill(self, job: Any) -> bool:
        """Kills the child running `job` (a cancelled task); True if one was."""
        child = self._busy.get(id(job))
        if child is None:
            return False
        log.info("task %s: killing its child process %s", job.task_id, child.process.pid)
        child.kill()
        return True

    async def _await_outcome(self, child: _Child, ctx: TaskContext) -> pb.TaskOutcome:
        loop = asyncio.get_running_loop()
        while True:
            readable = loop.create_future()
            fd = child.conn.fileno()
            loop.add_reader(fd, lambda: readable.done() or readable.set_result(None))
            try:
                await readable
            finally:
                loop.remove_reader(fd)
            while child.conn.poll():
                message = child.conn.recv()
                if message[0] == "progress":
                    reporter = ctx._reporter
                    if reporter is not None:
                        reporter(pb.ReportProgress.FromString(message[1]))
                elif message[0] == "done":
                    child.tasks += 1
                    self._after_task(child, message[2])
                    return pb.TaskOutcome.FromString(message[1])

    def _after_task(self, child: _Child, max_rss_kib: int) -> None:
        reason = None
        if self.max_tasks_per_child and child.tasks >= self.max_tasks_per_child:
            reason = f"ran {child.tasks} tasks (max_tasks_per_child)"
        elif self.max_memory_per_child and max_rss_kib > self.max_memory_per_child:
            reason = f"uses {max_rss_kib} KiB (max_memory_per_child {self.max_memory_per_child})"
        if reason is None and not self._closed:
            self._idle.append(child)
            return
        if reason is not None:
            log.info("replacing child process %s: it %s", child.process.pid, reason)
        child.retire()
        self._replace()

    async def _lost(self, child: _Child, ctx: TaskContext) -> pb.TaskOutcome:
        await asyncio.to_thread(child.process.join, 5)
        code = child.process.exitcode
        child.conn.close()
        self._replace()
        if child.killed:
            return outcome_of(ctx, error=error("Terminated", "the task's child process was killed", True))
        how = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        message = f"the child process running the task died ({how}); only this task failed"
        log.warning("task %s (%s): %s", ctx.id, ctx.name, message)
        return outcome_of(ctx, error=error("WorkerLostError", message, True))

    def _replace(self) -> None:
        if self._closed:
            return
        self.replaced += 1
        self._idle.append(self._spawn())

    def close(self) -> None:
        """Retires idle children and kills busy ones."""
        self._closed = True
        for child in self._busy.values():
            child.kill()
        for child in self._idle:
            child.retire()
        self._idle.clear()


def _frame(handler: Handler, ctx: TaskContext, worker_id: str, trace_headers: dict[str, str]) -> bytes:
    """One job as the child reads it: the handler pickled by reference, and
    the W3C context of the attempt's span (the parent's), made current in
    the child while the handler runs."""
    return pickle.dumps((pickle.dumps(handler), ctx.assignment.SerializeToString(), worker_id, trace_headers))


# --- in the child ---------------------------------------------------------------------


class _Alarm:
    """The soft time limit of the running task, as SIGALRM."""

    def __init__(self) -> None:
        self.ctx: TaskContext | None = None

    def handle(self, _signum: int, _frame: Any) -> None:
        ctx = self.ctx
        if ctx is None:
            return
        self.ctx = None
        ctx._cancel(SoftTimeLimitExceeded)
        raise SoftTimeLimitExceeded(f"soft time limit ({ctx.soft_time_limit or 0.0:g}s) exceeded")

    def around(self, ctx: TaskContext) -> Any:
        def call(fn: Any) -> Any:
            limit = ctx.soft_time_limit
            if not limit:
                return fn()
            self.ctx = ctx
            signal.setitimer(signal.ITIMER_REAL, limit)
            try:
                return fn()
            finally:
                self.ctx = None
                signal.setitimer(signal.ITIMER_REAL, 0)

        return call


def _watch_parent(parent_pid: int) -> None:
    while True:
        time.sleep(_PARENT_CHECK)
        if os.getppid() != parent_pid:
            os._exit(1)


def _child_main(conn: Connection, log_level: int, parent_pid: int) -> None:
    # The parent drains on SIGTERM/SIGINT; a running task is not to die of
    # the same signal (a terminal's Ctrl-C reaches the whole group).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    alarm = _Alarm()
    signal.signal(signal.SIGALRM, alarm.handle)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    send_lock = threading.Lock()

    def send(message: Any) -> None:
        with send_lock:
            conn.send(message)

    def report(progress: pb.ReportProgress) -> bool:
        send(("progress", progress.SerializeToString()))
        return True

    while True:
        try:
            message = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        if message is None:
            return
        handler_bytes, assignment, worker_id, trace_headers = message
        ctx = TaskContext(pb.Assignment.FromString(assignment), worker_id)
        ctx._reporter = report
        try:
            handler = pickle.loads(handler_bytes)
        except Exception as exc:  # noqa: BLE001 - reported as the task's failure
            text = f"the child process cannot import the handler of {ctx.name!r}: {exc!r}; check that its module imports in a fresh interpreter"
            send(("done", outcome_of(ctx, error=error("ImportError", text, False)).SerializeToString(), 0))
            continue
        try:
            with _tracing.attached(trace_headers):
                outcome = run_sync(handler, ctx, alarm.around(ctx))
        except SoftTimeLimitExceeded as exc:  # the alarm fired just after the handler returned
            outcome = outcome_of(ctx, error=error("SoftTimeLimitExceeded", str(exc), True))
        send(("done", outcome.SerializeToString(), _peak_rss_kib()))


def _peak_rss_kib() -> int:
    """This child's own peak RSS, KiB. Linux carries a parent's peak over
    fork and exec into the child's `ru_maxrss`, so a worker process that
    once peaked above `max_memory_per_child` would retire every child after
    every task; /proc/self/status's VmHWM is this process image's alone."""
    try:
        with open("/proc/self/status", encoding="utf-8", errors="replace") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    import resource  # noqa: PLC0415 - POSIX only, like the pool

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
