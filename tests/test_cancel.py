"""Cancellation (``Flow.cancel``, ``redisflow cancel``): a waiting message (queued, delayed,
waiting for a retry, an undelivered or pending stream entry) never runs; a running one has
its handler cancelled within a second, wherever it runs; the marks live in Redis with a TTL
(a restart, a worker that recovers a dead one's messages, sees them) and expire. The runs
with several worker processes and kill -9 are in ``test_cancel_workers.py``."""

from __future__ import annotations

import contextlib
import io
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from pydantic import BaseModel

from redisflow import Client, ConfigError, Flow, FlowConfig, GroupLimits, Message, RemoteError
from redisflow.cli import main
from redisflow.ops.stats import collect
from redisflow.testing import RedisCluster
from redisflow.web import dashboard
from tests.support.flows import eventually, make_flow
from tests.support.kinds import DURABLE, Kind, by_kind

pytestmark = pytest.mark.anyio

#: Longer than a poll of the marks (0.25 s) and a fetch: a cancelled message that would
#: still run has had the time to.
QUIET = 1.0
README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


class Job(BaseModel):
    n: int


@by_kind(DURABLE)
async def test_a_waiting_message_never_runs_and_the_others_do(
    kind: Kind, url: str, ns: str, r: Any
) -> None:
    name = kind.name(ns)
    flow = make_flow(url, ns, track=True)
    got: list[int] = []

    @kind.on(flow, name)
    async def handle(job: Job) -> None:
        got.append(job.n)

    ids = [await kind.produce(flow, name, Job(n=n)) for n in range(5)]
    assert ids[2] is not None
    await flow.cancel(name, ids[2], reason="not wanted")
    # a stream entry id names an entry of one partition: the same id in another partition
    # (written in the same millisecond) is cancelled too, as documented
    expected = [n for n, i in enumerate(ids) if i != ids[2]]
    async with flow:
        await eventually(lambda: len(got) == len(expected), what=f"the others handled: {got}")
        await anyio.sleep(QUIET)
        assert await kind.held(r, flow, name) == 0, "the cancelled one is gone from Redis"
    assert sorted(got) == expected, "the cancelled one never ran"
    status = await flow.status(ids[2])
    assert status is not None and status.status == "cancelled", status
    assert status.error == "not wanted"
    stats = sum(c.stats.cancelled for c in flow.consumers)
    assert stats == 5 - len(expected)
    rows = [row for row in (await collect(flow.client)).rows if row.source == name]
    assert sum((row.counters or {}).get("cancelled", 0) for row in rows) == stats, rows
    await flow.aclose()


@pytest.mark.parametrize("kind", ["queue", "priority"])
async def test_a_delayed_message_never_runs(kind: str, url: str, ns: str) -> None:
    flow = make_flow(url, ns)
    got: list[int] = []
    name = f"{ns}:{kind}"
    on = flow.on_queue if kind == "queue" else flow.on_priority
    send = flow.enqueue if kind == "queue" else flow.enqueue_priority

    @on(name)
    async def handle(job: Job) -> None:
        got.append(job.n)

    async with flow:
        cancelled = await send(name, Job(n=1), delay=0.5)
        await send(name, Job(n=2), delay=0.5)
        await flow.cancel(name, cancelled)
        await eventually(lambda: got == [2], what="the other delayed one handled")
        await anyio.sleep(QUIET)
    assert got == [2]
    await flow.aclose()


@by_kind([k for k in DURABLE if not k.at_most_once and k.partitions == 1])
async def test_a_message_waiting_for_its_retry_never_runs_again(
    kind: Kind, url: str, ns: str
) -> None:
    name = kind.name(ns)
    flow = make_flow(url, ns)
    attempts: list[int] = []

    @kind.on(flow, name, retry_delay=1.0, retry_max_delay=1.0)
    async def handle(job: Job, msg: Message[Job]) -> None:
        attempts.append(msg.attempt)
        raise RuntimeError("fails, to be retried in a second")

    async with flow:
        mid = await kind.produce(flow, name, Job(n=1))
        assert mid is not None
        await eventually(lambda: attempts == [1], what="the first attempt")
        await flow.cancel(name, mid)
        await anyio.sleep(1.0 + QUIET + 0.5)
    assert attempts == [1], "the retry never ran"
    assert sum(c.stats.cancelled for c in flow.consumers) == 1
    await flow.aclose()


