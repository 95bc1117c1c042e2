"""A redis-py client on the Redis a flow uses, for the user's own commands (``Flow.redis``).

redisflow itself does not use redis-py (docs/design.md, "Connections"); this is for code
that wants the full redis-py API (transactions with WATCH, every command typed...) on the
same server or cluster, imported only when asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from redis.asyncio import Redis, RedisCluster

    from .connection import Connector


def redis_py_client(connector: Connector, url: str) -> Redis | RedisCluster:
    """A ``redis.asyncio.Redis`` on ``url``, or a ``RedisCluster`` when ``connector``
    routes over a cluster (known once it has connected, or from a ``redis+cluster://``),
    or the primary of a ``redis+sentinel://`` service (redis-py's ``Sentinel`` follows it)."""
    from redis.asyncio import Redis, RedisCluster

    spec = connector.spec
    if spec.mode == "sentinel":
        from redis.asyncio.sentinel import Sentinel

        assert spec.service is not None  # parse_url requires one
        tls: dict[str, Any] = {"ssl": True} if spec.tls is not None else {}
        sentinels = Sentinel(  # type: ignore[no-untyped-call,unused-ignore]
            [(a.host, a.port) for a in spec.addresses],
            sentinel_kwargs={
                "username": spec.sentinel_username,
                "password": spec.sentinel_password,
                **tls,
            },
        )
        client: Redis = sentinels.master_for(
            spec.service, username=spec.username, password=spec.password, db=spec.db, **tls
        )
        return client

    if connector.spec.mode == "cluster" or connector.cluster:
        from redis.asyncio.cluster import ClusterNode

        first = connector.endpoint  # the seed that answered, then every other one
        seeds = dict.fromkeys([first.address, *spec.addresses])
        return RedisCluster(
            startup_nodes=[ClusterNode(a.host, a.port) for a in seeds],
            username=first.username,
            password=first.password,
        )
    return Redis.from_url(url)


async def close_client(client: Redis | RedisCluster) -> None:
    """Close ``client``, and for a sentinel service the clients of its sentinels too."""
    await client.aclose()
    pool = getattr(client, "connection_pool", None)
    manager = getattr(pool, "sentinel_manager", None)
    for sentinel in getattr(manager, "sentinels", ()):
        await sentinel.aclose()
