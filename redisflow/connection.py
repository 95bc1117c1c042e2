"""Connections: a bounded pool for producers and acks, and dedicated links for fetch loops.

Two redis-py 8 defaults bite a messaging runtime (see REDIS-NOTES): ``socket_timeout`` is 5 s
and also cuts blocking reads, and the default pool raises at 100 connections instead of
waiting. So producers share a ``BlockingConnectionPool``, and every fetch loop owns one
``Link``: a single connection without a socket timeout (keepalive detects dead peers), on
which it writes a request before reading the previous reply (prefetch).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
from collections.abc import AsyncIterator, Iterable, Sequence
from functools import partial
from importlib import resources
from typing import Any

import anyio
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .errors import RedisflowError

try:  # what redis-py's hiredis reader returns until a whole reply is buffered
    from redis._parsers.hiredis import NOT_ENOUGH_DATA
except ImportError:  # pragma: no cover - a redis-py without it: use read() instead
    NOT_ENOUGH_DATA = None

log = logging.getLogger(__name__)

#: Errors after which a loop reconnects with backoff instead of failing.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    NoScriptError,
    ConnectionError,
    OSError,
)


async def command(client: Redis, *args: Any) -> Any:
    """Send one command through the pool client and return the raw reply."""
    return await client.execute_command(*args)  # type: ignore[no-untyped-call]


def pack(commands: Iterable[Sequence[Any]]) -> bytes:
    """Encode commands in RESP (bytes, str, int and float arguments)."""
    out: list[bytes] = []
    for args in commands:
        out.append(b"*%d\r\n" % len(args))
        for arg in args:
            kind = type(arg)  # exact types first: the common case, cheaper than isinstance
            if kind is bytes:
                data = arg
            elif kind is str:
                data = arg.encode()
            elif kind is int:
                data = b"%d" % arg
            elif isinstance(arg, bytes):
                data = arg
            elif isinstance(arg, str):
                data = arg.encode()
            elif isinstance(arg, int):
                data = b"%d" % arg
            elif isinstance(arg, float):
                data = repr(arg).encode()
            else:
                raise TypeError(f"cannot send a {type(arg).__name__} to Redis: {arg!r}")
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class Pipeliner:
    """Auto-pipelining for producers: commands issued concurrently share round trips.

    Calls queue up; a flush task writes everything queued so far on one of ``links`` own
    connections (no socket timeout, so no per-reply timer) and hands each caller its own
    reply or its own error. A lone call costs one round trip; a thousand concurrent calls
    cost a few. Replies are raw (RESP2). Calls caught by a lost connection are sent again
    once it is back, for up to ``retry_for`` seconds, then fail with the connection error.
    """

    def __init__(
        self, connector: Connector, *, links: int = 2, batch: int = 2000, retry_for: float = 5.0
    ) -> None:
        self.connector = connector
        self.batch, self.retry_for = batch, retry_for
        self._idle: list[Link] = [connector.link() for _ in range(links)]
        self._queue: list[tuple[Sequence[Sequence[Any]], asyncio.Future[list[Any]]]] = []
        self._flushers: set[asyncio.Task[None]] = set()
        self.closed = False

    async def __call__(self, *args: Any) -> Any:
        """Send one command; its reply (an error reply is raised)."""
        return (await self._submit((args,)))[0]

    async def many(self, *commands: Sequence[Any]) -> list[Any]:
        """Send several commands back to back, in order; their replies. The first error
        reply among them is raised (after all have run)."""
        return await self._submit(commands)

    def _submit(self, commands: Sequence[Sequence[Any]]) -> asyncio.Future[list[Any]]:
        if self.closed:
            raise RedisConnectionError("the flow's connections are closed")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[Any]] = loop.create_future()
        self._queue.append((commands, fut))
        if self._idle and len(self._queue) == 1:
            task = loop.create_task(self._flush(self._idle.pop()))
            self._flushers.add(task)
            task.add_done_callback(self._flushers.discard)
        return fut

    async def _flush(self, link: Link) -> None:
        try:
            while self._queue:
                take, size = 0, 0
                while take < len(self._queue) and size < self.batch:
                    size += len(self._queue[take][0])
                    take += 1
                units, self._queue = self._queue[:take], self._queue[take:]
                await self._send_units(link, units)
        finally:
            self._idle.append(link)
            if self._queue and not self.closed:  # queued while we were handing back
                task = asyncio.get_running_loop().create_task(self._flush(self._idle.pop()))
                self._flushers.add(task)
                task.add_done_callback(self._flushers.discard)

    async def _send_units(
        self, link: Link, units: list[tuple[Sequence[Sequence[Any]], asyncio.Future[list[Any]]]]
    ) -> None:
        """One round trip for ``units``; on a lost connection, reconnect and send the
        unanswered ones again for up to ``retry_for`` seconds (a reply lost in flight may
        thus duplicate a push: at-least-once), then fail them."""
        deadline = asyncio.get_running_loop().time() + self.retry_for
        delay = 0.05
        while True:
            try:
                await self._round_trip(link, units)
                return
            except CONNECTION_ERRORS as exc:
                await link.close()
                units = [unit for unit in units if not unit[1].done()]
                if asyncio.get_running_loop().time() + delay > deadline:
                    failure: BaseException = exc
                else:
                    await asyncio.sleep(random.uniform(delay / 2, delay))
                    delay = min(0.5, delay * 2)
                    continue
            except Exception as exc:  # e.g. an argument that cannot be encoded
                await link.close()
                failure = exc
            for _, fut in units:
                if not fut.done():
                    fut.set_exception(failure)
            return

    @staticmethod
    async def _round_trip(
        link: Link, units: list[tuple[Sequence[Sequence[Any]], asyncio.Future[list[Any]]]]
    ) -> None:
        packed: list[bytes] = []
        sent = []
        for unit in units:
            try:
                packed.append(pack(unit[0]))
                sent.append(unit)
            except TypeError as exc:  # this caller's bad argument fails this caller only
                if not unit[1].done():
                    unit[1].set_exception(exc)
        if not sent:
            return
        if not link.conn.is_connected:
            await link.open()
        await link.write(b"".join(packed))
        for commands, fut in sent:
            replies = [await link.reply() for _ in commands]
            if fut.done():
                continue
            error = None
            for reply in replies:
                if isinstance(reply, ResponseError):
                    error = reply
                    break
            if error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(replies)

    async def aclose(self) -> None:
        """Stop the flushers and close the links; waiting callers get a ConnectionError."""
        self.closed = True
        for task in list(self._flushers):
            task.cancel()
        for task in list(self._flushers):
            with contextlib.suppress(BaseException):
                await task
        for _, fut in self._queue:
            if not fut.done():
                fut.set_exception(RedisConnectionError("the flow's connections were closed"))
        self._queue.clear()
        for link in self._idle:
            await link.close()


class Script:
    """A Lua script from ``redisflow/scripts``, called by SHA with a load on NOSCRIPT."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.source = resources.files("redisflow.scripts").joinpath(f"{name}.lua").read_text()
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()

    def args(self, keys: list[str], argv: list[Any]) -> list[Any]:
        """The EVALSHA command that runs this script on ``keys`` with ``argv``."""
        return ["EVALSHA", self.sha, len(keys), *keys, *argv]

    async def __call__(self, client: Redis | Pipeliner, keys: list[str], argv: list[Any]) -> Any:
        """Run the script through the pool client (or a Pipeliner), loading it once if the
        server lacks it."""
        send = client if isinstance(client, Pipeliner) else partial(command, client)
        try:
            return await send(*self.args(keys, argv))
        except NoScriptError:
            if isinstance(client, Pipeliner):
                await client("SCRIPT", "LOAD", self.source)
            else:
                await client.script_load(self.source)
            return await send(*self.args(keys, argv))


