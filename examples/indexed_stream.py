"""An indexed stream: find a stream's events by type or entity without reading the stream.

Tutorial pattern "Streams + Data Structures" (Stream Index with Sets). There XADD and the two
SADDs are separate calls (a crash between them leaves an entry unindexed), the queries
return SMEMBERS in no particular order with one XRANGE round trip per entry, and the index
sets keep the ids of entries long trimmed from the stream. Here ``append(..., index=...)``
adds the entry and its index entries in one atomic step, and ``find`` answers in one round
trip, in stream order (or newest first, with a limit), intersecting several criteria and
dropping ids whose entries were trimmed. A consumer group reads the same stream as usual.

Run the worker:   redisflow run examples.indexed_stream:flow
Append and query: python -m examples.indexed_stream
"""

import asyncio
from typing import Any

from pydantic import BaseModel

from redisflow import Flow, Message

STREAM = "examples:indexed_stream:events"

flow = Flow()  # $REDISFLOW_URL, else redis://localhost:6379/0


class Event(BaseModel):
    event_type: str
    entity_id: str
    data: dict[str, Any] = {}


# What produce() sends, for the AsyncAPI document (`redisflow docs`).
flow.produces(STREAM, Event, kind="stream", summary="Indexed by field values")


@flow.on_stream(STREAM, group="audit")
async def audit(event: Event, msg: Message[Event]) -> None:
    print(f"[audit] {msg.id}: {event.event_type} for {event.entity_id}")


EVENTS = [
    Event(event_type="user_login", entity_id="user-123", data={"ip": "192.168.1.1"}),
    Event(event_type="user_logout", entity_id="user-123", data={"duration": 3600}),
    Event(event_type="user_login", entity_id="user-456", data={"ip": "192.168.1.2"}),
    Event(event_type="order_created", entity_id="user-123", data={"amount": 99.99}),
]


async def produce() -> dict[str, list[tuple[str, Event]]]:
    """Append the tutorial's events with indexes, then query them; returns the answers."""
    for event in EVENTS:
        entry_id = await flow.append(
            STREAM, event, index=("event_type", "entity_id"), maxlen=10_000
        )
        print(f"appended {entry_id}: {event.event_type} for {event.entity_id}")
    answers: dict[str, list[tuple[str, Event]]] = {
        "login events": await flow.find(STREAM, event_type="user_login", model=Event),
        "events of user-123": await flow.find(STREAM, entity_id="user-123", model=Event),
        "logins of user-123": await flow.find(
            STREAM, event_type="user_login", entity_id="user-123", model=Event
        ),
        "latest event of user-123": await flow.find(
            STREAM, entity_id="user-123", newest_first=True, limit=1, model=Event
        ),
    }
    for question, found in answers.items():
        print(f"{question}:")
        for entry_id, event in found:
            print(f"  {entry_id}: {event.event_type} {event.entity_id} {event.data}")
    return answers


async def main() -> None:
    """The producer process: append and query, then close the producer's connections."""
    try:
        await produce()
    finally:
        await flow.aclose()


if __name__ == "__main__":
    asyncio.run(main())
