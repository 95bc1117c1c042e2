"""The tutorial's messaging patterns, done right: dedup (producer and consumer side), status
tracking, priority statistics, stream indexes, fast + reliable publishing, notified queues,
rate-limited delivery, memory reporting, and auto-pipelined producers. Each against a real
Redis, with concurrent/racing cases where the tutorial's version breaks."""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import anyio
import orjson
import pytest
import redis.asyncio as aioredis
from pydantic import BaseModel

from redisflow import ConfigError, Flow, Message, RateLimit
from redisflow import ReplyError as ResponseError
from redisflow.keys import status_key
from redisflow.protocol.envelope import content_id
from tests.support import flows

pytestmark = pytest.mark.anyio


class Event(BaseModel):
    event_type: str
    entity_id: str
    n: int = 0


class Hook(BaseModel):
    url: str
    n: int


async def eventually(pred: Callable[[], Any], within: float = 10.0, what: str = "") -> None:
    """``tests.flows.eventually`` with a longer default: these tests wait on windows."""
    await flows.eventually(pred, within, what)


def make_flow(url: str, ns: str, **kwargs: Any) -> Flow:
    return flows.make_flow(url, ns, **{"grace_period": 10.0, **kwargs})


# -- producer-side dedup ---------------------------------------------------------------------


async def test_dedup_lets_one_of_many_racing_producers_through(
    url: str, ns: str, r: aioredis.Redis
) -> None:
    """200 concurrent enqueues over 20 dedup keys (two clients' worth of flows) send exactly
    20 messages; the others return None. The tutorial's SISMEMBER-then-SADD lets thousands
    through."""
    q = f"{ns}:q"
    flows = [make_flow(url, ns), make_flow(url, ns)]
    results: list[str | None] = []

    async def produce(i: int) -> None:
        flow = flows[i % 2]
        results.append(await flow.enqueue(q, {"i": i}, dedup_key=f"k{i % 20}", dedup_ttl=60))

    try:
        async with anyio.create_task_group() as tg:
            for i in range(200):
                tg.start_soon(produce, i)
    finally:
        for flow in flows:
            await flow.aclose()
    sent = [x for x in results if x is not None]
    assert len(sent) == 20 and len(set(sent)) == 20
    assert await r.llen(q) == 20
    ttl = await r.pttl(flows[0].keys(q).dedup("k0"))
    assert 0 < ttl <= 60_000  # one TTL per key, not one for a whole set


async def test_dedup_window_expires_and_covers_every_producer(
    url: str, ns: str, r: aioredis.Redis
) -> None:
    """Each producer honours dedup_key; after dedup_ttl the same key is accepted again."""
    flow = make_flow(url, ns)
    try:
        q, pq, s, ch = f"{ns}:q", f"{ns}:pq", f"{ns}:s", f"{ns}:ch"
        assert await flow.enqueue(q, 1, dedup_key="a", dedup_ttl=0.3)
        assert await flow.enqueue(q, 1, dedup_key="a", dedup_ttl=0.3) is None
        assert await flow.enqueue(q, 1, dedup_key="d", delay=5)  # delayed + dedup
        assert await flow.enqueue(q, 1, dedup_key="d", delay=5) is None
        assert await flow.enqueue_priority(pq, 1, priority=3, dedup_key="a")
        assert await flow.enqueue_priority(pq, 1, priority=3, dedup_key="a") is None
        assert await flow.enqueue_priority(pq, 1, delay=5, dedup_key="d")
        assert await flow.enqueue_priority(pq, 1, delay=5, dedup_key="d") is None
        assert await flow.append(s, 1, dedup_key="a")
        assert await flow.append(s, 1, dedup_key="a") is None
        assert await flow.publish(ch, 1, dedup_key="a") == 0
        assert await flow.publish(ch, 1, dedup_key="a") is None
        assert (await r.llen(q), await r.zcard(pq), await r.xlen(s)) == (1, 1, 1)
        assert await r.zcard(flow.keys(q).delayed) == 1
        assert await r.zcard(flow.keys(pq).delayed) == 1
        await anyio.sleep(0.4)
        assert await flow.enqueue(q, 1, dedup_key="a", dedup_ttl=0.3)
        assert await r.llen(q) == 2
    finally:
        await flow.aclose()


# -- consumer-side idempotency ---------------------------------------------------------------


