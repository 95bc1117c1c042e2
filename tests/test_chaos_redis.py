"""Fault injection on Redis itself, with real ``redisflow run`` worker processes: Redis
crashes and restarts (AOF, ``appendfsync always``) in the middle of produce + consume,
Redis is down when a worker starts, Redis never comes back.

Run with ``make chaos`` (``pytest -m chaos``); figures are printed at the end.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
import redis.asyncio as aioredis

from redisflow import Flow
from tests.support.flows import eventually, until
from tests.support.kinds import Kind
from tests.support.servers import RedisProc, free_port, kill_redis, start_redis, stop_redis
from tests.support.workers import KINDS, Record, Workers, count, duplicates

pytestmark = [pytest.mark.anyio, pytest.mark.chaos]

AOF = ["--appendonly", "yes", "--appendfsync", "always"]
RECONNECTED = re.compile(r"reconnected after (\d+\.\d+)s")


class Outage:
    """One stop of Redis: when it went down and when it answered again."""

    def __init__(self, how: str) -> None:
        self.how = how
        self.down = 0.0
        self.up = 0.0

    def app_gap(self, records: list[Record], kind: str) -> float:
        """How long the app handled nothing of ``kind`` around this outage: from its last
        handler end before Redis went down to its first after Redis was back."""
        ends = sorted(r.t for r in records if r.kind == kind and r.event == "E")
        before = max((t for t in ends if t <= self.down), default=self.down)
        after = min((t for t in ends if t >= self.up), default=float("inf"))
        return after - before


async def restart(proc: RedisProc, outage: Outage, down_for: float) -> RedisProc:
    """Crash (``kill``) or stop (``term``) Redis, stay down, start it on the same data."""
    outage.down = time.monotonic()
    stop = kill_redis if outage.how == "kill" else lambda p: stop_redis(p, remove_dir=False)
    await anyio.to_thread.run_sync(stop, proc)
    await anyio.sleep(down_for)
    assert proc.data_dir is not None
    new = await anyio.to_thread.run_sync(
        lambda: start_redis(AOF, port=proc.port, data_dir=proc.data_dir)
    )
    outage.up = time.monotonic()
    return new


class Producers:
    """One producer loop per kind, sending one message at a time through ``Flow``'s API and
    recording which sends were acknowledged (the call returned) and which failed."""

    def __init__(self, url: str, ns: str) -> None:
        self.flow = Flow(url, prefix=ns)
        self.ns = ns
        self.acked: dict[str, set[int]] = {kind: set() for kind in KINDS}
        self.failed: dict[str, set[int]] = {kind: set() for kind in KINDS}
        self.slowest = 0.0
        self.running = True

    async def run(self, kind: str) -> None:
        n = 0
        while self.running:
            began = time.monotonic()
            try:
                with anyio.fail_after(30):
                    await Kind(kind).produce(self.flow, f"{self.ns}:{kind}", {"n": n})
            except Exception:  # unacknowledged: it may or may not have been written
                self.failed[kind].add(n)
                await anyio.sleep(0.1)
            else:
                self.acked[kind].add(n)
            self.slowest = max(self.slowest, time.monotonic() - began)
            n += 1
            await anyio.sleep(0.01)


async def test_redis_restarts_lose_nothing_acknowledged(
    tmp_path: Path,
    workers: Callable[..., Workers],
    figures: Callable[..., None],
    ns: str,
) -> None:
    """Redis is killed (SIGKILL) and later stopped (SIGTERM), each time in the middle of
    produce + consume, and restarted on its AOF: the worker processes reconnect by
    themselves, and every message whose send was acknowledged is handled."""
    proc = start_redis(AOF, data_dir=tmp_path / "redis")
    pool = workers(
        proc.url,
        ns,
        flow=dict(lease=3, claim_idle=3, block_timeout=0.5, give_up_after=60),
        handler=dict(concurrency=8),
        sleep=(0.0, 0.005),
    )
    producers = Producers(proc.url, ns)
    outages = [Outage("kill"), Outage("term")]
    try:
        pool.start()
        pool.start()
        async with anyio.create_task_group() as tg:
            for kind in KINDS:
                tg.start_soon(producers.run, kind)
            await eventually(
                lambda: len(pool.working) == 2, within=30, what=f"two workers\n{pool.logs()}"
            )
            for outage in outages:
                await anyio.sleep(2.0)
                proc = await restart(proc, outage, down_for=2.0)
                await anyio.sleep(3.0)
            producers.running = False
        assert all(w.alive for w in pool.started), pool.logs()

        def missing() -> dict[str, set[int]]:
            records = pool.records()
            return {k: producers.acked[k] - set(count(records, "E", k)) for k in KINDS}

        await until(lambda: not any(missing().values()), within=30)
        stuck = {k: len(v) for k, v in missing().items()}
        codes = pool.stop_all()
        if any(stuck.values()):
            # Stranded in a batch whose fetch reply was lost (see test_lost_replies.py): a
            # stopping worker hands them back; a new worker must then handle them.
            pool.start()
            await until(lambda: not any(missing().values()), within=30)
            codes |= pool.stop_all()
        lost = {k: len(v) for k, v in missing().items()}
        records = pool.records()
        logs = pool.logs()
        r = aioredis.Redis.from_url(proc.url)
        try:
            held = {k: await Kind(k).held(r, producers.flow, f"{ns}:{k}") for k in KINDS}
        finally:
            await r.aclose()
        reconnects = [float(s) for s in RECONNECTED.findall(logs)]
        gaps = {
            f"{o.how}:{kind}": round(o.app_gap(records, kind), 2) for o in outages for kind in KINDS
        }
        figures(
            messages={k: len(producers.acked[k]) + len(producers.failed[k]) for k in KINDS},
            restarts=[o.how for o in outages],
            redis_down_seconds=[round(o.up - o.down, 2) for o in outages],
            app_outage_seconds=gaps,
            worker_reconnect_seconds_max=max(reconnects, default=None),
            producer_call_seconds_max=round(producers.slowest, 2),
            unacknowledged={k: len(producers.failed[k]) for k in KINDS},
            unacknowledged_but_handled={
                k: len(producers.failed[k] & set(count(records, "E", k))) for k in KINDS
            },
            stuck_until_worker_restart=stuck,
            lost=lost,
            duplicated={k: duplicates(count(records, "E", k)) for k in KINDS},
        )
        assert lost == {k: 0 for k in KINDS}, lost
        assert held == {k: 0 for k in KINDS}, held
        assert set(codes.values()) == {0}, logs
        assert logs.count("lost Redis") >= 2 * len(KINDS), logs  # every consumer saw each
        for gap in gaps.values():
            assert gap < 30, gaps  # "within seconds", generously for a loaded machine
    finally:
        await producers.flow.aclose()
        stop_redis(proc, remove_dir=True)


# -- Redis down at start, Redis gone for good -------------------------------------------


async def test_worker_started_before_redis_waits_then_consumes(
    workers: Callable[..., Workers], figures: Callable[..., None], ns: str, tmp_path: Path
) -> None:
    """A worker started while its Redis is down says so once, keeps trying, and consumes as
    soon as Redis is up; it then stops cleanly on SIGTERM."""
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    pool = workers(url, ns, kinds=["queue"], flow=dict(block_timeout=0.5))
    worker = pool.start("--give-up-after", "60")
    proc: RedisProc | None = None
    try:
        waiting = f"start: waiting for Redis at {url} ("
        await eventually(lambda: waiting in worker.output(), within=20, what="a waiting line")
        await anyio.sleep(2.0)  # several reconnect attempts
        assert worker.alive, worker.output()
        proc = await anyio.to_thread.run_sync(lambda: start_redis(port=port))
        up = time.monotonic()
        producer = Flow(url, prefix=ns)
        try:
            await producer.enqueue(f"{ns}:queue", {"n": 1})
        finally:
            await producer.aclose()
        await eventually(lambda: count(pool.records(), "E", "queue")[1] == 1, within=30)
        first = min(r.t for r in pool.records())
        worker.terminate()
        code = await anyio.to_thread.run_sync(lambda: worker.wait(30))
        out = worker.output()
        assert code == 0, out
        assert out.count(waiting) == 1, out  # once, not once per attempt
        assert "start: waiting for Redis at" in out and "reconnected after" in out, out
        figures(started_after_redis_up_seconds=round(first - up, 2), exit_code=code)
    finally:
        if proc is not None:
            stop_redis(proc)


async def test_worker_exits_nonzero_when_redis_never_comes_back(
    workers: Callable[..., Workers], figures: Callable[..., None], ns: str
) -> None:
    """With ``--give-up-after 3``, a worker whose Redis goes away for good logs that it
    gives up and exits 1 about 3 s later, instead of waiting forever: after giving up, one
    try of at most 1 s to hand its messages back, and no final report (each took up to 5 s
    and 2 s of retries before: exit after 9.8-10.2 s)."""
    proc = start_redis()
    try:
        pool = workers(proc.url, ns, flow=dict(block_timeout=0.5))
        worker = pool.start("--give-up-after", "3")
        producer = Flow(proc.url, prefix=ns)
        try:
            for kind in KINDS:
                await Kind(kind).produce(producer, f"{ns}:{kind}", {"n": 1})
        finally:
            await producer.aclose()
        await eventually(
            lambda: all(count(pool.records(), "E", k)[1] for k in KINDS),
            within=30,
            what=f"a running worker\n{pool.logs()}",
        )
    finally:
        stop_redis(proc)
    gone = time.monotonic()
    code = await anyio.to_thread.run_sync(lambda: worker.wait(60))
    waited = time.monotonic() - gone
    out = worker.output()
    assert code == 1, out
    assert "giving up" in out and "give_up_after=3" in out, out
    assert "Traceback" not in out, out  # one line per consumer that gave up, no traceback
    assert 3 - 0.5 <= waited < 3 + 4, f"gave up after {waited:.1f}s"
    figures(exit_code=code, exited_after_seconds=round(waited, 1), give_up_after=3)
