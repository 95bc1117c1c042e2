"""Partitioned sources: one logical queue, priority queue or stream over P Redis keys whose
hash tags spread them over the slots of a cluster, and so over its masters.

Partition ``i`` of ``P`` of ``jobs`` is the key ``jobs{i/P@S.k}``, where ``S`` is the slot of
``jobs`` itself: its hash tag is the first one (``k`` = 0, 1, 2...) whose slot falls in the
middle half of the ``i``-th of ``P`` equal slot ranges, the ranges starting at ``S``. So the
partitions of one source are spread evenly, and those of different sources start at
different places, in slots of their own: ten sources of three partitions use thirty slots,
not the same three (docs/scaling.md). Every process computes the same keys with no
coordination; each partition keeps its auxiliary keys (retries, dead letters, leases) in
its own slot. ``P = 1`` is the plain key ``jobs``. The
first scheme (tags ``i/P:k`` of ranges starting at slot 0, the same for every source) is
still read, to drain what it holds.

The layouts of a source are recorded in Redis (``Keys.layouts``, a hash: name -> JSON list of
the layouts in use, current first, then those retired), so a producer that registered no
handler learns it (cached ``LAYOUT_TTL`` seconds); consumers make theirs current at start. A
message goes to the partition of ``hash(key)`` when the producer gives a key (the same key,
the same partition: order per key), else round robin over the current layout.

Changing P loses nothing (``Drainer``): consumers read every layout in use, and an old layout
is retired only once empty, after every producer has had time to learn the new one; a
retired layout's keys are still watched, and one found holding messages (written by a
producer that was frozen, or by another client) is read again.
"""

from __future__ import annotations

import functools
import itertools
import logging
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import orjson

from ..errors import ConfigError
from ..keys import SLOTS, Keys, check_text, crc16, layouts_key, slot
from ..message import Source
from ..protocol import scripts
from ..protocol.replies import mapping, text

if TYPE_CHECKING:
    from ..connection import Connector

log = logging.getLogger("redisflow")

#: How long a producer trusts the layouts it read from Redis, in seconds.
LAYOUT_TTL = 5.0
#: How long an old layout stays readable after it stopped being current: a producer may
#: have picked it just before its cache expired, and a producer call takes at most 10 s
#: and is sent again for up to 5 s (docs/design.md, "Errors").
RETIRE_AFTER = LAYOUT_TTL + 15.0
#: The most partitions of one source: each costs every worker process a connection (docs/
#: scaling.md, "What partitions cost").
MAX_PARTITIONS = 256
RETIRED = "retired:"


def check_partitions(name: str, partitions: object) -> int:
    """``partitions`` if it is usable for ``name``, else ConfigError."""
    if isinstance(partitions, bool) or not isinstance(partitions, int):
        raise ConfigError(f"partitions must be an int, got {partitions!r}")
    if not 1 <= partitions <= MAX_PARTITIONS:
        raise ConfigError(f"partitions must be from 1 to {MAX_PARTITIONS}, got {partitions}")
    if partitions > 1 and ("{" in name or "}" in name):
        raise ConfigError(
            f"a partitioned source picks its own hash tags: {name!r} cannot have braces"
        )
    return partitions


@functools.lru_cache(maxsize=65536)
def _tag(i: int, partitions: int, start: int, named: bool) -> str:
    low, high = start + i * SLOTS // partitions, start + (i + 1) * SLOTS // partitions
    if named:  # the middle half of its range: two partitions are never on one master of
        # a cluster whose M >= 2P masters own equal ranges
        low, high = low + SLOTS // (4 * partitions), low + 3 * SLOTS // (4 * partitions)
    prefix = f"{i}/{partitions}@{start}." if named else f"{i}/{partitions}:"
    state = crc16(prefix.encode())  # the CRC of the prefix, once: ~4x fewer steps per try
    for k in itertools.count():
        found = crc16(b"%d" % k, state) % SLOTS
        if low <= found < high or low <= found + SLOTS < high:
            return f"{prefix}{k}"
    raise AssertionError("unreachable")  # pragma: no cover


