"""The numbers of ``redisflow stats``: what each handler's source holds and what its
workers did (``collect`` returns a ``Snapshot``; ``cli/render.py`` draws it).

Everything comes from Redis in at most four pipelined round trips (shared with those of
``Client.memory``): the sources (``sources_key``, when no app is given), per source its type,
the counters the consumers report every 2 s (``Keys.stats``), the in-flight gauges of live
workers (``Keys.inflight``; entries older than ``STALE_MS`` belong to dead workers and are
removed), the delayed set and the dead letters, then the queue length or the stream's
consumer groups (``XINFO GROUPS``: lag and pending).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import anyio

from ..consumers.contract import Stats
from ..consumers.kinds import DEPTH, TRAITS
from ..features.groups import Backlog
from ..features.pauses import Paused, paused_for
from ..keys import sources_key
from ..message import Source
from ..protocol.envelope import now_ms
from ..protocol.records import (
    ScheduleState,
    Target,
    parse_counter,
    parse_inflight,
    parse_source,
)
from ..protocol.replies import mapping, pairs
from .handlers import conflicts

if TYPE_CHECKING:
    from ..client import Client

#: In-flight gauges older than this (ms) belong to workers that died without a goodbye.
STALE_MS = 10_000
#: How many fair groups of a queue ``stats`` shows: those with the longest backlogs.
TOP_GROUPS = 5
STAT_FIELDS = Stats.FIELDS


@dataclass(frozen=True, slots=True)
class Row:
    """One handler (or, without the app, one source or one handler) and its numbers.

    ``waiting``: queue depth (LLEN / ZCARD) or the stream group's lag (None: a channel, or
    a lag Redis cannot tell). ``pending``: stream entries delivered to the group and not yet
    acked. ``delayed``: queue messages waiting for a retry or a delay. ``in_flight``:
    messages held by live ``workers``. ``counters``: ``processed``, ``retried``, ``dead``...
    summed over every worker since the keys were created (None when the handler is not
    known). ``dead_letters``: entries now in the dead-letter stream. ``memory``: bytes of
    the source's keys (the queue or stream, delayed set, dead letters, indexes).
    ``paused``: whether the source (the stream group) is paused (``Client.pause``).
    ``schedule``: a schedule's state (its spec, next and last tick, runs and missed ticks,
    the last run's outcome); ``waiting`` then counts its runs not yet taken.
    ``partitions``: how many keys the source is spread over now (older layouts still being
    drained are counted in, not shown).
    """

    kind: str
    source: str
    group: str | None
    handler: str | None
    waiting: int | None
    pending: int | None
    delayed: int | None
    in_flight: int | None
    workers: int | None
    counters: dict[str, int] | None
    dead_letters: int
    memory: int
    paused: bool = False
    schedule: ScheduleState | None = None
    partitions: int = 1


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The rows of one reading, with Redis's ``used_memory`` (None when the user may not
    run ``INFO``), every paused source of the prefix (``paused``, also those no row
    shows), the server's name and version (``Redis 7.0.15``), and for each queue consumed in
    fair groups its groups with the longest backlogs (``groups``: name -> up to
    ``TOP_GROUPS``, largest first)."""

    prefix: str
    taken_at: datetime
    used_memory: int | None
    rows: list[Row]
    paused: list[Paused] = dataclasses.field(default_factory=list)
    server: str | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)  # differing handlers
    groups: dict[str, list[Backlog]] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "prefix": self.prefix,
            "taken_at": self.taken_at.isoformat(),
            "used_memory": self.used_memory,
            "server": self.server,
            "handlers": [asdict(row) for row in self.rows],
            "paused": [p.to_json() for p in self.paused],
            "warnings": self.warnings,
            "groups": {name: [asdict(b) for b in top] for name, top in self.groups.items()},
        }


async def registered_sources(client: Client) -> list[Source]:
    """The sources the flows of this prefix consume (what they registered at start)."""
    members = await client.send("SMEMBERS", sources_key(client.config.prefix))
    found = (parse_source(m) for m in members)
    return sorted(
        (s for s in found if s is not None), key=lambda s: (s.name, s.kind, s.group or "")
    )