@by_kind([k for k in DURABLE if k.partitions == 1])
async def test_a_running_handler_is_cancelled_within_a_second(
    kind: Kind, url: str, ns: str, r: Any
) -> None:
    name = kind.name(ns)
    flow = make_flow(url, ns, track=True)
    events: list[tuple[str, float, str | None]] = []

    @kind.on(flow, name, max_attempts=3)
    async def handle(job: Job, msg: Message[Job]) -> None:
        events.append(("started", time.monotonic(), None))
        try:
            await anyio.sleep(30)
        except BaseException:
            events.append(("interrupted", time.monotonic(), msg.cancelled))
            raise
        events.append(("finished", time.monotonic(), None))

    other = Client(FlowConfig.build(url, prefix=ns))  # another process's view of Redis
    async with flow:
        mid = await kind.produce(flow, name, Job(n=1))
        assert mid is not None
        await eventually(lambda: events, what="the handler started")
        asked = time.monotonic()
        await other.cancel(name, mid, reason="user asked")
        await eventually(lambda: len(events) == 2, within=5, what="the handler interrupted")
        await anyio.sleep(QUIET)
        assert await kind.held(r, flow, name) == 0, "acknowledged: not retried"
    assert [e[0] for e in events] == ["started", "interrupted"], "not retried, not finished"
    assert events[1][2] == "user asked", "msg.cancelled says why"
    took = events[1][1] - asked  # by design within a poll (0.25 s) and a round trip
    assert took < 2.0, f"interrupted {took:.3f} s after the cancel"
    status = await flow.status(mid)
    assert status is not None and status.status == "cancelled"
    assert sum(c.stats.cancelled for c in flow.consumers) == 1
    assert not any(c.stats.retried or c.stats.dead for c in flow.consumers)
    await other.aclose()
    await flow.aclose()


async def test_a_shield_defers_the_cancellation_to_its_end(url: str, ns: str) -> None:
    name = f"{ns}:q"
    flow = make_flow(url, ns)
    steps: list[str] = []
    seen: list[str | None] = []

    @flow.on_queue(name)
    async def handle(job: Job, msg: Message[Job]) -> None:
        async with msg.shield():
            steps.append("critical started")
            await anyio.sleep(1.0)  # the cancel comes meanwhile
            seen.append(msg.cancelled)
            steps.append("critical done")
        steps.append("after the shield")  # never: cancelled as the shield ends
        await anyio.sleep(30)

    async with flow:
        mid = await flow.enqueue(name, Job(n=1))
        await eventually(lambda: steps, what="the handler started")
        await flow.cancel(name, mid, reason="stop it")
        await eventually(lambda: sum(c.stats.cancelled for c in flow.consumers) == 1,
                         what="the message cancelled")  # fmt: skip
    assert steps == ["critical started", "critical done"]
    assert seen == ["stop it"], "msg.cancelled says it was asked, inside the shield"
    await flow.aclose()


async def test_a_cancel_after_the_handler_returned_changes_nothing(url: str, ns: str) -> None:
    name = f"{ns}:q"
    flow = make_flow(url, ns)
    got: list[int] = []

    @flow.on_queue(name)
    async def handle(job: Job) -> None:
        got.append(job.n)

    async with flow:
        mid = await flow.enqueue(name, Job(n=1))
        await eventually(lambda: got == [1], what="handled")
        await flow.cancel(name, mid)
        await flow.enqueue(name, Job(n=2))
        await eventually(lambda: got == [1, 2], what="the next one handled")
        await anyio.sleep(QUIET)
    assert [c.stats.processed for c in flow.consumers] == [2]
    assert [c.stats.cancelled for c in flow.consumers] == [0]
    await flow.aclose()


