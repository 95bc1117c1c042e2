"""The records redisflow keeps in Redis beside the messages, each written and read here.

- **Dead letters**: entries of a source's dead-letter stream (``Keys.dead``), written by a
  consumer when it gives up on a message (``dead_letter``) and read by ``ops/deadletters.py``
  (``DeadLetter.parse``).
- **Counters**: the hash ``Keys.stats`` (``<handler>:<counter>`` -> sum over every worker)
  and the hash ``Keys.inflight`` (``<handler>:<worker>`` -> ``<held>:<worker's clock, ms>``),
  written by ``consumers/reporting.py`` and read by ``ops/stats.py``.
- **Sources registry**: the set ``sources_key``, one JSON member ``[kind, name, group]`` per
  source a flow of the prefix consumes, written at start and read by ``redisflow stats``.
- **Paused sources**: the hash ``paused_key``, a field JSON ``[name, group]`` per paused
  source (group null: all of it) valued with when it was paused (ms), written by
  ``Client.pause``/``resume`` and read by every running flow (``features/pauses.py``).
- **Schedules**: the hash ``Keys.schedule`` (``spec``, ``next`` and ``last`` tick in ms,
  ``fired`` and ``missed`` counts, written by ``lua/schedule.lua``; ``outcome``, ``error``,
  ``ran_at`` of the last run, by ``consumers/schedule.py``), read by ``redisflow stats``
  (``ScheduleState``); a run's payload is ``tick_payload``.

Every reader takes what another client (or an older redisflow) may have written: a field it
cannot parse is skipped or read as empty, never an exception.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from ..message import KINDS, Message, Source
from .envelope import now_ms, parse_headers

# -- dead letters ----------------------------------------------------------------------


def dead_letter(
    msg: Message[Any],
    data: bytes,
    error: str,
    where: str,
    attempts: int,
    handler: str,
    **extra: Any,
) -> dict[str, Any]:
    """The fields of the dead letter of ``msg`` (``data``: its payload bytes); ``extra``:
    what the kind adds (``channel`` for Pub/Sub, ``priority`` for a priority queue)."""
    fields: dict[str, Any] = {}
    if msg.headers:
        fields["headers"] = orjson.dumps(msg.headers)
    fields.update(
        data=data,
        message_id=msg.id,
        error=error,
        where=where,
        attempts=attempts,
        handler=handler,
        source=str(msg.source),
        failed_at=now_ms(),
        **extra,
    )
    return fields


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
    partition: str = ""  # the key of the source (or partition) it came from

    @classmethod
    def parse(
        cls, entry_id: bytes | str, fields: dict[bytes, bytes], partition: str = ""
    ) -> DeadLetter:
        """Build one from a dead-letter stream entry (missing fields are empty)."""

        def text(name: bytes) -> str:
            return fields.get(name, b"").decode("utf-8", "replace")

        failed = fields.get(b"failed_at", b"")
        channel = fields.get(b"channel")
        attempts = fields.get(b"attempts", b"")
        return cls(
            id=entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
            data=fields.get(b"data", b""),
            message_id=text(b"message_id"),
            error=text(b"error"),
            where=text(b"where"),
            attempts=int(attempts) if attempts.isdigit() else 0,
            handler=text(b"handler"),
            source=text(b"source"),
            failed_at=_time(failed),
            channel=channel.decode("utf-8", "replace") if channel is not None else None,
            priority=int(fields[b"priority"]) if fields.get(b"priority", b"").isdigit() else None,
            headers=parse_headers(fields.get(b"headers")) or None,
            partition=partition,
        )

    @property
    def payload(self) -> Any:
        """The payload decoded as JSON (raises ``orjson.JSONDecodeError`` if it is not)."""
        return orjson.loads(self.data)

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
            "priority": self.priority,
            "data": self.data.decode("utf-8", "replace"),
        }


def _time(ms: bytes) -> datetime | None:
    if not ms.isdigit():
        return None
    try:
        return datetime.fromtimestamp(int(ms) / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        return None


# -- counters ----------------------------------------------------------------------------


def counter_field(handler: str, counter: str) -> str:
    """The field of ``Keys.stats`` that sums ``counter`` of ``handler`` over its workers."""
    return f"{handler}:{counter}"


def parse_counter(field: bytes) -> tuple[str, str]:
    """``(handler, counter)`` of a ``Keys.stats`` field (a handler's name may hold ``:``)."""
    handler, _, counter = field.decode("utf-8", "replace").rpartition(":")
    return handler, counter


def inflight_field(handler: str, worker: str) -> str:
    """The field of ``Keys.inflight`` of one worker of ``handler``."""
    return f"{handler}:{worker}"


def inflight_value(held: int) -> str:
    """The gauge of a worker: what it holds, stamped with its clock."""
    return f"{held}:{now_ms()}"


def parse_inflight(field: bytes, value: bytes, now: int, stale_ms: int) -> tuple[str, int] | None:
    """``(handler, held)`` of a live worker's gauge; None when the gauge is older than
    ``stale_ms`` at ``now`` (its worker died without a goodbye) or unreadable."""
    held, _, at = value.partition(b":")
    if not at.isdigit() or not held.isdigit() or now - int(at) > stale_ms:
        return None
    return field.decode("utf-8", "replace").rpartition(":")[0], int(held)


# -- the sources registry ----------------------------------------------------------------


def source_member(source: Source) -> str:
    """The member of ``sources_key`` that registers ``source`` (JSON: names may hold any
    character)."""
    return orjson.dumps([source.kind, source.name, source.group]).decode()


def parse_source(member: bytes | str) -> Source | None:
    """A member of ``sources_key`` (None if it is not one)."""
    try:
        found = orjson.loads(member)
    except orjson.JSONDecodeError:
        found = None
    if not isinstance(found, list) or len(found) != 3:
        return None
    kind, name, group = found
    if kind not in KINDS or not isinstance(name, str) or not name:
        return None
    if group is not None and not isinstance(group, str):
        return None
    return Source(kind, name, group or None)


# -- paused sources ----------------------------------------------------------------------

#: A paused source as the paused hash holds it: its name and group (None: all of it).
Target = tuple[str, str | None]


def paused_field(name: str, group: str | None) -> str:
    """The field of ``paused_key`` that pauses ``name`` (one stream ``group``, or all)."""
    return orjson.dumps([name, group]).decode()


def parse_paused(raw: bytes | str) -> Target | None:
    """A field of ``paused_key`` (None if another client wrote something else there)."""
    try:
        found = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(found, list) or len(found) != 2:
        return None
    name, group = found
    if not isinstance(name, str) or not (group is None or isinstance(group, str)):
        return None
    return name, group


# -- schedules ---------------------------------------------------------------------------


def tick_payload(tick: int, missed: int) -> bytes:
    """The payload of the run of ``tick`` (ms; ``missed``: the ticks it stands for)."""
    return orjson.dumps({"scheduled_for": tick, "missed": missed})


def parse_tick(payload: bytes) -> datetime | None:
    """The tick of a run's payload (None for a payload that is not one)."""
    try:
        tick = orjson.loads(payload).get("scheduled_for")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return Message.time(tick) if isinstance(tick, int) and not isinstance(tick, bool) else None


@dataclass(frozen=True, slots=True)
class ScheduleState:
    """What Redis keeps of a schedule: its spec, the next tick, the last tick due, how many
    runs were enqueued (``fired``) and how many ticks got none (``missed``), and the last
    run's outcome (``completed``, ``skipped``, ``failed (attempt N)``, with its ``error``)
    and end (``ran_at``)."""

    spec: str | None
    next: datetime | None
    last: datetime | None
    fired: int
    missed: int
    outcome: str | None
    error: str | None
    ran_at: datetime | None

    @classmethod
    def parse(cls, flat: list[Any]) -> ScheduleState:
        """From an ``HGETALL`` reply (what cannot be read is read as empty)."""
        found = {
            k.decode("utf-8", "replace"): v.decode("utf-8", "replace")
            for k, v in zip(flat[::2], flat[1::2], strict=False)
        }

        def count(name: str) -> int:
            value = found.get(name, "")
            return int(value) if value.isdigit() else 0

        return cls(
            spec=found.get("spec"),
            next=_time(found.get("next", "").encode()),
            last=_time(found.get("last", "").encode()),
            fired=count("fired"),
            missed=count("missed"),
            outcome=found.get("outcome"),
            error=found.get("error") or None,
            ran_at=_time(found.get("ran_at", "").encode()),
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (times in ISO 8601)."""

        def iso(when: datetime | None) -> str | None:
            return when.isoformat() if when else None

        return {
            "spec": self.spec,
            "next": iso(self.next),
            "last": iso(self.last),
            "fired": self.fired,
            "missed": self.missed,
            "outcome": self.outcome,
            "error": self.error,
            "ran_at": iso(self.ran_at),
        }


def outcome_fields(outcome: str, error: str) -> tuple[str, ...]:
    """The fields of ``Keys.schedule`` that record how a run ended, now."""
    return ("outcome", outcome, "error", error[:500], "ran_at", str(now_ms()))
