"""Flow: the handler table, the decorators, the producers and the lifecycle of a service."""

from __future__ import annotations

import logging
import os
import signal
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

import anyio
from anyio.abc import TaskGroup

from . import codec
from .connection import CONNECTION_ERRORS, Connector
from .errors import ConfigError, RedisflowError
from .handler import Handler, Options
from .keys import Keys
from .message import Kind, Source
from .transports.base import Consumer
from .transports.channel import ChannelConsumer, ChannelHub
from .transports.priority import MAX_PRIORITY, PUSH, PriorityConsumer
from .transports.queue import DELAY, QueueConsumer
from .transports.stream import StreamConsumer

log = logging.getLogger("redisflow")

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_URL = "redis://localhost:6379/0"

CONSUMERS: dict[Kind, type[Consumer]] = {
    "channel": ChannelConsumer,
    "queue": QueueConsumer,
    "priority": PriorityConsumer,
    "stream": StreamConsumer,
}


@dataclass
class Settings:
    """Runtime settings shared by the consumers of one flow (see ``Flow`` for each)."""

    connector: Connector
    prefix: str
    grace_period: float
    block_timeout: float
    lease: float
    claim_idle: float
    batch_size: int
    prefetch: int
    dead_maxlen: int
    channel_buffer: int
    stream_start: str
    consumer_name: str
    worker_id: str = field(default_factory=lambda: os.urandom(6).hex())
    tick: float = 0.5
    spawn: Callable[..., Any] = lambda fn: None
    log: logging.Logger = log

    @property
    def claim_interval(self) -> float:
        """How often a stream consumer looks for entries of dead consumers."""
        return max(self.tick, self.claim_idle / 2)


