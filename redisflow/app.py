"""Flow: the handler table, the decorators, the producers and the lifecycle of a service."""

from __future__ import annotations

import inspect
import logging
import os
import signal
import socket
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

import anyio
from anyio.abc import TaskGroup

from .connection import CONNECTION_ERRORS, Backoff, Connector
from .errors import ConfigError, RedisflowError
from .handler import Handler, Options
from .keys import sources_key
from .lifespan import Lifespan
from .message import Kind, Source
from .metrics import Metrics
from .producer import Producer
from .ratelimit import RateLimit
from .transports.base import Consumer
from .transports.channel import ChannelConsumer, ChannelHub
from .transports.priority import PriorityConsumer
from .transports.queue import QueueConsumer
from .transports.stream import StreamConsumer

log = logging.getLogger("redisflow")

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_URL = "redis://localhost:6379/0"
#: What start-up retries: connection errors, and uvloop's RuntimeError "unable to perform
#: operation on <TCPTransport closed=True>" when Redis dies during the connect.
START_ERRORS: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, RuntimeError)

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
    give_up_after: float | None
    forget_consumers_after: float | None = 3600.0
    track: bool = False
    track_ttl: float = 86400.0
    report_interval: float = 2.0
    resources: dict[Any, Any] = field(default_factory=dict)
    worker_id: str = field(default_factory=lambda: os.urandom(6).hex())
    tick: float = 0.5
    spawn: Callable[..., Any] = lambda fn: None
    log: logging.Logger = log

    @property
    def claim_interval(self) -> float:
        """How often a stream consumer looks for entries of dead consumers."""
        return max(self.tick, self.claim_idle / 2)


