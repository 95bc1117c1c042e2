"""Fault injection on batch handlers and fair groups: worker processes killed (``kill -9``)
at random moments while they drain a backlog, as ``test_chaos_workers.py`` does for single
messages. Nothing is lost, a live worker never handles a message twice, and a queue of
fair groups ends with no lease token, ring entry or held group left behind.

Run with ``make chaos`` (``pytest -m chaos``); figures are printed at the end.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable

import anyio
import pytest
import redis.asyncio as aioredis

from redisflow import Flow
from tests.support.flows import eventually
from tests.support.kinds import Kind
from tests.support.servers import RedisProc
from tests.support.workers import Workers, count, duplicates

pytestmark = [pytest.mark.anyio, pytest.mark.chaos]

RECOVERED = re.compile(r"died; (\d+) messages delivered again|reclaimed (\d+) idle entries")

BATCH = {"batch": 50, "batch_wait": 0.05, "concurrency": 2}
CASES = {
    # name: (kind, handler options, groups, groups per backlog, handler time range): a batch
    # handler sleeps once per batch, long enough that a kill finds one running
    "queue-batch": ("queue", BATCH, "", 0, (0.02, 0.05)),
    "stream-batch": ("stream", BATCH, "", 0, (0.02, 0.05)),
    "queue-groups": ("queue", {"concurrency": 4}, "2,,", 30, (0.005, 0.02)),
    "priority-groups-batch": ("priority", {**BATCH, "batch": 20}, "3,,", 30, (0.01, 0.03)),
}


async def produce(
    producer: Flow, kind: str, name: str, items: list[dict[str, int]], spread: int
) -> None:
    """Send ``items``, spread round robin over ``spread`` groups (0: no group)."""
    if not spread:
        await Kind(kind).produce_many(producer, name, items)
        return
    for g in range(spread):
        part = items[g::spread]
        if kind == "priority":
            await producer.enqueue_priority_many(name, part, group=f"t{g}")
        else:
            await producer.enqueue_many(name, part, group=f"t{g}")


async def leftovers(r: aioredis.Redis, producer: Flow, name: str) -> list[bytes]:
    """The fair-group bookkeeping still in Redis (the turn counter may stay)."""
    base = producer.keys(name).base
    found = [k async for k in r.scan_iter(match=f"{base}:g*")]
    return sorted(k for k in found if not k.endswith(b":gturn"))


@pytest.mark.parametrize("case", list(CASES))
async def test_killed_workers_lose_nothing(
    case: str,
    private_redis: RedisProc,
    workers: Callable[..., Workers],
    figures: Callable[..., None],
    ns: str,
) -> None:
    """Three workers drain 6,000 messages (handlers of a few ms) while one of them is killed
    with SIGKILL at random moments, four times, and replaced: every message is handled, no
    live worker handles one twice, and Redis ends with nothing held (for fair groups: no
    group key, lease token, ring or held entry left)."""
    kind, handler, groups, spread, sleep = CASES[case]
    total, kills_wanted = 6000, 4
    url = private_redis.url
    pool = workers(url, ns, kinds=[kind], flow=dict(lease=2, claim_idle=2, block_timeout=0.5),
                   handler=handler, groups=groups, sleep=sleep)  # fmt: skip
    for _ in range(3):
        pool.start()
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    producer = Flow(url, prefix=ns)
    r = aioredis.Redis.from_url(url)
    name = f"{ns}:{kind}"
    handled: set[int] = set()
    kills = 0

    def refresh() -> int:
        handled.update(count(pool.records(), "E", kind))
        return len(handled)

    async def produce_paced() -> None:  # 20 chunks over ~6 s: the kills land while it works
        for start in range(0, total, 300):
            await produce(producer, kind, name, [{"n": n} for n in range(start, start + 300)],
                          spread)  # fmt: skip
            await anyio.sleep(0.3)

    async def all_done() -> bool:
        if refresh() != total or await Kind(kind).held(r, producer, name):
            return False
        return not spread or not await leftovers(r, producer, name)

    began = time.monotonic()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(produce_paced)
            while kills < kills_wanted and refresh() < total * 0.9:
                await anyio.sleep(rng.uniform(0.4, 1.0))
                # Kill a worker caught inside a handler (the workers drain faster than the
                # producer sends, so a random moment often finds all of them waiting).
                for _ in range(50):
                    if pool.busy:
                        break
                    await anyio.sleep(0.02)
                victims = pool.busy or pool.working
                if not victims:
                    continue
                rng.choice(victims).kill()
                kills += 1
                pool.start()
        await eventually(all_done, within=120,
                         what=f"every message handled, nothing held\n{pool.logs()}")  # fmt: skip
        elapsed = time.monotonic() - began
        codes = pool.stop_all()
        records = pool.records()
        ends = count(records, "E", kind)
        killed = {w.pid for w in pool.started if w.killed}
        by_live = count((rec for rec in records if rec.pid not in killed), "E", kind)
        taken_back = sum(int(a or b) for a, b in RECOVERED.findall(pool.logs()))
        figures(case=case, messages=total, kills=kills, seed=seed, lost=total - len(ends),
                duplicated=duplicates(ends), redelivered=taken_back,
                seconds=round(elapsed, 1))  # fmt: skip
        assert len(ends) == total
        assert kills >= 3, "the backlog was drained before the kills: the test proved nothing"
        assert taken_back > 0, "no kill caught a worker holding messages"
        twice = {n for n, c in by_live.items() if c > 1}
        assert not twice, f"live workers handled these twice: {sorted(twice)[:10]}"
        assert {code for pid, code in codes.items() if pid not in killed} == {0}, pool.logs()
        assert await producer.dlq(name).list() == []
        if spread:
            assert await leftovers(r, producer, name) == []
    finally:
        await producer.aclose()
        await r.aclose()