async def test_requests_and_results_of_cancelled_messages_raise_remote_error(
    url: str, ns: str
) -> None:
    """A request whose handler is cancelled while it runs raises RemoteError("cancelled")
    with the reason; ``result`` of a delayed message raises at once after ``cancel`` (no
    worker has met it yet); a result written before the cancel stays."""
    name = f"{ns}:q"
    flow = make_flow(url, ns)
    started: list[str] = []

    @flow.on_queue(name)
    async def handle(job: Job, msg: Message) -> int:
        started.append(msg.id)
        if job.n == 1:
            await anyio.sleep(60)
        return job.n * 10

    async with flow:
        async with anyio.create_task_group() as tg:
            failed: list[RemoteError] = []

            async def call() -> None:
                with pytest.raises(RemoteError) as caught:
                    await flow.request(name, Job(n=1), timeout=20)
                failed.append(caught.value)

            tg.start_soon(call)
            await eventually(lambda: len(started) == 1, what="the request's handler running")
            await flow.cancel(name, started[0], reason="caller gave up")
        assert failed[0].where == "cancelled" and failed[0].error == "caller gave up"
        delayed = await flow.enqueue(name, Job(n=2), delay=30, result_ttl=60)
        assert delayed is not None
        await flow.cancel(name, delayed, reason="too late")
        with pytest.raises(RemoteError) as caught:
            await flow.result(delayed, timeout=0)
        assert caught.value.where == "cancelled" and caught.value.error == "too late"
        done = await flow.enqueue(name, Job(n=3), result_ttl=60)
        assert done is not None
        assert await flow.result(done, timeout=10) == 30
        await flow.cancel(name, done)
        assert await flow.result(done) == 30, "the result written first stays"
    assert [c.stats.cancelled for c in flow.consumers] == [1]
    await flow.aclose()


async def test_a_handler_that_finishes_after_its_cancel_leaves_the_cancellation_recorded(
    url: str, ns: str
) -> None:
    """A handler that ends before its worker sees the cancel (the poll runs every 0.25 s)
    completes and is acknowledged, but its result does not replace the cancellation its
    waiter was told of at the cancel: ``result`` raised "cancelled", and says the same
    after the handler returned."""
    name = f"{ns}:q"
    flow = make_flow(url, ns)
    started: list[str] = []
    go_on = anyio.Event()
    ended: list[int] = []

    @flow.on_queue(name)
    async def handle(job: Job, msg: Message) -> int:
        started.append(msg.id)
        await go_on.wait()
        ended.append(job.n)
        return job.n * 10

    async with flow:
        mid = await flow.enqueue(name, Job(n=1), result_ttl=60)
        assert mid is not None
        failed: list[RemoteError] = []
        async with anyio.create_task_group() as tg:

            async def wait() -> None:
                with pytest.raises(RemoteError) as caught:
                    await flow.result(mid, timeout=20)
                failed.append(caught.value)

            tg.start_soon(wait)
            await eventually(lambda: started == [mid], what="the handler running")
            await flow.cancel(name, mid, reason="caller gave up")
            go_on.set()  # it returns before any poll of the marks can reach it
        await eventually(lambda: ended == [1], what="the handler finishing")
        await eventually(lambda: flow.consumers[0].stats.processed == 1, what="its ack")
        assert failed[0].where == "cancelled" and failed[0].error == "caller gave up"
        with pytest.raises(RemoteError) as caught:
            await flow.result(mid, timeout=0)
        assert caught.value.where == "cancelled", "the handler's result replaced the cancel"
        assert [c.stats.cancelled for c in flow.consumers] == [0]
        await anyio.sleep(QUIET)
        assert started == [mid], "an acknowledged message ran again"
    await flow.aclose()


