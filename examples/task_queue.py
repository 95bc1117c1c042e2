"""A task queue with notifications: the list holds the tasks, Pub/Sub only announces them.

Tutorial pattern "Pub/Sub + Lists". There the channel and the list both carry every task and
the hybrid consumer handles each one twice (once per path); RPUSH and PUBLISH are separate
calls, and BLPOP loses a task whose worker dies before finishing it. Here the list is the
single source of truth: ``enqueue(..., notify=...)`` pushes and publishes in one atomic step,
the queue handler is the only one that does the work (at-least-once: a task leaves Redis when
it is done), and the channel handler just watches.

Run the worker:   redisflow run examples.task_queue:flow
Send tasks:       python -m examples.task_queue
"""

import asyncio

from pydantic import BaseModel

from redisflow import Flow, Message

QUEUE = "examples:task_queue:jobs"
CHANNEL = "examples:task_queue:new"

flow = Flow()  # $REDISFLOW_URL, else redis://localhost:6379/0


class Task(BaseModel):
    id: str
    type: str
    order_id: int


# What produce() sends, for the AsyncAPI document (`redisflow docs`).
flow.produces(QUEUE, Task)
flow.produces(CHANNEL, Task, kind="channel", summary="The same task, to listeners")


@flow.on_queue(QUEUE, concurrency=4)
async def process(task: Task, msg: Message[Task]) -> None:
    """Does the work: each task once (again only if a worker died while holding it)."""
    await asyncio.sleep(0.1)  # the work
    print(f"[queue] processed {task.id}: {task.type} {task.order_id} (attempt {msg.attempt})")


@flow.on_channel(CHANNEL)
async def announce(task: Task) -> None:
    """Hears of every new task while it runs (a dashboard, say); never does the work."""
    print(f"[channel] new task {task.id}")


async def produce(count: int = 10) -> list[str]:
    """Queue ``count`` tasks, each announced on the channel; returns their message ids."""
    ids = []
    for i in range(1, count + 1):
        task = Task(id=f"task-{i}", type="process_order", order_id=i)
        msg_id = await flow.enqueue(QUEUE, task, notify=CHANNEL)
        assert msg_id is not None  # None only for a duplicate dedup_key
        ids.append(msg_id)
        print(f"queued {task.id} (message {msg_id})")
    print(f"{await flow.redis.llen(QUEUE)} task(s) waiting in {QUEUE}")
    return ids


async def main() -> None:
    """The producer process: send, then close the producer's connections."""
    try:
        await produce()
    finally:
        await flow.aclose()


if __name__ == "__main__":
    asyncio.run(main())