async def collect(client: Client, handlers: Sequence[tuple[Source, str]] | None = None) -> Snapshot:
    """Read the numbers of ``handlers`` (source, handler name), or without them of every
    source registered under the flow's prefix."""
    if handlers is None:
        targets: list[tuple[Source, str | None]] = [
            (s, None) for s in await registered_sources(client)
        ]
    else:
        targets = list(handlers)
    names = sorted({source.name for source, _ in targets})
    kinds = {source.name: source.kind for source, _ in targets}
    parts = {
        name: [name] if not TRAITS[kinds[name]].named else await client.layouts.all_keys(name)
        for name in names
    }
    memory: dict[str, Any] = {}
    reads: dict[str, _Reads] = {}
    paused: list[Paused] = []

    async def read_paused() -> None:
        paused.extend(await client.paused())

    groups: dict[str, tuple[int, list[Backlog]]] = {}

    async def read_groups() -> None:
        groups.update(await _group_backlogs(client, kinds))

    async def read_memory() -> None:
        # neither a channel nor a schedule is a key of its name (the user may lack ~NAME)
        channels = [name for name in names if not TRAITS[kinds[name]].named]
        memory.update(await client.memory(*names, channels=channels))

    async def read_sources() -> None:
        channels = {name for name in names if not TRAITS[kinds[name]].keyed}
        schedules = {name for name in names if TRAITS[kinds[name]].internal}
        keys = [key for name in names for key in parts[name]]
        physical = await _read(client, keys, channels, schedules)
        for name in names:  # a partitioned source: the sum of its partitions
            reads[name] = _Reads(name, "none")
            for key in parts[name]:
                reads[name].add(physical[key])

    try:
        async with anyio.create_task_group() as tg:  # the Pipeliner merges their round trips
            tg.start_soon(read_memory)
            tg.start_soon(read_sources)
            tg.start_soon(read_paused)
            tg.start_soon(read_groups)
    except BaseExceptionGroup as group:  # both fail alike (Redis gone, NOPERM): raise one
        raise group.exceptions[0] from None
    rows: list[Row] = []
    for name in names:
        size = 0
        for part in parts[name]:
            keys = client.keys(part)
            owned = set(keys.owned)
            size += sum(
                info["bytes"]
                for key, info in memory["keys"].items()
                if key in owned or key.startswith((keys.indexes + ":", keys.base + ":g"))
            )
        entries = [(s, h) for s, h in targets if s.name == name]
        spread = 1 if kinds[name] == "channel" else (await client.layouts.current(name)).partitions
        found = reads[name].rows(entries, size, {(p.name, p.group) for p in paused})
        if name in groups:  # every group waits, not only the default one (the key's length)
            found = [replace(row, waiting=groups[name][0]) for row in found]
        rows += [replace(row, partitions=spread) for row in found]
    warnings = await conflicts(client, dict.fromkeys(source for source, _ in targets))
    taken = datetime.now(UTC)
    server = str(client.connector.info) if client.connector.info is not None else None
    top = {name: backlogs for name, (_, backlogs) in groups.items()}
    return Snapshot(
        client.config.prefix, taken, memory["used_memory"], rows, paused, server, warnings, top
    )


async def _group_backlogs(
    client: Client, kinds: Mapping[str, str]
) -> dict[str, tuple[int, list[Backlog]]]:
    """For each queue consumed in fair groups: what waits in all its groups, and the groups
    with the longest backlogs."""
    found = {}
    for name, kind in kinds.items():
        if kind in ("queue", "priority") and await client.grouped.contains(name):
            found[name] = await client.groups(name, kind).summary(TOP_GROUPS)
    return found