async def test_idempotency_key_handles_each_key_once(url: str, ns: str) -> None:
    """Duplicates (same key) delivered to 8 concurrent workers: each key handled once, the
    rest skipped; a key whose first copy failed is handled by its retry."""
    q = f"{ns}:q"
    flow = make_flow(url, ns)
    calls: Counter[str] = Counter()
    failed_once: set[str] = set()

    @flow.on_queue(q, concurrency=8, idempotency_key=lambda e: e.entity_id, retry_delay=0.05)
    async def handle(e: Event) -> None:
        calls[e.entity_id] += 1
        await anyio.sleep(0.01)
        if e.entity_id == "flaky" and e.entity_id not in failed_once:
            failed_once.add(e.entity_id)
            raise RuntimeError("first try fails")

    items = [Event(event_type="x", entity_id=f"e{i % 10}", n=i) for i in range(60)]
    items.append(Event(event_type="x", entity_id="flaky"))
    async with flow:
        await flow.enqueue_many(q, items)
        await eventually(lambda: len(calls) == 11, what="every key handled")
        consumer = flow.consumers[0]
        await eventually(lambda: consumer.stats.skipped == 50, what="duplicates skipped")
    assert all(n == 1 for k, n in calls.items() if k != "flaky"), calls
    assert calls["flaky"] == 2  # failed, claim dropped, retried, done


async def test_idempotency_claim_of_a_dead_worker_expires(
    url: str, ns: str, r: aioredis.Redis
) -> None:
    """A worker that died mid-handler leaves a claim, not a done mark: the redelivered copy
    waits until the claim expires, then runs."""
    q = f"{ns}:q"
    flow = make_flow(url, ns)
    handled: list[str] = []

    @flow.on_queue(q, idempotency_key=lambda e: e.entity_id)
    async def handle(e: Event) -> None:
        handled.append(e.entity_id)

    record = flow.keys(q).done("u1")
    await r.set(record, "dead-worker:0", px=1500)  # the claim a killed worker left
    async with flow:
        await flow.enqueue(q, Event(event_type="x", entity_id="u1"))
        await anyio.sleep(0.8)
        assert handled == []  # deferred, not skipped
        assert flow.consumers[0].stats.skipped == 0
        await eventually(lambda: handled == ["u1"], what="handled after the claim expired")
        await eventually(lambda: r.get(record), what="done mark")
        assert await r.get(record) == b"done"
        assert 0 < await r.pttl(record) <= 86_400_000


async def test_cancelled_handler_does_not_mark_its_key_done(
    url: str, ns: str, r: aioredis.Redis
) -> None:
    """A handler cancelled at shutdown leaves its key claimed (expiring), never done; the
    next worker handles the message once the claim is gone."""
    q = f"{ns}:q"
    first = make_flow(url, ns, grace_period=0.1)
    started = anyio.Event()

    @first.on_queue(q, idempotency_key=lambda e: e.entity_id)
    async def hang(e: Event) -> None:
        started.set()
        await anyio.sleep(60)

    async with first:
        await first.enqueue(q, Event(event_type="x", entity_id="u2"))
        await started.wait()
    assert await r.get(first.keys(q).done("u2")) != b"done"

    second = make_flow(url, ns)
    handled: list[str] = []

    @second.on_queue(q, idempotency_key=lambda e: e.entity_id)
    async def handle(e: Event) -> None:
        handled.append(e.entity_id)

    async with second:
        await eventually(lambda: handled == ["u2"], within=15, what="handled by the successor")


# -- status tracking --------------------------------------------------------------------------


async def test_status_records_follow_each_message(url: str, ns: str) -> None:
    """With track=True a message goes published -> processing -> completed; a failing one
    ends dead with its error; counters are kept per handler without scanning keys."""
    q = f"{ns}:q"
    flow = make_flow(url, ns, track=True)
    seen: list[str] = []

    @flow.on_queue(q, max_attempts=2, retry_delay=0.05)
    async def handle(e: Event, msg: Message[Event]) -> None:
        seen.append(msg.id)
        if e.entity_id == "bad":
            raise ValueError("cannot bill bad")

    async with flow:
        ok = await flow.enqueue(q, Event(event_type="x", entity_id="good"))
        bad = await flow.enqueue(q, Event(event_type="x", entity_id="bad"))
        assert ok and bad

        async def final(msg_id: str, status: str) -> bool:
            record = await flow.status(msg_id)
            return record is not None and record.status == status

        await eventually(lambda: final(ok, "completed"), what="completed")
        await eventually(lambda: final(bad, "dead"), what="dead")
        done, dead = await flow.status(ok), await flow.status(bad)
        assert done is not None and dead is not None
        assert done.handler == handle.__qualname__ and done.attempts == 1
        assert done.created_at is not None and done.updated_at is not None
        assert done.created_at <= done.updated_at
        assert dead.attempts == 2 and dead.error and "cannot bill bad" in dead.error
        assert await flow.status("no-such-id") is None
        counts = await flow.status_counts(q)
    name = handle.__qualname__
    assert counts["published"] == 2
    assert counts[f"{name}:processing"] == 3  # good once, bad twice
    assert counts[f"{name}:completed"] == 1
    assert counts[f"{name}:failed"] == 1 and counts[f"{name}:dead"] == 1


