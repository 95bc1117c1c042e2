"""Stream reclaims and reconnects deliver nothing twice to the same worker (issue 23, item
20): a reconnect acks again what it acked just before (a failover may have lost those acks
with the primary), a reclaim sends the acks still waiting first, and a worker never takes
back, to deliver again, an entry it is still handling. Real Redis, private servers."""

from __future__ import annotations

from collections import Counter

import anyio
import pytest
import redis.asyncio as aioredis

from redisflow.consumers import acks
from tests.support.flows import eventually, make_flow

pytestmark = pytest.mark.anyio


async def _kill_fetch_links(r: aioredis.Redis, stream: str) -> int:
    """CLIENT KILL the fetch links reading ``stream`` (by their names)."""
    killed = 0
    for client in await r.client_list():
        if client.get("name", "").endswith(f"fetch:{stream}"):
            await r.execute_command("CLIENT", "KILL", "ID", client["id"])
            killed += 1
    return killed


async def test_a_reconnect_acks_again_what_a_failover_may_have_lost(
    r: aioredis.Redis, url: str, ns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Entries handled and acked, then pending again as a promoted replica that missed the
    acks would have them (``XCLAIM ... FORCE``), then the fetch link is lost: the reconnect
    acks them again before reading its own pending entries, so none is handled twice."""
    monkeypatch.setattr(acks, "RESEND", 30.0)  # the 1 s of production, robust to a slow CI
    s = f"{ns}:events"
    flow = make_flow(url, ns, name="w1", block_timeout=5)
    handled: Counter[int] = Counter()

    @flow.on_stream(s, group="g")
    async def handle(n: int) -> None:
        handled[n] += 1

    async with flow:
        ids = [await flow.append(s, n) for n in range(20)]
        await eventually(lambda: len(handled) == 20, what="all handled")
        await eventually(lambda: _pending(r, s, 0), what="all acked")
        await r.xclaim(s, "g", "w1", 0, ids, force=True, justid=True)
        assert await _pending(r, s, 20), "the acks 'lost' with the primary"
        assert await _kill_fetch_links(r, s) == 1
        await eventually(lambda: _pending(r, s, 0), what="acked again")
        await anyio.sleep(0.5)
    assert handled == Counter(range(20)), "handled twice by the same worker"


async def test_a_consumer_never_reclaims_its_own_live_entries(
    r: aioredis.Redis, url: str, ns: str
) -> None:
    """While its handlers run, the entries they hold are made to look idle for a long time
    (as after a failover that kept the worker from touching them): the worker's own
    reclaim takes them and must not deliver them again."""
    s = f"{ns}:events"
    flow = make_flow(url, ns, name="w1", claim_idle=2, tick=0.1)
    started: Counter[int] = Counter()
    release = anyio.Event()

    @flow.on_stream(s, group="g")
    async def handle(n: int) -> None:
        started[n] += 1
        await release.wait()

    async with flow:
        ids = [await flow.append(s, n) for n in range(3)]
        await eventually(lambda: len(started) == 3, what="all three running")
        with anyio.move_on_after(3):  # three reclaims (claim_interval: 1 s)
            while True:
                await r.xclaim(s, "g", "w1", 0, ids, idle=10**8, justid=True)
                await anyio.sleep(0.01)
        release.set()
        await flow.wait_idle()
    assert started == Counter(range(3)), "delivered again while its first delivery ran"


async def _pending(r: aioredis.Redis, stream: str, n: int) -> bool:
    summary = await r.xpending(stream, "g")
    return bool(summary["pending"] == n)
