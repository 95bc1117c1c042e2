"""Shared pytest fixtures.

Async tests run on anyio's bundled pytest plugin (NOT pytest-asyncio). Mark them::

    pytestmark = pytest.mark.anyio          # whole module
    # or
    @pytest.mark.anyio
    async def test_x(r, ns): ...

The ``anyio_backend`` fixture below pins them to asyncio. Async fixtures (like
``r``) only work for tests that are anyio-marked.

Tests never use the shared Redis on 127.0.0.1:6379: a private ``redis-server`` is
started once per session on a free port (see ``tests/support/servers.py``), unless
``REDISFLOW_TEST_URL`` points at a server to use instead.

The fault-injection tests (``-m chaos``) report figures through the ``figures`` fixture:
they are printed at the end of the run, and written as JSON with ``--figures=PATH`` (with
the ``=``: a separate PATH argument would be taken for a test path before this option is
known).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from uuid import uuid4

import pytest
import redis
import redis.asyncio as aioredis

from redisflow.testing import start_for
from tests.support.servers import RedisProc, redis_server_binary, stop_redis
from tests.support.workers import Workers

_FIGURES: dict[str, dict[str, Any]] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--figures",
        metavar="PATH",
        help="write the figures measured by the chaos tests to PATH (JSON)",
    )


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def redis_server(request: pytest.FixtureRequest) -> Iterator[RedisProc]:
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
    proc = start_for(request)
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
    """Async redis-py client on the test server (bytes responses; a cluster client when the
    URL is a cluster node's, see ``topology``); closed after the test."""
    if url in _CLUSTER_URLS:
        client: Any = aioredis.RedisCluster.from_url(url, decode_responses=False)
    else:
        client = aioredis.Redis.from_url(url, decode_responses=False)
    try:
        yield client
    finally:
        await client.aclose()


_CLUSTER_URLS: set[str] = set()


@pytest.fixture(params=["single", "cluster"])
def topology(request: pytest.FixtureRequest) -> str:
    """Run a test on one server and on a 3-master Redis Cluster (its ``url`` follows): a
    module opts in by defining ``url`` from ``topology_url``."""
    return str(request.param)


@pytest.fixture
def topology_url(topology: str, request: pytest.FixtureRequest) -> str:
    """The URL of the session's server, or of a node of the session's cluster."""
    if topology == "cluster":
        seed: str = request.getfixturevalue("redisflow_cluster").seed_url
        _CLUSTER_URLS.add(seed)
        return seed
    single: str = request.getfixturevalue("redis_server").url
    return single


@pytest.fixture
def private_redis(request: pytest.FixtureRequest) -> Iterator[RedisProc]:
    """A redis-server of this test alone (it may be restarted, flooded or misconfigured)."""
    proc = start_for(request)
    try:
        yield proc
    finally:
        stop_redis(proc)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., Workers]]:
    """A factory of ``Workers`` (real worker processes); whatever still runs at the end of
    the test is killed, by PID."""
    made: list[Workers] = []

    def make(url: str, ns: str, **options: Any) -> Workers:
        pool = Workers(url, ns, tmp_path / f"workers-{len(made)}", **options)
        made.append(pool)
        return pool

    try:
        yield make
    finally:
        for pool in made:
            pool.cleanup()


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Callable[..., None]:
    """Record figures of this test (``figures(lost=0, duplicated=12)``), reported at the end."""

    def record(**values: Any) -> None:
        _FIGURES.setdefault(request.node.nodeid, {}).update(values)

    return record


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if not _FIGURES:
        return
    terminalreporter.section("figures")
    for test, values in _FIGURES.items():
        shown = ", ".join(f"{k}={v}" for k, v in values.items())
        terminalreporter.write_line(f"{test}: {shown}")
    path = config.getoption("--figures")
    if path:
        report = {
            "measured_at": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "command": " ".join(["pytest", *config.invocation_params.args]),
            "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores",
            "python": sys.version.split()[0],
            "redis_py": redis.__version__,
            "redis_server": _redis_server_version(),
            "results": _FIGURES,
        }
        Path(path).write_text(json.dumps(report, indent=2) + "\n")
        terminalreporter.write_line(f"figures written to {path}")


def _redis_server_version() -> str:
    out = subprocess.run(
        [redis_server_binary(), "--version"], capture_output=True, text=True, check=False
    ).stdout
    return next((w[2:] for w in out.split() if w.startswith("v=")), out.strip())
