"""``ChannelHub``: the Pub/Sub subscriptions of a flow, on as few connections as it can.

Classic Pub/Sub (one server, or ``sharded_pubsub=False``): one connection SUBSCRIBEs every
exact channel and PSUBSCRIBEs every pattern. Sharded Pub/Sub (a cluster, by default): exact
channels are SSUBSCRIBEd on the node that owns their slot, one connection per such node,
and patterns (which have no sharded form) PSUBSCRIBEd on one more connection. Publishers
must match: ``publish`` uses SPUBLISH when the flow's Pub/Sub is sharded (docs/design.md,
"Cluster").

When a connection drops, or Redis unsubscribes a shard channel itself (its slot moved to
another node, or a failover), every subscription is made again, on the current owners.
Messages published meanwhile are gone: Pub/Sub is at-most-once.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any

import anyio
from anyio.abc import TaskStatus

from ..connection import CONNECTION_ERRORS, REDIS_ERRORS, Backoff, Link
from ..keys import slot
from .channel import ChannelConsumer
from .contract import Context

log = logging.getLogger("redisflow")


class ChannelHub:
    """Every channel subscription of a flow, and the dispatch of what arrives."""

    def __init__(self, consumers: list[ChannelConsumer], ctx: Context) -> None:
        self.connector = ctx.connector
        self.exact: dict[bytes, ChannelConsumer] = {}
        self.patterns: dict[bytes, ChannelConsumer] = {}
        for consumer in consumers:
            name = consumer.handler.source.name.encode()
            (self.patterns if consumer.pattern else self.exact)[name] = consumer
        sharded = ctx.config.sharded_pubsub
        self.sharded = ctx.connector.cluster if sharded is None else sharded
        self.links: list[Link] = []
        self.last_read: dict[Link, float] = {}
        self.backoff = Backoff("pubsub", ctx.config.give_up_after)
        self.why: BaseException | None = None

    # -- subscribing ----------------------------------------------------------------------

    def _plan(self) -> list[tuple[Link, list[list[Any]]]]:
        """The connections to open, each with its subscribe commands."""
        plans: list[tuple[Link, list[list[Any]]]] = []
        router = self.connector.router
        if self.sharded and self.exact:
            by_node: dict[Any, dict[int, list[bytes]]] = defaultdict(lambda: defaultdict(list))
            for channel in self.exact:
                node = router.where(channel) if router is not None else None
                by_node[node][slot(channel)].append(channel)
            for node, slots in by_node.items():
                link = (
                    Link(router.endpoint(node), name=f"{self.connector.name}:pubsub")
                    if router is not None and node is not None
                    else self.connector.link(role="pubsub")
                )
                plans.append((link, [["SSUBSCRIBE", *chs] for chs in slots.values()]))
        commands: list[list[Any]] = []
        if self.exact and not self.sharded:
            commands.append(["SUBSCRIBE", *self.exact])
        if self.patterns:
            commands.append(["PSUBSCRIBE", *self.patterns])
        if commands:
            plans.append((self.connector.link(role="pubsub"), commands))
        return plans

    async def _open(self) -> None:
        if self.connector.router is not None:
            await self.connector.router.refresh()
        plans = self._plan()
        try:
            for link, commands in plans:
                self.links.append(link)
                await link.open()
                await link.send(*commands)
                for _ in range(sum(len(command) - 1 for command in commands)):
                    await link.read()  # one confirmation per channel or pattern
                self.last_read[link] = anyio.current_time()
        except BaseException:
            await self._close()
            raise

    async def _close(self) -> None:
        links, self.links = self.links, []
        self.last_read.clear()
        for link in links:
            await link.close()

    # -- running --------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Subscribe (then report ready) and dispatch until cancelled."""
        await self._open()
        if self.connector.fails_over:  # a lost node is soon replaced: look again soon
            self.backoff.cap = 1.0
        task_status.started()
        try:
            while True:
                broken = anyio.Event()
                async with anyio.create_task_group() as tg:
                    for link in self.links:
                        tg.start_soon(self._read, link, broken)
                    tg.start_soon(self._watchdog, broken)
                    await broken.wait()
                    tg.cancel_scope.cancel()
                await self._close()
                await self._reopen()
        finally:
            with anyio.CancelScope(shield=True):
                await self._close()

    async def _reopen(self) -> None:
        while True:
            why = self.why
            if isinstance(why, CONNECTION_ERRORS):
                await self.backoff.wait(why)
            else:  # a slot moved: subscribe again on its new owner, at once
                log.info("pubsub: %s; subscribing again", why)
                await anyio.sleep(0.05)
            try:
                await self._open()
                self.backoff.ok()
                return
            except REDIS_ERRORS as exc:
                self.why = exc

    async def _read(self, link: Link, broken: anyio.Event) -> None:
        exact, patterns = self.exact, self.patterns
        now = asyncio.get_running_loop().time
        try:
            async for replies in link.replies():
                for reply in replies:
                    kind = reply[0]
                    if kind == b"message" or kind == b"smessage":
                        exact[reply[1]].push(reply[1], reply[2])
                    elif kind == b"pmessage":
                        patterns[reply[1]].push(reply[2], reply[3])
                    elif kind == b"sunsubscribe":  # the server dropped it: slot moved
                        self.why = RuntimeError(f"Redis unsubscribed {reply[1]!r} (slot moved)")
                        broken.set()
                        return
                self.last_read[link] = now()
        except REDIS_ERRORS as exc:
            self.why = exc
            broken.set()

    async def _watchdog(self, broken: anyio.Event) -> None:
        """PING quiet connections; drop them if even that gets no answer (half-open TCP)."""
        while True:
            await anyio.sleep(5)
            for link in list(self.links):
                quiet = anyio.current_time() - self.last_read.get(link, anyio.current_time())
                if quiet > 30:
                    log.warning("pubsub: no reply for %.0fs; reconnecting", quiet)
                    self.why = ConnectionError(f"no reply for {quiet:.0f}s")
                    broken.set()
                    return
                if quiet > 5:
                    try:
                        await link.send(["PING"])
                    except CONNECTION_ERRORS:
                        pass