class Flow:
    """A Redis messaging service: handlers registered with decorators, run by one event loop.

    ``url`` defaults to ``$REDISFLOW_URL``, else ``redis://localhost:6379/0``. ``prefix``
    namespaces every key redisflow owns. ``grace_period`` is how long in-flight handlers
    may run after a stop. ``name`` names this process's stream consumers (default
    ``host-pid``: give a stable name to re-read its own pending entries after a restart).
    ``lease`` is how long a silent queue worker keeps its messages before peers take them
    back; ``claim_idle`` the same for stream entries. ``batch_size`` is the most messages a
    fetch takes; ``prefetch`` the most a consumer holds. ``dead_maxlen`` bounds each
    dead-letter stream. ``channel_buffer`` is how many Pub/Sub messages wait per handler
    before new ones are dropped.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        prefix: str = "rf",
        grace_period: float = 10.0,
        name: str | None = None,
        lease: float = 15.0,
        claim_idle: float = 30.0,
        batch_size: int = 500,
        prefetch: int = 1000,
        block_timeout: float = 5.0,
        dead_maxlen: int = 100_000,
        channel_buffer: int = 10_000,
        stream_start: str = "0",
        max_connections: int = 32,
    ) -> None:
        if not prefix or any(c in prefix for c in "{} "):
            raise ConfigError(f"prefix must be non-empty, without braces or spaces: {prefix!r}")
        if not 1 <= batch_size <= 2000 or prefetch < 1:
            raise ConfigError("batch_size must be from 1 to 2000, and prefetch >= 1")
        if lease <= 1 or claim_idle <= 1:
            raise ConfigError("lease and claim_idle must be > 1 second")
        self.url = url or os.environ.get("REDISFLOW_URL") or DEFAULT_URL
        self.prefix = prefix
        self.max_connections = max_connections
        self._settings_args: dict[str, Any] = dict(
            prefix=prefix,
            grace_period=grace_period,
            block_timeout=block_timeout,
            lease=lease,
            claim_idle=claim_idle,
            batch_size=batch_size,
            prefetch=prefetch,
            dead_maxlen=dead_maxlen,
            channel_buffer=channel_buffer,
            stream_start=stream_start,
            consumer_name=name or f"{socket.gethostname()}-{os.getpid()}",
        )
        self.handlers: dict[tuple[Kind, str, str | None], Handler] = {}
        self.consumers: list[Consumer] = []
        self._connector: Connector | None = None
        self._tg: TaskGroup | None = None
        self._hub_scope: anyio.CancelScope | None = None

    # -- registration ---------------------------------------------------------------------

    def add_handler(
        self,
        kind: Kind,
        name: str,
        fn: Callable[..., Any],
        *,
        group: str | None = None,
        **options: Any,
    ) -> Handler:
        """Register ``fn`` for a source; what the ``on_*`` decorators call."""
        where = f"handler {getattr(fn, '__qualname__', fn)!r}"
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}: the {kind} name must be a non-empty string")
        if kind == "stream" and not group:
            raise ConfigError(f"{where}: a stream handler needs a consumer group")
        if self._tg is not None:
            raise ConfigError(f"{where}: cannot add a handler to a running flow")
        handler = Handler.build(fn, Source(kind, name, group), Options(**options))
        key = (kind, name, group)
        if key in self.handlers:
            other = self.handlers[key].name
            raise ConfigError(f"{where}: {handler.source} already has a handler, {other!r}")
        self.handlers[key] = handler
        return handler

    def on_channel(
        self,
        channel: str,
        *,
        concurrency: int = 16,
        max_attempts: int = 1,
        retry_delay: float = 1.0,
        timeout: float | None = None,
    ) -> Callable[[F], F]:
        """Handle the messages of a Pub/Sub channel (a glob such as ``orders.*`` subscribes
        to a pattern). At-most-once: messages published while the flow is down are gone;
        a failing message is retried in memory up to ``max_attempts``, then dead-lettered."""
        return self._decorator(
            "channel",
            channel,
            None,
            dict(
                concurrency=concurrency,
                max_attempts=max_attempts,
                retry_delay=retry_delay,
                timeout=timeout,
            ),
        )

    def on_queue(
        self,
        queue: str,
        *,
        concurrency: int = 16,
        max_attempts: int = 5,
        retry_delay: float = 1.0,
        retry_max_delay: float = 300.0,
        timeout: float | None = None,
        at_most_once: bool = False,
    ) -> Callable[[F], F]:
        """Handle a list queue (producers RPUSH, the consumer takes from the left).

        At-least-once: a message leaves Redis only once its handler is done with it. A
        failure is retried after ``retry_delay * 2**(attempt-1)`` (with jitter, at most
        ``retry_max_delay``) until ``max_attempts``, then dead-lettered. ``timeout`` cancels
        a handler that runs longer (a failed attempt). ``at_most_once`` pops destructively:
        faster, but a crash loses the messages being handled.
        """
        return self._decorator(
            "queue",
            queue,
            None,
            dict(
                concurrency=concurrency,
                max_attempts=max_attempts,
                retry_delay=retry_delay,
                retry_max_delay=retry_max_delay,
                timeout=timeout,
                at_most_once=at_most_once,
            ),
        )

    def on_priority(
        self,
        queue: str,
        *,
        concurrency: int = 16,
        max_attempts: int = 5,
        retry_delay: float = 1.0,
        retry_max_delay: float = 300.0,
        timeout: float | None = None,
        at_most_once: bool = False,
    ) -> Callable[[F], F]:
        """Handle a sorted-set priority queue: lowest priority number first, FIFO within a
        level. Delivery options as for ``on_queue``."""
        return self._decorator(
            "priority",
            queue,
            None,
            dict(
                concurrency=concurrency,
                max_attempts=max_attempts,
                retry_delay=retry_delay,
                retry_max_delay=retry_max_delay,
                timeout=timeout,
                at_most_once=at_most_once,
            ),
        )

    def on_stream(
        self,
        stream: str,
        *,
        group: str,
        concurrency: int = 16,
        max_attempts: int = 5,
        retry_delay: float = 1.0,
        retry_max_delay: float = 300.0,
        timeout: float | None = None,
    ) -> Callable[[F], F]:
        """Handle a stream through consumer group ``group`` (created with MKSTREAM, reading
        from the start of the stream). At-least-once; options as for ``on_queue``."""
        return self._decorator(
            "stream",
            stream,
            group,
            dict(
                concurrency=concurrency,
                max_attempts=max_attempts,
                retry_delay=retry_delay,
                retry_max_delay=retry_max_delay,
                timeout=timeout,
            ),
        )

    def _decorator(
        self, kind: Kind, name: str, group: str | None, options: dict[str, Any]
    ) -> Callable[[F], F]:
        def register(fn: F) -> F:
            self.add_handler(kind, name, fn, group=group, **options)
            return fn

        return register

    # -- producers ------------------------------------------------------------------------

    @property
    def redis(self) -> Any:
        """The pooled redis-py client (``redis.asyncio.Redis``) the producers use."""
        return self._connection().client

    def _connection(self) -> Connector:
        if self._connector is None:
            self._connector = Connector(self.url, max_connections=self.max_connections)
        return self._connector

    def keys(self, name: str) -> Keys:
        """The auxiliary keys redisflow keeps for a queue, stream or channel ``name``."""
        return Keys(self.prefix, name)

    async def publish(
        self, channel: str, data: Any, *, headers: dict[str, str] | None = None
    ) -> int:
        """PUBLISH ``data`` as JSON to ``channel``; returns the number of receivers."""
        payload = codec.encode(data)
        if headers:
            payload = codec.envelope(payload, codec.new_id(), headers=headers)
        receivers: int = await self.redis.publish(channel, payload)
        return receivers

    async def publish_many(self, channel: str, items: Iterable[Any]) -> int:
        """PUBLISH each item in one round trip; returns the total number of receivers."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for item in items:
                pipe.publish(channel, codec.encode(item))
            return sum(await pipe.execute())

    async def enqueue(
        self,
        queue: str,
        data: Any,
        *,
        delay: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> str:
        """Add ``data`` to a list queue (after ``delay`` seconds); returns the message id."""
        msg_id = codec.new_id()
        item = codec.envelope(codec.encode(data), msg_id, headers=headers)
        if delay:
            await DELAY(self.redis, [self.keys(queue).delayed], [_ms(delay), item])
        else:
            await self.redis.rpush(queue, item)
        return msg_id

    async def enqueue_many(
        self, queue: str, items: Iterable[Any], *, delay: float | None = None
    ) -> list[str]:
        """Add many items to a list queue in one round trip; returns their ids."""
        ids, packed = self._pack(items)
        if packed:
            if delay:
                await DELAY(self.redis, [self.keys(queue).delayed], [_ms(delay), *packed])
            else:
                await self.redis.rpush(queue, *packed)
        return ids

    async def enqueue_priority(
        self,
        queue: str,
        data: Any,
        *,
        priority: int = 0,
        delay: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> str:
        """Add ``data`` to a priority queue; 0 is the most urgent, up to 8191. FIFO holds
        within a level. Returns the message id."""
        msg_id = codec.new_id()
        item = codec.envelope(codec.encode(data), msg_id, headers=headers)
        await self._push_priority(queue, [item], _priority(priority), delay)
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
        return ids

    async def _push_priority(
        self, queue: str, items: list[bytes], priority: int, delay: float | None
    ) -> None:
        keys = self.keys(queue)
        if delay:
            members = [b"%d:%s" % (priority, item) for item in items]
            await DELAY(self.redis, [keys.delayed], [_ms(delay), *members])
            return
        argv: list[Any] = []
        for item in items:
            argv += (priority, item)
        await PUSH(self.redis, [queue, keys.seq, keys.wake], argv)

    async def append(
        self,
        stream: str,
        data: Any,
        *,
        maxlen: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> str:
        """XADD ``data`` to a stream (JSON in the field ``data``); returns the entry id.
        ``maxlen`` trims the stream approximately (``MAXLEN ~``)."""
        entry_id: bytes = await self.redis.xadd(
            stream, _fields(data, headers), maxlen=maxlen, approximate=True
        )
        return entry_id.decode()

    async def append_many(
        self, stream: str, items: Iterable[Any], *, maxlen: int | None = None
    ) -> list[str]:
        """XADD many entries in one round trip; returns their ids."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for item in items:
                pipe.xadd(stream, _fields(item, None), maxlen=maxlen, approximate=True)
            return [entry_id.decode() for entry_id in await pipe.execute()]

    def _pack(self, items: Iterable[Any]) -> tuple[list[str], list[bytes]]:
        ids: list[str] = []
        packed: list[bytes] = []
        for item in items:
            msg_id = codec.new_id()
            ids.append(msg_id)
            packed.append(codec.envelope(codec.encode(item), msg_id))
        return ids, packed

    async def dead_letters(self, name: str, count: int = 100) -> list[dict[str, str]]:
        """The oldest ``count`` dead letters of a queue, stream or channel, as str dicts."""
        entries = await self.redis.xrange(self.keys(name).dead, count=count)
        return [
            {
                "id": eid.decode(),
                **{k.decode(): v.decode("utf-8", "replace") for k, v in fields.items()},
            }
            for eid, fields in entries
        ]

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, start every consumer, and return once all are ready (subscribed, group
        created, lease taken). Errors during start-up are raised here."""
        if self._tg is not None:
            raise RedisflowError("this flow is already running")
        connector = self._connection()
        try:
            await connector.client.ping()
        except CONNECTION_ERRORS as exc:
            raise RedisflowError(f"cannot reach Redis at {_safe(self.url)}: {exc}") from exc
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        settings = Settings(connector=connector, spawn=tg.start_soon, **self._settings_args)
        self.consumers = [CONSUMERS[h.source.kind](h, settings) for h in self.handlers.values()]
        try:
            channels = [c for c in self.consumers if isinstance(c, ChannelConsumer)]
            if channels:
                await tg.start(self._run_hub, ChannelHub(channels, settings))
            for consumer in self.consumers:
                await tg.start(consumer.run)
                opts = consumer.options
                log.info(
                    "%s -> %s (concurrency %d%s)",
                    consumer.handler.source,
                    consumer.handler.name,
                    opts.concurrency,
                    ", at-most-once" if opts.at_most_once else "",
                )
        except BaseException:
            await self._shutdown()
            raise

    async def _run_hub(self, hub: ChannelHub, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        with anyio.CancelScope() as scope:
            self._hub_scope = scope
            await hub.run(task_status=task_status)

    async def stop(self) -> None:
        """Stop fetching, let in-flight handlers finish within the grace period, hand the
        rest back to Redis, and close the connections."""
        if self._tg is not None:
            await self._shutdown()

    async def _shutdown(self, exc_info: tuple[Any, Any, Any] = (None, None, None)) -> None:
        tg, self._tg = self._tg, None
        if self._hub_scope is not None:
            self._hub_scope.cancel()
        for consumer in self.consumers:
            consumer.stop()
        try:
            if tg is not None:
                await tg.__aexit__(*exc_info)
        finally:
            for consumer in self.consumers:
                log.info("%s stopped: %s", consumer, consumer.stats)
            if self._connector is not None:
                with anyio.CancelScope(shield=True):
                    await self._connector.aclose()
                self._connector = None

    async def __aenter__(self) -> Flow:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._tg is not None:
            await self._shutdown((exc_type, exc, tb))

    async def run(self) -> None:
        """Run until SIGINT or SIGTERM (or cancellation), then stop gracefully."""
        async with self:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    log.info("received %s: stopping", signal.Signals(signum).name)
                    break


def _ms(seconds: float) -> int:
    if seconds < 0:
        raise ConfigError(f"delay must be >= 0 seconds, got {seconds}")
    return int(seconds * 1000)


def _priority(priority: int) -> int:
    if (
        not isinstance(priority, int)
        or isinstance(priority, bool)
        or not (0 <= priority <= MAX_PRIORITY)
    ):
        raise ConfigError(f"priority must be an integer from 0 to {MAX_PRIORITY}: {priority!r}")
    return priority


def _fields(data: Any, headers: dict[str, str] | None) -> dict[str, bytes]:
    fields = {"data": codec.encode(data)}
    if headers:
        fields["headers"] = codec.encode(headers)
    return fields


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.rpartition('@')[2]}"
    return url
