"""Partitioned sources: one logical queue, priority queue or stream over several keys spread
over the slots (and so the masters) of a cluster; proven on a real 3-master cluster."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
from pydantic import BaseModel

from redisflow import ConfigError, Flow, Message
from redisflow.consumers import Gate
from redisflow.features import partitions
from redisflow.features.partitions import MAX_PARTITIONS, Layout
from redisflow.keys import SLOTS, slot
from redisflow.testing.cluster import RedisCluster
from tests.support.flows import eventually, make_flow
from tests.support.kinds import Kind, by_kind

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def quick_retire(monkeypatch: pytest.MonkeyPatch) -> None:
    """Old layouts retire 1 s after they stop being current (20 s in production: the time
    every producer has to learn the new one)."""
    monkeypatch.setattr(partitions, "RETIRE_AFTER", 1.0)


class Order(BaseModel):
    customer: str
    n: int


def test_partition_tags_spread_evenly_and_never_collide() -> None:
    """Partition ``i`` of ``P`` lives in the middle half of the ``i``-th of ``P`` equal slot
    ranges, the ranges starting at the slot of the source's name; keys of different layouts
    differ; the same name and layout give the same keys everywhere."""
    seen: set[str] = set()
    start = slot("jobs")
    for p in (2, 3, 6, 8, 16, 64, MAX_PARTITIONS):
        keys = partitions.keys("jobs", p)
        for i, key in enumerate(keys):
            offset = (slot(key) - start) % SLOTS - i * SLOTS // p  # in its range, the middle half
            assert SLOTS // (4 * p) <= offset < 3 * SLOTS // (4 * p), (p, i, key)
        assert not seen & set(keys)
        seen |= set(keys)
    assert partitions.keys("jobs", 1) == ["jobs"]
    assert partitions.keys("jobs", 3) == partitions.keys("jobs", 3)
    with pytest.raises(ConfigError, match="braces"):
        Flow("redis://localhost").on_queue("{t}:jobs", partitions=3)(lambda e: None)
    with pytest.raises(ConfigError, match="partitions"):
        Flow("redis://localhost").on_queue("jobs", partitions=0)(lambda e: None)
    with pytest.raises(ConfigError, match="from 1 to 256"):  # 1024 died under ulimit -n 1024
        Flow("redis://localhost").on_queue("jobs", partitions=MAX_PARTITIONS + 1)(lambda e: None)


@by_kind([Kind("queue"), Kind("priority"), Kind("stream")])
async def test_a_partitioned_source_spreads_over_every_master(
    kind: Kind, redisflow_cluster: RedisCluster, ns: str
) -> None:
    """Six partitions on 3 masters: each master owns two; 600 messages produced without a
    key land on every partition and are each handled once; a key keeps its messages in one
    partition, in order."""
    url = redisflow_cluster.seed_url
    name = kind.name(ns)
    owners = {redisflow_cluster.owner(slot(key)).port for key in partitions.keys(name, 6)}
    assert len(owners) == 3, "the partitions should be spread over the 3 masters"
    flow = make_flow(url, ns)
    got: list[tuple[str, int]] = []

    @kind.on(flow, name, partitions=6, concurrency=12)
    async def handle(order: Order) -> None:
        got.append((order.customer, order.n))

    async with flow:
        await kind.produce_many(flow, name, [Order(customer="any", n=n) for n in range(600)])
        for n in range(50):  # one customer: one partition, so its order holds
            await _produce(kind, flow, name, Order(customer="c1", n=n), key="c1")
        await eventually(lambda: len(got) == 650, within=15, what="all handled")
        sizes = await _sizes_by_partition(flow, kind, name)
    assert sorted(n for c, n in got if c == "any") == list(range(600))
    assert [n for c, n in got if c == "c1"] == list(range(50))
    assert sizes == {}, "nothing left in any partition"


async def _produce(kind: Kind, flow: Flow, name: str, data: Any, key: str) -> None:
    if kind.kind == "queue":
        await flow.enqueue(name, data, key=key)
    elif kind.kind == "priority":
        await flow.enqueue_priority(name, data, key=key)
    else:
        await flow.append(name, data, key=key)


async def _sizes_by_partition(flow: Flow, kind: Kind, name: str) -> dict[str, int]:
    """What each partition still holds (waiting, not yet read), non-empty ones only."""
    found: dict[str, int] = {}
    for key in partitions.keys(name, 6):
        if kind.kind == "stream":
            continue  # read and acked entries stay in a stream: checked through held()
        size = await flow.client.send("LLEN" if kind.kind == "queue" else "ZCARD", key)
        if size:
            found[key] = size
    return found


async def test_a_producer_learns_the_layout_from_redis(
    redisflow_cluster: RedisCluster, ns: str
) -> None:
    """A process that only produces, with no handler and no declaration, sends to the
    partitions its consumers recorded (not to a plain key nobody reads)."""
    url = redisflow_cluster.seed_url
    q = f"{ns}:jobs"
    consumer = make_flow(url, ns)
    got: list[int] = []

    @consumer.on_queue(q, partitions=4)
    async def handle(n: int) -> None:
        got.append(n)

    async with consumer:
        producer = Flow(url, prefix=ns)
        try:
            await producer.enqueue_many(q, list(range(40)))
            assert await producer.client.send("EXISTS", q) == 0, "sent to the plain key"
        finally:
            await producer.aclose()
        await eventually(lambda: len(got) == 40, what="all handled")
    assert sorted(got) == list(range(40))


async def test_changing_the_number_of_partitions_loses_nothing(
    redisflow_cluster: RedisCluster, ns: str
) -> None:
    """Messages waiting in the 3 partitions of an old layout (and in the plain key of the
    unpartitioned one before it) are all handled by consumers started with 5; once the old
    layouts are empty they leave the record, and producers use the new one."""
    url = redisflow_cluster.seed_url
    q = f"{ns}:jobs"
    async with make_flow(url, ns) as plain:
        await plain.enqueue_many(q, list(range(0, 100)))  # unpartitioned
    three = make_flow(url, ns)
    three.partitions(q, 3)
    await three.client.layouts.register(q, 3)
    await three.enqueue_many(q, list(range(100, 400)))
    await three.aclose()
    five = make_flow(url, ns)
    got: list[int] = []

    @five.on_queue(q, partitions=5)
    async def handle(n: int) -> None:
        got.append(n)

    async with five:
        await eventually(lambda: len(got) == 400, within=15, what="old layouts drained")
        layouts = five.client.layouts

        async def retired() -> bool:
            return (await layouts.fresh(q)).used == (Layout(5),)

        await eventually(retired, within=15, what="the old layouts dropped")
    assert sorted(got) == list(range(400))


async def test_dead_letters_stats_and_reads_span_the_partitions(
    redisflow_cluster: RedisCluster, ns: str, r: Any
) -> None:
    """``dlq`` lists and replays the dead letters of every partition, ``priority_stats``
    counts over them, ``find`` merges them in stream order, ``memory`` sees every key."""
    url = redisflow_cluster.seed_url
    q, pq, s = f"{ns}:q", f"{ns}:pq", f"{ns}:s"
    flow = make_flow(url, ns)
    flow.partitions(pq, 3)
    flow.partitions(s, 3)
    failing = True

    @flow.on_queue(q, partitions=3, max_attempts=1)
    async def handle(n: int, msg: Message[int]) -> None:
        if failing:
            raise RuntimeError("no")

    async with flow:
        await flow.enqueue_many(q, list(range(9)))
        await eventually(lambda: _dead(flow, q, 9), what="9 dead letters")
        letters = await flow.dlq(q).list()
        assert len({d.partition for d in letters}) == 3
        # oldest first: in the order they reached the dead letters (entry ids; the clocks
        # of the local nodes are one), not by the handler's failed_at, which precedes it
        order = [tuple(map(int, d.id.split("-"))) for d in letters]
        assert order == sorted(order)
        failing = False
        assert await flow.dlq(q).replay() == 9
        await flow.wait_idle(timeout=10)
    await flow.enqueue_priority_many(pq, list(range(9)), priority=2)
    await flow.enqueue_priority(pq, 99, priority=0)
    assert await flow.priority_stats(pq) == {0: 1, 2: 9}
    ids = [await flow.append(s, {"t": "x", "n": n}, index=["t"]) for n in range(12)]
    found = await flow.find(s, t="x", limit=5, newest_first=True)
    assert [i for i, _ in found] == ids[::-1][:5]
    memory = await flow.memory(pq, s)
    assert {k for k in memory["keys"]} >= set(partitions.keys(pq, 3)) | set(partitions.keys(s, 3))
    await flow.aclose()


async def _dead(flow: Flow, name: str, n: int) -> bool:
    return await flow.dlq(name).count() >= n


async def test_channels_are_sharded_on_a_cluster(redisflow_cluster: RedisCluster, ns: str) -> None:
    """On a cluster, an exact channel handler SSUBSCRIBEs on its channel's shard and
    ``publish`` uses SPUBLISH (its receivers counted exactly); a pattern handler gets what is
    published classically (``sharded=False``)."""
    url = redisflow_cluster.seed_url
    flow = make_flow(url, ns)
    exact: list[int] = []
    pattern: list[int] = []

    @flow.on_channel(f"{ns}.orders")
    async def on_exact(n: int) -> None:
        exact.append(n)

    @flow.on_channel(f"{ns}.*")
    async def on_pattern(n: int) -> None:
        pattern.append(n)

    async with flow:
        assert await flow.publish(f"{ns}.orders", 1) == 1  # SPUBLISH: exactly one receiver
        await flow.publish(f"{ns}.other", 2, sharded=False)
        await eventually(lambda: exact == [1] and pattern == [2], what="both delivered")
        node = redisflow_cluster.owner(slot(f"{ns}.orders"))
        channels = node.call("PUBSUB", "SHARDCHANNELS")
    assert f"{ns}.orders" in channels


async def test_redis_py_client_of_a_flow_on_a_cluster_is_a_cluster_client(
    redisflow_cluster: RedisCluster, ns: str
) -> None:
    flow = make_flow(redisflow_cluster.seed_url, ns)
    try:
        await flow.client.connector.ready()
        assert isinstance(flow.redis, aioredis.RedisCluster)
        for n in range(20):  # keys on every master
            await flow.redis.set(f"{ns}:{n}", n)
        assert await flow.redis.get(f"{ns}:7") == b"7"
    finally:
        await flow.aclose()


async def test_the_shared_gate_keeps_its_slots_through_cancellations() -> None:
    """The gate the partitions of a handler share: a waiter cancelled while it waits, or
    right after it was handed a slot, does not take the slot with it."""
    gate = Gate(1)
    assert gate.take() and not gate.take()
    waiting = [asyncio.ensure_future(gate.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    waiting[0].cancel()  # cancelled while waiting: skipped
    await asyncio.sleep(0)
    gate.release()  # handed to waiting[1]...
    waiting[1].cancel()  # ...which is cancelled before it runs: passes it on
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert waiting[2].done() and not waiting[2].cancelled()
    assert gate.free == 0
    gate.release()
    assert gate.free == 1 and gate.take()


# -- issue 23: tags per source, migrating layouts, a grown P, retiring safely ------------------


def test_ten_sources_of_three_partitions_spread_over_six_masters(
    redis_cluster_factory: Any,
) -> None:
    """The tags start at each source's own slot: ten sources x 3 partitions land on all six
    masters (the first scheme put all thirty keys in the same 3 slots, on 3 masters); the
    figures are docs/scaling.md's."""
    cluster = redis_cluster_factory(masters=6)
    names = [f"source{n}" for n in range(10)]
    per_master: dict[int, int] = {}
    for name in names:
        for key in partitions.keys(name, 3):
            port = cluster.owner(slot(key)).port
            per_master[port] = per_master.get(port, 0) + 1
    first = {cluster.owner(slot(k)).port for n in names for k in Layout(3, False).keys(n)}
    assert len(first) == 3, "the first scheme: every source on the same three masters"
    assert len(per_master) == 6, per_master
    assert len({slot(k) for n in names for k in partitions.keys(n, 3)}) == 30
    assert max(per_master.values()) <= 8, per_master
    for name in names:  # 6 >= 2 x 3 masters: the partitions of a source on 3 of them
        assert len({cluster.owner(slot(k)).port for k in partitions.keys(name, 3)}) == 3


