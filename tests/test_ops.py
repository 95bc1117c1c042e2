"""Operating a flow, in process: ``DeadLetters`` (``flow.dlq``), ``stats.collect`` and its
rendering, and the ``Supervisor`` of ``redisflow run --workers`` with tiny worker programs.

The same features through the real command line are in ``tests/test_cli.py``.
"""

from __future__ import annotations

import io
import sys
import textwrap
import time
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from redisflow import ConfigError, Flow, Message, Reject, Source
from redisflow.cli.render import dead_table as table
from redisflow.cli.render import describe, human_bytes, render_rich, render_text
from redisflow.cli.supervisor import RestartPolicy, Supervisor
from redisflow.keys import Keys, sources_key
from redisflow.ops.stats import Row, collect
from redisflow.protocol.envelope import now_ms, split
from redisflow.protocol.records import DeadLetter, parse_source, source_member
from tests.support.flows import eventually, make_flow
from tests.support.kinds import GROUP, Kind, by_kind

pytestmark = pytest.mark.anyio

FOUR_KINDS = [Kind("queue"), Kind("priority"), Kind("stream"), Kind("channel")]


async def bury(r: aioredis.Redis, flow: Flow, name: str, **fields: Any) -> str:
    """Write a dead letter as a consumer does (``base.py`` ``_dead_fields``)."""
    entry = {
        "data": b'{"n": 1}',
        "message_id": "m1",
        "error": "ValueError: boom",
        "where": "app.py:1 in handle",
        "attempts": 5,
        "handler": "handle",
        "source": f"queue {name!r}",
        "failed_at": now_ms(),
        **fields,
    }
    entry_id = await r.xadd(flow.keys(name).dead, entry)
    assert isinstance(entry_id, bytes)
    return entry_id.decode()


# -- DeadLetters ---------------------------------------------------------------------------


async def test_list_parses_and_filters_dead_letters(r: aioredis.Redis, url: str, ns: str) -> None:
    """``list`` returns typed records oldest first; handler, error substring, age, ids and
    limit filters combine."""
    flow = make_flow(url, ns)
    name = f"{ns}:q"
    hour_ago = now_ms() - 3_600_000
    old = await bury(r, flow, name, failed_at=hour_ago, handler="a", error="TimeoutError: slow")
    mid = await bury(r, flow, name, handler="b", error="ValueError: bad input")
    new = await bury(r, flow, name, handler="a", error="ValueError: other", data=b"not json")
    try:
        dlq = flow.dlq(name)
        every = await dlq.list()
        assert [d.id for d in every] == [old, mid, new]
        first = every[0]
        assert isinstance(first, DeadLetter)
        assert (first.handler, first.attempts, first.message_id) == ("a", 5, "m1")
        assert first.payload == {"n": 1} and first.channel is None
        assert first.failed_at is not None
        assert abs(first.failed_at.timestamp() * 1000 - hour_ago) < 1
        assert [d.id for d in await dlq.list(handler="a")] == [old, new]
        assert [d.id for d in await dlq.list(error="ValueError")] == [mid, new]
        assert [d.id for d in await dlq.list(older_than=60)] == [old]
        assert [d.id for d in await dlq.list(newer_than=60)] == [mid, new]
        assert [d.id for d in await dlq.list(handler="a", newer_than=60)] == [new]
        assert [d.id for d in await dlq.list(ids=[new, old])] == [new, old]
        assert [d.id for d in await dlq.list(limit=2)] == [old, mid]
        assert await dlq.list(error="nothing like it") == []
        assert (await dlq.show(mid)) == every[1]
        assert await dlq.show("1-1") is None
        assert await dlq.count() == 3
        assert "not json" in describe(every[2]) and "b'not json'" in describe(every[2])
        assert every[1].to_json()["data"] == '{"n": 1}'
        assert "TimeoutError: slow" in table(every)
        with pytest.raises(ConfigError, match="not a stream entry id"):
            await dlq.list(ids=["nope"])
        with pytest.raises(ConfigError, match="limit"):
            await dlq.list(limit=0)
    finally:
        await flow.aclose()


