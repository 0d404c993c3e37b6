"""Unit tests of the iqdisc dispatchers and of ``start_task`` (pytest-asyncio, auto mode)."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable, Iterator

import pytest

from helpers import AsyncioErrors, key_on_another_queue

from slixmpp_http_upload.config import IqDisc
from slixmpp_http_upload.dispatch import EAGER_TASKS, Job, QueueDispatcher, TaskDispatcher, make_dispatcher, start_task

needs_eager_tasks = pytest.mark.skipif(not EAGER_TASKS, reason="eager tasks need Python 3.12")


@pytest.fixture(autouse=True)
def no_asyncio_errors() -> Iterator[None]:
    """Fail a test after which asyncio logged an error ("Task exception was never retrieved",
    "Task was destroyed but it is pending!", ...)."""
    gc.collect()  # what earlier tests left behind complains now, not in this test
    errors = AsyncioErrors()
    logger = logging.getLogger("asyncio")
    logger.addHandler(errors)
    try:
        yield
        gc.collect()
    finally:
        logger.removeHandler(errors)
    assert errors.messages == []


async def settle(rounds: int = 20) -> None:
    """Let every ready task run a few steps."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def until(condition: Callable[[], bool], timeout: float = 5) -> None:
    """Let the loop run until ``condition()`` holds (fails after ``timeout`` seconds)."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.002)


class Recorder:
    """Jobs that log when they start and end; ``gate(name)`` jobs wait for ``open(name)``."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.gates: dict[str, asyncio.Event] = {}

    def job(self, name: str, delay: float = 0) -> Job:
        async def run() -> None:
            self.log.append(f"start {name}")
            try:
                if delay:
                    await asyncio.sleep(delay)
                self.log.append(f"end {name}")
            finally:
                self.log.append(f"finally {name}")

        return run

    def gate(self, name: str) -> Job:
        event = self.gates.setdefault(name, asyncio.Event())

        async def run() -> None:
            self.log.append(f"start {name}")
            try:
                await event.wait()
                self.log.append(f"end {name}")
            except asyncio.CancelledError:
                self.log.append(f"cancelled {name}")
                raise

        return run

    def open(self, name: str) -> None:
        self.gates[name].set()

    def ends(self) -> list[str]:
        return [entry.split()[1] for entry in self.log if entry.startswith("end ")]


# ------------------------------------------------------------------------------ factory


@pytest.mark.parametrize(
    ("iqdisc", "kind", "attrs"),
    [
        (IqDisc("no_queue"), TaskDispatcher, {"eager": True, "limit": 7}),
        (IqDisc("parallel"), TaskDispatcher, {"eager": False, "limit": 7}),
        (IqDisc("one_queue"), QueueDispatcher, {"count": 1, "limit": 7}),
        (IqDisc("queues", 3), QueueDispatcher, {"count": 3, "limit": 7}),
    ],
)
def test_make_dispatcher(iqdisc: IqDisc, kind: type, attrs: dict[str, object]) -> None:
    dispatcher = make_dispatcher(iqdisc, 7)
    assert type(dispatcher) is kind
    assert {name: getattr(dispatcher, name) for name in attrs} == attrs


# ------------------------------------------------------------------------ QueueDispatcher


async def test_queue_starts_lazily_and_keeps_order() -> None:
    dispatcher = QueueDispatcher(1, 100)
    assert dispatcher.workers == []  # nothing runs before the first request
    rec = Recorder()
    for name, delay in [("a", 0.03), ("b", 0), ("c", 0.01), ("d", 0)]:
        assert dispatcher.submit(f"{name}@x", rec.job(name, delay))
    assert len(dispatcher.workers) == 1
    await until(lambda: len(rec.ends()) == 4)
    assert rec.ends() == ["a", "b", "c", "d"]
    # one at a time: each job ends before the next starts
    assert rec.log == [f"{step} {name}" for name in "abcd" for step in ("start", "end", "finally")]
    dispatcher.close()


async def test_queues_same_key_in_order_other_key_overtakes() -> None:
    first, other = "alice@localhost", key_on_another_queue("alice@localhost", 4)
    dispatcher = QueueDispatcher(4, 100)
    rec = Recorder()
    dispatcher.submit(first, rec.job("slow", 0.05))
    dispatcher.submit(first, rec.job("after-slow", 0))
    dispatcher.submit(other, rec.job("other", 0))
    await until(lambda: len(rec.ends()) == 3)
    assert rec.ends() == ["other", "slow", "after-slow"]
    assert len(dispatcher.workers) == 4
    dispatcher.close()


async def test_queue_limit_counts_waiting_requests() -> None:
    dispatcher = QueueDispatcher(1, 2)
    rec = Recorder()
    assert dispatcher.submit("k", rec.gate("one"))
    assert dispatcher.submit("k", rec.gate("two"))
    assert not dispatcher.submit("k", rec.gate("refused"))  # 2 waiting, the worker has not run yet
    await settle()  # the worker takes "one" out of the queue
    assert rec.log == ["start one"]
    assert dispatcher.submit("k", rec.gate("three"))
    assert not dispatcher.submit("k", rec.gate("refused2"))
    for name in ("one", "two", "three"):
        rec.open(name)
    await settle()
    assert rec.ends() == ["one", "two", "three"]
    assert "start refused" not in rec.log
    dispatcher.close()


