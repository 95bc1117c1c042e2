"""Races: many producers and consumers on one priority queue at once, checked against an
ordering invariant that can be decided from what the processes recorded.

Consumers are real worker processes with ``concurrency=1``: each one's handler calls are
recorded in order, with CLOCK_MONOTONIC times that the test process shares.
"""

from __future__ import annotations

import bisect
import itertools
import json
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import anyio
import pytest
import redis.asyncio as aioredis

from redisflow import Flow
from redisflow.protocol.envelope import payload_of
from tests.support.flows import eventually
from tests.support.servers import RedisProc
from tests.support.workers import Record, Workers, by_pid, count, duplicates

pytestmark = pytest.mark.anyio

LEVELS = 10  # priorities 0 (most urgent) .. 9


@dataclass(frozen=True)
class Sent:
    """One enqueue: the message, its priority, when the call began and when it returned."""

    n: int
    p: int
    called: float
    returned: float


@dataclass(frozen=True)
class Fetch:
    """One message as a consumer saw it: it was fetched at some time in [after, before]."""

    n: int
    pid: int
    after: float  # the end of the consumer's previous handler (its fetch came later)
    before: float  # the start of this handler


def fetch_windows(records: Iterable[Record]) -> list[Fetch]:
    """With ``batch_size=1, prefetch=1, concurrency=1`` a consumer fetches its next message
    only once its handler returned, so a message was fetched between the end of the
    consumer's previous handler and the start of its own. A consumer's first message has no
    lower bound (-inf): nothing can be claimed about it."""
    out: list[Fetch] = []
    for pid, group in by_pid(records):
        starts = [r for r in group if r.event == "S"]
        ends = {r.n: r.t for r in group if r.event == "E"}
        after = float("-inf")
        for r in starts:
            out.append(Fetch(r.n, pid, after, r.t))
            after = ends.get(r.n, float("inf"))
    return out


def inversions(sent: dict[int, Sent], fetches: list[Fetch]) -> list[tuple[int, int]]:
    """Pairs (x, b): b was fetched although x should have been fetched before it.

    x should precede b when it is more urgent, or equally urgent and enqueued before b's
    enqueue began (its sequence number is then lower). It is an inversion only when it is
    certain from the recorded times: x was enqueued before b's fetch window opened, and x's
    own fetch window opened after b's closed, so x sat in the queue, ahead of b, while b was
    fetched.
    """
    fetched = {f.n: f for f in fetches}
    # Per level: messages sorted by the time their enqueue returned, with the running max
    # of the opening of their fetch window.
    by_level: list[tuple[list[float], list[float], list[int]]] = []
    for level in range(LEVELS):
        xs = sorted((s.returned, fetched[s.n].after, s.n) for s in sent.values() if s.p == level)
        running, best = [], float("-inf")
        for _, after, _ in xs:
            best = max(best, after)
            running.append(best)
        by_level.append(([x[0] for x in xs], running, [x[2] for x in xs]))
    found: list[tuple[int, int]] = []
    for b in fetches:
        mine = sent[b.n]
        for level in range(mine.p + 1):
            returned, running, ns = by_level[level]
            # Only messages enqueued before b's window opened (and, at b's own level, before
            # b's enqueue began) were certainly ahead of b.
            limit = b.after if level < mine.p else min(b.after, mine.called)
            i = bisect.bisect_left(returned, limit)
            if i and running[i - 1] > b.before:
                x = next(ns[j] for j in range(i) if fetched[ns[j]].after > b.before)
                found.append((x, b.n))
    return found


def test_inversion_check_finds_a_planted_inversion() -> None:
    """The checker flags a message fetched while a more urgent one, enqueued well before,
    waited; and accepts the same history in the right order."""
    sent = {1: Sent(1, 0, 0.0, 0.1), 2: Sent(2, 5, 0.0, 0.1)}  # 1 is more urgent
    wrong = [Fetch(2, 10, 1.0, 1.1), Fetch(1, 11, 1.5, 1.6)]  # 2 taken while 1 waited
    right = [Fetch(1, 10, 1.0, 1.1), Fetch(2, 11, 1.5, 1.6)]
    unclear = [Fetch(2, 10, 1.0, 1.1), Fetch(1, 11, 0.5, 1.6)]  # 1 may have gone first
    assert inversions(sent, wrong) == [(1, 2)]
    assert inversions(sent, right) == []
    assert inversions(sent, unclear) == []


class Producers:
    """Producer tasks, each with its own connections, enqueuing at random priorities."""

    def __init__(self, url: str, ns: str, n: int, seed: int, queue: str = "priority") -> None:
        self.flows = [Flow(url, prefix=ns) for _ in range(n)]
        self.queue = f"{ns}:{queue}"
        self.rng = random.Random(seed)
        self.sent: dict[int, Sent] = {}

    async def run(self, which: int, count: int, pause: float) -> None:
        flow = self.flows[which]
        for k in range(count):
            n = which * 1_000_000 + k
            p = self.rng.randrange(LEVELS)
            called = time.monotonic()
            await flow.enqueue_priority(self.queue, {"n": n, "p": p}, priority=p)
            self.sent[n] = Sent(n, p, called, time.monotonic())
            if pause:
                await anyio.sleep(pause)

    async def aclose(self) -> None:
        for flow in self.flows:
            await flow.aclose()