async def test_list_pages_through_a_long_dead_letter_stream(
    r: aioredis.Redis, url: str, ns: str
) -> None:
    """More entries than one XRANGE page are all seen, in order, by filters and purges."""
    flow = make_flow(url, ns)
    name = f"{ns}:q"
    key = flow.keys(name).dead
    async with r.pipeline(transaction=False) as pipe:
        for i in range(1234):
            pipe.xadd(key, {"data": b"1", "handler": "h", "error": f"e{i % 3}", "failed_at": 1})
        await pipe.execute()
    try:
        dlq = flow.dlq(name)
        assert len(await dlq.list(limit=None)) == 1234
        assert len(await dlq.list(error="e2", limit=None)) == 411
        assert await dlq.purge(error="e1", dry_run=True) == 411
        assert await dlq.count() == 1234
        assert await dlq.purge(error="e1") == 411
        assert await dlq.count() == 823
        assert await dlq.purge(limit=3) == 3
        assert await dlq.count() == 820
    finally:
        await flow.aclose()


@by_kind(FOUR_KINDS)
async def test_replay_sends_dead_letters_back_to_a_running_flow(
    kind: Kind, r: aioredis.Redis, url: str, ns: str
) -> None:
    """Replayed dead letters are consumed again (as first attempts) and leave the dead
    letters; a dry run changes nothing; the other dead letters stay."""
    flow = make_flow(url, ns)
    name = kind.name(ns)
    fixed = False
    handled: list[tuple[int, int]] = []

    @kind.on(flow, name, max_attempts=1)
    async def handle(n: int, msg: Message[int]) -> None:
        if not fixed:
            raise Reject("not yet")
        handled.append((n, msg.attempt))

    async with flow:
        for n in (1, 2, 3):
            await kind.produce(flow, name, n)
        dlq = flow.dlq(name, kind.kind)
        await eventually(lambda: _has(dlq, 3), what="three dead letters")
        dead = await dlq.list()
        assert sorted(d.payload for d in dead) == [1, 2, 3]
        assert all(d.handler == handle.__qualname__ for d in dead)
        assert all(d.error == "rejected: not yet" for d in dead)
        assert await dlq.replay(dry_run=True) == 3
        assert await dlq.count() == 3
        fixed = True
        keep = dead[0].id
        replayed = await dlq.replay(ids=[d.id for d in dead[1:]], priority=7)
        assert replayed == 2
        await eventually(lambda: len(handled) == 2, what="replayed messages handled")
        assert sorted(handled) == sorted((d.payload, 1) for d in dead[1:])
        assert [d.id for d in await dlq.list()] == [keep]
        if kind.kind == "queue":  # the envelope keeps the message id
            assert dead[0].message_id
    await flow.aclose()


async def _has(dlq: Any, n: int) -> bool:
    return bool(await dlq.count() >= n)


async def test_replay_to_a_priority_queue_uses_the_given_level(
    r: aioredis.Redis, url: str, ns: str
) -> None:
    """Without a consumer, the replayed item waits in the sorted set at the given level,
    with a fresh first-attempt envelope keeping the message id."""
    flow = make_flow(url, ns)
    name = f"{ns}:p"
    entry = await bury(r, flow, name, message_id="abc", attempts=3)
    try:
        assert await flow.dlq(name, "priority").replay(priority=5) == 1
        [(member, score)] = await r.zrange(name, 0, -1, withscores=True)
        assert int(score) // 2**40 == 5
        head, payload = split(member)
        assert head is not None and head[0] == "abc" and head[2] == 1
        assert payload == b'{"n": 1}'
        assert await r.xlen(flow.keys(name).dead) == 0
        with pytest.raises(ConfigError, match="priority"):
            await flow.dlq(name, "priority").replay(priority=9000)
        assert entry
    finally:
        await flow.aclose()


# -- stats ---------------------------------------------------------------------------------


def by_handler(rows: list[Row]) -> dict[str, Row]:
    """Rows by the last part of their handler's qualname."""
    return {(row.handler or "").rpartition(".")[2]: row for row in rows}