class Backoff:
    """Exponential backoff with full jitter, for reconnect loops; logs the outage once, and
    gives up (raises ``RedisflowError``) when an outage outlasts ``limit`` seconds."""

    def __init__(
        self, what: str, limit: float | None = None, base: float = 0.05, cap: float = 5.0
    ) -> None:
        self.what, self.limit, self.base, self.cap = what, limit, base, cap
        self.failures = 0
        self.since = 0.0

    async def wait(self, exc: BaseException) -> None:
        """Sleep before the next attempt; the first failure of an outage is logged."""
        now = anyio.current_time()
        if self.failures == 0:
            self.since = now
            log.warning("%s: lost Redis (%s); reconnecting", self.what, exc or type(exc).__name__)
        elif self.limit is not None and now - self.since >= self.limit:
            raise RedisflowError(
                f"{self.what}: Redis unreachable for {now - self.since:.0f}s, giving up"
                f" (give_up_after={self.limit:g}): {exc}"
            ) from exc
        self.failures += 1
        delay = random.uniform(0, min(self.cap, self.base * 2**self.failures))
        if self.limit is not None:
            delay = min(delay, max(0.0, self.since + self.limit - now))
        await anyio.sleep(delay)

    def ok(self) -> None:
        """Record success; ends (and logs the length of) an outage."""
        if self.failures:
            log.warning("%s: reconnected after %.1fs", self.what, anyio.current_time() - self.since)
            self.failures = 0