def per_consumer_order_ok(records: list[Record], sent: dict[int, Sent]) -> tuple[int, int]:
    """For a backlog enqueued before any consumer started: each consumer's handler calls
    must go by priority, and by enqueue order within one producer and level. Returns
    (consumers, messages checked)."""
    consumers = checked = 0
    for pid, group in by_pid(records):
        seq = [sent[r.n] for r in group if r.event == "S"]
        consumers += 1
        checked += len(seq)
        for a, b in itertools.pairwise(seq):
            assert a.p <= b.p, f"consumer {pid}: priority {b.p} ({b.n}) after {a.p} ({a.n})"
            if a.p == b.p and a.n // 1_000_000 == b.n // 1_000_000:
                assert a.n < b.n, f"consumer {pid}: FIFO broken within level {a.p}"
    return consumers, checked


@pytest.mark.chaos
async def test_competing_consumers_take_a_backlog_in_priority_order(
    private_redis: RedisProc,
    workers: Callable[..., Workers],
    figures: Callable[..., None],
    ns: str,
) -> None:
    """Four producers enqueue 3,000 messages at random priorities at once; then three
    consumer processes (batches of 20) compete for them: each consumer sees them in priority
    order (FIFO within a level and producer), and each message is handled exactly once.

    The backlog is built under another key and renamed into place once all three workers
    are ready, so none of them is still starting while the others drain it."""
    url = private_redis.url
    seed = random.randrange(10**6)
    producers = Producers(url, ns, 4, seed, queue="staging")
    pool = workers(
        url,
        ns,
        kinds=["priority"],
        flow=dict(batch_size=20, prefetch=20, block_timeout=0.5),
        handler=dict(concurrency=1),
    )
    for _ in range(3):
        pool.start()
    r = aioredis.Redis.from_url(url)
    try:
        async with anyio.create_task_group() as tg:
            for which in range(4):
                tg.start_soon(producers.run, which, 750, 0.0)
        await eventually(lambda: len(pool.ready) == 3, within=60, what="three workers ready")
        queue = f"{ns}:priority"
        await r.rename(producers.queue, queue)
        # One more message, through redisflow so that it wakes every worker; from a fifth
        # "producer" (its sequence number is the real queue's, not the staging one's).
        sentinel = Sent(4_000_000, LEVELS - 1, time.monotonic(), time.monotonic())
        await producers.flows[0].enqueue_priority(
            queue, {"n": sentinel.n, "p": sentinel.p}, priority=sentinel.p
        )
        producers.sent[sentinel.n] = sentinel
    finally:
        await producers.aclose()
        await r.aclose()
    total = len(producers.sent)
    await eventually(
        lambda: len(count(pool.records(), "E", "priority")) == total,
        within=60,
        what=f"every message handled\n{pool.logs()}",
    )
    assert set(pool.stop_all().values()) == {0}, pool.logs()
    records = pool.records()
    starts = count(records, "S", "priority")
    consumers, checked = per_consumer_order_ok(records, producers.sent)
    figures(messages=total, producers=4, consumers=consumers, seed=seed, duplicated=0)
    assert duplicates(starts) == 0
    assert set(starts) == set(producers.sent)
    assert consumers == 3 and checked == total


@pytest.mark.chaos
async def test_priority_order_holds_while_producers_and_consumers_race(
    private_redis: RedisProc,
    workers: Callable[..., Workers],
    figures: Callable[..., None],
    ns: str,
) -> None:
    """Four producers enqueue at random priorities while three consumers (one message at a
    time) take them: no consumer ever takes a message while a more urgent one (or an
    earlier one of its level) that was certainly already enqueued is still waiting."""
    url = private_redis.url
    seed = random.randrange(10**6)
    producers = Producers(url, ns, 4, seed)
    pool = workers(
        url,
        ns,
        kinds=["priority"],
        flow=dict(batch_size=1, prefetch=1, block_timeout=0.5),
        handler=dict(concurrency=1),
        sleep=(0.002, 0.005),  # slower than the producers: a backlog builds up
    )
    for _ in range(3):
        pool.start()
    r = aioredis.Redis.from_url(url)
    depth: list[int] = []
    try:
        async with anyio.create_task_group() as tg:
            for which in range(4):
                tg.start_soon(producers.run, which, 600, 0.003)
            while len(producers.sent) < 2400:
                depth.append(int(await r.zcard(f"{ns}:priority")))
                await anyio.sleep(0.1)
        total = len(producers.sent)
        await eventually(
            lambda: len(count(pool.records(), "E", "priority")) == total,
            within=60,
            what=f"every message handled\n{pool.logs()}",
        )
    finally:
        await producers.aclose()
        await r.aclose()
    assert set(pool.stop_all().values()) == {0}, pool.logs()
    records = pool.records()
    starts = count(records, "S", "priority")
    found = inversions(producers.sent, fetch_windows(records))
    figures(
        messages=total,
        producers=4,
        consumers=3,
        seed=seed,
        backlog_max=max(depth),
        inversions=len(found),
        duplicated=duplicates(starts),
    )
    assert found == [], found[:10]
    assert duplicates(starts) == 0
    assert set(starts) == set(producers.sent)
    assert max(depth) >= 50, "the consumers kept up: they never had to choose"


