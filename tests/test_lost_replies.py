"""Connections that break at the worst moment: after Redis ran a fetch but before its
reply arrived, or while an ack is on its way when the flow stops.

The fetch of a queue or priority queue moves messages into a batch list and the fetch of a
stream assigns entries to the consumer, in Redis, before the reply is sent; if the
connection breaks in between, the consumer reconnects without knowing what it was given.
A proxy between the flow and Redis (``CuttingProxy``) breaks the connection exactly there:
it swallows the first reply that carries a marked message, and closes the connection; or
it holds back a chosen command, so that it is still in flight when the flow stops (and
lets it reach Redis after the flow went on). Redis
is real; only the TCP connection is interfered with.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import anyio.abc
import pytest
import redis.asyncio as aioredis

from redisflow import Flow, Message, Retry
from redisflow.protocol import scripts
from tests.support.flows import eventually, make_flow
from tests.support.kinds import RELIABLE, Kind, by_kind
from tests.support.proxy import Proxy
from tests.support.servers import RedisProc

pytestmark = pytest.mark.anyio


class CuttingProxy(Proxy):
    """A TCP proxy in front of Redis that breaks a connection at a chosen moment: the first
    reply from Redis that contains ``marker`` is never delivered, the connection is closed."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__(upstream_port)
        self.marker: bytes | None = None
        self.deliver = False  # True: the reply with ``marker`` is delivered, then the cut
        self.cuts = 0
        self.hold: Callable[[bytes], bool] | None = None
        self.held = 0
        self.let_go: anyio.Event | None = None  # set: the held command goes on to Redis
        self.late = 0  # held commands that went on

    async def pipe(self, client: anyio.abc.SocketStream, server: anyio.abc.SocketStream) -> None:
        async with anyio.create_task_group() as tg:

            async def up() -> None:
                try:
                    async for chunk in client:
                        if self.hold is not None and self.hold(chunk):
                            self.hold = None
                            self.held += 1
                            if self.let_go is None:
                                await anyio.sleep_forever()  # never reaches Redis
                            await self.let_go.wait()  # reaches Redis late
                            await server.send(chunk)
                            self.late += 1
                            continue
                        await server.send(chunk)
                finally:
                    tg.cancel_scope.cancel()

            async def down() -> None:
                try:
                    async for chunk in server:
                        if self.marker is not None and self.marker in chunk:
                            self.marker = None
                            self.cuts += 1
                            if self.deliver:
                                await client.send(chunk)
                            return  # swallow the reply (or not), close both sides
                        await client.send(chunk)
                finally:
                    tg.cancel_scope.cancel()

            tg.start_soon(up)
            tg.start_soon(down)


@pytest.fixture
async def proxy(redis_port: int) -> AsyncIterator[CuttingProxy]:
    """A cutting proxy in front of the session's Redis."""
    proxy = CuttingProxy(redis_port)
    async with anyio.create_task_group() as tg:
        await tg.start(proxy.serve)
        yield proxy
        tg.cancel_scope.cancel()


@pytest.fixture
def redis_port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def proxied(proxy: CuttingProxy, ns: str, **overrides: Any) -> Flow:
    """A flow whose every connection goes through the proxy."""
    return make_flow(f"redis://127.0.0.1:{proxy.port}/0", ns, **overrides)


@by_kind(RELIABLE)
async def test_messages_of_a_lost_fetch_reply_are_delivered(
    kind: Kind, proxy: CuttingProxy, url: str, ns: str, r: aioredis.Redis
) -> None:
    """The messages of a fetch whose reply was lost are delivered while the worker runs
    (they are neither lost nor held until it stops)."""
    await _cut_a_fetch(kind, proxy, url, ns, r, deliver=False)


@by_kind(RELIABLE)
async def test_messages_of_a_fetch_answered_as_the_connection_breaks_are_handled(
    kind: Kind, proxy: CuttingProxy, url: str, ns: str, r: aioredis.Redis
) -> None:
    """A fetch's reply arrives, and the connection breaks before the next fetch is sent
    (here: while the consumer reloads the cancel marks, whose version the reply carried).
    The messages of that reply are handled. A list or priority worker used to send the next
    fetch before queueing them for its handlers: the failed send dropped them, while their
    batch stayed registered as its own, so nothing put them back (and the hand-back at stop
    deleted it)."""
    await _cut_a_fetch(kind, proxy, url, ns, r, deliver=True)


