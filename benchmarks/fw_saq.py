"""SAQ (runs from its own venv: it needs redis<8). A job function takes the payload as a JSON
keyword argument and validates it with ``Email.model_validate``; the ``Worker`` runs with its
defaults (``concurrency`` 10, jobs moved with BLMOVE one at a time). No streams, priorities
or Pub/Sub consumer."""

from __future__ import annotations

import asyncio
from typing import Any

import common
from common import Email, Run, Tally
from saq import Queue, Worker

CONCURRENCY = "10 (default)"


def worker(run: Run, mark: Any) -> tuple[Queue, Worker]:
    queue = Queue.from_url(run.url, name="q")

    async def handle(ctx: Any, *, data: dict[str, Any]) -> None:
        Email.model_validate(data)
        mark()

    return queue, Worker(queue, functions=[("handle", handle)])


async def enqueue_all(queue: Queue, items: list[Email]) -> None:
    """Pre-fill with ``enqueue``, 1,000 calls at a time (SAQ has no batch enqueue)."""
    await queue.connect()
    for part in common.chunks(items, 1000):
        await asyncio.gather(*(queue.enqueue("handle", data=e.model_dump()) for e in part))


class Running:
    """Start and stop a worker's ``start()`` loop."""

    def __init__(self, w: Worker) -> None:
        self.worker = w
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self.worker.start())

    async def stop(self) -> None:
        await self.worker.stop()


async def queue(run: Run) -> dict[str, Any]:
    tally = Tally(run.n)
    q, w = worker(run, tally.hit)
    await enqueue_all(q, common.emails(run.n))
    running = Running(w)
    result = await common.drain(running.start, running.stop, tally)
    return {**result, "concurrency": CONCURRENCY}


async def produce(run: Run) -> dict[str, Any]:
    q, _ = worker(run, None)
    await q.connect()
    return await common.produce(
        lambda e: q.enqueue("handle", data=e.model_dump()), common.emails(run.n)
    )


async def produce_concurrent(run: Run) -> dict[str, Any]:
    q, _ = worker(run, None)
    await q.connect()
    return await common.produce_concurrently(
        lambda e: q.enqueue("handle", data=e.model_dump()), common.emails(run.n)
    )


async def latency(run: Run) -> dict[str, Any]:
    probe = common.Probe()
    q, w = worker(run, probe.mark)
    await q.connect()
    running = Running(w)
    await running.start()
    result = await common.latency(lambda e: q.enqueue("handle", data=e.model_dump()), probe, run)
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
