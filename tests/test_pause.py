"""Pause and resume: a paused queue, priority queue, stream (a group, or all) is fetched by
no worker until resumed, messages sent meanwhile wait, nothing is lost or handled twice;
the state lives in Redis (a flow that starts while paused fetches nothing); channels cannot
be paused. The multi-process run is in ``test_chaos_pause.py``."""

from __future__ import annotations

import contextlib
import io
from collections import Counter
from typing import Any, NamedTuple

import anyio
import orjson
import pytest
from pydantic import BaseModel

from redisflow import Client, ConfigError, Flow, FlowConfig
from redisflow.cli import main
from redisflow.ops.stats import collect
from redisflow.testing import RedisCluster
from tests.support.flows import eventually, make_flow
from tests.support.kinds import DURABLE, GROUP, Kind, by_kind

pytestmark = pytest.mark.anyio

#: How long a test watches a paused source for a message handled by mistake: longer than
#: the 0.25 s between two readings of the paused state, and the fetch it may interrupt.
QUIET = 1.0


class Job(BaseModel):
    n: int


async def paused_everywhere(flow: Flow, paused: bool = True) -> None:
    """Wait until every consumer of ``flow`` took a pause made elsewhere (its fetch loop
    returned), or a resume."""
    pausable = [c for c in flow.consumers if c.handler.source.kind != "channel"]
    await eventually(
        lambda: all(c.parked if paused else not c.paused for c in pausable),
        within=5,
        what=f"every consumer {'paused' if paused else 'resumed'}",
    )


@by_kind(DURABLE)
async def test_a_pause_stops_every_consumer_and_resume_delivers_the_rest(
    kind: Kind, url: str, ns: str, r: Any
) -> None:
    """A pause made by another client (a producer-only process, the dashboard) reaches the
    running flow through Redis: what is sent while paused waits, then is handled once."""
    name = kind.name(ns)
    flow = make_flow(url, ns)
    got: list[int] = []

    @kind.on(flow, name)
    async def handle(job: Job) -> None:
        got.append(job.n)

    other = Client(FlowConfig.build(url, prefix=ns))
    async with flow:
        await kind.produce_many(flow, name, [Job(n=n) for n in range(20)])
        await eventually(lambda: len(got) == 20, what="the first 20 handled")
        await other.pause(name)
        await paused_everywhere(flow)
        await kind.produce_many(flow, name, [Job(n=n) for n in range(20, 50)])
        await anyio.sleep(QUIET)
        assert len(got) == 20, "nothing is handled while paused"
        assert await kind.held(r, flow, name) == 30, "the 30 wait in Redis"
        assert [(p.name, p.group) for p in await other.paused()] == [(name, None)]
        assert await other.resume(name) is True
        await eventually(lambda: len(got) == 50, what="the rest handled after resume")
        assert await other.resume(name) is False, "nothing paused any more"
    await other.aclose()
    assert Counter(got) == Counter(range(50)), "each once"


async def test_a_flow_that_starts_while_paused_fetches_nothing(url: str, ns: str) -> None:
    """The state is in Redis: a worker started after the pause does not fetch, not even
    once, and starts on ``resume``; a producer-only client pauses a queue no worker has
    registered yet."""
    other = Client(FlowConfig.build(url, prefix=ns))
    await other.pause("jobs")
    flow = make_flow(url, ns)
    got: list[int] = []

    @flow.on_queue("jobs")
    async def handle(job: Job) -> None:
        got.append(job.n)

    await other.enqueue_many("jobs", [Job(n=n) for n in range(10)])
    async with flow:
        assert all(c.paused for c in flow.consumers), "paused before the first fetch"
        await anyio.sleep(QUIET)
        assert got == []
        assert await flow.send("LLEN", "jobs") == 10
        await flow.resume("jobs")  # the flow's own: at once, no polling
        assert not any(c.paused for c in flow.consumers)
        await eventually(lambda: len(got) == 10, what="handled after resume")
    await other.aclose()


