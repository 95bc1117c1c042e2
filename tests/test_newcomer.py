"""What a newcomer meets first (issue 15): decorators used without parentheses, failure logs
that say what happens next, a verdict per message at DEBUG. Real Redis throughout."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from redisflow import ConfigError, Flow, Reject
from redisflow.cli.logs import JsonFormatter
from redisflow.testing import run_flow
from redisflow.testing.servers import RedisServer
from tests.support.servers import closed_port

pytestmark = pytest.mark.anyio


def lines(caplog: pytest.LogCaptureFixture, level: int = logging.WARNING) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "redisflow" and r.levelno == level]


@pytest.mark.parametrize("kind", ["queue", "channel", "priority", "stream"])
async def test_decorator_without_parentheses_is_a_config_error(kind: str) -> None:
    flow = Flow()
    decorator = getattr(flow, f"on_{kind}")
    with pytest.raises(ConfigError, match=rf"write @flow\.on_{kind}\(\"name\"") as info:

        @decorator
        async def handle(n: int) -> None: ...

    assert "handle" in str(info.value)
    assert not flow.handlers


async def test_failure_logs_say_what_happens_next(
    redisflow_url: str, ns: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="redisflow")
    flow = Flow(prefix=ns)

    @flow.on_queue(f"{ns}:orders", max_attempts=3, retry_delay=0.05)
    async def fail(n: int) -> None:
        if n < 0:
            raise Reject("negative")
        if n > 0:
            raise ValueError("boom")

    async with run_flow(flow, url=redisflow_url) as f:
        await f.enqueue(f"{ns}:orders", 0)
        await f.enqueue(f"{ns}:orders", 1)
        await f.enqueue(f"{ns}:orders", -1)
        await f.wait_idle()
    warned = lines(caplog)
    dead = f"{ns}:{{{ns}:orders}}:dead"
    retries = [m for m in warned if "ValueError: boom; retrying in" in m]
    assert len(retries) == 2, warned
    assert retries[0].endswith("s (attempt 2/3)") and retries[1].endswith("s (attempt 3/3)")
    assert [m for m in warned if m.endswith(f"dead-lettered to {dead} after 3 attempts")], warned
    rejected = [m for m in warned if "rejected: negative -> dead letters" in m]
    assert len(rejected) == 1 and rejected[0].endswith(dead), warned
    assert not [m for m in warned if "attempt 1/" in m], warned  # a Reject is not a retry
    handled = [m for m in lines(caplog, logging.DEBUG) if m.endswith(" handled")]
    assert len(handled) == 1, lines(caplog, logging.DEBUG)


# -- the command line: check, --factory, environment, JSON logs, hints ----------------------

ROOT = Path(__file__).resolve().parent.parent
APP = """\
from redisflow import Flow

flow = Flow({url!r}, prefix={ns!r})


@flow.on_queue("{ns}:jobs")
async def job(n: int) -> None: ...


@flow.on_stream("{ns}:events", group="g")
async def event(e: dict[str, int]) -> None: ...


@flow.on_channel("{ns}:news")
async def news(text: str) -> None: ...


def make() -> Flow:
    return flow
