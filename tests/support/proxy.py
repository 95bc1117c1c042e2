"""A TCP proxy in front of a test's Redis, for faults a real server does not make on
demand: ``Proxy`` listens on a free port and hands each accepted connection, with its own
connection to Redis, to ``pipe``, which a subclass writes (swallow one reply, hold one
command, go silent)."""

from __future__ import annotations

import anyio
import anyio.abc


class Proxy:
    """Listens on ``port`` (set once ``serve`` has started) and forwards to Redis at
    ``upstream_port`` as ``pipe`` decides."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        async with listener:
            self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
            task_status.started()
            await listener.serve(self._accepted)

    async def _accepted(self, client: anyio.abc.SocketStream) -> None:
        async with client, await anyio.connect_tcp("127.0.0.1", self.upstream_port) as server:
            await self.pipe(client, server)

    async def pipe(self, client: anyio.abc.SocketStream, server: anyio.abc.SocketStream) -> None:
        """Forward between ``client`` and ``server`` until either side closes."""
        raise NotImplementedError
