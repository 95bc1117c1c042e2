"""Priority queues: exact order (priority, then FIFO), age never beats priority, retries keep
their level, and a blocked consumer wakes promptly."""

from __future__ import annotations

import random

import anyio
import pytest
import redis.asyncio as aioredis
from pydantic import BaseModel

from redisflow import Message, Retry
from tests.support.flows import eventually, make_flow

pytestmark = pytest.mark.anyio

SHIFT = 2**40


class Job(BaseModel):
    p: int
    i: int


async def test_order_is_priority_then_fifo(url: str, ns: str, r: aioredis.Redis) -> None:
    """A backlog enqueued at random priorities is handled sorted by priority, FIFO within."""
    q = f"{ns}:jobs"
    rng = random.Random(1234)
    producer = make_flow(url, ns)
    expected: list[tuple[int, int]] = []
    i = 0
    async with producer:
        for _ in range(60):  # single enqueues in random priority order
            p = rng.randint(0, 20)
            await producer.enqueue_priority(q, Job(p=p, i=i), priority=p)
            expected.append((p, i))
            i += 1
        for _ in range(10):  # and some batches at one level each
            p = rng.randint(0, 20)
            items = [Job(p=p, i=i + k) for k in range(rng.randint(1, 15))]
            await producer.enqueue_priority_many(q, items, priority=p)
            expected += [(p, it.i) for it in items]
            i += len(items)
    assert await r.zcard(q) == len(expected)

    got: list[tuple[int, int]] = []
    flow = make_flow(url, ns)

    @flow.on_priority(q, concurrency=1)
    async def handle(job: Job) -> None:
        got.append((job.p, job.i))

    async with flow:
        await eventually(lambda: len(got) == len(expected))
    assert got == sorted(expected)
    assert len({p for p, _ in expected}) > 5  # the data really spans many levels


