"""The Lua scripts, each behind a function that names its KEYS and ARGV.

Every script is ``lua/prelude.lua`` (shared helpers and the priority ``SHIFT``) followed by
its own file; it runs with ``EVALSHA`` and is loaded on the node that answers ``NOSCRIPT``.
Each one declares every key it touches, so all keys of a call share one cluster slot.
Scripts carry no ``#!lua`` shebang on purpose: without one, Redis refuses a script for
``maxmemory`` only at its first write, never half way, so a consumer can still drain a full
Redis (docs/design.md, "Scripts").
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .priority import SHIFT

_LUA = Path(__file__).with_name("lua")  # (not importlib.resources: 15 ms of import)


def _read(name: str) -> str:
    return (_LUA / f"{name}.lua").read_text()


_PRELUDE = _read("prelude").replace("{SHIFT}", str(SHIFT))


class Script:
    """A Lua script of ``lua/``, with the prelude prepended."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.source = _PRELUDE + _read(name)
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()

    def __repr__(self) -> str:
        return f"Script({self.name!r})"


@dataclass(frozen=True, slots=True)
class Call:
    """One run of a script: its keys and arguments (``command()`` is the EVALSHA)."""

    script: Script
    keys: tuple[str, ...]
    argv: tuple[Any, ...]

    def command(self) -> list[Any]:
        """The ``EVALSHA`` command of this call."""
        return ["EVALSHA", self.script.sha, len(self.keys), *self.keys, *self.argv]


QUEUE_FETCH = Script("queue_fetch")
PRIORITY_FETCH = Script("priority_fetch")
RELEASE = Script("release")
RECOVER = Script("recover")
MAINTAIN = Script("maintain")
DELAY = Script("delay")
PRODUCE = Script("produce")
PRIORITY_PUSH = Script("priority_push")
PRIORITY_STATS = Script("priority_stats")
FIND = Script("find")
PRUNE_INDEX = Script("prune_index")
RATELIMIT = Script("ratelimit")
IDEMPOTENCY = Script("idempotency")
STREAM_CLAIM = Script("stream_claim")
STREAM_OWN = Script("stream_own")
STREAM_FORGET = Script("stream_forget")
STREAM_BURY = Script("stream_bury")
DLQ_REPLAY = Script("dlq_replay")
LAYOUT = Script("layout")
SCHEDULE = Script("schedule")

#: What a fetch link loads when it connects.
QUEUE_SCRIPTS = (QUEUE_FETCH,)
PRIORITY_SCRIPTS = (PRIORITY_FETCH, QUEUE_FETCH)
STREAM_SCRIPTS = (STREAM_OWN,)


def queue_fetch(queue: str, batch: str, batches: str, acks: Sequence[str], count: int) -> Call:
    """Delete the finished batches ``acks``, then move up to ``count`` items of ``queue``
    into the new batch list ``batch`` (registered in the worker's set ``batches``)."""
    return Call(QUEUE_FETCH, (queue, batch, batches, *acks), (count,))


def priority_fetch(
    queue: str, batch: str, batches: str, wake: str, acks: Sequence[str], count: int
) -> Call:
    """As ``queue_fetch`` for a sorted set, most urgent first; an empty queue answers the id
    of its last wake-up."""
    return Call(PRIORITY_FETCH, (queue, batch, batches, wake, *acks), (count,))


def release(
    queue: str,
    leases: str,
    batches: str,
    *,
    mode: str,
    worker: str,
    drop: Sequence[str],
    whole: Sequence[str],
    items: Sequence[Any],
) -> Call:
    """Give a live worker's messages back: ``items`` (the unfinished ones of the batches
    ``drop``) and every message of the batches ``whole``; drops the lease when none is left."""
    return Call(RELEASE, (queue, leases, batches, *drop, *whole), (mode, worker, len(drop), *items))


def recover(
    queue: str,
    leases: str,
    dead_batches: str,
    batch: str,
    batches: str,
    held: Sequence[str],
    *,
    mode: str,
    worker: str,
    max_attempts: int,
) -> Call:
    """Give back the batches ``held`` of the dead ``worker`` (set ``dead_batches``), one
    attempt counted each; those past ``max_attempts`` move into our new ``batch``."""
    keys = (queue, leases, dead_batches, batch, batches, *held)
    return Call(RECOVER, keys, (mode, worker, max_attempts))


def maintain(
    queue: str,
    delayed: str,
    leases: str,
    seq: str,
    wake: str,
    *,
    mode: str,
    worker: str,
    lease_ms: int,
    max_moved: int,
) -> Call:
    """Renew ``worker``'s lease, move due delayed messages back, list expired workers."""
    return Call(MAINTAIN, (queue, delayed, leases, seq, wake), (mode, worker, lease_ms, max_moved))


def delay(delayed: str, delay_ms: int, members: Sequence[bytes]) -> Call:
    """Add ``members`` to the delayed set, due ``delay_ms`` from now (server time)."""
    return Call(DELAY, (delayed,), (delay_ms, *members))


