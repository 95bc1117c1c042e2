"""Connection loss: consumers, Pub/Sub and producers survive a Redis restart.

Every test runs its own private redis-server (never the session one), because it stops and
restarts it on the same port. ``persist=True`` restarts keep the data through an AOF written
with ``appendfsync always``; ``persist=False`` restarts come back empty.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from redisflow import Flow, RedisflowError
from redisflow.connection.link import Link
from redisflow.connection.pipeliner import Pipeliner
from redisflow.connection.url import parse_url
from redisflow.consumers import Consumer
from redisflow.errors import ConnectionLost
from tests.support.servers import RedisProc, closed_port, free_port, start_redis, stop_redis

pytestmark = pytest.mark.anyio

T = TypeVar("T")

AOF = ["--appendonly", "yes", "--appendfsync", "always"]
PRODUCER_ERRORS = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)
RECOVERY_DEADLINE = 15.0


class Server:
    """A private redis-server that a test may stop and start again on the same port."""

    def __init__(self, persist: bool) -> None:
        self.args = AOF if persist else []
        self.proc: RedisProc = start_redis(self.args)
        assert self.proc.data_dir is not None
        self.data_dir: Path = self.proc.data_dir
        self.port = self.proc.port
        self.url = self.proc.url

    def stop(self) -> None:
        """SIGTERM the server, keeping its data dir."""
        stop_redis(self.proc, remove_dir=False)

    def start(self, persist: bool = True) -> None:
        """Start it again on the same port; with ``persist`` on the same data dir (AOF)."""
        args = self.args if persist else []
        ddir = self.data_dir if persist else self.data_dir / f"empty-{time.monotonic_ns()}"
        self.proc = start_redis(args, port=self.port, data_dir=ddir)

    async def restart(self, down: float = 1.0, persist: bool = True) -> None:
        """Stop, stay down for ``down`` seconds, start again (off the event loop)."""
        await anyio.to_thread.run_sync(self.stop)
        await anyio.sleep(down)
        await anyio.to_thread.run_sync(lambda: self.start(persist))

    def close(self) -> None:
        stop_redis(self.proc, remove_dir=False)
        shutil.rmtree(self.data_dir, ignore_errors=True)


@pytest.fixture
def server() -> Iterator[Server]:
    """A private AOF-backed redis-server owned by this test."""
    srv = Server(persist=True)
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture
async def client(server: Server) -> AsyncIterator[aioredis.Redis]:
    """A plain redis-py client on the test's private server (reconnects by itself)."""
    c = aioredis.Redis.from_url(server.url, decode_responses=False)
    try:
        yield c
    finally:
        await c.aclose()


async def eventually(pred: Callable[[], bool], within: float = 5.0, what: str = "") -> None:
    """Poll ``pred`` until it is true; fail after ``within`` seconds."""
    deadline = anyio.current_time() + within
    while not pred():
        if anyio.current_time() > deadline:
            pytest.fail(f"not true within {within}s: {what or pred}")
        await anyio.sleep(0.02)


async def retry_once(call: Callable[[], Awaitable[T]]) -> T:
    """A producer call right after a restart may fail once (a stale pooled connection)."""
    try:
        return await call()
    except PRODUCER_ERRORS:
        return await call()


def consumer_of(flow: Flow, name: str) -> Consumer:
    """The running consumer of source ``name``."""
    found = [c for c in flow.consumers if c.handler.source.name == name]
    assert len(found) == 1, flow.consumers
    return found[0]


def new_flow(url: str, ns: str) -> Flow:
    return Flow(url, prefix=ns, lease=2, claim_idle=2, block_timeout=0.5, grace_period=2)


# -- consumers survive a restart ---------------------------------------------------------


async def _queue_like_survives(
    server: Server, ns: str, kind: str, push: Callable[[Flow, str, range], Awaitable[Any]]
) -> None:
    q = f"{ns}:{kind}"
    flow = new_flow(server.url, ns)
    seen: set[int] = set()
    register = flow.on_queue if kind == "queue" else flow.on_priority

    @register(q, concurrency=8)
    async def handle(n: int) -> None:
        seen.add(n)

    async with flow:
        await push(flow, q, range(200))
        await eventually(lambda: len(seen) == 200, what="first 200 handled")
        await server.restart()
        start = anyio.current_time()
        await retry_once(lambda: push(flow, q, range(200, 400)))
        await eventually(
            lambda: seen == set(range(400)),
            RECOVERY_DEADLINE,
            what=f"all 400 handled after restart (missing {sorted(set(range(400)) - seen)[:5]})",
        )
        assert anyio.current_time() - start < RECOVERY_DEADLINE
        assert consumer_of(flow, q).stats.reconnects >= 1


