"""The producers of a ``Client``: publish, enqueue, enqueue_priority, append, and their
``_many`` forms.

Every call is one command or one script (``compound.py``), auto-pipelined with concurrent
calls. A partitioned source (``partitions.py``) takes a message on the partition of its
``key`` (or, without one, of its ``dedup_key``, so the dedup check and the push share a
slot), else round robin; a ``_many`` call spreads its items round robin, one command per
partition, in one round trip per node.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from . import compound
from .config import to_ms
from .errors import ConfigError
from .keys import Keys, check_name
from .protocol import envelope, scripts
from .protocol.priority import check_priority, delayed_member

if TYPE_CHECKING:
    from .config import FlowConfig
    from .connection import Connector, Sender, WaitingSender
    from .indexes import StreamIndexes
    from .partitions import Layouts
    from .tracking import Tracker

log = logging.getLogger("redisflow")

#: Default dedup window, in seconds.
DEDUP_TTL = 3600.0
ID = b"\0id"  # produce.lua: the reply of the first command (the XADD's entry id)


class Producers:
    """What sends messages, for one ``Client``. Every producer takes ``wait_replicas``:
    return only once that many replicas acknowledged the write (else ``ReplicationError``;
    default: the flow's ``wait_replicas``, 0)."""

    def __init__(
        self,
        connector: Connector,
        config: FlowConfig,
        layouts: Layouts,
        tracker: Tracker,
        indexes: StreamIndexes,
    ) -> None:
        self.connector, self.config, self.layouts = connector, config, layouts
        self.tracker, self.indexes = tracker, indexes

    def _keys(self, name: str) -> Keys:
        return Keys(self.config.prefix, name)

    def _sender(self, replicas: int | None) -> Sender | WaitingSender:
        """What sends a call: acknowledged by ``replicas`` (default: the flow's)."""
        config = self.config
        replicas = config.wait_replicas if replicas is None else replicas
        if not replicas:
            return self.connector.send
        wait = (replicas, int(config.wait_timeout * 1000), config.wait_aof)
        return self.connector.send.waiting(wait)

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
        wait_replicas: int | None = None,
    ) -> int | None:
        """PUBLISH (SPUBLISH when ``sharded``, by default on a cluster) ``data`` as JSON to
        ``channel``; the number of receivers (None for a duplicate). ``durable="stream"``
        also appends it to that stream, first (both or neither: see docs/design.md,
        "Cluster", for a sharded channel in another slot), trimmed by ``maxlen``/``minid``."""
        send = self._sender(wait_replicas)
        if durable is None and (maxlen is not None or minid is not None):
            raise ConfigError("maxlen and minid trim the durable stream: give durable= too")
        payload, head = envelope.encode(data), envelope.encode_headers(headers)
        if head:
            payload = envelope.envelope(payload, envelope.new_id(), headers=head)
        publish = await self._publish_command(channel, sharded, durable or channel)
        if dedup_key is None and durable is None:  # nothing kept: no replica to wait for
            receivers: int = await self.connector.send(publish[0], channel, payload)
            return receivers
        keys: list[tuple[str, str]] = []
        commands: list[Sequence[Any]] = []
        if durable is not None:
            keys.append((check_name(durable, "stream"), "stream"))
            commands.append(envelope.xadd(durable, data, head, maxlen, minid))
        dedup = None
        if dedup_key is not None:
            dedup = self._keys(check_name(durable or channel, "channel")).dedup(dedup_key)
        replies = await compound.send(
            self.connector,
            dedup,
            dedup_ttl,
            keys,
            commands,
            publish,
            channel,
            payload,
            through=send,
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
        key: str | None = None,
        wait_replicas: int | None = None,
    ) -> str | None:
        """Add ``data`` to a list queue (after ``delay`` seconds); returns the message id,
        or None when ``dedup_key`` was seen within ``dedup_ttl`` seconds. ``notify`` also
        publishes the message to that channel, in the same atomic step. ``key`` picks the
        partition of a partitioned queue (the same key, the same partition)."""
        send = self._sender(wait_replicas)
        target = await self.layouts.pick(check_name(queue, "queue"), key or dedup_key)
        msg_id, item = envelope.new_item(data, headers)
        if dedup_key is None and notify is None and not delay:
            await send("RPUSH", target, item)  # the hot path
            if self.config.track:
                await self._track("queue", queue, [msg_id])
            return msg_id
        keys = self._keys(target)
        if dedup_key is None and notify is None:
            await self.connector.run(scripts.delay(keys.delayed, to_ms(delay), [item]), send)
            await self._track("queue", queue, [msg_id])
            return msg_id
        if delay:
            push: Sequence[Any] = ("ZADD", keys.delayed, b"\0due:%d" % to_ms(delay), item)
            touched = (keys.delayed, "zset")
        else:
            push, touched = ("RPUSH", target, item), (target, "list")
        publish = await self._publish_command(notify, None, target) if notify else None
        dedup = keys.dedup(dedup_key) if dedup_key is not None else None
        replies = await compound.send(
            self.connector, dedup, dedup_ttl, [touched], [push], publish, notify, item,
            through=send,
        )  # fmt: skip
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
        key: str | None = None,
        wait_replicas: int | None = None,
    ) -> list[str]:
        """Add many items to a list queue in one round trip (per node); their ids."""
        send = self._sender(wait_replicas)
        ids, packed = envelope.pack_items(items)
        for target, part in (await self._spread(check_name(queue, "queue"), packed, key)).items():
            keys = self._keys(target)
            if delay:
                await self.connector.run(scripts.delay(keys.delayed, to_ms(delay), part), send)
            elif notify is None:
                await send("RPUSH", target, *part)
            else:
                publish = await self._publish_command(notify, None, target)
                push: list[Sequence[Any]] = [("RPUSH", target, *part)]
                await compound.send(
                    self.connector, None, 0, [(target, "list")], push, publish, notify, *part,
                    through=send,
                )  # fmt: skip
        if ids:
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
        key: str | None = None,
        wait_replicas: int | None = None,
    ) -> str | None:
        """Add ``data`` to a priority queue; 0 is the most urgent, up to 8191. FIFO holds
        within a level (of a partition). Returns the message id (None for a duplicate
        ``dedup_key``). ``key`` picks the partition of a partitioned queue."""
        send = self._sender(wait_replicas)
        target = await self.layouts.pick(check_name(queue, "queue"), key or dedup_key)
        keys = self._keys(target)
        level = check_priority(priority)
        msg_id, item = envelope.new_item(data, headers)
        if dedup_key is not None and delay:
            due = b"\0due:%d" % to_ms(delay)
            command = ("ZADD", keys.delayed, due, delayed_member(level, item))
            replies = await compound.send(
                self.connector, keys.dedup(dedup_key), dedup_ttl, [(keys.delayed, "zset")],
                [command], through=send,
            )  # fmt: skip
            added = None if replies is None else 1
        elif dedup_key is not None:
            call = scripts.priority_push(
                target, keys.seq, keys.wake, [(level, item)],
                dedup=keys.dedup(dedup_key), ttl_ms=to_ms(dedup_ttl),
            )  # fmt: skip
            added = await self.connector.run(call, send)
        else:
            added = await self._push_priority(target, [item], level, delay, send)
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
        key: str | None = None,
        wait_replicas: int | None = None,
    ) -> list[str]:
        """Add many items at one priority level, in order (per partition), in one round
        trip (per node)."""
        send = self._sender(wait_replicas)
        level = check_priority(priority)
        ids, packed = envelope.pack_items(items)
        for target, part in (await self._spread(check_name(queue, "queue"), packed, key)).items():
            await self._push_priority(target, part, level, delay, send)
        if ids:
            await self._track("priority", queue, ids)
        return ids

    async def _push_priority(
        self,
        target: str,
        items: list[bytes],
        priority: int,
        delay: float | None,
        send: Sender | WaitingSender,
    ) -> int:
        keys = self._keys(target)
        if delay:
            members = [delayed_member(priority, item) for item in items]
            call = scripts.delay(keys.delayed, to_ms(delay), members)
            return int(await self.connector.run(call, send))
        pushed = [(priority, item) for item in items]
        call = scripts.priority_push(target, keys.seq, keys.wake, pushed)
        return int(await self.connector.run(call, send))

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
        key: str | None = None,
        wait_replicas: int | None = None,
    ) -> str | None:
        """XADD ``data`` to a stream (JSON in the field ``data``); returns the entry id (None
        for a duplicate ``dedup_key``). ``maxlen``/``minid`` trim the stream (each partition)
        approximately. ``index`` names payload fields whose values index the entry, for
        ``find``. ``key`` picks the partition of a partitioned stream."""
        send = self._sender(wait_replicas)
        target = await self.layouts.pick(check_name(stream, "stream"), key or dedup_key)
        args = envelope.xadd(target, data, envelope.encode_headers(headers), maxlen, minid)
        if dedup_key is None and not index:
            entry_id: bytes = await send(*args)
            await self._track("stream", stream, [entry_id.decode()])
            return entry_id.decode()
        keys = self._keys(target)
        commands: list[Sequence[Any]] = [args]
        touched = [(target, "stream")]
        for index_key in self.indexes.keys_of(target, data, index):
            commands += [("SADD", index_key, ID), ("SADD", keys.indexes, index_key)]
            touched.append((index_key, "set"))
        if index:
            touched.append((keys.indexes, "set"))
        dedup = keys.dedup(dedup_key) if dedup_key is not None else None
        replies = await compound.send(
            self.connector, dedup, dedup_ttl, touched, commands, through=send
        )
        if replies is None:
            return None
        reply = replies[0]
        if index and (maxlen is not None or minid is not None):
            await self.indexes.trimmed(target)
        await self._track("stream", stream, [reply.decode()])
        return str(reply.decode())

    async def append_many(
        self,
        stream: str,
        items: Iterable[Any],
        *,
        maxlen: int | None = None,
        minid: str | None = None,
        key: str | None = None,
        wait_replicas: int | None = None,
    ) -> list[str]:
        """XADD many entries in one round trip (per node); their ids."""
        send = self._sender(wait_replicas)
        name = check_name(stream, "stream")
        items = list(items)
        targets = [await self.layouts.pick(name, key) for _ in items]
        pairs = zip(targets, items, strict=True)
        commands = [envelope.xadd(target, item, None, maxlen, minid) for target, item in pairs]
        if not commands:
            return []
        ids = [entry_id.decode() for entry_id in await send.many(*commands)]
        await self._track("stream", stream, ids)
        return ids

    async def _spread(self, name: str, packed: list[bytes], key: str | None) -> dict[str, Any]:
        """``packed`` items by the partition each goes to (one, for the key or no layout)."""
        parts: dict[str, list[bytes]] = {}
        for item in packed:
            parts.setdefault(await self.layouts.pick(name, key), []).append(item)
        return parts

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
                await self.tracker.published(source, ids, kind)
            except Exception as exc:
                log.warning("status of %d messages to %s not recorded: %r", len(ids), source, exc)
