"""The ``redisflow`` command, run as a real subprocess: ``run`` (one process, or supervised
workers with ``--workers``/``--reload``), ``stats``, ``dlq``, ``publish``/``enqueue``/``append``.

Each test writes its app module into ``tmp_path`` and runs ``python -m redisflow`` there,
with ``tmp_path`` on PYTHONPATH. Usage errors are checked in process (``main``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from redisflow.cli import main
from redisflow.keys import Keys
from tests.support.servers import closed_port, free_port

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


def run_workers(path: Path, target: str, log: Path, *args: str) -> subprocess.Popen[bytes]:
    """``redisflow run TARGET --workers 2 ARGS`` started in ``path``; what it logs goes to
    ``log`` (``ready_pids`` reads it)."""
    argv = [sys.executable, "-m", "redisflow", "run", target, "--workers", "2", *args]
    with open(log, "w") as err:
        return subprocess.Popen(
            argv, cwd=path, env=env_for(path), stdout=subprocess.DEVNULL, stderr=err
        )


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
        ["run", "mod:flow", "--give-up-after", "soon"],
    ],
    ids=[
        "no-command",
        "no-app",
        "no-module",
        "bad-attribute",
        "bad-level",
        "bad-concurrency",
        "bad-give-up-after",
    ],
)
def test_bad_command_lines_exit_2_with_usage(tmp_path: Path, args: list[str]) -> None:
    """Malformed command lines exit with status 2 and print one line saying what is wrong,
    and where the usage is (not the whole usage block)."""
    res = cli(tmp_path, *args)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert lines[0].startswith("redisflow") and ": error: " in lines[0], res.stderr
    assert lines[-1].startswith("(see redisflow") and lines[-1].endswith("--help)"), res.stderr
    assert "usage:" not in res.stderr


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
    """A worker that cannot reach Redis waits ``--give-up-after`` seconds, then exits with
    status 1 and names the URL."""
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
    url = f"redis://127.0.0.1:{closed_port()}/0"
    res = cli(tmp_path, "run", "u_app:flow", "--url", url, "--give-up-after", "1")
    assert res.returncode == 1, res.stderr
    assert f"cannot reach Redis at {url}" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_while_waiting_for_redis_stops_cleanly(
    tmp_path: Path, signum: signal.Signals
) -> None:
    """A worker told to stop while it still waits for Redis (nothing held yet) abandons
    the start and exits 0 at once, without a traceback."""
    write(
        tmp_path,
        "w_app",
        """\
        from redisflow import Flow
        flow = Flow()

        @flow.on_queue("q")
        async def handle(n: int) -> None:
            pass
    """,
    )
    url = f"redis://127.0.0.1:{closed_port()}/0"
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "redisflow", "run", "w_app:flow", "--url", url],
            cwd=tmp_path,
            env=env_for(tmp_path),
            stdout=out,
            stderr=out,
        )
    try:
        wait_for(lambda: "reconnecting" in log.read_text(), 20, "the worker waits for Redis")
        proc.send_signal(signum)
        code = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert code == 0, text
    assert f"received {signum.name}" in text
    assert "Traceback" not in text


# -- a full run ----------------------------------------------------------------------------


def test_run_consumes_then_stops_cleanly_on_sigterm(
    tmp_path: Path, url: str, ns: str, sync_r: redis.Redis
) -> None:
    """``redisflow run`` starts every handler (logged), handles messages from Redis, and on
    SIGTERM stops gracefully with exit code 0 and a per-handler summary; ``--metrics-port``
    serves its Prometheus metrics meanwhile."""
    queue, channel, done = f"{ns}:jobs", f"{ns}:news", f"{ns}:done"
    metrics_port = free_port()
    # The module's own URL is unreachable: the worker only works if --url is applied.
    source = APP.format(
        flow_url=f"redis://127.0.0.1:{closed_port()}/0",
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
                "--metrics-port",
                str(metrics_port),
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
            url_ = f"http://127.0.0.1:{metrics_port}/metrics"
            with urllib.request.urlopen(url_, timeout=5) as reply:
                metrics = reply.read().decode()
            assert 'outcome="processed"' in metrics and "} 3.0" in metrics, metrics
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


# -- operating: stats, dead letters, sending from the shell --------------------------------

OPS_APP = """\
import os

import anyio
from redisflow import Flow, Message, Reject

flow = Flow({url!r}, prefix={ns!r}, lease=2, claim_idle=2, block_timeout=0.5, grace_period=2,
            batch_size=1, prefetch=1)
done = {done!r}
fixed = {fixed!r}


