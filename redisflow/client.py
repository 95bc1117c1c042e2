"""``Client``: what a producer or an ops tool needs, over the flow's connections.

Every producer call is one round trip, shared with concurrent calls (auto-pipelining).
``dedup_key``, ``notify`` (queues), ``durable`` (channels) and ``index`` (streams) make a
send compound: one Lua call, atomic, every check before the first write (docs/design.md,
"Producers").
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar, overload

from . import compound
from .config import FlowConfig, RateLimit, to_ms
from .connection import Connector
from .errors import ConfigError
from .indexes import StreamIndexes
from .keys import Keys, check_name
from .memory import measure
from .protocol import envelope, scripts
from .protocol.priority import check_priority, delayed_member
from .ratelimit import Limiter
from .tracking import MessageStatus, Tracker

T = TypeVar("T")

log = logging.getLogger("redisflow")

#: Default dedup window, in seconds.
DEDUP_TTL = 3600.0
ID = b"\0id"  # produce.lua: the reply of the first command (the XADD's entry id)


class Client:
    """Producers and reads over one flow's connections, configured by ``config``.

    A ``Flow`` holds one (its producer methods are this class's); build one directly for a
    process that only sends. ``send`` runs any command, auto-pipelined. Close it with
    ``aclose()`` (a running flow closes its own when it stops).
    """

    def __init__(self, config: FlowConfig) -> None:
        self.config = config
        self._connector: Connector | None = None

    @property
    def connector(self) -> Connector:
        """The connections (opened on first use)."""
        if self._connector is None:
            self._connector = Connector(self.config.url)
        return self._connector

    @property
    def _tracking(self) -> Tracker:
        return Tracker(self.connector, self.config.prefix, self.config.track_ttl)

    @property
    def _indexes(self) -> StreamIndexes:
        return StreamIndexes(self.connector, self.config.prefix)

    @property
    def open(self) -> bool:
        """Whether connections were made (and not closed since)."""
        return self._connector is not None

    async def aclose(self) -> None:
        """Close the connections (the next call opens them again)."""
        connector, self._connector = self._connector, None
        if connector is not None:
            await connector.aclose()

    async def send(self, *args: Any) -> Any:
        """Run one Redis command (auto-pipelined with concurrent calls); its raw reply."""
        return await self.connector.send(*args)

    async def send_many(self, *commands: Sequence[Any]) -> list[Any]:
        """Run several commands back to back in one round trip; their raw replies."""
        return await self.connector.send.many(*commands)

    def keys(self, name: str) -> Keys:
        """The auxiliary keys redisflow keeps for a queue, stream or channel ``name``."""
        return Keys(self.config.prefix, name)

    async def publish(
        self,
        channel: str,
        data: Any,
        *,
        headers: dict[str, str] | None = None,
        dedup_key: str | None = None,
        dedup_ttl: float = DEDUP_TTL,
        durable: str | None = None,
        maxlen: int | None = None,
        minid: str | None = None,
        sharded: bool | None = None,
    ) -> int | None:
        """PUBLISH (SPUBLISH when ``sharded``, by default on a cluster) ``data`` as JSON to
        ``channel``; the number of receivers (None for a duplicate). ``durable="stream"``
        also appends it to that stream, first (both or neither: see docs/design.md,
        "Cluster", for a sharded channel in another slot), trimmed by ``maxlen``/``minid``."""
        if durable is None and (maxlen is not None or minid is not None):
            raise ConfigError("maxlen and minid trim the durable stream: give durable= too")
        payload, head = envelope.encode(data), envelope.encode_headers(headers)
        if head:
            payload = envelope.envelope(payload, envelope.new_id(), headers=head)
        publish = await self._publish_command(channel, sharded, durable or channel)
        if dedup_key is None and durable is None:
            receivers: int = await self.connector.send(publish[0], channel, payload)
            return receivers
        keys: list[tuple[str, str]] = []
        commands: list[Sequence[Any]] = []
        if durable is not None:
            keys.append((check_name(durable, "stream"), "stream"))
            commands.append(envelope.xadd(durable, data, head, maxlen, minid))
        dedup = None
        if dedup_key is not None:
            dedup = self.keys(check_name(durable or channel, "channel")).dedup(dedup_key)
        replies = await compound.send(
            self.connector, dedup, dedup_ttl, keys, commands, publish, channel, payload
        )
        return None if replies is None else int(replies[-1])

    async def publish_many(
        self, channel: str, items: Iterable[Any], *, sharded: bool | None = None
    ) -> int:
        """PUBLISH (or SPUBLISH) each item in one round trip; the total number of receivers."""
        command = (await self._publish_command(channel, sharded, channel))[0]
        commands = [(command, channel, envelope.encode(item)) for item in items]
        return sum(await self.connector.send.many(*commands)) if commands else 0

    async def enqueue(
        self,
        queue: str,
        data: Any,
        *,
        delay: float | None = None,
        headers: dict[str, str] | None = None,
        dedup_key: str | None = None,
        dedup_ttl: float = DEDUP_TTL,
        notify: str | None = None,
    ) -> str | None:
        """Add ``data`` to a list queue (after ``delay`` seconds); returns the message id,
        or None when ``dedup_key`` was seen within ``dedup_ttl`` seconds. ``notify`` also
        PUBLISHes the message to that channel, in the same atomic step."""
        keys = self.keys(check_name(queue, "queue"))
        msg_id, item = envelope.new_item(data, headers)
        if dedup_key is None and notify is None:
            if delay:
                await self.connector.run(scripts.delay(keys.delayed, to_ms(delay), [item]))
            else:
                await self.connector.send("RPUSH", queue, item)
            await self._track("queue", queue, [msg_id])
            return msg_id
        if delay:
            push: Sequence[Any] = ("ZADD", keys.delayed, b"\0due:%d" % to_ms(delay), item)
            target = (keys.delayed, "zset")
        else:
            push, target = ("RPUSH", queue, item), (queue, "list")
        publish = await self._publish_command(notify, None, queue) if notify else None
        dedup = keys.dedup(dedup_key) if dedup_key is not None else None
        replies = await compound.send(
            self.connector, dedup, dedup_ttl, [target], [push], publish, notify, item
        )
        if replies is None:
            return None
        await self._track("queue", queue, [msg_id])
        return msg_id

    async def enqueue_many(
        self,
        queue: str,
        items: Iterable[Any],
        *,
        delay: float | None = None,
        notify: str | None = None,
    ) -> list[str]:
        """Add many items to a list queue in one round trip; returns their ids."""
        keys = self.keys(check_name(queue, "queue"))
        ids, packed = envelope.pack_items(items)
        if not packed:
            return ids
        if delay:
            await self.connector.run(scripts.delay(keys.delayed, to_ms(delay), packed))
        elif notify is None:
            await self.connector.send("RPUSH", queue, *packed)
        else:
            publish = await self._publish_command(notify, None, queue)
            push: list[Sequence[Any]] = [("RPUSH", queue, *packed)]
            await compound.send(
                self.connector, None, 0, [(queue, "list")], push, publish, notify, *packed
            )
        await self._track("queue", queue, ids)
        return ids

    async def enqueue_priority(
        self,
        queue: str,
        data: Any,
        *,
        priority: int = 0,
        delay: float | None = None,
        headers: dict[str, str] | None = None,
        dedup_key: str | None = None,
        dedup_ttl: float = DEDUP_TTL,
    ) -> str | None:
        """Add ``data`` to a priority queue; 0 is the most urgent, up to 8191. FIFO holds
        within a level. Returns the message id (None for a duplicate ``dedup_key``)."""
        keys = self.keys(check_name(queue, "queue"))
        level = check_priority(priority)
        msg_id, item = envelope.new_item(data, headers)
        if dedup_key is not None and delay:
            due = b"\0due:%d" % to_ms(delay)
            command = ("ZADD", keys.delayed, due, delayed_member(level, item))
            dedup = keys.dedup(dedup_key)
            replies = await compound.send(
                self.connector, dedup, dedup_ttl, [(keys.delayed, "zset")], [command]
            )
            added = None if replies is None else 1
        elif dedup_key is not None:
            call = scripts.priority_push(
                queue, keys.seq, keys.wake, [(level, item)],
                dedup=keys.dedup(dedup_key), ttl_ms=to_ms(dedup_ttl),
            )  # fmt: skip
            added = await self.connector.run(call)
        else:
            added = await self._push_priority(queue, [item], level, delay)
        if added is None:
            return None
        await self._track("priority", queue, [msg_id])
        return msg_id

    async def enqueue_priority_many(
        self,
        queue: str,
        items: Iterable[Any],
        *,
        priority: int = 0,
        delay: float | None = None,
    ) -> list[str]:
        """Add many items at one priority level, in order, in one round trip."""
        check_name(queue, "queue")
        level = check_priority(priority)
        ids, packed = envelope.pack_items(items)
        if packed:
            await self._push_priority(queue, packed, level, delay)
            await self._track("priority", queue, ids)
        return ids

    async def _push_priority(
        self, queue: str, items: list[bytes], priority: int, delay: float | None
    ) -> int:
        keys = self.keys(queue)
        if delay:
            members = [delayed_member(priority, item) for item in items]
            return int(await self.connector.run(scripts.delay(keys.delayed, to_ms(delay), members)))
        pushed = [(priority, item) for item in items]
        call = scripts.priority_push(queue, keys.seq, keys.wake, pushed)
        return int(await self.connector.run(call))

    async def priority_stats(self, queue: str) -> dict[int, int]:
        """How many messages wait in a priority queue at each level in use, exactly
        (leased and delayed messages are not counted)."""
        flat = await self.connector.run(scripts.priority_stats(queue))
        return {int(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}

    async def append(
        self,
        stream: str,
        data: Any,
        *,
        maxlen: int | None = None,
        minid: str | None = None,
        headers: dict[str, str] | None = None,
        dedup_key: str | None = None,
        dedup_ttl: float = DEDUP_TTL,
        index: Sequence[str] = (),
    ) -> str | None:
        """XADD ``data`` to a stream (JSON in the field ``data``); returns the entry id (None
        for a duplicate ``dedup_key``). ``maxlen``/``minid`` trim the stream approximately.
        ``index`` names payload fields whose values index the entry, for ``find``."""
        check_name(stream, "stream")
        args = envelope.xadd(stream, data, envelope.encode_headers(headers), maxlen, minid)
        if dedup_key is None and not index:
            entry_id: bytes = await self.connector.send(*args)
            await self._track("stream", stream, [entry_id.decode()])
            return entry_id.decode()
        keys = self.keys(stream)
        commands: list[Sequence[Any]] = [args]
        touched = [(stream, "stream")]
        indexes = self._indexes
        for key in indexes.keys_of(stream, data, index):
            commands += [("SADD", key, ID), ("SADD", keys.indexes, key)]
            touched.append((key, "set"))
        if index:
            touched.append((keys.indexes, "set"))
        dedup = keys.dedup(dedup_key) if dedup_key is not None else None
        replies = await compound.send(self.connector, dedup, dedup_ttl, touched, commands)
        if replies is None:
            return None
        reply = replies[0]
        if index and (maxlen is not None or minid is not None):
            await indexes.trimmed(stream)
        await self._track("stream", stream, [reply.decode()])
        return str(reply.decode())

    async def append_many(
        self,
        stream: str,
        items: Iterable[Any],
        *,
        maxlen: int | None = None,
        minid: str | None = None,
    ) -> list[str]:
        """XADD many entries in one round trip; returns their ids."""
        check_name(stream, "stream")
        commands = [envelope.xadd(stream, item, None, maxlen, minid) for item in items]
        if not commands:
            return []
        ids = [entry_id.decode() for entry_id in await self.connector.send.many(*commands)]
        await self._track("stream", stream, ids)
        return ids

    @overload
    async def find(
        self,
        stream: str,
        *,
        limit: int = ...,
        newest_first: bool = ...,
        model: type[T],
        **criteria: Any,
    ) -> list[tuple[str, T]]: ...

    @overload
    async def find(
        self, stream: str, *, limit: int = ..., newest_first: bool = ..., **criteria: Any
    ) -> list[tuple[str, Any]]: ...

    async def find(
        self,
        stream: str,
        *,
        limit: int = 100,
        newest_first: bool = False,
        model: Any = Any,
        **criteria: Any,
    ) -> list[tuple[str, Any]]:
        """Entries of ``stream`` appended with ``index=`` whose fields equal ``criteria``, in
        stream order (``newest_first`` reverses it), at most ``limit``; one round trip. Each
        is ``(entry id, payload)``, the payload validated as ``model`` (default: JSON)."""
        return await self._indexes.find(stream, limit, newest_first, model, criteria)

    async def prune_indexes(self, stream: str) -> int:
        """Remove index entries of ``stream`` whose entries were trimmed away (``find``
        also drops those it meets); returns how many were removed. Appends with ``index``
        and a trim (``maxlen``/``minid``) run it every 1,000 calls per process."""
        return await self._indexes.prune(stream)

    async def status(self, message_id: str) -> MessageStatus | None:
        """The status record of a tracked message (``track=True``), or None."""
        return await self._tracking.status(message_id)

    async def status_counts(self, source: str) -> dict[str, int]:
        """Counters of a tracked source: ``published`` and ``<handler>:<status>``."""
        return await self._tracking.counts(source)

    def limiter(self, name: str, rate: RateLimit) -> Limiter:
        """A rate limiter shared by every process using the same ``name`` and prefix::

        limiter = flow.limiter("webhooks", RateLimit(10, per=60))
        async with limiter.acquire(url): ...
        """
        return Limiter(self.connector, self.keys(name), rate)

    async def memory(self, *names: str) -> dict[str, Any]:
        """Redis's ``used_memory``, and the type, length and bytes of every key redisflow
        keeps for the sources ``names`` (see ``redisflow.memory``). Three round trips."""
        return await measure(self.connector, self.config.prefix, names)

    async def _publish_command(
        self, channel: str, sharded: bool | None, script_key: str
    ) -> tuple[str, bool]:
        configured = self.config.sharded_pubsub
        return await compound.publish_command(
            self.connector, configured, channel, sharded, script_key
        )

    async def _track(self, kind: str, source: str, ids: list[str]) -> None:
        # After the send: a status record that cannot be written must not make a sent
        # message look unsent (the caller would send it again).
        if self.config.track:
            try:
                await self._tracking.published(source, ids, kind)
            except Exception as exc:
                log.warning("status of %d messages to %s not recorded: %r", len(ids), source, exc)
