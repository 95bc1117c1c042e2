"""Connections to Redis: URLs, links, auto-pipelining, cluster routing, backoff, and the
``Connector`` that holds them for one process.

A flow talks to Redis over a small fixed set of connections, each with one role:

- ``Connector.send``: auto-pipelined commands (producers, acks, verdicts, reads), shared by
  every caller of the process (``pipeliner.py``; in a cluster one per node, ``cluster.py``);
- ``Connector.link(key)``: one dedicated ``Link`` per fetch loop and for Pub/Sub, which
  block in Redis and are never shared (``link.py``); in a cluster, on the node of ``key``.

Whether a ``redis://`` URL names a cluster node is learnt at the first call (``INFO
server``), with the server's version: Redis or Valkey 7.0 at least. redis-py is not used on
these paths (docs/design.md, "Connections").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError, ConnectionLost, PermissionDenied, RedisflowError, ReplyError
from ..protocol.replies import info, pairs, text
from ..protocol.scripts import Call
from .backoff import Backoff
from .cluster import RoutedLink, Router
from .link import LOST_CODES, Link, pack
from .pipeliner import Pipeliner, Wait
from .sentinel import ResolvedLink, Sentinels
from .url import Address, Endpoint, ServerSpec, parse_url, redact

#: Errors after which a loop reconnects with backoff instead of failing (OSError covers
#: the builtin ConnectionError and TimeoutError).
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (ConnectionLost, OSError)
#: ... and error replies too: what a loop that must go on whatever Redis says catches.
REDIS_ERRORS: tuple[type[BaseException], ...] = (ConnectionLost, OSError, ReplyError)
MIN_VERSION = (7, 0)
log = logging.getLogger("redisflow")

__all__ = [
    "CONNECTION_ERRORS",
    "LOST_CODES",
    "REDIS_ERRORS",
    "Backoff",
    "Connector",
    "Endpoint",
    "Link",
    "Pipeliner",
    "Sender",
    "ServerInfo",
    "ServerSpec",
    "WaitingSender",
    "check_version",
    "pack",
    "parse_url",
    "redact",
]


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """What the server said of itself: ``redis`` or ``valkey``, its version, its mode."""

    name: str
    version: tuple[int, ...]
    mode: str  # standalone, cluster, sentinel

    @classmethod
    def parse(cls, reply: bytes) -> ServerInfo:
        """From an ``INFO server`` reply (Valkey reports ``redis_version`` 7.2.4 for
        compatibility: its own version is ``valkey_version``)."""
        fields = info(reply)
        text = fields.get("valkey_version") or fields.get("redis_version", "0")
        version = tuple(int(p) for p in text.split(".") if p.isdigit())
        mode = fields.get("server_mode") or fields.get("redis_mode", "standalone")
        return cls(fields.get("server_name", "redis"), version, mode)

    @classmethod
    def hello(cls, reply: list[Any]) -> ServerInfo:
        """From a ``HELLO`` reply: what a user without ``INFO`` (a ``-@dangerous`` one) may
        still ask."""
        fields = {text(k): text(v) for k, v in pairs(reply) if isinstance(v, bytes)}
        version = tuple(int(p) for p in fields.get("version", "0").split(".") if p.isdigit())
        return cls(fields.get("server", "redis"), version, fields.get("mode", "standalone"))

    def __str__(self) -> str:
        return f"{self.name.capitalize()} {'.'.join(map(str, self.version))}"


def check_version(info: ServerInfo, where: str) -> None:
    """Refuse a server older than Redis or Valkey 7.0 (``ConfigError``: waiting would not
    help), naming what it is."""
    if info.name not in ("redis", "valkey") or info.version[:2] < MIN_VERSION:
        raise ConfigError(
            f"{info} at {where}: redisflow needs Redis or Valkey 7.0 or newer"
            " (docs/server.md has ways to get one)"
        )


class Sender:
    """``Connector.send``: commands to the server, or routed over a cluster, once the
    connector knows which it talks to. Same interface as ``Pipeliner``."""

    __slots__ = ("connector",)

    def __init__(self, connector: Connector) -> None:
        self.connector = connector

    def __call__(self, *args: Any) -> Awaitable[Any]:
        """Send one command; its reply (an error reply is raised). Not a coroutine itself:
        once connected it hands back the target's, one frame less per call."""
        connector = self.connector
        target = connector.target
        if target is None or connector.loop is not asyncio.get_running_loop():
            return self._first(args)
        return target(*args)

    async def _first(self, args: tuple[Any, ...]) -> Any:
        return await (await self.connector.ready())(*args)

    async def many(self, *commands: Sequence[Any]) -> list[Any]:
        """Send several commands back to back; their replies (the first error is raised)."""
        return await (await self.connector.ready()).many(*commands)

    def waiting(self, wait: Wait) -> WaitingSender:
        """This sender, with every call acknowledged by replicas (``WAIT``/``WAITAOF``)."""
        return WaitingSender(self.connector, wait)