def key(name: str, i: int, partitions: int) -> str:
    """The Redis key of partition ``i`` of ``partitions`` of ``name`` (``name`` for P=1)."""
    return Layout(partitions).key(name, i)


def keys(name: str, partitions: int) -> list[str]:
    """Every key of ``name`` split in ``partitions``."""
    return Layout(partitions).keys(name)


@dataclass(frozen=True, slots=True)
class Layout:
    """P partitions, with tags placed from the source's own slot (``named``), or as the
    first scheme did, from slot 0 for every source (only read, to drain it)."""

    partitions: int
    named: bool = True  # (P = 1, the plain key, is always named)

    def key(self, name: str, i: int) -> str:
        """The key of partition ``i`` of ``name``."""
        if self.partitions == 1:
            return name
        if self.named:
            return f"{name}{{{_tag(i, self.partitions, slot(name), True)}}}"
        return f"{name}{{{_tag(i, self.partitions, 0, False)}}}"

    def keys(self, name: str) -> list[str]:
        """Every key of ``name`` in this layout."""
        return [self.key(name, i) for i in range(self.partitions)]

    def encode(self) -> int | str:
        """As recorded in Redis: P for the first scheme (and the plain key), ``v2/P``."""
        return f"v2/{self.partitions}" if self.named and self.partitions > 1 else self.partitions

    @classmethod
    def parse(cls, raw: object) -> Layout | None:
        """A recorded layout (None for what is not one)."""
        if isinstance(raw, int) and not isinstance(raw, bool) and 1 <= raw <= 1024:
            return cls(raw, named=raw == 1)
        if isinstance(raw, str) and raw.startswith("v2/") and raw[3:].isdigit():
            found = int(raw[3:])
            return cls(found) if 1 <= found <= MAX_PARTITIONS else None
        return None

    def __str__(self) -> str:
        scheme = "" if self.named else ", first tag scheme"
        return f"{self.partitions} partition{'s' * (self.partitions != 1)}{scheme}"


@dataclass(frozen=True, slots=True)
class Record:
    """What Redis records of one source: the layouts in use (current first), and those
    retired (still watched)."""

    used: tuple[Layout, ...] = ()
    retired: tuple[Layout, ...] = ()

    @classmethod
    def parse(cls, raw: bytes | None) -> Record:
        """The record of one field of ``Keys.layouts`` (empty for nothing readable)."""
        try:
            found = orjson.loads(raw) if raw else []
        except orjson.JSONDecodeError:
            return cls()
        used: list[Layout] = []
        retired: list[Layout] = []
        for entry in found if isinstance(found, list) else []:
            gone = isinstance(entry, str) and entry.startswith(RETIRED)
            value: Any = entry[len(RETIRED) :] if gone else entry
            if gone and isinstance(value, str) and value.isdigit():
                value = int(value)
            layout = Layout.parse(value)
            if layout is not None:
                (retired if gone else used).append(layout)
        return cls(tuple(dict.fromkeys(used)), tuple(dict.fromkeys(retired)))

    @property
    def current(self) -> Layout | None:
        """The layout producers send to (None: no record)."""
        return self.used[0] if self.used else None


