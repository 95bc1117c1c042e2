"""A redis-py client on the Redis a flow uses, for the user's own commands (``Flow.redis``).

redisflow itself does not use redis-py (docs/design.md, "Connections"); this is for code
that wants the full redis-py API (transactions with WATCH, every command typed...) on the
same server or cluster, imported only when asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redis.asyncio import Redis, RedisCluster

    from .connection import Connector


def redis_py_client(connector: Connector, url: str) -> Redis | RedisCluster:
    """A ``redis.asyncio.Redis`` on ``url``, or a ``RedisCluster`` when ``connector``
    routes over a cluster (known once it has connected, or from a ``redis+cluster://``)."""
    from redis.asyncio import Redis, RedisCluster

    if connector.spec.mode == "cluster" or connector.cluster:
        first = connector.endpoint
        return RedisCluster(
            host=first.address.host,
            port=first.address.port,
            username=first.username,
            password=first.password,
        )
    return Redis.from_url(url)