@by_kind([Kind("queue"), Kind("stream")])
async def test_a_layout_of_the_first_tag_scheme_is_drained_once(
    kind: Kind, redisflow_cluster: RedisCluster, ns: str
) -> None:
    """A record written by an earlier version (``[3]``: tags of the first scheme) with
    messages in its keys and in the plain key: consumers of this version (3 partitions,
    the new tags) handle each message exactly once, then retire the old layout."""
    url = redisflow_cluster.seed_url
    name = kind.name(ns)
    old = Layout(3, named=False)
    flow = make_flow(url, ns)
    await flow.client.send("HSET", f"{ns}:partitions", name, "[3]")
    sent = list(range(90))
    for n in sent:
        target = old.key(name, n % 3) if n < 60 else name
        if kind.kind == "queue":
            await flow.client.send("RPUSH", target, str(n))
        else:
            await flow.client.send("XADD", target, "*", "data", str(n))
    got: list[int] = []

    @kind.on(flow, name, partitions=3)
    async def handle(n: int) -> None:
        got.append(n)

    async with flow:
        await flow.enqueue_many(name, [90, 91]) if kind.kind == "queue" else None
        await eventually(lambda: len(got) >= len(sent), within=15, what="drained")
        layouts = flow.client.layouts

        async def retired() -> bool:
            record = await layouts.fresh(name)
            return record.used == (Layout(3),) and old in record.retired

        await eventually(retired, within=15, what="the old layouts retired")
        await flow.wait_idle()
    expected = sent + ([90, 91] if kind.kind == "queue" else [])
    assert sorted(got) == expected, "each message handled once"
    assert not set(Layout(3).keys(name)) & set(old.keys(name))