async def test_a_batch_handler_never_gets_a_cancelled_message_and_a_running_batch_ends(
    url: str, ns: str
) -> None:
    """Cancelled members are taken out before the call; a batch already running is not
    interrupted (one call for many messages): it ends, and its messages are handled."""
    name = f"{ns}:q"
    flow = make_flow(url, ns)
    batches: list[list[int]] = []

    @flow.on_queue(name, batch=10, batch_wait=0.2)
    async def handle(jobs: list[Job]) -> None:
        batches.append([j.n for j in jobs])
        if jobs[0].n >= 10:
            await anyio.sleep(1.5)  # the running batch: cancelled meanwhile
        batches.append([-1])

    ids = [await flow.enqueue(name, Job(n=n)) for n in range(5)]
    await flow.cancel(name, ids[3])
    async with flow:
        await eventually(lambda: batches[:2] == [[0, 1, 2, 4], [-1]], what=f"{batches}")
        later = [await flow.enqueue(name, Job(n=n)) for n in (10, 11)]
        await eventually(lambda: len(batches) == 3, what="the second batch running")
        await flow.cancel(name, later[1])
        await eventually(lambda: len(batches) == 4, within=5, what="the second batch done")
    assert batches == [[0, 1, 2, 4], [-1], [10, 11], [-1]]
    assert [c.stats.cancelled for c in flow.consumers] == [1]
    assert [c.stats.processed for c in flow.consumers] == [6]
    await flow.aclose()


async def test_a_cancelled_message_gives_its_fair_group_place_back(url: str, ns: str) -> None:
    """With one message of a group at a time, a cancelled one that held the group's place
    would stall the group: the next ones run."""
    name = f"{ns}:q"
    flow = make_flow(url, ns)
    got: list[int] = []
    started = anyio.Event()

    @flow.on_queue(name, groups=GroupLimits(concurrency=1))
    async def handle(job: Job) -> None:
        if job.n == 0:
            started.set()
            await anyio.sleep(30)
        got.append(job.n)

    async with flow:
        first = await flow.enqueue(name, Job(n=0), group="a")
        await started.wait()
        waiting = await flow.enqueue(name, Job(n=1), group="a")
        await flow.enqueue(name, Job(n=2), group="a")
        await flow.cancel(name, waiting)
        await flow.cancel(name, first)
        await eventually(lambda: got == [2], within=5, what=f"the group goes on: {got}")
        await anyio.sleep(QUIET)
    assert got == [2]
    assert [c.stats.cancelled for c in flow.consumers] == [2]
    await flow.aclose()


async def test_a_channel_cannot_be_cancelled(url: str, ns: str) -> None:
    """Pub/Sub keeps no message: a cancel of a channel is refused with a clear error."""
    flow = make_flow(url, ns)

    @flow.on_channel(f"{ns}:news")
    async def handle(job: Job) -> None:
        pass

    @flow.on_queue(f"{ns}:q")
    async def work(job: Job) -> None:
        pass

    async with flow:
        with pytest.raises(ConfigError, match="channel keeps no message"):
            await flow.cancel(f"{ns}:news", "1-0")
        with pytest.raises(ConfigError, match="group names a consumer group of a stream"):
            await flow.cancel(f"{ns}:q", "x", group="g")
    await flow.aclose()


async def test_bad_arguments_are_refused(url: str, ns: str) -> None:
    client = Client(FlowConfig.build(url, prefix=ns))
    for bad, match in [
        (dict(message_id=""), "message id"),
        (dict(message_id=3), "message id"),
        (dict(message_id="x", ttl=0), "ttl"),
        (dict(message_id="x", ttl=True), "ttl"),
        (dict(message_id="x", group=""), "consumer group"),
    ]:
        with pytest.raises(ConfigError, match=match):
            await client.cancel(f"{ns}:q", **bad)  # type: ignore[arg-type]
    assert await client.cancelled(f"{ns}:q") == {}
    await client.aclose()


async def test_marks_expire_and_leave_nothing(url: str, ns: str, r: Any) -> None:
    name = f"{ns}:q"
    client = Client(FlowConfig.build(url, prefix=ns))
    keys = client.keys(name)
    await client.cancel(name, "a", ttl=0.4)
    await client.cancel(name, "b", ttl=0.8, reason="why")
    marks = await client.cancelled(name)
    assert sorted(marks) == ["a", "b"] and marks["b"].reason == "why"
    assert await r.exists(keys.cancels, keys.cancels_version) == 2
    await anyio.sleep(0.5)
    assert sorted(await client.cancelled(name)) == ["b"], "a's deadline passed"
    deadline = time.monotonic() + 3
    while await r.exists(keys.cancels, keys.cancels_version):
        assert time.monotonic() < deadline, "the keys outlived the last mark"
        await anyio.sleep(0.05)
    assert await client.cancelled(name) == {}
    await client.aclose()