async def test_work_held_at_the_pause_is_finished_and_acknowledged(url: str, ns: str) -> None:
    """A pause does not interrupt handlers: the messages a worker holds are finished and
    acknowledged while the source stays paused (no fetch carries the acks)."""
    flow = make_flow(url, ns, prefetch=4)
    release = anyio.Event()
    started: list[int] = []
    done: list[int] = []

    @flow.on_queue(f"{ns}:q", concurrency=4)
    @flow.on_stream(f"{ns}:s", group=GROUP, concurrency=4)
    async def handle(job: Job) -> None:
        started.append(job.n)
        await release.wait()
        done.append(job.n)

    async with flow:
        await flow.enqueue_many(f"{ns}:q", [Job(n=n) for n in range(10)])
        await flow.append_many(f"{ns}:s", [Job(n=n) for n in range(100, 110)])
        await eventually(lambda: len(started) == 8, what="4 running per source")
        await flow.pause(f"{ns}:q")
        await flow.pause(f"{ns}:s")
        release.set()
        await eventually(lambda: len(done) == 8, what="the running ones finish")
        await anyio.sleep(QUIET)
        assert len(started) == 8, "no new message started while paused"

        async def acknowledged() -> bool:
            batches = [k async for k in _scan(flow, f"{flow.keys(f'{ns}:q').base}:proc:*")]
            pending = (await flow.send("XPENDING", f"{ns}:s", GROUP))[0]
            return not batches and pending == 0

        await eventually(acknowledged, what="the acks sent while paused")
        assert await flow.send("LLEN", f"{ns}:q") == 6
        await flow.resume(f"{ns}:q")
        await flow.resume(f"{ns}:s")
        await eventually(lambda: len(done) == 20, what="the rest after resume")
    assert sorted(done) == [*range(10), *range(100, 110)]


async def test_one_consumer_group_of_a_stream(url: str, ns: str) -> None:
    """``group=`` pauses one group of a stream; the others go on. A stream paused whole
    cannot be resumed one group at a time (ConfigError saying how)."""
    flow = make_flow(url, ns)
    got: dict[str, list[int]] = {"a": [], "b": []}

    @flow.on_stream("events", group="a")
    async def in_a(job: Job) -> None:
        got["a"].append(job.n)

    @flow.on_stream("events", group="b")
    async def in_b(job: Job) -> None:
        got["b"].append(job.n)

    async with flow:
        await flow.pause("events", group="a")
        await flow.append_many("events", [Job(n=n) for n in range(10)])
        await eventually(lambda: len(got["b"]) == 10, what="group b goes on")
        await anyio.sleep(QUIET)
        assert got["a"] == []
        assert [(p.name, p.group) for p in await flow.paused()] == [("events", "a")]
        await flow.resume("events", group="a")
        await eventually(lambda: len(got["a"]) == 10, what="group a after resume")
        await flow.pause("events")
        with pytest.raises(ConfigError, match="paused whole"):
            await flow.resume("events", group="b")
        assert await flow.resume("events")
    assert sorted(got["a"]) == sorted(got["b"]) == list(range(10))


async def test_what_cannot_be_paused_is_a_config_error(url: str, ns: str) -> None:
    """A channel cannot be paused (said by the flow that has the handler, and by a client
    that learns it from the sources the flows registered); ``group=`` belongs to streams."""
    flow = make_flow(url, ns)

    @flow.on_channel("news")
    async def news(item: Any) -> None: ...

    @flow.on_queue("jobs")
    async def jobs(job: Job) -> None: ...

    with pytest.raises(ConfigError, match="'news' is a Pub/Sub channel: a channel cannot"):
        await flow.pause("news")
    with pytest.raises(ConfigError, match="group='x': group names a stream's consumer group"):
        await flow.pause("jobs", group="x")
    with pytest.raises(ConfigError, match="source name must be a non-empty string"):
        await flow.pause("")
    async with flow:  # registers its sources
        pass
    other = Client(FlowConfig.build(url, prefix=ns))
    with pytest.raises(ConfigError, match="channel cannot be paused"):
        await other.pause("news")
    assert await other.paused() == []
    await other.aclose()
    await flow.aclose()


