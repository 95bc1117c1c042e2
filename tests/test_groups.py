"""Fair groups (``groups=GroupLimits(...)``, ``enqueue(..., group=)``): round robin across
groups, FIFO (or priority order) within one, per-group concurrency and rate limits held
across worker processes, retries, delays, dead letters, pause and resume, crash recovery,
partitions on a cluster, against real Redis."""

from __future__ import annotations

import functools
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest
import redis.asyncio as aioredis
from pydantic import BaseModel

from redisflow import ConfigError, Flow, GroupLimits, Message, RateLimit, Reject
from tests.support import flows
from tests.support.flows import eventually
from tests.support.workers import Workers

pytestmark = pytest.mark.anyio

KINDS = pytest.mark.parametrize("kind", ["queue", "priority"])
ROOT = Path(__file__).resolve().parents[1]


class Job(BaseModel):
    n: int
    p: int = 0
    sleep: float | None = None
    first: float | None = None


@pytest.fixture
def make_flow(url: str, ns: str) -> Callable[..., Flow]:
    return functools.partial(flows.make_flow, url, ns)


def on(flow: Flow, kind: str, name: str, **options: Any) -> Callable[[Any], Any]:
    return (flow.on_queue if kind == "queue" else flow.on_priority)(name, **options)


async def send(
    flow: Flow, kind: str, name: str, jobs: list[dict[str, Any]], **options: Any
) -> list[str]:
    if kind == "queue":
        return await flow.enqueue_many(name, jobs, **options)
    return await flow.enqueue_priority_many(name, jobs, **options)


async def leftovers(r: aioredis.Redis, flow: Flow, name: str) -> list[str]:
    """The group bookkeeping still in Redis: it must all be gone once everything is done."""
    keys = flow.keys(name)
    found = sorted([k.decode() async for k in r.scan_iter(match=f"{keys.base}:g*")])
    return [k for k in found if not k.endswith((":gturn",))]


# -- in one process ---------------------------------------------------------------------


@KINDS
async def test_groups_are_served_round_robin_fifo_within_each(
    kind: str, make_flow: Callable[..., Flow], ns: str, r: aioredis.Redis
) -> None:
    """Tenant A sends 300, then B 5 and messages without a group 5: B's and the default
    group's finish long before A's backlog, and each group keeps its order."""
    flow = make_flow()
    order: list[tuple[str | None, int]] = []

    @on(flow, kind, ns, groups=GroupLimits(), concurrency=1)
    async def handle(job: Job, msg: Message[Job]) -> None:
        order.append((msg.group, job.n))

    await send(flow, kind, ns, [{"n": n} for n in range(300)], group="A")
    await send(flow, kind, ns, [{"n": n} for n in range(5)], group="B")
    await send(flow, kind, ns, [{"n": n} for n in range(5)])
    async with flow:
        await eventually(lambda: len(order) == 310, within=10, what="all")

        async def clean() -> bool:
            return await leftovers(r, flow, ns) == []

        await eventually(clean, what="no group bookkeeping left")
    by_group = {g: [n for gg, n in order if gg == g] for g in ("A", "B", None)}
    assert by_group == {"A": list(range(300)), "B": list(range(5)), None: list(range(5))}
    last = {g: max(i for i, (gg, _) in enumerate(order) if gg == g) for g in ("B", None)}
    assert max(last.values()) < 30, order[:40]  # one batch of 500 took a share of each


@KINDS
async def test_priority_order_holds_within_a_group(
    kind: str, make_flow: Callable[..., Flow], ns: str
) -> None:
    flow = make_flow()
    got: list[tuple[int, int]] = []

    @on(flow, kind, ns, groups=GroupLimits(), concurrency=1)
    async def handle(job: Job) -> None:
        got.append((job.p, job.n))

    if kind == "priority":
        for n, p in enumerate([5, 1, 3, 1, 0]):
            await flow.enqueue_priority(ns, {"n": n, "p": p}, priority=p, group="t")
        expected = [(0, 4), (1, 1), (1, 3), (3, 2), (5, 0)]
    else:
        await flow.enqueue_many(ns, [{"n": n} for n in range(5)], group="t")
        expected = [(0, n) for n in range(5)]
    async with flow:
        await eventually(lambda: len(got) == 5, what="all five")
    assert got == expected


