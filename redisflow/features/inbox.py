"""``Inbox``: waiting for results without polling, every wait of a process sharing one
Pub/Sub connection per Redis node.

A wait subscribes (``SSUBSCRIBE``) to its result's channel, ``<prefix>:reply:{<id>}``, and
only then sends its message (``request``) or reads the record (``result``: it may have been
written before the wait began), so a result is never pushed into a gap. The handler's
script writes the record and pushes it in one step (``results.py``), so the push carries
the result itself. Subscribes and unsubscribes made in one loop turn go out in one write;
the subscriptions of a thousand concurrent waits cost one connection, not a thousand.

When a connection drops, or Redis drops a subscription itself (a slot moved), every wait it
served subscribes again on the current owner and reads its record once: a push missed
meanwhile is found there. A subscribe not confirmed within the connector's timeout drops the
connection (a server that stopped answering), and the wait tries again on a new one. A
connection that has been silent for ``heartbeat`` seconds while waits use it is sent a PING;
one that does not answer within another ``heartbeat`` is dropped the same way (a half-open
TCP connection, after a network partition or a server restarted behind a NAT, delivers
nothing and reports no error: without the PING, its waits would sleep until their timeout).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import anyio

from ..connection import CONNECTION_ERRORS, REDIS_ERRORS, Link
from ..errors import ConnectionLost, ReplyError
from ..keys import reply_channel, result_key

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ..connection import Connector

log = logging.getLogger("redisflow")

#: Error codes after which a subscribe is tried again (on the slot's current owner).
_AGAIN = {"MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN"}


class _Node:
    """One Pub/Sub connection (to one cluster node, or the server) and what is in flight
    on it."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.opened: asyncio.Future[None] | None = None
        self.confirms: dict[bytes, deque[asyncio.Future[None]]] = {}
        self.unsubs: dict[bytes, int] = {}
        self.out: list[list[Any]] = []
        self.reader: asyncio.Task[None] | None = None
        self.dead = False
        self.heard = time.monotonic()  # when it last delivered anything
        self.pinged: float | None = None  # when a PING went out, unanswered so far


class _Sub:
    """The waits on one result channel."""

    __slots__ = ("key", "node", "ready", "waiters")

    def __init__(self, key: str) -> None:
        self.key = key
        self.node: _Node | None = None  # where it is subscribed (or being subscribed)
        self.ready: asyncio.Future[None] | None = None  # the SSUBSCRIBE's confirmation
        self.waiters: set[asyncio.Future[bytes]] = set()