class WaitingSender:
    """``Sender.waiting``: each call also waits for replicas to acknowledge it."""

    def __init__(self, connector: Connector, wait: Wait) -> None:
        self.connector, self.wait = connector, wait

    async def __call__(self, *args: Any) -> Any:
        """Send one command; its reply, once acknowledged."""
        return await (await self.connector.ready()).waiting(self.wait)(*args)

    async def many(self, *commands: Sequence[Any]) -> list[Any]:
        """Send several commands; their replies, once acknowledged."""
        return await (await self.connector.ready()).waiting(self.wait).many(*commands)


class Connector:
    """Every connection of one process to the Redis (or the cluster) named by ``url``."""

    def __init__(self, url: str, *, name: str = "redisflow", timeout: float = 10.0) -> None:
        self.spec = parse_url(url)
        self.name = self.spec.client_name or name
        self.timeout = timeout
        self.endpoint = self.spec.endpoint()
        self.send = Sender(self)
        self.target: Pipeliner | Router | None = None
        self.router: Router | None = None
        self.sentinels = (
            Sentinels(self.spec, name=self.name) if self.spec.mode == "sentinel" else None
        )
        self.info: ServerInfo | None = None
        self._ready: asyncio.Future[Pipeliner | Router] | None = None
        self._links: weakref.WeakSet[Link] = weakref.WeakSet()
        self._watch: asyncio.Task[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None  # where the connections live
        self._guard: AsyncGenerator[None, None] | None = None
        self.on_close: list[Callable[[], Awaitable[None]]] = []  # closes what others opened

    @property
    def display(self) -> str:
        """The URL with its passwords hidden, for messages."""
        return self.spec.display

    @property
    def cluster(self) -> bool:
        """Whether the connector routes over a cluster (known once ``ready``)."""
        return self.router is not None

    @property
    def fails_over(self) -> bool:
        """Whether a lost server is replaced by another (a cluster, a sentinel service):
        loops then reconnect with a shorter backoff (known once ``ready``)."""
        return self.router is not None or self.sentinels is not None

    async def ready(self) -> Pipeliner | Router:
        """Learn what the URL names (one server or a cluster node: ``INFO server``), check
        its version, and set up the connections (once; concurrent callers wait for it)."""
        loop = asyncio.get_running_loop()
        if self.loop is not loop and (self.target is not None or self._ready is not None):
            self._forsake()
        if self.target is not None:
            return self.target
        if self._ready is None:
            self._ready = loop.create_future()
            self.loop = loop
            try:
                target = await self._detect()
                await self._close_with_loop()
                self._ready.set_result(target)
            except BaseException as exc:
                self._ready.set_exception(exc)
                self._ready.exception()  # retrieved here; raised below
                self._ready = None
                raise
        return await asyncio.shield(self._ready)

    async def _close_with_loop(self) -> None:
        """Close the connections when their event loop ends: ``asyncio.run`` (anyio's,
        uvloop's) closes the asynchronous generators still suspended before it closes the
        loop, so a flow used by one ``asyncio.run`` after another (a script, a command)
        connects again in the next instead of waiting forever on the dead loop's sockets."""

        async def until_the_loop_ends() -> AsyncGenerator[None, None]:
            try:
                yield
            finally:
                if self._guard is not None:  # the loop is shutting down: close while it can
                    self._guard = None
                    with contextlib.suppress(Exception):
                        await self.aclose()

        guard = until_the_loop_ends()
        await guard.asend(None)
        self._guard = guard

    def _forsake(self) -> None:
        """Drop connections opened on another event loop, which ended without closing them
        (or is not this thread's: refused). They cannot be closed from here: their sockets
        are shut down, so that the server sees them go, and the next call connects again."""
        old = self.loop
        if old is not None and old.is_running():
            raise RedisflowError(
                "this client's connections belong to an event loop that is running in"
                " another thread: use it from that loop, or one client (flow) per loop"
            )
        target, self.target, self._ready, self._watch, self._guard = (
            self.target, None, None, None, None,
        )  # fmt: skip
        self.router = None
        if target is not None:
            target.forsake()
        for link in list(self._links):
            link.forsake()

    async def _detect(self) -> Pipeliner | Router:
        if self.sentinels is not None:
            self.endpoint = await self.sentinels.primary()
        info = await self._hello()
        self.info = info
        check_version(info, self.display)
        if self.spec.mode == "cluster" or info.mode == "cluster":
            self.router = Router(self.spec, name=self.name, timeout=self.timeout)
            await self.router.refresh()
            self.target = self.router
        elif self.sentinels is not None:
            self.target = Pipeliner(lambda: self._link("send"), timeout=self.timeout, retry_for=10)
            self._watch = asyncio.get_running_loop().create_task(self.sentinels.watch(self._leave))
        else:
            self.target = Pipeliner(
                lambda: Link(self.endpoint, name=f"{self.name}:send"), timeout=self.timeout
            )
        return self.target

    async def _hello(self) -> ServerInfo:
        """What the server says of itself; for a ``redis+cluster://`` URL, the first seed
        that answers (a seed that is down must not stop a cluster whose others are up)."""
        seeds = self.spec.addresses if self.spec.mode == "cluster" else (self.endpoint.address,)
        failure: BaseException | None = None
        for address in seeds:
            endpoint = self.spec.endpoint(address) if self.spec.mode == "cluster" else self.endpoint
            link = Link(endpoint, name=f"{self.name}:hello")
            try:
                await link.open()
                try:
                    info = ServerInfo.parse(await link.call("INFO", "server"))
                except PermissionDenied:  # an ACL without INFO (-@dangerous): HELLO tells too
                    info = ServerInfo.hello(await link.call("HELLO"))  # any user may
            except CONNECTION_ERRORS as exc:
                failure = exc
                continue
            finally:
                await link.close()
            self.endpoint = endpoint
            return info
        assert failure is not None
        if len(seeds) > 1:
            raise ConnectionLost(f"no seed of {self.display} answered (last: {failure})")
        raise failure

    def _link(self, role: str) -> Link:
        """A link to the primary of a sentinel service, as it is when the link opens."""
        assert self.sentinels is not None
        sentinels = self.sentinels
        link = ResolvedLink(
            sentinels.primary, sentinels.avoided, self.endpoint, name=f"{self.name}:{role}"
        )
        self._links.add(link)
        return link

    async def _leave(self, old: Address) -> None:
        """A failover of the primary ``old`` began (or ended): close every connection to it
        at once (what is written there now is lost); they reconnect to the new primary."""
        leaving = [link for link in self._links if link.endpoint.address == old]
        await asyncio.gather(*(link.close() for link in leaving))  # each shut in this tick

    def link(self, key: str | bytes | None = None, *, role: str = "fetch") -> Link:
        """A dedicated connection for one loop, on the server that holds ``key`` (call
        ``ready`` first: a flow does, at start)."""
        name = f"{self.name}:{role}"
        if self.sentinels is not None:
            return self._link(role)
        if self.router is not None and key is not None:
            return RoutedLink(self.router, key, name=name)
        if self.router is not None:
            return RoutedLink(self.router, b"", name=name)
        return Link(self.endpoint, name=name)

    async def run(self, call: Call, send: Sender | WaitingSender | None = None) -> Any:
        """Run a script (through ``send``: acknowledged by replicas, say); when the server
        that owns its keys lacks it (``NOSCRIPT``: a restart, a promoted replica) load it
        there and run it again."""
        send = send or self.send
        for _ in range(3):
            try:
                return await send(*call.command())
            except ReplyError as exc:
                if exc.code != "NOSCRIPT":
                    raise
            await self.on_key(call.keys[0] if call.keys else None, "SCRIPT", "LOAD",
                              call.script.source)  # fmt: skip
        return await send(*call.command())

    async def on_key(self, key: str | bytes | None, *args: Any) -> Any:
        """Send a command that names no key (``SCRIPT LOAD``) to the node that owns
        ``key``."""
        if self.router is None:
            return await self.send(*args)
        return await self.router.on_node(self.router.where(key), *args)

    def follow(self, error: ReplyError) -> bool:
        """Learn from a redirection a dedicated link got; True if it was one."""
        return self.router is not None and self.router.follow(error)

    async def unblock(self, link: Link) -> bool:
        """Wake ``link`` if it blocks in Redis (``CLIENT UNBLOCK``, on the link's server);
        False when it cannot be woken (no client id yet)."""
        if link.client_id is None:
            return False
        if self.router is not None:
            await self.router.on_node(link.endpoint.address, "CLIENT", "UNBLOCK", link.client_id)
        else:
            await self.send("CLIENT", "UNBLOCK", link.client_id)
        return True

    async def wake(self, link: Link, blocked: Callable[[], bool], who: str) -> None:
        """Unblock ``link`` while ``blocked()`` (repeated: the unblock may reach Redis before
        the blocking command it should end). Without the permission, give up: the command
        returns by itself at its timeout."""
        while blocked():
            try:
                if not await self.unblock(link):
                    return
            except ReplyError as exc:
                log.info("%s: cannot unblock the fetch (%s); it stops at its timeout", who, exc)
                return
            except CONNECTION_ERRORS:
                return
            await asyncio.sleep(0.05)

    async def on_masters(self, *args: Any) -> list[Any]:
        """Send one command to the server, or to every master of a cluster; the replies."""
        await self.ready()
        if self.router is not None:
            return await self.router.on_masters(*args)
        return [await self.send(*args)]

    async def aclose(self) -> None:
        """Close the shared connections (links are closed by their loops)."""
        guard, self._guard = self._guard, None
        if guard is not None:
            await guard.aclose()
        for close in self.on_close:  # the result inbox's connections
            await close()
        if self.loop is not None and self.loop is not asyncio.get_running_loop():
            self._forsake()  # opened on a loop that has ended: nothing to wait for
            return
        target, self.target, self._ready = self.target, None, None
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(BaseException):
                await self._watch
            self._watch = None
        if target is not None:
            await target.aclose()
