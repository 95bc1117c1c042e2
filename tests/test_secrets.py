"""Secrets: a password in the URL, in any of its forms, never shows in a start line, a
``stats`` header, an error or a log; ``--workers`` hands the URL to its workers without
putting it on their command lines (which ``ps`` shows to every user of the machine)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from redisflow import ConfigError
from redisflow.cli import main
from redisflow.connection import parse_url, redact
from redisflow.connection.url import SCHEMES
from tests.support.servers import RedisProc, start_redis, stop_redis
from tests.test_cli import cli, ready_pids, run_workers, stop, wait_for, write

SECRET = "Sup3rSecret"
APP = """\
from redisflow import Flow
flow = Flow()

@flow.on_queue("q")
async def handle(n: int) -> None:
    pass
"""


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{SECRET}@h:1/0",
        f"redis://user:{SECRET}@h:1/0",
        f"rediss://h:1/0?password={SECRET}&client_name=x",
        f"redis://h:1/0?username=u&password={SECRET}",
        f"unix://:{SECRET}@/tmp/r.sock?db=1",
        f"redis+sentinel://:{SECRET}@h:1,h:2/mymaster?sentinel_password={SECRET}",
        f"redis+cluster://u:{SECRET}@h:1,h:2",
    ],
)
def test_redact_hides_every_form(url: str) -> None:
    shown = redact(url)
    assert SECRET not in shown and "***" in shown, shown


@pytest.fixture
def server() -> Iterator[RedisProc]:
    """A private server whose default user needs ``SECRET``."""
    proc = start_redis()
    try:
        client = proc.client()
        client.config_set("requirepass", SECRET)
        client.close()
        yield proc
    finally:
        stop_redis(proc)


def test_no_password_in_output_or_in_the_workers_command_lines(
    server: RedisProc, tmp_path: Path
) -> None:
    """``?password=`` in ``--url``: not in ``stats``, not in an error (a wrong one), not in
    ``run``'s logs; with ``--workers 2``, not in ``/proc/<pid>/cmdline`` of a worker."""
    url = f"redis://127.0.0.1:{server.port}/0?password={SECRET}"
    write(tmp_path, "secret_app", APP)
    res = cli(tmp_path, "stats", "--url", url)
    assert res.returncode == 0 and "password=***" in res.stdout, res.stderr
    wrong = url.replace(SECRET, SECRET + "x")
    res = cli(tmp_path, "enqueue", "q", "1", "--url", wrong)
    assert res.returncode == 1 and "WRONGPASS" in res.stderr
    assert SECRET not in res.stderr + res.stdout
    res = cli(tmp_path, "run", "secret_app:flow", "--url", wrong)
    assert res.returncode == 1 and "password=***" in res.stderr, res.stderr
    assert SECRET not in res.stderr + res.stdout

    log = tmp_path / "workers.log"
    proc = run_workers(tmp_path, "secret_app:flow", log, "--url", url)
    try:
        wait_for(lambda: len(ready_pids(log)) == 2 or proc.poll() is not None, 30, "ready")
        pids = ready_pids(log)
        assert len(pids) == 2, log.read_text()
        for pid in pids:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            assert "secret_app:flow" in cmdline and SECRET not in cmdline, cmdline
            assert "--url" not in cmdline, cmdline
        assert stop(proc, log) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "password=***" in text and SECRET not in text, text


@pytest.mark.parametrize(
    "url", [f"redis://:{SECRET}@h:99999/0", f"redis://:{SECRET}@h/abc", f"http://u:{SECRET}@h"]
)
def test_a_usage_error_does_not_show_the_password(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["enqueue", "q", "1", "--url", url])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert SECRET not in err and "***" in err, err


# -- redaction fuzzed -----------------------------------------------------------------------

#: Secrets are drawn from letters used nowhere else in the generated URLs (schemes, options
#: and hosts are made of others), so a leak of any part of one shows as one of these letters.
MARK = "QJKZ"
SPECIALS = "@/?#:% &+"
FUZZ_URLS = 20_000


def _secret(rng: random.Random, query: bool) -> str:
    alphabet = MARK + SPECIALS.replace("&", "") if query else MARK + SPECIALS
    return "Q" + "".join(rng.choice(alphabet) for _ in range(rng.randint(2, 12)))


def _case(rng: random.Random, word: str) -> str:
    return "".join(c.upper() if rng.random() < 0.5 else c for c in word)


def fuzzed_url(rng: random.Random) -> str:
    """A URL in one of the forms the parser accepts, or nearly: any scheme case, a password
    in the user info and/or the query holding any character, stray spaces, fragments."""
    scheme = rng.choice([*SCHEMES, "http", "redis:", "redis:/", "", "redis+cluster"])
    parts = [" " * rng.randint(0, 1), _case(rng, scheme)]
    if scheme and not scheme.endswith(":"):
        parts.append("://")
    where = rng.choice(["userinfo", "query", "both", "nouser"])
    if where in ("userinfo", "both"):
        user = rng.choice(["", "user", "u.v"])
        parts.append(f"{user}:{_secret(rng, False)}@" if rng.random() < 0.9 else "Q@")
    parts.append(rng.choice(["h", "h:1", "h:1,h2:2", "[::1]:6379", "/tmp/r.sock", "", "h:x"]))
    parts.append(rng.choice(["", "/0", "/svc/0", "/abc", "/"]))
    options = []
    if where in ("query", "both", "nouser"):
        name = rng.choice(["password", "sentinel_password", "PASSWORD", "pass%77ord", "db"])
        value = _secret(rng, True) if name != "db" else "1"
        options.append(f"{name}={value}")
    options += rng.sample(["db=2", "client_name=a@b", "username=u", "connect_timeout=1"], 1)
    if where != "userinfo" or rng.random() < 0.3:
        rng.shuffle(options)
        parts.append("?" + "&".join(options))
    if rng.random() < 0.2:
        parts.append("#frag")
    return "".join(parts) + " " * rng.randint(0, 1)


def _leaks(text: str) -> bool:
    return bool(set(MARK) & set(text))


def test_redaction_holds_for_fuzzed_urls(capsys: pytest.CaptureFixture[str]) -> None:
    """20,000 URLs from a fixed seed: no letter of a password shows in ``redact``, in the
    error of a URL that does not parse, or in the display of one that does; a sample goes
    through the command line, whose usage errors must not show it either."""
    rng = random.Random(23)
    for n in range(FUZZ_URLS):
        url = fuzzed_url(rng)
        assert not _leaks(redact(url)), (url, redact(url))
        try:
            spec = parse_url(url)
        except ConfigError as exc:
            assert not _leaks(str(exc)), (url, str(exc))
            if n % 100 == 0:
                with pytest.raises(SystemExit):
                    main(["enqueue", "q", "1", "--url", url])
                err = capsys.readouterr().err
                assert not _leaks(err), (url, err)
        else:
            assert not _leaks(spec.display) and not _leaks(repr(spec)), (url, spec.display)
