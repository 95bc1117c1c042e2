"""Event deduplication: each distinct event is handled once per window.

Tutorial pattern "Pub/Sub + Sets". There SISMEMBER and SADD are separate calls, so two
producers racing on the same event both get through; one EXPIRE covers the whole set and is
pushed back by every new event, so under steady traffic nothing is ever forgotten (and the
set grows without bound); events published while no subscriber listens are lost. Here
``dedup_key`` is checked and recorded in the same atomic step as the send, with a TTL per key
(SET NX PX), on a queue that keeps events until a worker takes them. The handler's
``idempotency_key`` also catches copies that came in another way (a producer without a dedup
key, a redelivery after a crash): each fingerprint is handled once per window.

Run the worker:   redisflow run examples.dedup_events:flow
Send events:      python -m examples.dedup_events
"""

import asyncio

from pydantic import BaseModel

from redisflow import Flow

QUEUE = "examples:dedup_events:events"
WINDOW = 60.0  # seconds an event's fingerprint is remembered

flow = Flow()  # $REDISFLOW_URL, else redis://localhost:6379/0


class Event(BaseModel):
    id: int
    type: str
    entity_id: str
    action: str

    @property
    def fingerprint(self) -> str:
        """What makes two events the same (the tutorial's md5 adds nothing to a Redis key)."""
        return f"{self.type}:{self.entity_id}:{self.action}"


# What produce() sends, for the AsyncAPI document (`redisflow docs`).
flow.produces(QUEUE, Event, summary="Once per fingerprint per window")


@flow.on_queue(QUEUE, idempotency_key=lambda event: event.fingerprint, idempotency_ttl=WINDOW)
async def handle(event: Event) -> None:
    print(f"[handled] event {event.id}: {event.fingerprint}")


EVENTS = [
    Event(id=1, type="user", entity_id="user-123", action="login"),
    Event(id=2, type="user", entity_id="user-456", action="login"),
    Event(id=3, type="user", entity_id="user-123", action="login"),  # duplicate of 1
    Event(id=4, type="order", entity_id="order-789", action="created"),
    Event(id=5, type="user", entity_id="user-123", action="login"),  # duplicate of 1
]


async def produce() -> list[int]:
    """Send the tutorial's five events (two are duplicates); returns the ids that were sent."""
    sent = []
    for event in EVENTS:
        msg_id = await flow.enqueue(QUEUE, event, dedup_key=event.fingerprint, dedup_ttl=WINDOW)
        if msg_id is None:
            print(f"dropped event {event.id}: {event.fingerprint} was seen in the last {WINDOW:g}s")
        else:
            print(f"sent event {event.id}: {event.fingerprint}")
            sent.append(event.id)
    # Another client sends event 1 again, without a dedup key: the handler skips it.
    await flow.enqueue(QUEUE, EVENTS[0])
    print("sent event 1 once more without a dedup key (the handler will skip it)")
    return sent


async def main() -> None:
    """The producer process: send, then close the producer's connections."""
    try:
        await produce()
    finally:
        await flow.aclose()


if __name__ == "__main__":
    asyncio.run(main())