@flow.on_queue({queue!r}, concurrency=1, retry_delay=0.05)
async def handle_job(n: int, msg: Message[int]) -> None:
    if n < 0 and not await flow.redis.exists(fixed):
        raise Reject("negative")
    if n == 0 and msg.attempt == 1:
        raise RuntimeError("flaky")
    await anyio.sleep(0.01)  # long enough for two workers to share a burst
    await flow.redis.rpush(done, f"{{os.getpid()}}:{{n}}")


@flow.on_stream({stream!r}, group="g")
async def handle_event(e: dict[str, int]) -> None:
    pass
"""


class Ops:
    """One test's app module (``ops_app.py`` in ``tmp_path``) and its Redis names."""

    def __init__(self, tmp_path: Path, url: str, ns: str) -> None:
        self.path, self.url, self.ns = tmp_path, url, ns
        self.queue, self.stream = f"{ns}:jobs", f"{ns}:events"
        self.done, self.fixed = f"{ns}:done", f"{ns}:fixed"
        source = OPS_APP.format(
            url=url, ns=ns, done=self.done, fixed=self.fixed, queue=self.queue, stream=self.stream
        )
        (tmp_path / "ops_app.py").write_text(source)
        self.log = tmp_path / "worker.log"

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        """``redisflow run ops_app:flow ARGS``, logging to ``self.log``."""
        with open(self.log, "w") as log_file:
            return subprocess.Popen(
                [sys.executable, "-m", "redisflow", "run", "ops_app:flow", *args],
                cwd=self.path,
                env=env_for(self.path),
                stdout=subprocess.DEVNULL,
                stderr=log_file,
            )

    def cli(self, *args: str, app: bool = False, input: str | None = None) -> str:
        """Run a command against this test's Redis and prefix; its stdout (must exit 0)."""
        target = ["--app", "ops_app:flow"] if app else ["--url", self.url, "--prefix", self.ns]
        res = subprocess.run(
            [sys.executable, "-m", "redisflow", *args, *target],
            cwd=self.path,
            env=env_for(self.path),
            capture_output=True,
            text=True,
            timeout=30,
            input=input,
        )
        assert res.returncode == 0, res.stderr
        return res.stdout

    def json(self, *args: str, app: bool = False) -> Any:
        return json.loads(self.cli(*args, "--json", app=app))


