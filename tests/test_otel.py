"""OpenTelemetry tracing (``redisflow.otel.Tracing``) for every kind, against a real Redis,
with the SDK's in-memory exporter on a private tracer provider (never the global one)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from redisflow import ConfigError, Defer, Flow, Message, Middleware, Reject, Retry, Skip, otel
from redisflow.otel import Tracing
from tests.support.kinds import ALL, DURABLE, Kind, by_kind

pytestmark = pytest.mark.anyio

FAST = {"retry_delay": 0.01, "retry_max_delay": 0.01}


class Spans:
    """A private tracer provider whose finished spans are kept in memory."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def tracing(self) -> Tracing:
        return Tracing(tracer_provider=self.provider)

    def all(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    async def wait(self, count: int, within: float = 20.0) -> list[ReadableSpan]:
        """The finished spans, once there are at least ``count`` (a consumer span ends in
        its worker, possibly after the flow looked idle)."""
        deadline = time.monotonic() + within
        while len(found := self.all()) < count:
            assert time.monotonic() < deadline, [s.name for s in found]
            await anyio.sleep(0.02)
        return found

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.all() if s.name == name]


@pytest.fixture
def spans() -> Iterator[Spans]:
    kept = Spans()
    yield kept
    kept.provider.shutdown()


def attrs(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def ids(span: ReadableSpan) -> tuple[int, int]:
    """(trace id, span id)"""
    assert span.context is not None
    return span.context.trace_id, span.context.span_id


def test_names_are_the_semantic_conventions() -> None:
    """Each attribute name and operation type is the installed conventions package's."""
    from opentelemetry.semconv._incubating.attributes import messaging_attributes as m
    from opentelemetry.semconv.attributes import error_attributes

    assert otel.SYSTEM == m.MESSAGING_SYSTEM
    assert otel.DESTINATION == m.MESSAGING_DESTINATION_NAME
    assert otel.TEMPLATE == m.MESSAGING_DESTINATION_TEMPLATE
    assert otel.OPERATION_TYPE == m.MESSAGING_OPERATION_TYPE
    assert otel.OPERATION_NAME == m.MESSAGING_OPERATION_NAME
    assert otel.MESSAGE_ID == m.MESSAGING_MESSAGE_ID
    assert otel.BATCH_COUNT == m.MESSAGING_BATCH_MESSAGE_COUNT
    assert otel.GROUP == m.MESSAGING_CONSUMER_GROUP_NAME
    assert otel.SEND == m.MessagingOperationTypeValues.SEND.value
    assert otel.PROCESS == m.MessagingOperationTypeValues.PROCESS.value
    assert otel.ERROR_TYPE == error_attributes.ERROR_TYPE
    assert otel.REDIS not in {v.value for v in m.MessagingSystemValues}  # ours to name


def test_a_missing_dependency_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # import fails as if absent
    with pytest.raises(ConfigError, match=r"pip install opentelemetry-api \(the otel extra\)"):
        Tracing()


@by_kind(ALL)
async def test_every_kind_is_traced(
    kind: Kind, url: str, ns: str, r: aioredis.Redis, spans: Spans
) -> None:
    """A send, a retry, a batch, a delayed message (lists) and another client's message:
    one consumer span per attempt, child of its producer span (the retry too); another
    client's message starts a trace of its own."""
    flow = Flow(url, prefix=ns, middleware=[spans.tracing()], channel_headers=True)
    name = kind.name(ns)
    seen: list[Message[Any]] = []
    running: dict[int, int] = {}  # the span current in the handler -> the payload's n

    @kind.on(flow, name, max_attempts=3, **FAST)
    async def handle(payload: dict[str, int], msg: Message[Any]) -> None:
        seen.append(msg)
        running[trace.get_current_span().get_span_context().span_id] = payload["n"]
        if payload["n"] == 1 and msg.attempt == 1:
            raise RuntimeError("once")

    expected = 6 if kind.listy else 5  # attempts
    async with flow:
        sent = await kind.produce(flow, name, {"n": 1})
        await kind.produce_many(flow, name, [{"n": 2}, {"n": 3}])
        await kind.push_raw(r, name, b'{"n": 4}')
        if kind.listy:
            enqueue = flow.enqueue if kind.kind == "queue" else flow.enqueue_priority
            await enqueue(name, {"n": 5}, delay=0.2)
        found = await spans.wait(expected + (3 if kind.listy else 2))  # + producer spans
        await flow.wait_idle()
    assert sorted(m.payload["n"] for m in seen) == [1, 1, 2, 3, 4, 5][:expected]
    assert all(m.max_attempts == 3 for m in seen)
    producers = [s for s in found if s.kind is SpanKind.PRODUCER]
    consumers = [s for s in found if s.kind is SpanKind.CONSUMER]
    assert [s.name for s in producers] == [f"send {name}"] * len(producers)
    assert [s.name for s in consumers] == [f"process {name}"] * expected
    single, batch = producers[0], producers[1]
    assert attrs(single)["messaging.system"] == "redis"
    assert attrs(single)["messaging.destination.name"] == name
    assert attrs(single)["messaging.operation.type"] == "send"
    assert attrs(single).get("messaging.message.id") == sent  # None for a channel: no id
    assert attrs(batch)["messaging.batch.message_count"] == 2
    by_n: dict[int, list[ReadableSpan]] = {}
    for span in consumers:
        by_n.setdefault(running[ids(span)[1]], []).append(span)
    first, again = sorted(by_n[1], key=lambda s: attrs(s)["redisflow.message.attempt"])
    for attempt in (first, again):  # the retry stays in the producer's trace
        assert parent_of(attempt) == ids(single)[1]
        assert ids(attempt)[0] == ids(single)[0]
    assert attrs(first)["redisflow.outcome"] == "retry"
    assert first.status.status_code is StatusCode.ERROR
    assert [e.name for e in first.events] == ["exception"]
    assert attrs(first)["error.type"] == "RuntimeError"
    assert attrs(again)["redisflow.outcome"] == "ok"
    assert attrs(again)["redisflow.message.attempt"] == 2
    assert again.status.status_code is StatusCode.UNSET
    for n in (2, 3):  # a batch: one span, the parent of each of its messages
        assert [parent_of(s) for s in by_n[n]] == [ids(batch)[1]]
    (foreign,) = by_n[4]
    assert foreign.parent is None  # another client's message: a new trace
    assert ids(foreign)[0] not in {ids(p)[0] for p in producers}
    if kind.listy:  # the delayed message, in its producer's trace
        delayed = producers[2]
        assert [parent_of(s) for s in by_n[5]] == [ids(delayed)[1]]
    if kind.kind == "stream":
        assert attrs(first)["messaging.consumer.group.name"] == "g"


@by_kind(DURABLE)
async def test_a_replay_is_a_new_trace_linked_to_the_first(
    kind: Kind, url: str, ns: str, spans: Spans
) -> None:
    flow = Flow(url, prefix=ns, middleware=[spans.tracing()])
    name = kind.name(ns)
    calls: list[int] = []

    @kind.on(flow, name)
    async def handle(payload: dict[str, int], msg: Message[Any]) -> None:
        calls.append(msg.attempt)
        if len(calls) == 1:
            raise Reject("first time")

    async with flow:
        sent = await kind.produce(flow, name, {"n": 1})
        await spans.wait(2)
        await flow.wait_idle()
        assert await flow.dlq(name).replay() == 1
        await spans.wait(4)
        await flow.wait_idle()
    first_send, replay_send = spans.named(f"send {name}")
    first, second = spans.named(f"process {name}")
    assert attrs(first)["redisflow.outcome"] == "rejected"
    assert first.status.status_code is StatusCode.ERROR
    assert attrs(replay_send)["redisflow.reason"] == "replay"
    assert ids(replay_send)[0] != ids(first_send)[0]  # a new trace...
    links = [(link.context.trace_id, link.context.span_id) for link in replay_send.links]
    assert links == [ids(first_send)]  # ...linked to the first
    assert parent_of(second) == ids(replay_send)[1]
    assert ids(second)[0] == ids(replay_send)[0]
    assert attrs(second)["redisflow.outcome"] == "ok"
    if kind.kind != "stream":  # a queue message keeps its id; a stream entry gets a new one
        assert attrs(replay_send)["messaging.message.id"] == sent


async def test_channel_headers_off_start_a_new_trace(url: str, ns: str, spans: Spans) -> None:
    """Without ``channel_headers`` the channel carries plain JSON: no context travels."""
    flow = Flow(url, prefix=ns, middleware=[spans.tracing()])
    channel = f"{ns}:ch"

    @flow.on_channel(channel)
    async def handle(payload: Any) -> None:
        pass

    async with flow:
        assert await flow.publish(channel, {"n": 1}) == 1
        await spans.wait(2)
    (send,), (process,) = spans.named(f"send {channel}"), spans.named(f"process {channel}")
    assert process.parent is None
    assert ids(process)[0] != ids(send)[0]


async def test_a_pattern_names_the_channel_and_its_template(
    url: str, ns: str, spans: Spans
) -> None:
    flow = Flow(url, prefix=ns, middleware=[spans.tracing()], channel_headers=True)

    @flow.on_channel(f"{ns}:ch:*")
    async def handle(payload: Any) -> None:
        pass

    async with flow:
        await flow.publish(f"{ns}:ch:eu", {"n": 1}, sharded=False)
        await spans.wait(2)
    (process,) = spans.named(f"process {ns}:ch:*")
    assert attrs(process)["messaging.destination.name"] == f"{ns}:ch:eu"
    assert attrs(process)["messaging.destination.template"] == f"{ns}:ch:*"
    assert parent_of(process) == ids(spans.named(f"send {ns}:ch:eu")[0])[1]


async def test_each_outcome_is_recorded(url: str, ns: str, spans: Spans) -> None:
    """Retried, then dead-lettered; rejected; skipped; deferred (not failures: no error)."""
    flow = Flow(url, prefix=ns, middleware=[spans.tracing()])
    name = f"{ns}:q"
    deferred: list[int] = []

    @flow.on_queue(name, max_attempts=2, **FAST)
    async def handle(payload: dict[str, str]) -> None:
        what = payload["do"]
        if what == "fail":
            raise RuntimeError("always")
        if what == "retry":
            raise Retry(delay=0.01)
        if what == "reject":
            raise Reject("no")
        if what == "skip":
            raise Skip()
        if what == "defer" and not deferred:
            deferred.append(1)
            raise Defer(0.01)

    outcomes: dict[str, list[str]] = {}
    async with flow:
        for what in ("fail", "retry", "reject", "skip", "defer"):
            msg_id = await flow.enqueue(name, {"do": what})
            outcomes[msg_id or ""] = []
        await spans.wait(5 + 8)
        await flow.wait_idle()
    for span in spans.named(f"process {name}"):
        outcomes[attrs(span)["messaging.message.id"]].append(attrs(span)["redisflow.outcome"])
        failed = attrs(span)["redisflow.outcome"] in ("retry", "dead-lettered", "rejected")
        assert (span.status.status_code is StatusCode.ERROR) is failed
        assert bool(span.events) is failed
    assert list(outcomes.values()) == [
        ["retry", "dead-lettered"], ["retry", "dead-lettered"], ["rejected"], ["skipped"],
        ["deferred", "ok"],
    ]  # fmt: skip


async def test_a_handlers_send_continues_the_trace(url: str, ns: str, spans: Spans) -> None:
    """A send from a handler is a child of its consumer span: one trace across two hops."""
    flow = Flow(url, prefix=ns, middleware=[spans.tracing()])

    @flow.on_queue(f"{ns}:orders")
    async def order(payload: dict[str, int]) -> None:
        await flow.append(f"{ns}:shipments", payload)

    @flow.on_stream(f"{ns}:shipments", group="g")
    async def ship(payload: dict[str, int]) -> None:
        pass

    async with flow:
        await flow.enqueue(f"{ns}:orders", {"n": 1})
        await spans.wait(4)
        await flow.wait_idle()
    (send,), (process,) = spans.named(f"send {ns}:orders"), spans.named(f"process {ns}:orders")
    (forward,), (shipped,) = (
        spans.named(f"send {ns}:shipments"),
        spans.named(f"process {ns}:shipments"),
    )
    assert parent_of(process) == ids(send)[1]
    assert parent_of(forward) == ids(process)[1]
    assert parent_of(shipped) == ids(forward)[1]
    assert len({ids(s)[0] for s in (send, process, forward, shipped)}) == 1


async def test_a_failed_send_is_recorded(url: str, ns: str, spans: Spans) -> None:
    """The producer span of a send that raises carries the exception."""

    class Refuse(Middleware):
        async def produce(self, out: Any, call_next: Any) -> Any:
            raise ConnectionError("refused by policy")

    flow = Flow(url, prefix=ns, middleware=[spans.tracing(), Refuse()])
    try:
        with pytest.raises(ConnectionError):
            await flow.enqueue(f"{ns}:q", {"n": 1})
    finally:
        await flow.aclose()
    (send,) = spans.named(f"send {ns}:q")
    assert send.status.status_code is StatusCode.ERROR
    assert attrs(send)["error.type"] == "ConnectionError"


def test_the_global_provider_is_used_even_when_set_later() -> None:
    """``Tracing()`` without a provider uses the global one, also one set after it was
    built (in a child process: the tests never touch this process's global provider)."""
    code = """
import asyncio
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from redisflow import Outgoing
from redisflow.otel import Tracing

tracing = Tracing()
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)

async def send(out):
    return "an-id"

out = Outgoing("queue", "q", {"n": 1})
asyncio.run(tracing.produce(out, send))
(span,) = exporter.get_finished_spans()
assert span.name == "send q" and span.attributes["messaging.message.id"] == "an-id"
assert out.headers["traceparent"].split("-")[2] == format(span.context.span_id, "016x")
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "ok", done.stderr


async def test_a_schedule_run_is_a_consumer_span(url: str, ns: str, spans: Spans) -> None:
    """A schedule's run is a message nobody sent through the produce chain: a new trace."""
    flow = Flow(url, prefix=ns, middleware=[spans.tracing()])
    runs: list[Message[Any]] = []

    @flow.every(0.2, name="beat", max_attempts=4)
    async def beat(msg: Message[Any]) -> None:
        runs.append(msg)

    async with flow:
        (span,) = (await spans.wait(1))[:1]
    assert span.name == "process beat" and span.kind is SpanKind.CONSUMER
    assert span.parent is None
    assert attrs(span)["redisflow.kind"] == "schedule"
    assert attrs(span)["messaging.message.id"] == runs[0].id
    assert attrs(span)["redisflow.outcome"] == "ok"
    assert runs[0].max_attempts == 4
