"""Dead letters of one source: list, inspect, replay and purge them (``flow.dlq(name)``).

A dead letter is an entry of the stream ``Keys(prefix, name).dead``, written by a consumer
when it gives up on a message (see ``transports/base.py``): the payload bytes in ``data``,
and ``message_id``, ``error``, ``where``, ``attempts``, ``handler``, ``source``,
``failed_at`` (ms), plus ``channel`` for Pub/Sub. Entries are read oldest first, a page at
a time, and filtered here (by handler, error text, age or id).

A replay sends the payload back to its source as a new first attempt and deletes the dead
letter in the same MULTI/EXEC (the source and its dead letters share a hash slot), so each
replayed entry is either still dead or sent again, never both nor neither. A list or
priority item gets a fresh envelope that keeps the original message id and headers; a
priority queue item goes back at its recorded level (``priority=`` overrides it). A stream
entry is appended anew, so every consumer group of the stream reads it again (``handler=``
picks the dead letters of one group's handler). Two replays of the same entries running at
once may both send them (at-least-once, like everything else here).
"""

from __future__ import annotations

import builtins
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from . import codec
from .errors import ConfigError
from .stats import text_table
from .transports.priority import MAX_PRIORITY, PUSH

if TYPE_CHECKING:
    from .message import Kind
    from .producer import Producer

#: Entries read per XRANGE page (and deleted per XDEL); replayed per MULTI/EXEC.
PAGE = 500
BATCH = 100
_ENTRY_ID = re.compile(r"\d+(-\d+)?")


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead letter: the payload bytes, and why and when its message died.

    ``id`` is the entry id in the dead-letter stream (what ``show``, ``replay(ids=...)`` and
    ``purge(ids=...)`` take); ``message_id`` the id of the message that died. ``channel`` is
    the channel a Pub/Sub message came from (None for other kinds).
    """

    id: str
    data: bytes
    message_id: str
    error: str
    where: str
    attempts: int
    handler: str
    source: str
    failed_at: datetime | None
    channel: str | None = None
    priority: int | None = None  # the level of a priority-queue message
    headers: dict[str, str] | None = None

    @classmethod
    def parse(cls, entry_id: bytes | str, fields: dict[bytes, bytes]) -> DeadLetter:
        """Build one from a dead-letter stream entry (missing fields are empty)."""

        def text(name: bytes) -> str:
            return fields.get(name, b"").decode("utf-8", "replace")

        failed = fields.get(b"failed_at", b"")
        channel = fields.get(b"channel")
        return cls(
            id=entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
            data=fields.get(b"data", b""),
            message_id=text(b"message_id"),
            error=text(b"error"),
            where=text(b"where"),
            attempts=int(fields.get(b"attempts") or 0),
            handler=text(b"handler"),
            source=text(b"source"),
            failed_at=datetime.fromtimestamp(int(failed) / 1000, UTC) if failed.isdigit() else None,
            channel=channel.decode("utf-8", "replace") if channel is not None else None,
            priority=int(fields[b"priority"]) if fields.get(b"priority", b"").isdigit() else None,
            headers=_headers(fields.get(b"headers")),
        )

    @property
    def payload(self) -> Any:
        """The payload decoded as JSON (raises ``orjson.JSONDecodeError`` if it is not)."""
        return orjson.loads(self.data)

    @property
    def age(self) -> str:
        """When the message died, and how long ago (``-`` if unknown)."""
        if self.failed_at is None:
            return "-"
        age = int((datetime.now(UTC) - self.failed_at).total_seconds())
        ago = (
            f"{age // 3600}h{age % 3600 // 60:02d}m"
            if age >= 3600
            else f"{age // 60}m{age % 60:02d}s"
        )
        return f"{self.failed_at:%Y-%m-%d %H:%M:%S}Z ({ago} ago)"

    def describe(self) -> str:
        """Every field on its own line, the payload as indented JSON (for ``dlq show``)."""
        try:
            data = orjson.dumps(self.payload, option=orjson.OPT_INDENT_2).decode()
        except orjson.JSONDecodeError:
            data = repr(self.data)
        fields = (
            ("id", self.id),
            ("message id", self.message_id),
            ("handler", self.handler),
            ("source", self.source),
            ("channel", self.channel),
            ("attempts", str(self.attempts)),
            ("failed at", self.age),
            ("error", self.error),
            ("where", self.where),
        )
        lines = [f"{label:<11} {value}" for label, value in fields if value is not None]
        return "\n".join([*lines, "data", *("  " + line for line in data.splitlines())])

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: ``data`` as text, ``failed_at`` in ISO 8601."""
        return {
            "id": self.id,
            "message_id": self.message_id,
            "handler": self.handler,
            "source": self.source,
            "attempts": self.attempts,
            "error": self.error,
            "where": self.where,
            "failed_at": self.failed_at.isoformat() if self.failed_at else None,
            "channel": self.channel,
            "data": self.data.decode("utf-8", "replace"),
        }


