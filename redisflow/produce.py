"""The producers of a ``Client``: publish, enqueue, enqueue_priority, append, and their
``_many`` forms.

Each public method checks its options, describes its send as an ``Outgoing`` and hands it
to ``send_outgoing``: through the produce middleware when the flow has some
(``middleware.py``), else straight to its twin in ``writes.py``, which writes it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable, Sequence
from typing import Any

from .errors import ConfigError
from .middleware import Outgoing, ProduceChain, ProduceNext
from .protocol import envelope
from .protocol.priority import check_priority
from .writes import Writes

#: Default dedup window, in seconds.
DEDUP_TTL = 3600.0


class Producers(Writes):
    """The producer methods of ``Client`` (a base class of it, over the connector, config,
    layouts, tracker and indexes the client sets up). Every producer takes
    ``wait_replicas``: return only once that many replicas acknowledged the write (else
    ``ReplicationError``; default: the flow's ``wait_replicas``, 0)."""

    #: The produce middleware chain (None: no middleware has a ``produce``).
    produce_chain: ProduceChain | None = None

    def send_outgoing(self, out: Outgoing, send: ProduceNext) -> Awaitable[Any]:
        """Pass ``out`` through the produce middleware, then to ``send`` (what the producer
        methods, retries and dead-letter replays call)."""
        chain = self.produce_chain
        return send(out) if chain is None else chain(out, send)

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
        "Cluster", for a sharded channel in another slot), trimmed by ``maxlen``/``minid``.
        ``headers`` wrap the message in redisflow's envelope (plain-JSON subscribers of
        other clients then see the envelope)."""
        if durable is None and (maxlen is not None or minid is not None):
            raise ConfigError("maxlen and minid trim the durable stream: give durable= too")
        explicit = bool(headers)

        def send(out: Outgoing) -> Awaitable[int | None]:
            return self._publish(
                out, explicit, dedup_key, dedup_ttl, durable, maxlen, minid, sharded, wait_replicas
            )

        options = {"dedup_key": dedup_key, "durable": durable, "sharded": sharded}
        out = Outgoing("channel", channel, data, _headers(headers), options=options)
        result: int | None = await self.send_outgoing(out, send)
        return result

    async def publish_many(
        self,
        channel: str,
        items: Iterable[Any],
        *,
        headers: dict[str, str] | None = None,
        sharded: bool | None = None,
    ) -> int:
        """PUBLISH (or SPUBLISH) each item in one round trip; the total number of receivers.
        ``headers`` (the same for each) as for ``publish``."""
        explicit = bool(headers)

        def send(out: Outgoing) -> Awaitable[int]:
            return self._publish_many(out, explicit, sharded)

        out = Outgoing("channel", channel, list(items), _headers(headers), many=True)
        result: int = await self.send_outgoing(out, send)
        return result

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

        def send(out: Outgoing) -> Awaitable[str | None]:
            return self._enqueue(out, delay, dedup_key, dedup_ttl, notify, key, wait_replicas)

        options = {"delay": delay, "dedup_key": dedup_key, "key": key}
        out = Outgoing("queue", queue, data, _headers(headers), options=options)
        result: str | None = await self.send_outgoing(out, send)
        return result

    async def enqueue_many(
        self,
        queue: str,
        items: Iterable[Any],
        *,
        delay: float | None = None,
        headers: dict[str, str] | None = None,
        notify: str | None = None,
        key: str | None = None,
        wait_replicas: int | None = None,
    ) -> list[str]:
        """Add many items to a list queue in one round trip (per node); their ids.
        ``headers``: the same for each."""

        def send(out: Outgoing) -> Awaitable[list[str]]:
            return self._enqueue_many(out, delay, notify, key, wait_replicas)

        options = {"delay": delay, "key": key}
        out = Outgoing("queue", queue, list(items), _headers(headers), True, options=options)
        result: list[str] = await self.send_outgoing(out, send)
        return result

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
        level = check_priority(priority)

        def send(out: Outgoing) -> Awaitable[str | None]:
            return self._enqueue_priority(
                out, level, delay, dedup_key, dedup_ttl, key, wait_replicas
            )

        options = {"priority": level, "delay": delay, "dedup_key": dedup_key, "key": key}
        out = Outgoing("priority", queue, data, _headers(headers), options=options)
        result: str | None = await self.send_outgoing(out, send)
        return result

    async def enqueue_priority_many(
        self,
        queue: str,
        items: Iterable[Any],
        *,
        priority: int = 0,
        delay: float | None = None,
        headers: dict[str, str] | None = None,
        key: str | None = None,
        wait_replicas: int | None = None,
    ) -> list[str]:
        """Add many items at one priority level, in order (per partition), in one round
        trip (per node). ``headers``: the same for each."""
        level = check_priority(priority)

        def send(out: Outgoing) -> Awaitable[list[str]]:
            return self._enqueue_priority_many(out, level, delay, key, wait_replicas)

        options = {"priority": level, "delay": delay, "key": key}
        out = Outgoing("priority", queue, list(items), _headers(headers), True, options=options)
        result: list[str] = await self.send_outgoing(out, send)
        return result

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
        trim = envelope.trim_args(maxlen, minid)  # checked before any middleware runs

        def send(out: Outgoing) -> Awaitable[str | None]:
            return self._append(out, trim, dedup_key, dedup_ttl, index, key, wait_replicas)

        options = {"maxlen": maxlen, "minid": minid, "dedup_key": dedup_key, "key": key}
        out = Outgoing("stream", stream, data, _headers(headers), options=options)
        result: str | None = await self.send_outgoing(out, send)
        return result

    async def append_many(
        self,
        stream: str,
        items: Iterable[Any],
        *,
        maxlen: int | None = None,
        minid: str | None = None,
        headers: dict[str, str] | None = None,
        key: str | None = None,
        wait_replicas: int | None = None,
    ) -> list[str]:
        """XADD many entries in one round trip (per node); their ids. ``headers``: the same
        for each."""
        trim = envelope.trim_args(maxlen, minid)

        def send(out: Outgoing) -> Awaitable[list[str]]:
            return self._append_many(out, trim, key, wait_replicas)

        options = {"maxlen": maxlen, "minid": minid, "key": key}
        out = Outgoing("stream", stream, list(items), _headers(headers), True, options=options)
        result: list[str] = await self.send_outgoing(out, send)
        return result


def _headers(headers: dict[str, str] | None) -> dict[str, str]:
    """A caller's headers, checked, as the mutable map middleware gets."""
    checked = envelope.encode_headers(headers)
    return dict(checked) if checked else {}
