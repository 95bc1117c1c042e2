"""Batch handlers (``batch=N``): per-message verdicts, validation failures, filling, the
consume chain (one call per batch), idempotency, rate limits, tracking, stop and hand-back,
on every reliable kind (queue, priority queue, stream, partitioned too), against real Redis.
A killed worker process's batch, recovered whole, is in ``test_batch_workers.py``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
from pydantic import BaseModel

from redisflow import (
    BatchFailed,
    ConfigError,
    Defer,
    Flow,
    Message,
    MessageBatch,
    Middleware,
    RateLimit,
    Reject,
    Retry,
    Skip,
)
from tests.support import flows
from tests.support.flows import eventually
from tests.support.kinds import RELIABLE, Kind, by_kind
from tests.support.workers import Workers

pytestmark = pytest.mark.anyio

reliable_kinds = by_kind(RELIABLE)
README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


class Row(BaseModel):
    n: int


@pytest.fixture
def make_flow(url: str, ns: str) -> Callable[..., Flow]:
    return functools.partial(flows.make_flow, url, ns)


async def settled(kind: Kind, r: aioredis.Redis, flow: Flow, name: str) -> None:
    async def empty() -> bool:
        return await kind.held(r, flow, name) == 0

    await eventually(empty, what=f"{name} settled")


@reliable_kinds
async def test_per_message_verdicts_in_a_batch(
    kind: Kind, make_flow: Callable[..., Flow], ns: str, r: aioredis.Redis
) -> None:
    """One batch: some acked, some retried (each back on its own, attempt 2, in a later
    batch), some dead-lettered (Reject, and max_attempts), invalid payloads dead-lettered
    one by one while the rest of the batch runs."""
    flow = make_flow()
    name = kind.name(ns)
    calls: list[list[tuple[int, int]]] = []

    @kind.on(flow, name, batch=40, batch_wait=0.5, retry_delay=0.01, max_attempts=2)
    async def ingest(rows: list[Row], msgs: list[Message[Row]]) -> None:
        assert [m.payload for m in msgs] == rows
        calls.append([(row.n, m.attempt) for row, m in zip(rows, msgs, strict=True)])
        failures: dict[int, BaseException] = {}
        for i, (row, msg) in enumerate(zip(rows, msgs, strict=True)):
            if row.n % 10 == 1 and msg.attempt == 1:
                failures[i] = ValueError("transient")  # retried, then acked
            elif row.n % 10 == 2:
                failures[i] = Reject("bad row")  # dead at once
            elif row.n % 10 == 3:
                failures[i] = Retry(delay=0.01)  # retried, dead after 2 attempts
        if failures:
            raise BatchFailed(failures)

    async with flow:
        await kind.produce_many(flow, name, [{"n": n} for n in range(40)])
        for raw in (b"not json", b'{"n": "x"}'):
            await kind.push_raw(r, name, raw)

        async def all_done() -> bool:
            return len(await flow.dlq(name).list()) == 10

        await eventually(all_done, within=10, what="8 rejected/exhausted + 2 invalid")
        await settled(kind, r, flow, name)
        letters = await flow.dlq(name).list()
    handled = [entry for call in calls for entry in call]
    assert all(len(call) <= 40 for call in calls)
    firsts = {n for n, attempt in handled if attempt == 1}
    assert firsts == set(range(40))  # every valid row reached the handler once at first
    again = sorted(n for n, attempt in handled if attempt == 2)
    assert again == sorted(n for n in range(40) if n % 10 in (1, 3))  # each came back alone
    errors = sorted(d.error.split(":")[0] for d in letters)
    assert errors.count("rejected") == 4
    assert errors.count("retry requested") == 4
    assert sum("invalid payload" in d.error or "undecodable" in d.error for d in letters) == 2


@reliable_kinds
async def test_an_exception_fails_the_whole_batch(
    kind: Kind, make_flow: Callable[..., Flow], ns: str, r: aioredis.Redis
) -> None:
    """Raising fails every message of the batch: each is retried with its own attempt
    count, then dead-lettered after max_attempts; Skip settles all as handled."""
    flow = make_flow()
    name = kind.name(ns)
    attempts: list[int] = []

    @kind.on(flow, name, batch=10, retry_delay=0.01, max_attempts=3)
    async def ingest(rows: list[Row], msgs: list[Message[Row]]) -> None:
        attempts.extend(m.attempt for m in msgs)
        if rows[0].n >= 100:
            raise Skip
        raise RuntimeError("database down")

    async with flow:
        await kind.produce_many(flow, name, [{"n": n} for n in range(5)])

        async def dead() -> bool:
            return len(await flow.dlq(name).list()) == 5

        await eventually(dead, within=10, what="all five dead after 3 attempts")
        await kind.produce_many(flow, name, [{"n": 100 + n} for n in range(3)])
        await eventually(lambda: len(attempts) == 18, what="the skipped batch")
        await settled(kind, r, flow, name)
        letters = await flow.dlq(name).list()
    assert sorted(attempts) == sorted([1] * 5 + [2] * 5 + [3] * 5 + [1] * 3)
    assert {d.attempts for d in letters} == {3}
    assert all("database down" in d.error for d in letters)
    assert sum(c.stats.skipped for c in flow.consumers) == 3


async def test_a_batch_fills_within_batch_wait(make_flow: Callable[..., Flow], ns: str) -> None:
    """The handler waits at most ``batch_wait`` after the first message for its batch to
    fill: messages sent within it come in one call; a full batch goes at once."""
    flow = make_flow()
    calls: list[list[int]] = []

    @flow.on_queue(ns, batch=5, batch_wait=1.0)
    async def ingest(rows: list[Row]) -> None:
        calls.append([row.n for row in rows])

    async with flow:
        await flow.enqueue(ns, {"n": 0})
        await anyio.sleep(0.2)
        await flow.enqueue(ns, {"n": 1})
        await flow.enqueue(ns, {"n": 2})
        await eventually(lambda: calls, within=5, what="the first batch")
        assert calls == [[0, 1, 2]]
        with anyio.fail_after(0.9):  # a full batch does not wait for batch_wait
            await flow.enqueue_many(ns, [{"n": n} for n in range(3, 8)])
            await eventually(lambda: len(calls) == 2, what="the full batch")
    assert calls[1] == [3, 4, 5, 6, 7]


async def test_batch_wait_zero_takes_what_is_there(make_flow: Callable[..., Flow], ns: str) -> None:
    flow = make_flow()
    calls: list[int] = []

    @flow.on_queue(ns, batch=100, batch_wait=0)
    def ingest(rows: list[Row]) -> None:  # a plain def runs in a worker thread
        calls.append(len(rows))

    async with flow:
        await flow.enqueue(ns, {"n": 0})
        await eventually(lambda: calls == [1], within=2, what="a batch of one, at once")


async def test_the_consume_chain_runs_once_per_batch(
    make_flow: Callable[..., Flow], ns: str
) -> None:
    """A middleware sees one MessageBatch per call: its messages, their payloads; a
    BatchFailed raised by the handler reaches it with the messages it names."""
    seen: list[MessageBatch[Any]] = []
    outcomes: list[list[str]] = []

    class Spy(Middleware):
        async def consume(self, msg: Message[Any], call_next: Any) -> Any:
            assert isinstance(msg, MessageBatch)
            seen.append(msg)
            try:
                return await call_next(msg)
            except BatchFailed as exc:
                outcomes.append([m.id for m, _ in exc.resolved])
                raise

    flow = make_flow(middleware=[Spy()])

    @flow.on_queue(ns, batch=10, batch_wait=0.5, max_attempts=1)
    async def ingest(rows: list[Row]) -> None:
        raise BatchFailed({0: ValueError("first")})

    async with flow:
        ids = await flow.enqueue_many(ns, [{"n": n} for n in range(4)])
        await eventually(lambda: outcomes, what="one batch")

        async def dead() -> bool:
            return len(await flow.dlq(ns).list()) == 1

        await eventually(dead, what="the failed one dead")
    [batch] = seen
    assert [m.id for m in batch.messages] == ids
    assert batch.payload == [Row(n=n) for n in range(4)]
    assert batch.id == ids[0] and batch.attempt == 1 and len(batch) == 4
    assert outcomes == [[ids[0]]]


async def test_a_middleware_may_keep_messages_from_the_handler(
    make_flow: Callable[..., Flow], ns: str
) -> None:
    """``batch.subset(kept)`` goes on to the handler; the others get the verdicts the
    middleware names in a ``BatchFailed.of``."""

    class Odd(Middleware):
        async def consume(self, msg: Message[Any], call_next: Any) -> Any:
            assert isinstance(msg, MessageBatch)
            even = [m for m in msg.messages if m.payload.n % 2 == 0]
            odd = [m for m in msg.messages if m.payload.n % 2]
            await call_next(msg.subset(even))
            raise BatchFailed.of([(m, Reject("odd")) for m in odd])

    flow = make_flow(middleware=[Odd()])
    got: list[int] = []

    @flow.on_queue(ns, batch=10, batch_wait=0.5)
    async def ingest(rows: list[Row]) -> None:
        got.extend(row.n for row in rows)

    async with flow:
        await flow.enqueue_many(ns, [{"n": n} for n in range(6)])

        async def dead() -> bool:
            return len(await flow.dlq(ns).list()) == 3

        await eventually(dead, what="the odd ones rejected")
    assert got == [0, 2, 4]
    assert flow.consumers[0].stats.processed == 3


@reliable_kinds
async def test_idempotency_rate_limits_and_tracking_per_message(
    kind: Kind, make_flow: Callable[..., Flow], ns: str, r: aioredis.Redis
) -> None:
    """In a batch, each message is claimed, rate limited and tracked on its own: a
    duplicate of a key already handled is skipped, a message over the rate is deferred
    (delivered later, its attempt not counted), and each status is recorded."""
    flow = make_flow(track=True)
    name = kind.name(ns)
    got: list[tuple[int, int]] = []
    limit = RateLimit(3, per=0.5, key=lambda row: "one")

    @kind.on(flow, name, batch=20, batch_wait=0.3, idempotency_key=lambda row: str(row.n),
             rate_limit=limit)  # fmt: skip
    async def ingest(rows: list[Row], msgs: list[Message[Row]]) -> None:
        got.extend((row.n, m.attempt) for row, m in zip(rows, msgs, strict=True))

    async with flow:
        await kind.produce_many(flow, name, [{"n": n} for n in range(6)])
        await eventually(lambda: len(got) == 6, within=10, what="all six, 3 per 0.5 s")
        await kind.produce_many(flow, name, [{"n": 0}, {"n": 1}])  # duplicates: skipped
        await eventually(
            lambda: sum(c.stats.skipped for c in flow.consumers) == 2, what="duplicates"
        )
        await settled(kind, r, flow, name)
        counts = await flow.status_counts(name)
    assert sorted(got) == [(n, 1) for n in range(6)]  # deferrals are no attempts
    assert sum(c.stats.deferred for c in flow.consumers) >= 3  # six messages, three grants
    assert counts[f"{ingest.__qualname__}:completed"] == 6


async def test_a_stop_hands_the_batch_back(
    make_flow: Callable[..., Flow], ns: str, r: aioredis.Redis
) -> None:
    """A batch still running when the grace period ends is cancelled and handed back
    whole: the next worker gets every message of it."""
    flow = make_flow(grace_period=0.3)
    started = anyio.Event()

    @flow.on_queue(ns, batch=10, batch_wait=0.5)
    async def slow(rows: list[Row]) -> None:
        started.set()
        await anyio.sleep(30)

    async with flow:
        await flow.enqueue_many(ns, [{"n": n} for n in range(10)])
        with anyio.fail_after(5):
            await started.wait()
    assert int(await r.llen(ns)) == 10
    rescuer = make_flow()
    got: list[int] = []

    @rescuer.on_queue(ns, batch=10)
    async def fast(rows: list[Row], msgs: list[Message[Row]]) -> None:
        got.extend(row.n for row in rows)
        assert all(m.attempt == 1 for m in msgs)  # handed back at stop: no attempt counted

    async with rescuer:
        await eventually(lambda: len(got) == 10, what="the handed-back batch")
    assert sorted(got) == list(range(10))


async def test_a_bad_index_fails_the_whole_batch(make_flow: Callable[..., Flow], ns: str) -> None:
    flow = make_flow()

    @flow.on_queue(ns, batch=5, batch_wait=0.3, max_attempts=1)
    async def ingest(rows: list[Row]) -> None:
        raise BatchFailed({7: ValueError("out of range")})

    async with flow:
        await flow.enqueue_many(ns, [{"n": n} for n in range(2)])

        async def dead() -> bool:
            return len(await flow.dlq(ns).list()) == 2

        await eventually(dead, what="both dead")
        letters = await flow.dlq(ns).list()
    assert all("no index of this batch of 2" in d.error for d in letters)


async def test_a_deferred_batch_comes_back_without_an_attempt(
    make_flow: Callable[..., Flow], ns: str
) -> None:
    flow = make_flow()
    attempts: list[list[int]] = []

    @flow.on_queue(ns, batch=5, batch_wait=0.3)
    async def ingest(rows: list[Row], msgs: list[Message[Row]]) -> None:
        attempts.append([m.attempt for m in msgs])
        if len(attempts) == 1:
            raise Defer(0.05, "not now")

    async with flow:
        await flow.enqueue_many(ns, [{"n": n} for n in range(3)])
        await eventually(lambda: sum(map(len, attempts)) == 6, what="delivered again")
    assert [a for call in attempts for a in call] == [1] * 6


def test_options_are_checked(url: str, ns: str) -> None:
    flow = Flow(url, prefix=ns)

    async def single(row: Row) -> None: ...

    async def rows(rows: list[Row]) -> None: ...

    with pytest.raises(ConfigError, match="batch must be an int from 1"):
        flow.on_queue("q", batch=0)(rows)
    with pytest.raises(ConfigError, match="batch_wait needs batch="):
        flow.on_queue("q", batch_wait=0.1)(single)
    with pytest.raises(ConfigError, match="unknown option for a channel handler: batch"):
        flow.on_channel("c", batch=10)(rows)  # type: ignore[call-arg]

    with pytest.raises(ConfigError, match="takes its payloads as list"):
        flow.on_queue("q", batch=10)(single)

    async def one_message(rows: list[Row], msg: Message[Row]) -> None: ...

    with pytest.raises(ConfigError, match="takes list\\[Message\\], not Message"):
        flow.on_queue("q2", batch=10)(one_message)


@pytest.mark.parametrize("kind", ["queue", "priority", "stream"])
async def test_a_killed_workers_batch_is_recovered_whole(
    kind: str, url: str, ns: str, r: aioredis.Redis, workers: Callable[..., Workers]
) -> None:
    """A worker process killed (SIGKILL) in the middle of a batch: once its lease expires
    (``claim_idle`` for a stream), a second worker process gets every message of that
    batch, as attempt 2, and Redis ends with nothing held."""
    pool = workers(
        url, ns, kinds=[kind], handler=dict(batch=20, batch_wait=1.0),
        flow=dict(lease=2, claim_idle=2, block_timeout=0.5),
    )  # fmt: skip
    victim = pool.start()
    name = f"{ns}:{kind}"
    async with Flow(url, prefix=ns) as producer:
        await Kind(kind).produce_many(producer, name, [{"n": n, "first": 60} for n in range(20)])

        def started() -> set[int]:
            return {rec.n for rec in pool.records() if rec.event == "S" and rec.pid == victim.pid}

        await eventually(lambda: len(started()) == 20, within=30, what=f"a batch\n{pool.logs()}")
        victim.kill()
        rescuer = pool.start()

        def ended() -> list[tuple[int, int]]:
            return [(rec.n, rec.attempt) for rec in pool.records()
                    if rec.event == "E" and rec.pid == rescuer.pid]  # fmt: skip

        await eventually(lambda: len(ended()) == 20, within=30, what=f"recovery\n{pool.logs()}")
        assert sorted(ended()) == [(n, 2) for n in range(20)]

        async def empty() -> bool:
            return await Kind(kind).held(r, producer, name) == 0

        await eventually(empty, what="nothing held")
    assert pool.stop_all() == {victim.pid: -9, rescuer.pid: 0}


async def test_the_readme_example(url: str, ns: str) -> None:
    """The Batch handlers section of the README, run as written (on the test server)."""
    section = README.split("## Batch handlers", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    code = code.replace("Flow()", f"Flow({url!r}, prefix={ns!r})")
    code = code.replace('"events"', repr(f"{ns}:events"))
    scope: dict[str, Any] = {}
    exec(code, scope)
    flow: Flow = scope["flow"]
    stored: list[tuple[str, str, str]] = []

    async def store(rows: list[tuple[str, str, str]]) -> None:
        stored.extend(rows)

    scope["store"] = store
    async with flow:
        ids = await flow.enqueue_many(
            f"{ns}:events",
            [
                {"user": "a", "kind": "click"},
                {"user": "b", "kind": "test"},
                {"user": "c", "kind": "buy"},
            ],
        )
        await flow.wait_idle()
        letters = await flow.dlq(f"{ns}:events").list()
    assert stored == [(ids[0], "a", "click"), (ids[2], "c", "buy")]
    assert [(d.message_id, d.error) for d in letters] == [
        (ids[1], "rejected: test events are not stored")
    ]


async def test_batches_on_a_partitioned_stream_and_queue_of_a_cluster(
    redisflow_cluster: Any, ns: str
) -> None:
    """On a 3-master cluster, a batch handler of a queue and of a stream, each over 3
    partitions (a consumer per partition, batches of one partition): every message once."""
    flow = Flow(redisflow_cluster.seed_url, prefix=ns, block_timeout=0.5)
    got: dict[str, list[int]] = {"queue": [], "stream": []}
    sizes: list[int] = []

    @flow.on_queue(f"{ns}:q", batch=50, batch_wait=0.2, partitions=3)
    async def queue(rows: list[Row]) -> None:
        got["queue"] += [row.n for row in rows]
        sizes.append(len(rows))

    @flow.on_stream(f"{ns}:s", group="g", batch=50, batch_wait=0.2, partitions=3)
    async def stream(rows: list[Row], msgs: list[Message[Row]]) -> None:
        assert [m.payload for m in msgs] == rows
        got["stream"] += [row.n for row in rows]
        sizes.append(len(rows))

    async with flow:
        await flow.enqueue_many(f"{ns}:q", [{"n": n} for n in range(300)])
        await flow.append_many(f"{ns}:s", [{"n": n} for n in range(300)])
        await eventually(
            lambda: len(got["queue"]) == 300 and len(got["stream"]) == 300, within=20,
            what="both drained",
        )  # fmt: skip
    assert sorted(got["queue"]) == sorted(got["stream"]) == list(range(300))
    assert max(sizes) <= 50 and len(sizes) >= 12  # 100 per partition: two batches or more


async def test_tracing_one_span_per_batch_linked_to_each_message(url: str, ns: str) -> None:
    """``Tracing``: a batch is one CONSUMER span (a new trace) with the batch's size and a
    link to each message's producer span; ``BatchFailed`` makes its outcome ``partial``."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind

    from redisflow.otel import Tracing

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    flow = Flow(url, prefix=ns, middleware=[Tracing(tracer_provider=provider)])
    calls = 0

    @flow.on_queue(ns, batch=10, batch_wait=0.5, max_attempts=1)
    async def ingest(rows: list[Row]) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise BatchFailed({0: ValueError("first")})

    try:
        async with flow:
            for n in range(3):  # three sends, three producer spans (three traces)
                await flow.enqueue(ns, {"n": n})
            await eventually(lambda: calls == 1, what="the first batch")
            await flow.enqueue_many(ns, [{"n": 3}, {"n": 4}])
            await eventually(lambda: calls == 2, what="the second batch")
            await flow.wait_idle()

        def processed() -> list[Any]:
            return [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CONSUMER]

        await eventually(lambda: len(processed()) == 2, what="two batch spans")
    finally:
        provider.shutdown()
    sends = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.PRODUCER]
    first, second = processed()
    assert dict(first.attributes or {})["messaging.batch.message_count"] == 3
    assert first.parent is None and dict(first.attributes or {})["redisflow.outcome"] == "ok"
    linked = {link.context.trace_id for link in first.links}
    assert linked == {s.context.trace_id for s in sends[:3] if s.context is not None}
    assert dict(second.attributes or {})["redisflow.outcome"] == "partial"
    assert dict(second.attributes or {})["redisflow.batch.failed_count"] == 1
    assert len(second.links) == 2  # one send of two messages: one context, two links