async def test_collect_reports_counters_depths_and_live_workers(
    r: aioredis.Redis, url: str, ns: str
) -> None:
    """A running flow's counters, in-flight gauges, queue depth, stream lag/pending and dead
    letters, read with and without the app; stale gauges are dropped from Redis."""
    flow = make_flow(url, ns, report_interval=0.2)
    queue, stream = f"{ns}:q", f"{ns}:s"

    @flow.on_queue(queue, max_attempts=1)
    async def work(n: int) -> None:
        if n < 0:
            raise Reject("negative")

    @flow.on_stream(stream, group=GROUP)
    async def read(n: int) -> None:
        pass

    async with flow:
        await flow.enqueue_many(queue, [1, 2, -1])
        await flow.append(stream, 1)

        async def reported() -> bool:
            snapshot = await collect(
                flow.client, [(h.source, h.name) for h in flow.handlers.values()]
            )
            rows = by_handler(snapshot.rows)
            counters = rows["work"].counters
            return counters is not None and counters["processed"] == 2 and rows["work"].workers

        await eventually(reported, within=10, what="counters reported")
        stale = f"{work.__qualname__}:deadbeef"
        await r.hset(Keys(ns, queue).inflight, stale, f"7:{now_ms() - 60_000}")
        without_app = await collect(flow.client)
    await flow.aclose()
    rows = by_handler(without_app.rows)
    assert set(rows) == {"work", "read"}
    work = rows["work"]
    assert work.kind == "queue" and work.source == queue and work.group is None
    assert work.counters is not None and work.counters["processed"] == 2
    assert work.workers == 1 and work.in_flight is not None and work.in_flight < 7
    assert work.dead_letters >= 1 and work.memory > 0
    assert rows["read"].group == GROUP and rows["read"].pending is not None
    assert not await r.hexists(Keys(ns, queue).inflight, stale)
    assert without_app.used_memory > 0
    assert render_text(without_app, "redis://x").count("\n") == 4  # title, blank, header, 2
    await r.xadd(stream, {"data": b"2"})
    await r.xadd(stream, {"data": b"3"})
    probe = Flow(url, prefix=ns)
    try:
        after = await collect(probe.client)
    finally:
        await probe.aclose()
    reader = by_handler(after.rows)["read"]
    assert (reader.waiting, reader.pending, reader.workers) == (2, 0, 0)


async def test_collect_without_the_app_cannot_pair_handlers_with_groups(
    r: aioredis.Redis, url: str, ns: str
) -> None:
    """Two groups on one stream: without the app, each group gets a row of its own (lag,
    pending) and each handler one with its counters and no group."""
    stream = f"{ns}:s"
    members = [source_member(Source("stream", stream, group)) for group in ("g1", "g2")]
    await r.sadd(sources_key(ns), *members, "junk")
    await r.xadd(stream, {"data": b"1"})
    await r.xgroup_create(stream, "g1", id="0")
    await r.xgroup_create(stream, "g2", id="$")
    await r.hset(Keys(ns, stream).stats, mapping={"one:processed": 5, "two:dead": 1})
    flow = Flow(url, prefix=ns)
    try:
        snapshot = await collect(flow.client)
    finally:
        await flow.aclose()
    shown = [(row.group, row.handler, row.waiting) for row in snapshot.rows]
    assert shown == [("g1", None, 1), ("g2", None, 0), (None, "one", None), (None, "two", None)]
    assert snapshot.rows[2].counters is not None and snapshot.rows[2].counters["processed"] == 5
    assert snapshot.rows[0].counters is None


def test_parse_source_and_human_bytes() -> None:
    """Registry members and byte counts as the table shows them."""
    odd = Source("stream", "a|b{c}", "g|1")  # any character in a name or a group
    assert parse_source(source_member(odd).encode()) == odd
    assert parse_source(source_member(Source("queue", "emails"))) == Source("queue", "emails")
    assert parse_source('["queue", "emails", null]') == Source("queue", "emails")
    for junk in ("nonsense", "stream|a|g", '["nope", "a", null]', '["queue", "", null]', "[1]"):
        assert parse_source(junk) is None, junk
    assert human_bytes(512) == "512 B" and human_bytes(1536) == "1.5 KiB"
    assert human_bytes(5 * 2**30) == "5.0 GiB"


