"""Helpers shared by the tests: private ``redis-server`` processes, ``eventually``, a
flow factory with short timings, and ``Kind``, the adapter that lets one test run against
every consumer kind.

Tests must never touch a shared Redis (e.g. the one on 127.0.0.1:6379). The servers come
from ``redisflow.testing.servers``: every one listens on 127.0.0.1 on a free port, has
persistence off by default, and is stopped *only by its own PID*.

Usage::

    from tests.helpers import start_redis, stop_redis

    proc = start_redis(["--appendonly", "yes"])
    try:
        ...  # use proc.url / proc.port
        stop_redis(proc, remove_dir=False)                       # "crash"/stop
        proc = start_redis(["--appendonly", "yes"], port=proc.port,
                           data_dir=proc.data_dir)               # restart on same data
    finally:
        stop_redis(proc)
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import anyio
import pytest
import redis.asyncio as aioredis

from redisflow import Flow, Source
from redisflow.testing.servers import RedisServer, free_port, redis_server_binary

__all__ = [
    "ALL",
    "DURABLE",
    "FAST",
    "GROUP",
    "LISTY",
    "RELIABLE",
    "Kind",
    "RedisProc",
    "by_kind",
    "eventually",
    "free_port",
    "kill_redis",
    "make_flow",
    "redis_server_binary",
    "start_redis",
    "stop_redis",
    "until",
]

START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0

#: The launcher is ``redisflow.testing.servers``; ``RedisProc`` is its ``RedisServer``.
RedisProc = RedisServer


def start_redis(
    extra_args: Sequence[str] = (),
    port: int | None = None,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    timeout: float = START_TIMEOUT,
) -> RedisProc:
    """Start a private redis-server (see ``RedisServer.start``): ``data_dir=old.data_dir``
    and ``port=old.port`` restart on the same RDB/AOF files, in a dir never deleted."""
    return RedisServer.start(extra_args, port=port, data_dir=data_dir, timeout=timeout)


def stop_redis(
    rp: RedisProc, *, remove_dir: bool | None = None, timeout: float = STOP_TIMEOUT
) -> None:
    """Stop exactly this server (SIGTERM, wait, SIGKILL if needed). Idempotent.

    ``remove_dir`` defaults to whether ``start_redis`` created the data dir; pass
    ``False`` to keep the files for a restart.
    """
    rp.stop(remove_dir=remove_dir, timeout=timeout)


def kill_redis(rp: RedisProc) -> None:
    """SIGKILL this server (simulated crash), keeping its data dir. Idempotent."""
    rp.kill()


# -- waiting and flows -----------------------------------------------------------------------


async def eventually(
    pred: Callable[[], Any], within: float = 5.0, what: str = "", interval: float = 0.01
) -> None:
    """Poll ``pred`` (sync or async) until it is truthy; fail after ``within`` seconds."""
    with anyio.move_on_after(within):
        while True:
            result = pred()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            await anyio.sleep(interval)
    raise AssertionError(f"not true within {within}s: {what or pred}")


async def until(pred: Callable[[], Any], within: float, interval: float = 0.05) -> bool:
    """Poll ``pred`` like ``eventually``; whether it became true within ``within`` seconds."""
    try:
        await eventually(pred, within, interval=interval)
    except AssertionError:
        return False
    return True


#: Flow options of most tests: peers take a dead worker's messages after 2 s, an idle
#: fetch wakes up every 0.5 s, a stop waits 2 s for running handlers.
FAST: dict[str, Any] = dict(lease=2, claim_idle=2, block_timeout=0.5, grace_period=2)


def make_flow(url: str, ns: str, **overrides: Any) -> Flow:
    """A Flow on ``url`` with the test's prefix ``ns`` and ``FAST`` timings (overridable)."""
    return Flow(url, **{"prefix": ns, **FAST, **overrides})


# -- the consumer kinds --------------------------------------------------------------------

F = TypeVar("F", bound=Callable[..., Any])
GROUP = "g"  # the consumer group of stream handlers


