"""``Kind``: the adapter that lets one test run against every consumer kind (register a
handler, produce, write as another client would, count what Redis holds)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import pytest
import redis.asyncio as aioredis

from redisflow import Flow, Source
from redisflow.features import partitions

__all__ = ["ALL", "DURABLE", "GROUP", "LISTY", "RELIABLE", "Kind", "by_kind"]

F = TypeVar("F", bound=Callable[..., Any])
GROUP = "g"  # the consumer group of stream handlers


@dataclass(frozen=True)
class Kind:
    """One consumer kind: how to register a handler, produce, and count what Redis holds."""

    kind: Literal["queue", "priority", "stream", "channel"]
    at_most_once: bool = False
    partitions: int = 1

    def __str__(self) -> str:
        parts = f"-p{self.partitions}" if self.partitions > 1 else ""
        return self.kind + ("-at-most-once" if self.at_most_once else "") + parts

    def keys_of(self, name: str) -> list[str]:
        """The Redis keys of the source: its name, or each partition's."""
        return partitions.keys(name, self.partitions)

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
        if self.partitions > 1:
            options["partitions"] = self.partitions
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

    async def produce_many(
        self, flow: Flow, name: str, items: list[Any], key: str | None = None
    ) -> None:
        """Send many messages in one round trip, in order (to one partition with ``key``)."""
        if self.kind == "queue":
            await flow.enqueue_many(name, items, key=key)
        elif self.kind == "priority":
            await flow.enqueue_priority_many(name, items, key=key)
        elif self.kind == "stream":
            await flow.append_many(name, items, key=key)
        else:
            assert await flow.publish_many(name, items) == len(items)

    async def push_raw(
        self, r: aioredis.Redis, name: str, raw: bytes, **fields: bytes
    ) -> bytes | None:
        """Write a bare payload as another client would (a stream entry: field ``data``
        plus ``fields``); the stream entry id if any."""
        key = self.keys_of(name)[0]  # another client writes to one partition
        if self.kind == "queue":
            await r.rpush(key, raw)
        elif self.kind == "priority":
            await r.zadd(key, {raw: 0})
        elif self.kind == "stream":
            entry_id = await r.xadd(key, {"data": raw, **fields})
            assert isinstance(entry_id, bytes)  # the client does not decode responses
            return entry_id
        elif isinstance(r, aioredis.RedisCluster):  # a cluster: exact channels are sharded
            assert await r.execute_command("SPUBLISH", name, raw) == 1
        else:
            assert await r.publish(name, raw) == 1
        return None

    async def held(self, r: aioredis.Redis, flow: Flow, name: str) -> int:
        """How many messages of the source Redis still holds (queued, delayed, leased or
        pending; for a stream also entries not yet read by the group); 0 for Pub/Sub."""
        if self.kind == "channel":
            return 0
        return sum([await self._held(r, flow, key) for key in self.keys_of(name)])

    async def _held(self, r: aioredis.Redis, flow: Flow, name: str) -> int:
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
        found: set[str] = set()
        for key in self.keys_of(name):
            found |= await self._leftovers(r, flow, key)
        return found

    async def _leftovers(self, r: aioredis.Redis, flow: Flow, name: str) -> set[str]:
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
    # partitioned: one logical source over 3 keys (over the masters of a cluster)
    Kind("queue", partitions=3),
    Kind("priority", partitions=3),
    Kind("stream", partitions=3),
]
DURABLE = [k for k in ALL if k.durable]
RELIABLE = [k for k in DURABLE if not k.at_most_once]
LISTY = [k for k in ALL if k.listy]


def by_kind(kinds: list[Kind]) -> pytest.MarkDecorator:
    """Parametrize a test's ``kind`` argument over ``kinds``."""
    return pytest.mark.parametrize("kind", kinds, ids=str)