async def test_queue_consumer_survives_redis_restart(server: Server, ns: str) -> None:
    """A list-queue consumer reconnects after Redis restarts and handles new messages."""

    async def push(flow: Flow, q: str, items: range) -> Any:
        return await flow.enqueue_many(q, items)

    await _queue_like_survives(server, ns, "queue", push)


async def test_priority_consumer_survives_redis_restart(server: Server, ns: str) -> None:
    """A priority-queue consumer reconnects after Redis restarts and handles new messages."""

    async def push(flow: Flow, q: str, items: range) -> Any:
        return await flow.enqueue_priority_many(q, items, priority=3)

    await _queue_like_survives(server, ns, "priority", push)


@pytest.mark.parametrize("persist", [True, False], ids=["aof", "no-persistence"])
async def test_stream_consumer_survives_redis_restart(
    server: Server, client: aioredis.Redis, ns: str, persist: bool
) -> None:
    """A stream consumer reconnects after a restart; if the group is gone it recreates it."""
    stream, group = f"{ns}:events", f"{ns}-g"
    flow = new_flow(server.url, ns)
    seen: set[int] = set()

    @flow.on_stream(stream, group=group, concurrency=8)
    async def handle(n: int) -> None:
        seen.add(n)

    async with flow:
        await flow.append_many(stream, range(200))
        await eventually(lambda: len(seen) == 200, what="first 200 handled")
        # Without persistence stay down longer: the consumer's reconnect backoff then spans
        # several housekeeping rounds that run against the empty server.
        await server.restart(down=1.0 if persist else 3.0, persist=persist)
        if persist:
            groups = await retry_once(lambda: client.xinfo_groups(stream))
            assert [g["name"] for g in groups] == [group.encode()]
        else:  # a fresh server (the consumer may already have recreated an empty stream)
            assert await retry_once(lambda: client.xlen(stream)) == 0
        start = anyio.current_time()
        await retry_once(lambda: flow.append_many(stream, range(200, 400)))
        await eventually(
            lambda: seen >= set(range(200, 400)),
            RECOVERY_DEADLINE,
            what=f"new entries handled (missing {sorted(set(range(200, 400)) - seen)[:5]})",
        )
        assert anyio.current_time() - start < RECOVERY_DEADLINE
        assert seen == set(range(400))
        assert consumer_of(flow, stream).stats.reconnects >= 1
        groups = await client.xinfo_groups(stream)
        assert [g["name"] for g in groups] == [group.encode()]
        # Everything handled is acknowledged in the (possibly recreated) group.
        await eventually_async(
            lambda: _pending(client, stream, group), lambda n: n == 0, what="all acked"
        )


async def _pending(client: aioredis.Redis, stream: str, group: str) -> int:
    info = await client.xpending(stream, group)
    return int(info["pending"])


async def eventually_async(
    get: Callable[[], Awaitable[T]],
    pred: Callable[[T], bool],
    within: float = 5.0,
    what: str = "",
) -> T:
    """Poll an async getter until ``pred`` accepts its value; fail after ``within`` s."""
    deadline = anyio.current_time() + within
    while True:
        value = await get()
        if pred(value):
            return value
        if anyio.current_time() > deadline:
            pytest.fail(f"not true within {within}s: {what} (last value {value!r})")
        await anyio.sleep(0.05)


async def test_pubsub_survives_redis_restart(server: Server, ns: str) -> None:
    """The Pub/Sub hub subscribes again after a restart: publishes reach the handler."""
    ch = f"{ns}:news"
    flow = new_flow(server.url, ns)
    got: list[int] = []

    @flow.on_channel(ch)
    async def handle(n: int) -> None:
        got.append(n)

    async with flow:
        assert await flow.publish(ch, -1) == 1
        await eventually(lambda: -1 in got, what="pre-restart message")
        await server.restart()
        deadline = anyio.current_time() + RECOVERY_DEADLINE
        n = 0
        while not any(x >= 0 for x in got):
            assert anyio.current_time() < deadline, "no message handled after the restart"
            try:
                await flow.publish(ch, n)
            except PRODUCER_ERRORS:
                pass
            n += 1
            await anyio.sleep(0.1)
        # Still subscribed exactly once: one receiver, not a duplicate subscription.
        assert await flow.publish(ch, 10_000) == 1
        await eventually(lambda: 10_000 in got, what="follow-up message")