async def test_a_restarted_worker_does_not_run_a_message_cancelled_while_it_was_down(
    url: str, ns: str
) -> None:
    """The marks are in Redis: a stopped flow's pending stream entry (handed back at stop)
    is not run by the next start."""
    name = f"{ns}:s"
    got: list[int] = []
    started = anyio.Event()

    def build() -> Flow:
        flow = make_flow(url, ns, grace_period=0.2, claim_idle=1.5)

        @flow.on_stream(name, group="g")
        async def handle(job: Job) -> None:
            started.set()
            got.append(job.n)
            await anyio.sleep(30)

        return flow

    first = build()
    async with first:
        mid = await first.append(name, Job(n=1))
        await started.wait()
    await first.aclose()  # stopped after its grace period: the entry is pending
    await Client(FlowConfig.build(url, prefix=ns)).cancel(name, mid)
    second = build()
    async with second:
        await eventually(lambda: [c.stats.cancelled for c in second.consumers] == [1],
                         within=8, what="the pending entry reclaimed and cancelled")  # fmt: skip
        await anyio.sleep(QUIET)
        assert [c.stats.cancelled for c in second.consumers] == [1]
    assert got == [1], "never run again"
    await second.aclose()


@pytest.mark.parametrize("kind", ["queue", "stream"])
async def test_a_partitioned_source_on_a_cluster(
    kind: str, redisflow_cluster: RedisCluster, ns: str
) -> None:
    """Every partition has its marks in its own slot: a waiting and a running message of
    a source over 3 partitions, on a cluster."""
    name = f"{ns}:{kind}"
    flow = make_flow(redisflow_cluster.seed_url, ns)
    got: list[int] = []
    running = anyio.Event()

    async def handle(job: Job) -> None:
        got.append(job.n)
        if job.n == 0:
            running.set()
            await anyio.sleep(30)

    if kind == "queue":
        flow.on_queue(name, partitions=3)(handle)
        send = flow.enqueue
    else:
        flow.on_stream(name, group="g", partitions=3)(handle)
        send = flow.append
    async with flow:
        first = await send(name, Job(n=0), key="k0")
        await running.wait()
        await flow.cancel(name, first)
        await eventually(lambda: sum(c.stats.cancelled for c in flow.consumers) == 1,
                         what="the running one cancelled")  # fmt: skip
    await flow.aclose()
    flow = make_flow(redisflow_cluster.seed_url, ns)
    if kind == "queue":
        flow.on_queue(name, partitions=3)(handle)
    else:
        flow.on_stream(name, group="g", partitions=3)(handle)
    ids = [await send(name, Job(n=n), key=f"k{n}") for n in range(1, 7)]
    await flow.cancel(name, ids[2], key="k3")  # that partition's entry of that id
    async with flow:
        await eventually(lambda: len(got) == 6, what=f"the others: {got}")
        await anyio.sleep(QUIET)
    assert sorted(got) == [0, 1, 2, 4, 5, 6]
    await flow.aclose()


def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


