"""A scheduled job: every 2 seconds, roll up the events appended to a stream since the
previous tick, once per tick however many workers run.

``@flow.every(2)`` ticks on the multiples of 2 s. Each tick is claimed once in Redis (no
leader, whatever the number of worker processes) and run as a message: a failure is retried,
every delivery has the same ``msg.id``, ``msg.scheduled_for`` is the tick. The rollup counts
the entries whose ids (their time) fall in the tick's window, so its result does not depend
on when the run starts; ``missed="once"`` makes a run after an outage count every window it
stands for. A cron schedule (``@flow.cron``, six fields: seconds first) prints a report every
5 seconds; ``pip install cronsim`` for it.

Run the workers (one, or several):  redisflow run examples.scheduled_job:flow --workers 2
Append events and read the totals:  python -m examples.scheduled_job
"""

import asyncio
import time

from redisflow import Flow, Message

EVENTS = "examples:scheduled_job:events"
TOTALS = "examples:scheduled_job:totals"  # hash: tick (ms) -> events in the window before it
PERIOD_MS = 2000

flow = Flow()  # $REDISFLOW_URL, else redis://localhost:6379/0


@flow.every(PERIOD_MS / 1000, name="examples:scheduled_job:rollup", missed="once", timeout=10)
async def rollup(msg: Message) -> None:
    """Count the events of the windows this run stands for (one, or more after an outage)."""
    assert msg.scheduled_for is not None and isinstance(msg.payload, dict)
    end = round(msg.scheduled_for.timestamp() * 1000)
    start = end - PERIOD_MS * (1 + msg.payload["missed"])
    events = await flow.redis.xrange(EVENTS, min=str(start), max=f"({end}")
    await flow.redis.hset(TOTALS, str(end), len(events))
    print(f"[rollup] {msg.scheduled_for:%H:%M:%S}: {len(events)} events (run {msg.id})")


@flow.cron("*/5 * * * * *", name="examples:scheduled_job:report")
async def report(msg: Message) -> None:
    """Say how many events the stream holds."""
    print(f"[report] {msg.scheduled_for:%H:%M:%S}: {await flow.redis.xlen(EVENTS)} events")


async def produce(count: int = 20, every: float = 0.2) -> dict[int, int]:
    """Append ``count`` events ``every`` seconds apart, wait until the rollups cover the
    last one, and return the totals by tick."""
    last = 0
    for n in range(count):
        entry = await flow.append(EVENTS, {"n": n})
        last = int(entry.split("-")[0])
        await asyncio.sleep(every)
    print(f"appended {count} events to {EVENTS}")
    deadline = time.monotonic() + 30
    totals: dict[int, int] = {}
    while time.monotonic() < deadline:
        totals = {int(k): int(v) for k, v in (await flow.redis.hgetall(TOTALS)).items()}
        if totals and max(totals) > last:
            break
        await asyncio.sleep(0.2)
    print(f"rolled up {sum(totals.values())} events in {len(totals)} ticks")
    await flow.aclose()
    return totals


if __name__ == "__main__":
    asyncio.run(produce())