"""


def cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m redisflow ARGS`` in ``tmp_path`` (which holds app.py), to completion."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("REDISFLOW_")}
    base["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT)])
    return subprocess.run(
        [sys.executable, "-m", "redisflow", *args], cwd=tmp_path, env=base | env,
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


@pytest.fixture
def app(tmp_path: Path, redisflow_url: str, ns: str) -> Path:
    (tmp_path / "app.py").write_text(APP.format(url=redisflow_url, ns=ns))
    return tmp_path


def test_check_passes_for_a_flow_its_user_may_run(app: Path) -> None:
    res = cli(app, "check", "app:flow")
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.startswith("ok: app:flow: 3 handlers ready to run at redis://"), res.stdout
    assert cli(app, "check", "app:make", "--factory").returncode == 0


def test_check_names_each_problem(app: Path, redisflow_url: str, ns: str) -> None:
    """A user allowed the source keys but not the dead letters nor the channel: one line
    per problem, exit 1. Unreachable: one line, exit 1."""
    admin = RedisServer.external(redisflow_url)
    user = f"u{ns}"
    admin.call("ACL", "SETUSER", user, "on", ">pw", f"~{ns}:jobs", f"~{ns}:events", "+@all")
    try:
        limited = redisflow_url.replace("redis://", f"redis://{user}:pw@")
        res = cli(app, "check", "app:flow", "--url", limited)
    finally:
        admin.call("ACL", "DELUSER", user)
    problems = [line for line in res.stdout.splitlines() if line.startswith("problem: ")]
    assert res.returncode == 1 and problems, res.stdout + res.stderr
    assert any(f"'{ns}:{{{ns}:jobs}}:dead'" in p for p in problems), problems
    assert any(f"{ns}:news" in p for p in problems), problems
    assert not any(p.endswith(f"'{ns}:jobs'") for p in problems), problems
    assert "pw@" not in res.stdout + res.stderr  # the password is never shown

    down = f"redis://127.0.0.1:{closed_port()}/0"
    res = cli(app, "check", "app:flow", "--url", down)
    assert res.returncode == 1 and res.stdout.startswith(f"problem: cannot reach Redis at {down}")


def test_factory_and_file_names_are_pointed_out(app: Path) -> None:
    res = cli(app, "run", "app:make")
    assert res.returncode == 2 and "a function that makes one? --factory" in res.stderr
    res = cli(app, "run", "app.py:flow")
    assert res.returncode == 2 and "give the module, as in 'app:flow'" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 2, res.stderr  # the error, and --help


def test_run_options_come_from_the_environment(app: Path) -> None:
    res = cli(app, "run", "app", REDISFLOW_LOG_LEVEL="loud")
    assert res.returncode == 2 and "argument --log-level: expected one of DEBUG" in res.stderr
    res = cli(app, "run", "app", REDISFLOW_WORKERS="0")
    assert res.returncode == 2 and "argument --workers: expected an integer >= 1" in res.stderr
    down = f"redis://127.0.0.1:{closed_port()}/0"
    res = cli(app, "run", "app", "--url", down, REDISFLOW_GIVE_UP_AFTER="0.5",
              REDISFLOW_LOG_FORMAT="json")  # fmt: skip
    assert res.returncode == 1, res.stderr
    records = [json.loads(line) for line in res.stderr.splitlines()]
    assert {"time", "level", "logger", "message"} <= set(records[0]), records
    assert any("waiting for Redis" in r["message"] for r in records), records
    assert records[-1]["level"] == "ERROR" and down in records[-1]["message"], records


def test_json_log_lines_carry_the_structured_fields() -> None:
    record = logging.LogRecord("redisflow", logging.WARNING, "f.py", 1, "failed %s", ("x",), None)
    record.message_id, record.attempt = "m1", 2  # what ``extra=`` sets
    line = json.loads(JsonFormatter(worker="3").format(record))
    assert line["message"] == "failed x" and line["level"] == "WARNING"
    assert line["message_id"] == "m1" and line["attempt"] == 2 and line["worker"] == "3"


async def test_dlq_of_an_unregistered_source_lists_the_known_ones(
    redisflow_url: str, ns: str, tmp_path: Path
) -> None:
    flow = Flow(prefix=ns)

    @flow.on_queue(f"{ns}-orders")
    async def order(n: int) -> None: ...

    async with run_flow(flow, url=redisflow_url):
        pass  # registered at start
    res = await anyio.to_thread.run_sync(
        lambda: cli(tmp_path, "dlq", "list", f"{ns}-order", "--url", redisflow_url, "--prefix", ns)
    )
    assert res.returncode == 0, res.stderr
    assert f"registered a source named '{ns}-order' (registered: {ns}-orders)" in res.stderr


# -- the README's snippets, as copied -------------------------------------------------------


def readme_block(first_line: str) -> str:
    """The README's Python code block that starts with ``first_line``."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    found = [b for b in blocks if b.startswith(first_line)]
    assert len(found) == 1, f"{first_line!r}: {len(found)} blocks"
    return found[0]


def test_readme_test_example_passes_as_copied(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(readme_block("# app.py\n"))
    (tmp_path / "test_app.py").write_text(readme_block("# test_app.py\n"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDISFLOW_")}
    env["PYTHONPATH"] = str(tmp_path)
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_app.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert res.returncode == 0 and "1 passed" in res.stdout, res.stdout + res.stderr


def test_readme_sync_producer_recipe_runs(tmp_path: Path, redisflow_url: str) -> None:
    recipe = readme_block("from anyio.from_thread import start_blocking_portal\n")
    (tmp_path / "send.py").write_text(recipe)
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDISFLOW_")}
    env["REDISFLOW_URL"] = redisflow_url
    res = subprocess.run(
        [sys.executable, "send.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=30, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    with RedisServer.external(redisflow_url).client() as client:
        (item,) = client.lrange("emails", 0, -1)
    assert res.stdout.strip() in item.decode() and b'"subject":"hi"' in item
