"""Tracked messages: each message's status, attempts and last error, kept in a Redis hash.

Tutorial pattern "Pub/Sub + Hashes". There the message id is the time in milliseconds (two
messages in the same millisecond share one record), the subscriber learns of a message only
through Pub/Sub (one sent while it is down stays "published" forever), and the statistics
run ``KEYS msg:*`` (which blocks Redis while it walks every key) then one HGET per message.
Here ``Flow(track=True)`` gives each message (unique id) a status hash that the consumer
moves through published -> processing -> completed / failed / dead, with the attempt and the
error, expiring ``track_ttl`` after its last change; per-handler counters are kept as it
goes, so ``status_counts`` is one HGETALL. The queue keeps messages for an absent worker.

Run the worker:   redisflow run examples.tracked_messages:flow
Send and follow:  python -m examples.tracked_messages
"""

import asyncio

from pydantic import BaseModel

from redisflow import Flow, Message, Reject
from redisflow.features.tracking import MessageStatus

QUEUE = "examples:tracked_messages:messages"
FINAL = {"completed", "dead"}

flow = Flow(track=True, track_ttl=3600)  # $REDISFLOW_URL, else redis://localhost:6379/0


class Job(BaseModel):
    type: str
    ref: int
    amount: float = 0.0


# What produce() sends, for the AsyncAPI document (`redisflow docs`).
flow.produces(QUEUE, Job)


@flow.on_queue(QUEUE, max_attempts=3, retry_delay=0.2)
async def process(job: Job, msg: Message[Job]) -> None:
    if job.amount < 0:
        raise Reject(f"negative amount {job.amount}")  # dead at once: retrying cannot help
    if job.type == "payment" and msg.attempt == 1:
        raise TimeoutError("payment gateway timed out")  # retried after retry_delay
    print(f"[processed] {job.type} {job.ref} (attempt {msg.attempt})")


JOBS = [
    Job(type="order", ref=123, amount=99.99),
    Job(type="user", ref=456),
    Job(type="payment", ref=789, amount=99.99),  # fails once, then succeeds
    Job(type="refund", ref=790, amount=-5),  # rejected
]


async def produce(wait: float = 15.0) -> dict[str, MessageStatus | None]:
    """Send the jobs, follow them until each is finished (at most ``wait`` seconds), and
    print each one's record and the queue's counters; returns the records by message id."""
    ids = []
    for job in JOBS:
        msg_id = await flow.enqueue(QUEUE, job)
        assert msg_id is not None  # None only for a duplicate dedup_key
        ids.append(msg_id)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        records = {msg_id: await flow.status(msg_id) for msg_id in ids}
        if all(r and r.status in FINAL for r in records.values()) or loop.time() > deadline:
            break
        await asyncio.sleep(0.1)
    for job, (msg_id, r) in zip(JOBS, records.items(), strict=True):
        if r is None:
            print(f"{job.type} {job.ref}: no record (expired?)")
            continue
        error = f" (last error: {r.error})" if r.error else ""
        print(f"{job.type} {job.ref} [{msg_id}]: {r.status} after {r.attempts} attempt(s){error}")
    counts = await flow.status_counts(QUEUE)
    print("counters:", ", ".join(f"{name} {n}" for name, n in sorted(counts.items())))
    return records


async def main() -> None:
    """The producer process: send and follow, then close the producer's connections."""
    try:
        await produce()
    finally:
        await flow.aclose()


if __name__ == "__main__":
    asyncio.run(main())
