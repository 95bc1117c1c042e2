"""One run of a flow (``Flow.start`` to ``Flow.stop``): its consumers in one task group.

``start`` waits for Redis, opens the resources, builds one consumer per handler with its
middleware (the flow's, then the built-in ones its options ask for), registers the sources
for ``redisflow stats``, starts the Pub/Sub hub and every consumer (returning only once
each is ready), and metrics if asked. ``stop`` stops fetching everywhere, lets each
consumer drain for the grace period, and closes the resources.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import signal
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskGroup

from .connection import CONNECTION_ERRORS, Backoff, Connector
from .consumers import ChannelConsumer, ChannelHub, Consumer, Context, TickOutcome
from .consumers.kinds import TRAITS
from .consumers.readers import HandlerConsumers
from .errors import AuthError, RedisflowError, ReplyError
from .features import partitions
from .features.idempotency import Idempotency
from .features.pauses import paused_for
from .features.ratelimit import Limiter, Throttle
from .features.tracking import Tracker, Tracking
from .keys import Keys, sources_key
from .metrics import Metrics
from .middleware import takes
from .ops import handlers
from .ops.health import evicting
from .protocol.records import Target, source_member

if TYPE_CHECKING:
    from .client import Client
    from .config import FlowConfig
    from .handler import Handler
    from .lifespan import Lifespan
    from .message import Source

log = logging.getLogger("redisflow")

#: What start-up retries: connection errors, and uvloop's RuntimeError "unable to perform
#: operation on <TCPTransport closed=True>" when Redis dies during the connect.
START_ERRORS: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, RuntimeError)


class Runtime:
    """The running consumers of a flow, their helpers (Pub/Sub hub, metrics) and resources."""

    def __init__(
        self, config: FlowConfig, client: Client, handlers: list[Handler], lifespan: Lifespan
    ) -> None:
        self.config, self.client, self.handlers, self.lifespan = config, client, handlers, lifespan
        self.consumers: list[Consumer[Any]] = []
        self._tg: TaskGroup | None = None
        self._stack: AsyncExitStack | None = None
        self._metrics: Metrics | None = None
        self._worker = ""  # this run's id, once started
        self._paused: set[Target] = set()  # what apply_pauses was last told
        self._helpers: list[anyio.CancelScope] = []  # Pub/Sub hub, metrics: cancelled at stop

    async def _run(self, consumer: Consumer[Any]) -> None:
        """Start a consumer added while the flow runs (a new layout), paused if need be."""
        source = consumer.handler.source
        consumer.pause(paused_for(self._paused, source.kind, source.name, source.group))
        if self._tg is not None:
            await self._tg.start(consumer.run)

    async def start(self) -> None:
        """Wait for Redis and start everything; errors during start-up are raised here."""
        connector = self.client.connector
        await self._wait_for_redis(connector)
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        try:
            await self._start(tg, connector)
        except BaseException:
            await self.stop()
            raise

    async def _start(self, tg: TaskGroup, connector: Connector) -> None:
        config = self.config
        self._stack = AsyncExitStack()
        resources = await self.lifespan.enter(self._stack)
        ctx = Context(
            config, connector, os.urandom(6).hex(), resources, tg.start_soon,
            self.client.produce_chain,
        )  # fmt: skip
        if config.metrics_port is not None and self.handlers:
            self._metrics = Metrics(config.metrics_port)
        self.consumers = []
        every: list[HandlerConsumers] = []
        for handler in self.handlers:
            source = handler.source
            if not TRAITS[source.kind].named:  # a channel or a schedule: never partitioned
                keys = [source.name]
            else:
                wanted = handler.options.partitions
                keys = await partitions.to_read(self.client.layouts, source, wanted)
            every.append(
                HandlerConsumers(
                    handler, ctx, self._middleware(handler), keys, self.consumers, self._run
                )
            )
        await self._register(connector)
        await self._introduce(ctx.worker_id)
        await self._check_eviction(connector)
        metrics = self._metrics
        if metrics is not None:
            metrics.watch(self.consumers)
            metrics.serve()
        if any(not isinstance(c, ChannelConsumer) for c in self.consumers):
            # read before any consumer starts: a source paused now is not fetched at all
            await tg.start(self._helper, partial(self.client.pauses.watch, self.apply_pauses))
        channels = [c for c in self.consumers if isinstance(c, ChannelConsumer)]
        if channels:
            await tg.start(self._helper, ChannelHub(channels, ctx).run)
        await self._start_consumers(tg, list(self.consumers))
        for reader in every:
            opts, parts = reader.handler.options, len(reader.mine)
            when = reader.handler.schedule
            log.info(
                "%s -> %s (concurrency %d%s%s%s)", reader.source, reader.handler.name,
                opts.concurrency, ", at-most-once" if opts.at_most_once else "",
                f", {parts} partitions" if parts > 1 else "", f", {when}" if when else "",
            )  # fmt: skip
        if metrics is not None:
            await tg.start(self._helper, lambda: metrics.poll(connector))
        if readers := [r for r in every if TRAITS[r.source.kind].named]:  # "Changing P"
            drainer = partitions.Drainer(self.client.layouts, readers, config.claim_interval)
            await tg.start(self._helper, drainer.run)

    @staticmethod
    async def _start_consumers(tg: TaskGroup, consumers: list[Consumer[Any]]) -> None:
        """Start consumers at once (256 partitions connect in parallel); the first failure
        is raised as itself."""
        try:
            async with anyio.create_task_group() as starting:
                for consumer in consumers:
                    starting.start_soon(tg.start, consumer.run)
        except BaseExceptionGroup as group:
            raise single(group) from None

    def apply_pauses(self, targets: set[Target]) -> None:
        """Pause the consumers whose source ``targets`` names, resume the others."""
        self._paused = targets
        changed: dict[tuple[Source, str], bool] = {}
        for consumer in self.consumers:
            if isinstance(consumer, ChannelConsumer):
                continue
            source = consumer.handler.source
            paused = paused_for(targets, source.kind, source.name, source.group)
            if paused != consumer.paused:
                consumer.pause(paused)
                changed[source, consumer.handler.name] = paused
        for (source, name), paused in changed.items():
            log.info("%s [%s]: %s", source, name, "paused" if paused else "resumed")

    async def parked(self) -> None:
        """Wait until every paused consumer's fetch has returned (at most until a blocked
        fetch returns by itself, for a user without ``CLIENT UNBLOCK``)."""
        with anyio.move_on_after(self.config.block_timeout + 1):
            for consumer in self.consumers:
                await consumer.wait_parked()

    def _middleware(self, handler: Handler) -> list[object]:
        """The consume chain of ``handler``: the flow's middleware, then (innermost last)
        the built-in ones its options ask for: idempotency, rate limit, status tracking,
        handler timing. The order is the one the guards had: a duplicate or a rate-limited
        message is not marked processing, and timing covers the handler alone."""
        config, connector, options = self.config, self.client.connector, handler.options
        keys = Keys(config.prefix, handler.source.name)
        chain = [m for m in self.client.middleware if takes(m, "consume")]
        if options.idempotency_key is not None:
            claim = max(config.lease, options.timeout or 0) * 2
            chain.append(Idempotency(
                connector, keys, options.idempotency_key, options.idempotency_ttl, claim
            ))  # fmt: skip
        if options.rate_limit is not None:
            chain.append(Throttle(Limiter(connector, keys, options.rate_limit)))
        if config.track if options.track is None else options.track:
            tracker = Tracker(connector, config.prefix, config.track_ttl)
            chain.append(Tracking(tracker, handler.name))
        if self._metrics is not None:
            chain.append(self._metrics.timing(handler))
        if handler.source.kind == "schedule":
            chain.append(TickOutcome(connector, keys))
        return chain

    async def _register(self, connector: Connector) -> None:
        """List the sources for ``redisflow stats --url`` (best effort: a full Redis
        refuses it, and a worker must still start to drain it)."""
        if not self.handlers:
            return
        members = [source_member(h.source) for h in self.handlers]
        try:
            await connector.send("SADD", sources_key(self.config.prefix), *members)
        except ReplyError as exc:
            log.warning("sources not registered for `redisflow stats` (%s)", exc)

    async def _introduce(self, worker: str) -> None:
        """Record the handler run per source (``ops/handlers.py``)."""
        self._worker = worker
        if await handlers.introduce(self.client, self.handlers, worker) and self._tg:
            await self._tg.start(self._helper, handlers.keep, self.client, self.handlers, worker)

    async def _check_eviction(self, connector: Connector) -> None:
        """Warn once when Redis may evict keys (``evicting``)."""
        if any(TRAITS[h.source.kind].keyed for h in self.handlers):
            for warning in await evicting(connector):
                log.warning("%s", warning)

    async def _wait_for_redis(self, connector: Connector) -> None:
        """PING until Redis answers; log once while waiting; fail after ``give_up_after``.
        Refused credentials fail at once."""
        limit = self.config.give_up_after
        backoff = Backoff("start", None, where=f"Redis at {connector.display}")
        why: BaseException | str = "no answer"
        # The whole wait is bounded here, not by the backoff: a server that accepts
        # connections and never answers would stretch it by a connect timeout per attempt.
        with anyio.move_on_after(float("inf") if limit is None else limit):
            while True:
                try:
                    await connector.send("PING")
                except AuthError as exc:
                    raise RedisflowError(
                        f"Redis at {connector.display} refused the credentials: {exc}"
                    ) from None
                except START_ERRORS as exc:
                    why = exc
                    await backoff.wait(exc, starting=True)
                else:
                    backoff.ok()
                    return
        raise RedisflowError(
            f"cannot reach Redis at {connector.display}: {why} (waited {limit:g}s, give_up_after)"
        )

    async def _helper(
        self, run: Callable[..., Any], *args: Any, task_status: anyio.abc.TaskStatus[None]
    ) -> None:
        """Run a task that lives as long as the flow and is cancelled when it stops."""
        with anyio.CancelScope() as scope:
            self._helpers.append(scope)
            if "task_status" in inspect.signature(run).parameters:
                await run(*args, task_status=task_status)
            else:
                task_status.started()
                await run(*args)

    def _also_lost(self, exc: BaseException) -> BaseException:
        """``exc``, naming too every other consumer in the same outage when one gave up on
        Redis: the first to give up stops the flow, cancelling the others before they can."""
        gave_up = any(c.backoff.gave_up for c in self.consumers)
        also = [str(c) for c in self.consumers if c.backoff.failures and str(c) not in str(exc)]
        if not (isinstance(exc, RedisflowError) and gave_up and also):
            return exc
        return RedisflowError("\n".join([str(exc), *(f"{c}: Redis unreachable too" for c in also)]))

    def busy(self) -> int:
        """Handlers running now, in every consumer."""
        return sum(consumer.busy for consumer in self.consumers)

    def hurry(self) -> None:
        """Cancel the running handlers now instead of at the end of the grace period."""
        for consumer in self.consumers:
            consumer.hurry()

    async def wait_idle(self, timeout: float) -> None:  # noqa: ASYNC109
        """Wait until every consumer is idle (twice in a row: a reply in flight cannot
        fool it); TimeoutError after ``timeout`` seconds."""
        with anyio.fail_after(timeout):
            calm = 0
            while calm < 2:
                results = [await consumer.idle() for consumer in self.consumers]
                calm = calm + 1 if all(results) else 0
                await anyio.sleep(0.02)

    async def stop(self, exc_info: tuple[Any, Any, Any] = (None, None, None)) -> None:
        """Stop every consumer (two phases, each its own) and close the resources."""
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
            only = single(group)
            if only is group:
                raise
            raise self._also_lost(only) from None  # one failure: raised as itself
        finally:
            for consumer in self.consumers:
                log.info("%s stopped: %s", consumer, consumer.stats)
            if self._metrics is not None:
                self._metrics.close()
                self._metrics = None
            if self._worker and not any(c.backoff.gave_up for c in self.consumers):
                with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                    with contextlib.suppress(Exception):
                        await handlers.leave(self.client, self.handlers, self._worker)
            stack, self._stack = self._stack, None
            if stack is not None:
                with anyio.CancelScope(shield=True):
                    await stack.aclose()
                    await self.lifespan.leave()


#: What stops a flow: Ctrl-C, a kill, the terminal closing (SIGHUP killed it, server left).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(RedisflowError):
    """Raised when a second signal stopped the flow before its handlers finished (their
    messages were handed back)."""


async def until_signal(
    flow: AbstractAsyncContextManager[Any],
    ready: Callable[[], object] | None,
    running: Callable[[], Runtime | None] = lambda: None,
) -> None:
    """Run ``flow`` until SIGINT, SIGTERM or SIGHUP (one during the start abandons it); a
    second one cancels running handlers (``Interrupted``). ``ready()``: once started."""
    with anyio.open_signal_receiver(*STOP_SIGNALS) as signals:
        started, stop, hurried = False, anyio.Event(), False
        stopping: Runtime | None = None  # the run the first signal stops (it leaves the flow)

        async def wait(scope: anyio.CancelScope) -> None:
            nonlocal hurried, stopping
            async for signum in signals:
                name, runtime = signal.Signals(signum).name, stopping or running()
                if not started:
                    log.info("received %s: stopping", name)
                    scope.cancel()
                    return
                if stop.is_set():
                    log.warning("received %s again: stopping now, unfinished messages are"
                                " handed back", name)  # fmt: skip
                    hurried = True
                    if runtime is not None:
                        runtime.hurry()
                    return
                stop.set()
                stopping = runtime
                busy = runtime.busy() if runtime is not None else 0
                if busy:
                    log.warning(
                        "received %s: stopping: waiting up to %g s for %d handler%s (%s"
                        " again to stop now)", name, runtime.config.grace_period if runtime
                        else 0, busy, "s" * (busy != 1), "Ctrl-C" if name == "SIGINT" else name,
                    )  # fmt: skip
                else:
                    log.info("received %s: stopping", name)

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(wait, tg.cancel_scope)
                async with flow:
                    started = True
                    if ready is not None:
                        ready()
                    await stop.wait()
                tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            raise single(group) from None
    if hurried:
        raise Interrupted("stopped before its handlers finished (a second signal)")


def single(group: BaseExceptionGroup[Any]) -> BaseException:
    """The one exception inside nested single-member groups; one ``RedisflowError`` naming
    each failure when every one is a ``RedisflowError`` (several consumers gave up on the
    same outage); else the group itself (a bug somewhere: keep every traceback)."""
    leaves = _leaves(group)
    if len(leaves) == 1:
        return leaves[0]
    if all(isinstance(exc, RedisflowError) for exc in leaves):
        return RedisflowError("\n".join(dict.fromkeys(str(exc) for exc in leaves)))
    return group


def _leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    found: list[BaseException] = []
    for exc in group.exceptions:
        found += _leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc]
    return found
