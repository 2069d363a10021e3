"""Scoring in worker processes that can be killed: a time limit that holds whatever the scorer does.

A thread cannot be stopped, and a scorer that holds the GIL (a regex backtracking in C, a
long numpy call) freezes the event loop that should enforce the limit, and every other
response with it. So each job goes to an idle worker process over a pipe that the event
loop watches, and a worker past its limit is killed and replaced. Workers are forked on first use (as verl's ``prime``
manager's process pool is): the scorer, a closure or a function verl loaded from a file,
needs no pickling; only jobs and results cross the pipe.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import weakref
from collections.abc import Callable


class ScorerError(Exception):
    """The scorer raised ``cause`` (the worker is healthy and is reused)."""

    def __init__(self, cause: BaseException):
        super().__init__(cause)
        self.cause = cause


class _Worker:
    def __init__(self, fn: Callable):
        context = multiprocessing.get_context("fork")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(fn, child), daemon=True, name="perception-reward")
        self.process.start()
        child.close()

    async def call(self, job, timeout: float):
        """``fn(job)`` in the worker: TimeoutError past ``timeout`` seconds, EOFError if it died.

        The event loop watches the pipe itself (no thread hop): it is free while the
        worker scores, whatever the scorer does with its own process's GIL.
        """
        loop = asyncio.get_running_loop()
        answered = loop.create_future()
        fd = self.conn.fileno()
        loop.add_reader(fd, lambda: answered.done() or answered.set_result(None))
        try:
            self.conn.send(job)
            await asyncio.wait_for(answered, timeout)
        finally:
            loop.remove_reader(fd)
        ok, value = self.conn.recv()
        if not ok:
            raise ScorerError(value)
        return value

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.conn.close()


def _serve(fn: Callable, conn) -> None:
    """The worker's loop: one job in, one ``(ok, result or exception)`` out."""
    while True:
        try:
            job = conn.recv()
        except EOFError:  # the parent closed its end
            return
        try:
            conn.send((True, fn(job)))
        except Exception as exc:  # the scorer's, or an unpicklable result
            try:
                conn.send((False, exc))
            except Exception:  # an exception that does not pickle
                conn.send((False, RuntimeError(repr(exc))))


class ScoringPool:
    """At most ``processes`` jobs at once, each in its own worker process under a time limit."""

    def __init__(self, fn: Callable, processes: int = 2):
        self.fn, self.processes = fn, processes
        self._idle: list[_Worker] = []
        self._slots: asyncio.Semaphore | None = None  # made in the running loop
        weakref.finalize(self, _kill_all, self._idle)

    async def run(self, job, timeout: float):
        """``fn(job)``; TimeoutError when it runs past ``timeout`` seconds (the clock starts
        when a worker takes the job, not while it waits for one); the scorer's own
        exception when it raises."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.processes)
        async with self._slots:
            worker = self._idle.pop() if self._idle else _Worker(self.fn)
            try:
                result = await worker.call(job, timeout)
            except ScorerError as e:
                self._idle.append(worker)
                raise e.cause from None
            except BaseException:  # timed out, died, or cancelled: never reuse it
                worker.kill()
                raise
            self._idle.append(worker)
            return result


def _kill_all(workers: list[_Worker]) -> None:
    for worker in workers:
        worker.kill()
