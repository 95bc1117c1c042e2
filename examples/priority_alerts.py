"""Priority alerts: the most urgent waiting alert is handled first, FIFO within a level.

Tutorial pattern "Pub/Sub + Sorted Sets". There the score is ``priority * 1e6 + time()``:
the timestamp (1.7e9) dwarfs the priority bands, so the statistics by score range put every
message in "low"; two identical messages collapse into one member; and ZRANGE, handle, ZREM
lets two consumers handle the same message. Here ``enqueue_priority`` orders by level
(0 = most urgent, up to 8191), then by a sequence number; a worker leases what it takes
(at-least-once, and no two workers hold one message); ``priority_stats`` counts each level
exactly.

Send a backlog:   python -m examples.priority_alerts
Then drain it:    redisflow run examples.priority_alerts:flow
(alerts that waited are handled most urgent first; with the worker already running, each
alert is simply handled as it arrives)
"""

import asyncio

from pydantic import BaseModel

from redisflow import Flow

QUEUE = "examples:priority_alerts:alerts"
LEVELS = {0: "critical", 1: "high", 2: "normal", 3: "low"}

flow = Flow()  # $REDISFLOW_URL, else redis://localhost:6379/0


class Alert(BaseModel):
    id: str
    text: str
    level: int


# What produce() sends, for the AsyncAPI document (`redisflow docs`).
flow.produces(QUEUE, Alert, kind="priority", summary="At the level of the alert")


@flow.on_priority(QUEUE, concurrency=1)  # one at a time, so the order is plain to see
async def handle(alert: Alert) -> None:
    print(f"[alert] {LEVELS[alert.level]:>8}: {alert.id} {alert.text}")
    await asyncio.sleep(0.05)


ALERTS = [
    Alert(id="msg-1", text="Normal task", level=2),
    Alert(id="msg-2", text="Critical alert!", level=0),
    Alert(id="msg-3", text="Low priority task", level=3),
    Alert(id="msg-4", text="High priority task", level=1),
    Alert(id="msg-5", text="Another critical", level=0),
    Alert(id="msg-6", text="Normal task 2", level=2),
]


async def produce() -> dict[int, int]:
    """Queue the tutorial's six alerts; returns how many wait at each level."""
    for alert in ALERTS:
        await flow.enqueue_priority(QUEUE, alert, priority=alert.level)
        print(f"queued {alert.id} as {LEVELS[alert.level]}")
    stats = await flow.priority_stats(QUEUE)
    waiting = ", ".join(f"{LEVELS.get(level, level)} {n}" for level, n in sorted(stats.items()))
    print(f"waiting: {waiting or 'none (a worker took them)'}")
    return stats


async def main() -> None:
    """The producer process: send, then close the producer's connections."""
    try:
        await produce()
    finally:
        await flow.aclose()


if __name__ == "__main__":
    asyncio.run(main())
