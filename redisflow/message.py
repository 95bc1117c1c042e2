"""The envelope a handler receives when it asks for it with a ``Message`` parameter."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Generic, Literal, TypeVar

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
    ``cancelled``: the reason given to ``Flow.cancel`` once this message is cancelled while
    its handler runs (None until then); ``async with msg.shield():`` defers the
    cancellation of the handler to the end of the block.
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
    cancelled: str | None = field(default=None, init=False, repr=False, compare=False)
    _shields: int = field(default=0, init=False, repr=False, compare=False)
    _on_unshield: Callable[[], None] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def shield(self) -> Shield:
        """A context manager (``with`` or ``async with``) within which a cancellation of
        this message does not interrupt the handler: it takes effect when the outermost
        shield ends (``CancelledError`` raised there), and ``cancelled`` says it came."""
        return Shield(self)

    def defer_cancel(self, request: Callable[[], None]) -> bool:
        """For the runtime: when the handler is shielded, call ``request`` when the shield
        ends and return True (the cancellation waits); else False (cancel it now)."""
        if not self._shields:
            return False
        self._on_unshield = request
        return True

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


class Shield:
    """``Message.shield()``: defers the cancellation of a message's handler to its end."""

    __slots__ = ("msg",)

    def __init__(self, msg: Message[Any]) -> None:
        self.msg = msg

    def __enter__(self) -> Shield:
        self.msg._shields += 1
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        msg = self.msg
        msg._shields -= 1
        request = msg._on_unshield
        if msg._shields or request is None:
            return
        msg._on_unshield = None
        request()
        if kind is None:  # cancelled meanwhile: the handler is cancelled here
            raise asyncio.CancelledError(f"message cancelled: {msg.cancelled}")

    async def __aenter__(self) -> Shield:
        return self.__enter__()

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(kind, exc, tb)
