"""Sanity checks for the test infrastructure itself."""

from __future__ import annotations

import os

import pytest
import redis.asyncio as aioredis

from tests.support.servers import RedisProc

pytestmark = pytest.mark.anyio


async def test_private_redis_answers_ping(
    r: aioredis.Redis, redis_server: RedisProc, ns: str
) -> None:
    assert await r.ping() is True
    await r.set(f"{ns}:k", b"v")
    assert await r.get(f"{ns}:k") == b"v"
    await r.delete(f"{ns}:k")
    if not os.environ.get("REDISFLOW_TEST_URL"):
        assert redis_server.port != 6379
        assert redis_server.pid is not None
        assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
        info = await r.info("server")
        assert int(info["tcp_port"]) == redis_server.port
        assert int(info["process_id"]) == redis_server.pid
