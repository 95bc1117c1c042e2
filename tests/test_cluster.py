"""Redis Cluster readiness: every command, script and transaction of redisflow touches the
keys of one hash slot.

A redis-server in cluster mode that owns all 16,384 slots serves clients like a standalone
server, but enforces Redis Cluster's rule: a command, a Lua script (its KEYS) or a
MULTI/EXEC whose keys hash to different slots fails with CROSSSLOT. The whole feature
surface runs against one here: the four handler kinds, retries and delays, dead letters,
dedup, idempotency, rate limits, status tracking, stream indexes, durable publishes and
notifications, and the reads that go with them.
"""

from __future__ import annotations

import logging
import random
import socket
import time
from collections.abc import Callable, Iterator

import anyio
import pytest
import redis
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from redisflow import Message, RateLimit, Reject
from tests.support.flows import eventually, make_flow
from tests.support.kinds import Kind
from tests.support.servers import start_redis, stop_redis
from tests.support.workers import KINDS, Workers, count

pytestmark = pytest.mark.anyio


def cluster_port() -> int:
    """A free port whose cluster bus port (+10,000) is free too (so at most 55,535)."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20_000, 30_000)
        try:
            for p in (port, port + 10_000):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


@pytest.fixture(scope="module")
def cluster_url() -> Iterator[str]:
    """A one-node Redis Cluster: cluster mode, every slot assigned to this node."""
    port = cluster_port()
    proc = start_redis(
        ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"], port=port
    )
    try:
        client = redis.Redis(host=proc.host, port=proc.port)
        try:
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
            deadline = time.monotonic() + 10
            while b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                assert time.monotonic() < deadline, "the one-node cluster did not come up"
                time.sleep(0.05)
        finally:
            client.close()
        yield proc.url
    finally:
        stop_redis(proc)


async def test_the_node_rejects_keys_of_different_slots(cluster_url: str) -> None:
    """The check the other test relies on: a script on two keys of different slots fails,
    the same keys under one hash tag pass."""
    r = aioredis.Redis.from_url(cluster_url)
    try:
        with pytest.raises(ResponseError, match="same slot"):
            await r.eval("return 1", 2, "a", "b")
        assert await r.eval("return 1", 2, "{t}:a", "{t}:b") == 1
        async with r.pipeline(transaction=True) as pipe:
            pipe.set("a", 1).set("b", 2)
            with pytest.raises(ResponseError, match="same slot"):
                await pipe.execute()
    finally:
        await r.aclose()


async def test_every_feature_keeps_each_step_in_one_slot(
    cluster_url: str, ns: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    q, pq, s, ch = f"{ns}:q", f"{ns}:pq", f"{ns}:s", f"{ns}:ch"
    flow = make_flow(cluster_url, ns, track=True)
    seen: dict[str, set[int]] = {"q": set(), "pq": set(), "s": set(), "ch": set()}

    @flow.on_queue(
        q,
        max_attempts=2,
        retry_delay=0.05,
        idempotency_key=lambda job: str(job["n"]),
        rate_limit=RateLimit(100, per=1.0, key=lambda job: str(job["n"] % 3)),
    )
    async def on_queue(job: dict[str, int], msg: Message[dict[str, int]]) -> None:
        if job["n"] == 0 and msg.attempt == 1:
            raise RuntimeError("the first attempt fails")
        if job["n"] == 1:
            raise Reject("never")
        seen["q"].add(job["n"])

    @flow.on_priority(pq, rate_limit=RateLimit(100, per=1.0, burst=10))
    async def on_priority(job: dict[str, int]) -> None:
        seen["pq"].add(job["n"])

    @flow.on_stream(s, group="g", idempotency_key=lambda e: str(e["n"]))
    async def on_stream(e: dict[str, int]) -> None:
        seen["s"].add(e["n"])

    @flow.on_channel(ch)
    async def on_channel(e: dict[str, int]) -> None:
        seen["ch"].add(e["n"])

    async with flow:
        first = await flow.enqueue(q, {"n": 0})
        await flow.enqueue(q, {"n": 1})
        await flow.enqueue(q, {"n": 2}, delay=0.1)
        assert await flow.enqueue(q, {"n": 3}, dedup_key="k3") is not None
        assert await flow.enqueue(q, {"n": 3}, dedup_key="k3") is None
        await flow.enqueue(q, {"n": 4}, notify=f"{ns}:news")
        await flow.enqueue_many(q, [{"n": 5}, {"n": 6}])
        await flow.enqueue_priority(pq, {"n": 10}, priority=3, dedup_key="p10")
        await flow.enqueue_priority(pq, {"n": 11}, priority=0, delay=0.1, dedup_key="p11")
        await flow.enqueue_priority(pq, {"n": 12}, priority=2, delay=0.05)
        await flow.enqueue_priority_many(pq, [{"n": 13}, {"n": 14}], priority=1)
        await flow.append(s, {"n": 20})
        await flow.append(s, {"n": 21}, index=("n",), maxlen=1000, dedup_key="s21")
        await flow.append_many(s, [{"n": 22}, {"n": 23}], maxlen=1000)
        await flow.publish(ch, {"n": 30})
        await flow.publish(ch, {"n": 31}, durable=s, maxlen=1000, dedup_key="c31")
        await flow.publish_many(ch, [{"n": 32}])
        await eventually(
            lambda: (
                seen["q"] == {0, 2, 3, 4, 5, 6}
                and seen["pq"] == {10, 11, 12, 13, 14}
                and seen["s"] == {20, 21, 22, 23, 31}
                and seen["ch"] == {30, 31, 32}
            ),
            within=10,
            what=f"every message handled: {seen}",
        )
        await flow.wait_idle()

        assert await flow.priority_stats(pq) == {}
        assert [payload for _, payload in await flow.find(s, n=21)] == [{"n": 21}]
        assert await flow.prune_indexes(s) == 0
        assert first is not None
        status = await flow.status(first)
        assert status is not None and status.status == "completed" and status.attempts == 2
        assert (await flow.status_counts(q))["published"] == 7
        sizes = (await flow.memory(q, pq, s))["keys"]
        assert q in sizes or s in sizes
        dead = flow.dlq(q)
        assert [d.error for d in await dead.list()] == ["rejected: never"]
        assert await dead.replay(dry_run=True) == 1
        assert await dead.purge() == 1
        limiter = flow.limiter("api", RateLimit(5, per=1.0))
        async with limiter.acquire("user-1"):
            pass
        await anyio.sleep(0.6)  # a maintenance round or two (reclaim, forget, stats)

    errors = [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert "same slot" not in caplog.text and not errors, caplog.text


@pytest.mark.chaos
async def test_killed_worker_recovery_keeps_each_step_in_one_slot(
    cluster_url: str, ns: str, workers: Callable[..., Workers]
) -> None:
    """kill -9 of a worker holding messages, on the cluster node: its queue and priority
    batches are released by a peer (the recovery script spans the queue, the leases, the
    worker's batch set and its batches) and its stream entries reclaimed; every message is
    handled, nothing is left held, and no step touched two slots."""
    pool = workers(
        cluster_url,
        ns,
        flow=dict(lease=2, claim_idle=2, block_timeout=0.5, grace_period=0.5),
        handler=dict(concurrency=4),
        sleep=(0.0, 0.005),
    )
    victim, survivor = pool.start(), pool.start()
    producer = make_flow(cluster_url, ns)
    r = aioredis.Redis.from_url(cluster_url)
    total = 2_000
    try:
        for kind in KINDS:
            items = [{"n": n} for n in range(total)]
            await Kind(kind).produce_many(producer, f"{ns}:{kind}", items)
        await eventually(
            lambda: any(r.pid == victim.pid for r in pool.records()),
            within=20,
            what="the victim handles messages",
        )
        victim.kill()

        async def all_done() -> bool:
            records = pool.records()
            if any(len(count(records, "E", kind)) < total for kind in KINDS):
                return False
            held = [await Kind(k).held(r, producer, f"{ns}:{k}") for k in KINDS]
            return held == [0, 0, 0]

        await eventually(all_done, within=60, what=f"every message handled\n{pool.logs()}")
        assert survivor.alive
        logs = pool.logs()
        assert "delivered again" in logs or "reclaimed" in logs, logs
        assert "same slot" not in logs and "Traceback" not in logs, logs
    finally:
        await producer.aclose()
        await r.aclose()
