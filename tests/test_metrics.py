"""Prometheus metrics of a running flow, scraped over HTTP."""

from __future__ import annotations

import urllib.request

import anyio
import pytest

from redisflow import Flow, Reject
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
