"""The sending side of a flow: producers, and the reads that go with what they wrote.

Every producer call is one round trip, shared with concurrent calls (``Pipeliner``). Options
that make a send conditional or compound run in one Lua call with it, so they are atomic:

- ``dedup_key``: nothing is sent if the same key was seen within ``dedup_ttl`` seconds (a
  per-key ``SET NX PX``, REDIS-NOTES "Dedup"); the call returns None.
- ``notify`` (queues): the message is also PUBLISHed, as a wake-up; the list stays the only
  source of truth, so a notified consumer never handles it twice.
- ``durable`` (channels): the message is also appended to a stream, for consumers that were
  offline (fast path + reliable path).
- ``index`` (streams): the entry id is added to one set per indexed field value; ``find``
  reads them back in stream order.

With ``Flow(track=True)`` each message also gets a status record (see ``tracking``).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar, overload

import orjson
from pydantic import TypeAdapter

from . import codec
from .connection import Connector, Pipeliner, Script
from .deadletters import DeadLetters
from .errors import ConfigError
from .keys import Keys
from .message import Kind
from .ratelimit import Limiter, RateLimit
from .tracking import MessageStatus, Tracker
from .transports.priority import MAX_PRIORITY, PUSH, STATS
from .transports.queue import DELAY

T = TypeVar("T")

log = logging.getLogger("redisflow")

PRODUCE = Script("produce")
FIND = Script("find")
PRUNE = Script("prune_index")
_PRUNE_EVERY = itertools.cycle(range(1000))  # 0 once per 1,000 trimming indexed appends

#: Default dedup window, in seconds.
DEDUP_TTL = 3600.0
ID = b"\0id"  # produce.lua: the reply of the first command (the XADD's entry id)


class Producer:
    """Producer methods of ``Flow``; needs ``url``, ``prefix``, ``max_connections``."""

    url: str
    prefix: str
    max_connections: int
    track: bool
    track_ttl: float
    _connector: Connector | None

    @property
    def redis(self) -> Any:
        """The pooled redis-py client (``redis.asyncio.Redis``) the producers use."""
        return self._connection().client

    @property
    def _send(self) -> Pipeliner:
        return self._connection().send

    @property
    def _tracker(self) -> Tracker | None:
        return Tracker(self._send, self.prefix, self.track_ttl) if self.track else None

    def _connection(self) -> Connector:
        if self._connector is None:
            self._connector = Connector(self.url, max_connections=self.max_connections)
        return self._connector

    def keys(self, name: str) -> Keys:
        """The auxiliary keys redisflow keeps for a queue, stream or channel ``name``."""
        return Keys(self.prefix, name)

    # -- channels -------------------------------------------------------------------------

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
    ) -> int | None:
        """PUBLISH ``data`` as JSON to ``channel``; returns the number of receivers (None for
        a duplicate). ``durable="stream"`` also appends it to that stream, atomically,
        trimmed (approximately) by ``maxlen`` or ``minid`` as ``append`` does."""
        if durable is None and (maxlen is not None or minid is not None):
            raise ConfigError("maxlen and minid trim the durable stream: give durable= too")
        payload = codec.encode(data)
        if headers:
            payload = codec.envelope(payload, codec.new_id(), headers=headers)
        if dedup_key is None and durable is None:
            receivers: int = await self._send("PUBLISH", channel, payload)
            return receivers
        commands: list[Sequence[Any]] = [("PUBLISH", channel, payload)]
        keys: list[str] = []
        if durable is not None:
            keys.append(durable)
            trim = _trim(maxlen, minid)
            commands.append(("XADD", durable, *trim, "*", *_field_args(data, headers)))
        dedup = self.keys(durable or channel).dedup(dedup_key) if dedup_key is not None else None
        result: int | None = await self._produce(dedup, dedup_ttl, keys, commands)
        return result

    async def publish_many(self, channel: str, items: Iterable[Any]) -> int:
        """PUBLISH each item in one round trip; returns the total number of receivers."""
        commands = [("PUBLISH", channel, codec.encode(item)) for item in items]
        return sum(await self._send.many(*commands)) if commands else 0

    # -- list queues ----------------------------------------------------------------------

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
        msg_id = codec.new_id()
        item = codec.envelope(codec.encode(data), msg_id, headers=headers)
        keys = self.keys(queue)
        if dedup_key is None and notify is None:
            if delay:
                await DELAY(self._send, [keys.delayed], [_ms(delay), item])
            else:
                await self._send("RPUSH", queue, item)
            await self._track("queue", queue, [msg_id])
            return msg_id
        if delay:
            push: Sequence[Any] = ("ZADD", keys.delayed, b"\0due:%d" % _ms(delay), item)
            target = keys.delayed
        else:
            push, target = ("RPUSH", queue, item), queue
        commands = [push]
        if notify is not None:
            commands.append(("PUBLISH", notify, item))
        dedup = keys.dedup(dedup_key) if dedup_key is not None else None
        if await self._produce(dedup, dedup_ttl, [target], commands) is None:
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
        ids, packed = self._pack(items)
        if not packed:
            return ids
        keys = self.keys(queue)
        if delay:
            await DELAY(self._send, [keys.delayed], [_ms(delay), *packed])
        elif notify is None:
            await self._send("RPUSH", queue, *packed)
        else:
            commands: list[Sequence[Any]] = [("RPUSH", queue, *packed)]
            commands += [("PUBLISH", notify, item) for item in packed]
            await self._produce(None, 0, [queue], commands)
        await self._track("queue", queue, ids)
        return ids

    # -- priority queues ------------------------------------------------------------------

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
        msg_id = codec.new_id()
        item = codec.envelope(codec.encode(data), msg_id, headers=headers)
        level = _priority(priority)
        keys = self.keys(queue)
        if dedup_key is not None and delay:
            member = b"%d:%s" % (level, item)
            due = b"\0due:%d" % _ms(delay)
            command = ("ZADD", keys.delayed, due, member)
            added = await self._produce(keys.dedup(dedup_key), dedup_ttl, [keys.delayed], [command])
        elif dedup_key is not None:
            added = await PUSH(
                self._send,
                [queue, keys.seq, keys.wake, keys.dedup(dedup_key)],
                [_ms(dedup_ttl), level, item],
            )
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
        ids, packed = self._pack(items)
        if packed:
            await self._push_priority(queue, packed, _priority(priority), delay)
            await self._track("priority", queue, ids)
        return ids

    async def _push_priority(
        self, queue: str, items: list[bytes], priority: int, delay: float | None
    ) -> int:
        keys = self.keys(queue)
        if delay:
            members = [b"%d:%s" % (priority, item) for item in items]
            return int(await DELAY(self._send, [keys.delayed], [_ms(delay), *members]))
        argv: list[Any] = []
        for item in items:
            argv += (priority, item)
        return int(await PUSH(self._send, [queue, keys.seq, keys.wake], argv))

    async def priority_stats(self, queue: str) -> dict[int, int]:
        """How many messages wait in a priority queue at each level in use, exactly
        (leased and delayed messages are not counted)."""
        flat = await STATS(self._send, [queue], [])
        return {int(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}

    # -- streams --------------------------------------------------------------------------

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
        args = ("XADD", stream, *_trim(maxlen, minid), "*", *_field_args(data, headers))
        if dedup_key is None and not index:
            entry_id: bytes = await self._send(*args)
            await self._track("stream", stream, [entry_id.decode()])
            return entry_id.decode()
        keys = self.keys(stream)
        commands: list[Sequence[Any]] = [args]
        touched = [stream]
        for key in self._index_keys(stream, data, index):
            commands += [("SADD", key, ID), ("SADD", keys.indexes, key)]
            touched.append(key)
        if index:
            touched.append(keys.indexes)
        dedup = keys.dedup(dedup_key) if dedup_key is not None else None
        reply = await self._produce(dedup, dedup_ttl, touched, commands)
        if reply is None:
            return None
        if index and (maxlen is not None or minid is not None) and not next(_PRUNE_EVERY):
            await self.prune_indexes(stream)
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
        trim = _trim(maxlen, minid)
        commands = [("XADD", stream, *trim, "*", *_field_args(item, None)) for item in items]
        if not commands:
            return []
        ids = [entry_id.decode() for entry_id in await self._send.many(*commands)]
        await self._track("stream", stream, ids)
        return ids

    def _index_keys(self, stream: str, data: Any, fields: Sequence[str]) -> list[str]:
        if not fields:
            return []
        if isinstance(fields, str):
            raise ConfigError(f"index must be a sequence of field names, not {fields!r}")
        values = orjson.loads(codec.encode(data))
        if not isinstance(values, dict):
            raise ConfigError("index needs a payload that is a JSON object")
        keys = self.keys(stream)
        found = []
        for name in fields:
            if name not in values or isinstance(values[name], dict | list):
                raise ConfigError(f"index field {name!r} is missing or not a scalar")
            value = values[name]
            found.append(keys.index(name, value if isinstance(value, str) else _json(value)))
        return found

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
        if not criteria:
            raise ConfigError("find needs at least one field=value criterion")
        keys = self.keys(stream)
        index = [
            keys.index(name, value if isinstance(value, str) else _json(value))
            for name, value in criteria.items()
        ]
        entries = await FIND(self._send, [stream, *index], [limit, int(newest_first)])
        adapter: TypeAdapter[Any] = TypeAdapter(model)
        found = []
        for entry_id, flat in entries:
            fields = dict(zip(flat[::2], flat[1::2], strict=True))
            found.append((entry_id.decode(), adapter.validate_json(fields.get(b"data", b"null"))))
        return found

    async def prune_indexes(self, stream: str) -> int:
        """Remove index entries of ``stream`` whose entries were trimmed away (``find``
        also drops those it meets); returns how many were removed. Appends with ``index``
        and a trim (``maxlen``/``minid``) run it every 1,000 calls per process."""
        keys = self.keys(stream)
        index_keys = [key.decode() for key in await self._send("SMEMBERS", keys.indexes)]
        removed: int = await PRUNE(self._send, [stream, keys.indexes, *index_keys], [])
        return removed

    # -- tracking -------------------------------------------------------------------------

    async def status(self, message_id: str) -> MessageStatus | None:
        """The status record of a tracked message (``Flow(track=True)``), or None."""
        return await self._status_reader().status(message_id)

    async def status_counts(self, source: str) -> dict[str, int]:
        """Counters of a tracked source: ``published`` and ``<handler>:<status>``."""
        return await self._status_reader().counts(source)

    def _status_reader(self) -> Tracker:
        return Tracker(self._send, self.prefix, self.track_ttl)

    # -- rate limits and memory ------------------------------------------------------------

    def limiter(self, name: str, rate: RateLimit) -> Limiter:
        """A rate limiter shared by every process using the same ``name`` and prefix::

        limiter = flow.limiter("webhooks", RateLimit(10, per=60))
        async with limiter.acquire(url): ...
        """
        return Limiter(self.redis, self.keys(name), rate)

    def _managed(self) -> set[str]:
        """Names of the sources redisflow manages here (``Flow`` adds its handlers')."""
        return set()

    async def memory(self, *names: str) -> dict[str, Any]:
        """Redis's ``used_memory``, and the type, length and bytes (MEMORY USAGE) of every
        key redisflow manages for the flow's sources and ``names``: queues, streams,
        delayed sets, dead letters, counters and stream indexes. Three round trips."""
        sources = sorted(self._managed() | set(names))
        registries = [self.keys(name).indexes for name in sources]
        info, *indexed = await self._send.many(
            ("INFO", "memory"), *(("SMEMBERS", key) for key in registries)
        )
        candidates: list[str] = []
        for name, index_keys in zip(sources, indexed, strict=True):
            keys = self.keys(name)
            candidates += [name, keys.delayed, keys.dead, keys.counts, keys.indexes]
            candidates += [key.decode() for key in index_keys]
        types = await self._send.many(*(("TYPE", key) for key in candidates))
        present = [(k, t.decode()) for k, t in zip(candidates, types, strict=True) if t != b"none"]
        sizes = await self._send.many(
            *(
                cmd
                for key, kind in present
                for cmd in (_LENGTH[kind](key), ("MEMORY", "USAGE", key))
            )
        )
        used = next(
            int(line.split(b":")[1])
            for line in info.splitlines()
            if line.startswith(b"used_memory:")
        )
        return {
            "used_memory": used,
            "keys": {
                key: {"type": kind, "length": int(sizes[2 * i]), "bytes": int(sizes[2 * i + 1])}
                for i, (key, kind) in enumerate(present)
            },
        }

    def dlq(self, name: str, kind: Kind = "queue") -> DeadLetters:
        """The dead letters of a source, to list, show, replay or purge (``kind`` says
        where a replay sends them)::

            await flow.dlq("emails").replay(error="timed out", older_than=3600)
        """
        return DeadLetters(self, name, kind)

    # -- shared ---------------------------------------------------------------------------

    async def _produce(
        self, dedup: str | None, ttl: float, keys: list[str], commands: Sequence[Sequence[Any]]
    ) -> Any:
        """Run ``commands`` in one script (atomic), unless ``dedup`` (a key) was seen within
        ``ttl`` seconds; ``keys`` are every key they touch, declared for Redis Cluster."""
        argv: list[Any] = [_ms(ttl) or 1 if dedup else 0]
        for command in commands:
            argv += (len(command), *command)
        return await PRODUCE(self._send, [dedup, *keys] if dedup else keys, argv)

    async def _track(self, kind: str, source: str, ids: list[str]) -> None:
        # After the send: a status record that cannot be written must not make a sent
        # message look unsent (the caller would send it again).
        if self._tracker is not None:
            try:
                await self._tracker.published(source, ids, kind)
            except Exception as exc:
                log.warning("status of %d messages to %s not recorded: %r", len(ids), source, exc)

    def _pack(self, items: Iterable[Any]) -> tuple[list[str], list[bytes]]:
        ids: list[str] = []
        packed: list[bytes] = []
        for item in items:
            msg_id = codec.new_id()
            ids.append(msg_id)
            packed.append(codec.envelope(codec.encode(item), msg_id))
        return ids, packed


_LENGTH: dict[str, Callable[[str], tuple[str, str]]] = {
    "list": lambda key: ("LLEN", key),
    "zset": lambda key: ("ZCARD", key),
    "stream": lambda key: ("XLEN", key),
    "set": lambda key: ("SCARD", key),
    "hash": lambda key: ("HLEN", key),
    "string": lambda key: ("STRLEN", key),
}


def _ms(seconds: float) -> int:
    if seconds < 0:
        raise ConfigError(f"delay and ttl must be >= 0 seconds, got {seconds}")
    return int(seconds * 1000)


def _priority(priority: int) -> int:
    if (
        not isinstance(priority, int)
        or isinstance(priority, bool)
        or not (0 <= priority <= MAX_PRIORITY)
    ):
        raise ConfigError(f"priority must be an integer from 0 to {MAX_PRIORITY}: {priority!r}")
    return priority


def _field_args(data: Any, headers: dict[str, str] | None) -> tuple[Any, ...]:
    if headers:
        return ("data", codec.encode(data), "headers", codec.encode(headers))
    return ("data", codec.encode(data))


def _trim(maxlen: int | None, minid: str | None) -> tuple[Any, ...]:
    if maxlen is not None and minid is not None:
        raise ConfigError("give maxlen or minid, not both")
    if maxlen is not None:
        return ("MAXLEN", "~", maxlen)
    if minid is not None:
        return ("MINID", "~", minid)
    return ()


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()
