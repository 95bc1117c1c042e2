"""URLs and names a user may get wrong or find odd: mistyped URLs are usage errors (never a
fall back to localhost), ``unix://`` sockets work, channel names with brackets are literal
unless ``pattern=True``, ``|`` in a name survives ``redisflow stats``, and ``stats --watch``
into a closed pipe ends quietly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from redisflow import ConfigError, Flow
from redisflow.cli import main
from tests.support.flows import eventually, make_flow
from tests.support.servers import start_redis, stop_redis
from tests.test_cli import cli, env_for, write

BAD_URLS = {
    "": "empty",
    "redis:/127.0.0.1:6390": "did you mean redis://127.0.0.1:6390",
    "redis:///": "no host",
    "http://127.0.0.1:6390": "unsupported URL scheme 'http'",
    "redis://127.0.0.1:99999/0": "bad port '99999'",
    "redis://127.0.0.1:6390/abc": "database must be a number, not 'abc'",
}


@pytest.mark.parametrize("bad", list(BAD_URLS), ids=list(BAD_URLS.values()))
def test_a_mistyped_url_is_a_usage_error_never_localhost(
    bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each command refuses the URL with exit status 2 and one line naming what is wrong
    (no traceback, no connection to localhost:6379); ``Flow(url)`` raises ConfigError."""
    for args in (["enqueue", "q", "1"], ["stats"], ["run", "app:flow"]):
        with pytest.raises(SystemExit) as exit_info:
            main([*args, "--url", bad])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert BAD_URLS[bad] in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 2, err  # the error and where --help is
    with pytest.raises(ConfigError, match=BAD_URLS[bad]):
        Flow(bad)


@pytest.mark.anyio
async def test_unix_socket_url(tmp_path: Path, ns: str) -> None:
    """A ``unix://`` URL reaches a server on its socket: produce, consume, and ``redisflow
    stats`` on it."""
    sock = tmp_path / "redis.sock"
    server = start_redis(["--unixsocket", str(sock), "--unixsocketperm", "700"])
    try:
        url = f"unix://{sock}?db=0"
        flow = make_flow(url, ns)
        seen: list[int] = []

        @flow.on_queue(f"{ns}:q")
        async def handle(n: int) -> None:
            seen.append(n)

        async with flow:
            await flow.enqueue(f"{ns}:q", 7)
            await eventually(lambda: seen == [7], what="consumed over the socket")
        res = cli(tmp_path, "stats", "--url", url, "--prefix", ns, "--json")
        assert res.returncode == 0, res.stderr
        rows = json.loads(res.stdout)["handlers"]
        assert [(r["source"], r["counters"]["processed"]) for r in rows] == [(f"{ns}:q", 1)], rows
    finally:
        stop_redis(server)


@pytest.mark.anyio
async def test_channel_with_brackets_is_literal_unless_pattern_true(
    url: str, ns: str, r: aioredis.Redis
) -> None:
    """``news[1]`` is the literal channel by default; ``pattern=True`` makes a glob of it
    (PSUBSCRIBE); ``*`` still makes a pattern by default."""
    flow = make_flow(url, ns)
    got: dict[str, list[str]] = {"literal": [], "glob": [], "star": []}

    @flow.on_channel(f"{ns}.news[1]")
    async def literal(text: str) -> None:
        got["literal"].append(text)

    @flow.on_channel(f"{ns}.sport[12]", pattern=True)
    async def glob(text: str) -> None:
        got["glob"].append(text)

    @flow.on_channel(f"{ns}.weather.*")
    async def star(text: str) -> None:
        got["star"].append(text)

    async with flow:
        assert await r.publish(f"{ns}.news[1]", '"exact"') == 1
        assert await r.publish(f"{ns}.news1", '"not exact"') == 0
        assert await r.publish(f"{ns}.sport2", '"by class"') == 1
        assert await r.publish(f"{ns}.weather.rain", '"by star"') == 1
        await eventually(lambda: all(got.values()), what="each handler got its message")
    assert got == {"literal": ["exact"], "glob": ["by class"], "star": ["by star"]}


def test_names_with_a_bar_in_stats(tmp_path: Path, url: str, ns: str) -> None:
    """A stream and a group named with ``|`` are listed as they are by ``redisflow stats``
    (with and without the app)."""
    write(
        tmp_path,
        "bar_app",
        f"""\
        from redisflow import Flow
        flow = Flow(prefix={ns!r})

        @flow.on_stream("{ns}|events|x", group="g|1")
        async def handle(n: int) -> None:
            pass
        """,
    )
    code = (
        "import anyio, bar_app\n"
        "async def main():\n"
        "    async with bar_app.flow:\n"
        f"        await bar_app.flow.append('{ns}|events|x', 1)\n"
        "        await anyio.sleep(2.5)\n"  # one counters report (every 2 s)
        "anyio.run(main)\n"
    )
    env = env_for(tmp_path) | {"REDISFLOW_URL": url}
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True, timeout=60)
    for app in ([], ["bar_app:flow"]):
        res = cli(tmp_path, "stats", *app, "--url", url, "--prefix", ns, "--json")
        assert res.returncode == 0, res.stderr
        rows = json.loads(res.stdout)["handlers"]
        found = [(r["source"], r["group"], r["counters"]["processed"]) for r in rows]
        assert found == [(f"{ns}|events|x", "g|1", 1)], found


def test_stats_watch_into_a_closed_pipe_ends_quietly(tmp_path: Path, url: str) -> None:
    """``redisflow stats --watch | head -1``: the reader goes away, the command ends with
    status 0 and no traceback."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "redisflow", "stats", "--url", url, "--watch", "0.1"],
        cwd=tmp_path,
        env=env_for(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().startswith(b"redisflow stats")
    proc.stdout.close()  # as `head -1` does after its line
    assert proc.wait(timeout=20) == 0
    with proc.stderr:
        err = proc.stderr.read().decode()
    assert "Traceback" not in err and "Broken pipe" not in err, err