class _Reads:
    """What Redis holds for one source name."""

    def __init__(self, name: str, kind: str) -> None:
        self.name, self.type = name, kind
        self.counters: dict[str, dict[str, int]] = {}
        self.inflight: dict[str, list[int]] = {}
        self.stale: list[bytes] = []
        self.delayed = self.dead = self.length = 0
        self.groups: dict[str, dict[bytes, Any]] = {}
        self.paused: set[Target] = set()
        self.schedule: ScheduleState | None = None

    def add(self, part: _Reads) -> None:
        """Count a partition's numbers in this (logical) source's."""
        if self.type == "none":
            self.type = part.type
        self.schedule = self.schedule or part.schedule
        for handler, counters in part.counters.items():
            mine = self.counters.setdefault(handler, dict.fromkeys(STAT_FIELDS, 0))
            for field, value in counters.items():
                mine[field] = mine.get(field, 0) + value
        for handler, held in part.inflight.items():
            self.inflight.setdefault(handler, []).extend(held)
        self.delayed += part.delayed
        self.dead += part.dead
        self.length += part.length
        for name, group in part.groups.items():
            mine_group = self.groups.setdefault(name, {b"pending": 0, b"lag": 0})
            for number in (b"pending", b"lag"):
                if mine_group.get(number) is not None and group.get(number) is not None:
                    mine_group[number] = int(mine_group[number]) + int(group[number])
                else:
                    mine_group[number] = None

    def parse(self, stats: list[bytes], inflight: list[bytes], now: int) -> None:
        for field, value in pairs(stats):
            handler, counter = parse_counter(field)
            if value.lstrip(b"-").isdigit():
                counters = self.counters.setdefault(handler, dict.fromkeys(STAT_FIELDS, 0))
                counters[counter] = int(value)
        for field, value in pairs(inflight):
            gauge = parse_inflight(field, value, now, STALE_MS)
            if gauge is None:
                self.stale.append(field)
                continue
            self.inflight.setdefault(gauge[0], []).append(gauge[1])

    def rows(
        self, entries: list[tuple[Source, str | None]], memory: int, paused: set[Target]
    ) -> list[Row]:
        self.paused = paused
        if all(handler is not None for _, handler in entries):
            return [self._row(source, handler, memory) for source, handler in entries]
        known: list[str | None] = [*sorted(self.counters.keys() | self.inflight.keys())]
        if len(entries) == 1:  # no app: the handlers are those the workers reported
            return [self._row(entries[0][0], h, memory) for h in known or [None]]
        # No app and several groups (or kinds): which handler serves which is unknown, so
        # the sources get rows without counters, the handlers rows without a group.
        anonymous = Source(entries[0][0].kind, self.name)
        return [self._row(s, None, memory, counters=False) for s, _ in entries] + [
            self._row(anonymous, h, memory) for h in known
        ]

    def _row(self, source: Source, handler: str | None, memory: int, counters: bool = True) -> Row:
        waiting = pending = delayed = None
        traits = TRAITS[source.kind]
        if traits.delays:
            waiting, delayed = self.length, self.delayed
        elif traits.grouped:
            group = self.groups.get(source.group or "")
            if group is not None:
                lag = group.get(b"lag")
                waiting = int(lag) if lag is not None else None
                pending = int(group[b"pending"])
            elif self.type == "none" and source.group:  # nothing appended yet
                waiting = pending = 0
        held = self.inflight.get(handler, []) if handler is not None else []
        return Row(
            kind=source.kind,
            source=source.name,
            group=source.group,
            handler=handler,
            waiting=waiting,
            pending=pending,
            delayed=delayed,
            in_flight=sum(held) if counters else None,
            workers=len(held) if counters else None,
            counters=self._counters(handler) if counters else None,
            dead_letters=self.dead,
            memory=memory,
            paused=traits.keyed and paused_for(self.paused, source.kind, source.name, source.group),
            schedule=self.schedule if traits.internal else None,
        )

    def _counters(self, handler: str | None) -> dict[str, int]:
        found = self.counters.get(handler or "")
        return dict(found) if found else dict.fromkeys(STAT_FIELDS, 0)


async def _read(
    client: Client, names: list[str], channels: set[str], schedules: set[str]
) -> dict[str, _Reads]:
    send = client.connector.send
    first: list[tuple[Any, ...]] = []
    for name in names:
        keys = client.keys(name)
        first += [
            # A channel is no key: PING keeps the reply's place (the user may lack ~NAME).
            ("PING", "none") if name in channels else ("TYPE", _measured(client, name, schedules)),
            ("HGETALL", keys.stats),
            ("HGETALL", keys.inflight),
            ("ZCARD", keys.delayed),
            ("XLEN", keys.dead),
        ]
    replies = await send.many(*first) if first else []
    now = now_ms()  # workers stamp their gauges with their own clock (codec.now_ms)
    reads: dict[str, _Reads] = {}
    second: list[tuple[Any, ...]] = []
    for i, name in enumerate(names):
        kind, stats, inflight, delayed, dead = replies[5 * i : 5 * i + 5]
        read = reads[name] = _Reads(name, kind.decode())
        read.parse(stats, inflight, now)
        read.delayed, read.dead = int(delayed), int(dead)
        if read.type in DEPTH:
            second.append((*DEPTH[read.type], _measured(client, name, schedules)))
        if read.stale:
            second.append(("HDEL", client.keys(name).inflight, *read.stale))
        if name in schedules:
            second.append(("HGETALL", client.keys(name).schedule))
    answers = iter(await send.many(*second) if second else [])
    for name in names:
        read = reads[name]
        if read.type == TRAITS["stream"].redis_type:
            for group in next(answers):
                info = mapping(group)
                read.groups[info[b"name"].decode()] = info
        elif read.type in DEPTH:
            read.length = int(next(answers))
        if read.stale:
            next(answers)
        if name in schedules:
            read.schedule = ScheduleState.parse(next(answers))
    return reads


def _measured(client: Client, name: str, schedules: set[str]) -> str:
    """The key where the messages of ``name`` wait: itself, or a schedule's internal queue."""
    return client.keys(name).ticks if name in schedules else name
