"""The command line as a newcomer meets it in the first hour (issue 23): a bad
``$REDISFLOW_URL``, ``check`` finding what ``run`` would refuse, closing the terminal, a
second Ctrl-C, ``redisflow server`` with a bad ``--dir`` or a busy port, and the hints
that say how to install what is missing. Real subprocesses, private servers."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import redis

from redisflow.cli.run import UsageError, load_flow
from tests.support.servers import RedisProc, free_port, start_redis, stop_redis
from tests.test_cli import ROOT, env_for, wait_for, write

APP = """\
from redisflow import Flow

flow = Flow(prefix={ns!r})


@flow.on_queue("{ns}:q")
async def handle(n: int) -> None:
    pass
"""


def run_cli(
    path: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """``python -m redisflow ARGS`` in ``path`` with extra environment variables."""
    return subprocess.run(
        [sys.executable, "-m", "redisflow", *args],
        cwd=path, env={**env_for(path), **(env or {})}, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def test_a_bad_url_in_the_environment_is_one_line_and_the_command_line_wins(
    tmp_path: Path, redis_server: RedisProc, ns: str
) -> None:
    """``REDISFLOW_URL=localhost:16400`` with a module-level ``Flow()``: one line (no
    traceback) with the right hint; ``--url`` overrides it although ``Flow()`` read the
    variable at import."""
    write(tmp_path, "envapp", APP.format(ns=ns))
    bad = {"REDISFLOW_URL": "localhost:16400"}
    for command in ("run", "check"):
        res = run_cli(tmp_path, command, "envapp", env=bad)
        assert res.returncode == 2, res.stderr
        assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 2
        assert "did you mean redis://localhost:16400?" in res.stderr, res.stderr
        assert "$REDISFLOW_URL" in res.stderr and "--url overrides it" in res.stderr
    res = run_cli(tmp_path, "check", "envapp", "--url", redis_server.url, env=bad)
    assert res.returncode == 0 and res.stdout.startswith("ok:"), res.stdout + res.stderr


def test_every_install_hint_names_what_pip_can_install() -> None:
    """redisflow is not on PyPI, so no hint (README, docs, examples, error messages) says
    ``pip install 'redisflow[...]'``: each names a local checkout or wheel, or a package one
    of the extras really brings; and ``make dist`` builds that wheel."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    brought = {re.split(r"[\[<>=;! ]", req)[0].lower() for reqs in extras.values() for req in reqs}
    files = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "examples").iterdir()]
    files += [*(ROOT / "redisflow").rglob("*.py")]
    found = 0
    for path in files:
        if path.suffix not in (".md", ".py"):
            continue
        text = path.read_text().replace("\n", " ")
        for match in re.finditer(r"pip\s+install\s+([^`)\"#]+?)(?:`|\)|\"|\s\(|\s#|$)", text):
            named = 0  # the first package named, then more only while they are packages
            for arg in shlex.split(match.group(1).replace("'.[", "'x[")):
                if arg.startswith("-") or arg.startswith(("/", ".", "x[", "dist/")):
                    continue
                name = re.split(r"[\[<>=;]", arg)[0].lower()
                if named and name not in brought:
                    break  # prose after the command: "pip install tzdata where ..."
                assert name in brought, f"{path.name}: pip install {match.group(1)!r}"
                named = found = found + 1
    assert found >= 8
    dry = subprocess.run(["make", "-n", "dist"], cwd=ROOT, capture_output=True, text=True)
    assert dry.returncode == 0 and "pip wheel" in dry.stdout and "dist" in dry.stdout


def test_a_file_for_a_module_gets_the_right_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``./app.py`` -> ``app:flow`` (not ``..app:flow``); a file elsewhere -> run from its
    directory."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "src").mkdir()
    for given, hint in (
        ("./app.py", "'app:flow'"),
        ("src/app.py:main", "'src.app:main'"),
        ("/elsewhere/app.py", "cd /elsewhere && redisflow run app:flow"),
    ):
        with pytest.raises(UsageError) as error:
            load_flow(given)
        assert hint in str(error.value) and ".." not in str(error.value), error.value


def test_a_reload_variable_that_is_neither_yes_nor_no_is_a_usage_error(tmp_path: Path) -> None:
    write(tmp_path, "reloadapp", APP.format(ns="x"))
    res = run_cli(tmp_path, "run", "reloadapp", env={"REDISFLOW_RELOAD": "maybe"})
    assert res.returncode == 2 and "$REDISFLOW_RELOAD must be one of" in res.stderr, res.stderr
    assert "'maybe'" in res.stderr


def test_examples_readme_says_what_make_demo_does() -> None:
    """``make demo`` always starts a private server (examples/demo.py): the README of the
    examples must not say it uses a local Redis that answers."""
    text = (ROOT / "examples" / "README.md").read_text()
    demo = (ROOT / "examples" / "demo.py").read_text()
    assert "RedisServer.start()" in demo and "localhost" not in demo
    assert "when a Redis answers" not in text and "private\nserver it starts" in text, text


def test_server_says_in_one_line_what_is_wrong_with_its_dir_or_port(tmp_path: Path) -> None:
    """A file, a path that cannot be created, an empty ``--dir``, a port held by something
    that is not Redis: one line each, exit 1, no traceback, no server log."""
    (tmp_path / "afile").write_text("")
    port = free_port()
    for given, says in (
        ("afile", "not a directory"),
        ("/proc/x/data", "cannot create it"),
        ("", "--dir is empty"),
    ):
        res = run_cli(tmp_path, "server", "--port", str(port), "--dir", given)
        assert res.returncode == 1 and says in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        res = run_cli(tmp_path, "server", "--port", str(taken), "--dir", "data")
    assert res.returncode == 1 and "taken by a program that is not Redis" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr


