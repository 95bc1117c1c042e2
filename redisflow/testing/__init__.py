"""Test helpers for redisflow apps: real Redis servers and a running flow (no mocks).

Installed as a pytest plugin (entry point ``redisflow``), so the fixtures are available in
any project that has redisflow installed::

    from redisflow.testing import run_flow
    from myapp import flow

    async def test_signup_sends_a_welcome_email(redisflow_url: str) -> None:
        async with run_flow(flow, url=redisflow_url) as f:
            await f.enqueue("signups", {"email": "a@b.c"})
            await f.wait_idle()          # everything handled, retried and settled
        assert sent == ["a@b.c"]

Fixtures: ``redisflow_server`` starts one private ``redis-server`` (``servers.py``: from
``$REDISFLOW_REDIS_SERVER``, PATH, or the embedded one of ``redisflow[server]``) on a free
port for the session, without persistence, and stops it afterwards; with
``$REDISFLOW_TEST_URL`` set it uses that server instead. ``redisflow_url`` gives its URL and
empties the database before each test. ``redisflow_cluster``, ``redis_cluster_factory`` and
``redis_sentinel_factory`` start local Redis Cluster and Sentinel setups (``fixtures.py``).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager

import pytest

from ..app import Flow
from .cluster import RedisCluster
from .fixtures import redis_cluster_factory, redis_sentinel_factory, redisflow_cluster
from .sentinel import SentinelSetup
from .servers import RedisServer, redis_server_binary

__all__ = [
    "RedisCluster",
    "RedisServer",
    "SentinelSetup",
    "redis_cluster_factory",
    "redis_sentinel_factory",
    "redisflow_cluster",
    "run_flow",
    "start_for",
]


@asynccontextmanager
async def run_flow(flow: Flow, *, url: str | None = None) -> AsyncIterator[Flow]:
    """Run ``flow`` (against ``url`` if given) for the body of the block; the flow's
    producers, ``wait_idle`` and ``dlq`` are available on the returned flow."""
    if url is not None:
        flow.configure(url=url)
    try:
        async with flow:
            yield flow
    finally:
        await flow.aclose()


def start_for(request: pytest.FixtureRequest, extra_args: Sequence[str] = ()) -> RedisServer:
    """Start a private server for a fixture. When there is no server to start, fail with how
    to get one and stop the session there: every later test would fail the same way, and
    one message (per xdist worker) says it better than hundreds."""
    try:
        redis_server_binary()
    except RuntimeError as exc:
        missing = str(exc)
    else:
        return RedisServer.start(extra_args)
    request.session.shouldstop = "no Redis server to start (see the error above)"
    pytest.fail(missing, pytrace=False)


@pytest.fixture(scope="session")
def redisflow_server(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    """A Redis for the test session: private (started here) or ``$REDISFLOW_TEST_URL``."""
    external = os.environ.get("REDISFLOW_TEST_URL")
    if external:
        yield RedisServer.external(external)
        return
    server = start_for(request)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redisflow_url(redisflow_server: RedisServer) -> str:
    """The URL of the session's Redis, with its database emptied for this test."""
    with redisflow_server.client() as client:
        client.flushdb()
    return redisflow_server.url
