"""Connections: a bounded pool for producers and acks, and dedicated links for fetch loops.

Two redis-py 8 defaults bite a messaging runtime (see REDIS-NOTES): ``socket_timeout`` is 5 s
and also cuts blocking reads, and the default pool raises at 100 connections instead of
waiting. So producers share a ``BlockingConnectionPool``, and every fetch loop owns one
``Link``: a single connection without a socket timeout (keepalive detects dead peers), on
which it writes a request before reading the previous reply (prefetch).
"""

from __future__ import annotations

import hashlib
import logging
import random
from importlib import resources
from typing import Any

import anyio
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import TimeoutError as RedisTimeoutError

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


class Script:
    """A Lua script from ``redisflow/scripts``, called by SHA with a load on NOSCRIPT."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.source = resources.files("redisflow.scripts").joinpath(f"{name}.lua").read_text()
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()

    def args(self, keys: list[str], argv: list[Any]) -> list[Any]:
        """The EVALSHA command that runs this script on ``keys`` with ``argv``."""
        return ["EVALSHA", self.sha, len(keys), *keys, *argv]

    async def __call__(self, client: Redis, keys: list[str], argv: list[Any]) -> Any:
        """Run the script through the pool client, loading it once if the server lacks it."""
        try:
            return await command(client, *self.args(keys, argv))
        except NoScriptError:
            await client.script_load(self.source)
            return await command(client, *self.args(keys, argv))


class Backoff:
    """Exponential backoff with full jitter, for reconnect loops; logs the outage once."""

    def __init__(self, what: str, base: float = 0.05, cap: float = 5.0) -> None:
        self.what, self.base, self.cap = what, base, cap
        self.failures = 0
        self.since = 0.0

    async def wait(self, exc: BaseException) -> None:
        """Sleep before the next attempt; the first failure of an outage is logged."""
        if self.failures == 0:
            self.since = anyio.current_time()
            log.warning("%s: lost Redis (%s); reconnecting", self.what, exc or type(exc).__name__)
        self.failures += 1
        await anyio.sleep(random.uniform(0, min(self.cap, self.base * 2**self.failures)))

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

    def link(self) -> Link:
        """A dedicated connection for one fetch loop."""
        kwargs = dict(self.pool.connection_kwargs)
        kwargs.update(socket_timeout=None, socket_keepalive=True, protocol=2)
        kwargs.pop("retry", None)
        return Link(self.pool.connection_class(**kwargs))

    async def aclose(self) -> None:
        """Close the pool (links are closed by their loops)."""
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

    async def send(self, *commands: list[Any]) -> None:
        """Write several commands at once; read their replies later with ``read``."""
        await self.conn.send_packed_command(self.conn.pack_commands(commands), check_health=False)

    async def read(self) -> Any:
        """Read the next reply (raises a reply error as an exception)."""
        return await self.conn.read_response()

    async def close(self) -> None:
        """Drop the connection."""
        self.client_id = None
        await self.conn.disconnect()