@KINDS
async def test_retries_delays_and_dead_letters_keep_the_group(
    kind: str, make_flow: Callable[..., Flow], ns: str, r: aioredis.Redis
) -> None:
    """A retried message goes back to its group (with its attempt), a delayed one arrives in
    its group when due, a dead letter records its group; nothing is left behind."""
    flow = make_flow()
    seen: list[tuple[str | None, int, int]] = []

    @on(flow, kind, ns, groups=GroupLimits(concurrency=1), retry_delay=0.05, max_attempts=2)
    async def handle(job: Job, msg: Message[Job]) -> None:
        seen.append((msg.group, job.n, msg.attempt))
        if job.n == 1:
            raise RuntimeError("always")
        if job.n == 2:
            raise Reject("no")

    async with flow:
        await send(flow, kind, ns, [{"n": 0}, {"n": 1}, {"n": 2}], group="acme")
        if kind == "queue":
            await flow.enqueue(ns, {"n": 3}, group="acme", delay=0.3)
        else:
            await flow.enqueue_priority(ns, {"n": 3}, group="acme", delay=0.3)

        async def dead() -> bool:
            return len(await flow.dlq(ns).list()) == 2

        await eventually(dead, within=10, what="two dead letters")
        await eventually(lambda: len(seen) == 5, what="the delayed one")
        letters = await flow.dlq(ns).list()
        assert {d.group for d in letters} == {"acme"}
        assert await flow.dlq(ns).replay() == 2  # back to their group, as first attempts
        await eventually(lambda: len(seen) == 7, what="the replayed ones")
        assert sorted(seen[5:]) == [("acme", 1, 1), ("acme", 2, 1)]
        await eventually(dead, within=10, what="dead again")

        async def clean() -> bool:
            return await leftovers(r, flow, ns) == []

        await eventually(clean, what=f"no group bookkeeping left: {await leftovers(r, flow, ns)}")
    assert sorted(seen[:5]) == [("acme", 0, 1), ("acme", 1, 1), ("acme", 1, 2), ("acme", 2, 1),
                                ("acme", 3, 1)]  # fmt: skip
    raw = await r.xrange(flow.keys(ns).dead)
    assert {fields[b"group"] for _, fields in raw} == {b"acme"}
    assert {d.attempts for d in letters} == {1, 2}


@KINDS
async def test_pause_and_resume_one_group(
    kind: str, make_flow: Callable[..., Flow], ns: str
) -> None:
    """A paused group is not served (across every worker) until resumed; the others flow;
    ``backlogs`` shows the largest groups, paused or not."""
    flow = make_flow()
    got: list[str | None] = []

    @on(flow, kind, ns, groups=GroupLimits())
    async def handle(job: Job, msg: Message[Job]) -> None:
        got.append(msg.group)

    groups = flow.groups(ns)
    assert await groups.pause("acme") is True
    assert await groups.pause("acme") is False
    assert await groups.paused() == ["acme"]
    async with flow:
        await send(flow, kind, ns, [{"n": n} for n in range(7)], group="acme")
        await send(flow, kind, ns, [{"n": n} for n in range(3)], group="other")
        await eventually(lambda: got.count("other") == 3, what="the other group")
        await anyio.sleep(0.3)
        assert "acme" not in got
        backlogs = await groups.backlogs()
        assert [(b.group, b.waiting, b.paused) for b in backlogs] == [("acme", 7, True)]
        assert await groups.resume("acme") is True
        await eventually(lambda: got.count("acme") == 7, what="acme after resume")
        assert await groups.backlogs() == []