async def test_the_cli_cancels_and_refuses_bad_input(url: str, ns: str) -> None:
    name = f"{ns}:q"
    flow = make_flow(url, ns)
    got: list[int] = []

    @flow.on_queue(name)
    async def handle(job: Job) -> None:
        got.append(job.n)

    @flow.on_channel(f"{ns}:news")
    async def news(job: Job) -> None:
        pass

    async with flow:  # registers the sources
        pass
    ids = [await flow.enqueue(name, Job(n=n)) for n in range(3)]
    base = ("--url", url, "--prefix", ns)
    code, out, err = await anyio.to_thread.run_sync(
        lambda: cli("cancel", name, ids[1], "--reason", "from the shell", *base)
    )
    assert code == 0, err
    assert out.strip() == f"cancelled message {ids[1]} of queue {name!r}"
    marks = await flow.cancelled(name)
    assert list(marks) == [ids[1]] and marks[ids[1]].reason == "from the shell"
    for argv, message in [
        (("cancel", f"{ns}:news", "x", *base), "channel keeps no message"),
        (("cancel", name, "x", "--group", "g", *base), "group names a consumer group"),
        (("cancel", name, "x", "--ttl", "soon", *base), "--ttl: expected a positive number"),
        # refused by the parser, before any connection (not by the API after one)
        (
            ("cancel", name, "x", "--ttl", "0", *base),
            "--ttl: expected a positive number of seconds, got '0'",
        ),
        (("cancel", name, *base), "the following arguments are required: ID"),
    ]:
        code, out, err = await anyio.to_thread.run_sync(lambda a=argv: cli(*a))
        assert code == 2, (argv, out, err)
        assert message in err, err
        assert err.startswith("redisflow cancel: error:") or "redisflow: error" in err, err
    async with flow:
        await eventually(lambda: len(got) == 2, what="the others")
        await anyio.sleep(QUIET)
    assert sorted(got) == [0, 2]
    # the count is a column of `redisflow stats` and of the dashboard's source page
    code, out, err = await anyio.to_thread.run_sync(lambda: cli("stats", *base))
    assert code == 0, err
    header = next(line for line in out.splitlines() if line.startswith("KIND"))
    row = next(line for line in out.splitlines() if line.startswith("queue"))
    at = header.index("CANCELLED")
    assert row[at : at + len("CANCELLED")].strip() == "1", out
    transport = httpx.ASGITransport(app=dashboard(flow), client=("127.0.0.1", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        page = (await http.get(f"/source?kind=queue&name={name}")).text
    assert '<td class="n cancelled">1</td>' in page, page
    await flow.aclose()


async def test_the_readme_example_cancels_a_waiting_and_a_running_message(
    url: str, ns: str
) -> None:
    """The "Cancelling a message" section of the README, run as written (on the test
    server, its queue under the test's prefix, the delay shortened)."""
    section = README.split("## Cancelling a message", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert "flow = Flow()" in code and "delay=30" in code
    code = code.replace("flow = Flow()", f"flow = Flow({url!r}, prefix={ns!r}, track=True)")
    code = code.replace('"renders"', f'"{ns}:renders"').replace("delay=30", "delay=1")
    scope: dict[str, Any] = {}
    exec(code, scope)
    flow: Flow = scope["flow"]
    started = time.monotonic()
    await scope["main"]()
    assert time.monotonic() - started < 5, "the running one was interrupted, not waited for"
    name = f"{ns}:renders"
    marks = await flow.cancelled(name)
    assert {m.reason for m in marks.values()} == {"cancelled", "user left"}
    async with flow:  # the delayed one comes due, and is not run
        await anyio.sleep(2.0)
    assert sum(c.stats.processed for c in flow.consumers) == 0
    assert sum(c.stats.cancelled for c in flow.consumers) == 1
    statuses = [await flow.status(i) for i in marks]
    assert {s.status for s in statuses if s is not None} == {"cancelled"}
    assert len([s for s in statuses if s is not None]) == 2
    await flow.aclose()


async def test_a_def_handler_in_a_thread_settles_as_cancelled_when_it_returns(
    url: str, ns: str
) -> None:
    """A thread cannot be stopped: the handler runs to its end, ``msg.cancelled`` tells it
    meanwhile, and the message settles as cancelled (not processed, not retried)."""
    name = f"{ns}:q"
    flow = make_flow(url, ns)
    seen: list[str | None] = []

    @flow.on_queue(name)
    def handle(job: Job, msg: Message[Job]) -> None:
        seen.append(msg.cancelled)
        time.sleep(1.0)  # the cancel comes meanwhile
        seen.append(msg.cancelled)

    async with flow:
        mid = await flow.enqueue(name, Job(n=1))
        await eventually(lambda: seen, what="the handler started")
        await flow.cancel(name, mid, reason="late")
        await eventually(lambda: sum(c.stats.cancelled for c in flow.consumers) == 1,
                         what="settled as cancelled")  # fmt: skip
    assert seen == [None, "late"], "it ran to its end, and was told"
    assert [c.stats.processed for c in flow.consumers] == [0]
    await flow.aclose()
