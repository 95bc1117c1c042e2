"""``Flow``: the handlers of a service, registered with decorators, and their lifecycle.

A flow is a ``Client`` (its producers and reads, over the connections of the process) with
handlers, resources and middleware; a ``Runtime`` runs its consumers.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable
from datetime import timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, Unpack

import anyio

from .client import Client
from .config import (
    ChannelOptions,
    FlowConfig,
    FlowOptions,
    HandlerOptions,
    QueueOptions,
    ScheduleOptions,
    StreamOptions,
)
from .consumers import Consumer
from .consumers.channel import is_pattern
from .consumers.kinds import TRAITS
from .errors import ConfigError, RedisflowError
from .features.schedules import Missed, Schedule
from .handler import Handler
from .keys import check_name
from .lifespan import Lifespan
from .message import Kind, Source
from .ops.deadletters import DeadLetters
from .redispy import close_client, redis_py_client
from .runtime import Runtime, until_signal

if TYPE_CHECKING:
    from redis.asyncio import Redis, RedisCluster

log = logging.getLogger("redisflow")

F = TypeVar("F", bound=Callable[..., Any])


class Flow(Client):
    """A Redis messaging service: handlers registered with decorators, run by one event loop.

    ``url`` defaults to ``$REDISFLOW_URL``, else ``redis://localhost:6379/0``; the other
    options are those of ``FlowConfig``, which documents each one. ``middleware``: objects
    whose ``consume`` wraps every handler attempt and whose ``produce`` wraps every send
    (``redisflow.middleware``), the first the outermost. A flow is a ``Client``: its
    producers and reads are its own methods.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        middleware: Iterable[object] = (),
        **options: Unpack[FlowOptions],
    ) -> None:
        self._partitions: dict[str, int] = {}  # declared: kept when the options change
        self._redis: Redis | RedisCluster | None = None
        self.handlers: dict[tuple[Kind, str, str | None], Handler] = {}
        self._consumers: list[Consumer[Any]] = []
        self._lifespan = Lifespan()
        self._runtime: Runtime | None = None
        super().__init__(FlowConfig.build(url, **options), middleware)  # checks the URL now

    # -- configuration --------------------------------------------------------------------

    def configure(self, **changes: Any) -> None:
        """Change options (``flow.configure(url=..., give_up_after=None)``) before the flow
        runs or opens connections; ConfigError for an unknown or bad value."""
        if self._runtime is not None or self.open:
            raise ConfigError("cannot change the options of a flow that is running or connected"
                              " (await flow.aclose() first)")  # fmt: skip
        try:
            config = dataclasses.replace(self.config, **changes)
        except TypeError as exc:
            raise ConfigError(f"unknown flow option: {exc}") from None
        self._setup(config)  # checks the URL now
        for name, partitions in self._partitions.items():
            super().partitions(name, partitions)

    def add_middleware(self, middleware: object) -> None:
        """Add a middleware inside those given before (the first is the outermost); refused
        once the flow has started."""
        if self._runtime is not None:
            raise ConfigError("cannot add middleware to a running flow")
        super().add_middleware(middleware)

    @property
    def url(self) -> str:
        """The Redis URL (``configure(url=...)`` changes it)."""
        return self.config.url

    @url.setter
    def url(self, url: str) -> None:
        self.configure(url=url)

    @property
    def prefix(self) -> str:
        """The prefix of every key redisflow owns."""
        return self.config.prefix

    def partitions(self, name: str, partitions: int) -> None:
        """Send to ``name`` over ``partitions`` partitions (see ``Client.partitions``; a
        handler registered with ``partitions=`` declares them)."""
        super().partitions(name, partitions)
        self._partitions[name] = partitions

    @property
    def client(self) -> Client:
        """This flow, as the ``Client`` it is (its producers and reads)."""
        return self

    @property
    def redis(self) -> Redis | RedisCluster:
        """A redis-py client on the flow's Redis, for your own commands (closed by
        ``aclose``; see ``redisflow.redispy``)."""
        if self._redis is None:
            self._redis = redis_py_client(self.connector, self.config.url)
        return self._redis

    # -- registration ---------------------------------------------------------------------

    def add_handler(
        self,
        kind: Kind,
        name: str,
        fn: Callable[..., Any],
        *,
        group: str | None = None,
        schedule: Schedule | None = None,
        **options: Any,
    ) -> Handler:
        """Register ``fn`` for a source (a ``schedule`` for kind ``schedule``); what the
        decorators call."""
        where = f"handler {getattr(fn, '__qualname__', fn)!r}"
        try:
            check_name(name, kind)
            if kind == "stream":
                check_name(group, "consumer group")
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if self._runtime is not None:
            raise ConfigError(f"{where}: cannot add a handler to a running flow")
        if kind == "channel" and options.get("pattern") is None:
            options["pattern"] = is_pattern(name)
        try:
            built = HandlerOptions.build(kind, options)
            if built.partitions != 1:
                self.partitions(name, built.partitions)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        handler = Handler.build(fn, Source(kind, name, group), built, schedule)
        if clash := handler.clash(self.handlers.values()):  # a duplicate, or another kind
            raise ConfigError(f"{where}: {clash}")
        self.handlers[kind, name, group] = handler
        return handler

    def problems(self) -> list[str]:
        """What ``start`` would refuse, without connecting: unprovided resources."""
        found = (h.unprovided(self._lifespan.resources) for h in self.handlers.values())
        return [problem for problem in found if problem]

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
        if self._runtime is not None:
            raise ConfigError("cannot add a resource to a running flow")
        self._lifespan.add_resource(fn)
        return fn

    def on_channel(self, channel: str, **options: Unpack[ChannelOptions]) -> Callable[[F], F]:
        """Handle the messages of a Pub/Sub channel. ``pattern``: whether ``channel`` is a
        glob (``orders.*``, PSUBSCRIBE) or a literal name; by default a name with ``*`` or
        ``?`` is a pattern (``news[1]`` is literal: say ``pattern=True``). At-most-once:
        messages published while the flow is down are gone; a failing message is retried
        in memory up to ``max_attempts`` (default 1), then dead-lettered. The options are
        those of ``HandlerOptions``, which documents each one."""
        return self._decorator("channel", channel, None, dict(options))

    def on_queue(self, queue: str, **options: Unpack[QueueOptions]) -> Callable[[F], F]:
        """Handle a list queue (producers RPUSH, the consumer takes from the left).

        At-least-once: a message leaves Redis only once its handler is done with it. The
        options are those of ``HandlerOptions``, which documents each one.
        """
        return self._decorator("queue", queue, None, dict(options))

    def on_priority(self, queue: str, **options: Unpack[QueueOptions]) -> Callable[[F], F]:
        """Handle a sorted-set priority queue: lowest priority number first, FIFO within a
        level. Options as for ``on_queue``."""
        return self._decorator("priority", queue, None, dict(options))

    def on_stream(
        self, stream: str, *, group: str | None = None, **options: Unpack[StreamOptions]
    ) -> Callable[[F], F]:
        """Handle a stream through consumer group ``group`` (required; created with
        MKSTREAM, reading from ``stream_start``). At-least-once; options as for
        ``on_queue`` (a rate limited entry keeps its place in the group's pending list
        while it waits)."""
        return self._decorator("stream", stream, group, dict(options))

    def cron(
        self,
        expr: str,
        *,
        tz: str | None = None,
        name: str | None = None,
        missed: Missed = "skip",
        **options: Unpack[ScheduleOptions],
    ) -> Callable[[F], F]:
        """As ``every``, at each tick of the cron expression ``expr`` (five fields, or six
        with seconds first: cronsim's, ``pip install cronsim``) in the IANA zone
        ``tz`` (default UTC); DST days: the README, "Schedules"."""
        when = lambda name: Schedule.from_cron(name, expr, tz, missed)  # noqa: E731
        return self._schedule(expr, name, when, dict(options))

    def every(
        self,
        period: float | timedelta,
        *,
        name: str | None = None,
        missed: Missed = "skip",
        **options: Unpack[ScheduleOptions],
    ) -> Callable[[F], F]:
        """Run the function every ``period`` (seconds of real time or a timedelta, ticking
        on its multiples since the epoch) once per tick across the prefix's workers, as a
        message of an internal queue (``ScheduleOptions``: retries, timeout...). ``name``
        (default: its qualified name) identifies it; ``missed``: ticks no worker claimed in
        time: ``skip``, ``once`` (one run), ``all`` (each). ``msg.scheduled_for``: the tick."""
        when = lambda name: Schedule.every(name, period, missed)  # noqa: E731
        return self._schedule(period, name, when, dict(options))

    def _schedule(
        self, first: Any, name: str | None, when: Callable[[str], Schedule], options: Any
    ) -> Callable[[F], F]:
        if callable(first):  # @flow.every without the parentheses
            raise ConfigError(f"handler {getattr(first, '__qualname__', first)!r}: write"
                              " @flow.every(seconds) or @flow.cron('expression')")  # fmt: skip

        def register(fn: F) -> F:
            qualname = getattr(fn, "__qualname__", repr(fn))
            try:
                schedule = when(qualname if name is None else name)
            except ConfigError as exc:
                raise ConfigError(f"handler {qualname!r}: {exc}") from None
            self.add_handler("schedule", schedule.name, fn, schedule=schedule, **options)
            return fn

        return register

    def _decorator(
        self, kind: Kind, name: Any, group: str | None, options: dict[str, Any]
    ) -> Callable[[F], F]:
        if callable(name):  # @flow.on_queue without the parentheses
            usage = f'@flow.on_{kind}("name"{", group=...)" if kind == "stream" else ")"}'
            raise ConfigError(
                f"handler {getattr(name, '__qualname__', name)!r}: @flow.on_{kind} needs the"
                f" name of its source: write {usage}, not @flow.on_{kind}"
            )

        def register(fn: F) -> F:
            self.add_handler(kind, name, fn, group=group, **options)
            return fn

        return register

    # -- reads that know the handlers --------------------------------------------------------

    def dlq(self, name: str, kind: Kind | None = None) -> DeadLetters:
        """The dead letters of a source, to list, show, replay or purge (``kind`` says where
        a replay sends them; by default the kind of this flow's handler for ``name``, else
        a queue)::

            await flow.dlq("emails").replay(error="timed out", older_than=3600)
        """
        if kind is None:
            kinds = {h.source.kind for h in self.handlers.values() if h.source.name == name}
            kind = kinds.pop() if len(kinds) == 1 else "queue"
        return DeadLetters(self.client, name, kind)

    async def kinds(self, name: str) -> set[str]:
        """``Client.kinds``, with this flow's own handlers for ``name``."""
        mine = {h.source.kind for h in self.handlers.values() if h.source.name == name}
        return mine | await super().kinds(name)

    async def pauses_changed(self, paused: bool) -> None:
        """This flow's own consumers take a pause or resume made here at once; a pause
        returns once their fetches in flight have returned."""
        if self._runtime is not None:
            self._runtime.apply_pauses(await self.pauses.targets())
            if paused:
                await self._runtime.parked()

    async def memory(self, *names: str, channels: Iterable[str] = ()) -> dict[str, Any]:
        """``Client.memory`` of this flow's sources and ``names``."""
        sources = {handler.source.name for handler in self.handlers.values()}
        mine = {h.source.name for h in self.handlers.values() if not TRAITS[h.source.kind].named}
        return await super().memory(*(sources | set(names)), channels={*mine, *channels})

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def consumers(self) -> list[Consumer[Any]]:
        """The consumers of the running flow (of its last run, once stopped)."""
        return self._consumers

    async def wait_idle(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Wait until every consumer of the running flow is idle: nothing queued, delayed,
        pending or being handled (for tests and scripts). Raises TimeoutError."""
        if self._runtime is None:
            raise RedisflowError("wait_idle needs a running flow")
        await self._runtime.wait_idle(timeout)

    async def start(self) -> None:
        """Connect, start every consumer, and return once all are ready (subscribed, group
        created, lease taken). Errors during start-up are raised here. Call ``stop`` from
        the same task: the consumers run in a task group entered here (``async with flow``
        does both)."""
        if self._runtime is not None:
            raise RedisflowError("this flow is already running")
        runtime = self._runtime = Runtime(
            self.config, self, list(self.handlers.values()), self._lifespan
        )
        try:
            await runtime.start()
        except BaseException:  # gave up, or cancelled (a signal during start-up)
            self._runtime = None
            with anyio.CancelScope(shield=True):
                await self.aclose()
            raise
        finally:
            self._consumers = runtime.consumers

    async def stop(self) -> None:
        """Stop fetching, let in-flight handlers finish within the grace period, hand the
        rest back to Redis, and close the connections."""
        await self._stop()

    async def _stop(self, exc_info: tuple[Any, Any, Any] = (None, None, None)) -> None:
        runtime, self._runtime = self._runtime, None
        if runtime is not None:
            try:
                await runtime.stop(exc_info)
            finally:
                with anyio.CancelScope(shield=True):
                    await self._close()

    async def aclose(self) -> None:
        """Stop if running, and close the connections (a producer-only flow's too)."""
        await self.stop()
        await self._close()

    async def _close(self) -> None:
        await super().aclose()
        if self._redis is not None:
            redis, self._redis = self._redis, None
            await close_client(redis)

    async def __aenter__(self) -> Flow:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runtime is not None:
            # Only a cancellation concerns the task group; any other error in the body of
            # ``async with flow`` propagates as itself, not wrapped in an ExceptionGroup.
            cancelled = isinstance(exc, anyio.get_cancelled_exc_class())
            await self._stop((exc_type, exc, tb) if cancelled else (None, None, None))

    async def run(self, *, ready: Callable[[], object] | None = None) -> None:
        """Run until SIGINT, SIGTERM or SIGHUP (or cancellation), then stop gracefully (a
        second signal cancels running handlers: ``Interrupted``). A signal during the start
        abandons it. ``ready()`` is called once every consumer has started."""
        await until_signal(self, ready, lambda: self._runtime)