class Inbox:
    """The result waits of one process (``Client.inbox``)."""

    #: Seconds of silence after which a connection that waits use is sent a PING, and then
    #: the time it has to answer before it is dropped.
    heartbeat: float = 15.0

    def __init__(self, connector: Connector, prefix: str) -> None:
        self.connector = connector
        self.prefix = prefix
        self.nodes: dict[Any, _Node] = {}
        self.subs: dict[bytes, _Sub] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        self.loop: asyncio.AbstractEventLoop | None = None  # where its connections live
        connector.on_close.append(self.aclose)  # closed with the other connections

    async def wait(
        self,
        rid: str,
        timeout: float | None,  # noqa: ASYNC109 (bounds the wait for the push only)
        send: Callable[[], Awaitable[Any]] | None = None,
        read_first: bool = True,
    ) -> bytes | None:
        """The record of result ``rid``: subscribe, then ``send`` (the message), then read
        the record if ``read_first`` (it may exist already), then wait at most ``timeout``
        seconds for its push (None for ever; 0: no wait). None when none came in time."""
        channel = reply_channel(self.prefix, rid).encode()
        key = result_key(self.prefix, rid)
        loop = asyncio.get_running_loop()
        if loop is not self.loop:  # a new event loop: what the old one held is gone
            self._forget()
            self.loop = loop
        fut: asyncio.Future[bytes] = loop.create_future()
        sub = self.subs.get(channel)
        if sub is None:
            sub = self.subs[channel] = _Sub(key)
        sub.waiters.add(fut)
        try:
            await self._subscribe(channel, sub)
            if send is not None:
                await send()
            if read_first:
                record = await self.connector.send("GET", key)
                if record is not None:
                    return bytes(record)
            if timeout is not None and timeout <= 0:
                return None
            try:
                async with asyncio.timeout(timeout):
                    return await fut
            except TimeoutError:
                return None
        finally:
            sub.waiters.discard(fut)
            if not sub.waiters and self.subs.get(channel) is sub:
                del self.subs[channel]
                node = sub.node
                if node is not None and not node.dead:
                    node.unsubs[channel] = node.unsubs.get(channel, 0) + 1
                    self._queue(node, ["SUNSUBSCRIBE", channel])

    # -- subscribing ----------------------------------------------------------------------

    async def _subscribe(self, channel: bytes, sub: _Sub) -> None:
        """Subscribe ``sub`` on its slot's owner (one SSUBSCRIBE, whoever of its waits
        asks); tried again for a few seconds through a redirection or a lost connection."""
        tries = 0
        while True:
            node, ready = sub.node, sub.ready
            try:
                if node is None or node.dead or ready is None:
                    node = await self._node(channel)
                    if sub.node is None or sub.node.dead:  # nobody subscribed meanwhile
                        ready = asyncio.get_running_loop().create_future()
                        node.confirms.setdefault(channel, deque()).append(ready)
                        sub.node, sub.ready = node, ready
                        self._queue(node, ["SSUBSCRIBE", channel])
                    continue
                if ready.done() and not ready.cancelled() and ready.exception() is None:
                    return
                try:
                    async with asyncio.timeout(self.connector.timeout):
                        await asyncio.shield(ready)
                    return
                except TimeoutError:  # a server that stopped answering
                    self._drop(node, ConnectionLost("no reply to SSUBSCRIBE"))
                    raise ConnectionLost("no reply to SSUBSCRIBE") from None
            except REDIS_ERRORS as exc:
                again = isinstance(exc, CONNECTION_ERRORS) or (
                    isinstance(exc, ReplyError) and exc.code in _AGAIN
                )
                tries += 1
                if not again or tries > 20:
                    raise
                if sub.node is node:
                    sub.node = sub.ready = None
                router = self.connector.router
                if router is not None:
                    with contextlib.suppress(*REDIS_ERRORS):
                        await router.refresh()
                await anyio.sleep(min(0.05 * tries, 0.5))

    async def _node(self, channel: bytes) -> _Node:
        router = self.connector.router
        if router is None and self.nodes:  # the one connection, most of the time
            node = self.nodes.get(None)
            if node is not None and not node.dead and node.reader is not None:
                return node
        await self.connector.ready()
        router = self.connector.router
        address = router.where(channel) if router is not None else None
        node = self.nodes.get(address)
        if node is None or node.dead:
            if router is not None and address is not None:
                link = Link(router.endpoint(address), name=f"{self.connector.name}:inbox")
            else:
                link = self.connector.link(role="inbox")
            node = self.nodes[address] = _Node(link)
        if node.opened is None:
            node.opened = asyncio.get_running_loop().create_future()
            self._spawn(self._open(node))
        await asyncio.shield(node.opened)
        return node

    async def _open(self, node: _Node) -> None:
        assert node.opened is not None
        try:
            await node.link.open()
        except BaseException as exc:
            node.dead = True
            node.opened.set_exception(exc)
            node.opened.exception()  # retrieved: waiters raise it
            return
        node.opened.set_result(None)
        node.heard = time.monotonic()
        node.reader = self._spawn(self._read(node))
        self._spawn(self._watch(node))

    async def _watch(self, node: _Node) -> None:
        """PING ``node`` after ``heartbeat`` seconds of silence while a wait uses it; drop
        it when the PING is not answered within another ``heartbeat``."""
        while not node.dead:
            await anyio.sleep(self.heartbeat / 4)
            if node.dead:
                return
            now = time.monotonic()
            if node.pinged is not None:
                if node.heard >= node.pinged:
                    node.pinged = None  # answered
                elif now - node.pinged >= self.heartbeat:
                    why = f"no reply to PING in {self.heartbeat:g} s"
                    self._drop(node, ConnectionLost(why))
                    return
            elif now - node.heard >= self.heartbeat and any(
                sub.node is node for sub in self.subs.values()
            ):
                node.pinged = now
                self._queue(node, ["PING"])

    def _queue(self, node: _Node, command: list[Any]) -> None:
        """Write ``command`` with the others of this loop turn."""
        if not node.out:
            asyncio.get_running_loop().call_soon(self._flush, node)
        node.out.append(command)

    def _flush(self, node: _Node) -> None:
        out, node.out = node.out, []
        if out and not node.dead:
            self._spawn(self._write(node, out))

    async def _write(self, node: _Node, out: list[list[Any]]) -> None:
        try:
            await node.link.send(*out)
        except CONNECTION_ERRORS as exc:
            self._drop(node, exc)

    # -- reading --------------------------------------------------------------------------

    async def _read(self, node: _Node) -> None:
        subs = self.subs
        try:
            async for replies in node.link.replies():
                node.heard = time.monotonic()
                for reply in replies:
                    kind = reply[0] if isinstance(reply, list) else reply
                    if kind == b"smessage":
                        sub = subs.get(reply[1])
                        for fut in list(sub.waiters) if sub is not None else ():
                            if not fut.done():
                                fut.set_result(reply[2])
                    elif kind == b"ssubscribe":
                        waiting = node.confirms.get(reply[1])
                        if waiting:
                            confirm = waiting.popleft()
                            if not waiting:
                                del node.confirms[reply[1]]
                            if not confirm.done():
                                confirm.set_result(None)
                    elif kind == b"sunsubscribe":
                        self._unsubscribed(node, reply[1])
        except REDIS_ERRORS as exc:
            self._drop(node, exc)

    def _unsubscribed(self, node: _Node, channel: bytes) -> None:
        left = node.unsubs.get(channel, 0)
        if left:  # ours
            if left == 1:
                del node.unsubs[channel]
            else:
                node.unsubs[channel] = left - 1
            return
        sub = self.subs.get(channel)  # Redis dropped it: its slot moved
        if sub is not None and sub.node is node:
            sub.node = sub.ready = None
            self._spawn(self._again([(channel, sub)]))

    def _drop(self, node: _Node, why: BaseException) -> None:
        """Forget a connection that failed; every wait it served subscribes again."""
        if node.dead:
            return
        node.dead = True
        for address, known in list(self.nodes.items()):
            if known is node:
                del self.nodes[address]
        for waiting in node.confirms.values():
            for confirm in waiting:
                if not confirm.done():
                    confirm.set_exception(why if isinstance(why, Exception) else ConnectionLost())
                    confirm.exception()
        node.confirms.clear()
        if node.reader is not None and node.reader is not asyncio.current_task():
            node.reader.cancel()
        self._spawn(node.link.close())
        lost = [(channel, sub) for channel, sub in self.subs.items() if sub.node is node]
        for _, sub in lost:
            sub.node = sub.ready = None
        if lost:
            log.info("results: Pub/Sub connection lost (%s); subscribing again", why)
            self._spawn(self._again(lost))

    async def _again(self, lost: list[tuple[bytes, _Sub]]) -> None:
        """Subscribe the waits of a lost connection again, then read their records."""
        for channel, sub in lost:
            if not sub.waiters:
                continue
            try:
                await self._subscribe(channel, sub)
                record = await self.connector.send("GET", sub.key)
            except REDIS_ERRORS as exc:  # the waits time out; the next ones try again
                log.warning("results: cannot subscribe again to %r: %r", channel, exc)
                continue
            if record is not None:
                for fut in list(sub.waiters):
                    if not fut.done():
                        fut.set_result(bytes(record))

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def _forget(self) -> None:
        """Drop the state of an event loop that has ended (its sockets went with it)."""
        for node in self.nodes.values():
            node.dead = True
            node.link.forsake()
        self.nodes, self.subs, self.tasks = {}, {}, set()

    async def aclose(self) -> None:
        """Close the connections (waits in progress fail)."""
        if self.loop is not None and self.loop is not asyncio.get_running_loop():
            self._forget()
            return
        nodes, self.nodes = list(self.nodes.values()), {}
        for node in nodes:
            node.dead = True
            if node.reader is not None:
                node.reader.cancel()
        for task in list(self.tasks):
            task.cancel()
        for task in list(self.tasks):
            with contextlib.suppress(BaseException):
                await task
        for node in nodes:
            await node.link.close()
        self.subs.clear()
