"""A schedule across worker processes: three ``redisflow run`` processes declare
``@flow.every(0.3)``; one is killed and restarted, then all are killed at once and one comes
back. Each tick runs once, and every tick without a run is one the ``missed`` policy
dropped, as the schedule's state counts. Figures are printed at the end (``make chaos``)."""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Callable

import anyio
import pytest

from redisflow import Client, FlowConfig
from tests.support.flows import eventually
from tests.support.servers import RedisProc
from tests.support.workers import Workers, count

pytestmark = [pytest.mark.anyio, pytest.mark.chaos]

PERIOD = 0.3


async def test_every_tick_once_across_processes_kills_and_an_outage(
    private_redis: RedisProc,
    workers: Callable[..., Workers],
    figures: Callable[..., None],
    ns: str,
) -> None:
    """About 6 s with three workers (one killed with SIGKILL after 2 s, started again 1.5 s
    later): every tick runs, once. Then every worker is killed for a while and one starts:
    the ticks of the outage are dropped (``missed="skip"``) but the latest, and counted.
    Over the whole run, runs + missed ticks = the ticks from the first to the last, and a
    tick run twice is one whose first run was on a killed worker (at-least-once)."""
    url = private_redis.url
    pool = workers(
        url,
        ns,
        kinds=[],
        every=(PERIOD, "skip"),
        flow=dict(lease=2, block_timeout=1),
        sleep=(0.0, 0.05),
    )
    for _ in range(3):
        pool.start()
    await eventually(lambda: len(pool.ready) == 3, within=60, what="3 workers ready")
    client = Client(FlowConfig.build(url, prefix=ns))
    state = client.keys(f"{ns}:tick").schedule

    def runs() -> Counter[int]:
        return count(pool.records(), "E", "schedule")

    try:
        await eventually(lambda: len(runs()) >= 3, within=30, what="ticks running")
        started = time.monotonic()
        await anyio.sleep(2)
        killed = [pool.alive[0]]
        killed[0].kill()
        await anyio.sleep(1.5)
        pool.start()
        await anyio.sleep(max(0.0, 6 - (time.monotonic() - started)))
        phase1 = runs()
        missed_phase1 = int(await client.send("HGET", state, "missed") or 0)
        # -- every worker killed, then one started
        down_at = time.time()
        for worker in pool.alive:
            killed.append(worker)
            worker.kill()
        await anyio.sleep(2)
        pool.start()
        await eventually(lambda: len(pool.ready) == 1, within=60, what="a worker back")
        up_at = time.time()
        await eventually(
            lambda: max(runs()) > up_at * 1000 + 1000, within=30, what="ticks after the outage"
        )
        await anyio.sleep(0.5)  # the held runs finish, the killed ones are recovered (lease 2 s)

        async def settled() -> bool:
            fired = int(await client.send("HGET", state, "fired"))
            return (
                fired == len(runs())
                and await client.send("LLEN", client.keys(f"{ns}:tick").ticks) == 0
            )

        await eventually(settled, within=30, what="every run claimed was run")
        fields = await client.send("HGETALL", state)
    finally:
        await client.aclose()
    codes = pool.stop_all()
    assert {codes[w.pid] for w in pool.started if w not in killed} == {0}, pool.logs()
    records = pool.records()
    done = count(records, "E", "schedule")
    info = {k.decode(): v.decode() for k, v in zip(fields[::2], fields[1::2], strict=True)}
    first, last = min(done), int(info["last"])
    period_ms = round(PERIOD * 1000)
    grid = set(range(first, last + 1, period_ms))
    assert set(done) <= grid, "every run is a tick of the grid"
    dead_pids = {w.pid for w in killed}
    doubled = [n for n, c in done.items() if c > 1]
    on_killed = {r.n for r in records if r.kind == "schedule" and r.pid in dead_pids}
    assert not [n for n in doubled if n not in on_killed], "a tick run twice, no kill involved"
    fired, missed = int(info["fired"]), int(info["missed"])
    assert fired == len(done), "each tick claimed is run"
    assert fired + missed == len(grid), (fired, missed, len(grid))
    outage = [n for n in done if down_at * 1000 + period_ms < n < up_at * 1000 - period_ms]
    assert len(outage) <= 1, "skip: of the outage's ticks, the latest alone runs"
    missed_outage = missed - missed_phase1
    assert missed_outage >= (up_at - down_at) / PERIOD - 3, "the outage's ticks were counted"
    phase1_ticks = sorted(phase1)
    gaps = [b - a for a, b in itertools.pairwise(phase1_ticks)]
    figures(
        ticks=len(grid),
        runs=fired,
        duplicated=len(doubled),
        missed_with_workers_alive=missed_phase1,
        missed_in_outage=missed_outage,
        outage_s=round(up_at - down_at, 1),
        longest_gap_with_a_worker_killed_ms=max(gaps),
    )