async def test_a_running_producer_spreads_over_a_grown_number_of_partitions(
    url: str, ns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A producer that learned P=3 from Redis, once the consumers record 6, sends to all
    six at its next read of the record (it kept a round robin over three before)."""
    monkeypatch.setattr(partitions, "LAYOUT_TTL", 0.2)
    q = f"{ns}:jobs"
    producer = make_flow(url, ns)
    consumer = make_flow(url, ns)
    try:
        await consumer.client.layouts.register(q, 3)
        await producer.enqueue_many(q, list(range(30)))
        await consumer.client.layouts.register(q, 6)
        await anyio.sleep(0.3)
        for n in range(600):
            await producer.enqueue(q, n)
        sizes = [await producer.client.send("LLEN", k) for k in partitions.keys(q, 6)]
    finally:
        await producer.aclose()
        await consumer.aclose()
    assert sizes == [100] * 6, sizes


async def test_a_message_written_to_a_retired_layout_is_still_handled(url: str, ns: str) -> None:
    """After 3 -> 5, the old layout retires once drained; a message a stale producer (or
    another client) then writes to an old partition, or to the plain key, is found and
    handled: a retired layout's keys stay watched, and a layout found holding messages is
    read again."""
    q = f"{ns}:jobs"
    three = make_flow(url, ns)
    await three.client.layouts.register(q, 3)
    await three.client.layouts.register(q, 5)  # the consumers below start with 5: 3 is old
    await three.aclose()
    flow = make_flow(url, ns)
    got: list[int] = []

    @flow.on_queue(q, partitions=5)
    async def handle(n: int) -> None:
        got.append(n)

    layouts = flow.client.layouts

    async def retired() -> bool:
        return Layout(3) in (await layouts.fresh(q)).retired

    async with flow:
        await eventually(retired, within=15, what="the old layout retired")
        await flow.client.send("RPUSH", partitions.key(q, 1, 3), "1")  # a frozen producer
        await flow.client.send("RPUSH", q, "2")  # an older producer, or another client
        await eventually(lambda: sorted(got) == [1, 2], within=15, what="stray messages")
        await eventually(retired, within=15, what="retired again")
        assert await flow.client.send("LLEN", partitions.key(q, 1, 3)) == 0