async def test_a_message_without_a_group_or_from_another_client_is_the_default_group(
    make_flow: Callable[..., Flow], ns: str, r: aioredis.Redis
) -> None:
    flow = make_flow()
    got: list[tuple[str | None, int]] = []

    @flow.on_queue(ns, groups=GroupLimits(concurrency=1))
    async def handle(job: Job, msg: Message[Job]) -> None:
        got.append((msg.group, job.n))

    async with flow:
        await flow.enqueue(ns, {"n": 0})
        await r.rpush(ns, b'{"n": 1}')  # another client: picked up by the housekeeping
        await eventually(lambda: len(got) == 2, what="both, in the default group")
    assert got == [(None, 0), (None, 1)]


async def test_a_producer_learns_that_a_queue_is_grouped(
    make_flow: Callable[..., Flow], url: str, ns: str
) -> None:
    """A producer with no handler sends a message without a group to the default group
    through the group script (so idle consumers wake at once), once it has read that the
    queue is consumed in groups."""
    flow = make_flow(block_timeout=30)  # only a wake-up can bring it quickly
    got: list[int] = []

    @flow.on_queue(ns, groups=GroupLimits())
    async def handle(job: Job) -> None:
        got.append(job.n)

    async with flow, Flow(url, prefix=ns) as producer:
        await anyio.sleep(0.2)  # the consumer blocks
        await producer.enqueue(ns, {"n": 0})
        await eventually(lambda: got == [0], within=3, what="woken by the push")


async def test_batch_handlers_take_groups_round_robin(
    make_flow: Callable[..., Flow], ns: str
) -> None:
    flow = make_flow()
    batches: list[list[str | None]] = []

    @flow.on_queue(ns, groups=GroupLimits(concurrency=3), batch=10, batch_wait=0.2)
    async def handle(jobs: list[Job], msgs: list[Message[Job]]) -> None:
        batches.append([m.group for m in msgs])

    await flow.enqueue_many(ns, [{"n": n} for n in range(20)], group="A")
    await flow.enqueue_many(ns, [{"n": n} for n in range(2)], group="B")
    async with flow:
        await eventually(lambda: sum(map(len, batches)) == 22, what="all")
    assert all(batch.count("A") <= 3 for batch in batches)  # the limit holds in a batch
    assert batches[0].count("B") == 2


def test_options_are_checked(url: str, ns: str) -> None:
    flow = Flow(url, prefix=ns)

    async def handle(job: Job) -> None: ...

    with pytest.raises(ConfigError, match="GroupLimits: concurrency must be"):
        GroupLimits(concurrency=0)
    with pytest.raises(ConfigError, match="per group"):
        GroupLimits(rate_limit=RateLimit(1, per=1, key=lambda j: "x"))
    with pytest.raises(ConfigError, match="groups must be a GroupLimits"):
        flow.on_queue(ns, groups=2)(handle)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="at-least-once"):
        flow.on_queue(ns, groups=GroupLimits(), at_most_once=True)(handle)
    with pytest.raises(ConfigError, match="unknown option for a stream handler: groups"):
        flow.on_stream(ns, group="g", groups=GroupLimits())(handle)  # type: ignore[call-arg]


async def test_producer_arguments_are_checked(url: str, ns: str) -> None:
    async with Flow(url, prefix=ns) as flow:
        with pytest.raises(ConfigError, match="group= or key="):
            await flow.enqueue(ns, {}, group="a", key="b")
        with pytest.raises(ConfigError, match="notify="):
            await flow.enqueue(ns, {}, group="a", notify="c")
        with pytest.raises(ConfigError, match="group must be a string"):
            await flow.enqueue(ns, {}, group=3)  # type: ignore[arg-type]


# -- worker processes -------------------------------------------------------------------


def most_concurrent(records: list[Any], group_of: Callable[[int], str]) -> dict[str, int]:
    """The most handler calls of each group running at once (from start/end records)."""
    events = sorted(
        (r.t, 1 if r.event == "S" else -1, group_of(r.n)) for r in records if r.event in "SE"
    )
    running: dict[str, int] = {}
    most: dict[str, int] = {}
    for _, step, group in events:
        running[group] = running.get(group, 0) + step
        most[group] = max(most.get(group, 0), running[group])
    return most


