"""Slow consumers and backpressure: a worker facing a million-message backlog holds only
its prefetch in memory; a Pub/Sub subscriber whose handlers cannot keep up drops (and
counts) messages locally instead of being disconnected by Redis; streams and dead letters
stay within their bounds.

Run with ``make chaos`` (``pytest -m chaos``); figures are printed at the end.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis
import redis.asyncio as aioredis

from redisflow import Flow, Reject
from tests.support.flows import eventually, make_flow
from tests.support.kinds import Kind
from tests.support.servers import RedisProc, start_redis, stop_redis
from tests.support.workers import Workers

pytestmark = [pytest.mark.anyio, pytest.mark.chaos]

MB = 1024 * 1024


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in bytes."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def fill(url: str, name: str, start: int, n: int, chunk: int = 1000) -> None:
    """RPUSH ``n`` small JSON payloads, pipelined, ``chunk`` per command (in a thread)."""
    client = redis.Redis.from_url(url)
    try:
        pipe = client.pipeline(transaction=False)
        for first in range(start, start + n, chunk):
            pipe.rpush(name, *(b'{"n":%d}' % i for i in range(first, first + chunk)))
            if len(pipe) == 50:
                pipe.execute()
        pipe.execute()
    finally:
        client.close()


async def test_million_message_backlog_is_drained_in_bounded_memory(
    private_redis: RedisProc,
    workers: Callable[..., Workers],
    figures: Callable[..., None],
    ns: str,
) -> None:
    """A worker (prefetch 1000) drains a backlog of 1,000,000 messages: its peak memory
    grows by a few MB over its peak after a 20,000-message warm-up, far from the ~100+ MB
    that holding the backlog would take."""
    total, warmup = 1_000_000, 20_000
    url = private_redis.url
    name = f"{ns}:queue"
    pool = workers(url, ns, kinds=["queue"], record=False, handler=dict(concurrency=16))
    worker = pool.start()
    r = aioredis.Redis.from_url(url)
    flow = Flow(url, prefix=ns)
    kind = Kind("queue")

    async def drained() -> bool:
        return await kind.held(r, flow, name) == 0

    try:
        await anyio.to_thread.run_sync(fill, url, name, 0, warmup)
        await eventually(drained, within=60, what=f"the warm-up drained\n{pool.logs()}")
        baseline = memory(worker.pid)
        os.kill(worker.pid, signal.SIGSTOP)  # the backlog builds up whole
        try:
            await anyio.to_thread.run_sync(fill, url, name, warmup, total)
            backlog = await kind.held(r, flow, name)  # one may be in the worker's wait key
            redis_mb = int((await r.info("memory"))["used_memory"]) / MB
        finally:
            os.kill(worker.pid, signal.SIGCONT)
        began = anyio.current_time()
        await eventually(drained, within=120, interval=0.2, what=f"drained\n{pool.logs()}")
        seconds = anyio.current_time() - began
        peak = memory(worker.pid)
        assert await flow.dlq(name).list() == []
        assert pool.stop_all() == {worker.pid: 0}, pool.logs()
    finally:
        await flow.aclose()
        await r.aclose()
    growth = (peak["VmHWM"] - baseline["VmHWM"]) / MB
    figures(
        backlog=backlog,
        prefetch=1000,
        seconds=round(seconds, 1),
        msg_per_s=round(total / seconds),
        redis_used_mb=round(redis_mb),
        worker_hwm_after_warmup_mb=round(baseline["VmHWM"] / MB, 1),
        worker_hwm_after_backlog_mb=round(peak["VmHWM"] / MB, 1),
        growth_mb=round(growth, 1),
    )
    assert backlog == total
    assert growth < 32, f"peak RSS grew by {growth:.1f} MB"


async def test_slow_pubsub_subscriber_drops_locally_and_stays_connected(
    tmp_path: Path, ns: str, caplog: pytest.LogCaptureFixture, figures: Callable[..., None]
) -> None:
    """Redis disconnects a Pub/Sub client whose output buffer passes 1 MB here; a flood of
    ~7 MB to a subscriber whose handler takes 2 ms per message is read at once into a
    bounded local buffer (500): the overflow is dropped, counted and logged, the
    connection survives, and every message is either handled or counted as dropped."""
    caplog.set_level(logging.WARNING, logger="redisflow")
    server = start_redis(["--client-output-buffer-limit", "pubsub 1mb 512kb 2"])
    total = 20_000
    channel = f"{ns}.flood"
    flow = make_flow(server.url, ns, channel_buffer=500)
    got: list[int] = []

    @flow.on_channel(channel, concurrency=1)
    async def slow(n: int) -> None:
        await anyio.sleep(0.002)
        got.append(n)

    r = aioredis.Redis.from_url(server.url)
    try:
        async with flow:
            before = await subscriber_ids(r)
            (consumer,) = flow.consumers
            await anyio.run_process([sys.executable, "-c", FLOOD, server.url, channel, str(total)])

            def accounted() -> bool:
                return len(got) + consumer.stats.dropped == total

            await eventually(accounted, within=60, what="every message handled or dropped")
            after = await subscriber_ids(r)
            dropped = consumer.stats.dropped
        log = server.log_path.read_text() if server.log_path else ""
    finally:
        await r.aclose()
        stop_redis(server)
    figures(
        published=total,
        handled=len(got),
        dropped=dropped,
        channel_buffer=500,
        output_buffer_limit="pubsub 1mb 512kb 2",
        disconnected=before != after,
    )
    assert "output buffer limits" not in log, "Redis disconnected the subscriber"
    assert before == after and len(before) == 1, (before, after)
    assert dropped > 0, "the handlers kept up: the test proved nothing"
    assert len(got) >= 500  # the buffer's worth, at least
    assert any("cannot keep up" in r.getMessage() for r in caplog.records)


# PUBLISH ``total`` ~350-byte messages (a JSON number padded with spaces), 500 per pipeline,
# about 5 MB/s: a flood for a handler of 2 ms, from another process so that it does not take
# the subscriber's CPU (GIL) and starve its reads, which no client could survive.
FLOOD = """
import sys, time
import redis
url, channel, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
client = redis.Redis.from_url(url)
for first in range(0, total, 500):
    pipe = client.pipeline(transaction=False)
    for n in range(first, first + 500):
        pipe.publish(channel, b"%d%s" % (n, b" " * 340))
    pipe.execute()
    time.sleep(0.025)