SLOW_APP = """\
import anyio
from redisflow import Flow

flow = Flow(prefix={ns!r})


@flow.on_queue("{ns}:q")
async def handle(n: int) -> None:
    await anyio.sleep(n)
"""


def start_run(path: Path, url: str, log: Path) -> subprocess.Popen[bytes]:
    """``redisflow run slowapp --url URL`` in the background, its log in ``log``."""
    with open(log, "w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "redisflow", "run", "slowapp", "--url", url],
            cwd=path, env=env_for(path), stdout=subprocess.DEVNULL, stderr=out,
        )  # fmt: skip


def test_closing_the_terminal_stops_run_gracefully(
    tmp_path: Path, redis_server: RedisProc, ns: str
) -> None:
    """SIGHUP (the terminal closed) is a stop like SIGTERM: exit 0 after a clean stop (it
    killed the process before, exit 129, leaving an embedded server behind)."""
    write(tmp_path, "slowapp", SLOW_APP.format(ns=ns))
    log = tmp_path / "run.log"
    proc = start_run(tmp_path, redis_server.url, log)
    try:
        wait_for(lambda: " -> " in log.read_text() or proc.poll() is not None, 20, "started")
        proc.send_signal(signal.SIGHUP)
        assert proc.wait(timeout=20) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert "received SIGHUP: stopping" in text and "stopped" in text, text


def test_a_second_ctrl_c_stops_now_and_hands_the_message_back(
    tmp_path: Path, redis_server: RedisProc, ns: str
) -> None:
    """Ctrl-C with a slow handler says what it waits for and how to stop now; a second
    Ctrl-C cancels the handler at once, hands its message back, and exits non-zero."""
    write(tmp_path, "slowapp", SLOW_APP.format(ns=ns))
    log = tmp_path / "run.log"
    proc = start_run(tmp_path, redis_server.url, log)
    r = redis.Redis.from_url(redis_server.url)
    try:
        wait_for(lambda: " -> " in log.read_text() or proc.poll() is not None, 20, "started")
        r.rpush(f"{ns}:q", b"60")
        wait_for(lambda: r.llen(f"{ns}:q") == 0, 10, "the message taken")
        time.sleep(0.3)  # in the handler
        proc.send_signal(signal.SIGINT)
        wait_for(lambda: "Ctrl-C again to stop now" in log.read_text(), 10, "the notice")
        proc.send_signal(signal.SIGINT)
        began = time.monotonic()
        code = proc.wait(timeout=20)
        took = time.monotonic() - began
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert "waiting up to 10 s for 1 handler (Ctrl-C again to stop now)" in text, text
    assert code == 1 and took < 8, (code, took, text)
    assert r.llen(f"{ns}:q") == 1, "the message was handed back"
    r.close()


def test_the_embedded_server_dies_with_the_process_that_started_it(tmp_path: Path) -> None:
    """``redisflow run``'s embedded server (``LocalServer``) gets SIGTERM when its parent
    dies, even by ``kill -9``: the next ``run`` does not find an orphan on the port."""
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from redisflow.server import LocalServer, find_binary\n"
        "server = LocalServer(find_binary(), int(sys.argv[1]), Path(sys.argv[2]))\n"
        "server.start()\n"
        "print(server.proc.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script, str(free_port()), str(tmp_path / "data")],
        cwd=tmp_path, env=env_for(tmp_path), stdout=subprocess.PIPE, text=True,
    ) as parent:  # fmt: skip
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        os.kill(pid, 0)  # it runs
        parent.kill()
    wait_for(lambda: not _alive(pid), 10, "the server gone with its parent")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text()


RESOURCE_APP = """\
from redisflow import Flow

flow = Flow(prefix={ns!r})


class Mailer:
    pass


@flow.on_queue("{ns}:q")
async def handle(n: int, mailer: Mailer) -> None:
    pass
"""


def test_check_finds_what_run_would_refuse(
    tmp_path: Path, redis_server: RedisProc, ns: str
) -> None:
    """A handler parameter that no ``@flow.resource`` provides: ``run`` refuses to start,
    so ``check`` says so (it said ok)."""
    write(tmp_path, "resapp", RESOURCE_APP.format(ns=ns))
    res = run_cli(tmp_path, "check", "resapp", "--url", redis_server.url)
    assert res.returncode == 1, res.stdout + res.stderr
    assert "problem: handler 'handle': no resource provides mailer" in res.stdout, res.stdout


def test_check_warns_of_an_evicting_redis(tmp_path: Path, ns: str) -> None:
    """``maxmemory-policy allkeys-lru``: the worker warns at start, and so does ``check``
    (it said a plain ok)."""
    proc = start_redis(["--maxmemory-policy", "allkeys-lru"])
    try:
        write(tmp_path, "evictapp", APP.format(ns=ns))
        res = run_cli(tmp_path, "check", "evictapp", "--url", proc.url)
    finally:
        stop_redis(proc)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "warning: Redis at" in res.stdout and "allkeys-lru" in res.stdout, res.stdout
    assert "(1 warning)" in res.stdout, res.stdout