async def test_fairness_and_concurrency_across_worker_processes(
    url: str, ns: str, r: aioredis.Redis, workers: Callable[..., Workers]
) -> None:
    """Three worker processes (one handler each, so that a group's two places are held by
    different processes), GroupLimits(concurrency=2): tenant A enqueues 5,000, then B 10;
    B's ten finish before A's 500th, and no group ever has more than 2 handlers running (a
    Redis counter incremented inside the handler says so)."""
    pool = workers(url, ns, kinds=["queue"], handler=dict(concurrency=1), groups="2,,",
                   sleep=(0.002, 0.006), flow=dict(block_timeout=0.5))  # fmt: skip
    name = f"{ns}:queue"
    async with Flow(url, prefix=ns) as producer:
        await producer.enqueue_many(name, [{"n": n} for n in range(5000)], group="A")
        await producer.enqueue_many(name, [{"n": 10_000 + n} for n in range(10)], group="B")
        for _ in range(3):
            pool.start()

        def ended() -> list[Any]:
            return sorted((rec for rec in pool.records() if rec.event == "E"), key=lambda x: x.t)

        await eventually(lambda: sum(rec.n >= 10_000 for rec in ended()) == 10, within=60,
                         what=f"B's ten\n{pool.logs()}")  # fmt: skip
        done = ended()
        last_b = max(i for i, rec in enumerate(done) if rec.n >= 10_000)
        assert sum(1 for rec in done[:last_b] if rec.n < 10_000) < 500
        await eventually(lambda: len(pool.ready) == 3, within=30, what="all three started")
        await eventually(lambda: sum(rec.n < 10_000 for rec in ended()) >= 300, within=60,
                         what="A, with all three workers")  # fmt: skip
        most = {g.decode(): int(c) for g, c in await r.zrange(f"{ns}:most", 0, -1, withscores=True)}
        assert most["A"] == 2 and most["B"] <= 2  # reached, never passed
        assert max(most_concurrent(pool.records(), lambda n: "AB"[n >= 10_000]).values()) <= 2
        assert len({rec.pid for rec in pool.records() if rec.n < 10_000}) >= 2
    assert set(pool.stop_all().values()) == {0}