async def test_stats_and_the_command_line(url: str, ns: str) -> None:
    """``redisflow pause NAME`` / ``resume NAME`` (``--group``), the ``paused`` column of
    ``redisflow stats --json``, and the command's errors (a channel, exit 2)."""
    flow = make_flow(url, ns)

    @flow.on_queue("jobs")
    async def jobs(job: Job) -> None: ...

    @flow.on_stream("events", group="g")
    async def events(job: Job) -> None: ...

    @flow.on_channel("news")
    async def news(item: Any) -> None: ...

    async with flow:
        out = await _cli("pause", "jobs", "--url", url, "--prefix", ns)
        assert out.returncode == 0 and "paused queue 'jobs'" in out.stdout, out
        out = await _cli("pause", "events", "--group", "g", "--url", url, "--prefix", ns)
        assert out.returncode == 0, out
        out = await _cli("pause", "news", "--url", url, "--prefix", ns)
        assert out.returncode == 2 and "channel cannot be paused" in out.stderr, out
        out = await _cli("pause", "nothing", "--url", url, "--prefix", ns)
        assert out.returncode == 0 and "no flow under prefix" in out.stderr, out
        await paused_everywhere(flow)
        snapshot = await collect(flow.client)
        paused = {(row.source, row.group): row.paused for row in snapshot.rows}
        assert paused == {("jobs", None): True, ("events", "g"): True, ("news", None): False}
        stats = await _cli("stats", "--json", "--url", url, "--prefix", ns)
        rows = orjson.loads(stats.stdout)["handlers"]
        assert {r["source"]: r["paused"] for r in rows} == {
            "jobs": True,
            "events": True,
            "news": False,
        }
        assert {(p["name"], p["group"]) for p in orjson.loads(stats.stdout)["paused"]} == {
            ("jobs", None),
            ("events", "g"),
            ("nothing", None),
        }
        for name in ("jobs", "events", "nothing"):
            out = await _cli("resume", name, "--url", url, "--prefix", ns)
            assert out.returncode == 0 and "resumed" in out.stdout, out
        out = await _cli("resume", "jobs", "--url", url, "--prefix", ns)
        assert out.returncode == 0 and "was not paused" in out.stdout, out
        await paused_everywhere(flow, False)


async def test_pause_on_a_cluster_with_partitions(redisflow_cluster: RedisCluster, ns: str) -> None:
    """On a cluster, a pause stops every partition of a source (spread over the masters)."""
    url = redisflow_cluster.seed_url
    flow = make_flow(url, ns)
    got: list[int] = []

    @flow.on_queue(f"{ns}:jobs", partitions=3)
    async def handle(job: Job) -> None:
        got.append(job.n)

    other = Client(FlowConfig.build(url, prefix=ns))
    async with flow:
        await other.pause(f"{ns}:jobs")
        await paused_everywhere(flow)
        assert len(flow.consumers) >= 3  # the plain key too, until it is known empty
        await other.enqueue_many(f"{ns}:jobs", [Job(n=n) for n in range(30)])
        await anyio.sleep(QUIET)
        assert got == []
        await other.resume(f"{ns}:jobs")
        await eventually(lambda: len(got) == 30, what="every partition after resume")
    await other.aclose()
    assert sorted(got) == list(range(30))


class Ran(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


async def _cli(*args: str) -> Ran:
    """``redisflow ARGS`` in this process (in a thread: the command runs its own loop)."""

    def run() -> Ran:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:  # a usage error
                code = int(exc.code or 0)
        return Ran(code, out.getvalue(), err.getvalue())

    return await anyio.to_thread.run_sync(run)


async def _scan(flow: Flow, pattern: str) -> Any:
    cursor = b"0"
    while True:
        cursor, keys = await flow.send("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
        for key in keys:
            yield key
        if cursor in (b"0", 0):
            return
