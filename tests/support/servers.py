"""Private ``redis-server`` processes for the tests, from ``redisflow.testing.servers`` (the
launcher users get too): every one listens on 127.0.0.1 on a free port, has persistence off by
default, and is stopped *only by its own PID*. Never the shared Redis on 6379.

    proc = start_redis(["--appendonly", "yes"])
    try:
        ...  # use proc.url / proc.port
        stop_redis(proc, remove_dir=False)                       # "crash"/stop
        proc = start_redis(["--appendonly", "yes"], port=proc.port,
                           data_dir=proc.data_dir)               # restart on same data
    finally:
        stop_redis(proc)
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence

from redisflow.testing.servers import RedisServer, free_port, redis_server_binary

__all__ = [
    "RedisProc",
    "closed_port",
    "free_port",
    "kill_redis",
    "redis_server_binary",
    "start_redis",
    "stop_redis",
]

START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0

#: The launcher is ``redisflow.testing.servers``; ``RedisProc`` is its ``RedisServer``.
RedisProc = RedisServer


#: The sockets that keep ``closed_port``'s ports bound, for the life of the test process.
_HELD: list[socket.socket] = []


def closed_port() -> int:
    """A port on 127.0.0.1 that refuses every connection until the test process ends: a
    socket holds it bound without listening. (A merely free port, as the URL of a Redis
    that is down, can be taken meanwhile by a server another test starts: the "down" URL
    then reaches a live Redis. A server started on this one fails to bind, and the
    launcher picks another port.)"""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # no SO_REUSEADDR: exclusive
    sock.bind(("127.0.0.1", 0))
    _HELD.append(sock)
    port: int = sock.getsockname()[1]
    return port


def start_redis(
    extra_args: Sequence[str] = (),
    port: int | None = None,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    timeout: float = START_TIMEOUT,
) -> RedisProc:
    """Start a private redis-server (see ``RedisServer.start``): ``data_dir=old.data_dir``
    and ``port=old.port`` restart on the same RDB/AOF files, in a dir never deleted."""
    return RedisServer.start(extra_args, port=port, data_dir=data_dir, timeout=timeout)


def stop_redis(
    rp: RedisProc, *, remove_dir: bool | None = None, timeout: float = STOP_TIMEOUT
) -> None:
    """Stop exactly this server (SIGTERM, wait, SIGKILL if needed). Idempotent.

    ``remove_dir`` defaults to whether ``start_redis`` created the data dir; pass
    ``False`` to keep the files for a restart.
    """
    rp.stop(remove_dir=remove_dir, timeout=timeout)


def kill_redis(rp: RedisProc) -> None:
    """SIGKILL this server (simulated crash), keeping its data dir. Idempotent."""
    rp.kill()


# -- waiting and flows -----------------------------------------------------------------------