async def test_group_rate_limits_hold_across_worker_processes(
    url: str, ns: str, workers: Callable[..., Workers]
) -> None:
    """GroupLimits(rate_limit=RateLimit(5, per=1)) with 3 worker processes: no group starts
    more than 5 handlers in any window (grants are decided in Redis, on its clock), and
    each group does reach 5 (the limit, not the workers, is what holds it back). A worker
    runs at most 4 handlers of 1 s, so a group reaches 5 in a window only with the grants
    of two processes."""
    pool = workers(url, ns, kinds=["queue"], handler=dict(concurrency=4), groups=",5,1",
                   sleep=(1.0, 1.0), flow=dict(block_timeout=0.5))  # fmt: skip
    name = f"{ns}:queue"
    for _ in range(3):
        pool.start()
    await eventually(lambda: len(pool.ready) == 3, within=30, what="all three started")
    async with Flow(url, prefix=ns) as producer:
        for g in range(2):
            jobs = [{"n": g * 1000 + n} for n in range(15)]
            await producer.enqueue_many(name, jobs, group=f"t{g}")
        await eventually(lambda: sum(rec.event == "E" for rec in pool.records()) == 30,
                         within=30, what=f"all\n{pool.logs()}")  # fmt: skip
    starts: dict[int, list[float]] = {}
    for rec in pool.records():
        if rec.event == "S":
            starts.setdefault(rec.n // 1000, []).append(rec.t)
    worst = 0
    for times in starts.values():
        times.sort()
        # a start follows its grant by a few ms: windows a little shorter than 1 s
        worst = max(worst, max(sum(1 for t in times if s <= t < s + 0.9) for s in times))
        assert times[-1] - times[0] >= 1.8  # 15 messages at 5 per second: 3 windows
    assert worst == 5, starts
    assert len({rec.pid for rec in pool.records()}) >= 2
    assert set(pool.stop_all().values()) == {0}


async def test_a_dead_workers_in_flight_count_is_given_back(
    url: str, ns: str, r: aioredis.Redis, workers: Callable[..., Workers]
) -> None:
    """A worker killed while it runs the two messages its group may run at once: once its
    lease expires, a second worker gets them (attempt 2) and the group's concurrency is
    free again (its lease tokens are gone): the rest of the group is handled too."""
    pool = workers(url, ns, kinds=["queue"], groups="2,,", handler=dict(concurrency=4),
                   flow=dict(lease=2, block_timeout=0.5))  # fmt: skip
    name = f"{ns}:queue"
    victim = pool.start()
    async with Flow(url, prefix=ns) as producer:
        await producer.enqueue_many(name, [{"n": n, "first": 60} for n in range(6)], group="A")

        def started(pid: int) -> set[int]:
            return {rec.n for rec in pool.records() if rec.event == "S" and rec.pid == pid}

        await eventually(lambda: len(started(victim.pid)) == 2, within=30,
                         what=f"two started\n{pool.logs()}")  # fmt: skip
        await anyio.sleep(0.3)
        assert len(started(victim.pid)) == 2  # the limit: the other four wait
        tokens = producer.keys(name).group_tokens("A")
        assert await r.scard(tokens) == 2
        victim.kill()
        rescuer = pool.start()
        ended: dict[int, int] = {}

        def refresh() -> int:
            ended.update(
                {rec.n: rec.attempt for rec in pool.records()
                 if rec.event == "E" and rec.pid == rescuer.pid}
            )  # fmt: skip
            return len(ended)

        # the four never started sleep 60 s on their first attempt too: wait for the two
        await eventually(lambda: refresh() >= 2, within=30, what=f"recovery\n{pool.logs()}")
        redelivered = {n for n, attempt in ended.items() if attempt == 2}
        assert redelivered == started(victim.pid)
        running = {n for n in started(rescuer.pid) if n not in ended}
        assert len(running) <= 2
    pool.cleanup()


async def test_groups_on_a_partitioned_queue_of_a_cluster(redisflow_cluster: Any, ns: str) -> None:
    """On a 3-master cluster, partitions=3: each group's messages stay on one partition
    (in order), the scripts never span two slots, and every group is served."""
    url = redisflow_cluster.seed_url
    flow = Flow(url, prefix=ns, block_timeout=0.5)
    got: list[tuple[str | None, int]] = []

    @flow.on_queue(ns, groups=GroupLimits(concurrency=2), partitions=3, concurrency=8)
    async def handle(job: Job, msg: Message[Job]) -> None:
        got.append((msg.group, job.n))

    for g in range(6):
        await flow.enqueue_many(ns, [{"n": n} for n in range(20)], group=f"t{g}")
    await flow.enqueue_many(ns, [{"n": n} for n in range(6)])  # the default groups
    parts = await flow.layouts.all_keys(ns)
    assert len(parts) == 3
    for g in range(6):
        sizes = [int(await flow.send("LLEN", flow.keys(part).group(f"t{g}"))) for part in parts]
        assert sorted(sizes) == [0, 0, 20]  # all of a group on one partition
    backlogs = await flow.groups(ns).backlogs()
    assert {(b.group, b.waiting) for b in backlogs} >= {(f"t{g}", 20) for g in range(6)}
    async with flow:
        await eventually(lambda: len(got) == 126, within=20, what="every group")
        assert await flow.groups(ns).backlogs() == []
    for g in range(6):
        assert [n for gg, n in got if gg == f"t{g}"] == list(range(20))
    assert sorted(n for gg, n in got if gg is None) == list(range(6))


async def test_pause_api_command_line_and_stats(url: str, ns: str) -> None:
    """``flow.pause(name, group=)`` and ``redisflow pause NAME --group G`` pause one fair
    group of a queue (the others flow), ``resume`` (one group, or the whole queue) serves it
    again; ``redisflow stats`` shows the groups with the longest backlogs."""
    flow = flows.make_flow(url, ns)
    got: list[str | None] = []

    @flow.on_queue("jobs", groups=GroupLimits())
    async def handle(job: Job, msg: Message[Job]) -> None:
        got.append(msg.group)

    async with flow:
        await flow.pause("jobs", group="acme")
        out = _cli("pause", "jobs", "--group", "beta", "--url", url, "--prefix", ns)
        assert out.returncode == 0 and "paused queue 'jobs' (group beta)" in out.stdout, out
        await flow.enqueue_many("jobs", [{"n": n} for n in range(30)], group="acme")
        await flow.enqueue_many("jobs", [{"n": n} for n in range(20)], group="beta")
        await flow.enqueue_many("jobs", [{"n": n} for n in range(3)], group="gamma")
        await eventually(lambda: got.count("gamma") == 3, what="the group not paused")
        await anyio.sleep(0.3)
        assert got == ["gamma"] * 3
        assert {(p.name, p.group) for p in await flow.paused()} == {
            ("jobs", "acme"),
            ("jobs", "beta"),
        }
        stats = orjson.loads(_cli("stats", "--json", "--url", url, "--prefix", ns).stdout)
        assert [row["waiting"] for row in stats["handlers"]] == [50]  # every group's
        assert [(b["group"], b["waiting"], b["paused"]) for b in stats["groups"]["jobs"]] == [
            ("acme", 30, True),
            ("beta", 20, True),
        ]
        text = _cli("stats", "--url", url, "--prefix", ns).stdout
        assert "groups of jobs: acme 30 (paused), beta 20 (paused)" in text, text
        keys = (await flow.memory("jobs"))["keys"]  # each group's list is measured
        lists = [keys[flow.keys("jobs").group(g)] for g in ("acme", "beta")]
        assert [(k["type"], k["length"]) for k in lists] == [("list", 30), ("list", 20)]
        assert keys[flow.keys("jobs").groups[5]]["length"] == 2  # the paused groups
        assert stats["handlers"][0]["memory"] >= sum(k["bytes"] for k in lists)
        out = _cli("resume", "jobs", "--group", "beta", "--url", url, "--prefix", ns)
        assert out.returncode == 0 and "resumed" in out.stdout, out
        await eventually(lambda: got.count("beta") == 20, what="beta after resume")
        assert "acme" not in got
        assert await flow.resume("jobs") is True  # the whole queue: every group
        await eventually(lambda: got.count("acme") == 30, what="acme after resume")
        assert await flow.paused() == []
    other = flows.make_flow(url, ns)

    @other.on_queue("plain")
    async def plain(job: Job) -> None: ...

    with pytest.raises(ConfigError, match="group names a stream's consumer group or a fair"):
        await other.pause("plain", group="x")
    await other.aclose()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "redisflow", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


async def test_the_readme_example(url: str, ns: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The Fair groups section of the README, run as written (on the test server): the
    handler, the producer, then the pause snippet inside a coroutine."""
    section = (ROOT / "README.md").read_text().split("## Fair groups", 1)[1]
    blocks = section.split("```python\n")
    code, snippet = (block.split("```", 1)[0] for block in blocks[1:3])
    name = f"{ns}:jobs"
    code = code.replace("Flow()", f"Flow({url!r}, prefix={ns!r})").replace('"jobs"', repr(name))
    scope: dict[str, Any] = {}
    exec(code, scope)
    flow: Flow = scope["flow"]
    body = "".join(f"    {line}\n" for line in snippet.replace('"jobs"', repr(name)).splitlines())
    exec(f"async def pause_snippet():\n{body}    return await flow.groups({name!r}).paused()\n",
         scope)  # fmt: skip
    async with flow:
        await scope["submit"]("acme", {"task": "a"})
        await scope["submit"]("beta", {"task": "b"})
        await flow.wait_idle()
        assert await scope["pause_snippet"]() == []  # paused, then resumed
    out = capsys.readouterr().out
    assert "job of tenant acme: {'task': 'a'}" in out
    assert "job of tenant beta: {'task': 'b'}" in out
