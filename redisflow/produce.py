"""The producers of a ``Client``: publish, enqueue, enqueue_priority, append, and their
``_many`` forms.

Each public method checks its options and hands its send to its twin in ``writes.py``,
which writes it: straight away when the flow has no produce middleware (nothing else is
built on that path), else described as an ``Outgoing`` and passed through the chain
(``middleware.py``) first.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

from .errors import ConfigError
from .features import results
from .features.groups import check_group
from .middleware import Outgoing, ProduceChain, ProduceNext
from .protocol import envelope
from .protocol.priority import check_priority
from .writes import Headers, Writes

R = TypeVar("R")
#: A send's write, given the (possibly changed) name, payload and headers.
Write = Callable[[str, Any, Headers], Awaitable[R]]

#: Default dedup window, in seconds.
DEDUP_TTL = 3600.0


class Producers(Writes):
    """The producer methods of ``Client`` (a base class of it, over the connector, config,
    layouts, tracker and indexes the client sets up). Every producer takes
    ``wait_replicas``: return only once that many replicas acknowledged the write (else
    ``ReplicationError``; default: the flow's ``wait_replicas``, 0). The single-message
    sends to queues, priority queues and streams take ``result_ttl``: keep the handler's
    result that many seconds, for ``result(id)`` (``requests.py``)."""

    #: The produce middleware chain (None: no middleware has a ``produce``).
    produce_chain: ProduceChain | None = None

    def send_outgoing(self, out: Outgoing, send: ProduceNext) -> Awaitable[Any]:
        """Pass ``out`` through the produce middleware, then to ``send`` (what the producer
        methods, retries and dead-letter replays call)."""
        chain = self.produce_chain
        return send(out) if chain is None else chain(out, send)

    def _chained(self, out: Outgoing, write: Write[R]) -> Awaitable[R]:
        """``out`` through the produce chain (there is one), then written by ``write``."""
        chain = self.produce_chain
        assert chain is not None
        return chain(out, lambda out: write(out.name, out.payload, out.headers))

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

        if self.produce_chain is None:
            return await self._publish(channel, data, headers, explicit, dedup_key, dedup_ttl,
                                       durable, maxlen, minid, sharded, wait_replicas)  # fmt: skip

        def write(name: str, payload: Any, head: Headers) -> Awaitable[int | None]:
            return self._publish(name, payload, head, explicit, dedup_key, dedup_ttl, durable,
                                 maxlen, minid, sharded, wait_replicas)  # fmt: skip

        options = {"dedup_key": dedup_key, "durable": durable, "sharded": sharded}
        out = Outgoing("channel", channel, data, _headers(headers), options=options)
        return await self._chained(out, write)

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

        def write(name: str, payload: Any, head: Headers) -> Awaitable[int]:
            return self._publish_many(name, payload, head, explicit, sharded)

        if self.produce_chain is None:
            return await write(channel, items, headers)
        out = Outgoing("channel", channel, list(items), _headers(headers), many=True)
        return await self._chained(out, write)

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
        group: str | None = None,
        wait_replicas: int | None = None,
        result_ttl: float | None = None,
    ) -> str | None:
        """Add ``data`` to a list queue (after ``delay`` seconds); returns the message id,
        or None when ``dedup_key`` was seen within ``dedup_ttl`` seconds. ``notify`` also
        publishes the message to that channel, in the same atomic step. ``key`` picks the
        partition of a partitioned queue (the same key, the same partition). ``group``: the
        fair group of a queue consumed with ``groups=`` (a tenant, say; it picks the
        partition too); without one, the default group."""
        group = _group(group, key, notify)

        if result_ttl is not None:  # ask for the result (features/results.py)
            headers = results.ask(dict(envelope.encode_headers(headers) or {}), result_ttl)
        if self.produce_chain is None:  # the hot path: nothing built that only a chain needs
            return await self._enqueue(queue, data, headers, delay, dedup_key, dedup_ttl, notify,
                                       key, group, wait_replicas)  # fmt: skip

        def write(name: str, payload: Any, head: Headers) -> Awaitable[str | None]:
            return self._enqueue(name, payload, head, delay, dedup_key, dedup_ttl, notify, key,
                                 group, wait_replicas)  # fmt: skip

        options = {"delay": delay, "dedup_key": dedup_key, "key": key, "group": group}
        out = Outgoing("queue", queue, data, _headers(headers), options=options)
        return await self._chained(out, write)

    async def enqueue_many(
        self,
        queue: str,
        items: Iterable[Any],
        *,
        delay: float | None = None,
        headers: dict[str, str] | None = None,
        notify: str | None = None,
        key: str | None = None,
        group: str | None = None,
        wait_replicas: int | None = None,
    ) -> list[str]:
        """Add many items to a list queue in one round trip (per node); their ids.
        ``headers``: the same for each; ``group``: the fair group of them all."""
        group = _group(group, key, notify)

        def write(name: str, payload: Any, head: Headers) -> Awaitable[list[str]]:
            return self._enqueue_many(name, payload, head, delay, notify, key, group,
                                      wait_replicas)  # fmt: skip

        if self.produce_chain is None:
            return await write(queue, items, headers)
        options = {"delay": delay, "key": key, "group": group}
        out = Outgoing("queue", queue, list(items), _headers(headers), True, options=options)
        return await self._chained(out, write)

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
        group: str | None = None,
        wait_replicas: int | None = None,
        result_ttl: float | None = None,
    ) -> str | None:
        """Add ``data`` to a priority queue; 0 is the most urgent, up to 8191. FIFO holds
        within a level (of a partition). Returns the message id (None for a duplicate
        ``dedup_key``). ``key`` picks the partition of a partitioned queue; ``group`` the
        fair group (priority order holds within a group)."""
        level = check_priority(priority)
        group = _group(group, key)

        if result_ttl is not None:  # ask for the result (features/results.py)
            headers = results.ask(dict(envelope.encode_headers(headers) or {}), result_ttl)
        if self.produce_chain is None:
            return await self._enqueue_priority(queue, data, headers, level, delay, dedup_key,
                                                dedup_ttl, key, group, wait_replicas)  # fmt: skip

        def write(name: str, payload: Any, head: Headers) -> Awaitable[str | None]:
            return self._enqueue_priority(name, payload, head, level, delay, dedup_key,
                                          dedup_ttl, key, group, wait_replicas)  # fmt: skip

        options = {
            "priority": level, "delay": delay, "dedup_key": dedup_key, "key": key, "group": group
        }  # fmt: skip
        out = Outgoing("priority", queue, data, _headers(headers), options=options)
        return await self._chained(out, write)

    async def enqueue_priority_many(
        self,
        queue: str,
        items: Iterable[Any],
        *,
        priority: int = 0,
        delay: float | None = None,
        headers: dict[str, str] | None = None,
        key: str | None = None,
        group: str | None = None,
        wait_replicas: int | None = None,
    ) -> list[str]:
        """Add many items at one priority level, in order (per partition), in one round
        trip (per node). ``headers``: the same for each; ``group``: the fair group of all."""
        level = check_priority(priority)
        group = _group(group, key)

        def write(name: str, payload: Any, head: Headers) -> Awaitable[list[str]]:
            return self._enqueue_priority_many(name, payload, head, level, delay, key, group,
                                               wait_replicas)  # fmt: skip

        if self.produce_chain is None:
            return await write(queue, items, headers)
        options = {"priority": level, "delay": delay, "key": key, "group": group}
        out = Outgoing("priority", queue, list(items), _headers(headers), True, options=options)
        return await self._chained(out, write)

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
        result_ttl: float | None = None,
    ) -> str | None:
        """XADD ``data`` to a stream (JSON in the field ``data``); returns the entry id (None
        for a duplicate ``dedup_key``). ``maxlen``/``minid`` trim the stream (each partition)
        approximately. ``index`` names payload fields whose values index the entry, for
        ``find``. ``key`` picks the partition of a partitioned stream."""
        trim = envelope.trim_args(maxlen, minid)  # checked before any middleware runs

        if result_ttl is not None:  # ask for the result (features/results.py)
            headers = results.ask(dict(envelope.encode_headers(headers) or {}), result_ttl)
        if self.produce_chain is None:
            return await self._append(stream, data, headers, trim, dedup_key, dedup_ttl, index,
                                      key, wait_replicas)  # fmt: skip

        def write(name: str, payload: Any, head: Headers) -> Awaitable[str | None]:
            return self._append(name, payload, head, trim, dedup_key, dedup_ttl, index, key,
                                wait_replicas)  # fmt: skip

        options = {"maxlen": maxlen, "minid": minid, "dedup_key": dedup_key, "key": key}
        out = Outgoing("stream", stream, data, _headers(headers), options=options)
        return await self._chained(out, write)

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

        def write(name: str, payload: Any, head: Headers) -> Awaitable[list[str]]:
            return self._append_many(name, payload, head, trim, key, wait_replicas)

        if self.produce_chain is None:
            return await write(stream, items, headers)
        options = {"maxlen": maxlen, "minid": minid, "key": key}
        out = Outgoing("stream", stream, list(items), _headers(headers), True, options=options)
        return await self._chained(out, write)


def _group(group: object, key: str | None, notify: str | None = None) -> str | None:
    """A producer's ``group``, checked (a group picks the partition itself)."""
    found = check_group(group)
    if found is not None and key is not None:
        raise ConfigError("give group= or key=, not both: a group's messages share a partition")
    if found is not None and notify is not None:
        raise ConfigError("notify= is not supported with group= (the consumers are woken)")
    return found


def _headers(headers: dict[str, str] | None) -> dict[str, str]:
    """A caller's headers, checked, as the mutable map middleware gets."""
    checked = envelope.encode_headers(headers)
    return dict(checked) if checked else {}
