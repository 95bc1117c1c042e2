"""Promises that must hold on the error path and under concurrent callers: a compound send is
both or neither, each dead letter goes back exactly once, ``find`` keeps a strict order, a
duplicate waits about as long as its twin, two confusable names never share keys, and a
dropped connection neither duplicates nor strands messages."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
from pydantic import BaseModel

from redisflow import ConfigError, Flow, Message, ReplyError
from redisflow.keys import Keys
from tests.support.flows import eventually, make_flow
from tests.support.kinds import Kind, by_kind

pytestmark = pytest.mark.anyio


class Event(BaseModel):
    n: int
    kind: str = "x"


# -- both or neither --------------------------------------------------------------------------


async def test_durable_publish_is_both_or_neither(url: str, ns: str, r: aioredis.Redis) -> None:
    """A durable publish that cannot write its stream copy publishes nothing: a bad ``minid``
    is refused before any write, a durable key of the wrong type before the PUBLISH."""
    flow = make_flow(url, ns)
    channel, durable = f"{ns}.live", f"{ns}:events"
    pubsub = r.pubsub()
    await pubsub.subscribe(channel)
    await pubsub.get_message(timeout=1)  # the subscribe confirmation
    try:
        with pytest.raises(ConfigError, match="minid"):
            await flow.publish(channel, Event(n=1), durable=durable, minid="not-an-id")
        await r.set(durable, "a string")
        with pytest.raises(ReplyError, match="WRONGTYPE"):
            await flow.publish(channel, Event(n=2), durable=durable, dedup_key="k")
        assert await pubsub.get_message(timeout=0.5) is None, "a subscriber got it anyway"
        await r.delete(durable)
        # The dedup key was not set by the failed call: the same send goes through now.
        assert await flow.publish(channel, Event(n=3), durable=durable, dedup_key="k") == 1
        got = await pubsub.get_message(timeout=2)
        assert got is not None and b'"n":3' in got["data"]
        assert await r.xlen(durable) == 1
    finally:
        await pubsub.aclose()
        await flow.aclose()


@pytest.mark.parametrize("what", ["enqueue", "notify", "priority", "index", "delay"])
async def test_a_failed_compound_send_leaves_nothing(
    what: str, url: str, ns: str, r: aioredis.Redis
) -> None:
    """Every compound send checks the types of its keys before its first write: a key of the
    wrong type fails the call and leaves no dedup marker, sequence step or index entry."""
    flow = make_flow(url, ns)
    q = f"{ns}:q"
    keys = Keys(ns, q)
    await r.set(q if what != "delay" else keys.delayed, "in the way")
    before = set(await r.keys(f"{ns}*"))
    send: Any = {
        "enqueue": lambda: flow.enqueue(q, 1, dedup_key="d"),
        "notify": lambda: flow.enqueue(q, 1, notify=f"{ns}.new"),
        "priority": lambda: flow.enqueue_priority(q, 1, dedup_key="d"),
        "index": lambda: flow.append(q, {"a": "b"}, index=["a"], dedup_key="d"),
        "delay": lambda: flow.enqueue(q, 1, delay=10, dedup_key="d"),
    }[what]
    try:
        with pytest.raises(ReplyError, match="WRONGTYPE"):
            await send()
        assert set(await r.keys(f"{ns}*")) == before
    finally:
        await flow.aclose()


# -- dead letters go back exactly once ------------------------------------------------------


@by_kind([Kind("queue"), Kind("priority"), Kind("stream")])
async def test_concurrent_replays_send_each_dead_letter_back_once(
    kind: Kind, url: str, ns: str, r: aioredis.Redis
) -> None:
    """Three replays of the same 300 dead letters at once: each letter is pushed back once,
    and the counts returned add up to 300; two concurrent purges likewise."""
    flow = make_flow(url, ns)
    name = kind.name(ns)
    dead = flow.keys(name).dead
    for n in range(300):
        await r.xadd(dead, {"data": b"%d" % n, "message_id": f"m{n}", "failed_at": b"1"})
    try:
        counts: list[int] = []

        async def replay() -> None:
            counts.append(await flow.dlq(name, kind.kind).replay())

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(replay)
        assert sum(counts) == 300, counts
        assert await kind.held(r, flow, name) == 300 and await r.xlen(dead) == 0
        for n in range(100):
            await r.xadd(dead, {"data": b"%d" % n})
        purged: list[int] = []

        async def purge() -> None:
            purged.append(await flow.dlq(name, kind.kind).purge(limit=None, older_than=None))

        async with anyio.create_task_group() as tg:
            for _ in range(2):
                tg.start_soon(purge)
        assert sum(purged) == 100, purged
    finally:
        await flow.aclose()


# -- find keeps a strict order ----------------------------------------------------------------


async def test_find_newest_first_is_the_exact_reverse(url: str, ns: str) -> None:
    """Entries appended within the same millisecond (ids that differ only in their sequence)
    come back in exact reverse order with ``newest_first``, and ``limit`` keeps the newest."""
    flow = make_flow(url, ns)
    s = f"{ns}:s"
    try:
        ids = [await flow.append(s, Event(n=n), index=["kind"]) for n in range(60)]
        oldest = await flow.find(s, kind="x", limit=100)
        newest = await flow.find(s, kind="x", limit=100, newest_first=True)
        top = await flow.find(s, kind="x", limit=5, newest_first=True)
    finally:
        await flow.aclose()
    assert [i for i, _ in oldest] == ids
    assert [i for i, _ in newest] == ids[::-1]
    assert [e["n"] for _, e in top] == [59, 58, 57, 56, 55]


# -- a duplicate waits about as long as its twin ------------------------------------------------


async def test_a_duplicate_of_a_short_job_is_rechecked_soon(url: str, ns: str) -> None:
    """With ``idempotency_key``, a copy that arrives while its twin is being handled (0.3 s)
    is deferred and looked at again shortly after the twin finished, not after the claim
    could have expired (30 s here): it is then skipped as done."""
    flow = make_flow(url, ns, lease=15)
    q = f"{ns}:q"
    runs: list[float] = []

    @flow.on_queue(q, idempotency_key=lambda e: str(e.n), concurrency=4)
    async def handle(e: Event) -> None:
        runs.append(time.monotonic())
        await anyio.sleep(0.3)

    async with flow:
        began = time.monotonic()
        await flow.enqueue_many(q, [Event(n=1), Event(n=1)])
        await eventually(lambda: flow.consumers[0].stats.skipped == 1, within=5)
        took = time.monotonic() - began
    assert len(runs) == 1 and flow.consumers[0].stats.deferred >= 1
    assert took < 2.0, f"the duplicate waited {took:.1f}s"


# -- two confusable names never share keys ----------------------------------------------------


async def test_confusable_names_keep_their_messages_apart(url: str, ns: str) -> None:
    """Queues ``<x>`` and ``{<x>}`` in one app, every message retried twice: each message runs
    only in its own queue's handler (they shared delayed sets and dead letters before)."""
    flow = make_flow(url, ns)
    plain, tagged = f"{ns}jobs", f"{{{ns}jobs}}"
    assert not set(_all_keys(Keys(ns, plain))) & set(_all_keys(Keys(ns, tagged)))
    seen: dict[str, list[int]] = {plain: [], tagged: []}

    def handler(name: str) -> Any:
        async def handle(e: Event, msg: Message[Event]) -> None:
            seen[name].append(e.n)
            if msg.attempt < 3:
                raise RuntimeError("again")

        handle.__qualname__ = f"handle_{'tagged' if name == tagged else 'plain'}"
        return handle

    flow.on_queue(plain, retry_delay=0.01)(handler(plain))
    flow.on_queue(tagged, retry_delay=0.01)(handler(tagged))
    async with flow:
        await flow.enqueue_many(plain, [Event(n=n) for n in range(100)])
        await flow.enqueue_many(tagged, [Event(n=n) for n in range(100, 200)])
        await flow.wait_idle(timeout=20)
    assert sorted(seen[plain]) == sorted(list(range(100)) * 3)
    assert sorted(seen[tagged]) == sorted(list(range(100, 200)) * 3)