async def _cut_a_fetch(
    kind: Kind, proxy: CuttingProxy, url: str, ns: str, r: aioredis.Redis, deliver: bool
) -> None:
    """Two messages; the connection of the fetch whose reply carries the first is cut,
    that reply swallowed or (``deliver``) delivered first. Both are handled, within 4 s,
    and nothing stays held."""
    name = kind.name(ns)
    async with make_flow(url, ns) as producer:
        await kind.produce_many(producer, name, [{"to": "victim"}, {"to": "next"}])
        if deliver:  # the marks' version changes: the worker awaits a reload after the reply
            await producer.cancel(name, "no-such-message")
    proxy.marker, proxy.deliver = b"victim", deliver
    flow = proxied(proxy, ns)
    got: list[str] = []

    @kind.on(flow, name)
    async def handler(payload: dict[str, str]) -> None:
        got.append(payload["to"])

    async with flow:
        await eventually(lambda: proxy.cuts == 1, what="the cut")
        await eventually(lambda: sorted(got) == ["next", "victim"], within=4, what=f"{got}")
        await eventually(lambda: _settled(kind, r, flow, name), what="nothing left held")
    assert sorted(got) == ["next", "victim"]


@by_kind([Kind("queue"), Kind("stream")])  # a priority consumer waits without a pop
async def test_message_of_a_lost_blocking_reply_is_delivered(
    kind: Kind, proxy: CuttingProxy, url: str, ns: str, r: aioredis.Redis
) -> None:
    """An idle consumer blocked in Redis is given a message, the reply is lost: after the
    reconnect that message is delivered, and the ones after it too."""
    name = kind.name(ns)
    flow = proxied(proxy, ns)
    got: list[str] = []

    @kind.on(flow, name)
    async def handler(payload: dict[str, str]) -> None:
        got.append(payload["to"])

    async with flow, make_flow(url, ns) as producer:
        await anyio.sleep(0.3)  # idle: blocked in BLMOVE / XREADGROUP BLOCK
        proxy.marker = b"victim"
        await kind.produce(producer, name, {"to": "victim"})
        await eventually(lambda: proxy.cuts == 1, what="the cut")
        await kind.produce(producer, name, {"to": "after"})
        await eventually(lambda: "after" in got, what="the message after")
        await eventually(lambda: "victim" in got, within=4, what="the victim delivered")
        await eventually(lambda: _settled(kind, r, flow, name), what="nothing left held")
    assert sorted(got) == ["after", "victim"]


@by_kind(RELIABLE)
async def test_reconnect_does_not_deliver_messages_in_flight_again(
    kind: Kind, private_redis: RedisProc, ns: str
) -> None:
    """Redis drops every connection while handlers run: after the reconnect the consumer
    does not hand the messages it is still working on to a second handler call."""
    flow = make_flow(private_redis.url, ns)
    name = kind.name(ns)
    starts: list[str] = []
    ends: list[str] = []

    @kind.on(flow, name, concurrency=4)
    async def handler(payload: dict[str, str]) -> None:
        starts.append(payload["to"])
        await anyio.sleep(1.0)
        ends.append(payload["to"])

    client = aioredis.Redis.from_url(private_redis.url)
    try:
        async with flow:
            await kind.produce_many(flow, name, [{"to": str(i)} for i in range(4)])
            await eventually(lambda: len(starts) == 4, what="four handlers running")
            assert await client.client_kill_filter(_type="normal", skipme=True) >= 1
            await eventually(lambda: len(ends) == 4, what="the handlers done")
            await anyio.sleep(0.5)  # a second delivery would have started by now
            await eventually(lambda: _settled(kind, client, flow, name), what="all acked")
    finally:
        await client.aclose()
    assert sorted(starts) == ["0", "1", "2", "3"], starts


async def _settled(kind: Kind, r: aioredis.Redis, flow: Flow, name: str) -> bool:
    return await kind.held(r, flow, name) == 0


