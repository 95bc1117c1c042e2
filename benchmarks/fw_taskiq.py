"""taskiq with taskiq-redis: a ``@broker.task`` whose parameter is the model (taskiq validates
it, ``validate_params``), run in-process by ``run_receiver_task`` with the worker's defaults:
100 tasks at once (``max_async_tasks``), no prefetch, ack when done. ``ListQueueBroker``
(LPUSH/BRPOP, at-most-once), ``RedisStreamBroker`` (XREADGROUP COUNT 100, one XACK per
message), ``PubSubBroker``."""

from __future__ import annotations

import asyncio
from typing import Any

import common
import redis.asyncio as aioredis
from common import Email, Run, Tally
from taskiq.api import run_receiver_task
from taskiq_redis import ListQueueBroker, PubSubBroker, RedisStreamBroker

CONCURRENCY = "100 (default max_async_tasks)"


def encoded(task: Any, broker: Any, items: list[Email]) -> list[bytes]:
    """What ``task.kiq(e)`` would send, for pre-filling in bulk (not timed). Uses taskiq's
    own (private) message builder: one ``kiq`` per message would take minutes for 1M."""
    kicker = task.kicker()
    return [broker.formatter.dumps(kicker._prepare_message(e)).message for e in items]


class Worker:
    """A broker, one counting task, and the receiver loop started and stopped on demand."""

    def __init__(self, broker: Any, tally: Tally | None = None) -> None:
        self.broker = broker
        self.tally = tally
        self._task: asyncio.Task[None] | None = None

        @broker.task(task_name="handle")
        async def handle(email: Email) -> None:
            assert tally is not None
            tally.hit()

        self.handle = handle

    async def start(self) -> None:
        self._task = asyncio.create_task(run_receiver_task(self.broker, run_startup=False))

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()  # the stream receiver can take a while to end: don't wait long
        await asyncio.wait({self._task}, timeout=1)
        await self.broker.shutdown()


async def fill_list(run: Run, w: Worker, items: list[Email]) -> None:
    client = aioredis.Redis.from_url(run.url)
    for part in common.chunks(items, 10_000):
        await client.lpush("q", *encoded(w.handle, w.broker, list(part)))
    await client.aclose()


async def queue(run: Run) -> dict[str, Any]:
    tally = Tally(run.n)
    w = Worker(ListQueueBroker(run.url, queue_name="q"), tally)
    await w.broker.startup()
    await fill_list(run, w, common.emails(run.n))
    result = await common.drain(w.start, w.stop, tally)
    return {**result, "concurrency": CONCURRENCY}


async def stream(run: Run) -> dict[str, Any]:
    tally = Tally(run.n)
    w = Worker(RedisStreamBroker(run.url, queue_name="q", consumer_group_name="g"), tally)
    await w.broker.startup()  # creates the group at "$": fill after it
    client = aioredis.Redis.from_url(run.url)
    for part in common.chunks(common.emails(run.n), 10_000):
        async with client.pipeline(transaction=False) as pipe:
            for message in encoded(w.handle, w.broker, list(part)):
                pipe.xadd("q", {b"data": message})
            await pipe.execute()
    await client.aclose()
    result = await common.drain(w.start, w.stop, tally)
    return {**result, "concurrency": CONCURRENCY}


async def pubsub(run: Run) -> dict[str, Any]:
    tally = Tally(run.n)
    w = Worker(PubSubBroker(run.url, queue_name="c"), tally)
    await w.broker.startup()

    async def payloads(client: Any) -> None:
        for part in common.chunks(common.emails(run.n), 10_000):
            await client.rpush(common.PAYLOADS, *encoded(w.handle, w.broker, list(part)))

    await w.start()  # PubSubBroker.listen() subscribes later, in the receiver task
    result = await common.pubsub(run, "c", tally, payloads)
    await w.stop()
    return {**result, "concurrency": CONCURRENCY}


async def produce(run: Run) -> dict[str, Any]:
    w = Worker(ListQueueBroker(run.url, queue_name="q"))
    await w.broker.startup()
    result = await common.produce(w.handle.kiq, common.emails(run.n))
    await w.broker.shutdown()
    return result


async def produce_concurrent(run: Run) -> dict[str, Any]:
    w = Worker(ListQueueBroker(run.url, queue_name="q"))
    await w.broker.startup()
    result = await common.produce_concurrently(w.handle.kiq, common.emails(run.n))
    await w.broker.shutdown()
    return result


async def latency(run: Run) -> dict[str, Any]:
    probe = common.Probe()
    broker = ListQueueBroker(run.url, queue_name="q")

    @broker.task(task_name="handle")
    async def handle(email: Email) -> None:
        probe.mark()

    await broker.startup()
    task = asyncio.create_task(run_receiver_task(broker, run_startup=False))
    result = await common.latency(handle.kiq, probe, run)
    task.cancel()
    return {**result, "concurrency": CONCURRENCY}


async def memory(run: Run) -> dict[str, Any]:
    if run.fill:  # 10,000 encoded by taskiq, copied up to N
        w = Worker(ListQueueBroker(run.url, queue_name="q"))
        await fill_list(run, w, common.emails(min(run.n, 10_000)))
        await common.replicate(run.url, "q", run.n)
        return {}
    await common.fill_elsewhere(run)
    tally = Tally(run.n)
    w = Worker(ListQueueBroker(run.url, queue_name="q"), tally)
    await w.broker.startup()
    result = await common.memory(w.start, w.stop, tally, run)
    return {**result, "concurrency": CONCURRENCY}


CASES = {
    "queue": queue,
    "stream": stream,
    "pubsub": pubsub,
    "produce": produce,
    "produce_concurrent": produce_concurrent,
    "latency": latency,
    "memory": memory,
}

if __name__ == "__main__":
    common.main(CASES)
