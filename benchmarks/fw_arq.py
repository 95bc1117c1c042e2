"""arq (runs from its own venv: it needs redis<6). A job function takes the payload as a
dict (arq pickles job arguments) and validates it with ``Email.model_validate``; the
``Worker`` runs with its defaults (``max_jobs`` 10, the queue polled every 0.5 s, results
kept for an hour). No streams, priorities or Pub/Sub consumer."""

from __future__ import annotations

import asyncio
from typing import Any

import common
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.worker import Worker, func
from common import Email, Run, Tally

CONCURRENCY = "10 (default max_jobs)"


def settings(run: Run) -> RedisSettings:
    return RedisSettings(host=run.host, port=run.port)


def worker(run: Run, mark: Any) -> Worker:
    async def handle(ctx: Any, data: dict[str, Any]) -> None:
        Email.model_validate(data)
        mark()

    w = Worker([func(handle, name="handle")], redis_settings=settings(run), handle_signals=False)
    return w


async def enqueue_all(pool: ArqRedis, items: list[Email]) -> None:
    """Pre-fill with ``enqueue_job``, 1,000 calls at a time (arq has no batch enqueue)."""
    for part in common.chunks(items, 1000):
        await asyncio.gather(*(pool.enqueue_job("handle", e.model_dump()) for e in part))


class Running:
    """Start and stop a worker's ``main()`` loop."""

    def __init__(self, w: Worker) -> None:
        self.worker = w
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self.worker.async_run())

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.wait({self.task}, timeout=1)


async def queue(run: Run) -> dict[str, Any]:
    tally = Tally(run.n)
    pool = await create_pool(settings(run))
    await enqueue_all(pool, common.emails(run.n))
    running = Running(worker(run, tally.hit))
    result = await common.drain(running.start, running.stop, tally)
    return {**result, "concurrency": CONCURRENCY}


async def produce(run: Run) -> dict[str, Any]:
    pool = await create_pool(settings(run))
    return await common.produce(
        lambda e: pool.enqueue_job("handle", e.model_dump()), common.emails(run.n)
    )


async def produce_concurrent(run: Run) -> dict[str, Any]:
    pool = await create_pool(settings(run))
    return await common.produce_concurrently(
        lambda e: pool.enqueue_job("handle", e.model_dump()), common.emails(run.n)
    )


async def latency(run: Run) -> dict[str, Any]:
    probe = common.Probe()
    pool = await create_pool(settings(run))
    running = Running(worker(run, probe.mark))
    await running.start()
    result = await common.latency(lambda e: pool.enqueue_job("handle", e.model_dump()), probe, run)
    await running.stop()
    return {**result, "concurrency": CONCURRENCY}


CASES = {
    "queue": queue,
    "produce": produce,
    "produce_concurrent": produce_concurrent,
    "latency": latency,
}

if __name__ == "__main__":
    common.main(CASES)
