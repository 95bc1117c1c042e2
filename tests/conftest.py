"""Shared pytest fixtures.

Async tests run on anyio's bundled pytest plugin (NOT pytest-asyncio). Mark them::

    pytestmark = pytest.mark.anyio          # whole module
    # or
    @pytest.mark.anyio
    async def test_x(r, ns): ...

The ``anyio_backend`` fixture below pins them to asyncio. Async fixtures (like
``r``) only work for tests that are anyio-marked.

Tests never use the shared Redis on 127.0.0.1:6379: a private ``redis-server`` is
started once per session on a free port (see ``tests/helpers.py``), unless
``REDISFLOW_TEST_URL`` points at a server to use instead.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit
from uuid import uuid4

import pytest
import redis.asyncio as aioredis

from tests.helpers import RedisProc, start_redis, stop_redis


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisProc]:
    """The session's Redis: ``.url`` (``redis://127.0.0.1:P/0``), ``.port``, ``.pid``.

    With ``REDISFLOW_TEST_URL`` set, that server is used as-is (``.pid`` is None and
    nothing is started or stopped).
    """
    external = os.environ.get("REDISFLOW_TEST_URL")
    if external:
        parts = urlsplit(external)
        yield RedisProc(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 6379,
            url=external,
            pid=None,
        )
        return
    proc = start_redis()
    try:
        yield proc
    finally:
        stop_redis(proc)


@pytest.fixture
def url(redis_server: RedisProc) -> str:
    return redis_server.url


@pytest.fixture
def ns() -> str:
    """A unique key namespace/prefix for this test, e.g. ``t1a2b3c4d5e``."""
    return f"t{uuid4().hex[:10]}"


@pytest.fixture
async def r(url: str) -> AsyncIterator[aioredis.Redis]:
    """Async redis-py client on the test server (bytes responses); closed after the test."""
    client = aioredis.Redis.from_url(url, decode_responses=False)
    try:
        yield client
    finally:
        await client.aclose()