class Connector:
    """Builds every connection of a flow from one URL."""

    def __init__(self, url: str, *, max_connections: int = 32) -> None:
        self.url = url
        self.pool = BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=None,
            protocol=2,
            socket_keepalive=True,
            retry=Retry(ExponentialWithJitterBackoff(base=0.05, cap=1.0), retries=5),
        )
        self.client = Redis(connection_pool=self.pool)
        self.send = Pipeliner(self)

    def link(self) -> Link:
        """A dedicated connection for one fetch loop."""
        kwargs = dict(self.pool.connection_kwargs)
        kwargs.update(socket_timeout=None, socket_keepalive=True, protocol=2)
        kwargs.pop("retry", None)
        return Link(self.pool.connection_class(**kwargs))

    async def aclose(self) -> None:
        """Close the pool (links are closed by their loops)."""
        await self.send.aclose()
        await self.client.aclose()
        await self.pool.disconnect()


class Link:
    """One connection owned by one loop: send now, read later; no socket timeout."""

    def __init__(self, conn: AbstractConnection) -> None:
        self.conn = conn
        self.client_id: int | None = None

    async def open(self, scripts: tuple[Script, ...] = ()) -> None:
        """Connect, learn the CLIENT ID (to unblock it), and load ``scripts``."""
        await self.conn.connect()  # type: ignore[no-untyped-call]
        self.client_id = int(await self.call("CLIENT", "ID"))
        for script in scripts:
            await self.call("SCRIPT", "LOAD", script.source)

    async def call(self, *args: Any) -> Any:
        """Send one command and read its reply."""
        await self.conn.send_command(*args)
        return await self.conn.read_response()

    async def write(self, data: bytes) -> None:
        """Write already packed commands (see ``pack``)."""
        await self.conn.send_packed_command(data, check_health=False)

    async def send(self, *commands: list[Any]) -> None:
        """Write several commands at once; read their replies later with ``read``."""
        if not self.conn.is_connected:  # never reconnect implicitly: only ``open`` may
            raise RedisConnectionError("link is closed")
        await self.conn.send_packed_command(pack(commands), check_health=False)

    def reader(self) -> Any:
        """The connection's hiredis reader (``gets()`` returns a buffered reply, or
        ``NOT_ENOUGH_DATA``: then ``fill``), or None without hiredis."""
        if NOT_ENOUGH_DATA is None:
            return None
        return getattr(self.conn._parser, "_reader", None)

    async def reply(self) -> Any:
        """The next reply; an error reply is returned as its exception, not raised. With
        hiredis a buffered reply is taken without going through redis-py's read chain."""
        reader = self.reader()
        if reader is None:
            try:
                return await self.conn.read_response()
            except ResponseError as exc:
                return exc
        reply = reader.gets()
        while reply is NOT_ENOUGH_DATA:
            await self.fill()
            reply = reader.gets()
        if isinstance(reply, Exception) and not isinstance(reply, ResponseError):
            raise reply  # e.g. LOADING: a connection error
        return reply

    async def fill(self) -> None:
        """Read from the socket into the hiredis reader (raises if the server closed it)."""
        parser: Any = self.conn._parser
        await parser.read_from_socket()

    async def replies(self) -> AsyncIterator[list[Any]]:
        """Every reply as it arrives, a socket read's worth at a time (for Pub/Sub). With
        hiredis (our dependency) the buffered replies are taken without an await each."""
        reader = self.reader()
        if reader is None:  # redis-py without hiredis
            while True:
                yield [await self.read()]
        while True:
            batch: list[Any] = []
            reply = reader.gets()
            while reply is not NOT_ENOUGH_DATA:
                if isinstance(reply, Exception):
                    raise reply
                batch.append(reply)
                reply = reader.gets()
            if batch:
                yield batch
            await self.fill()

    async def read(self) -> Any:
        """Read the next reply (raises a reply error as an exception)."""
        return await self.conn.read_response()

    async def close(self) -> None:
        """Drop the connection."""
        self.client_id = None
        await self.conn.disconnect()
