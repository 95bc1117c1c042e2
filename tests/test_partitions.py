"""Partitioned sources: one logical queue, priority queue or stream over several keys spread
over the slots (and so the masters) of a cluster; proven on a real 3-master cluster."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis
from pydantic import BaseModel

from redisflow import ConfigError, Flow, Message
from redisflow.consumers import Gate
from redisflow.features import partitions
from redisflow.keys import SLOTS, slot
from redisflow.testing.cluster import RedisCluster
from tests.support.flows import eventually, make_flow
from tests.support.kinds import Kind, by_kind

pytestmark = pytest.mark.anyio


class Order(BaseModel):
    customer: str
    n: int


def test_partition_tags_spread_evenly_and_never_collide() -> None:
    """Partition ``i`` of ``P`` lives in the ``i``-th of ``P`` equal slot ranges; keys of
    different layouts differ; the same name and layout give the same keys everywhere."""
    seen: set[str] = set()
    for p in (2, 3, 6, 8, 16, 64):
        keys = partitions.keys("jobs", p)
        for i, key in enumerate(keys):
            assert i * SLOTS // p <= slot(key) < (i + 1) * SLOTS // p, (p, i, key)
        assert not seen & set(keys)
        seen |= set(keys)
    assert partitions.keys("jobs", 1) == ["jobs"]
    assert partitions.keys("jobs", 3) == partitions.keys("jobs", 3)
    with pytest.raises(ConfigError, match="braces"):
        Flow("redis://localhost").on_queue("{t}:jobs", partitions=3)(lambda e: None)
    with pytest.raises(ConfigError, match="partitions"):
        Flow("redis://localhost").on_queue("jobs", partitions=0)(lambda e: None)


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
            layouts._read_at = -1000.0  # read the record again now
            return await layouts.stored(q) == [5]

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
