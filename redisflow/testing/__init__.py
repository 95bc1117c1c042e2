"""Test helpers for redisflow apps: a private, real Redis and a running flow (no mocks).

Installed as a pytest plugin (entry point ``redisflow``), so the fixtures are available in
any project that has redisflow installed::

    from redisflow.testing import run_flow
    from myapp import flow

    async def test_signup_sends_a_welcome_email(redisflow_url: str) -> None:
        async with run_flow(flow, url=redisflow_url) as f:
            await f.enqueue("signups", {"email": "a@b.c"})
            await f.wait_idle()          # everything handled, retried and settled
        assert sent == ["a@b.c"]

``redisflow_server`` starts one ``redis-server`` (from PATH, or ``$REDISFLOW_REDIS_SERVER``)
on a free port for the session, without persistence, and stops it afterwards; with
``$REDISFLOW_TEST_URL`` set it uses that server instead. ``redisflow_url`` gives its URL
and empties the database before each test.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
import redis

from ..app import Flow

__all__ = ["RedisServer", "run_flow"]


@dataclass
class RedisServer:
    """A private redis-server process (``pid`` is None for an external server)."""

    url: str
    pid: int | None = None
    _proc: subprocess.Popen[bytes] | None = None
    _dir: str | None = None

    @classmethod
    def start(cls, timeout: float = 10.0) -> RedisServer:
        """Start redis-server on a free 127.0.0.1 port and wait until it answers PING."""
        binary = os.environ.get("REDISFLOW_REDIS_SERVER") or shutil.which("redis-server")
        if not binary:
            raise RuntimeError(
                "redis-server not found: install it, set REDISFLOW_REDIS_SERVER to its path,"
                " or set REDISFLOW_TEST_URL to use a running server"
            )
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        workdir = tempfile.mkdtemp(prefix="redisflow-")
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", workdir]
        proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        server = cls(f"redis://127.0.0.1:{port}/0", proc.pid, proc, workdir)
        client = redis.Redis(port=port, socket_timeout=0.5, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    client.ping()
                    return server
                except redis.RedisError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        server.stop()
                        raise RuntimeError(f"redis-server on port {port} did not start") from None
                    time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        """Stop the process (if this object started it) and remove its directory."""
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None


@asynccontextmanager
async def run_flow(flow: Flow, *, url: str | None = None) -> AsyncIterator[Flow]:
    """Run ``flow`` (against ``url`` if given) for the body of the block; the flow's
    producers, ``wait_idle`` and ``dead_letters`` are available on the returned flow."""
    if url is not None:
        flow.url = url
    try:
        async with flow:
            yield flow
    finally:
        await flow.aclose()


@pytest.fixture(scope="session")
def redisflow_server() -> Iterator[RedisServer]:
    """A Redis for the test session: private (started here) or ``$REDISFLOW_TEST_URL``."""
    external = os.environ.get("REDISFLOW_TEST_URL")
    if external:
        yield RedisServer(external)
        return
    server = RedisServer.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redisflow_url(redisflow_server: RedisServer) -> str:
    """The URL of the session's Redis, with its database emptied for this test."""
    client = redis.Redis.from_url(redisflow_server.url)
    try:
        client.flushdb()
    finally:
        client.close()
    return redisflow_server.url
