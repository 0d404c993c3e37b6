"""iqdisc: how slot requests are scheduled once they have been checked.

=============  ===========================================================================
``no_queue``   made inline while the stream is read, up to the backend's first wait (an eager
               task: Python 3.12 and later; on 3.11 a task per request, like ``parallel``)
``one_queue``  one FIFO worker: answers leave in the order requests came (the default)
``parallel``   a task per request, no order
``queues``     N FIFO workers; a requester always lands on the same one, so one user's
               requests stay in order while different users go in parallel
=============  ===========================================================================

Each queue (``queues``: each of the N) holds at most ``queue_size`` waiting requests, and the
task kinds at most ``queue_size`` running ones; :meth:`submit` returns False beyond that, and the plugin answers ``wait/resource-constraint``.

A job that raises (a bug: jobs handle their own errors) is logged once and its ``on_failure``
called, which answers the request if it can; the worker goes on with the next job.

:meth:`Dispatcher.idle` says whether a request of a requester may be answered right away, in
the call that read it, without breaking the order of the mode: nothing is queued or running on
their queue (``one_queue``: nothing at all; ``queues``: nothing on the queue their bare JID maps
to, which other users share). The plugin answers so when it has nothing to await
(no policy hook, the backend ready), sparing a queue, a task switch and the coroutines.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from .config import IqDisc

EAGER_TASKS = sys.version_info >= (3, 12)
"""Whether tasks can run their first step at once, so that ``no_queue`` answers inline."""

log = logging.getLogger(__name__)

Job = Callable[[], Coroutine[Any, Any, None]]
"""Makes the coroutine that answers one request; it handles its own errors."""
OnFailure = Callable[[], None]
"""Answers the request of a job that raised all the same; must not raise."""


class Dispatcher(Protocol):
    def submit(self, key: str, job: Job, on_failure: OnFailure | None = None) -> bool:
        """Schedule ``job`` for requester ``key``; False when full. ``on_failure`` answers the
        request should ``job`` raise."""

    def close(self) -> None:
        """Cancel what is queued or running."""

    def idle(self, key: str) -> bool:
        """Whether a request of ``key`` answered now would leave in the mode's order."""


def make_dispatcher(iqdisc: IqDisc, limit: int) -> Dispatcher:
    if iqdisc.type == "no_queue":
        return TaskDispatcher(limit, eager=True)
    if iqdisc.type == "parallel":
        return TaskDispatcher(limit, eager=False)
    return QueueDispatcher(iqdisc.workers, limit)


class TaskDispatcher:
    """A task per request (``parallel``), started eagerly for ``no_queue``."""

    def __init__(self, limit: int, *, eager: bool) -> None:
        self.limit = limit
        self.eager = eager
        self.tasks: set[asyncio.Future[None]] = set()

    def submit(self, key: str, job: Job, on_failure: OnFailure | None = None) -> bool:
        if len(self.tasks) >= self.limit:
            return False
        task = start_task(run_job(job, on_failure), eager=self.eager)
        if task is not None:
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return True

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()

    def idle(self, key: str) -> bool:
        return True  # no order to keep


class QueueDispatcher:
    """``workers`` FIFO queues, each with one worker task; a key always maps to the same one."""

    def __init__(self, workers: int, limit: int) -> None:
        self.limit = limit
        self.queues: list[asyncio.Queue[tuple[Job, OnFailure | None]]] = []
        self.workers: list[asyncio.Task[None]] = []
        self.count = workers
        self.unfinished = [0] * workers
        """Jobs submitted to each queue and not finished yet (a new list when :meth:`close`
        cancels the workers, which count down the one they were started with)."""

    def queue_index(self, key: str) -> int:
        """Which queue ``key`` (a requester's bare JID) always goes to."""
        return hash(key) % self.count

    def submit(self, key: str, job: Job, on_failure: OnFailure | None = None) -> bool:
        if not self.queues:  # started on first use, inside the running loop
            self.queues = [asyncio.Queue(self.limit) for _ in range(self.count)]
            self.workers = [
                asyncio.ensure_future(self._work(queue, self.unfinished, index)) for index, queue in enumerate(self.queues)
            ]
        index = self.queue_index(key)
        try:
            self.queues[index].put_nowait((job, on_failure))
        except asyncio.QueueFull:
            return False
        self.unfinished[index] += 1
        return True

    @staticmethod
    async def _work(queue: asyncio.Queue[tuple[Job, OnFailure | None]], unfinished: list[int], index: int) -> None:
        while True:
            await run_job(*await queue.get())  # raises only when cancelled (by close, which drops the count)
            unfinished[index] -= 1

    def close(self) -> None:
        for worker in self.workers:
            worker.cancel()
        self.queues, self.workers = [], []
        self.unfinished = [0] * self.count  # the cancelled workers count down the old list

    def idle(self, key: str) -> bool:
        return not self.unfinished[self.queue_index(key)]


async def run_job(job: Job, on_failure: OnFailure | None) -> None:
    """Run ``job``; if it raises, log it once and call ``on_failure`` instead of raising (only
    the cancellation of the running task itself goes through)."""
    try:
        await job()
    except (Exception, asyncio.CancelledError):
        if being_cancelled():
            raise
        log.exception("A slot request's job failed")
        if on_failure is None:
            return
        try:
            on_failure()
        except Exception:
            log.exception("Could not answer the request of a failed job")


def being_cancelled() -> bool:
    """Whether the running task itself is being cancelled (as opposed to a job that let a
    CancelledError from something it awaited escape)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def start_task(coroutine: Coroutine[Any, Any, None], *, eager: bool) -> asyncio.Future[None] | None:
    """A task running ``coroutine``. With ``eager`` on Python 3.12 and later its first step runs
    right now, inside the task (``eager_start``), and None means it has already finished."""
    if eager and EAGER_TASKS:
        task = asyncio.Task(coroutine, loop=asyncio.get_running_loop(), eager_start=True)  # type: ignore[call-arg]
        if task.done():
            task.result()
            return None
        return task
    return asyncio.ensure_future(coroutine)
