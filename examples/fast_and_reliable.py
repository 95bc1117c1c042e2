"""Fast path + reliable path: every event goes to live listeners and to a durable stream.

Tutorial pattern "Hybrid Architectural Patterns", Pattern 1 (Fast Path + Reliable Path).
There PUBLISH and XADD are separate calls (a crash between them gives the live listeners an
event the log never records), ``xadd(stream, event)`` fails on any nested value, and the
reliable reader calls XREADGROUP once, on a group nobody created, and never acknowledges.
Here ``publish(..., durable=STREAM)`` publishes and appends in one atomic step (and
``maxlen`` keeps the log bounded, which the tutorial's never was). The channel
handler gets events at once but only while it runs (at-most-once); the stream handler's
consumer group gets every event, including those sent while no worker ran, and acks each
one when its handler is done (at-least-once).

Run the worker:   redisflow run examples.fast_and_reliable:flow
Send events:      python -m examples.fast_and_reliable
(send some with the worker stopped: only the reliable path gets them when it starts)
"""

import asyncio

from pydantic import BaseModel

from redisflow import Flow

CHANNEL = "examples:fast_and_reliable:live"
STREAM = "examples:fast_and_reliable:log"
KEEP = 10_000  # entries the log keeps (approximately: MAXLEN ~)

flow = Flow()  # $REDISFLOW_URL, else redis://localhost:6379/0


class Event(BaseModel):
    n: int
    kind: str


# What produce() sends, for the AsyncAPI document (`redisflow docs`).
flow.produces(CHANNEL, Event, kind="channel", summary="Live, at most once")
flow.produces(STREAM, Event, kind="stream", summary="The same event, kept")


@flow.on_channel(CHANNEL)
async def live(event: Event) -> None:
    """The fast path: a live dashboard, say; misses what happens while it is down."""
    print(f"[fast] event {event.n}: {event.kind}")


@flow.on_stream(STREAM, group="billing")
async def reliable(event: Event) -> None:
    """The reliable path: billing must see every event, even after an outage."""
    print(f"[reliable] event {event.n}: {event.kind}")


async def produce(first: int = 1, count: int = 3) -> list[int]:
    """Send events ``first``.. ``first + count - 1``; returns each one's live receivers."""
    receivers = []
    for n in range(first, first + count):
        event = Event(n=n, kind="order.created")
        live_now = await flow.publish(CHANNEL, event, durable=STREAM, maxlen=KEEP)
        assert live_now is not None  # None only for a duplicate dedup_key
        receivers.append(live_now)
        print(f"sent event {n}: {live_now} live listener(s), and kept in {STREAM}")
    return receivers


async def main() -> None:
    """The producer process: send, then close the producer's connections."""
    try:
        await produce()
    finally:
        await flow.aclose()


if __name__ == "__main__":
    asyncio.run(main())
