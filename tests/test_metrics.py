"""Prometheus metrics of a running flow, scraped over HTTP."""

from __future__ import annotations

import urllib.request

import anyio
import pytest

from redisflow import Flow, GroupLimits, Reject
from redisflow.features import partitions
from tests.support.servers import free_port

pytestmark = pytest.mark.anyio


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text: str = reply.read().decode()
        return text


async def test_metrics_count_outcomes_and_time_handlers(url: str, ns: str) -> None:
    """Messages by outcome, handler durations, dead letters and stream gauges are exported
    while the flow runs; the endpoint is gone after it stops."""
    port = free_port()
    flow = Flow(url, prefix=ns, block_timeout=0.5, metrics_port=port)
    q, s = f"{ns}:q", f"{ns}:s"

    @flow.on_queue(q)
    async def work(n: int) -> None:
        if n < 0:
            raise Reject("negative")

    @flow.on_stream(s, group="g")
    async def read(n: int) -> None:
        pass

    async with flow:
        await flow.enqueue_many(q, [1, 2, 3, -1])
        await flow.append(s, 1)
        await flow.wait_idle()
        await anyio.sleep(0.1)
        text = await anyio.to_thread.run_sync(scrape, port)
    labels = f'handler="{work.__qualname__}",outcome="%s",source="queue \'{q}\'"'
    assert f"redisflow_messages_total{{{labels % 'processed'}}} 3.0" in text, text
    assert f"redisflow_messages_total{{{labels % 'dead'}}} 1.0" in text
    timed = f'handler="{work.__qualname__}",source="queue \'{q}\'"'
    assert f"redisflow_handler_seconds_count{{{timed}}} 4.0" in text
    assert "redisflow_stream_pending{" in text and "redisflow_dead_letters{" in text
    with pytest.raises(OSError):
        await anyio.to_thread.run_sync(scrape, port)


async def test_a_partitioned_source_reports_each_partition(url: str, ns: str) -> None:
    """Depth and dead letters are read at each partition's key (the ``partition`` label),
    not only at the plain name (read too, until it is drained: the layout before)."""
    port = free_port()
    flow = Flow(url, prefix=ns, block_timeout=0.5, metrics_port=port, prefetch=1, batch_size=1)
    q = f"{ns}:q"
    gate = anyio.Event()
    parts = partitions.keys(q, 3)

    @flow.on_queue(q, partitions=3, concurrency=1)
    async def work(n: int) -> None:
        await gate.wait()

    def depths(text: str) -> dict[str, float]:
        return {
            line.split('partition="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("redisflow_queue_depth{")
        }

    async with flow:
        await flow.enqueue_many(q, list(range(30)))  # round robin: 10 per partition
        text = ""
        with anyio.fail_after(30):  # the gauges are read every 5 s
            while sum(depths(text).get(key, 0) for key in parts) < 27:  # at most 3 held
                await anyio.sleep(0.2)
                text = await anyio.to_thread.run_sync(scrape, port)
        gate.set()
        await flow.wait_idle()
    assert set(parts) <= set(depths(text)), text
    assert all(depths(text)[key] >= 9 for key in parts), depths(text)
    dead = [line for line in text.splitlines() if line.startswith("redisflow_dead_letters{")]
    assert {line.split('partition="')[1].split('"')[0] for line in dead} >= set(parts)


async def test_a_queue_of_fair_groups_reports_what_waits_in_every_group(url: str, ns: str) -> None:
    """The depth of a queue consumed in fair groups counts every group's messages, not only
    the default group's (the queue's own key)."""
    port = free_port()
    flow = Flow(url, prefix=ns, block_timeout=0.5, metrics_port=port, prefetch=1, batch_size=1)
    q = f"{ns}:q"
    gate = anyio.Event()

    @flow.on_queue(q, groups=GroupLimits(concurrency=1), concurrency=1)
    async def work(n: int) -> None:
        await gate.wait()

    def depth(text: str) -> float:
        found = [line for line in text.splitlines() if line.startswith("redisflow_queue_depth{")]
        return sum(float(line.rsplit(" ", 1)[1]) for line in found)

    async with flow:
        for tenant in ("a", "b", "c"):
            await flow.enqueue_many(q, list(range(10)), group=tenant)
        await flow.enqueue_many(q, list(range(5)))  # the default group
        text = ""
        with anyio.fail_after(30):  # the gauges are read every 5 s
            while depth(text) < 34:  # one message is held by the handler
                await anyio.sleep(0.2)
                text = await anyio.to_thread.run_sync(scrape, port)
        gate.set()
        await flow.wait_idle()
    assert depth(text) == 34, text