async def test_failing_status_writes_never_repeat_or_block_a_verdict(
    url: str, ns: str, r: aioredis.Redis
) -> None:
    """Status records are best effort: when writing one fails (here a foreign key of the
    wrong type sits at the record's key), the message is still handled or dead-lettered
    exactly once and the worker goes on."""
    q = f"{ns}:q"
    flow = make_flow(url, ns, track=True)
    calls: Counter[int] = Counter()

    @flow.on_queue(q, max_attempts=1)
    async def handle(n: int) -> None:
        calls[n] += 1
        if n == 1:
            raise ValueError("no")

    raw = b"1"  # a foreign item: its id is the hash of its bytes
    await r.set(status_key(ns, content_id(raw)), "not a hash")
    async with flow:
        await r.rpush(q, raw)
        await flow.enqueue(q, 2)
        await flow.wait_idle()
        dead = await flow.dlq(q).list()
    assert calls == {1: 1, 2: 1}
    assert len(dead) == 1 and "no" in dead[0].error


async def test_stream_entries_are_tracked_by_entry_id(url: str, ns: str) -> None:
    """A tracked stream entry's status is found by its entry id."""
    s = f"{ns}:s"
    flow = make_flow(url, ns, track=True)
    got: list[str] = []

    @flow.on_stream(s, group="g")
    async def handle(e: Event, msg: Message[Event]) -> None:
        got.append(msg.id)

    async with flow:
        entry_id = await flow.append(s, Event(event_type="x", entity_id="a"))
        assert entry_id is not None
        await eventually(lambda: got == [entry_id])

        async def completed() -> bool:
            record = await flow.status(entry_id)
            return record is not None and record.status == "completed"

        await eventually(completed, what="stream entry completed")


# -- priority statistics ----------------------------------------------------------------------


async def test_priority_stats_counts_each_level_exactly(url: str, ns: str) -> None:
    """Counts per level are exact for any level and any age (the tutorial's score ranges
    mix levels)."""
    pq = f"{ns}:pq"
    flow = make_flow(url, ns)
    try:
        plan = {0: 3, 1: 5, 7: 1, 8191: 2}
        for level, n in plan.items():
            await flow.enqueue_priority_many(pq, list(range(n)), priority=level)
        await flow.enqueue_priority(pq, "late", priority=1)
        assert await flow.priority_stats(pq) == {0: 3, 1: 6, 7: 1, 8191: 2}
        assert await flow.priority_stats(f"{ns}:empty") == {}
    finally:
        await flow.aclose()


# -- stream indexes ---------------------------------------------------------------------------


