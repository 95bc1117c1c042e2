"""Pub/Sub channels: readiness, exact and pattern subscriptions, one shared connection,
dead letters, resubscription after a reconnect, and bounded buffers that drop and count."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import pytest
import redis.asyncio as aioredis
from pydantic import BaseModel

from redisflow import Flow, Message
from redisflow.consumers import Consumer
from tests.support.flows import eventually, make_flow

pytestmark = pytest.mark.anyio


class Order(BaseModel):
    id: int


async def subscribers(r: aioredis.Redis) -> list[dict[str, str]]:
    """Pub/Sub connections that hold at least one channel or pattern subscription."""
    clients = await r.client_list(_type="pubsub")
    return [c for c in clients if int(c.get("sub", 0)) + int(c.get("psub", 0)) > 0]


def consumer_of(flow: Flow, name: str) -> Consumer:
    (consumer,) = [c for c in flow.consumers if c.handler.source.name == name]
    return consumer


async def test_publish_right_after_start_is_received(url: str, ns: str) -> None:
    """``async with flow`` returns only once subscribed: an immediate publish is received."""
    got: list[Order] = []
    flow = make_flow(url, ns)
    ch = f"{ns}.orders"

    @flow.on_channel(ch)
    async def handle(order: Order) -> None:
        got.append(order)

    async with flow:
        receivers = await flow.publish(ch, {"id": 1})
        assert receivers >= 1
        await eventually(lambda: got)
    assert got == [Order(id=1)]


async def test_exact_and_pattern_handlers_both_receive(url: str, ns: str) -> None:
    """An exact channel handler and a glob-pattern handler both get a matching message;
    a name without glob characters is subscribed exactly."""
    exact: list[tuple[int, str]] = []
    pattern: list[tuple[int, str]] = []
    plain: list[int] = []
    flow = make_flow(url, ns)

    @flow.on_channel(f"{ns}.orders.created")
    async def on_created(order: Order, msg: Message[Order]) -> None:
        exact.append((order.id, msg.headers["channel"]))

    @flow.on_channel(f"{ns}.orders.*")
    async def on_any(order: Order, msg: Message[Order]) -> None:
        pattern.append((order.id, msg.headers["channel"]))

    @flow.on_channel(f"{ns}.orders")
    async def on_plain(order: Order) -> None:
        plain.append(order.id)

    async with flow:
        assert await flow.publish(f"{ns}.orders.created", {"id": 1}) == 2
        assert await flow.publish(f"{ns}.orders.shipped", {"id": 2}) == 1
        assert await flow.publish(f"{ns}.orders", {"id": 3}) == 1
        await eventually(lambda: len(exact) == 1 and len(pattern) == 2 and len(plain) == 1)
        # "{ns}.orders" is exact: it must not have matched "{ns}.orders.created" as a prefix
        numpat = await flow.redis.pubsub_numpat()
        channels = {c.decode() for c in await flow.redis.pubsub_channels(f"{ns}.*")}
    assert exact == [(1, f"{ns}.orders.created")]
    assert sorted(pattern) == [(1, f"{ns}.orders.created"), (2, f"{ns}.orders.shipped")]
    assert plain == [3]
    assert channels == {f"{ns}.orders.created", f"{ns}.orders"}
    assert numpat >= 1


async def test_channel_handlers_share_one_pubsub_connection(
    url: str, ns: str, r: aioredis.Redis
) -> None:
    """Several channel handlers of one flow use exactly one Pub/Sub connection."""
    flow = make_flow(url, ns)
    got: list[str] = []

    for i in range(3):
        flow.add_handler("channel", f"{ns}.c{i}", _recorder(got, f"c{i}"))
    for i in range(2):
        flow.add_handler("channel", f"{ns}.p{i}.*", _recorder(got, f"p{i}"))

    before = await subscribers(r)
    async with flow:
        after = await subscribers(r)
        new = [c for c in after if c["id"] not in {b["id"] for b in before}]
        assert len(new) == 1, new
        assert int(new[0]["sub"]) == 3
        assert int(new[0]["psub"]) == 2
        for i in range(3):
            await flow.publish(f"{ns}.c{i}", "x")
        for i in range(2):
            await flow.publish(f"{ns}.p{i}.y", "x")
        await eventually(lambda: len(got) == 5)
    assert sorted(got) == ["c0", "c1", "c2", "p0", "p1"]
    # and the connection is gone after the stop
    await eventually(lambda: _count_is(r, len(before)))


def _recorder(got: list[str], tag: str) -> Callable[[str], Awaitable[None]]:
    async def record(data: str) -> None:
        got.append(tag)

    record.__qualname__ = f"record_{tag}"
    return record


async def _count_is(r: aioredis.Redis, n: int) -> bool:
    return len(await subscribers(r)) == n


async def test_invalid_channel_payload_is_dead_lettered(
    url: str, ns: str, r: aioredis.Redis
) -> None:
    """A channel message that does not validate goes to that channel's dead letters."""
    got: list[Order] = []
    flow = make_flow(url, ns)
    ch = f"{ns}.orders"

    @flow.on_channel(ch)
    async def handle(order: Order) -> None:
        got.append(order)

    async with flow:
        await r.publish(ch, b"not json")
        await r.publish(ch, b'{"id": "abc"}')
        await flow.publish(ch, {"id": 7})
        await eventually(lambda: got)
        await eventually(lambda: _xlen_is(r, flow.keys(ch).dead, 2))
        dead = await flow.dlq(ch).list()
    assert got == [Order(id=7)]
    assert [d.data.decode("utf-8", "replace") for d in dead] == ["not json", '{"id": "abc"}']
    for d in dead:
        assert d.channel == ch
        assert d.handler == handle.__qualname__
        assert d.error


