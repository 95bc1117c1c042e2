"""FastStream's Redis broker: ``@broker.subscriber(list=|stream=|channel)`` with the payload
validated from the handler's annotation, default options: one message at a time
(``max_workers`` 1), lists read with ``BLPOP`` one by one, streams with ``XREADGROUP`` and
one ``XACK`` per message. FastStream logs two INFO lines per message by default; they are
moved to DEBUG (``log_level``) so that no handler does I/O."""

from __future__ import annotations

import logging
from typing import Any

import common
from common import Email, Run, Tally
from faststream.redis import RedisBroker, StreamSub

CONCURRENCY = "1 (default max_workers)"


def broker(run: Run) -> RedisBroker:
    return RedisBroker(run.url, log_level=logging.DEBUG)


async def fill(b: RedisBroker, kind: str, items: list[Email]) -> None:
    """Pre-fill with FastStream's own encoding (not timed)."""
    client = await b.connect()
    for part in common.chunks(items, 10_000):
        if kind == "list":
            await b.publish_batch(*part, list="q")
        else:
            async with client.pipeline(transaction=False) as pipe:
                for e in part:
                    await b.publish(e, stream="q", pipeline=pipe)
                await pipe.execute()


async def _drain(run: Run, kind: str) -> dict[str, Any]:
    tally = Tally(run.n)
    b = broker(run)
    source: Any = (
        {"list": "q"} if kind == "list" else {"stream": StreamSub("q", group="g", consumer="c")}
    )

    @b.subscriber(**source)
    async def handle(email: Email) -> None:
        tally.hit()

    if kind == "stream":  # the group must exist before the entries, or it skips them
        client = await b.connect()
        await client.xgroup_create("q", "g", id="0", mkstream=True)
    await fill(b, kind, common.emails(run.n))
    result = await common.drain(b.start, b.stop, tally)
    return {**result, "concurrency": CONCURRENCY}


async def queue(run: Run) -> dict[str, Any]:
    return await _drain(run, "list")


async def stream(run: Run) -> dict[str, Any]:
    return await _drain(run, "stream")


async def pubsub(run: Run) -> dict[str, Any]:
    tally = Tally(run.n)
    b = broker(run)

    @b.subscriber("c")
    async def handle(email: Email) -> None:
        tally.hit()

    async def payloads(client: Any) -> None:  # FastStream's own encoding, via a list
        for part in common.chunks(common.emails(run.n), 10_000):
            await b.publish_batch(*part, list=common.PAYLOADS)

    await b.start()
    result = await common.pubsub(run, "c", tally, payloads)
    await b.stop()
    return {**result, "concurrency": CONCURRENCY}


async def produce(run: Run) -> dict[str, Any]:
    b = broker(run)
    await b.connect()
    result = await common.produce(lambda e: b.publish(e, list="q"), common.emails(run.n))
    await b.stop()
    return result


async def produce_concurrent(run: Run) -> dict[str, Any]:
    b = broker(run)
    await b.connect()
    items = common.emails(run.n)
    result = await common.produce_concurrently(lambda e: b.publish(e, list="q"), items)
    await b.stop()
    return result


async def latency(run: Run) -> dict[str, Any]:
    probe = common.Probe()
    b = broker(run)

    @b.subscriber(list="q")
    async def handle(email: Email) -> None:
        probe.mark()

    await b.start()
    result = await common.latency(lambda e: b.publish(e, list="q"), probe, run)
    await b.stop()
    return {**result, "concurrency": CONCURRENCY}


async def request(run: Run) -> dict[str, Any]:
    # a request waits on a connection of its own: the default pool (100) is too small
    b = RedisBroker(run.url, log_level=logging.DEBUG, max_connections=256)

    @b.subscriber(list="q")
    async def echo(email: Email) -> Email:
        return email

    await b.start()
    result = await common.round_trips(lambda e: b.request(e, list="q", timeout=30), run)
    await b.stop()
    return {**result, "concurrency": CONCURRENCY}


async def memory(run: Run) -> dict[str, Any]:
    b = broker(run)
    if run.fill:  # 10,000 encoded by FastStream, copied up to N
        await fill(b, "list", common.emails(min(run.n, 10_000)))
        await b.stop()
        await common.replicate(run.url, "q", run.n)
        return {}
    await common.fill_elsewhere(run)
    tally = Tally(run.n)

    @b.subscriber(list="q")
    async def handle(email: Email) -> None:
        tally.hit()

    result = await common.memory(b.start, b.stop, tally, run)
    return {**result, "concurrency": CONCURRENCY}


CASES = {
    "queue": queue,
    "stream": stream,
    "pubsub": pubsub,
    "produce": produce,
    "produce_concurrent": produce_concurrent,
    "latency": latency,
    "request": request,
    "memory": memory,
}

if __name__ == "__main__":
    common.main(CASES)
