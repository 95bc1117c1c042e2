"""Connections to Redis: URLs, links, auto-pipelining, backoff, and the ``Connector``.

A flow talks to Redis over a small fixed set of connections, each with one role:

- ``Connector.send``: auto-pipelined commands (producers, acks, verdicts, reads), shared by
  every caller of the process (``pipeliner.py``);
- ``Connector.link()``: one dedicated ``Link`` per fetch loop and one for Pub/Sub, which
  block in Redis and are never shared (``link.py``).

redis-py is not used on these paths: a blocking read must not have a socket timeout, a
blocked pop must never be cancelled, and replies are read straight from hiredis
(docs/design.md, "Connections").
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError, ConnectionLost, ReplyError
from ..protocol.scripts import Call
from .backoff import Backoff
from .link import LOST_CODES, Link, pack
from .pipeliner import Pipeliner
from .url import Endpoint, ServerSpec, parse_url, redact

#: Errors after which a loop reconnects with backoff instead of failing (OSError covers
#: the builtin ConnectionError and TimeoutError).
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (ConnectionLost, OSError)
#: ... and error replies too: what a loop that must go on whatever Redis says catches.
REDIS_ERRORS: tuple[type[BaseException], ...] = (ConnectionLost, OSError, ReplyError)

__all__ = [
    "CONNECTION_ERRORS",
    "LOST_CODES",
    "REDIS_ERRORS",
    "Backoff",
    "Connector",
    "Endpoint",
    "Link",
    "Pipeliner",
    "ServerSpec",
    "pack",
    "parse_url",
    "redact",
]


class Connector:
    """Every connection of one process to the Redis named by ``url``."""

    def __init__(self, url: str, *, name: str = "redisflow", timeout: float = 10.0) -> None:
        self.spec = parse_url(url)
        if self.spec.mode != "single":
            raise ConfigError(f"{self.spec.display}: {self.spec.mode} URLs are not supported yet")
        self.name = self.spec.client_name or name
        self.endpoint = self.spec.endpoint()
        self.send = Pipeliner(lambda: Link(self.endpoint, name=f"{name}:send"), timeout=timeout)

    @property
    def display(self) -> str:
        """The URL with its passwords hidden, for messages."""
        return self.spec.display

    def link(self, key: str | None = None, *, role: str = "fetch") -> Link:
        """A dedicated connection for one loop (on the server that holds ``key``)."""
        return Link(self.endpoint, name=f"{self.name}:{role}")

    async def run(self, call: Call) -> Any:
        """Run a script; when the server lacks it (``NOSCRIPT``: a restart, a failover)
        load it there and run it again."""
        try:
            return await self.send(*call.command())
        except ReplyError as exc:
            if exc.code != "NOSCRIPT":
                raise
        await self.send("SCRIPT", "LOAD", call.script.source)
        return await self.send(*call.command())

    async def unblock(self, link: Link) -> bool:
        """Wake ``link`` if it blocks in Redis (``CLIENT UNBLOCK``, on the link's server);
        False when it cannot be woken (no client id, or no permission)."""
        if link.client_id is None:
            return False
        await self.send("CLIENT", "UNBLOCK", link.client_id)
        return True

    async def aclose(self) -> None:
        """Close the shared connections (links are closed by their loops)."""
        await self.send.aclose()
