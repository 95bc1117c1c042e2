"""A full Redis (``maxmemory`` + ``noeviction``): a worker starts on it and drains it (draining
frees memory), its bookkeeping (counters, leases, sources, verdicts) is best effort, and the
outage is logged once, not every tick. A Redis that may evict keys is pointed out at start."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import anyio
import pytest
import redis
from redis.exceptions import ResponseError

from redisflow import Reject
from tests.support.flows import eventually, make_flow
from tests.support.servers import RedisProc, start_redis, stop_redis

pytestmark = pytest.mark.anyio

N = 20_000
PAD = "x" * 100


@pytest.fixture
def full() -> Iterator[tuple[RedisProc, redis.Redis]]:
    """A private server whose ``maxmemory`` is just below what it holds: N queued messages
    and a stream of N entries. Every write that may grow memory is refused (OOM)."""
    server = start_redis(["--maxmemory-policy", "noeviction"])
    client = redis.Redis(port=server.port)
    try:
        pipe = client.pipeline(transaction=False)
        for n in range(N):
            item = json.dumps({"n": n, "pad": PAD})
            pipe.rpush("jobs", item)
            pipe.xadd("events", {"data": item})
        pipe.execute()
        client.xgroup_create("events", "g", id="0")
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory", used - 50_000)
        with pytest.raises(ResponseError, match="maxmemory"):
            client.set("probe", "refused")
        yield server, client
    finally:
        client.close()
        stop_redis(server)


async def test_a_worker_starts_on_a_full_redis_and_drains_it(
    full: tuple[RedisProc, redis.Redis], ns: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Every queued message and stream entry is handled (rejected ones too, dead-lettered
    once draining made room); OOM is logged a handful of times, not per tick or message."""
    server, client = full
    flow = make_flow(server.url, ns, tick=0.1, report_interval=0.2)
    handled = {"jobs": 0, "events": 0}
    gate = anyio.Event()  # nothing is acked (nothing freed) until the lease is checked

    @flow.on_queue("jobs", concurrency=64)
    async def job(payload: dict[str, object]) -> None:
        await gate.wait()
        handled["jobs"] += 1
        if payload["n"] == 0:
            raise Reject("the first one is refused")

    @flow.on_stream("events", group="g", concurrency=64)
    async def event(payload: dict[str, object]) -> None:
        await gate.wait()
        handled["events"] += 1

    caplog.set_level(logging.WARNING, "redisflow")
    async with flow:
        leases = flow.keys("jobs").leases
        await eventually(lambda: client.zcard(leases) == 1, what="a lease on a full Redis")
        with pytest.raises(ResponseError, match="maxmemory"):
            client.set("probe", "still full")
        gate.set()
        await eventually(
            lambda: handled == {"jobs": N, "events": N}, within=60, what=f"drained: {handled}"
        )
        await eventually(lambda: flow.dlq("jobs").count(), within=10, what="dead-lettered")
    assert client.llen("jobs") == 0
    assert client.xpending("events", "g")["pending"] == 0
    oom = [r.getMessage() for r in caplog.records if "OOM" in r.getMessage()]
    assert 1 <= len(oom) <= 12, oom  # once per outage and loop, not every 0.1 s


async def test_a_redis_that_evicts_is_pointed_out_at_start(
    ns: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``maxmemory-policy allkeys-lru``: one warning at start; a user that may not run
    CONFIG GET gets none (noted at DEBUG) and starts all the same."""
    server = start_redis(["--maxmemory-policy", "allkeys-lru"])
    client = redis.Redis(port=server.port)
    try:
        flow = make_flow(server.url, ns)

        @flow.on_queue("jobs")
        async def job(n: int) -> None:
            pass

        caplog.set_level(logging.DEBUG, "redisflow")
        async with flow:
            pass
        warned = [r for r in caplog.records if "maxmemory-policy allkeys-lru" in r.getMessage()]
        assert len(warned) == 1 and warned[0].levelno == logging.WARNING
        caplog.clear()
        client.execute_command(
            "ACL", "SETUSER", "app", "on", ">pw", "~*", "&*", "+@all", "-@dangerous"
        )
        app = make_flow(server.url.replace("redis://", "redis://app:pw@"), ns)
        app.on_queue("jobs")(job)
        async with app:
            pass
        notes = [r for r in caplog.records if "maxmemory-policy" in r.getMessage()]
        assert [r.levelno for r in notes] == [logging.DEBUG], [r.getMessage() for r in notes]
    finally:
        client.close()
        stop_redis(server)
