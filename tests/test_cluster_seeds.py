"""``redis+cluster://a,b,c``: a seed that is down does not stop a flow, a producer or the
command line while the others answer (issue 23, item 16). A real 3-master cluster."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from redisflow import Flow
from redisflow.testing.cluster import RedisCluster
from tests.support.flows import eventually, make_flow
from tests.support.servers import closed_port
from tests.test_cli import write
from tests.test_cli_first_hour import APP, run_cli

pytestmark = pytest.mark.anyio


def seeds_with_a_dead_first(cluster: RedisCluster) -> str:
    """A cluster URL whose first seed has nothing listening."""
    live = [f"{n.host}:{n.port}" for n in cluster.nodes[1:3]]
    return f"redis+cluster://127.0.0.1:{closed_port()},{','.join(live)}/"


async def test_a_dead_first_seed_is_skipped(
    redisflow_cluster: RedisCluster, ns: str, figures: Callable[..., None]
) -> None:
    """A producer's first call, a worker's start and redis-py's client all use the seeds
    that answer, at once (before: 'cannot connect to' the first one, until it came back)."""
    url = seeds_with_a_dead_first(redisflow_cluster)
    q = f"{ns}:jobs"
    producer = Flow(url, prefix=ns)
    began = time.monotonic()
    try:
        await producer.enqueue(q, 1)
        first_call = time.monotonic() - began
        assert await producer.redis.llen(q) == 1
    finally:
        await producer.aclose()
    flow = make_flow(url, ns)
    got: list[int] = []

    @flow.on_queue(q)
    async def handle(n: int) -> None:
        got.append(n)

    began = time.monotonic()
    async with flow:
        started = time.monotonic() - began
        await eventually(lambda: got == [1], what="handled")
    figures(first_call_seconds=round(first_call, 3), worker_start_seconds=round(started, 3))
    assert first_call < 5 and started < 5  # a refused connect is no wait; generous for CI


def test_the_command_line_skips_a_dead_first_seed(
    redisflow_cluster: RedisCluster, ns: str, tmp_path: Path
) -> None:
    url = seeds_with_a_dead_first(redisflow_cluster)
    write(tmp_path, "seedapp", APP.format(ns=ns))
    res = run_cli(tmp_path, "enqueue", f"{ns}:q", "1", "--url", url)
    assert res.returncode == 0, res.stderr
    res = run_cli(tmp_path, "stats", "--url", url, "--prefix", ns)
    assert res.returncode == 0, res.stderr
    res = run_cli(tmp_path, "check", "seedapp", "--url", url)
    assert res.returncode == 0 and res.stdout.startswith("ok:"), res.stdout + res.stderr
