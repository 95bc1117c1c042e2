"""One run of a flow (``Flow.start`` to ``Flow.stop``): its consumers in one task group.

``start`` waits for Redis, opens the resources, builds one consumer per handler with its
middleware (the flow's, then the built-in ones its options ask for), registers the sources
for ``redisflow stats``, starts the Pub/Sub hub and every consumer (returning only once
each is ready), and metrics if asked. ``stop`` stops fetching everywhere, lets each
consumer drain for the grace period, and closes the resources.
"""

from __future__ import annotations

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

from .connection import CONNECTION_ERRORS, REDIS_ERRORS, Backoff, Connector
from .consumers import (
    CONSUMERS,
    ChannelConsumer,
    ChannelHub,
    Consumer,
    Context,
    Gate,
    TickOutcome,
)
from .consumers.kinds import TRAITS
from .errors import AuthError, RedisflowError, ReplyError
from .features import partitions
from .features.idempotency import Idempotency
from .features.pauses import paused_for
from .features.ratelimit import Limiter, Throttle
from .features.tracking import Tracker, Tracking
from .keys import Keys, sources_key
from .metrics import Metrics
from .middleware import takes
from .protocol.records import Target, source_member
from .protocol.replies import text

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
        self._helpers: list[anyio.CancelScope] = []  # Pub/Sub hub, metrics: cancelled at stop
        self._draining: list[tuple[str, int]] = []  # old layouts: (name, partitions)

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
        for handler in self.handlers:
            middleware = self._middleware(handler)
            keys = await self._keys(handler)
            # Partitions share the handler's concurrency: each runs up to all of it, and
            # one gate bounds their sum.
            gate = Gate(handler.options.concurrency) if len(keys) > 1 else None
            for key in keys:
                consumer = CONSUMERS[handler.source.kind](handler, ctx, middleware, key)
                consumer.gate = gate
                self.consumers.append(consumer)
        await self._register(connector)
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
        for consumer in self.consumers:
            await tg.start(consumer.run)
            opts, when = consumer.options, consumer.handler.schedule
            log.info(
                "%s -> %s (concurrency %d%s%s)", consumer.handler.source, consumer.handler.name,
                opts.concurrency, ", at-most-once" if opts.at_most_once else "",
                f", {when}" if when else "",
            )  # fmt: skip
        if metrics is not None:
            await tg.start(self._helper, lambda: metrics.poll(connector))
        if self._draining:
            await tg.start(self._helper, self._retire)

    def apply_pauses(self, targets: set[Target]) -> None:
        """Pause the consumers whose source ``targets`` names, resume the others."""
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

    async def _keys(self, handler: Handler) -> list[str]:
        """The keys a handler's consumers read: its source, or every partition of every
        layout in use (older layouts until they are drained)."""
        source, wanted = handler.source, handler.options.partitions
        if not TRAITS[source.kind].named:  # a channel or a schedule: never partitioned
            return [source.name]
        layouts, name = self.client.layouts, source.name
        stored = await layouts.stored(name)
        if wanted == 1 and not stored:
            return [name]
        # The plain key may hold messages (sent before any layout was known): drain it too.
        if wanted > 1 and 1 not in stored and (not stored or await self._holds(name)):
            await layouts.register(name, 1)
        used = await layouts.register(name, wanted)
        for old in used[1:]:
            self._draining.append((source.name, old))
        return [key for p in used for key in partitions.keys(source.name, p)]

    async def _holds(self, name: str) -> bool:
        """Whether the plain key of ``name`` (or its retries) holds anything."""
        keys = self.client.keys(name)
        return bool(
            await self.client.send_many(("EXISTS", name), ("EXISTS", keys.delayed)) != [0, 0]
        )

    async def _retire(self) -> None:
        """Drop an old layout from Redis once its partitions hold nothing (producers have
        stopped using it; the consumers reading it go on until the flow stops)."""
        while self._draining:
            await anyio.sleep(self.config.claim_interval)
            for entry in list(self._draining):
                name, old = entry
                old_keys = set(partitions.keys(name, old))
                readers = [c for c in self.consumers if c.key in old_keys]
                try:
                    if all([await consumer.drained() for consumer in readers]):
                        await self.client.layouts.retire(name, old)
                        self._draining.remove(entry)
                        log.info("%s: the old layout of %d partitions is drained", name, old)
                except REDIS_ERRORS:
                    pass

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

    async def _check_eviction(self, connector: Connector) -> None:
        """Warn once when Redis may evict keys (``maxmemory-policy`` other than
        ``noeviction``): a full Redis would then drop queued messages silently. A user
        without ``CONFIG GET`` (the usual ACL) is not told: noted at DEBUG."""
        if not any(TRAITS[h.source.kind].keyed for h in self.handlers):
            return
        try:
            replies = await connector.on_masters("CONFIG", "GET", "maxmemory-policy")
        except REDIS_ERRORS as exc:
            log.debug("maxmemory-policy not checked (%s)", exc)
            return
        policies = {text(reply[1]) for reply in replies if len(reply) == 2}
        for policy in sorted(policies - {"noeviction"}):
            log.warning(
                "Redis at %s has maxmemory-policy %s: when full it evicts keys, queued"
                " messages included, silently; set noeviction (a full Redis then refuses"
                " new messages and workers go on draining)", connector.display, policy,
            )  # fmt: skip

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
                    await self.lifespan.leave()


async def until_signal(
    flow: AbstractAsyncContextManager[Any], ready: Callable[[], object] | None
) -> None:
    """Run ``flow`` (``async with``) until SIGINT or SIGTERM, then leave it. A signal during
    the start abandons it; ``ready()`` is called once it has started."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        started, stop = False, anyio.Event()

        async def wait(scope: anyio.CancelScope) -> None:
            async for signum in signals:
                log.info("received %s: stopping", signal.Signals(signum).name)
                if started:
                    stop.set()
                else:
                    scope.cancel()
                return

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