async def _xlen_is(r: aioredis.Redis, key: str, n: int) -> bool:
    return int(await r.xlen(key)) == n


async def test_resubscribes_after_connection_killed(url: str, ns: str, r: aioredis.Redis) -> None:
    """After CLIENT KILL TYPE pubsub the hub reconnects and subscribes again."""
    got: list[int] = []
    flow = make_flow(url, ns)
    ch = f"{ns}.orders"
    pat = f"{ns}.events.*"

    @flow.on_channel(ch)
    async def handle(order: Order) -> None:
        got.append(order.id)

    pgot: list[int] = []

    @flow.on_channel(pat)
    async def handle_pattern(order: Order) -> None:
        pgot.append(order.id)

    async with flow:
        await flow.publish(ch, {"id": 1})
        await eventually(lambda: got == [1])
        killed = await r.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        assert int(killed) >= 1
        with anyio.fail_after(10):
            n = 1
            while not (got and got[-1] >= 2 and pgot):
                n += 1
                await flow.publish(ch, {"id": n})
                await flow.publish(f"{ns}.events.x", {"id": n})
                await anyio.sleep(0.05)
        assert len(await subscribers(r)) >= 1
    assert got[0] == 1 and got[-1] >= 2
    assert got == sorted(got)


async def test_slow_handler_drops_and_counts_excess(url: str, ns: str) -> None:
    """With a small channel_buffer, messages beyond it are dropped and counted; the flow
    keeps going and later messages are handled."""
    got: list[int] = []
    flow = make_flow(url, ns, channel_buffer=2)
    ch = f"{ns}.orders"

    @flow.on_channel(ch, concurrency=1)
    async def slow(order: Order) -> None:
        await anyio.sleep(0.1)
        got.append(order.id)

    total = 200
    async with flow:
        consumer = consumer_of(flow, ch)
        assert await flow.publish_many(ch, ({"id": i} for i in range(total))) == total
        await eventually(lambda: consumer.stats.dropped > 0)
        # every message is either handled or counted as dropped
        await eventually(lambda: len(got) + consumer.stats.dropped == total)
        assert consumer.stats.dropped >= total - 10
        assert consumer.stats.processed == len(got)
        assert await flow.publish(ch, {"id": 10_000}) == 1
        await eventually(lambda: got and got[-1] == 10_000)
    assert got == sorted(got)
    assert 1 <= len(got) - 1 <= 10
