"""Partitioned sources: one logical queue, priority queue or stream over P Redis keys whose
hash tags spread them evenly over the slots of a cluster, and so over its masters.

Partition ``i`` of ``P`` of ``jobs`` is the key ``jobs{i/P:k}``: its hash tag ``i/P:k`` is the
first one (``k`` = 0, 1, 2...) whose slot falls in the ``i``-th of ``P`` equal slot ranges.
The tags depend only on ``i`` and ``P``, so every process computes the same keys with no
coordination, and each partition keeps its auxiliary keys (retries, dead letters, leases) in
its own slot. ``P = 1`` is the plain key ``jobs``.

The layout of a source is stored in Redis (``Keys.layouts``, a hash: name -> JSON list of the
P in use, current first), so a producer that registered no handler learns it (cached for a
few seconds); consumers add their P at start. A message goes to the partition of
``hash(key)`` when the producer gives a key (the same key, the same partition: order per
key), else round robin. Changing P loses nothing: the old P stays in the list, consumers read
its partitions too, and it leaves the list once they are empty (docs/scaling.md).
"""

from __future__ import annotations

import functools
import itertools
import time
import zlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import orjson

from ..errors import ConfigError
from ..keys import SLOTS, check_text, layouts_key, slot
from ..protocol import scripts

if TYPE_CHECKING:
    from ..connection import Connector

#: How long a producer trusts the layouts it read from Redis, in seconds.
LAYOUT_TTL = 5.0
MAX_PARTITIONS = 1024


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


@functools.lru_cache(maxsize=4096)
def tag(i: int, partitions: int) -> str:
    """The hash tag of partition ``i`` of ``partitions``: the first ``i/P:k`` whose slot is
    in the ``i``-th of ``P`` equal slot ranges."""
    low, high = i * SLOTS // partitions, (i + 1) * SLOTS // partitions
    for k in itertools.count():
        candidate = f"{i}/{partitions}:{k}"
        if low <= slot(candidate) < high:
            return candidate
    raise AssertionError("unreachable")  # pragma: no cover


def key(name: str, i: int, partitions: int) -> str:
    """The Redis key of partition ``i`` of ``partitions`` of ``name`` (``name`` for P=1)."""
    return name if partitions == 1 else f"{name}{{{tag(i, partitions)}}}"


def keys(name: str, partitions: int) -> list[str]:
    """Every key of ``name`` split in ``partitions``."""
    return [key(name, i, partitions) for i in range(partitions)]


class Layouts:
    """The partition layouts of the sources of one prefix, as this process knows them."""

    def __init__(self, connector: Connector, prefix: str) -> None:
        self.connector = connector
        self.key = layouts_key(prefix)
        self.declared: dict[str, int] = {}
        self._stored: dict[str, list[int]] = {}
        self._read_at = -LAYOUT_TTL
        self._turns: dict[str, Iterator[int]] = {}

    def declare(self, name: str, partitions: int) -> None:
        """Use ``partitions`` for ``name`` in this process, whatever Redis says."""
        self.declared[name] = check_partitions(name, partitions)

    async def stored(self, name: str) -> list[int]:
        """The layouts of ``name`` in Redis (current first; [] if none), cached."""
        if time.monotonic() - self._read_at > LAYOUT_TTL:
            flat = await self.connector.send("HGETALL", self.key)
            self._stored = {flat[i].decode(): _parse(flat[i + 1]) for i in range(0, len(flat), 2)}
            self._read_at = time.monotonic()
        return self._stored.get(name, [])

    async def current(self, name: str) -> int:
        """How many partitions a message to ``name`` is spread over now."""
        if name in self.declared:
            return self.declared[name]
        stored = await self.stored(name)
        return stored[0] if stored else 1

    async def pick(self, name: str, by: str | None) -> str:
        """The key a message to ``name`` goes to: the partition of ``hash(by)``, else the
        next one round robin. A layout declared here is recorded in Redis first (and again
        if it was dropped), so consumers read every partition anyone sends to."""
        if name not in self.declared and time.monotonic() - self._read_at <= LAYOUT_TTL:
            stored = self._stored.get(name)
            if stored is None or stored[0] == 1:  # the common case, without awaiting
                return name
        partitions = await self.current(name)
        if name in self.declared and partitions not in await self.stored(name):
            await self.register(name, partitions)
        if partitions == 1:
            return name
        if by is not None:
            i = zlib.crc32(check_text(by, "partition key").encode()) % partitions
        else:
            turn = self._turns.get(name)
            if turn is None:
                turn = self._turns[name] = itertools.cycle(range(partitions))
            i = next(turn) % partitions
        return key(name, i, partitions)

    async def all_keys(self, name: str) -> list[str]:
        """Every key ``name`` may hold messages in: its partitions in every layout in use."""
        layouts = list(dict.fromkeys([await self.current(name), *await self.stored(name)]))
        return [k for partitions in layouts for k in keys(name, partitions)]

    async def register(self, name: str, partitions: int) -> list[int]:
        """Make ``partitions`` the current layout of ``name`` in Redis (older ones stay, to
        be drained); every layout in use, current first."""
        reply = await self.connector.run(scripts.layout(self.key, name, partitions, 0))
        self._read_at = -LAYOUT_TTL
        return _parse(reply)

    async def retire(self, name: str, partitions: int) -> None:
        """Drop an old layout of ``name`` whose partitions are empty (never the current)."""
        await self.connector.run(scripts.layout(self.key, name, partitions, 1))
        self._read_at = -LAYOUT_TTL


def _parse(raw: bytes | None) -> list[int]:
    try:
        found = orjson.loads(raw) if raw else []
    except orjson.JSONDecodeError:
        return []
    return [p for p in found if isinstance(p, int) and 1 <= p <= MAX_PARTITIONS]