def produce(
    dedup: str | None,
    ttl_ms: int,
    keys: Sequence[tuple[str, str]],
    commands: Iterable[Sequence[Any]],
) -> Call:
    """Run ``commands`` atomically, unless ``dedup`` was seen within ``ttl_ms``. ``keys``:
    every key they touch with its expected type (``-``: any), checked before any write."""
    argv: list[Any] = [ttl_ms or 1 if dedup else 0, len(keys)]
    argv += [kind for _, kind in keys]
    for command in commands:
        argv += (len(command), *command)
    names = tuple(key for key, _ in keys)
    return Call(PRODUCE, (dedup, *names) if dedup else names, tuple(argv))


def priority_push(
    queue: str,
    seq: str,
    wake: str,
    items: Sequence[tuple[int, bytes]],
    *,
    dedup: str | None = None,
    ttl_ms: int = 0,
) -> Call:
    """Add ``(priority, item)`` pairs with exact scores, unless ``dedup`` was seen."""
    argv: list[Any] = [ttl_ms or 1] if dedup else []
    for level, item in items:
        argv += (level, item)
    keys = (queue, seq, wake, dedup) if dedup else (queue, seq, wake)
    return Call(PRIORITY_PUSH, keys, tuple(argv))


def priority_stats(queue: str) -> Call:
    """The number of messages per priority level in use."""
    return Call(PRIORITY_STATS, (queue,), ())


def find(stream: str, index_keys: Sequence[str], limit: int, newest_first: bool) -> Call:
    """The entries whose ids are in every set of ``index_keys``, in stream order."""
    return Call(FIND, (stream, *index_keys), (limit, int(newest_first)))


def prune_index(stream: str, registry: str, index_keys: Sequence[str]) -> Call:
    """Drop the index entries of ``stream`` whose entries were trimmed."""
    return Call(PRUNE_INDEX, (stream, registry, *index_keys), ())


def ratelimit(key: str, mode: str, limit: int, window_us: int, burst: int, member: str) -> Call:
    """One rate-limit decision on ``key``: 0 if granted, else the ms to wait."""
    return Call(RATELIMIT, (key,), (mode, limit, window_us, burst, member))


def idempotency(record: str, op: str, token: str, ms: int) -> Call:
    """``claim``, ``done`` or ``drop`` an idempotency record."""
    return Call(IDEMPOTENCY, (record,), (op, token, ms))


def stream_claim(
    stream: str, group: str, consumer: str, min_idle_ms: int, cursor: bytes | str, count: int
) -> Call:
    """XAUTOCLAIM entries idle for ``min_idle_ms``, with their delivery counts."""
    return Call(STREAM_CLAIM, (stream,), (group, consumer, min_idle_ms, cursor, count))


def stream_own(
    stream: str, group: str, consumer: str, start: bytes | str, count: int, *, restart: bool
) -> Call:
    """Take this consumer's own pending entries from ``start`` (``-``, or ``(<id>``) again,
    with their delivery counts; ``restart`` counts this delivery (the previous run may have
    started them)."""
    return Call(STREAM_OWN, (stream,), (group, consumer, start, count, int(restart)))


def stream_forget(stream: str, group: str, min_idle_ms: int, keep: str) -> Call:
    """Delete the consumers of ``group`` that hold nothing and were idle that long."""
    return Call(STREAM_FORGET, (stream,), (group, min_idle_ms, keep))


def stream_bury(
    dead: str, stream: str, group: str, entry_id: bytes, maxlen: int, fields: Sequence[Any]
) -> Call:
    """Write a dead letter and ack its entry, atomically."""
    return Call(STREAM_BURY, (dead, stream), (group, entry_id, maxlen, *fields))


def schedule_peek(state: str, ticks: str) -> Call:
    """A schedule's next tick and spec, and the server's time."""
    return Call(SCHEDULE, (state, ticks), ("peek",))


def schedule_claim(
    state: str,
    ticks: str,
    *,
    expected: str,
    next_tick: int,
    spec: str,
    missed: int,
    last: int | None,
    items: Sequence[bytes],
) -> Call:
    """Move the schedule's next tick from ``expected`` to ``next_tick`` and push ``items``
    (the runs of the ticks due), unless another call did first; 1 if this one did. Without
    ``last`` the ticks need not be due (a new or changed schedule)."""
    argv = ("claim", expected, next_tick, spec, missed, "" if last is None else last, *items)
    return Call(SCHEDULE, (state, ticks), argv)


def dlq_replay(
    dead: str,
    target: str,
    seq: str,
    wake: str,
    kind: str,
    letters: Sequence[tuple[str, bytes, int | str]],
) -> Call:
    """Push back each letter ``(entry id, item, level or channel)`` that this call deletes
    from ``dead``; a letter another replay took is skipped."""
    argv: list[Any] = [kind]
    for letter in letters:
        argv += letter
    return Call(DLQ_REPLAY, (dead, target, seq, wake), tuple(argv))


def layout(layouts: str, name: str, layout: str, how: str) -> Call:
    """Make ``layout`` the ``current`` one of ``name``, add it as a ``known`` old one, or
    ``retire`` that old one; the record now stored, as JSON."""
    return Call(LAYOUT, (layouts,), (name, layout, how))