async def test_find_returns_indexed_entries_in_stream_order(
    url: str, ns: str, r: aioredis.Redis
) -> None:
    """append(index=...) records each entry under its field values atomically; find
    returns matches in stream order in one call, intersects criteria, honours limit and
    newest_first, and drops index entries whose stream entries were trimmed."""
    s = f"{ns}:events"
    flow = make_flow(url, ns)
    try:
        ids = []
        for i in range(30):
            event = Event(event_type="login" if i % 2 else "order", entity_id=f"u{i % 3}", n=i)
            ids.append(await flow.append(s, event, index=("event_type", "entity_id")))
        u1 = await flow.find(s, entity_id="u1", model=Event)
        assert [e.n for _, e in u1] == [i for i in range(30) if i % 3 == 1]
        assert [eid for eid, _ in u1] == [ids[i] for i in range(30) if i % 3 == 1]
        both = await flow.find(s, entity_id="u1", event_type="login", model=Event)
        assert [e.n for _, e in both] == [i for i in range(30) if i % 3 == 1 and i % 2]
        newest = await flow.find(s, entity_id="u1", limit=2, newest_first=True)
        assert [p["n"] for _, p in newest] == [28, 25]
        await r.xtrim(s, maxlen=10, approximate=False)  # exact trim: entries 0..19 are gone
        after = await flow.find(s, entity_id="u1", model=Event)
        assert [e.n for _, e in after] == [i for i in range(20, 30) if i % 3 == 1]
        index_key = flow.keys(s).index("entity_id", "u1")
        assert await r.scard(index_key) == len(after)  # cleaned, not just filtered
        other = flow.keys(s).index("entity_id", "u2")
        assert await r.scard(other) == 10  # not searched yet: stale ids remain...
        # ...until pruned: 20 trimmed ids in each event_type set (10 + 10), 7 in u0, 6 in u2
        assert await flow.prune_indexes(s) == 33
        assert await r.scard(other) == 4
        with pytest.raises(ConfigError):
            await flow.find(s)
        with pytest.raises(ConfigError):
            await flow.append(s, {"entity_id": "u1"}, index=("missing",))
    finally:
        await flow.aclose()


# -- fast path + reliable path, notified queues -------------------------------------------------


async def test_durable_publish_reaches_live_and_offline_consumers(url: str, ns: str) -> None:
    """publish(durable=stream) sends on the channel and appends to the stream in one step:
    a channel handler gets it at once, a stream group started later still gets it."""
    ch, s = f"{ns}:ch", f"{ns}:s"
    live = make_flow(url, ns)
    fast: list[int] = []

    @live.on_channel(ch)
    async def on_fast(e: Event) -> None:
        fast.append(e.n)

    async with live:
        assert await live.publish(ch, Event(event_type="t", entity_id="a", n=1), durable=s) == 1
        await eventually(lambda: fast == [1])
    later = make_flow(url, ns)
    slow: list[int] = []

    @later.on_stream(s, group="audit")
    async def on_reliable(e: Event) -> None:
        slow.append(e.n)

    async with later:
        await eventually(lambda: slow == [1], what="stream consumer got the durable copy")


async def test_durable_publish_trims_its_stream(url: str, ns: str) -> None:
    """publish(durable=..., maxlen=N) keeps the durable stream near N entries (approximate
    trimming: whole stream nodes of 100 entries); maxlen without durable is a ConfigError."""
    ch, s = f"{ns}:ch", f"{ns}:s"
    flow = make_flow(url, ns)
    r = aioredis.Redis.from_url(url)
    try:
        for n in range(500):
            await flow.publish(ch, {"n": n}, durable=s, maxlen=10)
        length = await r.xlen(s)
        assert 10 <= length <= 110, length
        last = await r.xrevrange(s, count=1)
        assert orjson.loads(last[0][1][b"data"]) == {"n": 499}
        with pytest.raises(ConfigError, match="durable"):
            await flow.publish(ch, {"n": 0}, maxlen=10)
    finally:
        await flow.aclose()
        await r.aclose()


async def test_notified_queue_is_handled_once_and_notifies(url: str, ns: str) -> None:
    """enqueue(notify=channel) pushes and publishes atomically: listeners hear of every
    message, and the queue (the single source of truth) handles each exactly once."""
    q, ch = f"{ns}:q", f"{ns}:new"
    flow = make_flow(url, ns)
    handled: Counter[int] = Counter()
    heard: list[int] = []

    @flow.on_queue(q, concurrency=4)
    async def work(e: Event) -> None:
        handled[e.n] += 1

    @flow.on_channel(ch)
    async def listen(e: Event) -> None:
        heard.append(e.n)

    async with flow:
        for i in range(20):
            await flow.enqueue(q, Event(event_type="t", entity_id="a", n=i), notify=ch)
        await flow.enqueue_many(
            q, [Event(event_type="t", entity_id="b", n=i) for i in range(20, 25)], notify=ch
        )
        await eventually(lambda: len(handled) == 25 and len(heard) == 25)
    assert set(handled.values()) == {1}
    assert sorted(heard) == list(range(25))


# -- rate-limited delivery ----------------------------------------------------------------------


