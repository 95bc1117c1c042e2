"""Message status tracking: a status record per message, and counts per handler.

With ``Flow(track=True)`` (or ``track=True`` on a handler) every message gets a hash
``<prefix>:status:{<id>}`` that expires ``track_ttl`` seconds after its last change::

    status      published | processing | completed | failed | dead | cancelled
    source      e.g. "queue 'emails'"      handler   the handler's name
    attempts    the attempt that set it    error     the last failure, if any
    created_at  updated_at                 (epoch ms)

A producer writes ``published`` with HSETNX, so it never overwrites a consumer that got
there first (a stream entry's id is only known after its XADD). Each source also keeps a
hash of counters, ``Keys.counts``: ``published``, and per handler ``<handler>:<status>``,
the number of times a message entered that status (so ``processing - completed - failed -
dead`` is what is in flight). They are kept incrementally, never by scanning keys. Writes
are pipelined with concurrent traffic.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from ..errors import BatchFailed
from ..keys import Keys, status_key
from ..message import Message, MessageBatch
from ..protocol.envelope import now_ms
from ..protocol.replies import mapping

if TYPE_CHECKING:
    from ..connection import Connector
    from ..middleware import ConsumeNext

log = logging.getLogger("redisflow")

Status = Literal["published", "processing", "completed", "failed", "dead", "cancelled"]
STATUSES: tuple[Status, ...] = (
    "published",
    "processing",
    "completed",
    "failed",
    "dead",
    "cancelled",
)


@dataclass(frozen=True, slots=True)
class MessageStatus:
    """The status record of one message, as ``Flow.status`` returns it."""

    id: str
    status: Status
    source: str
    handler: str | None
    attempts: int
    created_at: datetime | None
    updated_at: datetime | None
    error: str | None

    @classmethod
    def from_hash(cls, msg_id: str, fields: dict[bytes, bytes]) -> MessageStatus:
        """Build it from the hash fields (bytes) of a status record."""
        text = {k.decode(): v.decode("utf-8", "replace") for k, v in fields.items()}
        status = text.get("status", "published")
        return cls(
            id=msg_id,
            status=status if status in STATUSES else "published",  # type: ignore[arg-type,unused-ignore]
            source=text.get("source", ""),
            handler=text.get("handler"),
            attempts=_int(text.get("attempts")) or 0,
            created_at=Message.time(_int(text.get("created_at"))),
            updated_at=Message.time(_int(text.get("updated_at"))),
            error=text.get("error"),
        )


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and value.lstrip("-").isdigit() else None


class Tracker:
    """Writes and reads status records and counters."""

    def __init__(self, connector: Connector, prefix: str, ttl: float) -> None:
        self.send = connector.send
        self.prefix = prefix
        self.ttl_ms = int(ttl * 1000)

    async def published(self, source: str, ids: list[str], kind: str = "") -> None:
        """Record freshly produced messages (right after they are sent)."""
        now = now_ms()
        commands: list[tuple[Any, ...]] = []
        for msg_id in ids:
            key = status_key(self.prefix, msg_id)
            commands += [
                ("HSETNX", key, "status", "published"),
                ("HSETNX", key, "created_at", now),
                ("HSET", key, "source", f"{kind} {source!r}".strip(), "updated_at", now),
                ("PEXPIRE", key, self.ttl_ms),
            ]
        commands.append(("HINCRBY", Keys(self.prefix, source).counts, "published", len(ids)))
        await self.send.many(*commands)

    async def moved(
        self, msg: Message[Any], handler: str, status: Status, error: str | None = None
    ) -> None:
        """Record that a consumer moved a message to ``status``."""
        key = status_key(self.prefix, msg.id)
        fields: list[Any] = ["status", status, "handler", handler, "attempts", msg.attempt]
        fields += ["updated_at", now_ms(), "source", str(msg.source)]
        if error is not None:
            fields += ["error", error]
        await self.send.many(
            ("HSET", key, *fields),
            ("HSETNX", key, "created_at", now_ms()),
            ("PEXPIRE", key, self.ttl_ms),
            ("HINCRBY", Keys(self.prefix, msg.source.name).counts, f"{handler}:{status}", 1),
        )

    async def status(self, msg_id: str) -> MessageStatus | None:
        """The status record of a message, or None (never tracked, or expired)."""
        flat = await self.send("HGETALL", status_key(self.prefix, msg_id))
        return MessageStatus.from_hash(msg_id, mapping(flat)) if flat else None

    async def counts(self, source: str) -> dict[str, int]:
        """The counters of a source: ``published`` and ``<handler>:<status>``."""
        flat = await self.send("HGETALL", Keys(self.prefix, source).counts)
        return {k.decode(): int(v) for k, v in mapping(flat).items()}


class Tracking:
    """The consume middleware of a tracked handler: ``processing`` before the rest of the
    chain, ``completed`` after it; the consumer records ``failed`` and ``dead`` with its
    verdicts (``record``). Best effort: a status that cannot be written is logged, never
    worth failing or repeating the message."""

    def __init__(self, tracker: Tracker, handler: str) -> None:
        self.tracker, self.handler = tracker, handler

    async def consume(self, msg: Message[Any], call_next: ConsumeNext) -> Any:
        """Record ``processing``, run the rest of the chain, record ``completed`` (for each
        message of a batch; those its ``BatchFailed`` names get their verdict's status)."""
        if isinstance(msg, MessageBatch):
            messages = msg.messages
            await asyncio.gather(*(self.record(m, "processing") for m in messages))
            try:
                result = await call_next(msg)
            except BatchFailed as exc:
                failed = {id(m) for m, _ in exc.resolved}
                done = [m for m in messages if id(m) not in failed]
                await asyncio.gather(*(self.record(m, "completed") for m in done))
                raise
            await asyncio.gather(*(self.record(m, "completed") for m in messages))
            return result
        await self.record(msg, "processing")
        result = await call_next(msg)
        await self.record(msg, "completed")
        return result

    async def record(self, msg: Message[Any], status: Status, error: str | None = None) -> None:
        """Record a status change of ``msg`` (best effort)."""
        try:
            await self.tracker.moved(msg, self.handler, status, error)
        except Exception as exc:  # lost connection, a full Redis, a foreign key
            log.warning("%s: status of message %s not recorded: %r", self.handler, msg.id, exc)