def _all_keys(keys: Keys) -> list[str]:
    return [
        keys.delayed, keys.dead, keys.seq, keys.wake, keys.leases, keys.batches("w"),
        keys.batch("w", 1), keys.rate("r"), keys.dedup("d"), keys.done("d"),
        keys.index("f", "v"), keys.indexes, keys.counts, keys.stats, keys.inflight,
    ]  # fmt: skip


def test_keys_are_injective_over_tricky_names() -> None:
    """Names with tags, colons and the words of suffixes: no two build the same key."""
    names = ["jobs", "{jobs}", "{jobs}:dedup", "{jobs}:dedup:x", "j", "{j}obs", "a:b", "{a}:b"]
    built = [(name, key) for name in names for key in _all_keys(Keys("rf", name))]
    owners: dict[str, str] = {}
    for name, key in built:
        assert owners.setdefault(key, name) == name, f"{key} built by {name} and {owners[key]}"
    with pytest.raises(ConfigError, match="hash tag"):
        Flow("redis://localhost").on_queue("a}b")(lambda e: None)


# -- a dropped connection neither duplicates nor strands --------------------------------------


@by_kind([Kind("queue"), Kind("priority"), Kind("stream")])
async def test_killed_connections_duplicate_nothing(
    kind: Kind, url: str, ns: str, r: aioredis.Redis
) -> None:
    """``CLIENT KILL TYPE normal`` ten times during a drain of 3,000 messages: every message
    is handled, none twice (acks in flight are not orphans), and nothing stays stuck."""
    flow = make_flow(url, ns)
    name = kind.name(ns)
    handled: list[int] = []

    @kind.on(flow, name, concurrency=8)
    async def handle(e: Event) -> None:
        handled.append(e.n)
        await anyio.sleep(0.001)

    async with flow:
        await kind.produce_many(flow, name, [Event(n=n) for n in range(3000)])
        for _ in range(10):
            await anyio.sleep(0.1)
            await r.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        await eventually(lambda: len(set(handled)) == 3000, within=30, what="all handled")
        await flow.wait_idle(timeout=20)
    duplicated = len(handled) - len(set(handled))
    assert duplicated == 0, f"{duplicated} handled twice"
    assert await kind.held(r, flow, name) == 0


