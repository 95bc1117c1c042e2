"""Pause and resume across worker processes: two ``redisflow run`` processes drain a queue
and a stream, a producer-only client pauses both, and a third worker starts while they are
paused. Figures are printed at the end (``make chaos``)."""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio
import pytest

from redisflow import Client, FlowConfig
from tests.support.flows import eventually
from tests.support.kinds import Kind
from tests.support.servers import RedisProc
from tests.support.workers import Workers, count, duplicates

pytestmark = [pytest.mark.anyio, pytest.mark.chaos]

KINDS = ("queue", "stream")
#: How long every worker has to take a pause (the promise is a second; a loaded machine).
SETTLE = 2.0


async def test_pause_stops_every_worker_and_resume_loses_nothing(
    private_redis: RedisProc,
    workers: Callable[..., Workers],
    figures: Callable[..., None],
    ns: str,
) -> None:
    """Two workers drain 3,000 messages per kind; both sources are paused mid-drain from
    another process: every worker stops fetching (the last handler start is measured),
    what it held is finished, 500 messages per kind sent meanwhile wait, a worker started
    while paused fetches nothing; after resume every message is handled exactly once."""
    url = private_redis.url
    first, later = 3000, 500
    pool = workers(
        url,
        ns,
        kinds=KINDS,
        flow=dict(prefetch=50, block_timeout=5),
        handler=dict(concurrency=8),
        sleep=(0.005, 0.02),
    )
    for _ in range(2):
        pool.start()
    await eventually(lambda: len(pool.ready) == 2, within=60, what="2 workers ready")
    client = Client(FlowConfig.build(url, prefix=ns))
    try:
        for kind in KINDS:
            items = [{"n": n} for n in range(first)]
            await Kind(kind).produce_many(client, f"{ns}:{kind}", items)

        def handled(kind: str) -> int:
            return len(count(pool.records(), "E", kind))

        await eventually(lambda: all(handled(k) >= 300 for k in KINDS), within=60, what="draining")
        paused_at = time.monotonic()
        for kind in KINDS:
            await client.pause(f"{ns}:{kind}")
        await anyio.sleep(SETTLE)
        at_settle = {k: handled(k) for k in KINDS}
        assert all(n < first for n in at_settle.values()), f"paused mid-drain: {at_settle}"
        starts = [r.t for r in pool.records() if r.event == "S"]
        last_start = max(starts) - paused_at
        assert last_start < SETTLE, "every worker stopped starting handlers"
        for kind in KINDS:
            items = [{"n": n} for n in range(first, first + later)]
            await Kind(kind).produce_many(client, f"{ns}:{kind}", items)
        third = pool.start()
        await eventually(lambda: len(pool.ready) == 3, within=60, what="the third worker")
        await anyio.sleep(SETTLE)
        records = pool.records()
        assert {k: len(count(records, "E", k)) for k in KINDS} == at_settle, (
            "nothing handled while paused"
        )
        assert not [r for r in records if r.pid == third.pid], "the third worker fetched"
        assert len([r for r in records if r.event == "S"]) == len(starts)
        resumed_at = time.monotonic()
        for kind in KINDS:
            assert await client.resume(f"{ns}:{kind}")
        await eventually(
            lambda: all(handled(k) == first + later for k in KINDS), within=60, what="all"
        )
        drained_in = time.monotonic() - resumed_at
        records = pool.records()
        by_third = len([r for r in records if r.pid == third.pid and r.event == "E"])
    finally:
        await client.aclose()
    codes = pool.stop_all()
    assert set(codes.values()) == {0}, pool.logs()
    for kind in KINDS:
        done = count(records, "E", kind)
        assert set(done) == set(range(first + later)), f"{kind}: lost"
        assert duplicates(done) == 0, f"{kind}: duplicated"
    assert by_third > 0, "the third worker took part after resume"
    figures(
        per_kind=first + later,
        handled_before_pause_settled=at_settle,
        last_handler_start_after_pause_s=round(last_start, 2),
        handled_while_paused=0,
        third_worker_records_while_paused=0,
        drained_after_resume_s=round(drained_in, 2),
        handled_by_third_after_resume=by_third,
        lost=0,
        duplicated=0,
    )
