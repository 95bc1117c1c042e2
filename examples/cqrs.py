"""CQRS: commands in a stream, events out, and a read model in hashes that queries read.

Tutorial pattern "Hybrid Architectural Patterns", Pattern 2 (CQRS). There one call appends
the command, publishes it as the event and updates the read model, in three separate steps
and without validating anything: a command that should fail still becomes an event, a crash
between the steps leaves the read model disagreeing with the log, and two writers race.
Here commands go to a stream read by a consumer group (at-least-once). The handler
decides on each command against the account's current state and, in one MULTI/EXEC guarded
by WATCH, appends the event and updates the read model hash; a per-command marker written in
the same transaction makes a redelivered command a no-op. Queries read only the hash.

Run the worker:   redisflow run examples.cqrs:flow
Send commands:    python -m examples.cqrs
"""

import asyncio
import uuid
from typing import Literal

from pydantic import BaseModel, Field
from redis.asyncio.client import Pipeline

from redisflow import Flow

COMMANDS = "examples:cqrs:commands"
EVENTS = "examples:cqrs:events"
ACCOUNT = "examples:cqrs:account:{}"  # the read model: a hash of balance, version, last_event
APPLIED = "examples:cqrs:applied:{}"  # per command id: the event it produced, kept for a day

flow = Flow()  # $REDISFLOW_URL, else redis://localhost:6379/0


class Command(BaseModel):
    id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    account: str
    action: Literal["deposit", "withdraw"]
    amount: int = Field(gt=0)


EventType = Literal["deposited", "withdrawn", "withdrawal_rejected"]


class Event(BaseModel):
    type: EventType
    account: str
    amount: int
    command: str


flow.produces(COMMANDS, Command, kind="stream", summary="Commands of the client side")
flow.produces(EVENTS, Event, kind="stream", summary="Events of the write side")


@flow.on_stream(COMMANDS, group="accounts", concurrency=1)  # in stream order, per worker
async def execute(cmd: Command) -> None:
    """The write side: decide, then record the event and update the read model at once."""
    account, applied = ACCOUNT.format(cmd.account), APPLIED.format(cmd.id)

    async def decide(pipe: Pipeline) -> str:
        # Reads on a WATCHing pipeline run at once; if another writer changes a watched key
        # before EXEC, the transaction fails and redis-py calls decide() again.
        if await pipe.exists(applied):
            return "already applied"  # a redelivered command
        balance = int(await pipe.hget(account, "balance") or 0)
        delta = cmd.amount if cmd.action == "deposit" else -cmd.amount
        kind: EventType = "deposited" if delta > 0 else "withdrawn"
        if balance + delta < 0:
            kind, delta = "withdrawal_rejected", 0
        event = Event(type=kind, account=cmd.account, amount=cmd.amount, command=cmd.id)
        pipe.multi()
        pipe.xadd(EVENTS, {"data": event.model_dump_json()})  # redisflow's stream format
        pipe.hincrby(account, "balance", delta)
        pipe.hincrby(account, "version", 1)
        pipe.hset(account, "last_event", kind)
        pipe.set(applied, kind, ex=86400)
        return kind

    outcome = await flow.redis.transaction(decide, account, applied, value_from_callable=True)
    print(f"[command] {cmd.action} {cmd.amount} on {cmd.account}: {outcome}")


@flow.on_stream(EVENTS, group="notifier")
async def notify(event: Event) -> None:
    """Another service reacting to the events (a consumer group of its own)."""
    print(f"[event] {event.type} {event.amount} on {event.account}")


async def query(account: str) -> dict[str, str]:
    """The read side: one HGETALL of the read model (empty for an unknown account)."""
    fields = await flow.redis.hgetall(ACCOUNT.format(account))
    return {key.decode(): value.decode() for key, value in fields.items()}


async def produce(wait: float = 15.0) -> dict[str, dict[str, str]]:
    """Send the commands, wait (at most ``wait`` seconds) until all are applied, then query
    the read model; returns it by account."""
    commands = [
        Command(account="alice", action="deposit", amount=100),
        Command(account="alice", action="withdraw", amount=30),
        Command(account="bob", action="deposit", amount=50),
        Command(account="alice", action="withdraw", amount=500),  # more than alice has
        Command(account="alice", action="deposit", amount=5),
    ]
    for cmd in commands:
        await flow.append(COMMANDS, cmd)
        print(f"sent {cmd.action} {cmd.amount} on {cmd.account}")
    # The read model is eventually consistent: it is up to date once every command is applied.
    markers = [APPLIED.format(cmd.id) for cmd in commands]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while await flow.redis.exists(*markers) < len(markers):
        if loop.time() > deadline:
            print("not every command is applied yet: is the worker running?")
            break
        await asyncio.sleep(0.05)
    accounts = {name: await query(name) for name in ("alice", "bob")}
    for name, model in accounts.items():
        print(f"{name}: {model}")
    return accounts


async def main() -> None:
    """The producer process: send and query, then close the producer's connections."""
    try:
        await produce()
    finally:
        await flow.aclose()


if __name__ == "__main__":
    asyncio.run(main())
