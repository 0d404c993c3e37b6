"""iqdisc: how slot requests are scheduled once they have been checked.

=============  ===========================================================================
``no_queue``   made inline while the stream is read; a backend that has to wait goes on in
               a task of its own (so it suits backends that answer without I/O, like S3)
``one_queue``  one FIFO worker: answers leave in the order requests came (the default)
``parallel``   a task per request, no order
``queues``     N FIFO workers; a requester always lands on the same one, so one user's
               requests stay in order while different users go in parallel
=============  ===========================================================================

Every kind holds at most ``queue_size`` waiting (or, for tasks, running) requests;
:meth:`submit` returns False beyond that, and the plugin answers ``wait/resource-constraint``.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Callable, Coroutine, Generator
from typing import Any, Protocol

from .config import IqDisc

Job = Callable[[], Coroutine[Any, Any, None]]
"""Makes the coroutine that answers one request; it handles its own errors."""


class Dispatcher(Protocol):
    def submit(self, key: str, job: Job) -> bool:
        """Schedule ``job`` for requester ``key``; False when full."""

    def close(self) -> None:
        """Cancel what is queued or running."""


def make_dispatcher(iqdisc: IqDisc, limit: int) -> Dispatcher:
    if iqdisc.type == "no_queue":
        return TaskDispatcher(limit, eager=True)
    if iqdisc.type == "parallel":
        return TaskDispatcher(limit, eager=False)
    return QueueDispatcher(iqdisc.workers, limit)


class TaskDispatcher:
    """A task per request (``parallel``), or inline until the job has to wait (``no_queue``)."""

    def __init__(self, limit: int, *, eager: bool) -> None:
        self.limit = limit
        self.eager = eager
        self.tasks: set[asyncio.Future[None]] = set()

    def submit(self, key: str, job: Job) -> bool:
        if len(self.tasks) >= self.limit:
            return False
        task = run_eagerly(job()) if self.eager else asyncio.ensure_future(job())
        if task is not None:
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return True

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()


class QueueDispatcher:
    """``workers`` FIFO queues, each with one worker task; a key always maps to the same one."""

    def __init__(self, workers: int, limit: int) -> None:
        self.limit = limit
        self.queues: list[asyncio.Queue[Job]] = []
        self.workers: list[asyncio.Task[None]] = []
        self.count = workers

    def submit(self, key: str, job: Job) -> bool:
        if not self.queues:  # started on first use, inside the running loop
            self.queues = [asyncio.Queue(self.limit) for _ in range(self.count)]
            self.workers = [asyncio.ensure_future(self._work(queue)) for queue in self.queues]
        queue = self.queues[hash(key) % self.count]
        try:
            queue.put_nowait(job)
        except asyncio.QueueFull:
            return False
        return True

    @staticmethod
    async def _work(queue: asyncio.Queue[Job]) -> None:
        while True:
            job = await queue.get()
            await job()

    def close(self) -> None:
        for worker in self.workers:
            worker.cancel()
        self.queues, self.workers = [], []


def run_eagerly(coroutine: Coroutine[Any, Any, None]) -> asyncio.Future[None] | None:
    """Run ``coroutine`` now, up to its first wait; None if it finished, else the task that
    carries it on (what ``eager_start`` does for tasks from Python 3.12)."""
    try:
        pending = coroutine.send(None)
    except StopIteration:
        return None
    return asyncio.ensure_future(_carry_on(coroutine, pending))


@types.coroutine
def _carry_on(coroutine: Coroutine[Any, Any, None], pending: Any) -> Generator[Any, None, None]:
    """Hand the future ``coroutine`` is waiting on to a task, then let it run to its end."""
    try:
        yield pending
    except BaseException:
        coroutine.close()
        raise
    yield from coroutine  # type: ignore[misc]