class Layouts:
    """The partition layouts of the sources of one prefix, as this process knows them."""

    def __init__(self, connector: Connector, prefix: str) -> None:
        self.connector = connector
        self.prefix = prefix
        self.key = layouts_key(prefix)
        self.declared: dict[str, Layout] = {}
        self._stored: dict[str, Record] = {}
        self._read_at = -LAYOUT_TTL
        self._turns: dict[str, int] = {}

    def declare(self, name: str, partitions: int) -> None:
        """Send to ``name`` over ``partitions`` in this process until the consumers retire
        that layout (then: the current one)."""
        self.declared[name] = Layout(check_partitions(name, partitions))

    async def record(self, name: str) -> Record:
        """The record of ``name`` in Redis, cached ``LAYOUT_TTL`` seconds."""
        if time.monotonic() - self._read_at > LAYOUT_TTL:
            flat = await self.connector.send("HGETALL", self.key)
            self._stored = {
                text(flat[i]): Record.parse(flat[i + 1]) for i in range(0, len(flat), 2)
            }
            self._read_at = time.monotonic()
        return self._stored.get(name, Record())

    def forget(self) -> None:
        """Read the record again at the next use."""
        self._read_at = -LAYOUT_TTL

    async def fresh(self, name: str) -> Record:
        """The record of ``name`` as Redis has it now (no cache)."""
        return Record.parse(await self.connector.send("HGET", self.key, name))

    async def current(self, name: str) -> Layout:
        """The layout a message to ``name`` goes to now: the one declared here while it is
        not retired (it is recorded first if Redis has none), else the current one."""
        record = await self.record(name)
        declared = self.declared.get(name)
        if declared is not None:
            if declared in record.retired:
                log.warning("%s: the layout this process declared (%s) was retired; sending to"
                            " the current one", name, declared)  # fmt: skip
                del self.declared[name]
            elif declared not in record.used:
                await self.know(name, declared)
                return declared
            else:
                return declared
        return record.current or Layout(1)

    async def pick(self, name: str, by: str | None) -> str:
        """The key a message to ``name`` goes to: the partition of ``hash(by)``, else the
        next one round robin (over the current P: a producer that learns a larger P spreads
        over all of it)."""
        if name not in self.declared and time.monotonic() - self._read_at <= LAYOUT_TTL:
            stored = self._stored.get(name)
            current = None if stored is None else stored.current
            if current is None or current.partitions == 1:  # the common case
                return name
        layout = await self.current(name)
        if layout.partitions == 1:
            return name
        if by is not None:
            i = zlib.crc32(check_text(by, "partition key").encode()) % layout.partitions
        else:
            i = self._turns[name] = (self._turns.get(name, -1) + 1) % layout.partitions
        return layout.key(name, i)

    async def all_keys(self, name: str) -> list[str]:
        """Every key ``name`` may hold messages in (or dead letters, counters): its
        partitions in every layout in use or retired."""
        record = await self.record(name)
        layouts = dict.fromkeys([await self.current(name), *record.used, *record.retired])
        return [k for layout in layouts for k in layout.keys(name)]

    async def register(self, name: str, partitions: int | Layout) -> Record:
        """Make a layout current (consumers, at start); those in use stay, to be drained."""
        return await self._change(name, partitions, "current")

    async def know(self, name: str, partitions: int | Layout) -> Record:
        """Add a layout as an old one (current when there is none), so that consumers read
        it: what a producer declared, or a retired layout found holding messages."""
        return await self._change(name, partitions, "known")

    async def retire(self, name: str, partitions: int | Layout) -> Record:
        """Retire an old layout whose partitions are empty (never the current one)."""
        return await self._change(name, partitions, "retire")

    async def _change(self, name: str, partitions: int | Layout, how: str) -> Record:
        layout = partitions if isinstance(partitions, Layout) else Layout(partitions)
        entry = str(layout.encode())
        reply = await self.connector.run(scripts.layout(self.key, name, entry, how))
        self._read_at = -LAYOUT_TTL
        return Record.parse(reply)


class Readers(Protocol):
    """The consumers of one handler, as the ``Drainer`` sees them (the runtime's)."""

    @property
    def source(self) -> Source:
        """Its source."""
        ...

    def reading(self) -> set[str]:
        """The keys its consumers read now."""
        ...

    async def read(self, keys: Sequence[str]) -> None:
        """Start consumers for ``keys`` too."""
        ...

    async def drained(self, keys: Sequence[str]) -> bool:
        """Whether ``keys`` hold nothing, for anyone (waiting, due later, in flight)."""
        ...

    async def leave(self, keys: Sequence[str]) -> None:
        """Stop the consumers of ``keys`` (they hold nothing)."""
        ...