async def test_rate_limit_bounds_starts_per_key_in_any_window(url: str, ns: str) -> None:
    """At most 3 handler starts per URL in any 1 s window, across two flows (workers); a
    throttled URL does not hold back another; nothing is lost or retried as a failure."""
    q = f"{ns}:hooks"
    starts: dict[str, list[float]] = defaultdict(list)
    flows = [make_flow(url, ns), make_flow(url, ns)]
    limit = RateLimit(3, per=1.0, key=lambda h: h.url)
    for flow in flows:

        @flow.on_queue(q, concurrency=8, rate_limit=limit)
        async def call(h: Hook) -> None:
            starts[h.url].append(time.monotonic())

    async with flows[0], flows[1]:
        hooks = [Hook(url="a", n=i) for i in range(9)] + [Hook(url="b", n=i) for i in range(3)]
        await flows[0].enqueue_many(q, hooks)
        await eventually(lambda: len(starts["b"]) == 3, within=1.0, what="b not held back by a")
        await eventually(lambda: len(starts["a"]) == 9, within=15, what="all of a delivered")
        consumers = [c for flow in flows for c in flow.consumers]
    times = sorted(starts["a"])
    # Redis decides with its own clock; allow scheduling slack on this side.
    assert all(times[i + 3] - times[i] > 1.0 - 0.05 for i in range(len(times) - 3)), times
    assert sum(c.stats.retried for c in consumers) == 0
    assert sum(c.stats.dead for c in consumers) == 0
    deferred = sum(c.stats.deferred for c in consumers)
    assert deferred < 60  # each wait is slept in Redis's delayed set, never polled


async def test_flow_limiter_in_a_handler(url: str, ns: str) -> None:
    """flow.limiter(...) is usable directly: acquire() waits for a slot."""
    flow = make_flow(url, ns)
    limiter = flow.limiter("api", RateLimit(2, per=0.5))
    try:
        t0 = time.monotonic()
        for _ in range(4):
            async with limiter.acquire("k"):
                pass
        assert time.monotonic() - t0 >= 0.45  # the 3rd had to wait for the window
    finally:
        await flow.aclose()


# -- memory and retention -------------------------------------------------------------------------


async def test_memory_reports_every_managed_key(url: str, ns: str) -> None:
    """memory() reports used memory and each queue, stream, dead-letter stream and index."""
    q, s = f"{ns}:q", f"{ns}:s"
    flow = make_flow(url, ns)

    @flow.on_queue(q)
    async def handle(n: int) -> None:
        pass

    try:
        await flow.enqueue_many(q, [1, 2, 3])
        await flow.append(s, {"entity_id": "u"}, index=("entity_id",), minid="0-1")
        await flow.redis.xadd(flow.keys(q).dead, {"data": b"x"})
        report = await flow.memory(s)
        keys = report["keys"]
        assert report["used_memory"] > 0
        assert keys[q]["type"] == "list" and keys[q]["length"] == 3 and keys[q]["bytes"] > 0
        assert keys[s]["type"] == "stream" and keys[s]["length"] == 1
        assert keys[flow.keys(q).dead]["length"] == 1
        assert keys[flow.keys(s).index("entity_id", "u")]["length"] == 1
        with pytest.raises(ConfigError):
            await flow.append(s, 1, maxlen=5, minid="0-1")
    finally:
        await flow.aclose()


# -- auto-pipelined producers -------------------------------------------------------------------


async def test_concurrent_producers_share_round_trips_and_keep_errors_apart(
    url: str, ns: str, r: aioredis.Redis
) -> None:
    """1,000 tasks enqueueing at once: every message arrives with a unique id; a call that
    fails (a key of the wrong type) fails alone, in the middle of a shared pipeline."""
    q, wrong = f"{ns}:q", f"{ns}:wrong"
    await r.set(wrong, "not a list")
    flow = make_flow(url, ns)
    ids: list[str | None] = []
    errors: list[BaseException] = []

    async def produce(i: int) -> None:
        for j in range(5):
            ids.append(await flow.enqueue(q, {"i": i, "j": j}))
        if i == 500:
            try:
                await flow.enqueue(wrong, {"i": i})
            except ResponseError as exc:
                errors.append(exc)

    try:
        async with anyio.create_task_group() as tg:
            for i in range(1000):
                tg.start_soon(produce, i)
    finally:
        await flow.aclose()
    assert len(ids) == 5000 and len(set(ids)) == 5000
    assert await r.llen(q) == 5000
    assert len(errors) == 1 and "WRONGTYPE" in str(errors[0])