client.close()
"""


async def subscriber_ids(r: aioredis.Redis) -> list[str]:
    """Client ids of the connections subscribed to something."""
    clients = await r.client_list(_type="pubsub")
    return [c["id"] for c in clients if int(c.get("sub", 0)) + int(c.get("psub", 0)) > 0]


async def test_bounded_stream_and_dead_letters_stay_bounded(
    url: str, ns: str, r: aioredis.Redis, figures: Callable[..., None]
) -> None:
    """30,000 entries appended with ``maxlen=1000`` to a stream whose consumer lags behind,
    one in ten rejected into dead letters bounded by ``dead_maxlen=100``: the stream and the
    dead letters stay within their bounds (plus one 100-entry node, as ``MAXLEN ~`` trims
    whole nodes), and the group ends with nothing pending, though some entries were trimmed
    before or while being read."""
    total, maxlen = 30_000, 1000
    flow = make_flow(url, ns, dead_maxlen=100, batch_size=100, prefetch=200)
    kind = Kind("stream")
    name = kind.name(ns)
    dead = flow.keys(name).dead
    handled: list[int] = []

    @kind.on(flow, name, concurrency=4)
    async def lagging(n: int) -> None:
        await anyio.sleep(0.001)
        if n % 10 == 0:
            raise Reject("one in ten")
        handled.append(n)

    longest = longest_dead = 0
    async with flow:
        for first in range(0, total, 500):
            await flow.append_many(name, range(first, first + 500), maxlen=maxlen)
            longest = max(longest, int(await r.xlen(name)))
            longest_dead = max(longest_dead, int(await r.xlen(dead)))
        await flow.wait_idle(timeout=30)
        assert await _drained(r, name), "the group did not catch up, or left entries pending"
        longest_dead = max(longest_dead, int(await r.xlen(dead)))
        rejected = consumer_stats(flow).dead
    figures(
        appended=total,
        maxlen=maxlen,
        stream_len_max=longest,
        handled=len(handled),
        dead_lettered=rejected,
        never_read=total - len(handled) - rejected,
        dead_len_max=longest_dead,
    )
    assert longest <= maxlen + 100
    assert longest_dead <= 100 + 100
    assert total - len(handled) - rejected > 0, "the consumer kept up: nothing was trimmed"
    assert len(set(handled)) == len(handled)


async def _drained(r: aioredis.Redis, name: str) -> bool:
    # Not XINFO's "lag": on Redis 7.0 it counts entries trimmed before they were read.
    (group,) = await r.xinfo_groups(name)
    last = (await r.xinfo_stream(name))["last-generated-id"]
    return int(group["pending"]) == 0 and group["last-delivered-id"] == last


def consumer_stats(flow: Flow) -> Any:
    (consumer,) = flow.consumers
    return consumer.stats