class Drainer:
    """Keeps the consumers of a process in step with the recorded layouts: reads a layout
    that appears (or a retired one found holding messages, or the plain key), and retires an
    old layout once its partitions are drained and ``retire_after`` seconds have passed since
    this process saw it stop being current (no producer can have picked it since)."""

    def __init__(
        self,
        layouts: Layouts,
        readers: Sequence[Readers],
        interval: float,
        retire_after: Callable[[], float] | None = None,
    ) -> None:
        self.layouts, self.readers, self.interval = layouts, list(readers), interval
        self.retire_after = retire_after or (lambda: RETIRE_AFTER)  # read late: tests shorten it
        self._old_since: dict[tuple[str, Layout], float] = {}

    async def run(self) -> None:
        """Check every ``interval`` seconds, until cancelled."""
        while True:
            await anyio.sleep(self.interval)
            for readers in self.readers:
                try:
                    await self.check(readers)
                except Exception as exc:  # Redis away, a full Redis: next time
                    log.debug("%s: layouts not checked (%r)", readers.source, exc)

    async def check(self, readers: Readers) -> None:
        """One look at the record of one handler's source."""
        name, layouts = readers.source.name, self.layouts
        record = await layouts.fresh(name)
        if record.current is None:
            return
        watched = list(record.retired)
        if Layout(1) not in record.used and Layout(1) not in watched:
            watched.append(Layout(1))  # the plain key: older or foreign producers
        for layout in watched:
            if await self._holds(readers, layout):
                log.warning("%s: the %s layout holds messages: reading it again", name, layout)
                record = await layouts.know(name, layout)
        for layout in record.used:
            missing = [k for k in layout.keys(name) if k not in readers.reading()]
            if missing:
                log.info("%s: reading the layout of %s", name, layout)
                await readers.read(missing)
        now = time.monotonic()
        for layout in record.used[1:]:
            since = self._old_since.setdefault((name, layout), now)
            if now - since < self.retire_after() or not await readers.drained(layout.keys(name)):
                continue
            await layouts.retire(name, layout)
            await readers.leave(layout.keys(name))
            del self._old_since[(name, layout)]
            log.info("%s: the old layout of %s is drained and retired", name, layout)
        for old in [o for o in self._old_since if o[0] == name and o[1] not in record.used[1:]]:
            del self._old_since[old]

    async def _holds(self, readers: Readers, layout: Layout) -> bool:
        keys = [k for k in layout.keys(readers.source.name) if k not in readers.reading()]
        return bool(keys) and await holds(self.layouts, readers.source, keys)


async def to_read(layouts: Layouts, source: Source, wanted: int) -> list[str]:
    """The keys a handler's consumers read at start: its source alone when nothing is
    recorded and it wants one partition, else every partition of every layout in use, its
    own made current (with the plain key, when it holds messages sent before any layout)."""
    name = source.name
    layouts.forget()  # read now (and warm the producers' cache: their first send awaits none)
    record = await layouts.record(name)
    if wanted == 1 and record.current is None:
        return [name]
    plain = Layout(1)
    if wanted > 1 and plain not in record.used:
        if record.current is None or await holds(layouts, source, [name]):
            await layouts.know(name, plain)
    record = await layouts.register(name, wanted)
    return [k for layout in record.used for k in layout.keys(name)]


async def holds(layouts: Layouts, source: Source, keys: list[str]) -> bool:
    """Whether any of ``keys`` holds messages for a consumer of ``source``: a queue's items
    or retries, a stream's entries its group has not read or acked."""
    connector = layouts.connector
    if source.kind != "stream":
        delayed = [("EXISTS", Keys(layouts.prefix, k).delayed) for k in keys]
        return any(await connector.send.many(*[("EXISTS", k) for k in keys], *delayed))
    for stream in keys:
        try:
            groups = [mapping(g) for g in await connector.send("XINFO", "GROUPS", stream)]
            info = mapping(await connector.send("XINFO", "STREAM", stream))
        except Exception:  # no such key
            continue
        mine = [g for g in groups if text(g[b"name"]) == source.group]
        if not mine:
            if info[b"length"]:
                return True
            continue
        if mine[0][b"pending"] or mine[0][b"last-delivered-id"] != info[b"last-generated-id"]:
            return True
    return False