async def test_rich_table_renders_when_rich_is_installed(url: str, ns: str) -> None:
    """The rich rendering has every column and row (skipped without rich)."""
    pytest.importorskip("rich")
    from rich.console import Console

    flow = make_flow(url, ns)

    @flow.on_queue(f"{ns}:q")
    async def handle(n: int) -> None:
        pass

    try:
        snapshot = await collect(flow.client, [(h.source, h.name) for h in flow.handlers.values()])
    finally:
        await flow.aclose()
    out = io.StringIO()
    Console(file=out, width=200).print(render_rich(snapshot, "redis://x"))
    text = out.getvalue()
    assert "IN FLIGHT" in text and "handle" in text and f"{ns}:q" in text


# -- the supervisor ------------------------------------------------------------------------

FAST = RestartPolicy(first_delay=0.05, max_delay=0.2, stable_after=30, max_start_failures=3)


def program(source: str) -> list[str]:
    """A worker command: Python running ``source`` (``ready()`` tells the supervisor)."""
    prelude = textwrap.dedent(
        """\
        import os, socket, sys, time
        def ready():
            fd = int(os.environ["REDISFLOW_SUPERVISOR_FD"])
            socket.socket(fileno=fd).sendall(b"ready\\n")
        """
    )
    return [sys.executable, "-c", prelude + textwrap.dedent(source)]


async def test_supervisor_gives_up_on_workers_that_fail_at_start() -> None:
    """Workers that exit before ready are restarted with backoff, then the supervisor gives
    up with status 1 (status 2, a usage error, gives up at once)."""
    started = time.monotonic()
    assert await Supervisor(program("sys.exit(3)"), 2, policy=FAST).run() == 1
    assert time.monotonic() - started < 10
    assert await Supervisor(program("sys.exit(2)"), 1, policy=FAST).run() == 2


async def test_supervisor_restarts_crashed_workers_and_lets_finished_ones_go(
    tmp_path: Any,
) -> None:
    """A worker that crashes after it was ready is started again; one that exits with 0 is
    not, and the supervisor exits 0 when none is left."""
    runs = tmp_path / "runs"
    source = f"""\
        ready()
        with open({str(runs)!r}, "a") as f:
            f.write(os.environ["REDISFLOW_WORKER"] + "\\n")
        n = sum(1 for _ in open({str(runs)!r}))
        sys.exit(0 if n >= 3 else 1)
    """
    with anyio.fail_after(20):
        assert await Supervisor(program(source), 1, policy=FAST).run() == 0
    assert runs.read_text().split() == ["1", "1", "1"]


@pytest.mark.anyio
async def test_dead_letters_keep_priority_and_headers_for_replay(url: str, ns: str) -> None:
    """A dead priority message records its level and headers; replay puts it back at that
    level with its headers (unless a level is given)."""
    from redisflow import Flow, Reject

    name = f"{ns}:alerts"
    flow = Flow(url, prefix=ns, block_timeout=0.5)
    seen: list[tuple[int, dict[str, str]]] = []
    reject = True

    @flow.on_priority(name)
    async def alert(n: int, msg: Message[int]) -> None:
        if reject:
            raise Reject("not now")
        seen.append((n, msg.headers))

    async with flow:
        await flow.enqueue_priority(name, 5, priority=7, headers={"trace": "t1"})
        await flow.wait_idle()
    [dead] = await flow.dlq(name, "priority").list()
    assert dead.priority == 7 and dead.headers == {"trace": "t1"}
    assert await flow.dlq(name, "priority").replay() == 1
    assert await flow.priority_stats(name) == {7: 1}
    reject = False
    async with flow:
        await flow.wait_idle()
    await flow.aclose()
    assert seen == [(5, {"trace": "t1"})]