async def test_queue_limit_is_per_queue() -> None:
    first, other = "alice@localhost", key_on_another_queue("alice@localhost", 2)
    dispatcher = QueueDispatcher(2, 1)
    rec = Recorder()
    assert dispatcher.submit(first, rec.gate("a"))
    assert not dispatcher.submit(first, rec.gate("a2"))
    assert dispatcher.submit(other, rec.gate("b"))
    dispatcher.close()
    await settle()


async def test_queue_close_cancels_running_and_drops_queued() -> None:
    dispatcher = QueueDispatcher(1, 10)
    rec = Recorder()
    dispatcher.submit("k", rec.gate("running"))
    dispatcher.submit("k", rec.gate("queued"))
    await settle()
    workers = list(dispatcher.workers)
    dispatcher.close()
    assert dispatcher.workers == [] and dispatcher.queues == []
    await settle()
    assert all(worker.cancelled() for worker in workers)
    assert rec.log == ["start running", "cancelled running"]
    # usable again afterwards: new workers start on the next request
    assert dispatcher.submit("k", rec.job("again"))
    await settle()
    assert rec.ends() == ["again"]
    dispatcher.close()
    await settle()


async def test_a_queue_is_idle_only_with_nothing_queued_or_running_for_it() -> None:
    first, other = "alice@localhost", key_on_another_queue("alice@localhost", 2)
    dispatcher = QueueDispatcher(2, 10)
    rec = Recorder()
    assert dispatcher.idle(first) and dispatcher.idle(other)  # before any worker exists
    dispatcher.submit(first, rec.gate("running"))
    dispatcher.submit(first, rec.gate("queued"))
    assert not dispatcher.idle(first) and dispatcher.idle(other)
    await settle()
    rec.open("running")
    await settle()
    assert rec.ends() == ["running"] and not dispatcher.idle(first)  # "queued" is running now
    rec.open("queued")
    await settle()
    assert dispatcher.idle(first)
    dispatcher.submit(first, rec.job("quick", 0))
    await settle()
    assert dispatcher.idle(first)
    dispatcher.close()


async def test_a_closed_queue_is_idle_and_its_cancelled_worker_counts_nothing() -> None:
    dispatcher = QueueDispatcher(1, 10)
    rec = Recorder()
    dispatcher.submit("k", rec.gate("running"))
    await settle()
    dispatcher.close()
    assert dispatcher.idle("k")
    await settle()  # the cancelled worker's count goes to the old list, not the new one
    assert dispatcher.idle("k") and dispatcher.unfinished == [0]
    dispatcher.submit("k", rec.gate("next"))
    assert not dispatcher.idle("k")
    dispatcher.close()
    await settle()


async def test_a_job_that_raises_still_leaves_its_queue_idle(caplog: pytest.LogCaptureFixture) -> None:
    dispatcher = QueueDispatcher(1, 10)

    async def fails() -> None:
        raise RuntimeError("a bug")

    dispatcher.submit("k", fails)
    await settle()
    assert dispatcher.idle("k")
    assert "A slot request's job failed" in caplog.text
    dispatcher.close()


@pytest.mark.parametrize("eager", [True, False])
async def test_task_dispatchers_are_always_idle(eager: bool) -> None:
    dispatcher = TaskDispatcher(10, eager=eager)
    rec = Recorder()
    dispatcher.submit("k", rec.gate("running"))
    assert dispatcher.idle("k")  # no order to keep
    dispatcher.close()
    await settle()


# ------------------------------------------------------------------------- TaskDispatcher


async def test_parallel_completion_order_follows_latency() -> None:
    dispatcher = TaskDispatcher(10, eager=False)
    rec = Recorder()
    dispatcher.submit("k", rec.job("slow", 0.04))
    dispatcher.submit("k", rec.job("fast", 0))
    dispatcher.submit("k", rec.job("mid", 0.02))
    assert rec.log == []  # nothing runs inside submit
    assert len(dispatcher.tasks) == 3
    await until(lambda: len(rec.ends()) == 3)
    await settle()
    assert rec.ends() == ["fast", "mid", "slow"]
    assert dispatcher.tasks == set()


async def test_parallel_limit_counts_running_tasks() -> None:
    dispatcher = TaskDispatcher(2, eager=False)
    rec = Recorder()
    assert dispatcher.submit("k", rec.gate("a"))
    assert dispatcher.submit("k", rec.gate("b"))
    assert not dispatcher.submit("k", rec.gate("c"))
    rec.open("a")
    await settle()
    assert dispatcher.submit("k", rec.gate("d"))  # "a" is done: room again
    assert not dispatcher.submit("k", rec.gate("e"))
    await settle()
    dispatcher.close()
    await settle()
    assert sorted(entry for entry in rec.log if entry.startswith("cancelled")) == ["cancelled b", "cancelled d"]
    assert dispatcher.tasks == set()


