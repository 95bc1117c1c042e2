"""How each send of ``produce.py`` is written to Redis (its name, payload and headers, after
the produce middleware when the flow has some): one command, or one script
(``features/compound.py``) when an option makes the send compound, auto-pipelined with
concurrent calls. A partitioned
source (``features/partitions.py``) takes a message on the partition of its ``key`` (or,
without one, of its ``dedup_key``, so the dedup check and the push share a slot), else round
robin; a ``_many`` call spreads its items round robin, one command per partition, in one
round trip per node.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .config import to_ms
from .features import compound, groups
from .keys import Keys, check_name
from .protocol import envelope, scripts
from .protocol.priority import delayed_member

if TYPE_CHECKING:
    from .config import FlowConfig
    from .connection import Connector, Sender, WaitingSender
    from .features.groups import GroupedQueues
    from .features.indexes import StreamIndexes
    from .features.partitions import Layouts
    from .features.tracking import Tracker

log = logging.getLogger("redisflow")

Headers = dict[str, str] | None  # a send's headers (checked by the write that encodes them)

ID = b"\0id"  # produce.lua: the reply of the first command (the XADD's entry id)


class Writes:
    """The writes of the producers of a ``Client`` (a base class of ``Producers``)."""

    connector: Connector
    config: FlowConfig
    layouts: Layouts
    grouped: GroupedQueues
    tracker: Tracker
    indexes: StreamIndexes

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

    def _channel_headers(self, headers: Headers, explicit: bool) -> Headers:
        """The headers a channel message carries: those the caller gave, and those
        middleware set only with ``channel_headers`` (plain-JSON subscribers must keep
        working: docs/design.md, "Middleware")."""
        if not headers or not (explicit or self.config.channel_headers):
            return None
        return envelope.encode_headers(headers)

    async def _publish(
        self,
        name: str,
        payload: Any,
        headers: Headers,
        explicit: bool,
        dedup_key: str | None,
        dedup_ttl: float,
        durable: str | None,
        maxlen: int | None,
        minid: str | None,
        sharded: bool | None,
        wait_replicas: int | None,
    ) -> int | None:
        channel, data = name, payload
        send = self._sender(wait_replicas)
        head = self._channel_headers(headers, explicit)
        payload = envelope.encode(data)
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

    async def _publish_many(
        self, name: str, payload: Any, headers: Headers, explicit: bool, sharded: bool | None
    ) -> int:
        command = (await self._publish_command(name, sharded, name))[0]
        head = self._channel_headers(headers, explicit)
        payloads = [envelope.encode(item) for item in payload]
        if head:
            payloads = [envelope.envelope(p, envelope.new_id(), headers=head) for p in payloads]
        commands = [(command, name, payload) for payload in payloads]
        return sum(await self.connector.send.many(*commands)) if commands else 0

    async def _enqueue(
        self,
        name: str,
        payload: Any,
        headers: Headers,
        delay: float | None,
        dedup_key: str | None,
        dedup_ttl: float,
        notify: str | None,
        key: str | None,
        group: str | None,
        wait_replicas: int | None,
    ) -> str | None:
        send = self._sender(wait_replicas)
        target = await self.layouts.pick(check_name(name, "queue"), group or key or dedup_key)
        msg_id, item = envelope.new_item(payload, headers)
        grouped = self.grouped.cached(name)  # without a round trip, most of the time
        if grouped is None:
            grouped = await self.grouped.contains(name)
        if notify is None and (group is not None or grouped):
            sent = await self._to_group("queue", target, group, [(0, item)], delay, dedup_key,
                                        dedup_ttl, send)  # fmt: skip
            if sent:
                await self._track("queue", name, [msg_id])
            return msg_id if sent else None
        if dedup_key is None and notify is None and not delay:
            await send("RPUSH", target, item)  # the hot path
            if self.config.track:
                await self._track("queue", name, [msg_id])
            return msg_id
        keys = self._keys(target)
        if dedup_key is None and notify is None:
            await self.connector.run(scripts.delay(keys.delayed, to_ms(delay), [item]), send)
            await self._track("queue", name, [msg_id])
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
        await self._track("queue", name, [msg_id])
        return msg_id

    async def _enqueue_many(
        self,
        name: str,
        payload: Any,
        headers: Headers,
        delay: float | None,
        notify: str | None,
        key: str | None,
        group: str | None,
        wait_replicas: int | None,
    ) -> list[str]:
        name = check_name(name, "queue")
        send = self._sender(wait_replicas)
        ids, packed = envelope.pack_items(payload, headers)
        for target, part in (await self._spread(name, packed, group or key)).items():
            keys = self._keys(target)
            if notify is None and (group is not None or await self.grouped.contains(name)):
                items = [(0, item) for item in part]
                await self._to_group("queue", target, group, items, delay, None, 0, send)
            elif delay:
                call = scripts.delay(keys.delayed, to_ms(delay), part)
                await self.connector.run(call, send)
            elif notify is None:
                await send("RPUSH", target, *part)
            else:
                publish = await self._publish_command(notify, None, target)
                push: list[Sequence[Any]] = [("RPUSH", target, *part)]
                await compound.send(
                    self.connector, None, 0, [(target, "list")], push, publish, notify,
                    *part, through=send,
                )  # fmt: skip
        if ids:
            await self._track("queue", name, ids)
        return ids

    async def _enqueue_priority(
        self,
        name: str,
        payload: Any,
        headers: Headers,
        level: int,
        delay: float | None,
        dedup_key: str | None,
        dedup_ttl: float,
        key: str | None,
        group: str | None,
        wait_replicas: int | None,
    ) -> str | None:
        send = self._sender(wait_replicas)
        target = await self.layouts.pick(check_name(name, "queue"), group or key or dedup_key)
        keys = self._keys(target)
        msg_id, item = envelope.new_item(payload, headers)
        added: int | None
        if group is not None or await self.grouped.contains(name):
            sent = await self._to_group(
                "priority", target, group, [(level, item)], delay, dedup_key, dedup_ttl, send
            )
            added = 1 if sent else None
        elif dedup_key is not None and delay:
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
        await self._track("priority", name, [msg_id])
        return msg_id

    async def _enqueue_priority_many(
        self,
        name: str,
        payload: Any,
        headers: Headers,
        level: int,
        delay: float | None,
        key: str | None,
        group: str | None,
        wait_replicas: int | None,
    ) -> list[str]:
        name = check_name(name, "queue")
        send = self._sender(wait_replicas)
        ids, packed = envelope.pack_items(payload, headers)
        grouped = group is not None or await self.grouped.contains(name)
        for target, part in (await self._spread(name, packed, group or key)).items():
            if grouped:
                items = [(level, item) for item in part]
                await self._to_group("priority", target, group, items, delay, None, 0, send)
            else:
                await self._push_priority(target, part, level, delay, send)
        if ids:
            await self._track("priority", name, ids)
        return ids

    async def _to_group(
        self,
        kind: str,
        target: str,
        group: str | None,
        items: list[tuple[int, bytes]],
        delay: float | None,
        dedup_key: str | None,
        dedup_ttl: float,
        send: Sender | WaitingSender,
    ) -> bool:
        """Send to a fair group (``features/groups.py``); False for a duplicate."""
        keys = self._keys(target)
        dedup = keys.dedup(dedup_key) if dedup_key is not None else None
        return await groups.push(
            self.connector, keys, kind, group, items, delay=delay, dedup=dedup, ttl=dedup_ttl,
            through=send,
        )  # fmt: skip

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

    async def _append(
        self,
        name: str,
        payload: Any,
        headers: Headers,
        trim: tuple[Any, ...],
        dedup_key: str | None,
        dedup_ttl: float,
        index: Sequence[str],
        key: str | None,
        wait_replicas: int | None,
    ) -> str | None:
        stream, data = name, payload
        send = self._sender(wait_replicas)
        target = await self.layouts.pick(check_name(stream, "stream"), key or dedup_key)
        args = envelope.xadd(target, data, envelope.encode_headers(headers), trim=trim)
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
        if index and trim:
            await self.indexes.trimmed(target)
        await self._track("stream", stream, [reply.decode()])
        return str(reply.decode())

    async def _append_many(
        self,
        name: str,
        payload: Any,
        headers: Headers,
        trim: tuple[Any, ...],
        key: str | None,
        wait_replicas: int | None,
    ) -> list[str]:
        name = check_name(name, "stream")
        send = self._sender(wait_replicas)
        head = envelope.encode_headers(headers)
        commands = [
            envelope.xadd(await self.layouts.pick(name, key), item, head, trim=trim)
            for item in payload
        ]
        if not commands:
            return []
        ids = [entry_id.decode() for entry_id in await send.many(*commands)]
        await self._track("stream", name, ids)
        return ids

    async def _spread(self, name: str, packed: list[bytes], key: str | None) -> dict[str, Any]:
        """``packed`` items by the partition each goes to (one, for the key or no layout)."""
        parts: dict[str, list[bytes]] = {}
        for item in packed:
            parts.setdefault(await self.layouts.pick(name, key), []).append(item)
        return parts
