"""redisflow: every workload, with the documented defaults (concurrency 16 per handler,
batch_size 500, prefetch 1000), the payload validated from the handler's annotation.

``suite.py --baseline REF`` runs this same file against an older commit's ``redisflow/``
(PYTHONPATH first): use only ``Flow`` and the methods already used here, so that it runs
against both trees (the ``*_traced`` cases need ``redisflow.otel``: against a tree without
it they fail, and only they).

The ``*_traced`` cases run the same workload with ``Flow(middleware=[Tracing()])`` on an
OpenTelemetry SDK ``TracerProvider`` whose ``BatchSpanProcessor`` (queue large enough that
no span is dropped) hands the spans to an exporter that counts and discards them: the cost
of making every span, not of shipping them."""

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


class Traced:
    """``Tracing()`` on a private SDK provider whose exporter counts and drops the spans;
    ``ratio``: the share of traces sampled (children follow their parent's decision)."""

    def __init__(self, ratio: float = 1.0) -> None:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
        from opentelemetry.sdk.trace.export import SpanExportResult as Export
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        from redisflow.otel import Tracing

        class Count(SpanExporter):
            spans = 0

            def export(self, spans: Any) -> Export:
                Count.spans += len(spans)
                return Export.SUCCESS

        self.exporter = Count()
        self.provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(ratio)))
        self.provider.add_span_processor(BatchSpanProcessor(self.exporter, max_queue_size=1 << 20))
        self.middleware = [Tracing(tracer_provider=self.provider)]

    def done(self, result: dict[str, Any]) -> dict[str, Any]:
        """``result`` with the number of spans exported (all of them, once flushed)."""
        self.provider.shutdown()
        return {**result, "spans": self.exporter.spans}


def consumer(
    url: str,
    kind: str,
    tally: Tally,
    *,
    suspend: bool = False,
    traced: Traced | None = None,
    **options: Any,
) -> Flow:
    """A flow with one handler on ``q`` that counts what it handles (a batch handler,
    taking ``list[Email]``, with ``batch=``)."""
    flow = Flow(url, prefix="bench", **({"middleware": traced.middleware} if traced else {}))
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


async def _drain(
    run: Run, kind: str, *, traced: bool = False, ratio: float = 1.0, **options: Any
) -> dict[str, Any]:
    tally = Tally(run.n)
    tracing = Traced(ratio) if traced else None
    flow = consumer(run.url, kind, tally, traced=tracing, **options)
    await fill(flow, kind, common.emails(run.n))  # traced: one send span per 10,000
    result = await common.drain(flow.start, flow.stop, tally)
    result = {**result, "concurrency": CONCURRENCY}
    return tracing.done(result) if tracing else result


async def queue(run: Run) -> dict[str, Any]:
    return await _drain(run, "queue")


async def queue_await(run: Run) -> dict[str, Any]:
    return await _drain(run, "queue", suspend=True)


async def queue_amo(run: Run) -> dict[str, Any]:
    return await _drain(run, "queue", at_most_once=True)


async def queue_traced(run: Run) -> dict[str, Any]:
    return await _drain(run, "queue", traced=True)


async def queue_traced_sampled(run: Run) -> dict[str, Any]:
    """``queue_traced`` with 1 % of traces sampled: the fill's send spans decide, so the
    consumer spans of a 10,000-message call are all sampled or all not."""
    return await _drain(run, "queue", traced=True, ratio=0.01)


async def stream(run: Run) -> dict[str, Any]:
    return await _drain(run, "stream")


async def stream_traced(run: Run) -> dict[str, Any]:
    return await _drain(run, "stream", traced=True)


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


def _producer(run: Run, wait_replicas: int, traced: Traced | None = None) -> Flow:
    # wait_replicas and middleware only when asked: a --baseline tree may predate them
    options: dict[str, Any] = {"wait_replicas": wait_replicas} if wait_replicas else {}
    if traced is not None:
        options["middleware"] = traced.middleware
    return Flow(run.url, prefix="bench", **options)


async def produce(run: Run, wait_replicas: int = 0, traced: bool = False) -> dict[str, Any]:
    tracing = Traced() if traced else None
    flow = _producer(run, wait_replicas, tracing)
    items = common.emails(run.n)
    result = await common.produce(lambda e: flow.enqueue("q", e), items)
    await flow.aclose()
    return tracing.done(result) if tracing else result


async def produce_traced(run: Run) -> dict[str, Any]:
    return await produce(run, traced=True)


async def produce_batch(run: Run, traced: bool = False) -> dict[str, Any]:
    """``enqueue_many`` of 500 messages per call (the redis-py ``RPUSH`` 500 row's shape)."""
    tracing = Traced() if traced else None
    flow = _producer(run, 0, tracing)
    calls = list(common.chunks(common.emails(run.n), 500))
    result = await common.produce(lambda part: flow.enqueue_many("q", part), calls)
    await flow.aclose()
    per = len(calls) / run.n  # common.produce counted calls: per message instead
    result = {
        **result,
        "value": result["value"] / per,
        "n": run.n,
        "cpu_us": result["cpu_us"] * per,
    }
    return tracing.done(result) if tracing else result


async def produce_batch_traced(run: Run) -> dict[str, Any]:
    return await produce_batch(run, traced=True)


async def produce_concurrent(
    run: Run, wait_replicas: int = 0, traced: bool = False
) -> dict[str, Any]:
    tracing = Traced() if traced else None
    flow = _producer(run, wait_replicas, tracing)
    items = common.emails(run.n)
    result = await common.produce_concurrently(lambda e: flow.enqueue("q", e), items)
    await flow.aclose()
    return tracing.done(result) if tracing else result


async def produce_concurrent_traced(run: Run) -> dict[str, Any]:
    return await produce_concurrent(run, traced=True)


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


async def request(run: Run, kind: Any = "queue") -> dict[str, Any]:
    flow = Flow(run.url, prefix="bench")

    async def echo(email: Email) -> Email:
        return email

    if kind == "channel":
        flow.on_channel("q")(echo)
    else:
        flow.on_queue("q")(echo)
    async with flow:
        result = await common.round_trips(lambda e: flow.request("q", e, kind=kind), run)
    return {**result, "concurrency": CONCURRENCY}


async def request_channel(run: Run) -> dict[str, Any]:
    return await request(run, "channel")


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
    "queue_traced": queue_traced,
    "queue_traced_sampled": queue_traced_sampled,
    "stream": stream,
    "stream_traced": stream_traced,
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
    "produce_traced": produce_traced,
    "produce_batch": produce_batch,
    "produce_batch_traced": produce_batch_traced,
    "produce_concurrent": produce_concurrent,
    "produce_concurrent_traced": produce_concurrent_traced,
    "produce_wait": produce_wait,
    "produce_concurrent_wait": produce_concurrent_wait,
    "latency": latency,
    "request": request,
    "request_channel": request_channel,
    "memory": memory,
    "start": start,
}

if __name__ == "__main__":
    common.main(CASES)