@dataclass(frozen=True)
class Kind:
    """One consumer kind: how to register a handler, produce, and count what Redis holds."""

    kind: Literal["queue", "priority", "stream", "channel"]
    at_most_once: bool = False

    def __str__(self) -> str:
        return self.kind + ("-at-most-once" if self.at_most_once else "")

    @property
    def durable(self) -> bool:
        """Whether messages wait in Redis for a consumer (all but Pub/Sub)."""
        return self.kind != "channel"

    @property
    def listy(self) -> bool:
        """Whether items live in a list or sorted set (with redisflow's envelope)."""
        return self.kind in ("queue", "priority")

    def name(self, ns: str) -> str:
        """The source name of a test: unique per test, since it embeds ``ns``."""
        return f"{ns}:{self.kind}"

    def source(self, name: str) -> Source:
        """The Source a Message of this kind carries."""
        return Source(self.kind, name, GROUP if self.kind == "stream" else None)

    def on(self, flow: Flow, name: str, **options: Any) -> Callable[[F], F]:
        """The decorator registering a handler of this kind, with the options it accepts."""
        if self.kind == "channel":
            options.pop("retry_max_delay", None)
            return flow.on_channel(name, **options)
        if self.kind == "stream":
            return flow.on_stream(name, group=GROUP, **options)
        options["at_most_once"] = self.at_most_once
        if self.kind == "queue":
            return flow.on_queue(name, **options)
        return flow.on_priority(name, **options)

    async def produce(
        self, flow: Flow, name: str, data: Any, headers: dict[str, str] | None = None
    ) -> str | None:
        """Send one message with the flow's producer API; its id (None for a channel)."""
        if self.kind == "queue":
            return await flow.enqueue(name, data, headers=headers)
        if self.kind == "priority":
            return await flow.enqueue_priority(name, data, headers=headers)
        if self.kind == "stream":
            return await flow.append(name, data, headers=headers)
        receivers = await flow.publish(name, data, headers=headers)
        assert receivers == 1, f"publish to {name!r} reached {receivers} subscribers"
        return None

    async def produce_many(self, flow: Flow, name: str, items: list[Any]) -> None:
        """Send many messages in one round trip, in order."""
        if self.kind == "queue":
            await flow.enqueue_many(name, items)
        elif self.kind == "priority":
            await flow.enqueue_priority_many(name, items)
        elif self.kind == "stream":
            await flow.append_many(name, items)
        else:
            assert await flow.publish_many(name, items) == len(items)

    async def push_raw(
        self, r: aioredis.Redis, name: str, raw: bytes, **fields: bytes
    ) -> bytes | None:
        """Write a bare payload as another client would (a stream entry: field ``data``
        plus ``fields``); the stream entry id if any."""
        if self.kind == "queue":
            await r.rpush(name, raw)
        elif self.kind == "priority":
            await r.zadd(name, {raw: 0})
        elif self.kind == "stream":
            entry_id = await r.xadd(name, {"data": raw, **fields})
            assert isinstance(entry_id, bytes)  # the client does not decode responses
            return entry_id
        else:
            assert await r.publish(name, raw) == 1
        return None

    async def held(self, r: aioredis.Redis, flow: Flow, name: str) -> int:
        """How many messages of the source Redis still holds (queued, delayed, leased or
        pending; for a stream also entries not yet read by the group); 0 for Pub/Sub."""
        if self.kind == "channel":
            return 0
        if self.kind == "stream":
            if not await r.exists(name):
                return 0
            groups = [g for g in await r.xinfo_groups(name) if g["name"] == GROUP.encode()]
            if not groups:
                return int(await r.xlen(name))
            last = groups[0]["last-delivered-id"].decode()
            unread = len(await r.xrange(name, min=f"({last}"))
            return int(groups[0]["pending"]) + unread
        keys = flow.keys(name)
        zset = self.kind == "priority"
        n = int(await (r.zcard(name) if zset else r.llen(name)))
        n += int(await r.zcard(keys.delayed))
        async for key in r.scan_iter(match=f"{keys.base}:proc:*"):
            size = int(await r.llen(key))
            n += size // 2 if zset else size  # a priority batch holds score/member pairs
        return n

    async def leftovers(self, r: aioredis.Redis, flow: Flow, name: str) -> set[str]:
        """The source's in-flight bookkeeping keys, which must not exist once its consumers
        stopped with nothing to do: batch lists, worker sets, leases, delayed sets."""
        keys = flow.keys(name)
        found = {k.decode() async for k in r.scan_iter(match=f"{keys.base}:*")}
        return {
            k
            for k in found
            if k in (keys.leases, keys.delayed)
            or k.startswith((f"{keys.base}:proc:", f"{keys.base}:w:"))
        }


ALL = [
    Kind("queue"),
    Kind("queue", at_most_once=True),
    Kind("priority"),
    Kind("priority", at_most_once=True),
    Kind("stream"),
    Kind("channel"),
]
DURABLE = [k for k in ALL if k.durable]
RELIABLE = [k for k in DURABLE if not k.at_most_once]
LISTY = [k for k in ALL if k.listy]


def by_kind(kinds: list[Kind]) -> pytest.MarkDecorator:
    """Parametrize a test's ``kind`` argument over ``kinds``."""
    return pytest.mark.parametrize("kind", kinds, ids=str)