def is_ack(kind: Kind) -> Callable[[bytes], bool]:
    """Whether a command is a standalone ack: XACK, or the fetch script asking for 0 items."""
    if kind.kind == "stream":
        return lambda chunk: b"XACK" in chunk and b"XREADGROUP" not in chunk
    fetch = scripts.QUEUE_FETCH if kind.kind == "queue" else scripts.PRIORITY_FETCH
    sha = fetch.sha.encode()
    # the ack may share its round trip with other commands (a poll of the cancel marks):
    # look at each command of the chunk
    return lambda chunk: any(
        sha in command and command.endswith(b"$1\r\n0\r\n")
        for command in re.split(rb"(?<=\r\n)(?=\*\d+\r\n\$)", chunk)
    )


@by_kind(RELIABLE)
async def test_ack_in_flight_when_the_flow_stops_is_not_lost(
    kind: Kind, proxy: CuttingProxy, url: str, ns: str, r: aioredis.Redis
) -> None:
    """The flow stops while the ack of handled messages is on its way: after the stop,
    Redis holds nothing of them (nothing is handed back to be handled a second time)."""
    name = kind.name(ns)
    flow = proxied(proxy, ns)
    got: list[str] = []

    @kind.on(flow, name)
    async def handler(payload: dict[str, str]) -> None:
        await anyio.sleep(0.1)  # done once the fetch loop waits in Redis again: then the
        got.append(payload["to"])  # acks go through the pool, not with a fetch

    async with flow, make_flow(url, ns) as producer:
        await anyio.sleep(0.3)
        proxy.hold = is_ack(kind)
        await kind.produce_many(producer, name, [{"to": str(i)} for i in range(3)])
        await eventually(lambda: len(got) == 3, what="the messages handled")
        await eventually(lambda: proxy.held == 1, what="an ack held back")
    assert await kind.held(r, flow, name) == 0, "handled messages were handed back"


async def test_claim_in_flight_when_the_flow_stops_takes_nothing_handed_back(
    proxy: CuttingProxy, url: str, ns: str, r: aioredis.Redis
) -> None:
    """A stream consumer's claim of idle entries is on its way when the flow stops, and
    reaches Redis late: the stop waits for it before handing its entries back. (Were the
    claim cancelled and run after the hand-back, it would take the handed-back entry for
    the stopped consumer, counting one more delivery, and the successor would get it only
    after ``claim_idle``, as attempt 3.)"""
    name = f"{ns}:stream"
    flow = proxied(proxy, ns, name="w1")
    failed: list[int] = []

    @flow.on_stream(name, group="g", max_attempts=5)
    async def failing(msg: Message[dict[str, str]]) -> None:
        failed.append(msg.attempt)
        raise Retry(delay=30)  # waits in the consumer until the stop hands it back

    claim = scripts.STREAM_CLAIM.sha.encode()
    proxy.let_go = anyio.Event()
    async with anyio.create_task_group() as tg:
        async with flow, make_flow(url, ns) as producer:
            await producer.append(name, {"to": "a"})
            await eventually(lambda: failed == [1], what="the first attempt")
            proxy.hold = lambda chunk: claim in chunk
            await eventually(lambda: proxy.held == 1, within=5, what="a claim held back")

            async def let_go_after_the_stop_began() -> None:
                await eventually(lambda: flow.consumers[0].stopping, what="the stop")
                await anyio.sleep(0.3)
                proxy.let_go.set()

            tg.start_soon(let_go_after_the_stop_began)
    await eventually(lambda: proxy.late == 1, what="the claim sent on to Redis")
    pending = await r.xpending_range(name, "g", "-", "+", 10)
    assert [(p["consumer"], p["times_delivered"]) for p in pending] == [(b"w1", 1)]
    assert pending[0]["time_since_delivered"] > 10**8, "the entry is not handed back"

    again = make_flow(url, ns, name="w2")
    got: list[int] = []

    @again.on_stream(name, group="g", max_attempts=5)
    async def handler(msg: Message[dict[str, str]]) -> None:
        got.append(msg.attempt)

    async with again:
        await eventually(lambda: got, within=1.5, what="the entry, before claim_idle")
    assert got == [2]