async def test_pubsub_survives_outage_spanning_a_watchdog_check(server: Server, ns: str) -> None:
    """Redis comes back while the hub is still backing off and its 5 s quiet-connection check
    falls due: the hub must still subscribe again (the check must not corrupt the link)."""
    ch = f"{ns}:news"
    flow = new_flow(server.url, ns)
    got: list[int] = []

    @flow.on_channel(ch)
    async def handle(n: int) -> None:
        got.append(n)

    async with flow:
        t0 = anyio.current_time()  # the hub subscribed (and its watchdog started) just before
        await anyio.to_thread.run_sync(server.stop)
        # Back ~0.6 s before the first check (at t0 + 5 s): the hub is likely still backing off.
        await anyio.sleep(max(0.0, t0 + 4.4 - anyio.current_time()))
        await anyio.to_thread.run_sync(server.start)
        deadline = anyio.current_time() + RECOVERY_DEADLINE
        n = 0
        while not got:
            assert anyio.current_time() < deadline, "no message handled after the outage"
            try:
                await flow.publish(ch, n)
            except PRODUCER_ERRORS:
                pass
            n += 1
            await anyio.sleep(0.1)
        # Keep going past the check: the subscription stays usable.
        await anyio.sleep(max(0.0, t0 + 5.5 - anyio.current_time()))
        assert await flow.publish(ch, 10_000) == 1
        await eventually(lambda: 10_000 in got, what="message after the watchdog check")


# -- producers ---------------------------------------------------------------------------


async def test_producer_survives_redis_restart(
    server: Server, client: aioredis.Redis, ns: str
) -> None:
    """A producer-only Flow (never started) keeps working after Redis restarts, and calls
    made while Redis is down wait for it (within the producers' retry window) instead of
    failing."""
    q = f"{ns}:jobs"
    flow = Flow(server.url, prefix=ns)
    try:
        await flow.enqueue(q, {"n": 1})
        assert await client.llen(q) == 1
        await anyio.to_thread.run_sync(server.stop)
        ids: list[str | None] = []

        async def produce(n: int) -> None:
            ids.append(await flow.enqueue(q, {"n": n}))

        async with anyio.create_task_group() as tg:
            for n in range(2, 12):
                tg.start_soon(produce, n)
            await anyio.sleep(1.0)  # the calls are waiting for Redis
            assert ids == []
            await anyio.to_thread.run_sync(server.start)
        assert len(ids) == 10 and all(ids)
        await flow.enqueue(q, {"n": 12})
        assert await retry_once(lambda: client.llen(q)) == 12
    finally:
        await flow.aclose()


# -- start-up without Redis ----------------------------------------------------------------