async def test_old_low_priority_does_not_beat_new_high_priority(
    url: str, ns: str, r: aioredis.Redis
) -> None:
    """A priority-5 message enqueued long before a priority-4 one is still handled after it."""
    q = f"{ns}:jobs"
    producer = make_flow(url, ns)
    async with producer:
        await producer.enqueue_priority(q, Job(p=5, i=0), priority=5)
        # simulate a huge number of messages enqueued in between (age)
        await r.incrby(producer.keys(q).seq, 10**12)
        await producer.enqueue_priority(q, Job(p=4, i=1), priority=4)
        await producer.enqueue_priority(q, Job(p=5, i=2), priority=5)
    scores = {
        Job.model_validate_json(member.split(b"\n", 1)[1]).i: int(score)
        for member, score in await r.zrange(q, 0, -1, withscores=True)
    }
    assert {i: s // SHIFT for i, s in scores.items()} == {0: 5, 1: 4, 2: 5}
    assert scores[0] < scores[2]

    got: list[int] = []
    flow = make_flow(url, ns)

    @flow.on_priority(q, concurrency=1)
    async def handle(job: Job) -> None:
        got.append(job.i)

    async with flow:
        await eventually(lambda: len(got) == 3)
    assert got == [1, 0, 2]


async def test_retried_message_keeps_its_priority(url: str, ns: str, r: aioredis.Redis) -> None:
    """A retried message comes back at its own level: ahead of a lower-priority backlog."""
    q = f"{ns}:jobs"
    backlog = 40
    producer = make_flow(url, ns)
    async with producer:
        await producer.enqueue_priority(q, Job(p=1, i=-1), priority=1)
        await producer.enqueue_priority_many(q, [Job(p=3, i=k) for k in range(backlog)], priority=3)

    got: list[tuple[int, int]] = []  # (i, attempt)
    flow = make_flow(url, ns, prefetch=1, batch_size=1)

    @flow.on_priority(q, concurrency=1, max_attempts=3)
    async def handle(job: Job, msg: Message[Job]) -> None:
        got.append((job.i, msg.attempt))
        if job.i == -1 and msg.attempt == 1:
            raise Retry(delay=0.3)
        await anyio.sleep(0.05)  # a slow backlog, so the retry is due while it remains

    async with flow:
        await eventually(lambda: len(got) == backlog + 2, within=10)
    assert got[0] == (-1, 1)
    retry_at = got.index((-1, 2))
    assert retry_at < len(got) - 5, got  # ahead of the remaining priority-3 backlog
    assert [i for i, _ in got if i >= 0] == list(range(backlog))
    assert await r.zcard(flow.keys(q).delayed) == 0


async def test_retry_waits_in_delayed_set_with_its_priority(
    url: str, ns: str, r: aioredis.Redis
) -> None:
    """While a retry waits, the delayed member records its level; when due it is re-scored
    at that level."""
    q = f"{ns}:jobs"
    flow = make_flow(url, ns)
    seen: list[int] = []

    @flow.on_priority(q, concurrency=1, max_attempts=2)
    async def handle(job: Job, msg: Message[Job]) -> None:
        seen.append(msg.attempt)
        if msg.attempt == 1:
            raise Retry(delay=2.0)

    async with flow:
        await flow.enqueue_priority(q, Job(p=7, i=0), priority=7)
        await eventually(lambda: seen == [1])
        await eventually(lambda: r.zcard(flow.keys(q).delayed))
        (member,) = await r.zrange(flow.keys(q).delayed, 0, -1)
        assert member.startswith(b"7:")
        await eventually(lambda: seen == [1, 2], within=5)
    assert await r.zcard(flow.keys(q).delayed) == 0


async def test_blocked_consumer_wakes_promptly_on_enqueue(url: str, ns: str) -> None:
    """A consumer idle on an empty priority queue handles a new message well within
    block_timeout (woken, not polling)."""
    q = f"{ns}:jobs"
    flow = make_flow(url, ns, block_timeout=5)
    got: list[float] = []

    @flow.on_priority(q)
    async def handle(job: Job) -> None:
        got.append(anyio.current_time())

    async with flow:
        await anyio.sleep(0.5)  # let the consumer settle into its blocking wait
        for n in range(3):
            sent = anyio.current_time()
            await flow.enqueue_priority(q, Job(p=0, i=n), priority=0)
            await eventually(lambda n=n: len(got) == n + 1, within=1)
            assert got[-1] - sent < 1
            await anyio.sleep(0.2)


async def test_blocked_consumer_picks_up_raw_zadd(url: str, ns: str, r: aioredis.Redis) -> None:
    """A member ZADDed by another client (no wake-up) is consumed within block_timeout."""
    q = f"{ns}:jobs"
    flow = make_flow(url, ns, block_timeout=1)
    got: list[Job] = []

    @flow.on_priority(q)
    async def handle(job: Job) -> None:
        got.append(job)

    async with flow:
        await anyio.sleep(0.3)  # let the consumer settle into its blocking wait
        await r.zadd(q, {b'{"p": 0, "i": 42}': 0})
        await eventually(lambda: got, within=1 + 1)
    assert got == [Job(p=0, i=42)]
    assert await r.zcard(q) == 0


async def test_enqueue_priority_many_keeps_fifo(url: str, ns: str) -> None:
    """Items of enqueue_priority_many keep their order within their level."""
    q = f"{ns}:jobs"
    producer = make_flow(url, ns)
    async with producer:
        await producer.enqueue_priority_many(q, [Job(p=2, i=k) for k in range(100)], priority=2)
        await producer.enqueue_priority(q, Job(p=2, i=100), priority=2)
        await producer.enqueue_priority_many(
            q, [Job(p=1, i=k) for k in range(101, 201)], priority=1
        )
        await producer.enqueue_priority_many(
            q, [Job(p=2, i=k) for k in range(201, 251)], priority=2
        )

    got: list[tuple[int, int]] = []
    flow = make_flow(url, ns, batch_size=7)  # many small fetches

    @flow.on_priority(q, concurrency=1)
    async def handle(job: Job) -> None:
        got.append((job.p, job.i))

    async with flow:
        await eventually(lambda: len(got) == 251)
    assert got == (
        [(1, k) for k in range(101, 201)]
        + [(2, k) for k in range(101)]
        + [(2, k) for k in range(201, 251)]
    )