class Flow(Producer):
    """A Redis messaging service: handlers registered with decorators, run by one event loop.

    ``url`` defaults to ``$REDISFLOW_URL``, else ``redis://localhost:6379/0``. ``prefix``
    namespaces every key redisflow owns. ``grace_period`` is how long in-flight handlers
    may run after a stop. ``name`` names this process's stream consumers (default
    ``host-pid``: give a stable name to re-read its own pending entries after a restart).
    ``lease`` is how long a silent queue worker keeps its messages before peers take them
    back; ``claim_idle`` the same for stream entries. ``forget_consumers_after``: stream
    consumers of our groups that hold nothing and were not seen for that long (stopped or
    dead workers) are deleted from the group (None keeps them). ``batch_size`` is the most
    messages a fetch takes; ``prefetch`` the most a consumer holds. ``dead_maxlen`` bounds each
    dead-letter stream. ``channel_buffer`` is how many Pub/Sub messages wait per handler
    before new ones are dropped. ``give_up_after`` is how long the flow waits for an
    unreachable Redis (at start, or during an outage) before it fails; None waits forever.
    ``metrics_port`` serves Prometheus metrics while the flow runs (``redisflow.metrics``).
    ``track`` keeps a status record of every message for ``track_ttl`` seconds (see
    ``Flow.status``); a handler may also ask for it alone with ``track=True``.
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
        forget_consumers_after: float | None = 3600.0,
        batch_size: int = 500,
        prefetch: int = 1000,
        block_timeout: float = 5.0,
        dead_maxlen: int = 100_000,
        channel_buffer: int = 10_000,
        stream_start: str = "0",
        max_connections: int = 32,
        give_up_after: float | None = 60.0,
        track: bool = False,
        track_ttl: float = 86400.0,
        metrics_port: int | None = None,
    ) -> None:
        if not prefix or any(c in prefix for c in "{} "):
            raise ConfigError(f"prefix must be non-empty, without braces or spaces: {prefix!r}")
        if not 1 <= batch_size <= 2000 or prefetch < 1:
            raise ConfigError("batch_size must be from 1 to 2000, and prefetch >= 1")
        if lease <= 1 or claim_idle <= 1:
            raise ConfigError("lease and claim_idle must be > 1 second")
        if forget_consumers_after is not None and forget_consumers_after <= 0:
            raise ConfigError("forget_consumers_after must be > 0 seconds, or None")
        self.url = url or os.environ.get("REDISFLOW_URL") or DEFAULT_URL
        self.prefix = prefix
        self.max_connections = max_connections
        self._settings_args: dict[str, Any] = dict(
            prefix=prefix,
            grace_period=grace_period,
            block_timeout=block_timeout,
            lease=lease,
            claim_idle=claim_idle,
            forget_consumers_after=forget_consumers_after,
            batch_size=batch_size,
            prefetch=prefetch,
            dead_maxlen=dead_maxlen,
            channel_buffer=channel_buffer,
            stream_start=stream_start,
            consumer_name=name or f"{socket.gethostname()}-{os.getpid()}",
            give_up_after=give_up_after,
        )
        self.handlers: dict[tuple[Kind, str, str | None], Handler] = {}
        self.consumers: list[Consumer] = []
        self._connector: Connector | None = None
        self.track, self.track_ttl = track, track_ttl
        self.metrics_port = metrics_port
        self._metrics: Metrics | None = None
        self._lifespan = Lifespan()
        self._stack: AsyncExitStack | None = None
        self._tg: TaskGroup | None = None
        self._helpers: list[anyio.CancelScope] = []  # Pub/Sub hub, metrics: cancelled at stop

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

    def on_startup(self, fn: F) -> F:
        """Run ``fn()`` (sync or async) when the flow starts, before any consumer."""
        self._lifespan.startup.append(fn)
        return fn

    def on_shutdown(self, fn: F) -> F:
        """Run ``fn()`` (sync or async) when the flow has stopped and closed its resources."""
        self._lifespan.shutdown.append(fn)
        return fn

    def resource(self, fn: F) -> F:
        """Provide a value to every handler with a parameter annotated with its type: an
        async generator (set up, ``yield`` it, tear down) or an async function returning
        it, run at start (see ``redisflow.lifespan``)."""
        if self._tg is not None:
            raise ConfigError("cannot add a resource to a running flow")
        self._lifespan.add_resource(fn)
        return fn

    def on_channel(
        self,
        channel: str,
        *,
        concurrency: int = 16,
        max_attempts: int = 1,
        retry_delay: float = 1.0,
        timeout: float | None = None,
        track: bool | None = None,
    ) -> Callable[[F], F]:
        """Handle the messages of a Pub/Sub channel (a glob such as ``orders.*`` subscribes
        to a pattern). At-most-once: messages published while the flow is down are gone;
        a failing message is retried in memory up to ``max_attempts``, then dead-lettered."""
        options = dict(locals())
        return self._decorator("channel", options.pop("channel"), None, options)

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
        idempotency_key: Callable[[Any], str] | None = None,
        idempotency_ttl: float = 86400.0,
        rate_limit: RateLimit | None = None,
        track: bool | None = None,
    ) -> Callable[[F], F]:
        """Handle a list queue (producers RPUSH, the consumer takes from the left).

        At-least-once: a message leaves Redis only once its handler is done with it. A
        failure is retried after ``retry_delay * 2**(attempt-1)`` (with jitter, at most
        ``retry_max_delay``) until ``max_attempts``, then dead-lettered. ``timeout`` cancels
        a handler that runs longer (a failed attempt). ``at_most_once`` pops destructively:
        faster, but a crash loses the messages being handled.

        ``idempotency_key`` (payload -> str) handles each key once per ``idempotency_ttl``
        seconds, crash-safely (see ``redisflow.idempotency``). ``rate_limit`` starts at most
        N handlers per key per window across all workers; a message over the limit waits in
        Redis until it may go. ``track`` overrides the flow's status tracking.
        """
        options = dict(locals())
        return self._decorator("queue", options.pop("queue"), None, options)

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
        idempotency_key: Callable[[Any], str] | None = None,
        idempotency_ttl: float = 86400.0,
        rate_limit: RateLimit | None = None,
        track: bool | None = None,
    ) -> Callable[[F], F]:
        """Handle a sorted-set priority queue: lowest priority number first, FIFO within a
        level. Options as for ``on_queue``."""
        options = dict(locals())
        return self._decorator("priority", options.pop("queue"), None, options)

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
        idempotency_key: Callable[[Any], str] | None = None,
        idempotency_ttl: float = 86400.0,
        rate_limit: RateLimit | None = None,
        track: bool | None = None,
    ) -> Callable[[F], F]:
        """Handle a stream through consumer group ``group`` (created with MKSTREAM, reading
        from the start of the stream). At-least-once; options as for ``on_queue`` (a rate
        limited entry keeps its place in the group's pending list while it waits)."""
        options = dict(locals())
        return self._decorator("stream", options.pop("stream"), options.pop("group"), options)

    def _decorator(
        self, kind: Kind, name: str, group: str | None, options: dict[str, Any]
    ) -> Callable[[F], F]:
        options.pop("self")

        def register(fn: F) -> F:
            self.add_handler(kind, name, fn, group=group, **options)
            return fn

        return register

    async def wait_idle(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Wait until every consumer of the running flow is idle: nothing queued, delayed,
        pending or being handled (for tests and scripts). Raises TimeoutError."""
        if self._tg is None:
            raise RedisflowError("wait_idle needs a running flow")
        with anyio.fail_after(timeout):
            calm = 0
            while calm < 2:  # idle twice in a row: a reply in flight cannot fool it
                results = [await consumer.idle() for consumer in self.consumers]
                calm = calm + 1 if all(results) else 0
                await anyio.sleep(0.02)

    def _sources(self) -> list[Source]:
        return [handler.source for handler in self.handlers.values()]

    def _managed(self) -> set[str]:
        return {source.name for source in self._sources()}

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
            await self._wait_for_redis(connector)
        except BaseException:  # gave up, or cancelled (a signal during start-up)
            with anyio.CancelScope(shield=True):
                await self.aclose()
            raise
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        try:
            self._stack = AsyncExitStack()
            resources = await self._lifespan.enter(self._stack)
            settings = Settings(
                connector=connector,
                spawn=tg.start_soon,
                track=self.track,
                track_ttl=self.track_ttl,
                resources=resources,
                **self._settings_args,
            )
            self.consumers = [CONSUMERS[h.source.kind](h, settings) for h in self.handlers.values()]
            if self.handlers:  # what ``redisflow stats --url`` lists without the app
                await connector.send(
                    "SADD",
                    sources_key(self.prefix),
                    *(f"{s.kind}|{s.name}|{s.group or ''}" for s in self._sources()),
                )
            if self.metrics_port is not None and self.consumers:
                self._metrics = Metrics(self.consumers, self.metrics_port)
                self._metrics.serve()
            channels = [c for c in self.consumers if isinstance(c, ChannelConsumer)]
            if channels:
                await tg.start(self._helper, ChannelHub(channels, settings).run)
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
            if self._metrics is not None:
                await tg.start(self._helper, self._metrics.poll)
        except BaseException:
            await self._shutdown()
            raise

    @property
    def give_up_after(self) -> float | None:
        """Seconds an unreachable Redis is waited for before the flow fails (None: forever)."""
        value: float | None = self._settings_args["give_up_after"]
        return value

    @give_up_after.setter
    def give_up_after(self, seconds: float | None) -> None:
        self._settings_args["give_up_after"] = seconds

    async def _wait_for_redis(self, connector: Connector) -> None:
        """PING until Redis answers; log once while waiting; fail after ``give_up_after``."""
        backoff = Backoff(f"start: Redis at {_safe(self.url)}", self.give_up_after)
        while True:
            try:
                await connector.client.ping()
            except START_ERRORS as exc:
                try:
                    await backoff.wait(exc)
                except RedisflowError:
                    raise RedisflowError(
                        f"cannot reach Redis at {_safe(self.url)}: {exc}"
                        f" (waited {self.give_up_after:g}s, give_up_after)"
                    ) from exc
            else:
                backoff.ok()
                return

    async def _helper(
        self, run: Callable[..., Any], *, task_status: anyio.abc.TaskStatus[None]
    ) -> None:
        """Run a task that lives as long as the flow and is cancelled when it stops."""
        with anyio.CancelScope() as scope:
            self._helpers.append(scope)
            if "task_status" in inspect.signature(run).parameters:
                await run(task_status=task_status)
            else:
                task_status.started()
                await run()

    async def stop(self) -> None:
        """Stop fetching, let in-flight handlers finish within the grace period, hand the
        rest back to Redis, and close the connections."""
        if self._tg is not None:
            await self._shutdown()

    async def aclose(self) -> None:
        """Stop if running, and close the connections a producer-only flow opened."""
        await self.stop()
        if self._connector is not None:
            connector, self._connector = self._connector, None
            await connector.aclose()

    async def _shutdown(self, exc_info: tuple[Any, Any, Any] = (None, None, None)) -> None:
        tg, self._tg = self._tg, None
        for scope in self._helpers:
            scope.cancel()
        self._helpers.clear()
        for consumer in self.consumers:
            consumer.stop()
        try:
            if tg is not None:
                await tg.__aexit__(*exc_info)
        except BaseExceptionGroup as group:
            only = _single(group)
            if only is group:
                raise
            raise only from None  # one failure (through nested task groups): raise it as is
        finally:
            for consumer in self.consumers:
                log.info("%s stopped: %s", consumer, consumer.stats)
            if self._metrics is not None:
                self._metrics.close()
                self._metrics = None
            stack, self._stack = self._stack, None
            if stack is not None:
                with anyio.CancelScope(shield=True):
                    await stack.aclose()
                    await self._lifespan.leave()
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
            # Only a cancellation concerns the task group; any other error in the body of
            # ``async with flow`` propagates as itself, not wrapped in an ExceptionGroup.
            cancelled = isinstance(exc, anyio.get_cancelled_exc_class())
            await self._shutdown((exc_type, exc, tb) if cancelled else (None, None, None))

    async def run(self, *, ready: Callable[[], object] | None = None) -> None:
        """Run until SIGINT or SIGTERM (or cancellation), then stop gracefully. A signal
        that arrives while the flow is still starting (waiting for Redis, say) abandons the
        start: nothing is held yet. ``ready()`` is called once every consumer has started."""
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            started, stop = False, anyio.Event()

            async def until_signal(scope: anyio.CancelScope) -> None:
                async for signum in signals:
                    log.info("received %s: stopping", signal.Signals(signum).name)
                    if started:
                        stop.set()
                    else:
                        scope.cancel()
                    return

            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(until_signal, tg.cancel_scope)
                    async with self:
                        started = True
                        if ready is not None:
                            ready()
                        await stop.wait()
                    tg.cancel_scope.cancel()
            except BaseExceptionGroup as group:
                raise _single(group) from None


def _single(group: BaseExceptionGroup[Any]) -> BaseException:
    """The one exception inside nested single-member groups, else the group itself."""
    only: BaseException = group
    while isinstance(only, BaseExceptionGroup) and len(only.exceptions) == 1:
        only = only.exceptions[0]
    return only


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.rpartition('@')[2]}"
    return url