def stop(proc: subprocess.Popen[bytes], log: Path) -> int:
    """SIGTERM and wait; the exit status (kills it if it does not stop in time)."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        pytest.fail(f"did not stop on SIGTERM:\n{log.read_text()}")


@pytest.fixture
def ops(tmp_path: Path, url: str, ns: str) -> Iterator[Ops]:
    yield Ops(tmp_path, url, ns)


def test_stats_json_after_a_run(ops: Ops, sync_r: redis.Redis) -> None:
    """``stats --json`` shows what a worker did: processed, retried and dead-lettered
    counts, queue depth, live workers while it runs (with the app), and stream lag after
    it stopped (without the app); the text table names every handler."""
    proc = ops.start()
    try:
        sync_r.rpush(ops.queue, b"1", b"2", b"0", b"-1", b"3", b"-2")
        wait_for(lambda: sync_r.llen(ops.done) == 4, 20, "four jobs handled")
        stats_key = Keys(ops.ns, ops.queue).stats
        wait_for(lambda: sync_r.hget(stats_key, "handle_job:processed") == b"4", 10, "report")
        running = ops.json("stats", "ops_app:flow")
        assert stop(proc, ops.log) == 0, ops.log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    job = next(h for h in running["handlers"] if h["handler"] == "handle_job")
    assert job["workers"] == 1
    assert job["counters"]["processed"] == 4
    sync_r.xadd(ops.stream, {"data": b'{"a": 1}'})
    sync_r.xadd(ops.stream, {"data": b'{"a": 2}'})
    after = ops.json("stats")
    # Without the app, a handler is known by what its workers reported (every counter, once,
    # even at zero: handle_event never counted anything and is still listed).
    rows = {h["handler"]: h for h in after["handlers"]}
    assert set(rows) == {"handle_job", "handle_event"}
    job, event = rows["handle_job"], rows["handle_event"]
    assert (job["kind"], job["source"], job["group"]) == ("queue", ops.queue, None)
    counters = job["counters"]
    assert (counters["processed"], counters["retried"], counters["dead"]) == (4, 1, 2)
    assert (job["waiting"], job["delayed"], job["dead_letters"], job["workers"]) == (0, 0, 2, 0)
    assert (event["kind"], event["source"], event["group"]) == ("stream", ops.stream, "g")
    assert (event["waiting"], event["pending"]) == (2, 0)
    assert after["used_memory"] > 0 and job["memory"] > 0
    table = ops.cli("stats", "ops_app:flow")
    assert "PROCESSED" in table and "handle_job" in table and "handle_event" in table
    assert "CANCELLED" not in table, "shown only once some message was cancelled"
    watching = ["stats", "--json", "--watch", "0.2", "--url", ops.url, "--prefix", ops.ns]
    watch = subprocess.Popen(
        [sys.executable, "-m", "redisflow", *watching],
        cwd=ops.path,
        env=env_for(ops.path),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert watch.stdout is not None
        lines = [json.loads(watch.stdout.readline()) for _ in range(2)]  # one per refresh
        seen = [[h["counters"] for h in line["handlers"]] for line in [*lines, after]]
        assert seen[0] == seen[1] == seen[2]
        assert stop(watch, ops.log) == 0
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait(timeout=10)
        if watch.stdout is not None:
            watch.stdout.close()


def test_dlq_list_show_replay_and_purge(ops: Ops, sync_r: redis.Redis) -> None:
    """Dead letters through the CLI: list with filters, show, a dry-run replay that changes
    nothing, a replay consumed again by the running worker, purge with --dry-run/--all."""
    proc = ops.start()
    try:
        sync_r.rpush(ops.queue, b"-1", b"5", b"-2", b"-3")
        dead_key = Keys(ops.ns, ops.queue).dead
        wait_for(lambda: sync_r.xlen(dead_key) == 3, 20, "three dead letters")
        listed = ops.json("dlq", "list", "--queue", ops.queue)
        assert [d["data"] for d in listed] == ["-1", "-2", "-3"]
        assert {d["error"] for d in listed} == {"rejected: negative"}
        assert ops.json("dlq", "list", ops.queue, "--error", "nothing") == []
        assert len(ops.json("dlq", "list", ops.queue, "--handler", "handle_job")) == 3
        assert ops.json("dlq", "list", ops.queue, "--older-than", "3600") == []
        assert len(ops.json("dlq", "list", ops.queue, "--newer-than", "3600", "--limit", "2")) == 2
        shown = ops.cli("dlq", "show", ops.queue, listed[1]["id"])
        assert "rejected: negative" in shown and "handle_job" in shown
        dry = ops.cli("dlq", "replay", ops.queue, "--dry-run", app=True)
        assert "would replay 3 dead letters of queue" in dry
        assert sync_r.xlen(dead_key) == 3
        sync_r.set(ops.fixed, 1)
        replayed = ops.cli("dlq", "replay", ops.queue, "--error", "negative", "--limit", "2")
        assert f"replayed 2 dead letters to queue '{ops.queue}'" in replayed
        wait_for(lambda: sync_r.llen(ops.done) == 3, 20, "replayed jobs handled again")
        handled = sorted(int(x.split(b":")[1]) for x in sync_r.lrange(ops.done, 0, -1))
        assert handled == [-2, -1, 5]
        assert [d["data"] for d in ops.json("dlq", "list", "--queue", ops.queue)] == ["-3"]
        assert "would purge 1 dead letter of" in ops.cli(
            "dlq", "purge", ops.queue, "--all", "--dry-run"
        )
        assert sync_r.xlen(dead_key) == 1
        assert "purged 1 dead letter of" in ops.cli("dlq", "purge", ops.queue, "--all")
        assert sync_r.xlen(dead_key) == 0
        assert stop(proc, ops.log) == 0, ops.log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_publish_enqueue_append_from_the_shell(ops: Ops, sync_r: redis.Redis) -> None:
    """Each command sends the JSON payload (argument or stdin) and prints the id or the
    number of receivers; what lands in Redis is what a flow would have written."""
    msg_id = ops.cli("enqueue", ops.queue, '{"n": 1}').strip()
    [item] = sync_r.lrange(ops.queue, 0, -1)
    assert msg_id.encode() in item and item.endswith(b'{"n":1}')
    ops.cli("enqueue", f"{ops.ns}:urgent", "-", "--priority", "3", input="[1, 2]")
    [(member, score)] = sync_r.zrange(f"{ops.ns}:urgent", 0, -1, withscores=True)
    assert int(score) // 2**40 == 3 and member.endswith(b"[1,2]")
    ops.cli("enqueue", ops.queue, '"later"', "--delay", "60")
    assert sync_r.zcard(Keys(ops.ns, ops.queue).delayed) == 1
    entry_id = ops.cli("append", ops.stream, '{"a": 1}', "--maxlen", "10").strip()
    assert sync_r.xrange(ops.stream) == [(entry_id.encode(), {b"data": b'{"a":1}'})]
    pubsub = sync_r.pubsub()
    try:
        pubsub.subscribe(f"{ops.ns}:news")
        wait_for(lambda: pubsub.get_message(timeout=0.1) is not None, 5, "subscribed")
        assert ops.cli("publish", f"{ops.ns}:news", '"hello"').strip() == "1"
        got = pubsub.get_message(timeout=5)
        assert got is not None and got["data"] == b'"hello"'
    finally:
        pubsub.close()
    bad = cli(ops.path, "enqueue", ops.queue, "{not json", "--url", ops.url)
    assert bad.returncode == 2, bad.stderr
    assert "redisflow enqueue: error: invalid JSON payload" in bad.stderr
    assert sync_r.llen(ops.queue) == 1


# -- supervised workers --------------------------------------------------------------------


def ready_pids(log: Path) -> list[int]:
    """PIDs of the workers the supervisor reported ready, in order."""
    pattern = re.compile(r"worker \d+ \(pid (\d+)\) ready")
    return [int(m.group(1)) for m in pattern.finditer(log.read_text())]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").read_text().split(")")[-1].startswith(" Z")


def test_workers_share_the_work_restart_after_sigkill_and_stop_on_sigterm(
    ops: Ops, sync_r: redis.Redis
) -> None:
    """``--workers 2``: both workers handle messages; a worker killed with SIGKILL is
    started again; SIGTERM stops every worker and the supervisor exits 0."""
    proc = ops.start("--workers", "2")
    try:
        wait_for(lambda: len(ready_pids(ops.log)) == 2 or proc.poll() is not None, 30, "ready")
        first, second = ready_pids(ops.log)
        sync_r.rpush(ops.queue, *(str(n).encode() for n in range(1, 41)))
        wait_for(lambda: sync_r.llen(ops.done) == 40, 30, "40 jobs handled")
        pids = {int(x.split(b":")[0]) for x in sync_r.lrange(ops.done, 0, -1)}
        assert pids == {first, second}
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: len(ready_pids(ops.log)) == 3, 30, "the killed worker started again")
        third = ready_pids(ops.log)[2]
        assert third not in (first, second)
        assert stop(proc, ops.log) == 0, ops.log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    log = ops.log.read_text()
    assert f"(pid {first}) was killed by SIGKILL; starting it again" in log
    assert "all 2 workers stopped" in log
    assert not alive(second) and not alive(third)


def test_reload_restarts_the_worker_when_the_app_changes(ops: Ops) -> None:
    """``--reload``: touching the app module stops the worker and starts a new one."""
    pytest.importorskip("watchfiles", reason="--reload needs watchfiles (redisflow[reload])")
    proc = ops.start("--reload")
    try:
        wait_for(lambda: len(ready_pids(ops.log)) == 1 or proc.poll() is not None, 30, "ready")
        time.sleep(0.3)  # let the watcher start
        with open(ops.path / "ops_app.py", "a") as f:
            f.write("# changed\n")
        wait_for(lambda: len(ready_pids(ops.log)) == 2, 30, "a new worker after the change")
        assert "ops_app.py changed: reloading" in ops.log.read_text()
        assert stop(proc, ops.log) == 0, ops.log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    first, second = ready_pids(ops.log)
    assert first != second and not alive(first) and not alive(second)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "m:flow", "--workers", "0"], "argument --workers: expected an integer >= 1"),
        (["run", "m:flow", "--reload-dir", "."], "--reload-dir needs --reload"),
        (["stats", "--watch", "0"], "argument --watch: expected SECONDS >= 0.1"),
        (["dlq", "list"], "name one source"),
        (["dlq", "list", "a", "--queue", "b"], "give the source once"),
        (["dlq", "list", "--queue", "b", "--kind", "stream"], "--kind goes with a positional"),
        (["dlq", "list", "a", "--older-than", "-1"], "expected a number of seconds >= 0"),
        (["dlq", "show", "a"], "name one source"),
        (["dlq", "show", "a", "not-an-id"], "not a stream entry id"),
        (["dlq", "purge", "a"], "purge needs a filter"),
        (["dlq", "nuke", "a"], "invalid choice: 'nuke'"),
        (["enqueue", "q", "1", "--priority", "9000"], "expected a priority from 0 to 8191"),
        (["enqueue", "q", "1", "--delay", "-1"], "expected a number of seconds >= 0"),
        (["append", "s", "[1,"], "invalid JSON payload"),
        (["publish", "c"], "the following arguments are required: JSON"),
        (["stats", "--prefix", "a b"], "prefix must be non-empty"),
    ],
    ids=lambda v: "-".join(v) if isinstance(v, list) else None,
)
def test_operator_usage_errors_say_what_is_wrong(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str], url: str
) -> None:
    """Wrong arguments are usage errors (exit 2) naming the problem, before any Redis call
    (in process: the parser and checks of ``redisflow.cli.main``)."""
    with pytest.raises(SystemExit) as exc:
        main([*args, "--url", url] if args[0] != "run" else args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "usage:" not in err and f"(see redisflow {args[0]}" in err