async def test_start_gives_up_after_give_up_after(
    ns: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Starting a flow whose Redis stays unreachable logs that it waits, then raises a
    RedisflowError naming the URL once ``give_up_after`` has passed."""
    caplog.set_level(logging.WARNING, logger="redisflow")
    url = f"redis://127.0.0.1:{closed_port()}/0"
    flow = Flow(url, prefix=ns, give_up_after=1.5)

    @flow.on_queue(f"{ns}:q")
    async def handle(n: int) -> None:
        pass

    begin = time.monotonic()
    with anyio.fail_after(15), pytest.raises(RedisflowError) as info:
        async with flow:
            pytest.fail("the flow started without Redis")
    assert 1.5 <= time.monotonic() - begin < 10
    assert url in str(info.value)
    assert len(_lines(caplog, "start: waiting for Redis at", url)) == 1


async def test_start_waits_for_a_redis_that_comes_up_late(ns: str) -> None:
    """A worker started before its Redis waits, then starts and consumes once it is up."""
    port = free_port()
    flow = Flow(f"redis://127.0.0.1:{port}/0", prefix=ns, give_up_after=30, block_timeout=0.5)
    got: list[int] = []

    @flow.on_queue(f"{ns}:q")
    async def handle(n: int) -> None:
        got.append(n)

    async def start_late() -> RedisProc:
        await anyio.sleep(1.0)
        return await anyio.to_thread.run_sync(lambda: start_redis(port=port))

    proc: RedisProc | None = None
    try:
        async with anyio.create_task_group() as tg:

            async def boot() -> None:
                nonlocal proc
                proc = await start_late()

            tg.start_soon(boot)
            with anyio.fail_after(20):
                async with flow:
                    await flow.enqueue(f"{ns}:q", 7)
                    await eventually(lambda: got == [7], what="message after a late start")
    finally:
        if proc is not None:
            stop_redis(proc)


async def test_outage_longer_than_give_up_after_fails_the_flow(server: Server, ns: str) -> None:
    """A Redis that never comes back makes ``run`` fail (so the worker exits non-zero):
    with two handlers losing it to the same outage, one ``RedisflowError`` names both (not
    an ExceptionGroup, which the command line would print as a traceback), even when the
    first to give up cancels the other before it gives up too (a busy machine)."""
    flow = Flow(server.url, prefix=ns, block_timeout=0.5, give_up_after=1.0)

    @flow.on_queue(f"{ns}:q")
    async def handle(n: int) -> None:
        pass

    @flow.on_stream(f"{ns}:s", group="g")
    async def handle_entry(n: int) -> None:
        pass

    with anyio.fail_after(20), pytest.raises(RedisflowError, match="giving up") as failure:
        async with flow:
            await anyio.to_thread.run_sync(server.stop)
            await anyio.sleep(15)
            pytest.fail("the flow kept running without Redis")
    assert type(failure.value) is RedisflowError
    assert f"{ns}:q" in str(failure.value) and f"{ns}:s" in str(failure.value), failure.value


# -- logging ---------------------------------------------------------------------------------


def _lines(caplog: pytest.LogCaptureFixture, who: str, text: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("redisflow")
        and r.levelno >= logging.WARNING
        and r.getMessage().startswith(who)
        and text in r.getMessage()
    ]


async def _flow_with(kind: str, url: str, ns: str, seen: set[int]) -> tuple[Flow, str]:
    name = f"{ns}:{kind}"
    flow = new_flow(url, ns)

    async def handle(n: int) -> None:
        seen.add(n)

    if kind == "queue":
        flow.on_queue(name)(handle)
    elif kind == "stream":
        flow.on_stream(name, group="g")(handle)
    else:
        flow.on_channel(name)(handle)
    return flow, name


async def _send(flow: Flow, kind: str, name: str, n: int) -> None:
    if kind == "queue":
        await flow.enqueue(name, n)
    elif kind == "stream":
        await flow.append(name, n)
    else:
        await flow.publish(name, n)


@pytest.mark.parametrize("kind", ["queue", "stream", "channel"])
async def test_outage_logged_once_and_recovery_once(
    server: Server, ns: str, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    """One WARNING when the connection is lost, one when it is back (not one per retry)."""
    caplog.set_level(logging.WARNING, logger="redisflow")
    seen: set[int] = set()
    flow, name = await _flow_with(kind, server.url, ns, seen)
    async with flow:
        who = "pubsub" if kind == "channel" else str(consumer_of(flow, name))
        await _send(flow, kind, name, 0)
        await eventually(lambda: 0 in seen, what="pre-restart message")
        # Down for 2 s: many reconnect attempts fail, yet only the first is logged.
        await server.restart(down=2.0)
        deadline = anyio.current_time() + RECOVERY_DEADLINE
        n = 1
        while not any(x >= 1 for x in seen):  # traffic until handled again
            assert anyio.current_time() < deadline, "nothing handled after the restart"
            try:
                await _send(flow, kind, name, n)
            except PRODUCER_ERRORS:
                pass
            n += 1
            await anyio.sleep(0.1)
        await eventually(
            lambda: bool(_lines(caplog, who, "reconnected")), what=f"{who}: recovery logged"
        )
        lost = _lines(caplog, who, "lost Redis")
        back = _lines(caplog, who, "reconnected")
        assert len(lost) == 1, lost
        assert len(back) == 1, back


@pytest.mark.parametrize("kind", ["queue", "stream"])
async def test_recovery_logged_without_traffic(
    server: Server, ns: str, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    """An idle consumer logs its recovery when it reconnects, not when a message arrives."""
    caplog.set_level(logging.WARNING, logger="redisflow")
    seen: set[int] = set()
    flow, name = await _flow_with(kind, server.url, ns, seen)
    async with flow:
        who = str(consumer_of(flow, name))
        await server.restart()
        await eventually(lambda: bool(_lines(caplog, who, "lost Redis")), what="loss logged")
        await eventually(
            lambda: bool(_lines(caplog, who, "reconnected")),
            RECOVERY_DEADLINE,
            what=f"{who}: recovery logged while idle",
        )
        # And it did reconnect: a message sent now is handled.
        await retry_once(lambda: _send(flow, kind, name, 7))
        await eventually(lambda: 7 in seen, what="post-restart message handled")


# -- a server that goes silent -----------------------------------------------------------


async def test_a_silent_server_fails_a_round_trip_after_the_timeout() -> None:
    """A server that stops answering mid-run (SIGSTOP: the socket stays open) fails the
    round trip in flight after ``timeout``, not never; healthy round trips spanning many
    timeouts are never cut; once the server answers again, calls go through."""
    proc = start_redis()
    assert proc.pid is not None
    endpoint = parse_url(proc.url).endpoint()
    pipe = Pipeliner(lambda: Link(endpoint), timeout=0.3, retry_for=0.2)
    try:
        start = time.monotonic()
        n = 0
        while time.monotonic() - start < 1.0:  # > 3 timeouts of lone calls, none cut
            n += 1
            assert await pipe("INCR", "silent:n") == n
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            start = time.monotonic()
            with pytest.raises(ConnectionLost, match=r"no reply within 0\.3s"):
                await pipe("INCR", "silent:n")
            took = time.monotonic() - start
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        assert 0.3 <= took < 3.0, took
        # the INCR sent to the stopped server ran when it woke: at-least-once, "maybe done"
        assert await pipe("GET", "silent:n") in (str(n).encode(), str(n + 1).encode())
    finally:
        await pipe.aclose()
        stop_redis(proc)


async def test_a_blocked_read_on_a_silent_server_is_dropped() -> None:
    """A fetch link waiting in a blocking command on a server that stopped answering
    (SIGSTOP) is dropped once ``block + margin`` has passed: its read fails with
    ConnectionLost (its loop then connects again) instead of waiting forever; a blocking
    command answered in time is never cut."""
    proc = start_redis()
    assert proc.pid is not None
    link = Link(parse_url(proc.url).endpoint())
    await link.open()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(link.watch, 0.3, 0.3)
            for _ in range(3):  # 0.3 s blocks, watched every 0.15 s: none cut
                await link.send(["BLPOP", "silent:nothing", 0.3])
                assert await link.read() is None
            await link.send(["BLPOP", "silent:nothing", 0.3])
            os.kill(proc.pid, signal.SIGSTOP)
            try:
                start = time.monotonic()
                with pytest.raises(ConnectionLost, match=r"no reply within 0\.6s"):
                    await link.read()
                took = time.monotonic() - start
            finally:
                os.kill(proc.pid, signal.SIGCONT)
            tg.cancel_scope.cancel()
        assert 0.5 <= took < 3.0, took
        await link.open()  # the loop's reconnect: the server answers again
        assert await link.call("PING") == b"PONG"
    finally:
        await link.close()
        stop_redis(proc)


async def test_the_error_names_a_consumer_cancelled_before_it_could_give_up(
    redis_cluster_factory: Callable[..., Any], ns: str
) -> None:
    """Two queues on two masters of a cluster: the master of the first is killed, then 2 s
    later the master of the second. The first consumer gives up first and stops the flow,
    which cancels the second while it still waits out its own ``give_up_after``: the error
    names both anyway (it named only the first: on a busy machine, the order of give-ups
    decided which consumer the promised error named)."""
    from redisflow.keys import slot

    cluster = redis_cluster_factory(masters=3)
    masters = cluster.masters()
    names: dict[int, str] = {}
    n = 0
    while len(names) < 2:
        name = f"{ns}:q{n}"
        port = cluster.owner(slot(name)).port
        if port in (masters[0].port, masters[1].port):
            names.setdefault(port, name)
        n += 1
    first, second = names[masters[0].port], names[masters[1].port]
    flow = Flow(cluster.seed_url, prefix=ns, block_timeout=0.5, give_up_after=4.0)
    for q in (first, second):
        flow.on_queue(q)(lambda n: None)
    with anyio.fail_after(60), pytest.raises(RedisflowError, match="giving up") as failure:
        async with flow:
            await anyio.to_thread.run_sync(cluster.kill, masters[0])
            await anyio.sleep(2)
            await anyio.to_thread.run_sync(cluster.kill, masters[1])
            await anyio.sleep(30)
            pytest.fail("the flow kept running without its masters")
    text = str(failure.value)
    assert first in text and second in text, text