async def test_stream_delivery_counts_only_starts(url: str, ns: str, r: aioredis.Redis) -> None:
    """An entry started once, then six reconnects of its live consumer (which re-reads its
    own pending entries each time), then a stop and a restart under the same name: the
    delivery count says 1 throughout, and the next delivery is attempt 2, not 8."""
    s = f"{ns}:s"
    attempts: list[int] = []
    started = anyio.Event()
    flow = make_flow(url, ns, name="steady", claim_idle=60)

    @flow.on_stream(s, group="g")
    async def slow(e: Event, msg: Message[Event]) -> None:
        attempts.append(msg.attempt)
        started.set()
        await anyio.sleep_forever()  # "crashes" below: never finishes

    await flow.append(s, Event(n=1))
    await flow.start()
    await started.wait()
    for _ in range(6):
        await r.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        await anyio.sleep(0.3)
    pending = await r.xpending_range(s, "g", min="-", max="+", count=10)
    assert [p["times_delivered"] for p in pending] == [1], pending
    assert attempts == [1]  # not started again by the re-reads either
    await flow.stop()
    again = make_flow(url, ns, name="steady", claim_idle=60)
    got: list[int] = []

    @again.on_stream(s, group="g")
    async def fine(e: Event, msg: Message[Event]) -> None:
        got.append(msg.attempt)

    async with again:
        await eventually(lambda: got, what="delivered again")
    assert attempts == [1] and got == [2]
