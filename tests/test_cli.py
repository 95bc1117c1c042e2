"""The ``redisflow run MODULE:ATTRIBUTE`` command, run as a real subprocess.

Each test writes its app module into ``tmp_path`` and runs ``python -m redisflow`` there,
with ``tmp_path`` on PYTHONPATH.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.helpers import free_port

ROOT = Path(__file__).resolve().parent.parent
APP = """\
from redisflow import Flow

flow = Flow({flow_url!r}, prefix={ns!r})
done = {done!r}


@flow.on_queue({queue!r}, concurrency=4)
async def handle_job(n: int) -> None:
    await flow.redis.rpush(done, n * 10)


@flow.on_channel({channel!r})
async def handle_news(text: str) -> None:
    pass
"""


def env_for(path: Path) -> dict[str, str]:
    """The environment of a CLI subprocess: ``path`` and the project on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != "REDISFLOW_URL"}
    env["PYTHONPATH"] = os.pathsep.join([str(path), str(ROOT)])
    return env


def cli(path: Path, *args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """Run ``python -m redisflow ARGS`` in ``path`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "redisflow", *args],
        cwd=path,
        env=env_for(path),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write(path: Path, name: str, source: str) -> None:
    (path / f"{name}.py").write_text(textwrap.dedent(source))


def wait_for(pred: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``pred`` until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"not true within {timeout}s: {what}")
        time.sleep(0.05)


@pytest.fixture
def sync_r(url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(url)
    try:
        yield client
    finally:
        client.close()


# -- usage errors: exit code 2 with a message that says what is wrong ---------------------


def test_missing_module_is_a_usage_error(tmp_path: Path) -> None:
    """A module that does not exist: exit 2 and 'not found', naming the module."""
    res = cli(tmp_path, "run", "no_such_module_xyz:flow")
    assert res.returncode == 2, res.stderr
    assert "module 'no_such_module_xyz' not found" in res.stderr
    assert "Traceback" not in res.stderr


def test_module_whose_import_fails_is_reported_with_its_error(tmp_path: Path) -> None:
    """A module that raises on import: exit 2, 'import failed' and the original error."""
    write(
        tmp_path,
        "broken_app",
        """\
        from redisflow import Flow
        flow = Flow()
        raise RuntimeError("boom while importing")
    """,
    )
    res = cli(tmp_path, "run", "broken_app:flow")
    assert res.returncode == 2, res.stderr
    assert "importing module 'broken_app' failed" in res.stderr
    assert "RuntimeError: boom while importing" in res.stderr
    assert "not found" not in res.stderr


def test_module_with_a_missing_dependency_is_not_reported_as_missing(tmp_path: Path) -> None:
    """A module that exists but imports a missing package: an import failure naming the
    package, not 'module not found' for the app module."""
    write(
        tmp_path,
        "dep_app",
        """\
        import no_such_dependency_abc  # noqa: F401
        from redisflow import Flow
        flow = Flow()
    """,
    )
    res = cli(tmp_path, "run", "dep_app:flow")
    assert res.returncode == 2, res.stderr
    assert "importing module 'dep_app' failed" in res.stderr
    assert "no_such_dependency_abc" in res.stderr
    assert "module 'dep_app' not found" not in res.stderr


def test_missing_attribute_is_a_usage_error(tmp_path: Path) -> None:
    """An existing module without the attribute: exit 2 naming the module and attribute."""
    write(
        tmp_path,
        "plain_app",
        """\
        from redisflow import Flow
        flow = Flow()
    """,
    )
    res = cli(tmp_path, "run", "plain_app:other_flow")
    assert res.returncode == 2, res.stderr
    assert "module 'plain_app' has no attribute 'other_flow'" in res.stderr
    assert "importing" not in res.stderr and "not found" not in res.stderr


def test_attribute_that_is_not_a_flow_is_a_usage_error(tmp_path: Path) -> None:
    """``module:attr`` naming something other than a Flow: exit 2 saying what it is."""
    write(tmp_path, "odd_app", "flow = 42\n")
    res = cli(tmp_path, "run", "odd_app:flow")
    assert res.returncode == 2, res.stderr
    assert "not a redisflow.Flow" in res.stderr
    assert "int" in res.stderr


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["run"],
        ["run", ":flow"],
        ["run", "mod:not-an-identifier"],
        ["run", "mod:flow", "--log-level", "LOUD"],
        ["run", "mod:flow", "--concurrency", "many"],
    ],
    ids=["no-command", "no-app", "no-module", "bad-attribute", "bad-level", "bad-concurrency"],
)
def test_bad_command_lines_exit_2_with_usage(tmp_path: Path, args: list[str]) -> None:
    """Malformed command lines exit with status 2 and print the usage."""
    res = cli(tmp_path, *args)
    assert res.returncode == 2, res.stderr
    assert "usage: redisflow" in res.stderr


def test_concurrency_below_one_is_a_usage_error(tmp_path: Path) -> None:
    """``--concurrency 0`` is refused with exit 2 before connecting to Redis."""
    write(
        tmp_path,
        "c_app",
        """\
        from redisflow import Flow
        flow = Flow("redis://127.0.0.1:1/0")

        @flow.on_queue("q")
        async def handle(n: int) -> None:
            pass
    """,
    )
    res = cli(tmp_path, "run", "c_app:flow", "--concurrency", "0")
    assert res.returncode == 2, res.stderr
    assert "--concurrency" in res.stderr


def test_unreachable_redis_exits_1_naming_the_url(tmp_path: Path) -> None:
    """A worker that cannot reach Redis exits with status 1 and names the URL."""
    write(
        tmp_path,
        "u_app",
        """\
        from redisflow import Flow
        flow = Flow()

        @flow.on_queue("q")
        async def handle(n: int) -> None:
            pass
    """,
    )
    url = f"redis://127.0.0.1:{free_port()}/0"
    res = cli(tmp_path, "run", "u_app:flow", "--url", url)
    assert res.returncode == 1, res.stderr
    assert f"cannot reach Redis at {url}" in res.stderr
    assert "Traceback" not in res.stderr


# -- a full run ----------------------------------------------------------------------------


def test_run_consumes_then_stops_cleanly_on_sigterm(
    tmp_path: Path, url: str, ns: str, sync_r: redis.Redis
) -> None:
    """``redisflow run`` starts every handler (logged), handles messages from Redis, and on
    SIGTERM stops gracefully with exit code 0 and a per-handler summary."""
    queue, channel, done = f"{ns}:jobs", f"{ns}:news", f"{ns}:done"
    # The module's own URL is unreachable: the worker only works if --url is applied.
    source = APP.format(
        flow_url=f"redis://127.0.0.1:{free_port()}/0",
        ns=ns,
        done=done,
        queue=queue,
        channel=channel,
    )
    (tmp_path / "worker_app.py").write_text(source)
    log_path = tmp_path / "stderr.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "redisflow",
                "run",
                "worker_app:flow",
                "--url",
                url,
                "--log-level",
                "info",
                "--concurrency",
                "3",
            ],
            cwd=tmp_path,
            env=env_for(tmp_path),
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
        try:

            def log_text() -> str:
                return log_path.read_text()

            def started() -> bool:
                return log_text().count(" -> ") == 2 or proc.poll() is not None

            wait_for(started, 20, "both handlers started")
            assert proc.poll() is None, log_text()
            sync_r.rpush(queue, b"1", b"2", b"3")
            wait_for(lambda: sync_r.llen(done) == 3, 10, "three jobs handled")
            assert sorted(int(x) for x in sync_r.lrange(done, 0, -1)) == [10, 20, 30]
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    err = log_path.read_text()
    assert code == 0, err
    start_lines = [line for line in err.splitlines() if " -> " in line]
    assert len(start_lines) == 2, err
    assert any(f"queue '{queue}' -> handle_job (concurrency 3" in s for s in start_lines), err
    assert any(f"channel '{channel}' -> handle_news (concurrency 3" in s for s in start_lines)
    assert "received SIGTERM" in err
    assert f"queue '{queue}' [handle_job] stopped: processed=3" in err, err
    assert f"channel '{channel}' [handle_news] stopped: processed=0" in err, err
    assert "Traceback" not in err
    assert sync_r.llen(queue) == 0
