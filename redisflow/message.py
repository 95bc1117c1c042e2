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
    ``group``: the fair group of a message of a queue consumed with ``groups=`` (None: the
    default group, or any other source).
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
    group: str | None = None
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


@dataclass(slots=True)
class MessageBatch(Message[list[T]]):
    """What the consume chain of a batch handler passes through its middleware: one call
    per batch. ``messages`` are the batch's messages (each with its own id, attempt and
    headers); ``payload`` is the list of their payloads, in the same order. The fields of
    ``Message`` describe the batch as a whole: ``id`` is the first message's, ``attempt``
    the highest, ``enqueued_at`` the oldest; ``headers`` is empty and ``raw`` is ``b""``.
    A middleware that acts per message (a span per message, a check per key) iterates
    ``messages``; one that keeps some from the handler passes ``subset(kept)`` on.
    """

    messages: list[Message[T]] = field(default_factory=list)

    @classmethod
    def of(cls, messages: list[Message[T]], source: Source) -> MessageBatch[T]:
        """The batch of ``messages`` (not empty) from ``source``."""
        times = [m.enqueued_at for m in messages if m.enqueued_at is not None]
        return cls(
            messages[0].id,
            source,
            max(m.attempt for m in messages),
            min(times) if times else None,
            {},
            b"",
            [m.payload for m in messages],  # type: ignore[misc]
            max_attempts=messages[0].max_attempts,
            messages=messages,
        )

    def subset(self, kept: list[Message[T]]) -> MessageBatch[T]:
        """A batch of some of these messages (``kept``, not empty), for the rest of the
        chain."""
        return MessageBatch.of(kept, self.source)

    def __len__(self) -> int:
        return len(self.messages)