@dataclass(frozen=True, slots=True)
class Match:
    """Which dead letters an operation applies to; every given criterion must hold."""

    handler: str | None = None
    error: str | None = None
    older_than: float | None = None
    newer_than: float | None = None

    def __call__(self, dead: DeadLetter, now: datetime) -> bool:
        if self.handler is not None and dead.handler != self.handler:
            return False
        if self.error is not None and self.error not in dead.error:
            return False
        if self.older_than is None and self.newer_than is None:
            return True
        if dead.failed_at is None:
            return False
        age = (now - dead.failed_at).total_seconds()
        if self.older_than is not None and age < self.older_than:
            return False
        return self.newer_than is None or age <= self.newer_than


class DeadLetters:
    """The dead letters of one source of a flow (``flow.dlq(name, kind)``).

    Filters, in every method: ``handler`` (exact qualname), ``error`` (a substring of the
    error), ``older_than``/``newer_than`` (seconds since the message died), ``ids`` (entry
    ids of the dead-letter stream), and ``limit`` (at most that many, oldest first).
    """

    def __init__(self, producer: Producer, name: str, kind: Kind = "queue") -> None:
        if kind not in ("queue", "priority", "stream", "channel"):
            raise ConfigError(f"unknown source kind {kind!r}")
        self.producer, self.name, self.kind = producer, name, kind
        self.key = producer.keys(name).dead

    async def count(self) -> int:
        """How many dead letters the source has."""
        n: int = await self.producer._send("XLEN", self.key)
        return n

    async def list(
        self,
        *,
        handler: str | None = None,
        error: str | None = None,
        older_than: float | None = None,
        newer_than: float | None = None,
        ids: Sequence[str] = (),
        limit: int | None = 100,
    ) -> builtins.list[DeadLetter]:
        """The matching dead letters, oldest first, at most ``limit`` (None: all)."""
        match = Match(handler, error, older_than, newer_than)
        return [dead async for dead in self._matching(match, ids, limit)]

    async def show(self, entry_id: str) -> DeadLetter | None:
        """One dead letter by its entry id, or None."""
        found = await self.list(ids=[entry_id], limit=1)
        return found[0] if found else None

    async def replay(
        self,
        *,
        handler: str | None = None,
        error: str | None = None,
        older_than: float | None = None,
        newer_than: float | None = None,
        ids: Sequence[str] = (),
        limit: int | None = None,
        priority: int | None = None,
        dry_run: bool = False,
    ) -> int:
        """Send the matching dead letters back to the source (a priority queue: at their
        recorded level, or ``priority``) and delete them; returns how many (``dry_run``:
        would be)."""
        if priority is not None and not 0 <= priority <= MAX_PRIORITY:
            raise ConfigError(f"priority must be from 0 to {MAX_PRIORITY}: {priority!r}")
        done = 0
        match = Match(handler, error, older_than, newer_than)
        async for batch in self._batches(match, ids, limit, BATCH):
            done += len(batch) if dry_run else await self._replay(batch, priority)
        return done

    async def purge(
        self,
        *,
        handler: str | None = None,
        error: str | None = None,
        older_than: float | None = None,
        newer_than: float | None = None,
        ids: Sequence[str] = (),
        limit: int | None = None,
        dry_run: bool = False,
    ) -> int:
        """Delete the matching dead letters; returns how many (``dry_run``: would be)."""
        done = 0
        match = Match(handler, error, older_than, newer_than)
        async for batch in self._batches(match, ids, limit, PAGE):
            done += len(batch) if dry_run else await self._delete([d.id for d in batch])
        return done

    # -- internals ------------------------------------------------------------------------

    async def _matching(
        self, match: Match, ids: Sequence[str], limit: int | None
    ) -> AsyncIterator[DeadLetter]:
        if limit is not None and limit < 1:
            raise ConfigError(f"limit must be >= 1, got {limit}")
        if isinstance(ids, str):
            raise ConfigError(f"ids must be a sequence of entry ids, not {ids!r}")
        for wanted in ids:
            if not _ENTRY_ID.fullmatch(wanted):
                raise ConfigError(f"not a stream entry id (like 1700000000000-0): {wanted!r}")
        now = datetime.now(UTC)
        found = 0
        async for entry_id, fields in self._entries(ids):
            dead = DeadLetter.parse(entry_id, fields)
            if match(dead, now):
                yield dead
                found += 1
                if found == limit:
                    return

    async def _batches(
        self, match: Match, ids: Sequence[str], limit: int | None, size: int
    ) -> AsyncIterator[builtins.list[DeadLetter]]:
        batch: builtins.list[DeadLetter] = []
        async for dead in self._matching(match, ids, limit):
            batch.append(dead)
            if len(batch) == size:
                yield batch
                batch = []
        if batch:
            yield batch

    async def _entries(self, ids: Sequence[str]) -> AsyncIterator[tuple[bytes, dict[bytes, bytes]]]:
        send = self.producer._send
        if ids:
            replies = await send.many(*(("XRANGE", self.key, i, i) for i in ids))
            for reply in replies:
                for entry_id, flat in reply:
                    yield entry_id, _pairs(flat)
            return
        start = "-"
        while True:
            page = await send("XRANGE", self.key, start, "+", "COUNT", PAGE)
            for entry_id, flat in page:
                yield entry_id, _pairs(flat)
            if len(page) < PAGE:
                return
            start = "(" + page[-1][0].decode()

    async def _delete(self, ids: builtins.list[str]) -> int:
        deleted: int = await self.producer._send("XDEL", self.key, *ids)
        return deleted

    async def _replay(self, batch: builtins.list[DeadLetter], priority: int | None) -> int:
        keys = self.producer.keys(self.name)
        async with self.producer.redis.pipeline(transaction=True) as pipe:
            if self.kind == "queue":
                pipe.rpush(self.name, *(self._item(dead) for dead in batch))
            elif self.kind == "priority":
                argv: builtins.list[Any] = []
                for dead in batch:
                    level = priority if priority is not None else dead.priority or 0
                    argv += (level, self._item(dead))
                # EVAL, not EVALSHA: inside MULTI a NOSCRIPT error would not stop the XDEL.
                pipe.eval(PUSH.source, 3, self.name, keys.seq, keys.wake, *argv)
            elif self.kind == "stream":
                for dead in batch:
                    pipe.xadd(self.name, {"data": dead.data})
            else:
                for dead in batch:
                    pipe.publish(dead.channel or self.name, dead.data)
            pipe.xdel(self.key, *(dead.id for dead in batch))
            await pipe.execute()
        return len(batch)

    @staticmethod
    def _item(dead: DeadLetter) -> bytes:
        return codec.envelope(
            dead.data, dead.message_id or codec.new_id(), headers=dead.headers or None
        )


def _headers(raw: bytes | None) -> dict[str, str] | None:
    try:
        headers = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return None
    return headers if isinstance(headers, dict) else None


def table(found: Sequence[DeadLetter]) -> str:
    """Dead letters as a plain-text table, one line each (for ``dlq list``)."""

    def cut(text: str, n: int) -> str:
        text = " ".join(text.split())
        return text if len(text) <= n else text[: n - 1] + "…"

    rows = [
        [
            d.id,
            d.age,
            d.handler,
            str(d.attempts),
            cut(d.error, 50),
            cut(d.data.decode("utf-8", "replace"), 40),
        ]
        for d in found
    ]
    headers = ["ID", "FAILED AT (UTC)", "HANDLER", "ATTEMPTS", "ERROR", "DATA"]
    return text_table(headers, rows, left=len(headers))


def _pairs(flat: builtins.list[bytes]) -> dict[bytes, bytes]:
    return dict(zip(flat[::2], flat[1::2], strict=True))
