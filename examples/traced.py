"""Tracing: an OpenTelemetry span for every send and every handler attempt, on the console.

An order is queued; its handler fails on the first attempt (retried: a second span in the
same trace), then appends a shipment to a stream, whose handler runs in the same trace too.
``Tracing()`` carries the trace from the producer process to the worker in each message's
W3C ``traceparent`` header. Each process prints its spans with the SDK's
``ConsoleSpanExporter``, one line each (trace id, span id, parent span id, kind, name, and
the attempt and outcome of a handler's span): every line of both processes shows one trace
id.

Needs:            pip install opentelemetry-api opentelemetry-sdk (the otel extra and the SDK)
Run the worker:   redisflow run examples.traced:flow
Send:             python -m examples.traced
"""

import asyncio
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from pydantic import BaseModel

from redisflow import Flow, Message
from redisflow.otel import Tracing

ORDERS = "examples:traced:orders"
SHIPMENTS = "examples:traced:shipments"


def line(span: ReadableSpan) -> str:
    """A span on one line: ``[span] trace <id> span <id> parent <id or ->`` and what it is."""
    assert span.context is not None
    parent = f"{span.parent.span_id:016x}" if span.parent else "-"
    attributes = span.attributes or {}
    told = [f"{key.split('.')[-1]}={attributes[key]}" for key in SHOWN if key in attributes]
    return (
        f"[span] trace {span.context.trace_id:032x} span {span.context.span_id:016x}"
        f" parent {parent} {span.kind.name} {span.name!r} {' '.join(told)}\n"
    )


SHOWN = ("messaging.message.id", "redisflow.message.attempt", "redisflow.outcome", "error.type")

# A provider of the example's own, so that importing it (as the tests do) leaves the global
# one alone. An application usually sets the global one, and then ``Tracing()`` needs no
# argument: trace.set_tracer_provider(provider); Flow(middleware=[Tracing()]). A real one
# exports with a BatchSpanProcessor (and an OTLP exporter) rather than printing each span.
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(formatter=line)))
flow = Flow(middleware=[Tracing(tracer_provider=provider)])  # $REDISFLOW_URL, else localhost


class Order(BaseModel):
    id: int
    item: str


@flow.on_queue(ORDERS, max_attempts=3, retry_delay=0.2)
async def take(order: Order, msg: Message[Order]) -> None:
    if msg.attempt == 1:
        raise TimeoutError("payment gateway timed out")  # retried, in the same trace
    await flow.append(SHIPMENTS, {"order": order.id, "item": order.item})  # a child span
    print(f"[orders] order {order.id} taken on attempt {msg.attempt}")


@flow.on_stream(SHIPMENTS, group="shipping")
async def ship(shipment: dict[str, Any]) -> None:
    print(f"[shipments] shipping order {shipment['order']}")


async def produce() -> str | None:
    """Queue one order (its send span prints here)."""
    msg_id = await flow.enqueue(ORDERS, Order(id=1, item="kettle"))
    print(f"queued order 1 as {msg_id}")
    return msg_id


async def main() -> None:
    """The producer process: send, then close the connections and flush the spans."""
    try:
        await produce()
    finally:
        await flow.aclose()
        provider.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