# -- dedup and rate limits -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["queue", "priority", "stream"])
async def test_dedup_admits_one_per_key_across_concurrent_producers(
    kind: str, url: str, ns: str, r: aioredis.Redis
) -> None:
    """Eight producers (each with its own connections) send the same 200 dedup keys at
    once: exactly one send per key is accepted, the others return None, and Redis holds
    exactly one message per key."""
    flows = [Flow(url, prefix=ns) for _ in range(8)]
    name = f"{ns}:{kind}"
    accepted: list[str] = []

    async def send(flow: Flow, key: int) -> None:
        data = {"n": key}
        if kind == "queue":
            result = await flow.enqueue(name, data, dedup_key=str(key), dedup_ttl=60)
        elif kind == "priority":
            result = await flow.enqueue_priority(name, data, dedup_key=str(key), dedup_ttl=60)
        else:
            result = await flow.append(name, data, dedup_key=str(key), dedup_ttl=60)
        if result is not None:
            accepted.append(str(key))

    try:
        async with anyio.create_task_group() as tg:
            for key in range(200):
                for flow in random.sample(flows, len(flows)):
                    tg.start_soon(send, flow, key)
    finally:
        for flow in flows:
            await flow.aclose()
    if kind == "queue":
        stored = await r.lrange(name, 0, -1)
    elif kind == "priority":
        stored = await r.zrange(name, 0, -1)
    else:
        stored = [fields[b"data"] for _, fields in await r.xrange(name)]
    keys = sorted(json.loads(payload_of(raw))["n"] for raw in stored)
    assert sorted(map(int, accepted)) == list(range(200))
    assert keys == list(range(200))


@pytest.mark.chaos
async def test_rate_limit_holds_across_worker_processes(
    private_redis: RedisProc,
    workers: Callable[..., Workers],
    figures: Callable[..., None],
    ns: str,
) -> None:
    """Two worker processes (8 handlers each) share ``RateLimit(10, per=1.0)`` per key: in
    no window of 0.8 s (one second, less the spread of the delay between a grant and the
    handler's start) do more than 10 handlers of one key start; every message is handled
    once."""
    limit, per, keys, per_key = 10, 1.0, 3, 30
    url = private_redis.url
    pool = workers(
        url,
        ns,
        kinds=["queue"],
        # At most 8 messages held per worker (4 per fetch): with the defaults (500 per fetch)
        # the first worker to fetch took all 90 at once, and the other saw a key's messages
        # only if that key's deferrals came back to it; once, none did ("one worker only").
        flow=dict(block_timeout=0.5, batch_size=4, prefetch=8),
        handler=dict(concurrency=8, max_attempts=50),
        rate=(limit, per),
    )
    pool.start()
    pool.start()
    await eventually(lambda: len(pool.ready) == 2, within=60, what="both workers ready")
    flow = Flow(url, prefix=ns)
    try:
        items = [{"n": n, "p": n % keys} for n in range(keys * per_key)]
        await flow.enqueue_many(f"{ns}:queue", items)
    finally:
        await flow.aclose()
    await eventually(
        lambda: len(count(pool.records(), "E", "queue")) == len(items),
        within=60,
        what=f"every message handled\n{pool.logs()}",
    )
    assert set(pool.stop_all().values()) == {0}, pool.logs()
    records = pool.records()
    starts = count(records, "S", "queue")
    assert duplicates(starts) == 0 and len(starts) == len(items)
    # Grants are decided on Redis's clock, starts recorded on the workers' a little later:
    # allow 0.2 s for the spread of that delay by checking windows of per - 0.2 s.
    worst, worst_exact, spans = 0, 0, []
    for key in range(keys):
        times = sorted(rec.t for rec in records if rec.event == "S" and rec.n % keys == key)
        worst = max(worst, most_in_window(times, per - 0.2))
        worst_exact = max(worst_exact, most_in_window(times, per))
        spans.append(times[-1] - times[0])
        assert len({rec.pid for rec in records if rec.n % keys == key}) == 2, "one worker only"
    figures(
        limit=limit,
        per=per,
        keys=keys,
        messages=len(items),
        most_starts_in_window=worst,
        most_starts_in_exact_window=worst_exact,
    )
    assert worst <= limit, worst
    # 30 messages at 10 per second cannot all start within 1.9 s (a lower bound: a limiter
    # that lets everything through would start them at once).
    assert min(spans) >= 2 * per - 0.1, spans


def most_in_window(times: list[float], width: float) -> int:
    """The most timestamps in any half-open window [t, t + width) (``times`` sorted)."""
    best = 0
    for i, t in enumerate(times):
        best = max(best, bisect.bisect_left(times, t + width) - i)
    return best