@needs_eager_tasks
async def test_no_queue_finishes_inline() -> None:
    dispatcher = TaskDispatcher(1, eager=True)
    rec = Recorder()
    for n in range(5):  # never counted against the limit: nothing is left running
        assert dispatcher.submit("k", rec.job(f"j{n}"))
        assert rec.log[-1] == f"finally j{n}"  # done before submit returned
    assert dispatcher.tasks == set()


@needs_eager_tasks
async def test_no_queue_carries_on_waiting_jobs_and_limits_them() -> None:
    dispatcher = TaskDispatcher(1, eager=True)
    rec = Recorder()
    assert dispatcher.submit("k", rec.gate("waits"))
    assert rec.log == ["start waits"]  # the first step ran inside submit
    assert len(dispatcher.tasks) == 1
    assert not dispatcher.submit("k", rec.gate("refused"))
    assert not dispatcher.submit("k", rec.job("instant"))  # the limit is checked before running
    assert rec.log == ["start waits"]
    rec.open("waits")
    await settle()
    assert dispatcher.tasks == set()
    assert "end waits" in rec.log


async def test_no_queue_close_cancels_carried_on_jobs() -> None:
    dispatcher = TaskDispatcher(5, eager=True)
    rec = Recorder()
    dispatcher.submit("k", rec.gate("a"))
    dispatcher.submit("k", rec.gate("b"))
    await settle()
    dispatcher.close()
    await settle()
    assert rec.log[:2] == ["start a", "start b"]
    assert sorted(rec.log[2:]) == ["cancelled a", "cancelled b"]  # (a set of tasks: any order)
    assert dispatcher.tasks == set()


# ------------------------------------------------------------------------------ start_task

@needs_eager_tasks
async def test_eager_task_finishes_inline() -> None:
    seen: list[object] = []

    async def job() -> None:
        seen.append(asyncio.current_task())

    assert start_task(job(), eager=True) is None
    assert len(seen) == 1 and seen[0] is not None  # it ran, inside a task of its own


async def test_task_suspends_and_completes() -> None:
    future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    seen: list[object] = []

    async def job() -> None:
        seen.append("first step")
        seen.append(await future)

    task = start_task(job(), eager=True)
    assert task is not None
    assert seen == (["first step"] if EAGER_TASKS else [])
    future.set_result(42)
    await task
    assert seen == ["first step", 42]


@pytest.mark.parametrize("eager", [True, False])
async def test_task_timeout_from_the_first_step(eager: bool) -> None:
    # A backend doing I/O under asyncio.timeout (aiohttp does) needs a task from its first step.
    outcome: list[str] = []

    async def job(wait: float) -> None:
        try:
            async with asyncio.timeout(0.01):
                await asyncio.sleep(wait)
            outcome.append("in time")
        except TimeoutError:
            outcome.append("timed out")

    tasks = [start_task(job(wait), eager=eager) for wait in (0, 1)]
    await asyncio.gather(*(task for task in tasks if task is not None))
    assert outcome == ["in time", "timed out"]


async def test_task_cancel_while_waiting_closes_the_coroutine() -> None:
    log: list[str] = []

    async def job() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            log.append("finally")

    task = start_task(job(), eager=True)
    assert task is not None
    await settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert log == ["finally"]


# ------------------------------------------------------------------ a job that raises


@pytest.mark.parametrize("iqdisc", ["one_queue", "parallel", "queues"])
@pytest.mark.parametrize("error", [RuntimeError("bug"), RecursionError(), asyncio.CancelledError()], ids=repr)
async def test_a_job_that_raises_is_answered_and_the_next_runs(
    iqdisc: str, error: BaseException, caplog: pytest.LogCaptureFixture
) -> None:
    """A job that raises (not cancelled from outside: a CancelledError it let escape counts
    too) is logged once and its ``on_failure`` called; the worker goes on."""
    dispatcher = make_dispatcher(IqDisc(iqdisc, 2 if iqdisc == "queues" else 1), 10)
    rec = Recorder()
    failed: list[str] = []

    async def broken() -> None:
        raise error

    assert dispatcher.submit("k", broken, lambda: failed.append("broken"))
    assert dispatcher.submit("k", rec.job("next"))
    await until(lambda: rec.ends() == ["next"])
    assert failed == ["broken"]
    assert [r.message for r in caplog.records if r.levelname == "ERROR"] == ["A slot request's job failed"]
    dispatcher.close()
    await settle()


async def test_an_on_failure_that_raises_is_logged_and_the_worker_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    dispatcher = QueueDispatcher(1, 10)
    rec = Recorder()

    async def broken() -> None:
        raise RuntimeError("bug")

    def cannot_answer() -> None:
        raise RuntimeError("no stream")

    assert dispatcher.submit("k", broken, cannot_answer)
    assert dispatcher.submit("k", rec.job("next"))
    await until(lambda: rec.ends() == ["next"])
    assert "Could not answer the request of a failed job" in caplog.text
    dispatcher.close()
    await settle()
