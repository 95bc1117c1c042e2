"""redisflow: every workload, with the documented defaults (concurrency 16 per handler,
batch_size 500, prefetch 1000), the payload validated from the handler's annotation.

``suite.py --baseline REF`` runs this same file against an older commit's ``redisflow/``
(PYTHONPATH first): use only ``Flow`` and the methods already used here, so that it runs
against both trees."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import common
from common import Email, Run, Tally

with common.timed_import("redisflow"):
    import redisflow
    from redisflow import Flow

common.expect_source(redisflow)  # this checkout or the --baseline export, not the venv's

CONCURRENCY = "16 (default)"
BATCH = 500  # a batch handler's batch=


async def fill(flow: Flow, kind: str, items: list[Email]) -> None:
    """Pre-fill a source with the producer API, 10,000 per call (not timed)."""
    for i, part in enumerate(common.chunks(items, 10_000)):
        if kind == "queue":
            await flow.enqueue_many("q", part)
        elif kind == "priority":
            await flow.enqueue_priority_many("q", part, priority=i % 4)
        else:
            await flow.append_many("q", part)


def consumer(url: str, kind: str, tally: Tally, *, suspend: bool = False, **options: Any) -> Flow:
    """A flow with one handler on ``q`` that counts what it handles (a batch handler,
    taking ``list[Email]``, with ``batch=``)."""
    flow = Flow(url, prefix="bench")
    if options.get("batch"):

        async def handle_batch(emails: list[Email]) -> None:
            tally.hit_many(len(emails))

        handle: Any = handle_batch
    elif suspend:

        async def handle(email: Email) -> None:
            await asyncio.sleep(0)
            tally.hit()

    else:

        async def handle(email: Email) -> None:
            tally.hit()

    if kind == "queue":
        flow.on_queue("q", **options)(handle)
    elif kind == "priority":
        flow.on_priority("q", **options)(handle)
    else:
        flow.on_stream("q", group="g", **options)(handle)
    return flow


async def _drain(run: Run, kind: str, **options: Any) -> dict[str, Any]:
    tally = Tally(run.n)
    flow = consumer(run.url, kind, tally, **options)
    await fill(flow, kind, common.emails(run.n))
    result = await common.drain(flow.start, flow.stop, tally)
    return {**result, "concurrency": CONCURRENCY}


async def queue(run: Run) -> dict[str, Any]:
    return await _drain(run, "queue")


async def queue_await(run: Run) -> dict[str, Any]:
    return await _drain(run, "queue", suspend=True)


async def queue_amo(run: Run) -> dict[str, Any]:
    return await _drain(run, "queue", at_most_once=True)


async def stream(run: Run) -> dict[str, Any]:
    return await _drain(run, "stream")


async def priority(run: Run) -> dict[str, Any]:
    return await _drain(run, "priority")


async def queue_batch(run: Run) -> dict[str, Any]:
    """A batch handler: ``@flow.on_queue("q", batch=500)``, ``list[Email]`` per call."""
    return await _drain(run, "queue", batch=BATCH)


async def stream_batch(run: Run) -> dict[str, Any]:
    return await _drain(run, "stream", batch=BATCH)


async def priority_batch(run: Run) -> dict[str, Any]:
    return await _drain(run, "priority", batch=BATCH)


async def _groups(run: Run, groups: int, **limits: Any) -> dict[str, Any]:
    """A queue consumed in fair groups: ``run.n`` messages spread round robin over
    ``groups`` groups (filled per group, not timed), drained by one handler."""
    from redisflow import GroupLimits

    tally = Tally(run.n)
    flow = consumer(run.url, "queue", tally, groups=GroupLimits(**limits))
    items = common.emails(run.n)
    for g in range(groups):
        for part in common.chunks(items[g::groups], 10_000):
            await flow.enqueue_many("q", part, group=f"tenant-{g}")
    result = await common.drain(flow.start, flow.stop, tally)
    return {**result, "concurrency": CONCURRENCY, "groups": groups}


async def groups_1(run: Run) -> dict[str, Any]:
    return await _groups(run, 1)


async def groups_100(run: Run) -> dict[str, Any]:
    return await _groups(run, 100)


async def groups_10000(run: Run) -> dict[str, Any]:
    return await _groups(run, 10_000)


async def groups_10000_limited(run: Run) -> dict[str, Any]:
    """10,000 groups, each at most 2 at once (a lease token per message)."""
    return await _groups(run, 10_000, concurrency=2)


async def _starvation(run: Run, grouped: bool) -> dict[str, Any]:
    """One big group (at least 100,000 messages) is being drained when a message of a new
    group is sent: the time from its ``enqueue`` to its handler, in ms (with groups: 5
    samples, one every 15,000 handled, the median; without, the same message joins the
    queue's tail: one sample, the first)."""
    from redisflow import GroupLimits

    backlog = max(run.n, 100_000)
    flow = Flow(run.url, prefix="bench")
    count, goal = 0, 0
    reached, seen = asyncio.Event(), asyncio.Event()
    sent_at = 0.0
    waits: list[float] = []

    async def handle(email: Email) -> None:
        nonlocal count
        count += 1
        if count >= goal:
            reached.set()
        if email.n < 0:
            waits.append(time.perf_counter() - sent_at)
            seen.set()

    options: dict[str, Any] = {"groups": GroupLimits()} if grouped else {}
    flow.on_queue("q", **options)(handle)
    big = {"group": "big"} if grouped else {}
    for part in common.chunks(common.emails(backlog), 10_000):
        await flow.enqueue_many("q", part, **big)
    async with flow:
        for i in range(5 if grouped else 1):
            goal = 10_000 + 15_000 * i
            reached.clear()
            await reached.wait()
            seen.clear()
            new = {"group": f"new-{i}"} if grouped else {}
            sent_at = time.perf_counter()
            await flow.enqueue("q", Email(to="n@example.com", subject="new", n=-1), **new)
            await seen.wait()
    median = sorted(waits)[len(waits) // 2]
    return {"value": median * 1000, "unit": "ms", "n": len(waits), "backlog": backlog,
            "max_ms": round(max(waits) * 1000, 2)}  # fmt: skip


async def starvation_groups(run: Run) -> dict[str, Any]:
    return await _starvation(run, True)


async def starvation_plain(run: Run) -> dict[str, Any]:
    return await _starvation(run, False)


async def pubsub(run: Run) -> dict[str, Any]:
    tally = Tally(run.n)
    flow = Flow(run.url, prefix="bench")

    @flow.on_channel("c")
    async def handle(email: Email) -> None:
        tally.hit()

    async def payloads(client: Any) -> None:  # Pub/Sub messages are bare JSON
        for part in common.chunks(common.emails(run.n), 10_000):
            await client.rpush(common.PAYLOADS, *(e.model_dump_json() for e in part))

    async with flow:
        result = await common.pubsub(run, "c", tally, payloads)
    return {**result, "concurrency": CONCURRENCY}


def _producer(run: Run, wait_replicas: int) -> Flow:
    # wait_replicas only when asked: a --baseline tree may predate the option
    options: dict[str, Any] = {"wait_replicas": wait_replicas} if wait_replicas else {}
    return Flow(run.url, prefix="bench", **options)


async def produce(run: Run, wait_replicas: int = 0) -> dict[str, Any]:
    flow = _producer(run, wait_replicas)
    items = common.emails(run.n)
    result = await common.produce(lambda e: flow.enqueue("q", e), items)
    await flow.aclose()
    return result


async def produce_concurrent(run: Run, wait_replicas: int = 0) -> dict[str, Any]:
    flow = _producer(run, wait_replicas)
    items = common.emails(run.n)
    result = await common.produce_concurrently(lambda e: flow.enqueue("q", e), items)
    await flow.aclose()
    return result


async def produce_wait(run: Run) -> dict[str, Any]:
    """``produce`` with ``wait_replicas=1``: each call returns once the replica has it."""
    return await produce(run, wait_replicas=1)


async def produce_concurrent_wait(run: Run) -> dict[str, Any]:
    """``produce_concurrent`` with ``wait_replicas=1``: one WAIT per round trip."""
    return await produce_concurrent(run, wait_replicas=1)


async def latency(run: Run) -> dict[str, Any]:
    probe = common.Probe()
    flow = Flow(run.url, prefix="bench")

    @flow.on_queue("q")
    async def handle(email: Email) -> None:
        probe.mark()

    async with flow:
        result = await common.latency(lambda e: flow.enqueue("q", e), probe, run)
    return {**result, "concurrency": CONCURRENCY}


async def start(run: Run) -> dict[str, Any]:
    first = common.First()
    flow = Flow(run.url, prefix="bench")

    @flow.on_queue("q")
    async def handle(email: Email) -> None:
        first.hit()

    return await common.start(
        run, lambda: fill(flow, "queue", common.emails(run.n)), flow.start, flow.stop, first
    )


async def memory(run: Run) -> dict[str, Any]:
    if run.fill:
        producer = Flow(run.url, prefix="bench")
        for part in common.chunks(range(run.n), 10_000):
            await fill(
                producer, "queue", [Email(to="m@example.com", subject="m", n=i) for i in part]
            )
        await producer.aclose()
        return {}
    await common.fill_elsewhere(run)
    tally = Tally(run.n)
    flow = consumer(run.url, "queue", tally)
    result = await common.memory(flow.start, flow.stop, tally, run)
    return {**result, "concurrency": CONCURRENCY}


CASES = {
    "queue": queue,
    "queue_await": queue_await,
    "queue_amo": queue_amo,
    "stream": stream,
    "priority": priority,
    "queue_batch": queue_batch,
    "groups_1": groups_1,
    "groups_100": groups_100,
    "groups_10000": groups_10000,
    "groups_10000_limited": groups_10000_limited,
    "starvation_groups": starvation_groups,
    "starvation_plain": starvation_plain,
    "stream_batch": stream_batch,
    "priority_batch": priority_batch,
    "pubsub": pubsub,
    "produce": produce,
    "produce_concurrent": produce_concurrent,
    "produce_wait": produce_wait,
    "produce_concurrent_wait": produce_concurrent_wait,
    "latency": latency,
    "memory": memory,
    "start": start,
}

if __name__ == "__main__":
    common.main(CASES)
