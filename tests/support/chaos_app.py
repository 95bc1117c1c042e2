"""The worker app of the fault-injection tests, run as a real worker process:
``redisflow run tests.support.chaos_app:flow --url URL`` (started by ``tests/support/workers.py``).

It is configured by environment variables:

- ``CHAOS_URL``: the Redis URL (the tests also pass ``--url``);
- ``CHAOS_NS``: the key prefix; the sources are ``<ns>:queue``, ``<ns>:priority`` and
  ``<ns>:stream`` (group ``g``);
- ``CHAOS_KINDS``: the kinds to consume, comma-separated (default: all three);
- ``CHAOS_OUT``: a directory; each process appends its records to ``<out>/<pid>.rec``;
- ``CHAOS_FLOW``, ``CHAOS_HANDLER``: JSON objects of ``Flow`` and handler keyword arguments;
- ``CHAOS_SLEEP``: ``lo,hi``: each handler sleeps a uniform time in [lo, hi] seconds, unless
  the payload has its own ``sleep``;
- ``CHAOS_RECORD``: ``0`` to record nothing (for a million messages);
- ``CHAOS_RATE``: ``limit,per``: a ``RateLimit`` per payload priority ``p`` (the key);
- ``CHAOS_EVERY``: ``period,missed``: a schedule ``<ns>:tick`` (``@flow.every``), whose
  runs are recorded with the kind ``schedule`` and the tick's time in ms as the number.

Each process leaves ``<out>/<pid>.ready`` once it has started (its signal handlers are in
place: a SIGTERM from then on is a graceful stop).

A record is one line written with a single ``os.write`` (so it survives ``kill -9``):
``<event> <kind> <n> <attempt> <monotonic time>``, where the event is ``S`` when a handler
starts, ``E`` when it returns and ``C`` when it is cancelled. CLOCK_MONOTONIC is shared by
every process of the machine, so the tests compare these times with their own.
"""

from __future__ import annotations

import json
import os
import random
import time

import anyio
import anyio.lowlevel
from pydantic import BaseModel

from redisflow import Flow, Message, RateLimit


class Job(BaseModel):
    """The payload: a number unique per source, a priority, an optional handler time."""

    n: int
    p: int = 0
    sleep: float | None = None


NS = os.environ["CHAOS_NS"]
KINDS = [k for k in os.environ.get("CHAOS_KINDS", "queue,priority,stream").split(",") if k]
LO, HI = (float(x) for x in os.environ.get("CHAOS_SLEEP", "0,0").split(","))
OPTIONS = json.loads(os.environ.get("CHAOS_HANDLER", "{}"))
RECORD = os.environ.get("CHAOS_RECORD", "1") != "0"
if os.environ.get("CHAOS_RATE"):
    _limit, _per = os.environ["CHAOS_RATE"].split(",")
    OPTIONS["rate_limit"] = RateLimit(int(_limit), per=float(_per), key=lambda job: str(job.p))

flow = Flow(os.environ["CHAOS_URL"], prefix=NS, **json.loads(os.environ.get("CHAOS_FLOW", "{}")))
_fd = os.open(
    os.path.join(os.environ["CHAOS_OUT"], f"{os.getpid()}.rec"),
    os.O_WRONLY | os.O_CREAT | os.O_APPEND,
    0o644,
)


@flow.on_startup
def ready() -> None:
    """Leave ``<out>/<pid>.ready``: from now on SIGTERM stops this worker gracefully."""
    open(os.path.join(os.environ["CHAOS_OUT"], f"{os.getpid()}.ready"), "w").close()


def record(event: str, msg: Message[Job], job: Job) -> None:
    """Append one record line (one write: a killed process leaves whole lines)."""
    line = f"{event} {msg.source.kind} {job.n} {msg.attempt} {time.monotonic():.6f}\n"
    os.write(_fd, line.encode())


async def handle(job: Job, msg: Message[Job]) -> None:
    """Record the start, sleep, record the end (or the cancellation)."""
    if not RECORD:
        await anyio.lowlevel.checkpoint()
        return
    record("S", msg, job)
    try:
        await anyio.sleep(job.sleep if job.sleep is not None else random.uniform(LO, HI))
    except anyio.get_cancelled_exc_class():
        record("C", msg, job)
        raise
    record("E", msg, job)


for _kind in KINDS:
    _name = f"{NS}:{_kind}"
    if _kind == "queue":
        flow.on_queue(_name, **OPTIONS)(handle)
    elif _kind == "priority":
        flow.on_priority(_name, **OPTIONS)(handle)
    else:
        flow.on_stream(_name, group="g", **OPTIONS)(handle)


if os.environ.get("CHAOS_EVERY"):
    _period, _missed = os.environ["CHAOS_EVERY"].split(",")

    @flow.every(float(_period), name=f"{NS}:tick", missed=_missed, **OPTIONS)  # type: ignore[arg-type]
    async def tick(msg: Message[None]) -> None:
        """Record the run of a tick: its time (ms) is its number."""
        assert msg.scheduled_for is not None
        job = Job(n=round(msg.scheduled_for.timestamp() * 1000))
        await handle(job, msg)  # type: ignore[arg-type]
