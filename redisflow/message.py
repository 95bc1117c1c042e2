"""The envelope a handler receives when it asks for it with a ``Message`` parameter."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Generic, Literal, TypeVar

T = TypeVar("T")

#: The kinds of source: Pub/Sub channels, list queues, sorted-set priority queues, streams
#: read through consumer groups, and schedules (``@flow.cron``/``@flow.every``: their ticks
#: run as messages of an internal queue).
Kind = Literal["channel", "queue", "priority", "stream", "schedule"]
KINDS: tuple[Kind, ...] = ("channel", "queue", "priority", "stream", "schedule")


@dataclass(frozen=True, slots=True)
class Source:
    """Where a message came from: the kind of source, its name, and the group for streams."""

    kind: Kind
    name: str
    group: str | None = None

    def __str__(self) -> str:
        group = f" (group {self.group})" if self.group else ""
        return f"{self.kind} {self.name!r}{group}"


@dataclass(slots=True)
class Message(Generic[T]):
    """A delivered message: its id, source, attempt number, time of enqueueing, headers, bytes.

    ``attempt`` is 1 on the first delivery; ``max_attempts`` is the handler's option of that
    name (a failure on that attempt goes to the dead letters; 1 when a ``Message`` is built
    by hand). ``enqueued_at`` is None when the producer did not record it (a message
    written by another client). ``payload`` is the validated payload.
    ``channel`` is the channel a Pub/Sub message was published to: for a pattern handler
    (``source.name`` is the pattern, ``orders.*``) the one that matched, ``orders.created``
    (also in ``headers["channel"]``); None for the other kinds.
    A client other than redisflow can write any id, attempt and headers: they are data, not
    proof of anything (docs/security.md, "Trust boundary"). ``scheduled_for``: the tick a
    schedule's run is for (UTC; None for other sources).
    """

    id: str
    source: Source
    attempt: int
    enqueued_at: datetime | None
    headers: dict[str, str]
    raw: bytes
    payload: T | None = field(default=None, repr=False)
    max_attempts: int = 1
    scheduled_for: datetime | None = None
    channel: str | None = None

    @staticmethod
    def time(ms: int | float | None) -> datetime | None:
        """A UTC datetime from epoch milliseconds (None stays None, and so does a time
        outside what ``datetime`` can hold)."""
        if ms is None:
            return None
        try:
            return datetime.fromtimestamp(ms / 1000, UTC)
        except (OverflowError, OSError, ValueError):
            return None
